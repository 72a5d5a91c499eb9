//! Stable Diffusion as a latent prior (`--prior sd:DIR[:SIZE]`), as DAPS's
//! `StableDiffusionModel` uses it: a diffusers pipeline folder (vae/, unet/, text_encoder/,
//! tokenizer/, scheduler/), computed in f32.
//!
//! * D(z, σ) = z − σ·ε, ε = ε(∅') + w·(ε(c) − ε(∅')) from one UNet call on the batch
//!   [uncond, cond] at c_in·z, c_noise = 1000·t(σ) of the continuous scaled-linear VP schedule
//!   (β_min = 1000·beta_start, β_max = 1000·beta_end of `scheduler_config.json`); v-prediction
//!   models (SD 2.x 768) use ε = √α·v + √(1−α)·c_in·z, α = 1/(1+σ²).
//! * decode(z) = resize(vae.decode(z / scaling_factor)) bilinearly (align_corners false, no
//!   antialias) from the model's resolution (the VAE's `sample_size`, 512 for SD 1.5) to the image
//!   size (SIZE, by default half of it: DAPS's 512 → 256).
//! * encode(x) = (mean + std·noise)·scaling_factor of the posterior of resize(x) at the model's
//!   resolution: DAPS samples the posterior rather than taking its mean.

pub mod clip;
pub mod tokenizer;
pub mod unet;
pub mod vae;

use super::latent::{LatentPrior, TextCondition};
use super::vp::{Prediction, TimestepNet, VpDenoiser, VpSchedule};
use super::Denoiser;
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::operator::resize::SuperResolution;
use candle_core::{DType, Device, Tensor};
use clip::ClipTextModel;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tokenizer::ClipTokenizer;
use unet::UNet2DConditionModel;
use vae::AutoencoderKl;

/// DAPS's Stable Diffusion defaults (`configs/model/stable-diffusion-v1.5.yaml`).
pub fn default_condition() -> TextCondition {
    TextCondition {
        prompt: "a natural looking image".into(),
        negative_prompt: String::new(),
        guidance: 7.5,
    }
}

/// The pipeline's components, in the order they are checked.
pub const COMPONENTS: [&str; 5] = ["vae", "unet", "text_encoder", "tokenizer", "scheduler"];

pub(crate) fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::config(format!("{}: {e}", path.display())))
}

/// `STEM.safetensors`, else `STEM.fp16.safetensors`, else `STEM.bin` in `dir`.
pub(crate) fn weights_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    let names = [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
        format!("{stem}.bin"),
    ];
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::config(format!(
                "{}: no weights file (expected {})",
                dir.display(),
                names.join(", ")
            ))
        })
}

/// The fields of diffusers' `scheduler_config.json` DAPS reads.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct SchedulerConfig {
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub prediction_type: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            prediction_type: "epsilon".into(),
        }
    }
}

impl SchedulerConfig {
    /// The continuous schedule and the prediction type.
    pub fn vp(&self) -> Result<(VpSchedule, Prediction)> {
        if self.beta_schedule != "scaled_linear" {
            return Err(Error::Unsupported(format!(
                "Stable Diffusion scheduler: beta_schedule {:?} (DAPS maps only \"scaled_linear\")",
                self.beta_schedule
            )));
        }
        let p = match self.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            "sample" => Prediction::Sample,
            o => {
                return Err(Error::Unsupported(format!(
                    "Stable Diffusion scheduler: prediction_type {o:?}"
                )))
            }
        };
        let s = VpSchedule::ScaledLinear {
            beta_min: 1000.0 * self.beta_start,
            beta_max: 1000.0 * self.beta_end,
        };
        Ok((s, p))
    }
}

/// The UNet with classifier-free guidance: one call on [x, x] with the context
/// [uncond, cond], then u + w·(c − u).
pub struct GuidedUnet {
    unet: UNet2DConditionModel,
    /// `[2, S, D]`: the negative prompt's and the prompt's last hidden states.
    context: Tensor,
    guidance: f64,
}

impl GuidedUnet {
    pub fn new(unet: UNet2DConditionModel, context: Tensor, guidance: f64) -> Self {
        Self {
            unet,
            context,
            guidance,
        }
    }

    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }
}

impl TimestepNet for GuidedUnet {
    fn forward_t(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let (_, s, d) = self.context.dims3()?;
        let ctx = |i: usize| -> Result<Tensor> {
            Ok(self.context.get(i)?.unsqueeze(0)?.broadcast_as((b, s, d))?)
        };
        let ctx = Tensor::cat(&[ctx(0)?, ctx(1)?], 0)?;
        let t = super::vp::timesteps_for_batch(t, b)?;
        let out =
            self.unet
                .forward(&Tensor::cat(&[x, x], 0)?, &Tensor::cat(&[&t, &t], 0)?, &ctx)?;
        let (u, c) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
        Ok((&u + ((c - &u)? * self.guidance)?)?)
    }
    fn device(&self) -> &Device {
        self.unet.device()
    }
    fn in_channels(&self) -> usize {
        self.unet.config().in_channels
    }
    fn image_size(&self) -> Option<usize> {
        self.unet.config().sample_size
    }
    fn describe(&self) -> String {
        format!(
            "Stable Diffusion UNet2DConditionModel, channels {:?}, CFG w = {}",
            self.unet.config().block_out_channels,
            self.guidance
        )
    }
}

/// Bilinear resize weights `[out, in]` as PyTorch's `interpolate(mode='bilinear',
/// align_corners=False)` without antialiasing (computed in f32 as it does).
pub fn bilinear_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    let scale = n_in as f32 / n_out as f32;
    let mut m = vec![0f32; n_out * n_in];
    for i in 0..n_out {
        let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        let l1 = src - i0 as f32;
        m[i * n_in + i0] += 1.0 - l1;
        m[i * n_in + i1] += l1;
    }
    m
}

/// Bilinear resize of `[B, C, H, W]` to `size × size`.
pub fn resize_bilinear(x: &Tensor, size: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == size && w == size {
        return Ok(x.clone());
    }
    let m = |n: usize| Tensor::from_vec(bilinear_matrix(n, size), (size, n), x.device());
    SuperResolution::sandwich(x, &m(h)?, &m(w)?)
}

/// A Stable Diffusion pipeline as a [`LatentPrior`].
pub struct StableDiffusion {
    den: VpDenoiser<GuidedUnet>,
    vae: AutoencoderKl,
    condition: TextCondition,
    /// The model's image side (VAE `sample_size`) and the image side of decode / encode.
    inner: usize,
    target: usize,
}

impl StableDiffusion {
    /// Loads a diffusers pipeline folder. `condition` defaults to DAPS's prompt
    /// ([`default_condition`]); `target` (the image side) to half the model's resolution.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: &Device,
        condition: Option<&TextCondition>,
        target: Option<usize>,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::config(format!(
                "{}: not a folder (a diffusers Stable Diffusion pipeline with {}/)",
                dir.display(),
                COMPONENTS.join("/, ")
            )));
        }
        if let Some(c) = COMPONENTS.iter().find(|c| !dir.join(c).is_dir()) {
            return Err(Error::config(format!(
                "{}: the pipeline has no {c}/ component (expected {}/)",
                dir.display(),
                COMPONENTS.join("/, ")
            )));
        }
        let condition = condition.cloned().unwrap_or_else(default_condition);
        if !condition.guidance.is_finite() {
            return Err(Error::config(format!(
                "guidance must be finite, got {}",
                condition.guidance
            )));
        }
        let sched: SchedulerConfig =
            read_config(&dir.join("scheduler").join("scheduler_config.json"))?;
        let (schedule, prediction) = sched.vp()?;
        let tok = ClipTokenizer::from_dir(dir.join("tokenizer"))?;
        let vae = AutoencoderKl::from_pretrained(dir.join("vae"), device)?;
        let unet = UNet2DConditionModel::from_pretrained(dir.join("unet"), device)?;
        let context = {
            let clip = ClipTextModel::from_pretrained(dir.join("text_encoder"), device)?;
            encode_prompts(&tok, &clip, &condition)?
        };
        let cross = unet.config().cross_attention_dim;
        if context.dim(2)? != cross {
            return Err(Error::config(format!(
                "{}: the text encoder's width {} does not match the UNet's cross_attention_dim {cross}",
                dir.display(),
                context.dim(2)?
            )));
        }
        let inner = vae.config().sample_size;
        let f = vae.config().factor();
        let div = f << (unet.config().block_out_channels.len() - 1);
        if inner % div != 0 {
            return Err(Error::config(format!(
                "{}: the VAE's sample_size {inner} is not a multiple of {div} (VAE × UNet downsampling)",
                dir.display()
            )));
        }
        let target = target.unwrap_or(inner / 2);
        if target == 0 {
            return Err(Error::config("Stable Diffusion: image size must be ≥ 1"));
        }
        let den = VpDenoiser::new(GuidedUnet::new(unet, context, condition.guidance))
            .with_schedule(schedule)
            .with_noise_multiplier(1000.0)
            .with_prediction(prediction);
        Ok(Self {
            den,
            vae,
            condition,
            inner,
            target,
        })
    }

    pub fn condition(&self) -> &TextCondition {
        &self.condition
    }

    pub fn vae(&self) -> &AutoencoderKl {
        &self.vae
    }

    pub fn denoiser(&self) -> &VpDenoiser<GuidedUnet> {
        &self.den
    }

    /// (model resolution, image resolution).
    pub fn resolutions(&self) -> (usize, usize) {
        (self.inner, self.target)
    }

    fn scaling(&self) -> f64 {
        self.vae.config().scaling_factor
    }

    fn check_latent(&self, z: &Tensor) -> Result<()> {
        let (b, _, _, _) = z.dims4()?;
        let l = self.inner / self.vae.config().factor();
        let c = self.vae.config().latent_channels;
        crate::error::expect_shape("Stable Diffusion latent", z.dims(), &[b, c, l, l])
    }
}

/// The last hidden states `[2, 77, D]` of [negative prompt, prompt].
pub fn encode_prompts(
    tok: &ClipTokenizer,
    clip: &ClipTextModel,
    c: &TextCondition,
) -> Result<Tensor> {
    let mut ids = tok.encode(&c.negative_prompt);
    ids.extend(tok.encode(&c.prompt));
    let n = tok.max_len();
    let ids = Tensor::from_vec(ids, (2, n), &Device::Cpu)?;
    Ok(clip.forward(&ids)?.0)
}

impl Denoiser for StableDiffusion {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.den.denoise(x, sigma)
    }
    fn device(&self) -> &Device {
        self.den.device()
    }
    fn name(&self) -> String {
        format!(
            "Stable Diffusion (prompt {:?}, negative {:?}, {}×{} decoded to {}×{}): {}",
            self.condition.prompt,
            self.condition.negative_prompt,
            self.inner,
            self.inner,
            self.target,
            self.target,
            self.den.name()
        )
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        let l = self.inner / self.vae.config().factor();
        Some(vec![self.vae.config().latent_channels, l, l])
    }
    fn sigma_range(&self) -> (f64, f64) {
        (0.002, self.den.schedule().sigma_max())
    }
    fn as_latent(&self) -> Option<&dyn LatentPrior> {
        Some(self)
    }
}

impl LatentPrior for StableDiffusion {
    fn latent_shape(&self, image: &[usize]) -> Result<Vec<usize>> {
        let c = self.vae.config().in_channels;
        if image != [c, self.target, self.target] {
            return Err(Error::Shape {
                what: format!(
                    "image for the Stable Diffusion prior (decoded at {0}×{0} and resized to {1}×{1}; \
                     another size: sd:DIR:SIZE)",
                    self.inner, self.target
                ),
                expected: vec![c, self.target, self.target],
                got: image.to_vec(),
            });
        }
        Ok(self.sample_shape().unwrap_or_default())
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.check_latent(z)?;
        let x = self.vae.decode(&(z / self.scaling())?)?;
        resize_bilinear(&x, self.target)
    }

    fn decode_vjp(&self, z: &Tensor, g: &Tensor) -> Result<Tensor> {
        self.check_latent(z)?;
        let (b, _, _, _) = z.dims4()?;
        let c = self.vae.config().out_channels;
        crate::error::expect_shape(
            "decode VJP cotangent",
            g.dims(),
            &[b, c, self.target, self.target],
        )?;
        // The resize is linear: its VJP is the adjoint M_hᵀ·g·M_w.
        let gx = match self.inner == self.target {
            true => g.to_dtype(DType::F32)?,
            false => {
                let m = Tensor::from_vec(
                    bilinear_matrix(self.inner, self.target),
                    (self.target, self.inner),
                    g.device(),
                )?
                .t()?
                .contiguous()?;
                SuperResolution::sandwich(&g.to_dtype(DType::F32)?, &m, &m)?
            }
        };
        let s = self.scaling();
        let dz = self.vae.decode_vjp(&(z.to_dtype(DType::F32)? / s)?, &gx)?;
        Ok((dz / s)?.to_dtype(z.dtype())?)
    }

    fn encode(&self, x: &Tensor, noise: &mut dyn NoiseSource) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        crate::error::expect_shape(
            "image for Stable Diffusion encode",
            &[b, c, h, w],
            &[b, self.vae.config().in_channels, self.target, self.target],
        )?;
        let post = self
            .vae
            .encode(&resize_bilinear(&x.to_dtype(DType::F32)?, self.inner)?)?;
        let n = noise.randn(post.mean.shape(), post.mean.device())?;
        Ok(((post.mean + (post.std * n)?)? * self.scaling())?)
    }
}
