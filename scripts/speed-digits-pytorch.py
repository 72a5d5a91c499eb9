#!/usr/bin/env python3
"""The official PyTorch DAPS on the built-in digits prior, timed like `daps bench speed`'s digits
part (keys `digits_daps1k_*`), for scripts/speed-compare.sh.

    speed-digits-pytorch.py --official DAPS_DIR --digits DIGITS.safetensors [--threads N]

DAPS_DIR: a checkout of github.com/zhangbingliang2019/DAPS (main). Its own code runs: `sampler.DAPS`
(PF-ODE Euler x̂0, `cores.mcmc.MCMCSampler` Langevin with autograd through the operator),
`model.ddpm.unet.create_model(grayscale=True)` under `model.precond.VPPrecond` (the official
`DDPM` model class minus its diffusers import), `forward_operator.PhaseRetrieval` and
`GaussianBlur` (its 3-channel depthwise conv swapped for the same kernel on one channel).
The network loads assets/digits32/model.safetensors; D is clamped to ±1 as the built-in prior
does. DIGITS.safetensors (written by `daps bench speed --digits-only --json …`) holds the digits
x, each task's measurement y_TASK and `d_sigma1` = our D(x, σ = 1), checked here first.
Prints one JSON object. Needs torch, numpy, tqdm, torchdiffeq, scipy, pyyaml, packaging, pillow (not diffusers:
stubbed).
"""
import argparse, contextlib, json, os, struct, sys, time, types

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    header = json.loads(buf[8 : 8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, b = v["data_offsets"]
        arr = np.frombuffer(buf[8 + n + a : 8 + n + b], dtype="<f4").reshape(v["shape"])
        out[k] = torch.from_numpy(arr.copy())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True)
    ap.add_argument("--digits", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--levels", type=int, default=None, help="default: the file's")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sys.path.insert(0, a.official)
    # model/__init__.py imports diffusers for Stable Diffusion only; the pixel path never uses it.
    if "diffusers" not in sys.modules:
        stub = types.ModuleType("diffusers")
        stub.StableDiffusionPipeline = None
        sys.modules["diffusers"] = stub
    from sampler import DAPS
    from model.ddpm.unet import create_model
    from model.precond import VPPrecond
    import forward_operator as fo

    cfg = json.load(open(os.path.join(ROOT, "assets/digits32/model.json")))
    keys = ["image_size", "num_channels", "num_res_blocks", "channel_mult", "learn_sigma",
            "class_cond", "use_checkpoint", "attention_resolutions", "num_heads",
            "num_head_channels", "num_heads_upsample", "use_scale_shift_norm", "dropout",
            "resblock_updown", "use_fp16", "use_new_attention_order"]
    with contextlib.redirect_stdout(sys.stderr):  # it prints that it found no checkpoint
        unet = create_model(**{k: cfg[k] for k in keys}, grayscale=True)
    sd = load_safetensors(os.path.join(ROOT, "assets/digits32/model.safetensors"))
    unet.load_state_dict(sd, strict=True)
    net = VPPrecond(model=unet, learn_sigma=False, conditional=False).eval().requires_grad_(False)

    class Digits(torch.nn.Module):
        """The official `DDPM` model class on the digits UNet, D clamped to ±1."""

        def __init__(self):
            super().__init__()
            self.model = net
            self.seconds = 0.0
            self.calls = 0

        def tweedie(self, x, sigma):
            t = time.perf_counter()
            d = self.model(x, torch.as_tensor(sigma).to(x.device)).clamp(-1, 1)
            self.seconds += time.perf_counter() - t
            self.calls += 1
            return d

        def score(self, x, sigma):
            return (self.tweedie(x, sigma) - x) / sigma**2

        def get_in_shape(self):
            return (1, 32, 32)

    model = Digits()
    data = load_safetensors(a.digits)
    meta = json.load(open(os.path.splitext(a.digits)[0] + ".json"))
    x = data["x"]
    with torch.no_grad():
        d = model.tweedie(x, 1.0)
    d_err = (d - data["d_sigma1"]).abs().max().item()
    model.seconds, model.calls = 0.0, 0

    levels = a.levels or meta["levels"]
    out = {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
           "digits": x.shape[0], "levels": levels, "d_sigma1_max_abs_diff": d_err}
    for task in meta["tasks"]:
        p = meta["presets"][task]
        if task == "phase-retrieval":
            op = fo.PhaseRetrieval(oversample=float(p["oversample"]), resolution=32, sigma=0.05)
        elif task == "gaussian-blur":
            ks = int(float(p["kernel_size"]))
            op = fo.GaussianBlur(kernel_size=ks, intensity=float(p["sigma"]), device="cpu")
            conv = torch.nn.Conv2d(1, 1, ks, bias=False)
            conv.weight.data.copy_(op.kernel.float()[None, None])
            op.conv.seq[1] = conv.requires_grad_(False)
        else:
            raise SystemExit(f"no official operator wired for {task}")
        y = data[f"y_{task}"]
        with torch.no_grad():
            # y = A(x) + σ_y·n with σ_y = 0.05: ≈ 1 when the official A is ours.
            a_err = ((op(x) - y).pow(2).mean().sqrt() / 0.05).item()
        sampler = DAPS(
            annealing_scheduler_config=dict(name="edm", num_steps=levels, sigma_max=p["sigma_max"],
                                            sigma_min=p["sigma_min"], timestep="poly-7"),
            diffusion_scheduler_config=dict(name="edm", num_steps=p["ode_steps"],
                                            sigma_min=p["sigma_min_ode"], timestep="poly-7"),
            mcmc_sampler_config=dict(num_steps=p["mcmc_steps"], lr=p["lr"], tau=p["tau"],
                                     lr_min_ratio=p["lr_min_ratio"], mc_algo="langevin",
                                     prior_solver="gaussian"),
        )
        mcmc = sampler.mcmc_sampler
        inner = mcmc.sample
        spent = [0.0]

        def timed(*args, **kw):
            t = time.perf_counter()
            r = inner(*args, **kw)
            spent[0] += time.perf_counter() - t
            return r

        mcmc.sample = timed
        torch.manual_seed(0)
        model.seconds, model.calls = 0.0, 0
        x_start = sampler.get_start(x.shape[0], model)
        t = time.perf_counter()
        sampler.sample(model, x_start, op, y)
        total = time.perf_counter() - t
        k = "digits_daps1k_" + task.replace("-", "_")
        out[k + "_residual_rms_over_sigma_y"] = a_err
        out[k + "_level_ms"] = 1e3 * total / levels
        out[k + "_network_ms"] = 1e3 * model.seconds / levels
        out[k + "_x0_step_ms"] = 1e3 * spent[0] / levels
        out[k + "_other_ms"] = 1e3 * (total - model.seconds - spent[0]) / levels
        out[k + "_nfe_per_level"] = model.calls / levels
        out[k + "_solve_estimate_s"] = 200 * total / levels
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
