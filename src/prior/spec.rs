//! The `--prior` argument: `KIND:PATH[:CONFIG]`, loaded as a [`Denoiser`].
//!
//! | spec | prior |
//! |---|---|
//! | `adm:FILE.pt:ffhq256` | guided-diffusion ADM UNet (ε-prediction, VP→EDM); CONFIG is `ffhq256`, `imagenet256` or a JSON file of `create_model` arguments; without it, `FILE` with its extension replaced by `.json` is used |
//! | `adm-x0:…` | the same network predicting x0 |
//! | `unet2d:DIR` | a diffusers `UNet2DModel` folder (config.json + diffusion_pytorch_model.safetensors) |
//! | `ldm:CKPT:CONFIG.yaml` | a CompVis LDM-VQ (`.ckpt` or safetensors; EMA UNet weights when present) with DAPS's model yaml or its CompVis yaml ([`super::ldm`]); a latent prior (LatentDAPS) |
//! | `sd:DIR[:SIZE]` | a diffusers Stable Diffusion pipeline folder (vae/, unet/, text_encoder/, tokenizer/, scheduler/), a latent prior decoding to SIZE×SIZE images (default: half the VAE's `sample_size`, DAPS's 512 → 256); the prompt comes from [`PriorSpec::load_with`] |
//! | `gmm:FILE.safetensors` | an exact Gaussian mixture: tensors `weights` [K], `means` [K, …], `variances` [K] (isotropic) or [K, d] (diagonal) |

use super::adm::{AdmConfig, AdmUnet};
use super::latent::TextCondition;
use super::unet2d::Unet2dModel;
use super::vp::{Prediction, VpDenoiser};
use super::{Covariance, Denoiser, GaussianMixture};
use crate::error::{Error, Result};
use candle_core::{DType, Device};
use nalgebra::DVector;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub enum PriorSpec {
    Adm {
        path: PathBuf,
        config: Option<String>,
        x0: bool,
    },
    Unet2d {
        dir: PathBuf,
        x0: bool,
    },
    Gmm {
        path: PathBuf,
    },
    Ldm {
        ckpt: PathBuf,
        config: PathBuf,
    },
    Sd {
        dir: PathBuf,
        size: Option<usize>,
    },
}

impl std::str::FromStr for PriorSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            Error::config(format!(
                "prior '{s}': expected KIND:PATH (kinds: adm, adm-x0, unet2d, unet2d-x0, gmm, ldm, sd)"
            ))
        })?;
        match kind {
            "adm" | "adm-x0" => {
                let (path, config) = match rest.rsplit_once(':') {
                    Some((p, c))
                        if !c.contains('/') && !c.contains('.') || c.ends_with(".json") =>
                    {
                        (p.to_string(), Some(c.to_string()))
                    }
                    _ => (rest.to_string(), None),
                };
                Ok(PriorSpec::Adm {
                    path: path.into(),
                    config,
                    x0: kind == "adm-x0",
                })
            }
            "unet2d" | "unet2d-x0" => Ok(PriorSpec::Unet2d {
                dir: rest.into(),
                x0: kind == "unet2d-x0",
            }),
            "gmm" => Ok(PriorSpec::Gmm { path: rest.into() }),
            "ldm" => match rest.rsplit_once(':') {
                Some((ckpt, config)) if config.ends_with(".yaml") || config.ends_with(".yml") => {
                    Ok(PriorSpec::Ldm {
                        ckpt: ckpt.into(),
                        config: config.into(),
                    })
                }
                _ => Err(Error::config(format!(
                    "prior '{s}': expected ldm:CHECKPOINT:CONFIG.yaml"
                ))),
            },
            "sd" => Ok(match rest.rsplit_once(':') {
                Some((d, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    PriorSpec::Sd {
                        dir: d.into(),
                        size: Some(n.parse().map_err(|_| {
                            Error::config(format!("prior '{s}': bad image size '{n}'"))
                        })?),
                    }
                }
                _ => PriorSpec::Sd {
                    dir: rest.into(),
                    size: None,
                },
            }),
            other => Err(Error::config(format!(
                "unknown prior kind '{other}' (expected adm, adm-x0, unet2d, unet2d-x0, gmm, ldm or sd)"
            ))),
        }
    }
}

impl PriorSpec {
    /// The weights file or pipeline folder the spec names.
    pub fn path(&self) -> &Path {
        match self {
            PriorSpec::Adm { path, .. } | PriorSpec::Gmm { path } => path,
            PriorSpec::Unet2d { dir, .. } | PriorSpec::Sd { dir, .. } => dir,
            PriorSpec::Ldm { ckpt, .. } => ckpt,
        }
    }
}

fn prediction(x0: bool) -> Prediction {
    if x0 {
        Prediction::Sample
    } else {
        Prediction::Epsilon
    }
}

/// The ADM architecture named by `config`, or found next to `path`.
pub fn adm_config(path: &Path, config: Option<&str>) -> Result<AdmConfig> {
    match config {
        Some("ffhq256") => Ok(AdmConfig::ffhq256()),
        Some("imagenet256") => Ok(AdmConfig::imagenet256()),
        Some(c) if c.ends_with(".json") => AdmConfig::from_json_file(c),
        Some(c) => Err(Error::config(format!(
            "unknown ADM architecture '{c}' (expected ffhq256, imagenet256 or a .json file)"
        ))),
        None => {
            let side = path.with_extension("json");
            if side.is_file() {
                AdmConfig::from_json_file(&side)
            } else {
                Err(Error::config(format!(
                    "{}: the architecture is not known; add :ffhq256, :imagenet256 or :CONFIG.json, or put it in {}",
                    path.display(),
                    side.display()
                )))
            }
        }
    }
}

/// Whether the ADM's JSON configuration says `"clip_denoised": true` (written by `daps train`:
/// its data lie in [−1, 1], so D is clamped there).
fn clip_denoised(path: &Path, config: Option<&str>) -> Result<bool> {
    let json = match config {
        Some(c) if c.ends_with(".json") => PathBuf::from(c),
        Some(_) => return Ok(false),
        None => path.with_extension("json"),
    };
    let text = std::fs::read_to_string(&json)
        .map_err(|e| Error::config(format!("{}: {e}", json.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::config(format!("{}: {e}", json.display())))?;
    Ok(v.get("clip_denoised").and_then(|b| b.as_bool()) == Some(true))
}

impl PriorSpec {
    pub fn load(&self, device: &Device) -> Result<Box<dyn Denoiser>> {
        self.load_with(device, None)
    }

    /// [`PriorSpec::load`] with a text condition, which only text-to-image priors (`sd`) take.
    pub fn load_with(
        &self,
        device: &Device,
        text: Option<&TextCondition>,
    ) -> Result<Box<dyn Denoiser>> {
        self.load_precision(device, text, DType::F32)
    }

    /// [`PriorSpec::load_with`] with the network in `dtype`: bf16 or f16 (mixed precision, see
    /// [`super::Precision`]) for ADM networks only; f32 for every kind.
    pub fn load_precision(
        &self,
        device: &Device,
        text: Option<&TextCondition>,
        dtype: DType,
    ) -> Result<Box<dyn Denoiser>> {
        if dtype != DType::F32 && !matches!(self, PriorSpec::Adm { .. }) {
            return Err(Error::Unsupported(format!(
                "{}: half precision (@bf16, @f16) is implemented for ADM networks only",
                self.path().display()
            )));
        }
        match (self, text) {
            (PriorSpec::Sd { dir, size }, text) => {
                return Ok(Box::new(super::sd::StableDiffusion::from_pretrained(
                    dir, device, text, *size,
                )?))
            }
            (_, Some(_)) => {
                return Err(Error::config(format!(
                    "{}: an unconditional prior takes no prompt (--prompt, --negative-prompt and --guidance are for sd:DIR)",
                    self.path().display()
                )))
            }
            (_, None) => {}
        }
        match self {
            PriorSpec::Adm { path, config, x0 } => {
                let cfg = adm_config(path, config.as_deref())?;
                let net = AdmUnet::load_with_dtype(&cfg, path, device, dtype)?;
                let d = VpDenoiser::new(net).with_prediction(prediction(*x0));
                Ok(match clip_denoised(path, config.as_deref())? {
                    true => Box::new(d.with_clip(1.0)),
                    false => Box::new(d),
                })
            }
            PriorSpec::Unet2d { dir, x0 } => {
                let net = Unet2dModel::from_pretrained(dir, device)?;
                Ok(Box::new(
                    VpDenoiser::new(net).with_prediction(prediction(*x0)),
                ))
            }
            PriorSpec::Gmm { path } => Ok(Box::new(load_gmm(path, device)?)),
            PriorSpec::Ldm { ckpt, config } => Ok(Box::new(super::ldm::LdmPrior::from_files(
                ckpt, config, device,
            )?)),
            PriorSpec::Sd { .. } => unreachable!("handled above"),
        }
    }
}

/// Reads a mixture file (see the module docs).
pub(crate) fn load_gmm(path: &Path, device: &Device) -> Result<GaussianMixture> {
    if !path.is_file() {
        return Err(Error::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    // Checks the header's sizes against the file before reading (see `read_safetensors`).
    let (t, _) = crate::io::read_safetensors(path)?;
    let get = |n: &str| {
        t.get(n)
            .ok_or_else(|| Error::msg(format!("{}: missing tensor '{n}'", path.display())))
    };
    let (w, m, v) = (get("weights")?, get("means")?, get("variances")?);
    let shape_err = |what: &str, expected: Vec<usize>, got: &[usize]| Error::Shape {
        what: format!("{}: {what}", path.display()),
        expected,
        got: got.to_vec(),
    };
    if w.rank() != 1 {
        return Err(shape_err("weights [K]", vec![2], w.dims()));
    }
    let k = w.dim(0)?;
    if m.rank() < 2 || m.dim(0)? != k {
        return Err(shape_err("means [K, …]", vec![k, 1], m.dims()));
    }
    let shape = m.dims()[1..].to_vec();
    let d: usize = shape.iter().product();
    let w: Vec<f64> = w.to_dtype(DType::F64)?.to_vec1()?;
    let m: Vec<f64> = m.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let vv: Vec<f64> = v.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let means = (0..k)
        .map(|i| DVector::from_column_slice(&m[i * d..(i + 1) * d]))
        .collect();
    let covs = if vv.len() == k {
        vv.iter().map(|v| Covariance::Isotropic(*v)).collect()
    } else if vv.len() == k * d {
        (0..k)
            .map(|i| Covariance::Diagonal(vv[i * d..(i + 1) * d].to_vec()))
            .collect()
    } else {
        return Err(Error::Shape {
            what: format!("{}: variances", path.display()),
            expected: vec![k, d],
            got: v.dims().to_vec(),
        });
    };
    GaussianMixture::new(w, means, covs, device)?.with_sample_shape(&shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let s: PriorSpec = "adm:/m/ffhq_10m.pt:ffhq256".parse().unwrap();
        assert_eq!(
            s,
            PriorSpec::Adm {
                path: "/m/ffhq_10m.pt".into(),
                config: Some("ffhq256".into()),
                x0: false
            }
        );
        let s: PriorSpec = "adm:model.safetensors".parse().unwrap();
        assert_eq!(
            s,
            PriorSpec::Adm {
                path: "model.safetensors".into(),
                config: None,
                x0: false
            }
        );
        let s: PriorSpec = "adm-x0:a.pt:cfg.json".parse().unwrap();
        assert_eq!(
            s,
            PriorSpec::Adm {
                path: "a.pt".into(),
                config: Some("cfg.json".into()),
                x0: true
            }
        );
        assert!(matches!(
            "unet2d:dir".parse::<PriorSpec>().unwrap(),
            PriorSpec::Unet2d { .. }
        ));
        assert_eq!(
            "sd:/p/sd15:256".parse::<PriorSpec>().unwrap(),
            PriorSpec::Sd {
                dir: "/p/sd15".into(),
                size: Some(256)
            }
        );
        assert_eq!(
            "sd:C:/sd".parse::<PriorSpec>().unwrap(),
            PriorSpec::Sd {
                dir: "C:/sd".into(),
                size: None
            }
        );
        let e = "magic:x".parse::<PriorSpec>().unwrap_err().to_string();
        assert!(e.contains("unknown prior kind 'magic'"), "{e}");
        assert!("nokind".parse::<PriorSpec>().is_err());
        assert_eq!(
            "ldm:/m/model.ckpt:/m/config.yaml"
                .parse::<PriorSpec>()
                .unwrap(),
            PriorSpec::Ldm {
                ckpt: "/m/model.ckpt".into(),
                config: "/m/config.yaml".into()
            }
        );
        assert!("ldm:/m/model.ckpt".parse::<PriorSpec>().is_err());
    }

    #[test]
    fn missing_architecture_is_named() {
        let e = adm_config(Path::new("/nowhere/m.pt"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ffhq256") && e.contains("/nowhere/m.json"),
            "{e}"
        );
    }
}
