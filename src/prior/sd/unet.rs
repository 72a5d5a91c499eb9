//! diffusers `UNet2DConditionModel` (Stable Diffusion 1.x / 2.x layout): ResnetBlock2D and
//! Transformer2DModel blocks with self- and cross-attention, GEGLU feed-forward.
//!
//! `attention_head_dim` follows diffusers' legacy meaning: the **number of heads** (an int or a
//! list per down block); `num_attention_heads`, when set, takes precedence. SD 2.x's
//! `use_linear_projection` makes proj_in/proj_out Linear layers instead of 1×1 convolutions.

use crate::error::{Error, Result};
use crate::nn::checkpoint;
use crate::nn::fastops::{self, Conv2d, GroupNorm};
use crate::prior::adm::upsample2x;
use crate::prior::unet2d::{conv, group_norm, timestep_embedding, ResnetArgs, ResnetBlock2D};
use crate::prior::vp::timesteps_for_batch;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;
use std::path::Path;

/// An int or a list of ints (diffusers accepts both for per-block settings).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, n: usize) -> Vec<usize> {
        match self {
            PerBlock::One(v) => vec![*v; n],
            PerBlock::Each(v) => v.clone(),
        }
    }
}

/// The `UNet2DConditionModel` config fields this port reads (defaults as in diffusers).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct UnetConfig {
    pub sample_size: Option<usize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: bool,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    pub transformer_layers_per_block: usize,
    pub attention_head_dim: PerBlock,
    pub num_attention_heads: Option<PerBlock>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    pub resnet_time_scale_shift: String,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub time_cond_proj_dim: Option<usize>,
    pub timestep_post_act: Option<String>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub attention_type: String,
}

impl Default for UnetConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: s(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            only_cross_attention: false,
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: 1280,
            transformer_layers_per_block: 1,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            num_class_embeds: None,
            resnet_time_scale_shift: "default".into(),
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_cond_proj_dim: None,
            timestep_post_act: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: "default".into(),
        }
    }
}

impl UnetConfig {
    /// Stable Diffusion 1.5's UNet (`unet/config.json` of the Hub pipeline): 859,520,964
    /// parameters.
    pub fn sd15() -> Self {
        Self {
            sample_size: Some(64),
            cross_attention_dim: 768,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let unsupported = |w: String| Err(Error::Unsupported(format!("UNet2DConditionModel: {w}")));
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::config(
                "UNet2DConditionModel: block_out_channels, down_block_types and up_block_types must have the same non-zero length",
            ));
        }
        if self.heads().len() != n {
            return Err(Error::config(format!(
                "UNet2DConditionModel: {} attention head counts for {n} blocks",
                self.heads().len()
            )));
        }
        for (what, bad) in [
            ("only_cross_attention", self.only_cross_attention),
            ("dual_cross_attention", self.dual_cross_attention),
            ("center_input_sample", self.center_input_sample),
            ("class embeddings", self.class_embed_type.is_some()),
            ("class embeddings", self.num_class_embeds.is_some()),
            (
                "addition_embed_type (SDXL)",
                self.addition_embed_type.is_some(),
            ),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            ("timestep_post_act", self.timestep_post_act.is_some()),
        ] {
            if bad {
                return unsupported(what.into());
            }
        }
        if self.time_embedding_type != "positional" {
            return unsupported(format!(
                "time_embedding_type {:?}",
                self.time_embedding_type
            ));
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return unsupported(format!("act_fn {:?}", self.act_fn));
        }
        if self.resnet_time_scale_shift != "default" {
            return unsupported(format!(
                "resnet_time_scale_shift {:?}",
                self.resnet_time_scale_shift
            ));
        }
        if self.attention_type != "default" {
            return unsupported(format!("attention_type {:?}", self.attention_type));
        }
        if self.conv_in_kernel != 3 || self.conv_out_kernel != 3 {
            return unsupported("conv_in/conv_out kernels other than 3".into());
        }
        for t in &self.down_block_types {
            if !matches!(t.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D") {
                return unsupported(format!("down block {t}"));
            }
        }
        for t in &self.up_block_types {
            if !matches!(t.as_str(), "CrossAttnUpBlock2D" | "UpBlock2D") {
                return unsupported(format!("up block {t}"));
            }
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return unsupported(format!("mid block {:?}", self.mid_block_type));
        }
        Ok(())
    }

    /// Heads per down block (diffusers: `num_attention_heads or attention_head_dim`).
    pub fn heads(&self) -> Vec<usize> {
        let n = self.block_out_channels.len();
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .get(n)
    }

    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels[0])
    }

    /// Parameter names and shapes in `state_dict` order, without allocating weights.
    pub fn param_shapes(&self) -> Result<checkpoint::ParamList> {
        self.validate()?;
        checkpoint::record_params(|vb| UNet2DConditionModel::new(self, vb))
    }
}

/// LayerNorm over the last dimension from differentiable tensor ops (candle's fused
/// `layer_norm` passes no gradient).
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn new(dim: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.))?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.))?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Multi-head softmax attention of `q` `[B, T, h·d]` over `k`, `v` `[B, S, h·d]`, with an
/// optional additive mask `[T, S]`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (b, t, inner) = q.dims3()?;
    let s = k.dim(1)?;
    let d = inner / heads;
    let split = |x: &Tensor, n: usize| -> candle_core::Result<Tensor> {
        x.reshape((b, n, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q, t)?, split(k, s)?, split(v, s)?);
    let mut w = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    if let Some(m) = mask {
        w = w.broadcast_add(m)?;
    }
    let p = candle_nn::ops::softmax(&w, D::Minus1)?;
    p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, inner))
}

#[derive(Debug)]
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl CrossAttention {
    fn new(dim: usize, ctx: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            to_q: candle_nn::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(ctx, dim, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(ctx, dim, vb.pp("to_v"))?,
            to_out: candle_nn::linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let o = attention(
            &self.to_q.forward(x)?,
            &self.to_k.forward(ctx)?,
            &self.to_v.forward(ctx)?,
            self.heads,
            None,
        )?;
        self.to_out.forward(&o)
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward (pre-LN).
#[derive(Debug)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(dim: usize, ctx: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(dim, 1e-5, vb.pp("norm1"))?,
            attn1: CrossAttention::new(dim, dim, heads, vb.pp("attn1"))?,
            norm2: LayerNorm::new(dim, 1e-5, vb.pp("norm2"))?,
            attn2: CrossAttention::new(dim, ctx, heads, vb.pp("attn2"))?,
            norm3: LayerNorm::new(dim, 1e-5, vb.pp("norm3"))?,
            ff_in: candle_nn::linear(dim, 8 * dim, vb.pp("ff.net.0.proj"))?,
            ff_out: candle_nn::linear(4 * dim, dim, vb.pp("ff.net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.norm1.forward(x)?;
        let x = (self.attn1.forward(&h, &h)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, ctx)? + &x)?;
        let p = self.ff_in.forward(&self.norm3.forward(&x)?)?;
        let half = p.dim(D::Minus1)? / 2;
        let geglu =
            (p.narrow(D::Minus1, 0, half)? * p.narrow(D::Minus1, half, half)?.gelu_erf()?)?;
        self.ff_out.forward(&geglu)? + x
    }
}

/// proj_in / proj_out: a 1×1 convolution (SD 1.x) or a Linear on tokens (SD 2.x).
#[derive(Debug)]
enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

/// `Transformer2DModel` on a feature map `[B, C, H, W]`.
#[derive(Debug)]
struct Transformer2D {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<TransformerBlock>,
    proj_out: Proj,
}

impl Transformer2D {
    fn new(ch: usize, heads: usize, cfg: &UnetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let proj = |vb: VarBuilder| -> candle_core::Result<Proj> {
            Ok(match cfg.use_linear_projection {
                true => Proj::Linear(candle_nn::linear(ch, ch, vb)?),
                false => Proj::Conv(conv(ch, ch, 1, 1, 0, vb)?),
            })
        };
        let norm = group_norm(cfg.norm_num_groups, ch, 1e-6, vb.pp("norm"))?;
        let proj_in = proj(vb.pp("proj_in"))?;
        let blocks = (0..cfg.transformer_layers_per_block)
            .map(|i| {
                TransformerBlock::new(
                    ch,
                    cfg.cross_attention_dim,
                    heads,
                    vb.pp(format!("transformer_blocks.{i}")),
                )
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            norm,
            proj_in,
            blocks,
            proj_out: proj(vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
        };
        let map = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.transpose(1, 2)?.reshape((b, c, h, w))
        };
        let hn = self.norm.forward(x)?;
        let mut t = match &self.proj_in {
            Proj::Conv(p) => tokens(&p.forward(&hn)?)?,
            Proj::Linear(p) => p.forward(&tokens(&hn)?)?,
        };
        for blk in &self.blocks {
            t = blk.forward(&t, ctx)?;
        }
        let out = match &self.proj_out {
            Proj::Conv(p) => p.forward(&map(&t)?.contiguous()?)?,
            Proj::Linear(p) => map(&p.forward(&t)?)?,
        };
        out + x
    }
}

#[derive(Debug)]
struct Block {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    /// Down: 3×3 stride-2 conv; up: nearest ×2 then 3×3 conv.
    resample: Option<Conv2d>,
}

/// diffusers `UNet2DConditionModel` (f32).
#[derive(Debug)]
pub struct UNet2DConditionModel {
    cfg: UnetConfig,
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    down: Vec<Block>,
    mid: Block,
    up: Vec<Block>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    device: Device,
}

impl UNet2DConditionModel {
    pub fn new(cfg: &UnetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let heads = cfg.heads();
        let temb = cfg.time_embed_dim();
        let args = ResnetArgs {
            temb: Some(temb),
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
            scale_shift: false,
            output_scale_factor: 1.0,
        };
        let conv_in = conv(cfg.in_channels, boc[0], 3, 1, 1, vb.pp("conv_in"))?;
        let time_linear_1 = candle_nn::linear(boc[0], temb, vb.pp("time_embedding.linear_1"))?;
        let time_linear_2 = candle_nn::linear(temb, temb, vb.pp("time_embedding.linear_2"))?;
        let transformer = |ch: usize, h: usize, vb: VarBuilder| Transformer2D::new(ch, h, cfg, vb);

        let mut down = Vec::with_capacity(n);
        let mut out = boc[0];
        for (i, ty) in cfg.down_block_types.iter().enumerate() {
            let inp = out;
            out = boc[i];
            let vbb = vb.pp(format!("down_blocks.{i}"));
            let cross = ty == "CrossAttnDownBlock2D";
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..cfg.layers_per_block {
                let c = if j == 0 { inp } else { out };
                resnets.push(ResnetBlock2D::new(
                    c,
                    out,
                    &args,
                    vbb.pp(format!("resnets.{j}")),
                )?);
                if cross {
                    attentions.push(transformer(
                        out,
                        heads[i],
                        vbb.pp(format!("attentions.{j}")),
                    )?);
                }
            }
            let resample = if i + 1 < n {
                let p = cfg.downsample_padding;
                Some(conv(out, out, 3, 2, p, vbb.pp("downsamplers.0.conv"))?)
            } else {
                None
            };
            down.push(Block {
                resnets,
                attentions,
                resample,
            });
        }

        let top = boc[n - 1];
        let vbm = vb.pp("mid_block");
        let mid_args = ResnetArgs {
            output_scale_factor: cfg.mid_block_scale_factor,
            ..args
        };
        let mid = Block {
            resnets: vec![
                ResnetBlock2D::new(top, top, &mid_args, vbm.pp("resnets.0"))?,
                ResnetBlock2D::new(top, top, &mid_args, vbm.pp("resnets.1"))?,
            ],
            attentions: vec![transformer(top, heads[n - 1], vbm.pp("attentions.0"))?],
            resample: None,
        };

        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let rev_heads: Vec<usize> = heads.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut out = rev[0];
        for (i, ty) in cfg.up_block_types.iter().enumerate() {
            let prev = out;
            out = rev[i];
            let inp = rev[(i + 1).min(n - 1)];
            let vbb = vb.pp(format!("up_blocks.{i}"));
            let cross = ty == "CrossAttnUpBlock2D";
            let layers = cfg.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let skip = if j == layers - 1 { inp } else { out };
                let rin = if j == 0 { prev } else { out };
                resnets.push(ResnetBlock2D::new(
                    rin + skip,
                    out,
                    &args,
                    vbb.pp(format!("resnets.{j}")),
                )?);
                if cross {
                    attentions.push(transformer(
                        out,
                        rev_heads[i],
                        vbb.pp(format!("attentions.{j}")),
                    )?);
                }
            }
            let resample = if i + 1 < n {
                Some(conv(out, out, 3, 1, 1, vbb.pp("upsamplers.0.conv"))?)
            } else {
                None
            };
            up.push(Block {
                resnets,
                attentions,
                resample,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            conv_in,
            time_linear_1,
            time_linear_2,
            down,
            mid,
            up,
            norm_out: group_norm(
                cfg.norm_num_groups,
                boc[0],
                cfg.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv(boc[0], cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
            device: vb.device().clone(),
        })
    }

    /// Loads a diffusers `unet/` folder (`config.json` + `diffusion_pytorch_model.safetensors`
    /// or `.bin`; f16/bf16 weights are converted to f32).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg: UnetConfig = super::read_config(&dir.join("config.json"))?;
        cfg.validate()?;
        let weights = super::weights_file(dir, "diffusion_pytorch_model")?;
        let vb = checkpoint::var_builder(
            checkpoint::load_state_dict(&weights)?,
            &cfg.param_shapes()?,
            DType::F32,
            device,
            &weights.display().to_string(),
        )?;
        Ok(Self::new(&cfg, vb)?)
    }

    pub fn config(&self) -> &UnetConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `time_proj(t)` `[B, block_out_channels[0]]`.
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
        let h = self.time_linear_1.forward(t_emb)?;
        self.time_linear_2.forward(&h.silu()?)
    }

    /// `unet(x, t, encoder_hidden_states).sample`: `x` `[B, C, H, W]` (H, W divisible by
    /// 2^(levels−1)), `t` `[B]` or `[1]` (integer or float), `ctx` `[B, S, cross_attention_dim]`.
    pub fn forward(&self, x: &Tensor, t: &Tensor, ctx: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let div = 1usize << (self.cfg.block_out_channels.len() - 1);
        if c != self.cfg.in_channels || h % div != 0 || w % div != 0 {
            candle_core::bail!(
                "UNet2DConditionModel: input {:?} needs {} channels and H, W divisible by {div}",
                x.dims(),
                self.cfg.in_channels
            );
        }
        let (cb, _, cd) = ctx.dims3()?;
        if cb != b || cd != self.cfg.cross_attention_dim {
            candle_core::bail!(
                "UNet2DConditionModel: encoder_hidden_states {:?} for a batch of {b} (cross_attention_dim {})",
                ctx.dims(),
                self.cfg.cross_attention_dim
            );
        }
        let t = timesteps_for_batch(t, b)?.to_device(&self.device)?;
        let temb = self.time_embedding(&self.time_proj(&t)?)?.silu()?;
        let temb = Some(&temb);
        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        for d in &self.down {
            for (i, r) in d.resnets.iter().enumerate() {
                h = r.forward(&h, temb)?;
                if let Some(a) = d.attentions.get(i) {
                    h = a.forward(&h, ctx)?;
                }
                skips.push(h.clone());
            }
            if let Some(c) = &d.resample {
                h = c.forward(&h)?;
                skips.push(h.clone());
            }
        }
        h = self.mid.resnets[0].forward(&h, temb)?;
        h = self.mid.attentions[0].forward(&h, ctx)?;
        h = self.mid.resnets[1].forward(&h, temb)?;
        for u in &self.up {
            for (i, r) in u.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("UNet: skip stack empty".into()))?;
                h = r.forward(&Tensor::cat(&[&h, &skip], 1)?, temb)?;
                if let Some(a) = u.attentions.get(i) {
                    h = a.forward(&h, ctx)?;
                }
            }
            if let Some(c) = &u.resample {
                h = c.forward(&upsample2x(&h)?)?;
            }
        }
        self.conv_out
            .forward(&fastops::silu(&self.norm_out.forward(&h)?)?)
    }
}
