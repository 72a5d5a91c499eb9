//! diffusers `AutoencoderKL` (the Stable Diffusion first stage), from a diffusers `vae/` folder.
//! Every op is differentiable (the decoder's VJP is what LatentDAPS needs); convolutions and
//! GroupNorms use the fast CPU backward of `nn::fastops`.

use crate::error::{Error, Result};
use crate::nn::checkpoint;
use crate::nn::fastops::{self, Conv2d, GroupNorm};
use crate::prior::adm::upsample2x;
use crate::prior::unet2d::{conv, group_norm, Attention, ResnetArgs, ResnetBlock2D};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;

/// The `AutoencoderKL` config fields this port reads (defaults as in diffusers).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: usize,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    /// Stable Diffusion 1.5's VAE (`vae/config.json` of the Hub pipeline): 83,653,863 parameters.
    pub fn sd15() -> Self {
        Self {
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            sample_size: 512,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let unsupported = |w: String| Err(Error::Unsupported(format!("AutoencoderKL: {w}")));
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return unsupported(format!("act_fn {:?}", self.act_fn));
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return unsupported("shift_factor (SD 3 / Flux VAEs)".into());
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return unsupported(format!("down block {t}"));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return unsupported(format!("up block {t}"));
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::config(
                "AutoencoderKL: block_out_channels, down_block_types and up_block_types must have the same non-zero length",
            ));
        }
        Ok(())
    }

    /// The spatial factor between image and latent: 2^(levels − 1).
    pub fn factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Parameter names and shapes in `state_dict` order, without allocating weights.
    pub fn param_shapes(&self) -> Result<checkpoint::ParamList> {
        self.validate()?;
        checkpoint::record_params(|vb| AutoencoderKl::new(self, vb))
    }
}

const VAE_EPS: f64 = 1e-6;

/// The mid block: resnet, attention (one head, with its GroupNorm), resnet.
#[derive(Debug)]
struct MidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Option<Attention>,
}

impl MidBlock {
    fn new(ch: usize, cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let a = args(cfg);
        let r0 = ResnetBlock2D::new(ch, ch, &a, vb.pp("resnets.0"))?;
        let attention = if cfg.mid_block_add_attention {
            let g = Some(cfg.norm_num_groups);
            Some(Attention::new(
                ch,
                ch,
                g,
                VAE_EPS,
                1.0,
                vb.pp("attentions.0"),
            )?)
        } else {
            None
        };
        let r1 = ResnetBlock2D::new(ch, ch, &a, vb.pp("resnets.1"))?;
        Ok(Self {
            resnets: [r0, r1],
            attention,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.resnets[0].forward(x, None)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnets[1].forward(&h, None)
    }
}

fn args(cfg: &VaeConfig) -> ResnetArgs {
    ResnetArgs {
        temb: None,
        groups: cfg.norm_num_groups,
        eps: VAE_EPS,
        scale_shift: false,
        output_scale_factor: 1.0,
    }
}

#[derive(Debug)]
struct Level {
    resnets: Vec<ResnetBlock2D>,
    /// Encoder: pad (0,1,0,1) + 3×3 stride-2 conv; decoder: nearest ×2 + 3×3 conv.
    resample: Option<Conv2d>,
}

#[derive(Debug)]
struct Encoder {
    conv_in: Conv2d,
    down: Vec<Level>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let conv_in = conv(cfg.in_channels, boc[0], 3, 1, 1, vb.pp("conv_in"))?;
        let mut down = Vec::with_capacity(n);
        let mut out = boc[0];
        for (i, &ch) in boc.iter().enumerate() {
            let inp = out;
            out = ch;
            let vbb = vb.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let c = if j == 0 { inp } else { out };
                    ResnetBlock2D::new(c, out, &args(cfg), vbb.pp(format!("resnets.{j}")))
                })
                .collect::<candle_core::Result<_>>()?;
            let resample = if i + 1 < n {
                Some(conv(out, out, 3, 2, 0, vbb.pp("downsamplers.0.conv"))?)
            } else {
                None
            };
            down.push(Level { resnets, resample });
        }
        let top = boc[n - 1];
        Ok(Self {
            conv_in,
            down,
            mid: MidBlock::new(top, cfg, vb.pp("mid_block"))?,
            norm_out: group_norm(cfg.norm_num_groups, top, VAE_EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv(top, 2 * cfg.latent_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for l in &self.down {
            for r in &l.resnets {
                h = r.forward(&h, None)?;
            }
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
    mid: MidBlock,
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let n = rev.len();
        let conv_in = conv(cfg.latent_channels, rev[0], 3, 1, 1, vb.pp("conv_in"))?;
        let mid = MidBlock::new(rev[0], cfg, vb.pp("mid_block"))?;
        let mut up = Vec::with_capacity(n);
        let mut out = rev[0];
        for (i, &ch) in rev.iter().enumerate() {
            let prev = out;
            out = ch;
            let vbb = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let c = if j == 0 { prev } else { out };
                    ResnetBlock2D::new(c, out, &args(cfg), vbb.pp(format!("resnets.{j}")))
                })
                .collect::<candle_core::Result<_>>()?;
            let resample = if i + 1 < n {
                Some(conv(out, out, 3, 1, 1, vbb.pp("upsamplers.0.conv"))?)
            } else {
                None
            };
            up.push(Level { resnets, resample });
        }
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: group_norm(
                cfg.norm_num_groups,
                rev[n - 1],
                VAE_EPS,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv(rev[n - 1], cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    /// The decoder as a chain of stages (conv_in + mid block, each up block, output layers),
    /// for the checkpointed VJP.
    fn stages(&self) -> usize {
        self.up.len() + 2
    }

    fn stage(&self, i: usize, h: &Tensor) -> candle_core::Result<Tensor> {
        if i == 0 {
            return self.mid.forward(&self.conv_in.forward(h)?);
        }
        match self.up.get(i - 1) {
            Some(l) => {
                let mut h = h.clone();
                for r in &l.resnets {
                    h = r.forward(&h, None)?;
                }
                match &l.resample {
                    Some(c) => c.forward(&upsample2x(&h)?),
                    None => Ok(h),
                }
            }
            None => self
                .conv_out
                .forward(&fastops::silu(&self.norm_out.forward(h)?)?),
        }
    }
}

/// ∂⟨out, cot⟩/∂v.
fn input_grad(out: &Tensor, cot: &Tensor, v: &Var) -> Result<Tensor> {
    let grads = (out * cot)?.sum_all()?.backward()?;
    grads
        .get(v.as_tensor())
        .cloned()
        .ok_or_else(|| Error::msg("AutoencoderKL decode VJP: no gradient reached the input"))
}

/// The encoder's Gaussian posterior N(mean, std²) over unscaled latents.
#[derive(Debug, Clone)]
pub struct Posterior {
    pub mean: Tensor,
    /// log σ², clamped to [−30, 20] as diffusers does.
    pub logvar: Tensor,
    pub std: Tensor,
}

/// diffusers `AutoencoderKL` (f32).
#[derive(Debug)]
pub struct AutoencoderKl {
    cfg: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKl {
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let l = cfg.latent_channels;
        // `state_dict` order: encoder, decoder, quant_conv, post_quant_conv.
        let encoder = Encoder::new(cfg, vb.pp("encoder"))?;
        let decoder = Decoder::new(cfg, vb.pp("decoder"))?;
        let quant_conv = match cfg.use_quant_conv {
            true => Some(conv(2 * l, 2 * l, 1, 1, 0, vb.pp("quant_conv"))?),
            false => None,
        };
        let post_quant_conv = match cfg.use_post_quant_conv {
            true => Some(conv(l, l, 1, 1, 0, vb.pp("post_quant_conv"))?),
            false => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
        })
    }

    /// Loads a diffusers `vae/` folder (`config.json` + `diffusion_pytorch_model.safetensors`
    /// or `.bin`; f16/bf16 weights are converted to f32). Legacy attention names are renamed.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg: VaeConfig = super::read_config(&dir.join("config.json"))?;
        cfg.validate()?;
        let weights = super::weights_file(dir, "diffusion_pytorch_model")?;
        let tensors =
            crate::prior::unet2d::rename_legacy_attention(checkpoint::load_state_dict(&weights)?);
        let vb = checkpoint::var_builder(
            tensors,
            &cfg.param_shapes()?,
            DType::F32,
            device,
            &weights.display().to_string(),
        )?;
        Ok(Self::new(&cfg, vb)?)
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// The posterior of images `[B, C, H, W]` (H, W divisible by the latent factor).
    pub fn encode(&self, x: &Tensor) -> Result<Posterior> {
        let (_, c, h, w) = x.dims4()?;
        let f = self.cfg.factor();
        if c != self.cfg.in_channels || h % f != 0 || w % f != 0 {
            return Err(Error::Shape {
                what: format!(
                    "AutoencoderKL input (channels {}, H and W divisible by {f})",
                    self.cfg.in_channels
                ),
                expected: vec![
                    1,
                    self.cfg.in_channels,
                    h.div_ceil(f) * f,
                    w.div_ceil(f) * f,
                ],
                got: x.dims().to_vec(),
            });
        }
        let mut m = self.encoder.forward(x)?;
        if let Some(q) = &self.quant_conv {
            m = q.forward(&m)?;
        }
        let l = self.cfg.latent_channels;
        let mean = m.narrow(1, 0, l)?;
        let logvar = m.narrow(1, l, l)?.clamp(-30f32, 20f32)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Posterior { mean, logvar, std })
    }

    /// Images from unscaled latents `[B, latent_channels, h, w]` (`decode(z).sample`).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4()?;
        crate::error::expect_shape(
            "AutoencoderKL latent channels",
            &[c],
            &[self.cfg.latent_channels],
        )?;
        let mut h = self.post_quant(z)?;
        for i in 0..self.decoder.stages() {
            h = self.decoder.stage(i, &h)?;
        }
        Ok(h)
    }

    fn post_quant(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        match &self.post_quant_conv {
            Some(p) => p.forward(z),
            None => Ok(z.clone()),
        }
    }

    /// ∂⟨decode(z), g⟩/∂z, checkpointed: one forward pass keeps each decoder stage's input, then
    /// the stages are differentiated last to first, each re-run with its graph. One extra
    /// forward pass, and the memory of one stage's graph instead of the whole decoder's
    /// (SD 1.5 at 512×512 would need about 28 GB otherwise).
    pub fn decode_vjp(&self, z: &Tensor, g: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4()?;
        crate::error::expect_shape(
            "AutoencoderKL latent channels",
            &[c],
            &[self.cfg.latent_channels],
        )?;
        let z = z.detach();
        let mut inputs = vec![self.post_quant(&z)?];
        for i in 0..self.decoder.stages() - 1 {
            let h = self.decoder.stage(i, &inputs[i])?;
            inputs.push(h);
        }
        let mut cot = g.clone();
        for i in (0..self.decoder.stages()).rev() {
            let v = Var::from_tensor(&inputs[i].detach())?;
            let out = self.decoder.stage(i, v.as_tensor())?;
            crate::error::expect_shape("decode VJP cotangent", cot.dims(), out.dims())?;
            cot = input_grad(&out, &cot, &v)?;
        }
        let v = Var::from_tensor(&z)?;
        input_grad(&self.post_quant(v.as_tensor())?, &cot, &v)
    }
}
