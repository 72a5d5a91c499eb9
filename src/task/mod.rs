//! The DAPS image tasks: a registry of named degradations, their operators for a given image
//! size, the measurement file that holds everything needed to solve one again ([`file`]), and
//! the per-task sampler presets (`presets/<task>.toml`, embedded in the binary; [`preset`]).
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
//!
//! Size bounds (untrusted input is checked before anything is allocated): an image has at most
//! [`MAX_CHANNELS`] channels, sides of at most [`MAX_SIDE`] (or √`max_pixels` when that is
//! larger) and at most [`max_pixels`] pixels per channel ([`MAX_PIXELS`] = 8192², or the
//! `DAPS_MAX_PIXELS` environment variable); a batch of N samples at most [`MAX_BATCH_IMAGES`] ×
//! `max_pixels` × … values ([`check_batch`]); a task's measurement at most
//! [`MAX_OUTPUT_FACTOR`] times the image's values; MRI at most [`MAX_COILS`] coils. A measurement
//! file's `y` is checked against the shape the task gives before the operator is built.
//!
//! Each task is one [`TaskDef`] (a `static` in the file of its operator family: [`resize`],
//! [`inpaint`], [`blur`], [`nonlinear`], [`mri`]) listed in [`TASKS`]; everything else (the
//! parameter parsing, the measurement file, presets, previews) reads the registry.

mod blur;
mod explicit;
pub mod file;
mod inpaint;
mod mri;
mod nonlinear;
pub mod preset;
mod resize;

pub use crate::io::{read_safetensors, write_safetensors};
pub use blur::blur_size;
pub use explicit::{explicit_matrix, Explicit, MAX_EXPLICIT_DIM};
pub use file::{MeasurementFile, FORMAT, FORMAT_VERSION};
pub use preset::{
    budgets, default_budget, has_preset, preset, preset_method, preset_source, resolve_method,
    set_config, solve_default, BUDGETS, DEFAULT_BUDGET, METHOD_PRESETS, SOLVE_DEFAULTS,
    TUNED_PRESETS,
};

use crate::error::{Error, Result};
use crate::operator::{Linear, Operator};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

// ---------------------------------------------------------------------------------------------
// Size bounds

/// Default bound on the pixels (H·W) of one image: 8192 × 8192. `DAPS_MAX_PIXELS` overrides it.
pub const MAX_PIXELS: usize = 8192 * 8192;
/// Bound on an image side (H or W), unless √[`max_pixels`] is larger: it bounds the H² and W²
/// interpolation matrices of super-resolution.
pub const MAX_SIDE: usize = 8192;
/// Bound on the image channels C.
pub const MAX_CHANNELS: usize = 16;
/// Bound on the MRI coils (the measurement is `[coils, H, W, 2]`).
pub const MAX_COILS: usize = 64;
/// Bound on a measurement's values, as a multiple of the image's C·H·W (MRI with
/// [`MAX_COILS`] coils needs 64; phase retrieval with oversample 2, 2.25).
pub const MAX_OUTPUT_FACTOR: usize = 64;
/// [`check_batch`]: samples × C·H·W ≤ `MAX_BATCH_IMAGES` × [`max_pixels`].
pub const MAX_BATCH_IMAGES: usize = 64;

/// The bound on pixels per image: `DAPS_MAX_PIXELS` when set to a positive integer, else
/// [`MAX_PIXELS`].
pub fn max_pixels() -> usize {
    std::env::var("DAPS_MAX_PIXELS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(MAX_PIXELS)
}

/// The bound on an image side: [`MAX_SIDE`], or √[`max_pixels`] when that is larger.
pub fn max_side() -> usize {
    MAX_SIDE.max(max_pixels().isqrt())
}

/// Checks an image shape (C, H, W) against the bounds (see the module docs): nonzero, C ≤
/// [`MAX_CHANNELS`], H, W ≤ [`max_side`], H·W ≤ [`max_pixels`].
pub fn check_shape([c, h, w]: [usize; 3]) -> Result<()> {
    if c == 0 || h == 0 || w == 0 {
        return Err(Error::config(format!("empty image shape {c}×{h}×{w}")));
    }
    if c > MAX_CHANNELS {
        return Err(Error::config(format!(
            "image shape {c}×{h}×{w}: at most {MAX_CHANNELS} channels"
        )));
    }
    let (side, pixels) = (max_side(), max_pixels());
    if h > side || w > side || h.checked_mul(w).is_none_or(|n| n > pixels) {
        return Err(Error::config(format!(
            "image shape {c}×{h}×{w} is too large: at most {side} per side and {pixels} pixels \
             (set DAPS_MAX_PIXELS to raise the bound)"
        )));
    }
    Ok(())
}

/// Checks a batch of `samples` images of shape (C, H, W) ([`check_shape`], then samples ≥ 1 and
/// samples·C·H·W ≤ [`MAX_BATCH_IMAGES`] · [`max_pixels`]), e.g. for `--samples N`.
pub fn check_batch(samples: usize, shape: [usize; 3]) -> Result<()> {
    check_shape(shape)?;
    let [c, h, w] = shape;
    let bound = MAX_BATCH_IMAGES.saturating_mul(max_pixels());
    if samples == 0 {
        return Err(Error::config("the number of samples must be ≥ 1"));
    }
    if samples.checked_mul(c * h * w).is_none_or(|n| n > bound) {
        return Err(Error::config(format!(
            "{samples} samples of {c}×{h}×{w} exceed the batch bound of {bound} values \
             ({MAX_BATCH_IMAGES} × max_pixels; set DAPS_MAX_PIXELS to raise it)"
        )));
    }
    Ok(())
}

/// Checks a measurement shape against [`MAX_OUTPUT_FACTOR`] × the image's C·H·W.
fn check_output(name: &str, shape: [usize; 3], out: &[usize]) -> Result<()> {
    let [c, h, w] = shape;
    let bound = MAX_OUTPUT_FACTOR * c * h * w;
    let n = out.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n.is_none_or(|n| n > bound) {
        return Err(unfit(
            name,
            shape,
            format!("the measurement {out:?} would exceed {MAX_OUTPUT_FACTOR}× the image's values"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The registry

/// Every task, in table order.
pub static TASKS: [&TaskDef; 12] = [
    &resize::SR4,
    &resize::SR4_POOL,
    &inpaint::BOX,
    &inpaint::RANDOM,
    &inpaint::MASK,
    &blur::GAUSSIAN,
    &blur::MOTION,
    &nonlinear::PHASE_RETRIEVAL,
    &nonlinear::HDR,
    &nonlinear::NONLINEAR_BLUR,
    &mri::MRI_4X,
    &mri::MRI_8X,
];

/// One task: everything that differs from one task to another.
pub struct TaskDef {
    pub name: &'static str,
    /// The task's name in the official DAPS configs ("–" when it has none).
    pub official: &'static str,
    pub summary: &'static str,
    pub linear: bool,
    /// The image channels the task needs, when it fixes them (2 for complex images).
    pub channels: Option<usize>,
    /// Whether `daps demo` runs it (it fits the 32×32 digits).
    pub demo: bool,
    /// Its parameters, in the order of the measurement file's `operator` JSON.
    pub params: &'static [Param],
    /// The file flag it reads, if any, and the parameter that records the path.
    pub file: Option<FileParam>,
    /// The tensors it is built from, stored in its measurement files.
    pub stores: &'static [Stored],
    /// Generates the stored tensors for an H×W image (may update parameters, e.g. the kernel
    /// size of a kernel file).
    pub generate: fn(&mut TaskSpec, usize, usize) -> Result<TaskTensors>,
    /// Builds the operator for images (C, H, W) from the parameters and the stored tensors
    /// (present, as CPU f32), checking that they fit.
    pub operator: fn(&TaskSpec, [usize; 3], &TaskTensors) -> Result<Box<dyn Operator>>,
    /// The measurement shape (without the batch dimension) for images (C, H, W), computed
    /// cheaply from the parameters, before any operator is built (checking the parameters it
    /// depends on); [`Task::assemble`] checks that the operator agrees.
    pub output: fn(&TaskSpec, [usize; 3]) -> Result<Vec<usize>>,
    /// Its preset file (`presets/<task>.toml`).
    pub preset: &'static str,
    /// How a measurement is shown as an image.
    pub preview: Preview,
}

/// The registry entry type under its former name.
pub type TaskInfo = TaskDef;

/// One parameter of a task.
#[derive(Debug)]
pub struct Param {
    pub key: &'static str,
    pub kind: Kind,
    pub default: DefaultValue,
}

/// The type of a parameter's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A non-negative integer (`usize` / `u64`).
    Uint,
    /// A seed of numpy's 32-bit generator.
    U32,
    Float,
    /// A file path, required.
    Path,
    /// A file path, optional (absent from the `operator` JSON when unset).
    OptionalPath,
}

/// A parameter's default for an H×W image.
#[derive(Debug)]
pub enum DefaultValue {
    Uint(u64),
    Float(f64),
    /// Computed from (H, W).
    Sized(fn(usize, usize) -> Value),
    /// The path given with the task's file flag ([`TaskDef::file`]).
    File,
}

/// A parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Uint(u64),
    Float(f64),
    Path(String),
}

/// The file flags a task may read (the fields of [`TaskFiles`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFlag {
    Mask,
    Kernel,
    Maps,
    Weights,
}

/// A task's file flag: which parameter records the path, and the error when a required one is
/// missing.
#[derive(Debug, Clone, Copy)]
pub struct FileParam {
    pub flag: FileFlag,
    pub key: &'static str,
    pub missing: &'static str,
}

/// A tensor of a measurement file besides `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Mask,
    Kernel,
    Maps,
}

/// How a measurement y is shown as a [0, 1] image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preview {
    /// y itself ([−1, 1] → [0, 1]).
    Identity,
    /// Nearest upsampling to the image size (SR).
    Upsample,
    /// ln(|y| + 10⁻³) scaled to [0, 1] per image and channel (Fourier magnitudes).
    LogMagnitude,
    /// The zero-filled coil-combined magnitude |Aᴴy| (MRI).
    ZeroFilled,
}

impl FileFlag {
    pub const ALL: [FileFlag; 4] = [Self::Mask, Self::Kernel, Self::Maps, Self::Weights];

    /// The command-line flag.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Mask => "--mask",
            Self::Kernel => "--kernel",
            Self::Maps => "--maps",
            Self::Weights => "--blur-weights",
        }
    }

    fn get(self, files: &TaskFiles) -> Option<&PathBuf> {
        match self {
            Self::Mask => files.mask.as_ref(),
            Self::Kernel => files.kernel.as_ref(),
            Self::Maps => files.maps.as_ref(),
            Self::Weights => files.weights.as_ref(),
        }
    }

    /// "FLAG only applies to TASKS, not NAME".
    fn misplaced(self, name: &str) -> String {
        let users: Vec<&str> = TASKS
            .iter()
            .filter(|t| t.file.is_some_and(|f| f.flag == self))
            .map(|t| t.name)
            .collect();
        format!(
            "{} only applies to {}, not {name}",
            self.flag(),
            users.join(" or ")
        )
    }
}

impl Stored {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mask => "mask",
            Self::Kernel => "kernel",
            Self::Maps => "maps",
        }
    }

    fn get(self, t: &TaskTensors) -> Option<&Tensor> {
        match self {
            Self::Mask => t.mask.as_ref(),
            Self::Kernel => t.kernel.as_ref(),
            Self::Maps => t.maps.as_ref(),
        }
    }

    fn slot(self, t: &mut TaskTensors) -> &mut Option<Tensor> {
        match self {
            Self::Mask => &mut t.mask,
            Self::Kernel => &mut t.kernel,
            Self::Maps => &mut t.maps,
        }
    }
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::Uint(v) => Some(*v),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Float(v) => Some(*v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Path(v) => Some(v),
            _ => None,
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Self::Uint(v) => (*v).into(),
            Self::Float(v) => (*v).into(),
            Self::Path(v) => v.clone().into(),
        }
    }

    /// Reads a JSON value as `kind` (`Ok(None)`: an unset optional path).
    fn from_json(kind: Kind, v: &serde_json::Value) -> std::result::Result<Option<Self>, String> {
        let bad = |what: &str| Err(format!("invalid value {v}, expected {what}"));
        match kind {
            Kind::Uint => v
                .as_u64()
                .map(|v| Some(Self::Uint(v)))
                .map_or_else(|| bad("a non-negative integer"), Ok),
            Kind::U32 => match v.as_u64() {
                Some(n) if n <= u32::MAX as u64 => Ok(Some(Self::Uint(n))),
                _ => bad("an integer in 0..2³²"),
            },
            Kind::Float => v
                .as_f64()
                .map_or_else(|| bad("a number"), |f| Ok(Some(Self::Float(f)))),
            Kind::Path | Kind::OptionalPath => match v {
                serde_json::Value::String(s) => Ok(Some(Self::Path(s.clone()))),
                serde_json::Value::Null if kind == Kind::OptionalPath => Ok(None),
                _ => bad("a path"),
            },
        }
    }
}

fn task_names() -> String {
    TASKS.map(|t| t.name).join(", ")
}

/// The registry entry for `name`, or an error listing the valid names.
pub fn info(name: &str) -> Result<&'static TaskDef> {
    TASKS
        .iter()
        .copied()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::config(format!("unknown task '{name}' (valid: {})", task_names())))
}

/// The tasks `daps demo` runs (those that fit 32×32 digits), in table order.
pub fn demo_tasks() -> impl Iterator<Item = &'static str> {
    TASKS.iter().filter(|t| t.demo).map(|t| t.name)
}

// ---------------------------------------------------------------------------------------------
// Task specs: a task with its parameter values

/// A task with its operator parameters (the `operator` metadata of a measurement file, as JSON
/// `{"task": NAME, PARAM: VALUE, …}`).
#[derive(Clone)]
pub struct TaskSpec {
    def: &'static TaskDef,
    /// One per `def.params`; `None` only for an unset optional path.
    values: Vec<Option<Value>>,
}

impl std::fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}",
            serde_json::to_string(self).map_err(|_| std::fmt::Error)?
        )
    }
}

impl PartialEq for TaskSpec {
    fn eq(&self, other: &Self) -> bool {
        self.def.name == other.def.name && self.values == other.values
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

impl TaskSpec {
    /// The default parameters of task `name` for an H×W image.
    pub fn defaults(name: &str, h: usize, w: usize, files: &TaskFiles) -> Result<Self> {
        let def = info(name)?;
        for flag in FileFlag::ALL {
            if flag.get(files).is_some() && def.file.is_none_or(|f| f.flag != flag) {
                return Err(Error::config(flag.misplaced(name)));
            }
        }
        let path = def
            .file
            .and_then(|f| f.flag.get(files))
            .map(|p| p.display().to_string());
        let values = def
            .params
            .iter()
            .map(|p| {
                Ok(match &p.default {
                    DefaultValue::Uint(v) => Some(Value::Uint(*v)),
                    DefaultValue::Float(v) => Some(Value::Float(*v)),
                    DefaultValue::Sized(f) => Some(f(h, w)),
                    DefaultValue::File => match (&path, p.kind) {
                        (Some(s), _) => Some(Value::Path(s.clone())),
                        (None, Kind::OptionalPath) => None,
                        (None, _) => {
                            let missing = def.file.map_or("", |f| f.missing);
                            return Err(Error::config(missing));
                        }
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { def, values })
    }

    /// The registry entry of the task.
    pub fn def(&self) -> &'static TaskDef {
        self.def
    }

    /// The measurement shape (without the batch dimension) for images (C, H, W), after checking
    /// the image against the bounds ([`check_shape`]), the task's channels, and the measurement
    /// against [`MAX_OUTPUT_FACTOR`]. Cheap: nothing is built.
    pub fn output_shape(&self, shape: [usize; 3]) -> Result<Vec<usize>> {
        let [c, _, _] = shape;
        let name = self.name();
        check_shape(shape).map_err(|e| match e {
            Error::Config(m) => Error::config(format!("{name}: {m}")),
            e => e,
        })?;
        if let Some(need_c) = self.channels() {
            if c != need_c {
                return Err(unfit(
                    name,
                    shape,
                    format!(
                        "takes complex images stored as {need_c} channels (real, imaginary), got {c}"
                    ),
                ));
            }
        }
        let out = (self.def.output)(self, shape)?;
        check_output(name, shape, &out)?;
        Ok(out)
    }

    pub fn name(&self) -> &'static str {
        self.def.name
    }

    /// Whether the task takes complex images (`[2, H, W]`: real, imaginary), as MRI does.
    pub fn is_complex(&self) -> bool {
        self.def.channels == Some(2)
    }

    /// The number of image channels the task needs, when it fixes one (2 for MRI).
    pub fn channels(&self) -> Option<usize> {
        self.def.channels
    }

    pub fn is_linear(&self) -> bool {
        self.def.linear
    }

    fn index(&self, key: &str) -> Option<usize> {
        self.def.params.iter().position(|p| p.key == key)
    }

    /// The value of parameter `key` (`None`: no such parameter, or an unset optional path).
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.index(key).and_then(|i| self.values[i].as_ref())
    }

    /// Parameter `key` of a task definition's own parameters (panics on a misspelt key).
    ///
    /// Invariant for it and [`Self::uint`], [`Self::float`], [`Self::path`], [`Self::put`]: they
    /// are only called by the task definitions with their own keys, and every value was read
    /// with its parameter's [`Kind`] (`from_json`, `set`, `defaults`), so a file cannot reach
    /// the panics.
    fn expect(&self, key: &str) -> Option<&Value> {
        let i = self
            .index(key)
            .unwrap_or_else(|| panic!("task {} has no parameter {key}", self.name()));
        self.values[i].as_ref()
    }

    pub(crate) fn uint(&self, key: &str) -> u64 {
        self.expect(key)
            .and_then(Value::as_u64)
            .expect("an integer")
    }

    pub(crate) fn float(&self, key: &str) -> f64 {
        self.expect(key).and_then(Value::as_f64).expect("a number")
    }

    pub(crate) fn path(&self, key: &str) -> Option<&str> {
        self.expect(key).and_then(Value::as_str)
    }

    pub(crate) fn put(&mut self, key: &str, v: Value) {
        let i = self.index(key).expect("a parameter of the task");
        self.values[i] = Some(v);
    }

    /// The parameters as `key=value` pairs (without the task name), sorted by key.
    pub fn params(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .def
            .params
            .iter()
            .zip(&self.values)
            .filter_map(|(p, v)| {
                v.as_ref().map(|v| {
                    let s = match v {
                        Value::Path(s) => s.clone(),
                        v => v.json().to_string(),
                    };
                    (p.key.to_string(), s)
                })
            })
            .collect();
        out.sort();
        out
    }

    /// Overrides one parameter (`value` is read as JSON, or else as a string).
    pub fn set(&self, key: &str, value: &str) -> Result<Self> {
        let Some(i) = self.index(key) else {
            let valid: Vec<&str> = self.def.params.iter().map(|p| p.key).collect();
            return Err(Error::config(format!(
                "task {} has no parameter '{key}' (parameters: {})",
                self.name(),
                valid.join(", ")
            )));
        };
        let parsed = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        let v = Value::from_json(self.def.params[i].kind, &parsed).map_err(|e| {
            Error::config(format!(
                "task {}: bad value '{value}' for {key}: {e}",
                self.name()
            ))
        })?;
        let mut out = self.clone();
        out.values[i] = v;
        Ok(out)
    }

    /// Reads the `operator` JSON object.
    fn from_json(v: &serde_json::Value) -> std::result::Result<Self, String> {
        let obj = v.as_object().ok_or("expected a JSON object")?;
        let name = obj
            .get("task")
            .and_then(|t| t.as_str())
            .ok_or("missing field `task`")?;
        let def = info(name).map_err(|e| e.to_string())?;
        if let Some(k) = obj
            .keys()
            .find(|k| *k != "task" && !def.params.iter().any(|p| p.key == *k))
        {
            return Err(format!("unknown field `{k}` for task {name}"));
        }
        let values = def
            .params
            .iter()
            .map(|p| match obj.get(p.key) {
                Some(v) => Value::from_json(p.kind, v).map_err(|e| format!("{}: {e}", p.key)),
                None if p.kind == Kind::OptionalPath => Ok(None),
                None => Err(format!("missing field `{}`", p.key)),
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self { def, values })
    }
}

impl Serialize for TaskSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("task", self.def.name)?;
        for (p, v) in self.def.params.iter().zip(&self.values) {
            match v {
                Some(Value::Uint(v)) => m.serialize_entry(p.key, v)?,
                Some(Value::Float(v)) => m.serialize_entry(p.key, v)?,
                Some(Value::Path(v)) => m.serialize_entry(p.key, v)?,
                None => {}
            }
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for TaskSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Self::from_json(&v).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Built tasks

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
    tensors: TaskTensors,
    op: Box<dyn Operator>,
    out_shape: Vec<usize>,
}

pub(crate) fn cpu_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
}

pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

/// "invalid configuration: NAME on H×W: E", for errors generating a task's tensors.
pub(crate) fn on_size(name: &str, h: usize, w: usize) -> impl Fn(Error) -> Error + '_ {
    move |e| Error::config(format!("{name} on {h}×{w}: {e}"))
}

/// "invalid configuration: NAME on C×H×W: MSG", for a task that does not fit its image.
pub(crate) fn unfit(name: &str, [c, h, w]: [usize; 3], msg: impl std::fmt::Display) -> Error {
    Error::config(format!("{name} on {c}×{h}×{w}: {msg}"))
}

/// [`unfit`] for an operator constructor's own configuration errors (others pass unchanged).
pub(crate) fn unfit_config(name: &str, shape: [usize; 3]) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::Config(m) => unfit(name, shape, m),
        e => e,
    }
}

/// [`TaskDef::output`] of a task whose measurement has the image's shape.
pub(crate) fn same_shape(_: &TaskSpec, [c, h, w]: [usize; 3]) -> Result<Vec<usize>> {
    Ok(vec![c, h, w])
}

/// [`TaskDef::generate`] of a task without stored tensors.
pub(crate) fn no_tensors(_: &mut TaskSpec, _: usize, _: usize) -> Result<TaskTensors> {
    Ok(TaskTensors::default())
}

impl Task {
    /// Builds the task, generating its mask or kernel (or reading it from the spec's file).
    pub fn build(spec: TaskSpec, shape: [usize; 3]) -> Result<Self> {
        let [_, h, w] = shape;
        // Bounds first: nothing is generated for an image or a measurement out of bounds.
        spec.output_shape(shape)?;
        let mut spec = spec;
        let tensors = (spec.def.generate)(&mut spec, h, w)?;
        Self::assemble(spec, shape, tensors)
    }

    /// Builds the operator from the spec and the given mask/kernel/maps tensors, checking that
    /// they fit the task and the image size (shapes, values, finiteness).
    pub fn assemble(spec: TaskSpec, shape: [usize; 3], tensors: TaskTensors) -> Result<Self> {
        let [c, h, w] = shape;
        let name = spec.name();
        let expected = spec.output_shape(shape)?;
        let mut kept = TaskTensors::default();
        for s in spec.def.stores {
            let t = s
                .get(&tensors)
                .ok_or_else(|| Error::config(format!("task {name} needs a {} tensor", s.name())))?;
            *s.slot(&mut kept) = Some(cpu_f32(t)?);
        }
        let op = (spec.def.operator)(&spec, shape, &kept)?;
        let probe = Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu)?;
        let out_shape = op.forward(&probe)?.dims()[1..].to_vec();
        if out_shape != expected {
            return Err(Error::msg(format!(
                "{name} on {c}×{h}×{w}: the operator gives {out_shape:?}, the task's declared \
                 output shape is {expected:?} (a bug in the task definition)"
            )));
        }
        Ok(Self {
            spec,
            shape,
            tensors: kept,
            op,
            out_shape,
        })
    }

    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }
    /// The registry entry of the task.
    pub fn def(&self) -> &'static TaskDef {
        self.spec.def
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
        self.tensors.mask.as_ref()
    }
    /// The coil sensitivity maps `[C, H, W, 2]`, for MRI.
    pub fn maps(&self) -> Option<&Tensor> {
        self.tensors.maps.as_ref()
    }
    /// Whether the task takes complex images `[2, H, W]` (MRI).
    pub fn is_complex(&self) -> bool {
        self.spec.is_complex()
    }
    /// `[k, k]`, for the blur tasks.
    pub fn kernel(&self) -> Option<&Tensor> {
        self.tensors.kernel.as_ref()
    }
    pub fn is_linear(&self) -> bool {
        self.spec.is_linear()
    }

    /// Whether `other` is the same operator: same task, parameters and image shape, and the same
    /// stored mask, kernel and coil maps value for value. Measurements of the same operator can be
    /// solved as one batch (`daps solve --measurement DIR`).
    pub fn same_operator(&self, other: &Task) -> Result<bool> {
        if self.spec != other.spec || self.shape != other.shape {
            return Ok(false);
        }
        let same = |a: Option<&Tensor>, b: Option<&Tensor>| -> Result<bool> {
            Ok(match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a.dims() == b.dims()
                        && a.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?
                            == b.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?
                }
                _ => false,
            })
        };
        Ok(same(self.mask(), other.mask())?
            && same(self.kernel(), other.kernel())?
            && same(self.maps(), other.maps())?)
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

    /// A viewable [0, 1] image `[N, C', H', W']` of measurements `y` `[N, ...]` (see
    /// [`Preview`]): SR upsampled (nearest) to the image size, Fourier magnitudes as
    /// ln(|y| + 10⁻³) scaled per image and channel, MRI as the zero-filled |Aᴴy|, others y itself.
    pub fn preview(&self, y: &Tensor) -> Result<Tensor> {
        use crate::metric::image::{to_unit, IMAGE_RANGE};
        let [c, h, w] = self.shape;
        match self.def().preview {
            Preview::Identity => to_unit(y, IMAGE_RANGE),
            Preview::Upsample => to_unit(&y.upsample_nearest2d(h, w)?, IMAGE_RANGE),
            Preview::LogMagnitude => crate::io::log_magnitude_view(y),
            Preview::ZeroFilled => {
                let probe = Tensor::zeros((y.dim(0)?, c, h, w), DType::F32, &Device::Cpu)?;
                crate::io::display(&self.vjp(&probe, y)?, true, IMAGE_RANGE)
            }
        }
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
    fn residual_vjp(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.op.residual_vjp(x, y)
    }
    fn forward_portable(&self, x: &Tensor) -> Result<Tensor> {
        self.op.forward_portable(x)
    }
    fn vjp_portable(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.op.vjp_portable(x, v)
    }
    fn name(&self) -> String {
        self.describe()
    }
    fn as_linear(&self) -> Option<&dyn Linear> {
        self.op.as_linear()
    }
}

#[cfg(test)]
mod tests;
