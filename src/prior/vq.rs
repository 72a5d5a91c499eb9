//! The CompVis VQ autoencoder (`VQModelInterface`: `Encoder`, `quant_conv`, `VectorQuantizer`,
//! `post_quant_conv`, `Decoder` of latent-diffusion's `modules/diffusionmodules/model.py`), the
//! first stage of the LDM-VQ priors, with the CompVis parameter names (no prefix).

use crate::error::{Error, Result};
use crate::nn::checkpoint;
use crate::nn::fastops::{self, Conv2d, GroupNorm};
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::VarBuilder;
use serde_json::Value;

const GN_GROUPS: usize = 32;
const GN_EPS: f64 = 1e-6;

/// `first_stage_config.params` of a CompVis VQ model (`ddconfig`, `embed_dim`, `n_embed`).
#[derive(Clone, Debug, PartialEq)]
pub struct VqConfig {
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Resolutions (of the `resolution`-pixel input) with attention blocks.
    pub attn_resolutions: Vec<usize>,
    pub in_channels: usize,
    pub out_ch: usize,
    pub resolution: usize,
    pub z_channels: usize,
    pub embed_dim: usize,
    pub n_embed: usize,
}

fn uint(v: &Value, key: &str) -> Result<usize> {
    v.get(key)
        .and_then(|x| x.as_u64())
        .map(|x| x as usize)
        .ok_or_else(|| Error::config(format!("VQ config: bad or missing `{key}`")))
}

pub(crate) fn uint_list(v: &Value, key: &str, what: &str) -> Result<Vec<usize>> {
    let bad = || Error::config(format!("{what} config: bad or missing `{key}`"));
    match v.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().map(|x| x as usize).ok_or_else(bad))
            .collect(),
        Some(Value::Number(n)) => Ok(vec![n.as_u64().ok_or_else(bad)? as usize]),
        Some(_) => Err(bad()),
    }
}

impl VqConfig {
    /// From `first_stage_config.params` (a `VQModel` / `VQModelInterface`).
    pub fn from_params(p: &Value) -> Result<Self> {
        let dd = p
            .get("ddconfig")
            .ok_or_else(|| Error::config("VQ config: missing `ddconfig`"))?;
        if dd.get("double_z").and_then(|b| b.as_bool()) == Some(true) {
            return Err(Error::Unsupported(
                "first stage with double_z = true (a KL autoencoder, not a VQ model)".into(),
            ));
        }
        let cfg = Self {
            ch: uint(dd, "ch")?,
            ch_mult: uint_list(dd, "ch_mult", "VQ")?,
            num_res_blocks: uint(dd, "num_res_blocks")?,
            attn_resolutions: uint_list(dd, "attn_resolutions", "VQ")?,
            in_channels: uint(dd, "in_channels")?,
            out_ch: uint(dd, "out_ch")?,
            resolution: uint(dd, "resolution")?,
            z_channels: uint(dd, "z_channels")?,
            embed_dim: uint(p, "embed_dim")?,
            n_embed: uint(p, "n_embed")?,
        };
        if cfg.ch_mult.is_empty() || cfg.ch == 0 {
            return Err(Error::config("VQ config: empty ch_mult or zero ch"));
        }
        for m in &cfg.ch_mult {
            if !(cfg.ch * m).is_multiple_of(GN_GROUPS) {
                return Err(Error::config(format!(
                    "VQ config: {} channels is not a multiple of {GN_GROUPS} GroupNorm groups",
                    cfg.ch * m
                )));
            }
        }
        Ok(cfg)
    }

    /// The downsampling factor f = 2^(levels − 1).
    pub fn factor(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }

    /// Parameter names and shapes in `state_dict` order, without allocating weights.
    pub fn param_shapes(&self) -> Result<checkpoint::ParamList> {
        checkpoint::record_params(|vb| VqModel::new(self, vb))
    }
}

fn norm(ch: usize, vb: VarBuilder) -> candle_core::Result<GroupNorm> {
    GroupNorm::load(GN_GROUPS, ch, GN_EPS, vb)
}

fn conv(i: usize, o: usize, k: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    Conv2d::load(i, o, k, k / 2, 1, vb)
}

/// `ResnetBlock` without a time embedding (dropout 0, 1×1 `nin_shortcut`).
#[derive(Debug)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(i: usize, o: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: norm(i, vb.pp("norm1"))?,
            conv1: conv(i, o, 3, vb.pp("conv1"))?,
            norm2: norm(o, vb.pp("norm2"))?,
            conv2: conv(o, o, 3, vb.pp("conv2"))?,
            nin_shortcut: if i == o {
                None
            } else {
                Some(conv(i, o, 1, vb.pp("nin_shortcut"))?)
            },
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self
            .conv1
            .forward(&fastops::silu(&self.norm1.forward(x)?)?)?;
        let h = self
            .conv2
            .forward(&fastops::silu(&self.norm2.forward(&h)?)?)?;
        match &self.nin_shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// `AttnBlock`: one head, 1×1 conv q, k, v, proj_out, scale C^−½.
#[derive(Debug)]
struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    fn new(c: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm: norm(c, vb.pp("norm"))?,
            q: conv(c, c, 1, vb.pp("q"))?,
            k: conv(c, c, 1, vb.pp("k"))?,
            v: conv(c, c, 1, vb.pp("v"))?,
            proj_out: conv(c, c, 1, vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hn = self.norm.forward(x)?;
        let flat = |t: Tensor| t.reshape((b, c, h * w));
        let q = flat(self.q.forward(&hn)?)?;
        let k = flat(self.k.forward(&hn)?)?;
        let v = flat(self.v.forward(&hn)?)?;
        let att = (q.transpose(1, 2)?.contiguous()?.matmul(&k)? * (c as f64).powf(-0.5))?; // [b, hw_q, hw_k]
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let o = v.matmul(&att.transpose(1, 2)?.contiguous()?)?; // [b, c, hw_q]
        x + self.proj_out.forward(&o.reshape((b, c, h, w))?)?
    }
}

/// One resolution level: its res blocks, their attention blocks, the resampling conv.
#[derive(Debug)]
struct Level {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    resample: Option<Conv2d>,
}

#[derive(Debug)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(c: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(c, c, vb.pp("block_1"))?,
            attn_1: AttnBlock::new(c, vb.pp("attn_1"))?,
            block_2: ResnetBlock::new(c, c, vb.pp("block_2"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.block_1.forward(x)?;
        self.block_2.forward(&self.attn_1.forward(&h)?)
    }
}

fn run_level(l: &Level, mut h: Tensor) -> candle_core::Result<Tensor> {
    for (i, b) in l.blocks.iter().enumerate() {
        h = b.forward(&h)?;
        if let Some(a) = l.attns.get(i) {
            h = a.forward(&h)?;
        }
    }
    Ok(h)
}

#[derive(Debug)]
struct Encoder {
    conv_in: Conv2d,
    down: Vec<Level>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(cfg: &VqConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let conv_in = conv(cfg.in_channels, cfg.ch, 3, vb.pp("conv_in"))?;
        let mut res = cfg.resolution;
        let mut block_in = cfg.ch;
        let mut down = Vec::new();
        for (l, &m) in cfg.ch_mult.iter().enumerate() {
            let vbl = vb.pp(format!("down.{l}"));
            let block_out = cfg.ch * m;
            let (mut blocks, mut attns) = (Vec::new(), Vec::new());
            for i in 0..cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    vbl.pp(format!("block.{i}")),
                )?);
                block_in = block_out;
                if cfg.attn_resolutions.contains(&res) {
                    attns.push(AttnBlock::new(block_in, vbl.pp(format!("attn.{i}")))?);
                }
            }
            let resample = if l + 1 != cfg.ch_mult.len() {
                res /= 2;
                // Padded (0, 1, 0, 1) in `forward`, then a 3×3 stride-2 conv without padding.
                Some(Conv2d::load(
                    block_in,
                    block_in,
                    3,
                    0,
                    2,
                    vbl.pp("downsample.conv"),
                )?)
            } else {
                None
            };
            down.push(Level {
                blocks,
                attns,
                resample,
            });
        }
        Ok(Self {
            conv_in,
            down,
            mid: Mid::new(block_in, vb.pp("mid"))?,
            norm_out: norm(block_in, vb.pp("norm_out"))?,
            conv_out: conv(block_in, cfg.z_channels, 3, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for l in &self.down {
            h = run_level(l, h)?;
            if let Some(c) = &l.resample {
                h = c.forward(&h.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)?;
            }
        }
        let h = self.mid.forward(&h)?;
        self.conv_out
            .forward(&fastops::silu(&self.norm_out.forward(&h)?)?)
    }
}

#[derive(Debug)]
struct Decoder {
    conv_in: Conv2d,
    mid: Mid,
    /// `up.{i}` by resolution level i; run from the last (coarsest) to `up.0`.
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(cfg: &VqConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let levels = cfg.ch_mult.len();
        let mut block_in = cfg.ch * cfg.ch_mult[levels - 1];
        let mut res = cfg.resolution / cfg.factor();
        let conv_in = conv(cfg.z_channels, block_in, 3, vb.pp("conv_in"))?;
        let mid = Mid::new(block_in, vb.pp("mid"))?;
        let mut up = Vec::new();
        for l in (0..levels).rev() {
            let vbl = vb.pp(format!("up.{l}"));
            let block_out = cfg.ch * cfg.ch_mult[l];
            let (mut blocks, mut attns) = (Vec::new(), Vec::new());
            for i in 0..=cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    vbl.pp(format!("block.{i}")),
                )?);
                block_in = block_out;
                if cfg.attn_resolutions.contains(&res) {
                    attns.push(AttnBlock::new(block_in, vbl.pp(format!("attn.{i}")))?);
                }
            }
            let resample = if l != 0 {
                res *= 2;
                Some(conv(block_in, block_in, 3, vbl.pp("upsample.conv"))?)
            } else {
                None
            };
            up.push(Level {
                blocks,
                attns,
                resample,
            });
        }
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: norm(block_in, vb.pp("norm_out"))?,
            conv_out: conv(block_in, cfg.out_ch, 3, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(z)?)?;
        for l in &self.up {
            h = run_level(l, h)?;
            if let Some(c) = &l.resample {
                h = c.forward(&fastops::upsample2x(&h)?)?;
            }
        }
        self.conv_out
            .forward(&fastops::silu(&self.norm_out.forward(&h)?)?)
    }
}

/// `VQModelInterface` as DAPS's `LDM` uses it: `encode` stops before the quantiser, `decode`
/// re-quantises (straight-through gradient).
#[derive(Debug)]
pub struct VqModel {
    cfg: VqConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    /// The codebook `[n_embed, embed_dim]` on the host (the quantiser runs there).
    codebook: Vec<f32>,
    device: Device,
}

impl VqModel {
    /// Builds the model from a `VarBuilder` (CompVis names without `first_stage_model.`).
    pub fn new(cfg: &VqConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let encoder = Encoder::new(cfg, vb.pp("encoder"))?;
        let decoder = Decoder::new(cfg, vb.pp("decoder"))?;
        let quant_conv = conv(cfg.z_channels, cfg.embed_dim, 1, vb.pp("quant_conv"))?;
        let post_quant_conv = conv(cfg.embed_dim, cfg.z_channels, 1, vb.pp("post_quant_conv"))?;
        let emb = vb.get((cfg.n_embed, cfg.embed_dim), "quantize.embedding.weight")?;
        let codebook = emb.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            codebook,
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &VqConfig {
        &self.cfg
    }

    /// `quant_conv(encoder(x))`: latents before quantisation (DAPS `LDM.encode`).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.quant_conv.forward(&self.encoder.forward(x)?)?)
    }

    /// The codebook index of every latent position, `[B·h·w]` (b, row, column order): argmin of
    /// ‖z‖² + ‖e‖² − 2z·e in f32 as the reference computes it, the first index on ties.
    pub fn indices(&self, z: &Tensor) -> Result<Vec<usize>> {
        let (b, c, h, w) = z.dims4()?;
        crate::error::expect_shape("VQ latent channels", &[c], &[self.cfg.embed_dim])?;
        let v = z
            .to_dtype(DType::F32)?
            .permute((0, 2, 3, 1))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let e = &self.codebook;
        let e_sq: Vec<f32> = e
            .chunks(c)
            .map(|r| r.iter().fold(0.0f32, |a, x| a + x * x))
            .collect();
        let out = v
            .chunks(c)
            .map(|zr| {
                let z_sq = zr.iter().fold(0.0f32, |a, x| a + x * x);
                let mut best = (f32::INFINITY, 0);
                for (k, er) in e.chunks(c).enumerate() {
                    let dot = zr.iter().zip(er).fold(0.0f32, |a, (x, y)| a + x * y);
                    let d = z_sq + e_sq[k] - 2.0 * dot;
                    if d < best.0 {
                        best = (d, k);
                    }
                }
                best.1
            })
            .collect::<Vec<_>>();
        debug_assert_eq!(out.len(), b * h * w);
        Ok(out)
    }

    /// z + (e − z).detach(): the codebook entries, with the gradient passed straight through.
    pub fn quantize(&self, z: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = z.dims4()?;
        let idx = self.indices(z)?;
        let mut q = Vec::with_capacity(idx.len() * c);
        for &k in &idx {
            q.extend_from_slice(&self.codebook[k * c..(k + 1) * c]);
        }
        let e = Tensor::from_vec(q, (b, h, w, c), &self.device)?
            .permute((0, 3, 1, 2))?
            .to_dtype(z.dtype())?;
        Ok((z + (e - z.detach())?.detach())?)
    }

    /// `decoder(post_quant_conv(quantize(z)))`, differentiable in z (straight through).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let q = self.quantize(z)?;
        Ok(self.decoder.forward(&self.post_quant_conv.forward(&q)?)?)
    }

    /// `decoder(post_quant_conv(z))` without the quantiser (DAPS never decodes this way).
    pub fn decode_unquantized(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.decoder.forward(&self.post_quant_conv.forward(z)?)?)
    }

    /// ∂⟨decode(z), g⟩/∂z.
    pub fn decode_vjp(&self, z: &Tensor, g: &Tensor) -> Result<Tensor> {
        let zv = Var::from_tensor(&z.detach())?;
        let x = self.decode(zv.as_tensor())?;
        let grads = (x * g.detach())?.sum_all()?.backward()?;
        grads
            .get(zv.as_tensor())
            .cloned()
            .ok_or_else(|| Error::msg("VQ decoder: no gradient reached the latent"))
    }
}
