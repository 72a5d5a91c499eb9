//! diffusers `UNet2DModel` (unconditional DDPM UNet, e.g. google/ddpm-celebahq-256), loaded from a
//! diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors` or `.bin`).
//!
//! Blocks: DownBlock2D, AttnDownBlock2D, UpBlock2D, AttnUpBlock2D, UNetMidBlock2D. Attention
//! accepts both the current (`to_q`, `to_k`, `to_v`, `to_out.0`) and the legacy (`query`, `key`,
//! `value`, `proj_attn`) weight names. All ops are differentiable.

use crate::error::{Error, Result};
use crate::nn::checkpoint;
use crate::nn::fastops::{self, Conv2d, GroupNorm};
use crate::prior::adm::upsample2x;
use crate::prior::vp::{timesteps_for_batch, TimestepNet};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// The subset of diffusers' `UNet2DModel` config this port reads (defaults as in diffusers).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct Unet2dConfig {
    #[serde(deserialize_with = "de_sample_size")]
    pub sample_size: Option<usize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub freq_shift: f64,
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: usize,
    pub downsample_type: String,
    pub upsample_type: String,
    pub act_fn: String,
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: Option<usize>,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub resnet_time_scale_shift: String,
    pub add_attention: bool,
    pub class_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
}

/// `sample_size` is an int or `[h, w]` (only square sizes are kept).
fn de_sample_size<'de, De: serde::Deserializer<'de>>(
    d: De,
) -> std::result::Result<Option<usize>, De::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64().map(|v| v as usize),
        serde_json::Value::Array(a) if a.len() == 2 && a[0] == a[1] => {
            a[0].as_u64().map(|v| v as usize)
        }
        _ => None,
    })
}

impl Default for Unet2dConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: s(&[
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2D".into()),
            up_block_types: s(&[
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: Some(32),
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
        }
    }
}

impl Unet2dConfig {
    /// google/ddpm-celebahq-256 (Hub config): 113,673,219 parameters.
    pub fn ddpm_celebahq256() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            sample_size: Some(256),
            freq_shift: 1.0,
            flip_sin_to_cos: false,
            down_block_types: s(&[
                "DownBlock2D",
                "DownBlock2D",
                "DownBlock2D",
                "DownBlock2D",
                "AttnDownBlock2D",
                "DownBlock2D",
            ]),
            up_block_types: s(&[
                "UpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
                "UpBlock2D",
                "UpBlock2D",
                "UpBlock2D",
            ]),
            block_out_channels: vec![128, 128, 256, 256, 512, 512],
            layers_per_block: 2,
            downsample_padding: 0,
            attention_head_dim: None,
            norm_num_groups: Some(32),
            norm_eps: 1e-6,
            ..Self::default()
        }
    }

    /// Reads a diffusers `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let unsupported = |what: String| Err(Error::Unsupported(format!("UNet2DModel: {what}")));
        if self.time_embedding_type != "positional" {
            return unsupported(format!(
                "time_embedding_type {:?}",
                self.time_embedding_type
            ));
        }
        if self.class_embed_type.is_some() || self.num_class_embeds.is_some() {
            return unsupported("class embeddings".into());
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return unsupported(format!("act_fn {:?}", self.act_fn));
        }
        if self.downsample_type != "conv" || self.upsample_type != "conv" {
            return unsupported("resnet down/upsamplers (only \"conv\")".into());
        }
        if !matches!(
            self.resnet_time_scale_shift.as_str(),
            "default" | "scale_shift"
        ) {
            return unsupported(format!(
                "resnet_time_scale_shift {:?}",
                self.resnet_time_scale_shift
            ));
        }
        if self.norm_num_groups.is_none() {
            return unsupported("norm_num_groups = null".into());
        }
        for t in &self.down_block_types {
            if !matches!(t.as_str(), "DownBlock2D" | "AttnDownBlock2D") {
                return unsupported(format!("down block {t}"));
            }
        }
        for t in &self.up_block_types {
            if !matches!(t.as_str(), "UpBlock2D" | "AttnUpBlock2D") {
                return unsupported(format!("up block {t}"));
            }
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2D") => {}
            Some(t) => return unsupported(format!("mid block {t}")),
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::config(
                "UNet2DModel: block_out_channels, down_block_types and up_block_types must have the same non-zero length",
            ));
        }
        Ok(())
    }

    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// Parameter names and shapes in `state_dict` order, without allocating weights.
    pub fn param_shapes(&self) -> Result<checkpoint::ParamList> {
        self.validate()?;
        checkpoint::record_params(|vb| Unet2dModel::new(self, vb))
    }
}

/// diffusers `get_timestep_embedding`, in f32: [sin, cos] (or [cos, sin] with `flip_sin_to_cos`),
/// frequencies exp(−ln(10000)·i/(half − shift)).
pub(crate) fn timestep_embedding(
    t: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let c = -(10000f64.ln()) as f32;
    let denom = (half as f64 - shift) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| (c * i as f32 / denom).exp()).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], 1)?
    } else {
        Tensor::cat(&[sin, cos], 1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// A `k×k` convolution with the fast CPU backward ([`fastops::Conv2d`]).
pub(crate) fn conv(
    i: usize,
    o: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> candle_core::Result<Conv2d> {
    Conv2d::load(i, o, k, padding, stride, vb)
}

pub(crate) fn group_norm(
    groups: usize,
    ch: usize,
    eps: f64,
    vb: VarBuilder,
) -> candle_core::Result<GroupNorm> {
    GroupNorm::load(groups, ch, eps, vb)
}

/// diffusers `ResnetBlock2D`; without `temb` (the VAE's blocks) it has no `time_emb_proj`.
#[derive(Debug)]
pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    scale_shift: bool,
    out_ch: usize,
    output_scale_factor: f64,
}

pub(crate) struct ResnetArgs {
    pub temb: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub scale_shift: bool,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub(crate) fn new(
        i: usize,
        o: usize,
        a: &ResnetArgs,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        // Parameters are requested in `state_dict` order.
        let norm1 = group_norm(a.groups, i, a.eps, vb.pp("norm1"))?;
        let conv1 = conv(i, o, 3, 1, 1, vb.pp("conv1"))?;
        let time_emb_proj = match a.temb {
            Some(t) => Some(candle_nn::linear(
                t,
                if a.scale_shift { 2 * o } else { o },
                vb.pp("time_emb_proj"),
            )?),
            None => None,
        };
        Ok(Self {
            norm1,
            conv1,
            time_emb_proj,
            norm2: group_norm(a.groups, o, a.eps, vb.pp("norm2"))?,
            conv2: conv(o, o, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut: if i != o {
                Some(conv(i, o, 1, 1, 0, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
            scale_shift: a.scale_shift,
            out_ch: o,
            output_scale_factor: a.output_scale_factor,
        })
    }

    /// `temb_act` is the SiLU-activated time embedding (`None` for a block without one).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        temb_act: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let h = self
            .conv1
            .forward(&fastops::silu(&self.norm1.forward(x)?)?)?;
        let e = match (&self.time_emb_proj, temb_act) {
            (Some(p), Some(t)) => Some(p.forward(t)?.unsqueeze(2)?.unsqueeze(3)?),
            (None, _) => None,
            (Some(_), None) => candle_core::bail!("ResnetBlock2D: time embedding missing"),
        };
        let h = match e {
            Some(e) if self.scale_shift => {
                let scale = (e.narrow(1, 0, self.out_ch)? + 1.0)?;
                let shift = e.narrow(1, self.out_ch, self.out_ch)?;
                self.norm2
                    .forward(&h)?
                    .broadcast_mul(&scale)?
                    .broadcast_add(&shift)?
            }
            Some(e) => self.norm2.forward(&h.broadcast_add(&e)?)?,
            None => self.norm2.forward(&h)?,
        };
        let h = self.conv2.forward(&fastops::silu(&h)?)?;
        let x = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let out = (x + h)?;
        if self.output_scale_factor != 1.0 {
            out / self.output_scale_factor
        } else {
            Ok(out)
        }
    }
}

/// diffusers `Attention` as built by the deprecated attention block (`residual_connection`,
/// optional GroupNorm, biased projections).
#[derive(Debug)]
pub(crate) struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    rescale: f64,
}

impl Attention {
    pub(crate) fn new(
        ch: usize,
        head_dim: usize,
        groups: Option<usize>,
        eps: f64,
        rescale: f64,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let heads = (ch / head_dim).max(1);
        let inner = heads * head_dim;
        Ok(Self {
            group_norm: match groups {
                Some(g) => Some(group_norm(g, ch, eps, vb.pp("group_norm"))?),
                None => None,
            },
            to_q: candle_nn::linear(ch, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear(ch, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear(ch, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, ch, vb.pp("to_out.0"))?,
            heads,
            head_dim,
            rescale,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = h * w;
        let mut hs = x.reshape((b, c, t))?;
        if let Some(gn) = &self.group_norm {
            hs = gn.forward(&hs)?;
        }
        let hs = hs.transpose(1, 2)?.contiguous()?; // [b, t, c]
        let split = |l: &Linear| -> candle_core::Result<Tensor> {
            l.forward(&hs)?
                .reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(&self.to_q)?, split(&self.to_k)?, split(&self.to_v)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let s = (q.matmul(&k.t()?)? * scale)?;
        let dtype = s.dtype();
        let p = match dtype {
            DType::F16 | DType::BF16 => {
                candle_nn::ops::softmax(&s.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dtype)?
            }
            _ => candle_nn::ops::softmax(&s, D::Minus1)?,
        };
        let o = p
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        let o = self
            .to_out
            .forward(&o)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        let out = (o + x)?;
        if self.rescale != 1.0 {
            out / self.rescale
        } else {
            Ok(out)
        }
    }
}

#[derive(Debug)]
struct DownBlock {
    attentions: Vec<Attention>,
    resnets: Vec<ResnetBlock2D>,
    /// 3×3 stride-2 conv; with padding 0 the input is first zero-padded right/bottom by 1.
    downsampler: Option<(Conv2d, bool)>,
}

impl DownBlock {
    fn forward(
        &self,
        x: &Tensor,
        temb_act: &Tensor,
        states: &mut Vec<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, r) in self.resnets.iter().enumerate() {
            h = r.forward(&h, Some(temb_act))?;
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h)?;
            }
            states.push(h.clone());
        }
        if let Some((c, pad)) = &self.downsampler {
            if *pad {
                h = h.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            }
            h = c.forward(&h)?;
            states.push(h.clone());
        }
        Ok(h)
    }
}

#[derive(Debug)]
struct UpBlock {
    attentions: Vec<Attention>,
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Conv2d>,
}

impl UpBlock {
    fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb_act: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, r) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("UNet2DModel: skip stack empty".into()))?;
            h = r.forward(&Tensor::cat(&[&h, &skip], 1)?, Some(temb_act))?;
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h)?;
            }
        }
        if let Some(c) = &self.upsampler {
            h = c.forward(&upsample2x(&h)?)?;
        }
        Ok(h)
    }
}

#[derive(Debug)]
struct MidBlock {
    attentions: Vec<Attention>,
    resnets: Vec<ResnetBlock2D>,
}

/// diffusers `UNet2DModel` (positional time embedding, no class conditioning).
#[derive(Debug)]
pub struct Unet2dModel {
    cfg: Unet2dConfig,
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    down_blocks: Vec<DownBlock>,
    up_blocks: Vec<UpBlock>,
    mid_block: Option<MidBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    device: Device,
    dtype: DType,
}

impl Unet2dModel {
    /// Builds the model from a `VarBuilder` with diffusers names (`to_q`… attention names).
    pub fn new(cfg: &Unet2dConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let temb = cfg.time_embed_dim();
        let groups = cfg.norm_num_groups.unwrap_or(32);
        let eps = cfg.norm_eps;
        let args = ResnetArgs {
            temb: Some(temb),
            groups,
            eps,
            scale_shift: cfg.resnet_time_scale_shift == "scale_shift",
            output_scale_factor: 1.0,
        };
        let conv_in = conv(cfg.in_channels, boc[0], 3, 1, 1, vb.pp("conv_in"))?;
        let time_linear_1 = candle_nn::linear(boc[0], temb, vb.pp("time_embedding.linear_1"))?;
        let time_linear_2 = candle_nn::linear(temb, temb, vb.pp("time_embedding.linear_2"))?;

        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = boc[0];
        for (i, ty) in cfg.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = boc[i];
            let vbb = vb.pp(format!("down_blocks.{i}"));
            let head_dim = cfg.attention_head_dim.unwrap_or(out_ch);
            let mut attentions = Vec::new();
            if ty == "AttnDownBlock2D" {
                for j in 0..cfg.layers_per_block {
                    let vba = vbb.pp(format!("attentions.{j}"));
                    attentions.push(Attention::new(
                        out_ch,
                        head_dim,
                        Some(groups),
                        eps,
                        1.0,
                        vba,
                    )?);
                }
            }
            let mut resnets = Vec::new();
            for j in 0..cfg.layers_per_block {
                let c = if j == 0 { in_ch } else { out_ch };
                let vbr = vbb.pp(format!("resnets.{j}"));
                resnets.push(ResnetBlock2D::new(c, out_ch, &args, vbr)?);
            }
            let downsampler = if i + 1 < n {
                let p = cfg.downsample_padding;
                let c = conv(out_ch, out_ch, 3, 2, p, vbb.pp("downsamplers.0.conv"))?;
                Some((c, p == 0))
            } else {
                None
            };
            down_blocks.push(DownBlock {
                attentions,
                resnets,
                downsampler,
            });
        }

        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_ch = rev[0];
        for (i, ty) in cfg.up_block_types.iter().enumerate() {
            let prev_out = out_ch;
            out_ch = rev[i];
            let in_ch = rev[(i + 1).min(n - 1)];
            let vbb = vb.pp(format!("up_blocks.{i}"));
            let layers = cfg.layers_per_block + 1;
            let head_dim = cfg.attention_head_dim.unwrap_or(out_ch);
            let mut attentions = Vec::new();
            if ty == "AttnUpBlock2D" {
                for j in 0..layers {
                    let vba = vbb.pp(format!("attentions.{j}"));
                    attentions.push(Attention::new(
                        out_ch,
                        head_dim,
                        Some(groups),
                        eps,
                        1.0,
                        vba,
                    )?);
                }
            }
            let mut resnets = Vec::new();
            for j in 0..layers {
                let skip = if j == layers - 1 { in_ch } else { out_ch };
                let rin = if j == 0 { prev_out } else { out_ch };
                let vbr = vbb.pp(format!("resnets.{j}"));
                resnets.push(ResnetBlock2D::new(rin + skip, out_ch, &args, vbr)?);
            }
            let upsampler = if i + 1 < n {
                Some(conv(out_ch, out_ch, 3, 1, 1, vbb.pp("upsamplers.0.conv"))?)
            } else {
                None
            };
            up_blocks.push(UpBlock {
                attentions,
                resnets,
                upsampler,
            });
        }

        let mid_block = if cfg.mid_block_type.is_some() {
            let ch = boc[n - 1];
            let vbm = vb.pp("mid_block");
            let mid_args = ResnetArgs {
                output_scale_factor: cfg.mid_block_scale_factor,
                ..args
            };
            let attn_groups = match cfg.attn_norm_num_groups {
                Some(g) => Some(g),
                None if cfg.resnet_time_scale_shift == "default" => Some(groups),
                None => None,
            };
            let mut attentions = Vec::new();
            if cfg.add_attention {
                let head_dim = cfg.attention_head_dim.unwrap_or(ch);
                attentions.push(Attention::new(
                    ch,
                    head_dim,
                    attn_groups,
                    eps,
                    cfg.mid_block_scale_factor,
                    vbm.pp("attentions.0"),
                )?);
            }
            let resnets = vec![
                ResnetBlock2D::new(ch, ch, &mid_args, vbm.pp("resnets.0"))?,
                ResnetBlock2D::new(ch, ch, &mid_args, vbm.pp("resnets.1"))?,
            ];
            Some(MidBlock {
                attentions,
                resnets,
            })
        } else {
            None
        };
        let conv_norm_out = group_norm(groups, boc[0], eps, vb.pp("conv_norm_out"))?;
        let conv_out = conv(boc[0], cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?;
        Ok(Self {
            cfg: cfg.clone(),
            conv_in,
            time_linear_1,
            time_linear_2,
            down_blocks,
            up_blocks,
            mid_block,
            conv_norm_out,
            conv_out,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// Loads a diffusers folder: `config.json` plus `diffusion_pytorch_model.safetensors`
    /// (or `diffusion_pytorch_model.bin`), as f32.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "diffusers model folder not found",
                ),
            });
        }
        let cfg = Unet2dConfig::from_json_file(dir.join("config.json"))?;
        let st = dir.join("diffusion_pytorch_model.safetensors");
        let bin = dir.join("diffusion_pytorch_model.bin");
        let weights = if st.is_file() || !bin.is_file() {
            st
        } else {
            bin
        };
        Self::load(&cfg, weights, device, DType::F32)
    }

    /// Loads weights (`.safetensors` or PyTorch pickle) for `cfg`; legacy attention names are
    /// renamed.
    pub fn load(
        cfg: &Unet2dConfig,
        weights: impl AsRef<Path>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let path = weights.as_ref();
        let expected = cfg.param_shapes()?;
        let tensors = rename_legacy_attention(checkpoint::load_state_dict(path)?);
        let vb = checkpoint::var_builder(
            tensors,
            &expected,
            dtype,
            device,
            &path.display().to_string(),
        )?;
        Ok(Self::new(cfg, vb)?)
    }

    pub fn config(&self) -> &Unet2dConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The sinusoidal projection `time_proj(t)` `[B, block_out_channels[0]]` (f32).
    pub fn time_proj(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        timestep_embedding(
            t,
            self.cfg.block_out_channels[0],
            self.cfg.flip_sin_to_cos,
            self.cfg.freq_shift,
        )
    }

    /// `time_embedding(t_emb)`: linear_1 → SiLU → linear_2.
    pub fn time_embedding(&self, t_emb: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.time_linear_1.forward(&t_emb.to_dtype(self.dtype)?)?;
        self.time_linear_2.forward(&h.silu()?)
    }

    /// `model(x, t).sample`: `t` is `[B]`, `[1]` or 0-dim, integer or float.
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let div = 1usize << (self.cfg.block_out_channels.len() - 1);
        if c != self.cfg.in_channels || h % div != 0 || w % div != 0 {
            candle_core::bail!(
                "UNet2DModel: input {:?} needs {} channels and H, W divisible by {div}",
                x.dims(),
                self.cfg.in_channels
            );
        }
        let t = timesteps_for_batch(t, b)?.to_device(&self.device)?;
        let emb = self.time_embedding(&self.time_proj(&t)?)?;
        let temb_act = emb.silu()?;
        let mut x = x.to_dtype(self.dtype)?;
        if self.cfg.center_input_sample {
            x = x.affine(2.0, -1.0)?;
        }
        let mut h = self.conv_in.forward(&x)?;
        let mut states = vec![h.clone()];
        for d in &self.down_blocks {
            h = d.forward(&h, &temb_act, &mut states)?;
        }
        if let Some(m) = &self.mid_block {
            h = m.resnets[0].forward(&h, Some(&temb_act))?;
            if let Some(a) = m.attentions.first() {
                h = a.forward(&h)?;
            }
            h = m.resnets[1].forward(&h, Some(&temb_act))?;
        }
        for u in &self.up_blocks {
            h = u.forward(&h, &mut states, &temb_act)?;
        }
        let h = fastops::silu(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h)
    }
}

/// Maps pre-refactor attention names (`query`, `key`, `value`, `proj_attn`) to the current ones.
pub fn rename_legacy_attention(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    const MAP: [(&str, &str); 4] = [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ];
    tensors
        .into_iter()
        .map(|(k, v)| {
            if !k.contains("attentions.") {
                return (k, v);
            }
            let mut k = k;
            for (old, new) in MAP {
                if k.contains(old) {
                    k = k.replacen(old, new, 1);
                }
            }
            (k, v)
        })
        .collect()
}

impl TimestepNet for Unet2dModel {
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
        self.cfg.sample_size
    }
    fn describe(&self) -> String {
        format!(
            "diffusers UNet2DModel, channels {:?}, {} layers per block",
            self.cfg.block_out_channels, self.cfg.layers_per_block
        )
    }
}
