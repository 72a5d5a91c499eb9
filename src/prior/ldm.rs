//! CompVis latent diffusion (LDM-VQ) as DAPS's `LDM` uses it: the `openaimodel` UNet (the ADM
//! network of [`super::adm`], same layout and names) behind DAPS's `VPPrecond` with its default
//! constants ([`VpDenoiser::new`]: β_min 0.1, β_d 19.9, c_noise = 999·t(σ); DAPS ignores the
//! LDM's own schedule), and the VQ first stage of [`super::vq`] (decode re-quantises).
//!
//! Config: DAPS's model yaml (`name: ldm`, `ldm_config`, `diffusion_path`) or a plain CompVis
//! yaml (`model.params.{first_stage_config, unet_config}`). Weights: a CompVis checkpoint
//! (`.ckpt` pickle with `state_dict`, or safetensors); only `first_stage_model.*` and
//! `model.diffusion_model.*` are read, the UNet from its EMA copy (`model_ema.*`) when present.

use super::adm::{AdmConfig, AdmUnet};
use super::latent::{LatentPrior, Pullback};
use super::vp::VpDenoiser;
use super::vq::{VqConfig, VqModel};
use super::Denoiser;
use crate::error::{Error, Result};
use crate::nn::checkpoint::{self, ParamList};
use crate::noise::NoiseSource;
use candle_core::{DType, Device, Tensor, Var};
use rayon::prelude::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

const UNET_PREFIX: &str = "model.diffusion_model.";
const VQ_PREFIX: &str = "first_stage_model.";

/// The two networks of an LDM-VQ.
#[derive(Clone, Debug, PartialEq)]
pub struct LdmConfig {
    pub unet: AdmConfig,
    pub first_stage: VqConfig,
}

impl LdmConfig {
    /// The FFHQ-256 LDM-VQ-f4 of DAPS (`configs/model/ffhq256ldm.yaml`, CompVis `ffhq.zip`):
    /// UNet 224 ch, mult (1, 2, 3, 4), 2 res blocks, attention at ds 8, 4, 2, 32-channel heads
    /// (274,056,163 parameters); VQ-f4 ch 128, mult (1, 2, 4), 2 res blocks, 8192 × 3 codebook
    /// (55,322,782). Latents 3×64×64 for 256×256 images.
    pub fn ffhq256() -> Self {
        Self {
            unet: AdmConfig {
                image_size: 64,
                in_channels: 3,
                model_channels: 224,
                out_channels: 3,
                num_res_blocks: 2,
                attention_ds: vec![8, 4, 2],
                channel_mult: vec![1.0, 2.0, 3.0, 4.0],
                num_heads: 0,
                num_head_channels: Some(32),
                num_heads_upsample: None,
                use_scale_shift_norm: false,
                resblock_updown: false,
                conv_resample: true,
                use_new_attention_order: false,
            },
            first_stage: VqConfig {
                ch: 128,
                ch_mult: vec![1, 2, 4],
                num_res_blocks: 2,
                attn_resolutions: vec![],
                in_channels: 3,
                out_ch: 3,
                resolution: 256,
                z_channels: 3,
                embed_dim: 3,
                n_embed: 8192,
            },
        }
    }

    /// From a parsed yaml: DAPS's wrapper (`ldm_config: {model: …}`) or CompVis's (`model: …`).
    pub fn from_value(v: &Value) -> Result<Self> {
        let root = v.get("ldm_config").unwrap_or(v);
        if let Some(name) = v.get("name").and_then(|n| n.as_str()) {
            if name != "ldm" {
                return Err(Error::config(format!(
                    "model config names model `{name}`, not `ldm`"
                )));
            }
        }
        let params = root
            .get("model")
            .and_then(|m| m.get("params"))
            .ok_or_else(|| Error::config("LDM config: missing `model.params`"))?;
        let section = |key: &str| {
            params
                .get(key)
                .and_then(|c| c.get("params"))
                .ok_or_else(|| Error::config(format!("LDM config: missing `{key}.params`")))
        };
        if let Some(t) = params
            .get("first_stage_config")
            .and_then(|c| c.get("target"))
            .and_then(|t| t.as_str())
        {
            if !t.contains("VQModel") {
                return Err(Error::Unsupported(format!(
                    "LDM first stage `{t}`: only VQ models (VQModel, VQModelInterface) load"
                )));
            }
        }
        if let Some(f) = params.get("scale_factor").and_then(|f| f.as_f64()) {
            if f != 1.0 {
                return Err(Error::Unsupported(format!(
                    "LDM scale_factor {f} (VQ models use 1.0)"
                )));
            }
        }
        match params.get("cond_stage_config") {
            None => {}
            Some(Value::String(s)) if s == "__is_unconditional__" => {}
            Some(_) => {
                return Err(Error::Unsupported(
                    "conditional LDMs (cond_stage_config); only unconditional models load".into(),
                ))
            }
        }
        Ok(Self {
            unet: AdmConfig::from_openaimodel_params(section("unet_config")?)?,
            first_stage: VqConfig::from_params(section("first_stage_config")?)?,
        })
    }

    /// Reads a yaml file (see [`LdmConfig::from_value`]).
    pub fn from_yaml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let v: Value = serde_yaml_ng::from_str(&text)
            .map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
        Self::from_value(&v).map_err(|e| Error::config(format!("{}: {e}", path.display())))
    }

    /// Every parameter with its CompVis checkpoint name (both prefixes) and shape.
    pub fn param_shapes(&self) -> Result<ParamList> {
        let prefixed = |list: ParamList, p: &str| {
            list.into_iter()
                .map(move |(n, s)| (format!("{p}{n}"), s))
                .collect::<Vec<_>>()
        };
        let mut all = prefixed(self.first_stage.param_shapes()?, VQ_PREFIX);
        all.extend(prefixed(self.unet.param_shapes()?, UNET_PREFIX));
        Ok(all)
    }
}

/// The `model_ema.*` name of a UNet parameter: LitEma drops the dots of
/// `diffusion_model.<name>`.
fn ema_name(unet_param: &str) -> String {
    format!("model_ema.diffusion_model{}", unet_param.replace('.', ""))
}

/// Keeps the tensors of one network (`prefix` removed), checked against its parameter list.
fn take(
    all: &mut HashMap<String, Tensor>,
    prefix: &str,
    expected: &ParamList,
    ema: bool,
    source: &str,
    device: &Device,
) -> Result<candle_nn::VarBuilder<'static>> {
    let mut mine = HashMap::new();
    for (name, _) in expected {
        let key = if ema {
            ema_name(name)
        } else {
            format!("{prefix}{name}")
        };
        if let Some(t) = all.remove(&key) {
            mine.insert(name.clone(), t);
        }
    }
    let shown = if ema {
        format!("{source} (model_ema.* for {prefix}*)")
    } else {
        format!("{source} ({prefix}*)")
    };
    if ema {
        // The raw weights are ignored when the EMA copy is used.
        all.retain(|k, _| !k.starts_with(prefix));
    } else {
        // Extra tensors under the prefix are reported by `var_builder`.
        let extra: Vec<String> = all
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for k in extra {
            if let Some(t) = all.remove(&k) {
                mine.insert(k[prefix.len()..].to_string(), t);
            }
        }
    }
    checkpoint::var_builder(mine, expected, DType::F32, device, &shown)
}

/// An LDM-VQ prior: the EDM denoiser on latents, and the VQ autoencoder.
pub struct LdmPrior {
    den: VpDenoiser<AdmUnet>,
    vq: VqModel,
    ema: bool,
    source: String,
}

impl LdmPrior {
    /// Loads `ckpt` (safetensors or a PyTorch pickle) with the architecture of `cfg`.
    pub fn load(cfg: &LdmConfig, ckpt: &Path, device: &Device) -> Result<Self> {
        let all = checkpoint::load_state_dict(ckpt)?;
        Self::from_tensors(cfg, all, &ckpt.display().to_string(), device)
    }

    /// From a state dict with CompVis names (`source` names it in errors).
    pub fn from_tensors(
        cfg: &LdmConfig,
        mut all: HashMap<String, Tensor>,
        source: &str,
        device: &Device,
    ) -> Result<Self> {
        let source = source.to_string();
        all.retain(|k, _| {
            k.starts_with(UNET_PREFIX) || k.starts_with(VQ_PREFIX) || k.starts_with("model_ema.")
        });
        let unet_list = cfg.unet.param_shapes()?;
        let ema = unet_list
            .first()
            .is_some_and(|(n, _)| all.contains_key(&ema_name(n)));
        let vb_unet = take(&mut all, UNET_PREFIX, &unet_list, ema, &source, device)?;
        let vb_vq = take(
            &mut all,
            VQ_PREFIX,
            &cfg.first_stage.param_shapes()?,
            false,
            &source,
            device,
        )?;
        let unet = AdmUnet::new(&cfg.unet, vb_unet)?;
        let vq = VqModel::new(&cfg.first_stage, vb_vq)?;
        Ok(Self {
            den: VpDenoiser::new(unet),
            vq,
            ema,
            source,
        })
    }

    /// From a `--prior ldm:CKPT:CONFIG.yaml` spec's parts.
    pub fn from_files(ckpt: &Path, config: &Path, device: &Device) -> Result<Self> {
        Self::load(&LdmConfig::from_yaml_file(config)?, ckpt, device)
    }

    /// The UNet behind VPPrecond.
    pub fn denoiser(&self) -> &VpDenoiser<AdmUnet> {
        &self.den
    }

    pub fn first_stage(&self) -> &VqModel {
        &self.vq
    }

    /// Whether the UNet weights are the checkpoint's EMA copy.
    pub fn uses_ema(&self) -> bool {
        self.ema
    }

    fn vq_batched(
        &self,
        z: &Tensor,
        f: impl Fn(usize, usize) -> Result<Tensor> + Sync,
    ) -> Result<Tensor> {
        let b = z.dim(0)?;
        if self.splits_batches() && super::batch_splits(b).len() > 1 {
            return Ok(Tensor::cat(&super::par_batches(b, f)?, 0)?);
        }
        f(0, b)
    }
}

impl Denoiser for LdmPrior {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.den.denoise(x, sigma)
    }

    fn device(&self) -> &Device {
        self.den.device()
    }

    fn name(&self) -> String {
        let c = self.vq.config();
        format!(
            "CompVis LDM-VQ-f{} ({}, {} UNet weights; first stage n_embed {}, latent {} ch): {}",
            c.factor(),
            self.source,
            if self.ema {
                "EMA"
            } else {
                "raw (no model_ema)"
            },
            c.n_embed,
            c.embed_dim,
            self.den.name()
        )
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.den.sample_shape()
    }

    fn as_latent(&self) -> Option<&dyn LatentPrior> {
        Some(self)
    }
}

impl LatentPrior for LdmPrior {
    fn latent_shape(&self, image: &[usize]) -> Result<Vec<usize>> {
        let c = self.vq.config();
        let f = c.factor();
        let div = f * self.den.net().config().spatial_divisor();
        match image {
            [ch, h, w] if *ch == c.out_ch && h % div == 0 && w % div == 0 && *h > 0 && *w > 0 => {
                Ok(vec![c.embed_dim, h / f, w / f])
            }
            _ => Err(Error::config(format!(
                "image shape {image:?} does not fit the LDM: it takes {} channels and H, W \
                 multiples of {div} (autoencoder factor {f} × UNet factor {})",
                c.out_ch,
                div / f
            ))),
        }
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        if z.track_op() {
            return self.vq.decode(z);
        }
        self.vq_batched(z, |s, n| self.vq.decode(&z.narrow(0, s, n)?))
    }

    fn decode_vjp(&self, z: &Tensor, g: &Tensor) -> Result<Tensor> {
        self.vq_batched(z, |s, n| {
            self.vq.decode_vjp(&z.narrow(0, s, n)?, &g.narrow(0, s, n)?)
        })
    }

    fn encode(&self, x: &Tensor, _noise: &mut dyn NoiseSource) -> Result<Tensor> {
        self.vq_batched(x, |s, n| self.vq.encode(&x.narrow(0, s, n)?))
    }

    /// One decoder pass per piece of the batch, its graph kept for the VJP.
    fn decode_with_pullback(&self, z: &Tensor) -> Result<(Tensor, Pullback<'_>)> {
        let b = z.dim(0)?;
        let pieces = if self.splits_batches() {
            super::par_batches(b, |s, n| {
                let zv = Var::from_tensor(&z.narrow(0, s, n)?.detach())?;
                let x = self.vq.decode(zv.as_tensor())?;
                Ok((s, n, zv, x))
            })?
        } else {
            let zv = Var::from_tensor(&z.detach())?;
            let x = self.vq.decode(zv.as_tensor())?;
            vec![(0, b, zv, x)]
        };
        let xs: Vec<Tensor> = pieces.iter().map(|p| p.3.detach()).collect();
        let x = Tensor::cat(&xs, 0)?;
        let pullback = move |g: &Tensor| -> Result<Tensor> {
            let grads: Vec<Tensor> = pieces
                .into_par_iter()
                .map(|(s, n, zv, x)| {
                    let grads = (x * g.narrow(0, s, n)?.detach())?.sum_all()?.backward()?;
                    grads
                        .get(zv.as_tensor())
                        .cloned()
                        .ok_or_else(|| Error::msg("VQ decoder: no gradient reached the latent"))
                })
                .collect::<Result<_>>()?;
            Ok(Tensor::cat(&grads, 0)?)
        };
        Ok((x, Box::new(pullback)))
    }
}
