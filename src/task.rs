//! The DAPS image tasks: a registry of named degradations, their operators for a given image
//! size, the measurement file that holds everything needed to solve one again, and the
//! per-task sampler presets (`presets/<task>.toml`, embedded in the binary).
//!
//! | task | DAPS name | A(x) | default parameters (256×256) |
//! |---|---|---|---|
//! | `sr4` | `down_sampling` | ×4 antialiased bicubic downsampling | factor 4 |
//! | `sr4-pool` | – | ×4 average pooling | factor 4 |
//! | `inpaint-box` | `inpainting` | x ⊙ mask, one 128×128 hole at a seeded position | seed 42 |
//! | `inpaint-random` | `inpainting_rand` | x ⊙ mask, 70% of pixels dropped | drop 0.7, seed 42 |
//! | `inpaint-mask` | – | x ⊙ mask, mask read from a PNG (nonzero = observed) | `--mask` |
//! | `gaussian-blur` | `gaussian_blur` | reflect-padded 61×61 Gaussian blur, σ 3 | kernel_size 61, sigma 3 |
//! | `motion-blur` | `motion_blur` | reflect-padded 61×61 motion blur | kernel_size 61, intensity 0.5, seed 42 (or `--kernel`) |
//! | `phase-retrieval` | `phase_retrieval` | \|centred FFT\| of the zero-padded [0,1] image | oversample 2 |
//! | `hdr` | `high_dynamic_range` | clip(2x, −1, 1) | scale 2 |
//! | `nonlinear-blur` | `nonlinear_blur` | bkse KernelWizard.adaptKernel (GOPRO_wVAE.pth), fixed kernel latent | `--blur-weights FILE`, seed 0, scale 1.2 |
//! | `mri-4x` | – (CVPR Table 2) | multi-coil Cartesian CS-MRI, masked centred k-space per coil | acceleration 4, centre fraction 0.08, 8 birdcage coils, seed 42 |
//! | `mri-8x` | – (CVPR Table 2) | the same at ×8 | acceleration 8, centre fraction 0.04, 8 coils, seed 42 |
//!
//! Size rules: SR needs H and W to be multiples of the factor; the box hole is 128·H/256 ×
//! 128·W/256 (margin 32·H/256); blur kernels keep 61 / σ 3 when min(H, W) ≥ 128, and below that
//! use σ = 3·s/256 and the odd size nearest 61·s/256 (at least 3), s = min(H, W). Masks and
//! kernels are seeded with `seed` (default 42, as DAPS fixes one mask per dataset); the
//! measurement noise has its own seed. Every parameter can be overridden (`--param key=value`).
//!
//! The MRI tasks take complex images, stored as two channels `[2, H, W]` (real, imaginary); the
//! measurement is `[C, H, W, 2]` (coils, complex last), zero off the mask. Their mask (`[H, W]`,
//! whole k-space columns) and coil maps (`[C, H, W, 2]`, simulated birdcage maps or read from a
//! `--maps` file) are stored in the measurement file, and the measurement noise is masked too
//! (unsampled k-space stays exactly 0), so ‖A(x) − y‖ compares like with like.
//!
//! `nonlinear-blur` needs the bkse network weights (`--blur-weights GOPRO_wVAE.pth`, not shipped;
//! see [`crate::operator::nonlinear_blur`]) and H, W multiples of 128. The measurement file
//! records the weights' path (not the weights); `daps solve --blur-weights` overrides it.

use crate::error::{Error, Result};
pub use crate::io::{read_safetensors, write_safetensors};
use crate::noise::SeededNoise;
use crate::operator::blur::Blur;
use crate::operator::fft::PhaseRetrieval;
use crate::operator::inpaint::{box_mask, random_mask, Inpaint};
use crate::operator::mri::{
    birdcage_maps, cartesian_mask, default_center_fraction, read_maps, Mri,
};
use crate::operator::nonlinear_blur::NonlinearBlur;
use crate::operator::resize::{AvgPool, SuperResolution};
use crate::operator::{Hdr, Linear, Measurement, Operator};
use crate::sampler::{DapsConfig, Method};
use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One registered task.
#[derive(Debug, Clone, Copy)]
pub struct TaskInfo {
    pub name: &'static str,
    /// The task's name in the official DAPS configs ("–" when it has none).
    pub official: &'static str,
    pub summary: &'static str,
    pub linear: bool,
}

pub const TASKS: [TaskInfo; 12] = [
    TaskInfo {
        name: "sr4",
        official: "down_sampling",
        summary: "super-resolution ×4, antialiased bicubic (MATLAB imresize)",
        linear: true,
    },
    TaskInfo {
        name: "sr4-pool",
        official: "–",
        summary: "super-resolution ×4, average pooling",
        linear: true,
    },
    TaskInfo {
        name: "inpaint-box",
        official: "inpainting",
        summary: "box inpainting, one 128×128 hole (scaled) at a seeded position",
        linear: true,
    },
    TaskInfo {
        name: "inpaint-random",
        official: "inpainting_rand",
        summary: "random inpainting, 70% of pixels dropped",
        linear: true,
    },
    TaskInfo {
        name: "inpaint-mask",
        official: "–",
        summary: "inpainting with a user mask PNG (nonzero = observed)",
        linear: true,
    },
    TaskInfo {
        name: "gaussian-blur",
        official: "gaussian_blur",
        summary: "Gaussian blur 61×61, σ 3, reflect padding",
        linear: true,
    },
    TaskInfo {
        name: "motion-blur",
        official: "motion_blur",
        summary: "motion blur 61×61, intensity 0.5 (seeded kernel or a kernel file)",
        linear: true,
    },
    TaskInfo {
        name: "phase-retrieval",
        official: "phase_retrieval",
        summary: "Fourier phase retrieval, oversampling 2",
        linear: false,
    },
    TaskInfo {
        name: "hdr",
        official: "high_dynamic_range",
        summary: "high dynamic range, clip(2x, −1, 1)",
        linear: false,
    },
    TaskInfo {
        name: "nonlinear-blur",
        official: "nonlinear_blur",
        summary: "nonlinear blur: bkse KernelWizard network (GOPRO_wVAE.pth via --blur-weights), fixed kernel latent",
        linear: false,
    },
    TaskInfo {
        name: "mri-4x",
        official: "– (multi-coil MRI, CVPR Table 2)",
        summary: "multi-coil CS-MRI ×4 (complex image; column mask, 8% centre; birdcage maps)",
        linear: true,
    },
    TaskInfo {
        name: "mri-8x",
        official: "– (multi-coil MRI, CVPR Table 2)",
        summary: "multi-coil CS-MRI ×8 (complex image; column mask, 4% centre; birdcage maps)",
        linear: true,
    },
];

/// The tasks that fit 32×32 images, in table order.
pub const DEMO_TASKS: [&str; 7] = [
    "sr4",
    "inpaint-box",
    "inpaint-random",
    "gaussian-blur",
    "motion-blur",
    "phase-retrieval",
    "hdr",
];

fn task_names() -> String {
    TASKS.map(|t| t.name).join(", ")
}

/// The registry entry for `name`, or an error listing the valid names.
pub fn info(name: &str) -> Result<&'static TaskInfo> {
    TASKS
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::config(format!("unknown task '{name}' (valid: {})", task_names())))
}

/// A task with its operator parameters (the `operator` metadata of a measurement file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TaskSpec {
    Sr4 {
        factor: usize,
    },
    Sr4Pool {
        factor: usize,
    },
    InpaintBox {
        seed: u64,
    },
    InpaintRandom {
        drop: f64,
        seed: u64,
    },
    InpaintMask {
        file: String,
    },
    GaussianBlur {
        kernel_size: usize,
        sigma: f64,
    },
    /// With `file`, the kernel is read from it and `intensity`, `seed` are unused.
    MotionBlur {
        kernel_size: usize,
        intensity: f64,
        seed: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    PhaseRetrieval {
        oversample: f64,
    },
    Hdr {
        scale: f64,
    },
    /// bkse weights file; the kernel latent is `scale·randn` after numpy `seed(seed)`.
    NonlinearBlur {
        weights: String,
        seed: u32,
        scale: f64,
    },
    #[serde(rename = "mri-4x")]
    Mri4x(MriParams),
    #[serde(rename = "mri-8x")]
    Mri8x(MriParams),
}

/// Parameters of the MRI tasks (see [`crate::operator::mri`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MriParams {
    /// Undersampling factor R: round(W/R) of the W k-space columns are sampled.
    pub acceleration: f64,
    /// Fraction of fully sampled centre columns (fastMRI: 0.32/R).
    pub center_fraction: f64,
    /// Number of simulated birdcage coils (the maps file's C when `maps` is given).
    pub coils: usize,
    /// Seed of the random columns of the mask.
    pub seed: u64,
    /// Coil maps file (safetensors with `maps` [C, H, W, 2]) instead of birdcage maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maps: Option<String>,
}

impl MriParams {
    fn new(acceleration: f64, maps: Option<String>) -> Self {
        Self {
            acceleration,
            center_fraction: default_center_fraction(acceleration),
            coils: 8,
            seed: 42,
            maps,
        }
    }
}

/// Files a task may read: `--mask` for `inpaint-mask`, `--kernel` for `motion-blur`, `--maps`
/// (coil sensitivities) for the MRI tasks, `--blur-weights` (bkse network) for `nonlinear-blur`.
#[derive(Debug, Clone, Default)]
pub struct TaskFiles {
    pub mask: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub maps: Option<PathBuf>,
    pub weights: Option<PathBuf>,
}

/// Blur kernel (size, σ) for an image whose smaller side is `s` (see the module docs).
pub fn blur_size(s: usize) -> (usize, f64) {
    if s >= 128 {
        return (61, 3.0);
    }
    let k = (61.0 * s as f64 / 256.0).round() as usize;
    let k = if k.is_multiple_of(2) { k + 1 } else { k };
    (k.max(3), 3.0 * s as f64 / 256.0)
}

impl TaskSpec {
    /// The default parameters of task `name` for an H×W image.
    pub fn defaults(name: &str, h: usize, w: usize, files: &TaskFiles) -> Result<Self> {
        let info = info(name)?;
        if files.mask.is_some() && name != "inpaint-mask" {
            return Err(Error::config(format!(
                "--mask only applies to inpaint-mask, not {name}"
            )));
        }
        if files.kernel.is_some() && name != "motion-blur" {
            return Err(Error::config(format!(
                "--kernel only applies to motion-blur, not {name}"
            )));
        }
        if files.maps.is_some() && !name.starts_with("mri-") {
            return Err(Error::config(format!(
                "--maps only applies to the MRI tasks, not {name}"
            )));
        }
        if files.weights.is_some() && name != "nonlinear-blur" {
            return Err(Error::config(format!(
                "--blur-weights only applies to nonlinear-blur, not {name}"
            )));
        }
        let (k, sigma) = blur_size(h.min(w));
        let path = |p: &Path| p.display().to_string();
        Ok(match info.name {
            "sr4" => Self::Sr4 { factor: 4 },
            "sr4-pool" => Self::Sr4Pool { factor: 4 },
            "inpaint-box" => Self::InpaintBox { seed: 42 },
            "inpaint-random" => Self::InpaintRandom {
                drop: 0.7,
                seed: 42,
            },
            "inpaint-mask" => Self::InpaintMask {
                file: files.mask.as_deref().map(path).ok_or_else(|| {
                    Error::config("task inpaint-mask needs a mask image: --mask FILE.png")
                })?,
            },
            "gaussian-blur" => Self::GaussianBlur {
                kernel_size: k,
                sigma,
            },
            "motion-blur" => Self::MotionBlur {
                kernel_size: k,
                intensity: 0.5,
                seed: 42,
                file: files.kernel.as_deref().map(path),
            },
            "phase-retrieval" => Self::PhaseRetrieval { oversample: 2.0 },
            "hdr" => Self::Hdr { scale: 2.0 },
            "nonlinear-blur" => Self::NonlinearBlur {
                weights: files.weights.as_deref().map(path).ok_or_else(|| {
                    Error::config(
                        "task nonlinear-blur needs the bkse network weights: --blur-weights \
                         GOPRO_wVAE.pth (see `daps tasks`)",
                    )
                })?,
                seed: 0,
                scale: 1.2,
            },
            "mri-4x" => Self::Mri4x(MriParams::new(4.0, files.maps.as_deref().map(path))),
            "mri-8x" => Self::Mri8x(MriParams::new(8.0, files.maps.as_deref().map(path))),
            _ => unreachable!("every registered task has defaults"),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Sr4 { .. } => "sr4",
            Self::Sr4Pool { .. } => "sr4-pool",
            Self::InpaintBox { .. } => "inpaint-box",
            Self::InpaintRandom { .. } => "inpaint-random",
            Self::InpaintMask { .. } => "inpaint-mask",
            Self::GaussianBlur { .. } => "gaussian-blur",
            Self::MotionBlur { .. } => "motion-blur",
            Self::PhaseRetrieval { .. } => "phase-retrieval",
            Self::Hdr { .. } => "hdr",
            Self::NonlinearBlur { .. } => "nonlinear-blur",
            Self::Mri4x(_) => "mri-4x",
            Self::Mri8x(_) => "mri-8x",
        }
    }

    /// The MRI parameters, for the MRI tasks.
    pub fn mri(&self) -> Option<&MriParams> {
        match self {
            Self::Mri4x(p) | Self::Mri8x(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the task takes complex images (`[2, H, W]`: real, imaginary), as MRI does.
    pub fn is_complex(&self) -> bool {
        self.mri().is_some()
    }

    /// The number of image channels the task needs, when it fixes one (2 for MRI).
    pub fn channels(&self) -> Option<usize> {
        self.is_complex().then_some(2)
    }

    pub fn is_linear(&self) -> bool {
        info(self.name()).map(|i| i.linear).unwrap_or(false)
    }

    /// The parameters as `key=value` pairs (without the task name).
    pub fn params(&self) -> Vec<(String, String)> {
        let v = serde_json::to_value(self).expect("serialisable");
        v.as_object()
            .expect("an object")
            .iter()
            .filter(|(k, _)| *k != "task")
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }

    /// Overrides one parameter (`value` is read as JSON, or else as a string).
    pub fn set(&self, key: &str, value: &str) -> Result<Self> {
        let mut v = serde_json::to_value(self).expect("serialisable");
        let obj = v.as_object_mut().expect("an object");
        let valid: Vec<&str> = self.params_keys();
        if key == "task" || !valid.contains(&key) {
            return Err(Error::config(format!(
                "task {} has no parameter '{key}' (parameters: {})",
                self.name(),
                valid.join(", ")
            )));
        }
        let parsed = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        obj.insert(key.to_string(), parsed);
        serde_json::from_value(v).map_err(|e| {
            Error::config(format!(
                "task {}: bad value '{value}' for {key}: {e}",
                self.name()
            ))
        })
    }

    fn params_keys(&self) -> Vec<&'static str> {
        match self {
            Self::Sr4 { .. } | Self::Sr4Pool { .. } => vec!["factor"],
            Self::InpaintBox { .. } => vec!["seed"],
            Self::InpaintRandom { .. } => vec!["drop", "seed"],
            Self::InpaintMask { .. } => vec!["file"],
            Self::GaussianBlur { .. } => vec!["kernel_size", "sigma"],
            Self::MotionBlur { .. } => vec!["kernel_size", "intensity", "seed", "file"],
            Self::PhaseRetrieval { .. } => vec!["oversample"],
            Self::Hdr { .. } => vec!["scale"],
            Self::NonlinearBlur { .. } => vec!["weights", "seed", "scale"],
            Self::Mri4x(_) | Self::Mri8x(_) => {
                vec!["acceleration", "center_fraction", "coils", "seed", "maps"]
            }
        }
    }
}

/// The tensors a task is built from (those it needs, by task): an inpainting mask `[1, 1, H, W]`
/// or MRI k-space mask `[H, W]`, a blur kernel `[k, k]`, MRI coil maps `[C, H, W, 2]`.
#[derive(Debug, Clone, Default)]
pub struct TaskTensors {
    pub mask: Option<Tensor>,
    pub kernel: Option<Tensor>,
    pub maps: Option<Tensor>,
}

/// A task built for images of shape (C, H, W): its operator, and the mask, kernel or coil maps
/// it uses.
pub struct Task {
    spec: TaskSpec,
    shape: [usize; 3],
    mask: Option<Tensor>,
    kernel: Option<Tensor>,
    maps: Option<Tensor>,
    op: Box<dyn Operator>,
    out_shape: Vec<usize>,
}

fn cpu_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
}

fn all_finite(t: &Tensor) -> Result<bool> {
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

impl Task {
    /// Builds the task, generating its mask or kernel (or reading it from the spec's file).
    pub fn build(spec: TaskSpec, shape: [usize; 3]) -> Result<Self> {
        let [_, h, w] = shape;
        let name = spec.name();
        let ctx = |e: Error| Error::config(format!("{name} on {h}×{w}: {e}"));
        let mut spec = spec;
        let (mut mask, mut kernel, mut maps) = (None, None, None);
        let mask_tensor = |m: Vec<f32>| Tensor::from_vec(m, (1, 1, h, w), &Device::Cpu);
        match &mut spec {
            TaskSpec::InpaintBox { seed } => {
                mask = Some(mask_tensor(box_mask(h, w, *seed).map_err(ctx)?)?)
            }
            TaskSpec::InpaintRandom { drop, seed } => {
                mask = Some(mask_tensor(random_mask(h, w, *drop, *seed).map_err(ctx)?)?)
            }
            TaskSpec::InpaintMask { file } => {
                mask = Some(Inpaint::from_png(&*file, h, w, &Device::Cpu)?.mask)
            }
            TaskSpec::GaussianBlur { kernel_size, sigma } => {
                let b = Blur::gaussian(*kernel_size, *sigma).map_err(ctx)?;
                kernel = Some(b.kernel_tensor(&Device::Cpu)?);
            }
            TaskSpec::MotionBlur {
                kernel_size,
                intensity,
                seed,
                file,
            } => {
                let b = match file {
                    Some(f) if f.ends_with(".safetensors") => Blur::from_safetensors(&*f)?,
                    Some(f) => Blur::from_png(&*f)?,
                    None => Blur::motion(*kernel_size, *intensity, *seed).map_err(ctx)?,
                };
                *kernel_size = b.size();
                kernel = Some(b.kernel_tensor(&Device::Cpu)?);
            }
            TaskSpec::Mri4x(p) | TaskSpec::Mri8x(p) => {
                let m = match &p.maps {
                    Some(f) => read_maps(f)?,
                    None => birdcage_maps(p.coils, h, w).map_err(ctx)?,
                };
                p.coils = m.dim(0)?;
                // Stored as f32 in the measurement file: build from the same values.
                maps = Some(cpu_f32(&m)?);
                mask = Some(
                    cartesian_mask(h, w, p.acceleration, p.center_fraction, p.seed).map_err(ctx)?,
                );
            }
            _ => {}
        }
        Self::assemble(spec, shape, TaskTensors { mask, kernel, maps })
    }

    /// Builds the operator from the spec and the given mask/kernel/maps tensors, checking that
    /// they fit the task and the image size (shapes, values, finiteness).
    pub fn assemble(spec: TaskSpec, shape: [usize; 3], tensors: TaskTensors) -> Result<Self> {
        let TaskTensors { mask, kernel, maps } = tensors;
        let [c, h, w] = shape;
        let name = spec.name();
        if c == 0 || h == 0 || w == 0 {
            return Err(Error::config(format!(
                "{name}: empty image shape {c}×{h}×{w}"
            )));
        }
        let bad = |m: String| Err(Error::config(format!("{name} on {c}×{h}×{w}: {m}")));
        let need = |t: Option<Tensor>, what: &str| {
            t.map(|t| cpu_f32(&t))
                .transpose()?
                .ok_or_else(|| Error::config(format!("task {name} needs a {what} tensor")))
        };
        let mut keep_mask = None;
        let mut keep_kernel = None;
        let mut keep_maps = None;
        if let Some(need_c) = spec.channels() {
            if c != need_c {
                return bad(format!(
                    "takes complex images stored as {need_c} channels (real, imaginary), got {c}"
                ));
            }
        }
        let op: Box<dyn Operator> = match &spec {
            TaskSpec::Sr4 { factor } | TaskSpec::Sr4Pool { factor } => {
                let f = *factor;
                if f == 0 || h % f != 0 || w % f != 0 {
                    return bad(format!("H and W must be positive multiples of {f}"));
                }
                if matches!(spec, TaskSpec::Sr4 { .. }) {
                    Box::new(SuperResolution::new(f, h, w, &Device::Cpu)?)
                } else {
                    Box::new(AvgPool { factor: f })
                }
            }
            TaskSpec::InpaintBox { .. }
            | TaskSpec::InpaintRandom { .. }
            | TaskSpec::InpaintMask { .. } => {
                let m = need(mask, "mask")?;
                crate::error::expect_shape(&format!("{name} mask"), m.dims(), &[1, 1, h, w])?;
                let v = m.flatten_all()?.to_vec1::<f32>()?;
                if v.iter().any(|x| !(*x == 0.0 || *x == 1.0)) {
                    return bad("mask values must be 0 or 1".into());
                }
                keep_mask = Some(m.clone());
                Box::new(Inpaint::new(m)?)
            }
            TaskSpec::GaussianBlur { kernel_size, .. }
            | TaskSpec::MotionBlur { kernel_size, .. } => {
                let k = need(kernel, "kernel")?;
                let ks = *kernel_size;
                crate::error::expect_shape(&format!("{name} kernel"), k.dims(), &[ks, ks])?;
                if !all_finite(&k)? {
                    return bad("kernel has NaN or Inf entries".into());
                }
                if ks % 2 == 0 {
                    return bad(format!("kernel size must be odd, got {ks}"));
                }
                if ks / 2 >= h.min(w) {
                    return bad(format!(
                        "a {ks}×{ks} kernel needs H and W > {} (reflect padding)",
                        ks / 2
                    ));
                }
                keep_kernel = Some(k.clone());
                Box::new(Blur::from_kernel(&k)?)
            }
            TaskSpec::PhaseRetrieval { oversample } => {
                if !(oversample.is_finite() && *oversample >= 0.0) {
                    return bad(format!(
                        "oversample must be finite and ≥ 0, got {oversample}"
                    ));
                }
                Box::new(PhaseRetrieval {
                    oversample: *oversample,
                })
            }
            TaskSpec::Hdr { scale } => {
                if !(scale.is_finite() && *scale > 0.0) {
                    return bad(format!("scale must be finite and > 0, got {scale}"));
                }
                Box::new(Hdr { scale: *scale })
            }
            TaskSpec::NonlinearBlur {
                weights,
                seed,
                scale,
            } => {
                if !scale.is_finite() {
                    return bad(format!("scale must be finite, got {scale}"));
                }
                let op = NonlinearBlur::load(weights, &Device::Cpu)?.with_latent(*seed, *scale);
                op.check_shape(c, h, w)?;
                Box::new(op)
            }
            TaskSpec::Mri4x(p) | TaskSpec::Mri8x(p) => {
                if !(p.acceleration.is_finite() && p.acceleration >= 1.0) {
                    return bad(format!(
                        "acceleration must be finite and ≥ 1, got {}",
                        p.acceleration
                    ));
                }
                if !(0.0..=1.0).contains(&p.center_fraction) {
                    return bad(format!(
                        "center_fraction must be in [0, 1], got {}",
                        p.center_fraction
                    ));
                }
                let m = need(mask, "mask")?;
                crate::error::expect_shape(&format!("{name} k-space mask"), m.dims(), &[h, w])?;
                let v = m.flatten_all()?.to_vec1::<f32>()?;
                if v.iter().any(|x| !(*x == 0.0 || *x == 1.0)) {
                    return bad("k-space mask values must be 0 or 1".into());
                }
                if !v.contains(&1.0) {
                    return bad("k-space mask samples nothing".into());
                }
                let s = need(maps, "maps")?;
                crate::error::expect_shape(
                    &format!("{name} coil maps"),
                    s.dims(),
                    &[p.coils, h, w, 2],
                )?;
                if !all_finite(&s)? {
                    return bad("coil maps have NaN or Inf entries".into());
                }
                keep_mask = Some(m.clone());
                keep_maps = Some(s.clone());
                Box::new(Mri::new(&s, &m)?)
            }
        };
        let probe = Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu)?;
        let out_shape = op.forward(&probe)?.dims()[1..].to_vec();
        Ok(Self {
            spec,
            shape,
            mask: keep_mask,
            kernel: keep_kernel,
            maps: keep_maps,
            op,
            out_shape,
        })
    }

    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }
    pub fn name(&self) -> &'static str {
        self.spec.name()
    }
    /// (C, H, W) of the images the task takes.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }
    /// The shape of one measurement (without the batch dimension).
    pub fn output_shape(&self) -> &[usize] {
        &self.out_shape
    }
    /// `[1, 1, H, W]` (1 = observed) for the inpainting tasks; the k-space mask `[H, W]`
    /// (1 = sampled) for MRI.
    pub fn mask(&self) -> Option<&Tensor> {
        self.mask.as_ref()
    }
    /// The coil sensitivity maps `[C, H, W, 2]`, for MRI.
    pub fn maps(&self) -> Option<&Tensor> {
        self.maps.as_ref()
    }
    /// Whether the task takes complex images `[2, H, W]` (MRI).
    pub fn is_complex(&self) -> bool {
        self.spec.is_complex()
    }
    /// `[k, k]`, for the blur tasks.
    pub fn kernel(&self) -> Option<&Tensor> {
        self.kernel.as_ref()
    }
    pub fn is_linear(&self) -> bool {
        self.spec.is_linear()
    }

    /// One line: the task and its parameters.
    pub fn describe(&self) -> String {
        let [c, h, w] = self.shape;
        let p: Vec<String> = self
            .spec
            .params()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{} on {c}×{h}×{w} ({})", self.name(), p.join(", "))
    }

    /// The explicit matrix of this (linear) task, attached to its operator.
    pub fn explicit(&self) -> Result<Explicit<'_>> {
        if !self.is_linear() {
            return Err(Error::Unsupported(format!(
                "{} is not linear, so it has no matrix",
                self.name()
            )));
        }
        let a = explicit_matrix(&*self.op, &self.shape)?;
        Ok(Explicit { op: self, a })
    }
}

impl Operator for Task {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.op.forward(x)
    }
    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.op.vjp(x, v)
    }
    fn name(&self) -> String {
        self.describe()
    }
    fn as_linear(&self) -> Option<&dyn Linear> {
        self.op.as_linear()
    }
}

/// The largest sample (C·H·W) [`explicit_matrix`] accepts: 3×32×32.
pub const MAX_EXPLICIT_DIM: usize = 3 * 32 * 32;

/// The `[d_y, d]` matrix of a linear operator on samples of shape `sample_shape`, column j being
/// A(e_j) (evaluated in f64, in batches of basis images).
pub fn explicit_matrix(op: &dyn Operator, sample_shape: &[usize]) -> Result<DMatrix<f64>> {
    let d: usize = sample_shape.iter().product();
    if d == 0 || d > MAX_EXPLICIT_DIM {
        return Err(Error::Unsupported(format!(
            "explicit matrix of {}: samples of shape {sample_shape:?} have {d} entries (at most {MAX_EXPLICIT_DIM}, e.g. 3×32×32)",
            op.name()
        )));
    }
    let mut a: Option<DMatrix<f64>> = None;
    let chunk = 256;
    for start in (0..d).step_by(chunk) {
        let n = chunk.min(d - start);
        let mut basis = vec![0f64; n * d];
        for i in 0..n {
            basis[i * d + start + i] = 1.0;
        }
        let mut shape = vec![n];
        shape.extend_from_slice(sample_shape);
        let x = Tensor::from_vec(basis, shape, &Device::Cpu)?;
        let y = op.forward(&x)?.to_dtype(DType::F64)?.reshape((n, ()))?;
        let dy = y.dim(1)?;
        let rows = y.flatten_all()?.to_vec1::<f64>()?;
        let a = a.get_or_insert_with(|| DMatrix::zeros(dy, d));
        for i in 0..n {
            for r in 0..dy {
                a[(r, start + i)] = rows[i * dy + r];
            }
        }
    }
    Ok(a.expect("d > 0"))
}

/// A linear operator with its explicit matrix attached, for the exact x0 step. Forward and VJP
/// stay the operator's own (so measurements keep their shape); [`Operator::matrix`] gives A.
pub struct Explicit<'a> {
    op: &'a dyn Operator,
    a: DMatrix<f64>,
}

impl Operator for Explicit<'_> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.op.forward(x)
    }
    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.op.vjp(x, v)
    }
    fn name(&self) -> String {
        format!("{} (explicit matrix)", self.op.name())
    }
    fn matrix(&self) -> Option<&DMatrix<f64>> {
        Some(&self.a)
    }
    fn as_linear(&self) -> Option<&dyn Linear> {
        self.op.as_linear()
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement files

/// `format` metadata of a measurement file.
pub const FORMAT: &str = "daps-measurement";
/// `version` metadata of a measurement file.
pub const FORMAT_VERSION: u32 = 1;

/// A simulated measurement with its task: one safetensors file holding `y` `[1, ...]`, the
/// task's `mask` or `kernel`, and metadata `format`, `version`, `task`, `operator` (JSON of the
/// [`TaskSpec`]), `shape` (JSON [C, H, W]), `sigma_y`, `seed`, `description`.
pub struct MeasurementFile {
    pub task: Task,
    /// `[1, ...]`, the task's output shape.
    pub y: Tensor,
    pub sigma_y: f64,
    /// Seed of the measurement noise.
    pub seed: u64,
}

impl MeasurementFile {
    /// y = A(x) + σ_y·n with `SeededNoise::new(seed)`; `x` is `[1, C, H, W]` in [−1, 1].
    pub fn simulate(task: Task, x: &Tensor, sigma_y: f64, seed: u64) -> Result<Self> {
        let [c, h, w] = task.shape();
        crate::error::expect_shape("measured image", x.dims(), &[1, c, h, w])?;
        if !(sigma_y.is_finite() && sigma_y >= 0.0) {
            return Err(Error::config(format!(
                "sigma_y must be finite and ≥ 0, got {sigma_y}"
            )));
        }
        let x = cpu_f32(x)?;
        let y = match (task.is_complex(), task.mask()) {
            // MRI: noise only on the sampled k-space entries (unsampled ones stay exactly 0).
            (true, Some(mask)) => {
                let ax = task.forward(&x)?;
                let n = crate::noise::NoiseSource::randn(
                    &mut SeededNoise::new(seed),
                    ax.shape(),
                    &Device::Cpu,
                )?;
                let m = mask.reshape((1, 1, h, w, 1))?;
                (ax + (n.broadcast_mul(&m)? * sigma_y)?)?
            }
            _ => Measurement::simulate(&task, &x, sigma_y, &mut SeededNoise::new(seed))?.y,
        };
        Ok(Self {
            task,
            y,
            sigma_y,
            seed,
        })
    }

    pub fn measurement(&self) -> Measurement {
        Measurement {
            y: self.y.clone(),
            sigma_y: self.sigma_y,
        }
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let t = &self.task;
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("version".into(), FORMAT_VERSION.to_string());
        meta.insert("task".into(), t.name().into());
        meta.insert(
            "operator".into(),
            serde_json::to_string(t.spec()).expect("serialisable"),
        );
        meta.insert(
            "shape".into(),
            serde_json::to_string(&t.shape()).expect("serialisable"),
        );
        meta.insert("sigma_y".into(), self.sigma_y.to_string());
        meta.insert("seed".into(), self.seed.to_string());
        meta.insert("description".into(), t.describe());
        let mut tensors = vec![("y", self.y.clone())];
        if let Some(m) = t.mask() {
            tensors.push(("mask", m.clone()));
        }
        if let Some(k) = t.kernel() {
            tensors.push(("kernel", k.clone()));
        }
        if let Some(s) = t.maps() {
            tensors.push(("maps", s.clone()));
        }
        write_safetensors(path, &tensors, &meta)
    }

    /// Reads and validates a measurement file, rebuilding its task.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, &TaskFiles::default())
    }

    /// [`MeasurementFile::load`], with `files.weights` replacing the bkse weights path that a
    /// `nonlinear-blur` measurement records (`daps solve --blur-weights`).
    pub fn load_with(path: impl AsRef<Path>, files: &TaskFiles) -> Result<Self> {
        let path = path.as_ref();
        let at = |m: String| Error::msg(format!("measurement {}: {m}", path.display()));
        let (mut tensors, meta) = read_safetensors(path)?;
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| at(format!("missing metadata '{k}' (not a daps measure file?)")))
        };
        if get("format")? != FORMAT {
            return Err(at(format!(
                "format is '{}', expected '{FORMAT}'",
                meta["format"]
            )));
        }
        let version: u32 = get("version")?
            .parse()
            .map_err(|_| at("unreadable version".into()))?;
        if version != FORMAT_VERSION {
            return Err(at(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            )));
        }
        let task = get("task")?;
        info(task).map_err(|e| at(e.to_string()))?;
        let spec: TaskSpec = serde_json::from_str(get("operator")?)
            .map_err(|e| at(format!("bad operator parameters for task {task}: {e}")))?;
        if spec.name() != task {
            return Err(at(format!(
                "operator parameters are for {}, but the task is {task}",
                spec.name()
            )));
        }
        let mut spec = spec;
        if let Some(p) = &files.weights {
            match &mut spec {
                TaskSpec::NonlinearBlur { weights, .. } => *weights = p.display().to_string(),
                _ => {
                    return Err(at(format!(
                        "--blur-weights only applies to nonlinear-blur, not {task}"
                    )))
                }
            }
        }
        let shape: [usize; 3] =
            serde_json::from_str(get("shape")?).map_err(|e| at(format!("bad image shape: {e}")))?;
        let sigma_y: f64 = get("sigma_y")?
            .parse()
            .map_err(|_| at("unreadable sigma_y".into()))?;
        if !(sigma_y.is_finite() && sigma_y >= 0.0) {
            return Err(at(format!("sigma_y must be finite and ≥ 0, got {sigma_y}")));
        }
        let seed: u64 = get("seed")?
            .parse()
            .map_err(|_| at("unreadable seed".into()))?;
        let y = tensors
            .remove("y")
            .ok_or_else(|| at("missing tensor 'y'".into()))?;
        let mask = tensors.remove("mask");
        let kernel = tensors.remove("kernel");
        let maps = tensors.remove("maps");
        let needs: &[(&str, bool)] = match spec {
            TaskSpec::InpaintBox { .. }
            | TaskSpec::InpaintRandom { .. }
            | TaskSpec::InpaintMask { .. } => &[("mask", mask.is_some())],
            TaskSpec::GaussianBlur { .. } | TaskSpec::MotionBlur { .. } => {
                &[("kernel", kernel.is_some())]
            }
            TaskSpec::Mri4x(_) | TaskSpec::Mri8x(_) => {
                &[("mask", mask.is_some()), ("maps", maps.is_some())]
            }
            _ => &[],
        };
        if let Some((what, _)) = needs.iter().find(|(_, present)| !present) {
            return Err(at(format!(
                "missing tensor '{what}' (task {task} needs it)"
            )));
        }
        let task = Task::assemble(spec, shape, TaskTensors { mask, kernel, maps })
            .map_err(|e| at(e.to_string()))?;
        let mut expected = vec![1];
        expected.extend_from_slice(task.output_shape());
        if y.dims() != expected.as_slice() {
            return Err(at(format!(
                "y has shape {:?}, but {} gives {:?}",
                y.dims(),
                task.describe(),
                expected
            )));
        }
        let y = cpu_f32(&y)?;
        if !all_finite(&y)? {
            return Err(at("y contains NaN or Inf".into()));
        }
        Ok(Self {
            task,
            y,
            sigma_y,
            seed,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Presets

/// Sampler budgets in every preset file.
pub const BUDGETS: [&str; 5] = ["daps-1k", "daps-4k", "daps-100", "daps-50", "dps-1000"];
/// The budget `daps solve` uses unless told otherwise.
pub const DEFAULT_BUDGET: &str = "daps-1k";

/// The budget `daps solve --method NAME` uses without `--preset`.
pub fn default_budget(method: &str) -> &'static str {
    match method {
        "dps" => "dps-1000",
        _ => DEFAULT_BUDGET,
    }
}

/// The embedded TOML preset file of a task.
pub fn preset_source(task: &str) -> Result<&'static str> {
    Ok(match info(task)?.name {
        "sr4" => include_str!("../presets/sr4.toml"),
        "sr4-pool" => include_str!("../presets/sr4-pool.toml"),
        "inpaint-box" => include_str!("../presets/inpaint-box.toml"),
        "inpaint-random" => include_str!("../presets/inpaint-random.toml"),
        "inpaint-mask" => include_str!("../presets/inpaint-mask.toml"),
        "gaussian-blur" => include_str!("../presets/gaussian-blur.toml"),
        "motion-blur" => include_str!("../presets/motion-blur.toml"),
        "phase-retrieval" => include_str!("../presets/phase-retrieval.toml"),
        "hdr" => include_str!("../presets/hdr.toml"),
        "nonlinear-blur" => include_str!("../presets/nonlinear-blur.toml"),
        "mri-4x" => include_str!("../presets/mri-4x.toml"),
        "mri-8x" => include_str!("../presets/mri-8x.toml"),
        _ => unreachable!("every registered task has a preset file"),
    })
}

/// The sampler and settings of `budget` (see [`BUDGETS`]) for a task: a section of its preset
/// file, naming its method (`method = "dps"`; default `daps`).
pub fn preset_method(task: &str, budget: &str) -> Result<Method> {
    let src = preset_source(task)?;
    let table: toml::Table =
        toml::from_str(src).map_err(|e| Error::config(format!("preset file of {task}: {e}")))?;
    let section = table
        .get(budget)
        .and_then(|s| s.as_table())
        .ok_or_else(|| {
            Error::config(format!(
                "unknown preset '{budget}' for task {task} (valid: {})",
                BUDGETS.join(", ")
            ))
        })?;
    let m = Method::from_table(section)
        .map_err(|e| Error::config(format!("preset {budget} of {task}: {e}")))?;
    m.validate()?;
    Ok(m)
}

/// The DAPS configuration of `budget` (`daps-1k`, `daps-4k`, `daps-100`, `daps-50`) for a task.
pub fn preset(task: &str, budget: &str) -> Result<DapsConfig> {
    match preset_method(task, budget)? {
        Method::Daps(c) => Ok(c),
        m => Err(Error::config(format!(
            "preset {budget} of {task} is a {} preset, not daps",
            m.name()
        ))),
    }
}

/// Sets one field of a DAPS configuration; `value` is read as TOML (or else as a string).
pub fn set_config(cfg: &DapsConfig, key: &str, value: &str) -> Result<DapsConfig> {
    match Method::Daps(cfg.clone()).set(key, value)? {
        Method::Daps(c) => Ok(c),
        _ => unreachable!("set keeps the method"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::X0Method;

    fn build(name: &str, shape: [usize; 3]) -> Result<Task> {
        Task::build(
            TaskSpec::defaults(name, shape[1], shape[2], &TaskFiles::default())?,
            shape,
        )
    }

    #[test]
    fn every_task_builds_at_256_and_small_sizes() {
        // inpaint-mask and nonlinear-blur need user files (tests/nonlinear_blur.rs builds the latter).
        let needs_files = ["inpaint-mask", "nonlinear-blur"];
        for t in TASKS.iter().filter(|t| !needs_files.contains(&t.name)) {
            for s in [256, 32, 8] {
                let c = if t.name.starts_with("mri-") { 2 } else { 3 };
                let task = build(t.name, [c, s, s]).unwrap();
                let out = task.output_shape().to_vec();
                let expected = match t.name {
                    "sr4" | "sr4-pool" => vec![3, s / 4, s / 4],
                    "phase-retrieval" => vec![3, s + 2 * (s / 4), s + 2 * (s / 4)],
                    "mri-4x" | "mri-8x" => vec![8, s, s, 2],
                    _ => vec![3, s, s],
                };
                assert_eq!(out, expected, "{} at {s}", t.name);
            }
        }
    }

    #[test]
    fn kernel_scaling() {
        assert_eq!(blur_size(256), (61, 3.0));
        assert_eq!(blur_size(128), (61, 3.0));
        assert_eq!(blur_size(64), (15, 0.75));
        assert_eq!(blur_size(32), (9, 0.375));
        assert_eq!(blur_size(8).0, 3);
        let t = build("gaussian-blur", [1, 64, 64]).unwrap();
        assert_eq!(t.kernel().unwrap().dims(), &[15, 15]);
    }

    #[test]
    fn box_hole_is_scaled() {
        let t = build("inpaint-box", [3, 64, 64]).unwrap();
        let m = t
            .mask()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(m as usize, 64 * 64 - 32 * 32);
        let t = build("inpaint-random", [3, 20, 20]).unwrap();
        let m = t
            .mask()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(m as usize, 400 - 280);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = build("deblur", [3, 8, 8]).err().unwrap().to_string();
        assert!(
            e.contains("unknown task 'deblur'") && e.contains("motion-blur"),
            "{e}"
        );
        let e = build("sr4", [3, 30, 30]).err().unwrap().to_string();
        assert!(e.contains("multiples of 4") && e.contains("30×30"), "{e}");
        let spec = TaskSpec::defaults("gaussian-blur", 16, 16, &TaskFiles::default())
            .unwrap()
            .set("kernel_size", "61")
            .unwrap();
        let e = Task::build(spec, [3, 16, 16]).err().unwrap().to_string();
        assert!(e.contains("needs H and W > 30"), "{e}");
        let e = TaskSpec::defaults("inpaint-mask", 8, 8, &TaskFiles::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--mask"), "{e}");
        let spec = TaskSpec::defaults("hdr", 8, 8, &TaskFiles::default()).unwrap();
        let e = spec.set("factor", "2").unwrap_err().to_string();
        assert!(
            e.contains("no parameter 'factor'") && e.contains("scale"),
            "{e}"
        );
        let e = spec.set("scale", "big").unwrap_err().to_string();
        assert!(e.contains("bad value"), "{e}");
        assert_eq!(
            spec.set("scale", "3").unwrap(),
            TaskSpec::Hdr { scale: 3.0 }
        );
    }

    #[test]
    fn spec_json_roundtrip() {
        let files = TaskFiles {
            weights: Some(PathBuf::from("GOPRO_wVAE.pth")),
            ..TaskFiles::default()
        };
        for t in TASKS.iter().filter(|t| t.name != "inpaint-mask") {
            let files = match t.name {
                "nonlinear-blur" => files.clone(),
                _ => TaskFiles::default(),
            };
            let s = TaskSpec::defaults(t.name, 256, 256, &files).unwrap();
            let j = serde_json::to_string(&s).unwrap();
            assert!(j.contains(&format!("\"task\":\"{}\"", t.name)), "{j}");
            assert_eq!(serde_json::from_str::<TaskSpec>(&j).unwrap(), s);
        }
        let e = serde_json::from_str::<TaskSpec>(r#"{"task":"hdr","scale":2,"extra":1}"#);
        assert!(e.is_err());
    }

    #[test]
    fn presets_hold_the_official_values() {
        // (task, Langevin steps, lr) from reference §4.2, pixel column; lr_min_ratio 0.01.
        let official = [
            ("sr4", 100, 1e-4),
            ("sr4-pool", 100, 1e-4),
            ("inpaint-box", 100, 5e-5),
            ("inpaint-random", 100, 1e-4),
            ("inpaint-mask", 100, 5e-5),
            ("gaussian-blur", 100, 1e-4),
            ("motion-blur", 100, 5e-5),
            ("phase-retrieval", 100, 5e-5),
            ("hdr", 100, 2e-5),
            ("nonlinear-blur", 200, 1e-5),
            // not official (no DAPS config): mid-range of InverseBench's sweep
            ("mri-4x", 100, 1e-4),
            ("mri-8x", 100, 1e-4),
        ];
        assert_eq!(official.len(), TASKS.len());
        for (task, steps, lr) in official {
            for (budget, n, m) in [
                ("daps-1k", 200, 5),
                ("daps-4k", 400, 10),
                ("daps-100", 50, 2),
                ("daps-50", 50, 1),
            ] {
                let c = preset(task, budget).unwrap();
                assert_eq!((c.annealing_steps, c.ode_steps), (n, m), "{task} {budget}");
                assert_eq!(c.mcmc_steps, steps, "{task} {budget}");
                assert_eq!(c.lr, lr, "{task} {budget}");
                assert_eq!(c.lr_min_ratio, 0.01);
                assert_eq!(c.tau, 0.01);
                assert_eq!(
                    (c.sigma_max, c.sigma_min, c.sigma_min_ode),
                    (100.0, 0.1, 0.01)
                );
                assert_eq!(c.x0_method, X0Method::Langevin);
            }
            let e = preset(task, "daps-2k").unwrap_err().to_string();
            assert!(
                e.contains("unknown preset 'daps-2k'") && e.contains("daps-100"),
                "{e}"
            );
        }
    }

    #[test]
    fn every_task_has_every_budget_and_a_dps_preset() {
        for t in TASKS {
            for b in BUDGETS {
                let m = preset_method(t.name, b).unwrap();
                assert_eq!(
                    m.name(),
                    if b == "dps-1000" { "dps" } else { "daps" },
                    "{b}"
                );
            }
            let zeta = if t.name == "phase-retrieval" {
                0.4
            } else {
                1.0
            };
            assert_eq!(
                preset_method(t.name, "dps-1000").unwrap(),
                Method::Dps(crate::sampler::DpsConfig {
                    steps: 1000,
                    zeta,
                    clip: Some(1.0)
                }),
                "{}",
                t.name
            );
            let e = preset(t.name, "dps-1000").unwrap_err().to_string();
            assert!(e.contains("is a dps preset"), "{e}");
        }
        assert_eq!(default_budget("dps"), "dps-1000");
        assert_eq!(default_budget("daps"), DEFAULT_BUDGET);
    }

    #[test]
    fn mri_tasks_store_and_check_mask_and_maps() {
        let t = build("mri-4x", [2, 32, 32]).unwrap();
        assert!(t.is_complex() && t.is_linear());
        assert_eq!(t.mask().unwrap().dims(), &[32, 32]);
        assert_eq!(t.maps().unwrap().dims(), &[8, 32, 32, 2]);
        let cols: f32 = t
            .mask()
            .unwrap()
            .narrow(0, 0, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(cols, 8.0, "32 columns / 4");
        let t8 = build("mri-8x", [2, 32, 32]).unwrap();
        assert_eq!(
            t8.spec().mri().unwrap().center_fraction,
            default_center_fraction(8.0)
        );
        let e = build("mri-4x", [3, 32, 32]).err().unwrap().to_string();
        assert!(e.contains("complex images") && e.contains("got 3"), "{e}");
        let spec = t.spec().clone();
        let tensors = |mask: Option<Tensor>, maps: Option<Tensor>| TaskTensors {
            mask,
            kernel: None,
            maps,
        };
        let (mask, maps) = (t.mask().cloned(), t.maps().cloned());
        let e = Task::assemble(spec.clone(), [2, 32, 32], tensors(mask.clone(), None))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("needs a maps tensor"), "{e}");
        let small = maps.as_ref().unwrap().narrow(0, 0, 4).unwrap();
        let e = Task::assemble(
            spec.clone(),
            [2, 32, 32],
            tensors(mask.clone(), Some(small)),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("coil maps"), "{e}");
        let nan = (maps.as_ref().unwrap() * f64::NAN).unwrap();
        let e = Task::assemble(spec.clone(), [2, 32, 32], tensors(mask.clone(), Some(nan)))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("NaN"), "{e}");
        let half = (mask.as_ref().unwrap() * 0.5).unwrap();
        let e = Task::assemble(spec.clone(), [2, 32, 32], tensors(Some(half), maps.clone()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("0 or 1"), "{e}");
        // Noise only where k-space is sampled.
        let x = crate::noise::NoiseSource::randn(
            &mut SeededNoise::new(1),
            &(1, 2, 32, 32).into(),
            &Device::Cpu,
        )
        .unwrap();
        let mf = MeasurementFile::simulate(t, &x, 0.1, 3).unwrap();
        let r = mf.measurement().residual(&mf.task, &x).unwrap();
        let m = mask.unwrap().reshape((1, 1, 32, 32, 1)).unwrap();
        let off = r
            .broadcast_mul(&(1.0 - &m).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(off, 0.0);
        let on = r
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // 8 coils × 32 rows × 8 columns × 2 sampled entries of variance 0.01.
        let expected = 8.0 * 32.0 * 8.0 * 2.0 * 0.01;
        assert!((on / expected - 1.0).abs() < 0.1, "{on} vs {expected}");
    }

    #[test]
    fn config_overrides() {
        let c = preset("sr4", "daps-1k").unwrap();
        let c = set_config(&c, "lr", "3e-5").unwrap();
        let c = set_config(&c, "annealing_steps", "7").unwrap();
        let c = set_config(&c, "x0_method", "hmc").unwrap();
        let c = set_config(&c, "tau", "1").unwrap();
        assert_eq!(
            (c.lr, c.annealing_steps, c.x0_method, c.tau),
            (3e-5, 7, X0Method::Hmc, 1.0)
        );
        let e = set_config(&c, "lrr", "1").unwrap_err().to_string();
        assert!(
            e.contains("unknown sampler setting 'lrr'") && e.contains("mcmc_steps"),
            "{e}"
        );
        let e = set_config(&c, "x0_method", "magic")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad value 'magic'"), "{e}");
    }

    #[test]
    fn explicit_matrix_reproduces_the_operator() {
        let t = build("sr4", [1, 8, 8]).unwrap();
        let e = t.explicit().unwrap();
        let a = e.matrix().unwrap();
        assert_eq!(a.shape(), (4, 64));
        let x = crate::noise::NoiseSource::randn(
            &mut SeededNoise::new(3),
            &(1, 1, 8, 8).into(),
            &Device::Cpu,
        )
        .unwrap();
        let xv = nalgebra::DVector::from_vec(
            x.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
        );
        let y: Vec<f32> = t
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (r, v) in (a * xv).iter().zip(&y) {
            assert!((r - *v as f64).abs() < 1e-5);
        }
        assert!(build("hdr", [1, 8, 8]).unwrap().explicit().is_err());
        let e = build("sr4", [3, 64, 64])
            .unwrap()
            .explicit()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("at most 3072"), "{e}");
    }
}
