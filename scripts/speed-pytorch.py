#!/usr/bin/env python3
"""PyTorch side of `daps bench speed`: the FFHQ-256 ADM (guided-diffusion UNetModel as DPS/DAPS
configure it for ffhq_10m.pt) written in plain torch with the layer structure of
src/prior/adm.rs, random weights, timed forward (no grad) and forward + backward to the input
(frozen weights, loss = sum(out²)) at batch 1 on the CPU. Prints one JSON object.

    python3 scripts/speed-pytorch.py --threads 2 [--warmup 0] [--reps 1] [--batch 1]

Not part of the runtime or the tests; scripts/speed-compare.sh runs it beside the Rust bench.
"""
import argparse
import json
import math
import os
import platform
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

GROUPS = 32


def norm(ch):
    return nn.GroupNorm(GROUPS, ch, eps=1e-5)


class ResBlock(nn.Module):
    def __init__(self, ch, emb_dim, out, scale_shift, resample):
        super().__init__()
        self.in_norm = norm(ch)
        self.in_conv = nn.Conv2d(ch, out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out if scale_shift else out)
        self.out_norm = norm(out)
        self.out_conv = nn.Conv2d(out, out, 3, padding=1)
        self.skip = nn.Conv2d(ch, out, 1) if ch != out else None
        self.scale_shift = scale_shift
        self.resample = resample

    def forward(self, x, emb_act):
        h = F.silu(self.in_norm(x))
        if self.resample == "up":
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        elif self.resample == "down":
            h = F.avg_pool2d(h, 2)
            x = F.avg_pool2d(x, 2)
        h = self.in_conv(h)
        e = self.emb(emb_act)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(F.silu(h))
        return (self.skip(x) if self.skip is not None else x) + h


class Attention(nn.Module):
    """AttentionBlock with QKVAttentionLegacy (heads first, then q, k, v)."""

    def __init__(self, ch, heads):
        super().__init__()
        self.norm = norm(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)
        self.heads = heads

    def forward(self, x):
        b, c, hh, ww = x.shape
        t = hh * ww
        x = x.reshape(b, c, t)
        qkv = self.qkv(self.norm(x))
        ch = c // self.heads
        q, k, v = qkv.reshape(b * self.heads, 3 * ch, t).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v)
        return (x + self.proj_out(a.reshape(b, c, t))).reshape(b, c, hh, ww)


class Seq(nn.ModuleList):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Adm(nn.Module):
    def __init__(self, image_size=256, in_ch=3, mc=128, out_ch=6, res_blocks=1,
                 attention_ds=(16,), mult=(1, 1, 2, 2, 4, 4), head_channels=64,
                 scale_shift=True):
        super().__init__()
        ted = 4 * mc
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        ch = int(mult[0] * mc)
        self.inp = nn.ModuleList([Seq([nn.Conv2d(in_ch, ch, 3, padding=1)])])
        chans, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(res_blocks):
                out = int(m * mc)
                layers = [ResBlock(ch, ted, out, scale_shift, None)]
                ch = out
                if ds in attention_ds:
                    layers.append(Attention(ch, ch // head_channels))
                self.inp.append(Seq(layers))
                chans.append(ch)
            if level + 1 != len(mult):
                self.inp.append(Seq([ResBlock(ch, ted, ch, scale_shift, "down")]))
                chans.append(ch)
                ds *= 2
        self.mid = Seq([ResBlock(ch, ted, ch, scale_shift, None),
                        Attention(ch, ch // head_channels),
                        ResBlock(ch, ted, ch, scale_shift, None)])
        self.outb = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(res_blocks + 1):
                ich = chans.pop()
                out = int(m * mc)
                layers = [ResBlock(ch + ich, ted, out, scale_shift, None)]
                ch = out
                if ds in attention_ds:
                    layers.append(Attention(ch, ch // head_channels))
                if level > 0 and i == res_blocks:
                    layers.append(ResBlock(ch, ted, ch, scale_shift, "up"))
                    ds //= 2
                self.outb.append(Seq(layers))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))

    def forward(self, x, t):
        half = self.mc // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        emb = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], dim=1))
        emb = F.silu(emb)
        hs, h = [], x
        for blk in self.inp:
            h = blk(h, emb)
            hs.append(h)
        h = self.mid(h, emb)
        for blk in self.outb:
            h = blk(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def best_seconds(f, warmup, reps):
    for _ in range(warmup):
        f()
    best = float("inf")
    for _ in range(max(reps, 1)):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = Adm().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
            p.requires_grad_(False)
    params = sum(p.numel() for p in net.parameters())
    x = torch.randn(a.batch, 3, 256, 256)
    t = torch.full((a.batch,), 500.0)

    def fwd():
        with torch.no_grad():
            net(x, t)

    def fwd_bwd():
        xv = x.clone().requires_grad_(True)
        net(xv, t).square().sum().backward()

    f = best_seconds(fwd, a.warmup, a.reps)
    fb = best_seconds(fwd_bwd, a.warmup, a.reps)
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    b = a.batch
    print(json.dumps({
        "torch_version": torch.__version__,
        "cpu_model": cpu or platform.processor(),
        "threads": torch.get_num_threads(),
        "warmup": a.warmup,
        "reps": a.reps,
        "ffhq256_params": params,
        f"ffhq256_forward_ms_b{b}": f * 1e3,
        f"ffhq256_forward_backward_ms_b{b}": fb * 1e3,
    }, indent=2))


if __name__ == "__main__":
    main()
