//! The measurement file: one safetensors file holding `y` `[1, ...]`, the tensors the task
//! stores ([`super::TaskDef::stores`]: `mask`, `kernel`, `maps`), and metadata `format`,
//! `version`, `task`, `operator` (JSON of the [`TaskSpec`], e.g. `{"task":"sr4","factor":4}`),
//! `shape` (JSON [C, H, W]), `sigma_y`, `seed`, `description`.
//!
//! Reading one trusts nothing in it: the safetensors header is checked against the file size
//! ([`crate::io::read_safetensors`]), the image shape against the bounds of [`super`]
//! ([`super::check_shape`]), and `y`'s shape against the shape the task gives
//! ([`TaskSpec::output_shape`]) before any operator is built; every failure is an error.
//! Legal but suspicious contents (tensors not stored as f32, an all-zero inpainting mask,
//! σ_y > 1) load with [`MeasurementFile::warnings`] for the caller to show.

use super::Value;
use super::{all_finite, cpu_f32, info, FileFlag, Stored, Task, TaskFiles, TaskSpec, TaskTensors};
use crate::error::{Error, Result};
use crate::io::{read_safetensors, write_safetensors};
use crate::noise::SeededNoise;
use crate::operator::{Measurement, Operator};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// `format` metadata of a measurement file.
pub const FORMAT: &str = "daps-measurement";
/// `version` metadata of a measurement file.
pub const FORMAT_VERSION: u32 = 1;

/// A simulated measurement with its task (see the module docs for the file).
pub struct MeasurementFile {
    pub task: Task,
    /// `[1, ...]`, the task's output shape.
    pub y: Tensor,
    pub sigma_y: f64,
    /// Seed of the measurement noise.
    pub seed: u64,
    /// Legal but suspicious things [`MeasurementFile::load`] found, one sentence each, for the
    /// caller to show: tensors stored in another dtype than f32 (converted), an inpainting mask
    /// that observes nothing, σ_y > 1. Empty for simulated measurements.
    pub warnings: Vec<String>,
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
            warnings: Vec::new(),
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
            // Invariant: a spec serialises to a JSON map of strings and numbers.
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
        for (s, t) in [
            (Stored::Mask, t.mask()),
            (Stored::Kernel, t.kernel()),
            (Stored::Maps, t.maps()),
        ] {
            if let Some(t) = t {
                tensors.push((s.name(), t.clone()));
            }
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
        // Only the weights path can be replaced: the other files' contents are stored.
        if let Some(p) = &files.weights {
            match spec.def().file {
                Some(f) if f.flag == FileFlag::Weights => {
                    spec.put(f.key, Value::Path(p.display().to_string()))
                }
                _ => return Err(at(FileFlag::Weights.misplaced(task))),
            }
        }
        let shape: [usize; 3] =
            serde_json::from_str(get("shape")?).map_err(|e| at(format!("bad image shape: {e}")))?;
        // The sizes first (image bounds, and y against the shape the task gives), before any
        // operator is built from them.
        let out = spec.output_shape(shape).map_err(|e| at(e.to_string()))?;
        let mut expected = vec![1];
        expected.extend_from_slice(&out);
        if let Some(y) = tensors.get("y") {
            if y.dims() != expected.as_slice() {
                return Err(at(format!(
                    "y has shape {:?}, but {task} on {}×{}×{} gives {expected:?}",
                    y.dims(),
                    shape[0],
                    shape[1],
                    shape[2]
                )));
            }
        }
        let sigma_y: f64 = get("sigma_y")?
            .parse()
            .map_err(|_| at("unreadable sigma_y".into()))?;
        if !(sigma_y.is_finite() && sigma_y >= 0.0) {
            return Err(at(format!("sigma_y must be finite and ≥ 0, got {sigma_y}")));
        }
        let mut warnings = Vec::new();
        if sigma_y > 1.0 {
            warnings.push(format!(
                "sigma_y = {sigma_y} is larger than 1 (images span [-1, 1]): the noise may \
                 swamp the measurement"
            ));
        }
        let seed: u64 = get("seed")?
            .parse()
            .map_err(|_| at("unreadable seed".into()))?;
        let y = tensors
            .remove("y")
            .ok_or_else(|| at("missing tensor 'y'".into()))?;
        let converted = |name: &str, t: &Tensor, warnings: &mut Vec<String>| {
            if t.dtype() != DType::F32 {
                warnings.push(format!(
                    "tensor '{name}' is stored as {:?}, converted to f32",
                    t.dtype()
                ));
            }
        };
        converted("y", &y, &mut warnings);
        let mut stored = TaskTensors::default();
        for s in spec.def().stores {
            let t = tensors.remove(s.name()).ok_or_else(|| {
                at(format!(
                    "missing tensor '{}' (task {task} needs it)",
                    s.name()
                ))
            })?;
            converted(s.name(), &t, &mut warnings);
            *s.slot(&mut stored) = Some(t);
        }
        let task = Task::assemble(spec, shape, stored).map_err(|e| at(e.to_string()))?;
        // Invariant: `output_shape` above and `assemble` agree (assemble checks its operator).
        debug_assert_eq!(task.output_shape(), &expected[1..]);
        let y = cpu_f32(&y)?;
        if !all_finite(&y)? {
            return Err(at("y contains NaN or Inf".into()));
        }
        if let Some(m) = task.mask().filter(|_| !task.is_complex()) {
            if m.flatten_all()?.max(0)?.to_scalar::<f32>()? == 0.0 {
                warnings.push(format!(
                    "the {} mask is all zeros: the measurement observes nothing",
                    task.name()
                ));
            }
        }
        Ok(Self {
            task,
            y,
            sigma_y,
            seed,
            warnings,
        })
    }
}
