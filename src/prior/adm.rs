//! guided-diffusion `UNetModel` (ADM, openai/guided-diffusion `unet.py`) with the PyTorch
//! parameter names, so `ffhq_10m.pt` / `256x256_diffusion_uncond.pt` load directly.
//!
//! Everything is built from differentiable candle ops (`ops::softmax`, avg_pool2d, nearest
//! upsampling) and the conv2d / GroupNorm of [`crate::nn::fastops`] (candle's forward values,
//! fast CPU backward passes), so gradients flow through the network.

use crate::error::{Error, Result};
use crate::nn::checkpoint;
use crate::nn::fastops::{self, Conv2d, GroupNorm};
use crate::prior::vp::{timesteps_for_batch, TimestepNet};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use serde_json::Value;
use std::path::Path;

mod pullback;

use pullback::{AttnSaved, ResSaved, Saved, Tape};

const GN_GROUPS: usize = 32;
const GN_EPS: f64 = 1e-5;

/// `UNetModel` hyper-parameters (the resolved keyword arguments of guided-diffusion's
/// `create_model`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdmConfig {
    pub image_size: usize,
    pub in_channels: usize,
    pub model_channels: usize,
    /// 2·in_channels when the variance is learned (`learn_sigma`).
    pub out_channels: usize,
    pub num_res_blocks: usize,
    /// Downsampling rates ds = image_size / resolution at which attention is used.
    pub attention_ds: Vec<usize>,
    pub channel_mult: Vec<f64>,
    pub num_heads: usize,
    /// Channels per head; when set it takes precedence over `num_heads`.
    pub num_head_channels: Option<usize>,
    /// Heads in the decoder; `None` means `num_heads`.
    pub num_heads_upsample: Option<usize>,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub conv_resample: bool,
    pub use_new_attention_order: bool,
}

impl AdmConfig {
    /// DPS / DAPS FFHQ-256 (`ffhq_10m.pt`): 93,563,910 parameters.
    pub fn ffhq256() -> Self {
        Self {
            image_size: 256,
            in_channels: 3,
            model_channels: 128,
            out_channels: 6,
            num_res_blocks: 1,
            attention_ds: vec![16],
            channel_mult: vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
            num_heads: 4,
            num_head_channels: Some(64),
            num_heads_upsample: None,
            use_scale_shift_norm: true,
            resblock_updown: true,
            conv_resample: true,
            use_new_attention_order: false,
        }
    }

    /// guided-diffusion ImageNet-256 unconditional (`256x256_diffusion_uncond.pt`): 552,814,086 parameters.
    pub fn imagenet256() -> Self {
        Self {
            model_channels: 256,
            num_res_blocks: 2,
            attention_ds: vec![8, 16, 32],
            ..Self::ffhq256()
        }
    }

    /// From the arguments of guided-diffusion's `script_util.create_model` (as in DAPS's model
    /// yamls or the fixture's `tiny_config.json`), with the same defaults.
    pub fn from_create_model_args(v: &Value) -> Result<Self> {
        let bad = |what: &str| Error::config(format!("ADM config: bad or missing `{what}`"));
        let int = |key: &str, default: Option<i64>| -> Result<i64> {
            match v.get(key) {
                Some(x) => x.as_i64().ok_or_else(|| bad(key)),
                None => default.ok_or_else(|| bad(key)),
            }
        };
        let flag = |key: &str| -> Result<bool> {
            match v.get(key) {
                None => Ok(false),
                Some(x) => x.as_bool().ok_or_else(|| bad(key)),
            }
        };
        if flag("class_cond")? {
            return Err(Error::Unsupported(
                "class-conditional ADM models (class_cond = true)".into(),
            ));
        }
        let image_size = int("image_size", None)? as usize;
        let channel_mult: Vec<f64> = match v.get("channel_mult") {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) if s.trim().is_empty() => vec![],
            Some(Value::String(s)) => s
                .split(',')
                .map(|p| p.trim().parse::<f64>().map_err(|_| bad("channel_mult")))
                .collect::<Result<_>>()?,
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_f64().ok_or_else(|| bad("channel_mult")))
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("channel_mult")),
        };
        let channel_mult = if channel_mult.is_empty() {
            match image_size {
                512 => vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                128 => vec![1.0, 1.0, 2.0, 3.0, 4.0],
                64 => vec![1.0, 2.0, 3.0, 4.0],
                s => {
                    return Err(Error::config(format!(
                        "ADM config: no default channel_mult for image_size {s}"
                    )))
                }
            }
        } else {
            channel_mult
        };
        let resolutions: Vec<usize> = match v.get("attention_resolutions") {
            None => vec![16],
            Some(Value::Number(n)) => {
                vec![n.as_u64().ok_or_else(|| bad("attention_resolutions"))? as usize]
            }
            Some(Value::String(s)) => s
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| {
                    p.trim()
                        .parse::<usize>()
                        .map_err(|_| bad("attention_resolutions"))
                })
                .collect::<Result<_>>()?,
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|x| x as usize)
                        .ok_or_else(|| bad("attention_resolutions"))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("attention_resolutions")),
        };
        let attention_ds = resolutions
            .iter()
            .map(|&r| {
                image_size
                    .checked_div(r)
                    .ok_or_else(|| bad("attention_resolutions"))
            })
            .collect::<Result<Vec<_>>>()?;
        let in_channels = int("in_channels", Some(3))? as usize;
        let opt = |x: i64| if x < 0 { None } else { Some(x as usize) };
        let cfg = Self {
            image_size,
            in_channels,
            model_channels: int("num_channels", None)? as usize,
            out_channels: if flag("learn_sigma")? {
                2 * in_channels
            } else {
                in_channels
            },
            num_res_blocks: int("num_res_blocks", None)? as usize,
            attention_ds,
            channel_mult,
            num_heads: int("num_heads", Some(1))? as usize,
            num_head_channels: opt(int("num_head_channels", Some(-1))?),
            num_heads_upsample: opt(int("num_heads_upsample", Some(-1))?),
            use_scale_shift_norm: flag("use_scale_shift_norm")?,
            resblock_updown: flag("resblock_updown")?,
            conv_resample: true,
            use_new_attention_order: flag("use_new_attention_order")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// From the `unet_config.params` of a CompVis latent-diffusion yaml (`openaimodel.UNetModel`,
    /// same layout and names as guided-diffusion's): unconditional models only. Unlike
    /// `create_model`, `attention_resolutions` are already downsampling rates.
    pub fn from_openaimodel_params(v: &Value) -> Result<Self> {
        let bad = |what: &str| Error::config(format!("LDM UNet config: bad or missing `{what}`"));
        let int = |key: &str, default: Option<i64>| -> Result<i64> {
            match v.get(key) {
                Some(x) if !x.is_null() => x.as_i64().ok_or_else(|| bad(key)),
                _ => default.ok_or_else(|| bad(key)),
            }
        };
        let flag = |key: &str| v.get(key).and_then(|b| b.as_bool()).unwrap_or(false);
        for key in ["num_classes", "context_dim", "n_embed"] {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                return Err(Error::Unsupported(format!(
                    "conditional LDM UNets (`{key}` is set); only unconditional models load"
                )));
            }
        }
        if flag("use_spatial_transformer") {
            return Err(Error::Unsupported(
                "LDM UNets with a spatial transformer (use_spatial_transformer = true)".into(),
            ));
        }
        let mult = super::vq::uint_list(v, "channel_mult", "LDM UNet")?;
        let channel_mult: Vec<f64> = if mult.is_empty() {
            vec![1.0, 2.0, 4.0, 8.0]
        } else {
            mult.iter().map(|&m| m as f64).collect()
        };
        if channel_mult[0] != 1.0 {
            return Err(Error::config(
                "LDM UNet config: channel_mult must start with 1",
            ));
        }
        let opt = |x: i64| if x < 0 { None } else { Some(x as usize) };
        let in_channels = int("in_channels", None)? as usize;
        let cfg = Self {
            image_size: int("image_size", None)? as usize,
            in_channels,
            model_channels: int("model_channels", None)? as usize,
            out_channels: int("out_channels", None)? as usize,
            num_res_blocks: int("num_res_blocks", None)? as usize,
            attention_ds: super::vq::uint_list(v, "attention_resolutions", "LDM UNet")?,
            channel_mult,
            num_heads: int("num_heads", Some(-1))?.max(0) as usize,
            num_head_channels: opt(int("num_head_channels", Some(-1))?),
            num_heads_upsample: opt(int("num_heads_upsample", Some(-1))?),
            use_scale_shift_norm: flag("use_scale_shift_norm"),
            resblock_updown: flag("resblock_updown"),
            conv_resample: v
                .get("conv_resample")
                .and_then(|b| b.as_bool())
                .unwrap_or(true),
            use_new_attention_order: flag("use_new_attention_order"),
        };
        if cfg.num_heads == 0 && cfg.num_head_channels.is_none() {
            return Err(Error::config(
                "LDM UNet config: set num_heads or num_head_channels",
            ));
        }
        if cfg.out_channels != in_channels {
            return Err(Error::config(format!(
                "LDM UNet config: out_channels {} ≠ in_channels {in_channels} (ε-prediction expected)",
                cfg.out_channels
            )));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a JSON file of `create_model` arguments (e.g. `tiny_config.json`).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
        Self::from_create_model_args(&v)
    }

    pub fn validate(&self) -> Result<()> {
        if self.channel_mult.is_empty() || self.model_channels == 0 || self.in_channels == 0 {
            return Err(Error::config(
                "ADM config: empty channel_mult or zero channels",
            ));
        }
        for &m in &self.channel_mult {
            let ch = self.ch(m);
            if ch == 0 || !ch.is_multiple_of(GN_GROUPS) {
                return Err(Error::config(format!(
                    "ADM config: {ch} channels is not a multiple of {GN_GROUPS} GroupNorm groups"
                )));
            }
            if let Some(hc) = self.num_head_channels {
                if hc == 0 || !ch.is_multiple_of(hc) {
                    return Err(Error::config(format!(
                        "ADM config: {ch} channels is not a multiple of num_head_channels {hc}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn ch(&self, mult: f64) -> usize {
        (mult * self.model_channels as f64) as usize
    }

    pub fn time_embed_dim(&self) -> usize {
        4 * self.model_channels
    }

    pub fn learn_sigma(&self) -> bool {
        self.out_channels == 2 * self.in_channels
    }

    /// Inputs must have H, W divisible by this.
    pub fn spatial_divisor(&self) -> usize {
        1 << (self.channel_mult.len() - 1)
    }

    fn heads(&self, ch: usize, decoder: bool) -> usize {
        match self.num_head_channels {
            Some(hc) => ch / hc,
            None if decoder => self.num_heads_upsample.unwrap_or(self.num_heads),
            None => self.num_heads,
        }
    }

    /// Parameter names and shapes in `state_dict` order, without allocating weights.
    pub fn param_shapes(&self) -> Result<checkpoint::ParamList> {
        self.validate()?;
        checkpoint::record_params(|vb| AdmUnet::new(self, vb))
    }

    pub fn num_params(&self) -> Result<usize> {
        Ok(checkpoint::num_params(&self.param_shapes()?))
    }

    /// Multiply-accumulates of one forward pass of one `h`×`w` image, layer by layer as
    /// [`AdmUnet::new`] builds the network (norms, activations, softmax, bias and residual adds
    /// are not counted).
    pub fn macs(&self, h: usize, w: usize) -> Result<MacCount> {
        self.validate()?;
        let div = self.spatial_divisor();
        if !h.is_multiple_of(div) || !w.is_multiple_of(div) {
            return Err(Error::config(format!(
                "ADM MAC count: {h}×{w} is not divisible by {div}"
            )));
        }
        let mut m = MacCount::default();
        let ted = self.time_embed_dim() as u64;
        let emb_out = |o: usize| if self.use_scale_shift_norm { 2 * o } else { o } as u64;
        let conv = |m: &mut MacCount, i: usize, o: usize, k: usize, px: usize| {
            m.conv += (i * o * k * k * px) as u64;
        };
        // A ResBlock on `px` input pixels; returns its output pixels.
        let res = |m: &mut MacCount, ch: usize, out: usize, r: Resample, px: usize| {
            let px = match r {
                Resample::None => px,
                Resample::Up => 4 * px,
                Resample::Down => px / 4,
            };
            conv(m, ch, out, 3, px);
            m.linear += ted * emb_out(out);
            conv(m, out, out, 3, px);
            if ch != out {
                conv(m, ch, out, 1, px);
            }
            px
        };
        let attn = |m: &mut MacCount, ch: usize, px: usize| {
            conv(m, ch, 3 * ch, 1, px);
            m.attention += 2 * (px * px * ch) as u64;
            conv(m, ch, ch, 1, px);
        };
        let mc = self.model_channels as u64;
        m.linear += mc * ted + ted * ted;
        let ch0 = self.ch(self.channel_mult[0]);
        let mut px = h * w;
        conv(&mut m, self.in_channels, ch0, 3, px);
        let (mut ch, mut chans, mut ds) = (ch0, vec![ch0], 1);
        let levels = self.channel_mult.len();
        for (level, &mult) in self.channel_mult.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                let out = self.ch(mult);
                px = res(&mut m, ch, out, Resample::None, px);
                ch = out;
                if self.attention_ds.contains(&ds) {
                    attn(&mut m, ch, px);
                }
                chans.push(ch);
            }
            if level + 1 != levels {
                if self.resblock_updown {
                    px = res(&mut m, ch, ch, Resample::Down, px);
                } else {
                    px /= 4;
                    if self.conv_resample {
                        conv(&mut m, ch, ch, 3, px);
                    }
                }
                chans.push(ch);
                ds *= 2;
            }
        }
        px = res(&mut m, ch, ch, Resample::None, px);
        attn(&mut m, ch, px);
        px = res(&mut m, ch, ch, Resample::None, px);
        for (level, &mult) in self.channel_mult.iter().enumerate().rev() {
            for i in 0..=self.num_res_blocks {
                // Invariant: one skip channel count per output block (as in `AdmUnet::new`).
                let ich = chans.pop().expect("skip channel");
                let out = self.ch(mult);
                px = res(&mut m, ch + ich, out, Resample::None, px);
                ch = out;
                if self.attention_ds.contains(&ds) {
                    attn(&mut m, ch, px);
                }
                if level > 0 && i == self.num_res_blocks {
                    if self.resblock_updown {
                        px = res(&mut m, ch, ch, Resample::Up, px);
                    } else {
                        px *= 4;
                        if self.conv_resample {
                            conv(&mut m, ch, ch, 3, px);
                        }
                    }
                    ds /= 2;
                }
            }
        }
        conv(&mut m, ch0, self.out_channels, 3, px);
        Ok(m)
    }
}

/// Multiply-accumulates of one ADM forward pass by kind ([`AdmConfig::macs`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MacCount {
    /// Convolutions, 3×3 and 1×1 (skip connections, attention's qkv and proj_out).
    pub conv: u64,
    /// The time-embedding MLP and each ResBlock's embedding projection.
    pub linear: u64,
    /// Attention's two matrix products, QᵀK and V·Wᵀ (T²·C each).
    pub attention: u64,
}

impl MacCount {
    /// FLOP of the forward pass (2 per multiply-accumulate).
    pub fn forward_flops(&self) -> f64 {
        2.0 * (self.conv + self.linear + self.attention) as f64
    }

    /// FLOP of the backward pass to the input only (frozen weights, as DPS needs): one product
    /// per convolution (Wᵀ·g), two per attention product (both operands depend on x); the
    /// embedding layers do not depend on x.
    pub fn input_backward_flops(&self) -> f64 {
        2.0 * (self.conv + 2 * self.attention) as f64
    }
}

fn conv(
    i: usize,
    o: usize,
    k: usize,
    stride: usize,
    vb: VarBuilder,
) -> candle_core::Result<Conv2d> {
    Conv2d::load(i, o, k, k / 2, stride, vb)
}

fn norm(ch: usize, vb: VarBuilder) -> candle_core::Result<GroupNorm> {
    GroupNorm::load(GN_GROUPS, ch, GN_EPS, vb)
}

/// Nearest ×2 upsampling ([`fastops::upsample2x`]). (candle 0.11.1's `upsample_nearest2d`
/// backward overwrites instead of accumulating the input's gradient, which is wrong when the
/// input has other consumers, as in up-ResBlocks.)
pub fn upsample2x(x: &Tensor) -> candle_core::Result<Tensor> {
    fastops::upsample2x(x)
}

/// guided-diffusion `timestep_embedding`: [cos(t·f), sin(t·f)], f_i = 10000^(−i/half), in f32.
pub(crate) fn timestep_embedding(t: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let c = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (c * i as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Resample {
    None,
    Up,
    Down,
}

#[derive(Debug)]
struct ResBlock {
    in_norm: GroupNorm,
    in_conv: Conv2d,
    emb: Linear,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    skip: Option<Conv2d>,
    resample: Resample,
    scale_shift: bool,
    out_ch: usize,
}

impl ResBlock {
    fn new(
        ch: usize,
        emb_dim: usize,
        out_ch: usize,
        scale_shift: bool,
        resample: Resample,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let emb_out = if scale_shift { 2 * out_ch } else { out_ch };
        Ok(Self {
            in_norm: norm(ch, vb.pp("in_layers.0"))?,
            in_conv: conv(ch, out_ch, 3, 1, vb.pp("in_layers.2"))?,
            emb: candle_nn::linear(emb_dim, emb_out, vb.pp("emb_layers.1"))?,
            out_norm: norm(out_ch, vb.pp("out_layers.0"))?,
            out_conv: conv(out_ch, out_ch, 3, 1, vb.pp("out_layers.3"))?,
            skip: if ch == out_ch {
                None
            } else {
                Some(conv(ch, out_ch, 1, 1, vb.pp("skip_connection"))?)
            },
            resample,
            scale_shift,
            out_ch,
        })
    }

    /// `emb` is the already SiLU-activated time embedding `[B, E]`. With `tape`, what the
    /// input gradient needs is pushed on it ([`pullback`]).
    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        tape: Option<&mut Vec<Saved>>,
    ) -> candle_core::Result<Tensor> {
        let h = self.in_norm.forward_silu(x)?;
        let (h, xr) = match self.resample {
            Resample::None => (h, x.clone()),
            Resample::Up => (upsample2x(&h)?, upsample2x(x)?),
            Resample::Down => (h.avg_pool2d(2)?, x.avg_pool2d(2)?),
        };
        let conv_in = h.dims4()?;
        let h = self.in_conv.forward(&h)?;
        let e = self.emb.forward(emb)?;
        if tape.is_none() && self.scale_shift {
            // Inference: norm, scale-shift and SiLU in one pass, the residual added as the
            // out-conv writes its output (same bits).
            let scale = e.narrow(1, 0, self.out_ch)?;
            let shift = e.narrow(1, self.out_ch, self.out_ch)?;
            let a = self.out_norm.forward_scale_shift_silu(&h, &scale, &shift)?;
            let skip = match &self.skip {
                Some(s) => s.forward(&xr)?,
                None => xr,
            };
            return self.out_conv.forward_add(&a, &skip);
        }
        let (normed, pre, scale) = if self.scale_shift {
            let scale = e.narrow(1, 0, self.out_ch)?;
            let shift = e.narrow(1, self.out_ch, self.out_ch)?;
            let pre = fastops::scale_shift(&self.out_norm.forward(&h)?, &scale, &shift)?;
            (h, pre, Some(scale))
        } else {
            let h = h.broadcast_add(&e.unsqueeze(2)?.unsqueeze(3)?)?;
            let pre = self.out_norm.forward(&h)?;
            (h, pre, None)
        };
        let h = self.out_conv.forward(&fastops::silu(&pre)?)?;
        let skip_in = xr.dims4()?;
        let out = match &self.skip {
            Some(s) => s.forward(&xr)? + h,
            None => xr + h,
        }?;
        if let Some(tape) = tape {
            tape.push(Saved::Res(ResSaved {
                x: x.clone(),
                conv_in,
                normed,
                pre,
                scale,
                skip_in,
            }));
        }
        Ok(out)
    }
}

/// A 1×1 Conv1d stored as `[O, I, 1]`, applied as a matmul on `[B, I, T]`.
#[derive(Debug)]
struct Conv1x1 {
    w: Tensor,
    b: Tensor,
}

impl Conv1x1 {
    fn new(i: usize, o: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let w = vb.get_with_hints((o, i, 1), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let b = vb.get(o, "bias")?;
        Ok(Self {
            w: w.squeeze(2)?,
            b: b.reshape((1, o, 1))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let bsz = x.dim(0)?;
        self.w
            .broadcast_left(bsz)?
            .matmul(&x.contiguous()?)?
            .broadcast_add(&self.b)
    }

    /// Wᵀ·g, the input gradient of [`Conv1x1::forward`].
    fn input_grad(&self, g: &Tensor) -> candle_core::Result<Tensor> {
        let bsz = g.dim(0)?;
        self.w.t()?.broadcast_left(bsz)?.matmul(&g.contiguous()?)
    }
}

#[derive(Debug)]
struct AttentionBlock {
    norm: GroupNorm,
    qkv: Conv1x1,
    proj_out: Conv1x1,
    heads: usize,
    new_order: bool,
}

impl AttentionBlock {
    fn new(ch: usize, heads: usize, new_order: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm: norm(ch, vb.pp("norm"))?,
            qkv: Conv1x1::new(ch, 3 * ch, vb.pp("qkv"))?,
            proj_out: Conv1x1::new(ch, ch, vb.pp("proj_out"))?,
            heads,
            new_order,
        })
    }

    fn forward(&self, x: &Tensor, tape: Option<&mut Vec<Saved>>) -> candle_core::Result<Tensor> {
        let (b, c, hh, ww) = x.dims4()?;
        let t = hh * ww;
        let x = x.reshape((b, c, t))?;
        let qkv = self.qkv.forward(&self.norm.forward(&x)?)?;
        let ch = c / self.heads;
        let bh = b * self.heads;
        let (q, k, v) = if self.new_order {
            // QKVAttention: split q, k, v first, then heads.
            let part = |i: usize| qkv.narrow(1, i * c, c)?.contiguous()?.reshape((bh, ch, t));
            (part(0)?, part(1)?, part(2)?)
        } else {
            // QKVAttentionLegacy: heads first, then q, k, v inside each head.
            let r = qkv.reshape((bh, 3 * ch, t))?;
            (
                r.narrow(1, 0, ch)?,
                r.narrow(1, ch, ch)?,
                r.narrow(1, 2 * ch, ch)?,
            )
        };
        let scale = 1.0 / (ch as f64).sqrt().sqrt();
        let q = (q * scale)?;
        let k = (k * scale)?;
        let w = q.transpose(1, 2)?.matmul(&k)?; // [bh, t, s]
        let dtype = w.dtype();
        let w = match dtype {
            DType::F16 | DType::BF16 => {
                candle_nn::ops::softmax(&w.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dtype)?
            }
            _ => candle_nn::ops::softmax(&w, D::Minus1)?,
        };
        let v = v.contiguous()?;
        let a = v.matmul(&w.transpose(1, 2)?)?; // [bh, ch, t]
        let h = self.proj_out.forward(&a.reshape((b, c, t))?)?;
        let out = (&x + h)?.reshape((b, c, hh, ww))?;
        if let Some(tape) = tape {
            tape.push(Saved::Attn(AttnSaved {
                x,
                q,
                k,
                v,
                w,
                scale,
            }));
        }
        Ok(out)
    }
}

#[derive(Debug)]
enum Layer {
    Conv(Conv2d),
    Res(ResBlock),
    Attn(AttentionBlock),
    /// Downsample without resblock_updown: stride-2 conv `op`, or 2×2 average pooling.
    Down(Option<Conv2d>),
    /// Upsample without resblock_updown: nearest ×2, then `conv` if present.
    Up(Option<Conv2d>),
}

impl Layer {
    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        mut tape: Option<&mut Vec<Saved>>,
    ) -> candle_core::Result<Tensor> {
        let shape = Saved::Shape(x.dims4()?);
        let out = match self {
            Layer::Res(r) => return r.forward(x, emb, tape),
            Layer::Attn(a) => return a.forward(x, tape),
            Layer::Conv(c) | Layer::Down(Some(c)) => c.forward(x),
            Layer::Down(None) => x.avg_pool2d(2),
            Layer::Up(c) => {
                let h = upsample2x(x)?;
                match c {
                    Some(c) => c.forward(&h),
                    None => Ok(h),
                }
            }
        }?;
        if let Some(tape) = tape.as_deref_mut() {
            tape.push(shape);
        }
        Ok(out)
    }
}

/// `TimestepEmbedSequential`.
#[derive(Debug)]
struct Block(Vec<Layer>);

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        mut tape: Option<&mut Vec<Saved>>,
    ) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for l in &self.0 {
            h = l.forward(&h, emb, tape.as_deref_mut())?;
        }
        Ok(h)
    }
}

/// guided-diffusion `UNetModel` (unconditional). Output `[B, out_channels, H, W]`; with
/// `learn_sigma` the first `in_channels` channels are ε and the rest the variance output.
#[derive(Debug)]
pub struct AdmUnet {
    cfg: AdmConfig,
    time_embed_0: Linear,
    time_embed_2: Linear,
    input_blocks: Vec<Block>,
    middle_block: Block,
    output_blocks: Vec<Block>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    device: Device,
    dtype: DType,
}

impl AdmUnet {
    /// Builds the model from a `VarBuilder` (PyTorch names, no prefix).
    pub fn new(cfg: &AdmConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let mc = cfg.model_channels;
        let ted = cfg.time_embed_dim();
        let ss = cfg.use_scale_shift_norm;
        let time_embed_0 = candle_nn::linear(mc, ted, vb.pp("time_embed.0"))?;
        let time_embed_2 = candle_nn::linear(ted, ted, vb.pp("time_embed.2"))?;

        let ch0 = cfg.ch(cfg.channel_mult[0]);
        let mut ch = ch0;
        let mut input_blocks = vec![Block(vec![Layer::Conv(conv(
            cfg.in_channels,
            ch,
            3,
            1,
            vb.pp("input_blocks.0.0"),
        )?)])];
        let mut chans = vec![ch];
        let mut ds = 1;
        let levels = cfg.channel_mult.len();
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let vbb = vb.pp(format!("input_blocks.{}", input_blocks.len()));
                let out = cfg.ch(mult);
                let mut layers = vec![Layer::Res(ResBlock::new(
                    ch,
                    ted,
                    out,
                    ss,
                    Resample::None,
                    vbb.pp("0"),
                )?)];
                ch = out;
                if cfg.attention_ds.contains(&ds) {
                    layers.push(Layer::Attn(AttentionBlock::new(
                        ch,
                        cfg.heads(ch, false),
                        cfg.use_new_attention_order,
                        vbb.pp("1"),
                    )?));
                }
                input_blocks.push(Block(layers));
                chans.push(ch);
            }
            if level + 1 != levels {
                let vbb = vb.pp(format!("input_blocks.{}.0", input_blocks.len()));
                let layer = if cfg.resblock_updown {
                    Layer::Res(ResBlock::new(ch, ted, ch, ss, Resample::Down, vbb)?)
                } else if cfg.conv_resample {
                    Layer::Down(Some(Conv2d::load(ch, ch, 3, 1, 2, vbb.pp("op"))?))
                } else {
                    Layer::Down(None)
                };
                input_blocks.push(Block(vec![layer]));
                chans.push(ch);
                ds *= 2;
            }
        }

        let vbm = vb.pp("middle_block");
        let middle_block = Block(vec![
            Layer::Res(ResBlock::new(ch, ted, ch, ss, Resample::None, vbm.pp("0"))?),
            Layer::Attn(AttentionBlock::new(
                ch,
                cfg.heads(ch, false),
                cfg.use_new_attention_order,
                vbm.pp("1"),
            )?),
            Layer::Res(ResBlock::new(ch, ted, ch, ss, Resample::None, vbm.pp("2"))?),
        ]);

        let mut output_blocks = Vec::new();
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            for i in 0..=cfg.num_res_blocks {
                // Invariant: the input blocks pushed levels·(num_res_blocks + 1) channels, one
                // per output block, whatever the configuration.
                let ich = chans.pop().expect("skip channel");
                let vbb = vb.pp(format!("output_blocks.{}", output_blocks.len()));
                let out = cfg.ch(mult);
                let mut layers = vec![Layer::Res(ResBlock::new(
                    ch + ich,
                    ted,
                    out,
                    ss,
                    Resample::None,
                    vbb.pp("0"),
                )?)];
                ch = out;
                if cfg.attention_ds.contains(&ds) {
                    layers.push(Layer::Attn(AttentionBlock::new(
                        ch,
                        cfg.heads(ch, true),
                        cfg.use_new_attention_order,
                        vbb.pp("1"),
                    )?));
                }
                if level > 0 && i == cfg.num_res_blocks {
                    let vbu = vbb.pp(layers.len().to_string());
                    layers.push(if cfg.resblock_updown {
                        Layer::Res(ResBlock::new(ch, ted, ch, ss, Resample::Up, vbu)?)
                    } else if cfg.conv_resample {
                        Layer::Up(Some(conv(ch, ch, 3, 1, vbu.pp("conv"))?))
                    } else {
                        Layer::Up(None)
                    });
                    ds /= 2;
                }
                output_blocks.push(Block(layers));
            }
        }
        let out_norm = norm(ch, vb.pp("out.0"))?;
        let out_conv = conv(ch0, cfg.out_channels, 3, 1, vb.pp("out.2"))?;
        Ok(Self {
            cfg: cfg.clone(),
            time_embed_0,
            time_embed_2,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm,
            out_conv,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// Loads f32 weights from `.safetensors` or a PyTorch pickle (`.pt`, `.pth`, `.bin`, `.ckpt`).
    pub fn load(cfg: &AdmConfig, path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_with_dtype(cfg, path, device, DType::F32)
    }

    /// As [`AdmUnet::load`], with the parameters cast to `dtype`.
    pub fn load_with_dtype(
        cfg: &AdmConfig,
        path: impl AsRef<Path>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let path = path.as_ref();
        let expected = cfg.param_shapes()?;
        let tensors = checkpoint::load_state_dict(path)?;
        let vb = checkpoint::var_builder(
            tensors,
            &expected,
            dtype,
            device,
            &path.display().to_string(),
        )?;
        Ok(Self::new(cfg, vb)?)
    }

    pub fn config(&self) -> &AdmConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Checks the input `x` and returns the sinusoidal embedding of `t` and the time
    /// embedding MLP's output, one row per image.
    fn embedding(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, c, h, w) = x.dims4()?;
        let div = self.cfg.spatial_divisor();
        if c != self.cfg.in_channels || h % div != 0 || w % div != 0 {
            candle_core::bail!(
                "ADM UNet: input {:?} needs {} channels and H, W divisible by {div}",
                x.dims(),
                self.cfg.in_channels
            );
        }
        let t = timesteps_for_batch(t, b)?.to_device(&self.device)?;
        let temb = timestep_embedding(&t, self.cfg.model_channels)?;
        let emb = self.time_embed_2.forward(
            &self
                .time_embed_0
                .forward(&temb.to_dtype(self.dtype)?)?
                .silu()?,
        )?;
        Ok((temb, emb))
    }

    /// `model(x, timesteps)`: `x` `[B, in_channels, H, W]`, `t` `[B]`, `[1]` or 0-dim (any
    /// numeric dtype; fractional values allowed).
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_traced(x, t, &mut |_, _| {})
    }

    /// As [`AdmUnet::forward`], calling `trace(name, tensor)` with `timestep_embedding_sinusoidal`,
    /// `emb`, `input_blocks.i`, `middle_block`, `output_blocks.i` and `out`.
    pub fn forward_traced(
        &self,
        x: &Tensor,
        t: &Tensor,
        trace: &mut dyn FnMut(&str, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let (temb, emb) = self.embedding(x, t)?;
        trace("timestep_embedding_sinusoidal", &temb);
        trace("emb", &emb);
        // Every ResBlock starts its emb_layers with SiLU.
        let emb_act = emb.silu()?;
        self.body(x, &emb_act, trace, None)
    }

    /// The network after the time embedding (`emb_act`: its SiLU); with `tape`, each block's
    /// saved values for the pullback.
    fn body(
        &self,
        x: &Tensor,
        emb_act: &Tensor,
        trace: &mut dyn FnMut(&str, &Tensor),
        mut tape: Option<&mut Tape>,
    ) -> candle_core::Result<Tensor> {
        let mut h = x.to_dtype(self.dtype)?;
        let mut hs = Vec::with_capacity(self.input_blocks.len());
        for (i, blk) in self.input_blocks.iter().enumerate() {
            h = blk.forward(&h, emb_act, tape.as_deref_mut().map(|t| t.push()))?;
            trace(&format!("input_blocks.{i}"), &h);
            hs.push(h.clone());
        }
        h = self
            .middle_block
            .forward(&h, emb_act, tape.as_deref_mut().map(|t| t.push()))?;
        trace("middle_block", &h);
        for (i, blk) in self.output_blocks.iter().enumerate() {
            // Invariant: one skip per output block was pushed (see `new`).
            let skip = hs.pop().expect("skip");
            if let Some(t) = tape.as_deref_mut() {
                t.splits.push(h.dim(1)?);
            }
            h = blk.forward(
                &Tensor::cat(&[&h, &skip], 1)?,
                emb_act,
                tape.as_deref_mut().map(|t| t.push()),
            )?;
            trace(&format!("output_blocks.{i}"), &h);
        }
        let out = self.out_conv.forward(&self.out_norm.forward_silu(&h)?)?;
        if let Some(t) = tape {
            t.head = Some(h);
        }
        trace("out", &out);
        Ok(out)
    }
}

impl TimestepNet for AdmUnet {
    fn forward_t(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        Ok(self.forward(x, t)?)
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn in_channels(&self) -> usize {
        self.cfg.in_channels
    }
    fn image_size(&self) -> Option<usize> {
        Some(self.cfg.image_size)
    }
    fn forward_t_vjp(
        &self,
        x: &Tensor,
        t: &Tensor,
    ) -> Result<(Tensor, crate::prior::Pullback<'_>)> {
        self.forward_pullback(x, t)
    }
    fn describe(&self) -> String {
        format!(
            "ADM UNet {}px, {} ch, mult {:?}, {} res blocks",
            self.cfg.image_size,
            self.cfg.model_channels,
            self.cfg.channel_mult,
            self.cfg.num_res_blocks
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MAC count of a small configuration against a count by hand, layer by layer.
    #[test]
    fn macs_match_a_hand_count() {
        let cfg = AdmConfig {
            image_size: 8,
            in_channels: 3,
            model_channels: 32,
            out_channels: 3,
            num_res_blocks: 1,
            attention_ds: vec![2],
            channel_mult: vec![1.0, 2.0],
            num_heads: 1,
            num_head_channels: None,
            num_heads_upsample: None,
            use_scale_shift_norm: false,
            resblock_updown: false,
            conv_resample: true,
            use_new_attention_order: false,
        };
        // 8×8 = 64 pixels at level 0, 4×4 = 16 at level 1; conv MACs = I·O·k²·pixels.
        let c3 = |i: u64, o: u64, px: u64| i * o * 9 * px;
        let c1 = |i: u64, o: u64, px: u64| i * o * px;
        let attn_conv = c1(64, 192, 16) + c1(64, 64, 16); // qkv and proj_out
        let conv = c3(3, 32, 64) // input_blocks.0
            + c3(32, 32, 64) + c3(32, 32, 64) // input_blocks.1: ResBlock 32 → 32
            + c3(32, 32, 16) // input_blocks.2: stride-2 conv
            + c3(32, 64, 16) + c3(64, 64, 16) + c1(32, 64, 16) + attn_conv // input_blocks.3
            + 2 * (c3(64, 64, 16) + c3(64, 64, 16)) + attn_conv // middle_block
            + c3(128, 64, 16) + c3(64, 64, 16) + c1(128, 64, 16) + attn_conv // output_blocks.0
            + c3(96, 64, 16) + c3(64, 64, 16) + c1(96, 64, 16) + attn_conv // output_blocks.1 …
            + c3(64, 64, 64) // … and its upsampling conv at 8×8
            + c3(96, 32, 64) + c3(32, 32, 64) + c1(96, 32, 64) // output_blocks.2
            + c3(64, 32, 64) + c3(32, 32, 64) + c1(64, 32, 64) // output_blocks.3
            + c3(32, 3, 64); // out.2
                             // time_embed (32 → 128 → 128), then each ResBlock's emb_layers (128 → out channels).
        let linear = 32 * 128 + 128 * 128 + 128 * (32 + 64 + 64 + 64 + 64 + 64 + 32 + 32);
        // QᵀK and V·Wᵀ: T²·C each, at the four attention blocks (T = 16, C = 64).
        let attention = 4 * 2 * 16 * 16 * 64;
        let m = cfg.macs(8, 8).unwrap();
        assert_eq!(
            m,
            MacCount {
                conv,
                linear,
                attention
            }
        );
        assert!(cfg.macs(7, 8).is_err());
    }
}
