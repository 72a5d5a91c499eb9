//! Linear blur tasks: a `[k, k]` kernel, stored in the measurement file, reflect padding.

use super::{
    all_finite, on_size, same_shape, unfit, DefaultValue, FileFlag, FileParam, Kind, Param,
};
use super::{Preview, Stored, TaskDef, TaskSpec, TaskTensors, Value};
use crate::error::Result;
use crate::operator::blur::Blur;
use crate::operator::Operator;
use candle_core::Device;

/// Blur kernel (size, σ) for an image whose smaller side is `s` (see the module docs).
pub fn blur_size(s: usize) -> (usize, f64) {
    if s >= 128 {
        return (61, 3.0);
    }
    let k = (61.0 * s as f64 / 256.0).round() as usize;
    let k = if k.is_multiple_of(2) { k + 1 } else { k };
    (k.max(3), 3.0 * s as f64 / 256.0)
}

const KERNEL_SIZE: Param = Param {
    key: "kernel_size",
    kind: Kind::Uint,
    default: DefaultValue::Sized(|h, w| Value::Uint(blur_size(h.min(w)).0 as u64)),
};

pub static GAUSSIAN: TaskDef = TaskDef {
    name: "gaussian-blur",
    official: "gaussian_blur",
    summary: "Gaussian blur 61×61, σ 3, reflect padding",
    linear: true,
    channels: None,
    demo: true,
    params: &[
        KERNEL_SIZE,
        Param {
            key: "sigma",
            kind: Kind::Float,
            default: DefaultValue::Sized(|h, w| Value::Float(blur_size(h.min(w)).1)),
        },
    ],
    file: None,
    stores: &[Stored::Kernel],
    generate: |spec, h, w| {
        fits(spec, h, w)?;
        let b = Blur::gaussian(spec.uint("kernel_size") as usize, spec.float("sigma"))
            .map_err(on_size(spec.name(), h, w))?;
        kernel(&b)
    },
    operator: blur,
    output: same_shape,
    preset: include_str!("../../presets/gaussian-blur.toml"),
    preview: Preview::Identity,
};

/// With `file`, the kernel is read from it and `intensity`, `seed` are unused.
pub static MOTION: TaskDef = TaskDef {
    name: "motion-blur",
    official: "motion_blur",
    summary: "motion blur 61×61, intensity 0.5 (seeded kernel or a kernel file)",
    linear: true,
    channels: None,
    demo: true,
    params: &[
        KERNEL_SIZE,
        Param {
            key: "intensity",
            kind: Kind::Float,
            default: DefaultValue::Float(0.5),
        },
        Param {
            key: "seed",
            kind: Kind::Uint,
            default: DefaultValue::Uint(42),
        },
        Param {
            key: "file",
            kind: Kind::OptionalPath,
            default: DefaultValue::File,
        },
    ],
    file: Some(FileParam {
        flag: FileFlag::Kernel,
        key: "file",
        missing: "",
    }),
    stores: &[Stored::Kernel],
    generate: |spec, h, w| {
        let b = match spec.path("file") {
            Some(f) if f.ends_with(".safetensors") => Blur::from_safetensors(f)?,
            Some(f) => Blur::from_png(f)?,
            None => Blur::motion(
                fits(spec, h, w)?,
                spec.float("intensity"),
                spec.uint("seed"),
            )
            .map_err(on_size(spec.name(), h, w))?,
        };
        spec.put("kernel_size", Value::Uint(b.size() as u64));
        kernel(&b)
    },
    operator: blur,
    output: same_shape,
    preset: include_str!("../../presets/motion-blur.toml"),
    preview: Preview::Identity,
};

/// The kernel size, checked against the image before a kernel is generated (so a huge
/// `kernel_size` fails before allocating it).
fn fits(spec: &TaskSpec, h: usize, w: usize) -> Result<usize> {
    let ks = usize::try_from(spec.uint("kernel_size")).unwrap_or(usize::MAX);
    if ks / 2 >= h.min(w) {
        return Err(unfit(
            spec.name(),
            [1, h, w],
            format!(
                "a {ks}×{ks} kernel needs H and W > {} (reflect padding)",
                ks / 2
            ),
        ));
    }
    Ok(ks)
}

fn kernel(b: &Blur) -> Result<TaskTensors> {
    Ok(TaskTensors {
        kernel: Some(b.kernel_tensor(&Device::Cpu)?),
        ..TaskTensors::default()
    })
}

fn blur(spec: &TaskSpec, shape: [usize; 3], t: &TaskTensors) -> Result<Box<dyn Operator>> {
    let [_, h, w] = shape;
    let name = spec.name();
    // Invariant: `Task::assemble` checked that the tensors of `stores` are present.
    let k = t.kernel.as_ref().expect("a stored kernel");
    let ks = spec.uint("kernel_size") as usize;
    crate::error::expect_shape(&format!("{name} kernel"), k.dims(), &[ks, ks])?;
    if !all_finite(k)? {
        return Err(unfit(name, shape, "kernel has NaN or Inf entries"));
    }
    if ks % 2 == 0 {
        return Err(unfit(
            name,
            shape,
            format!("kernel size must be odd, got {ks}"),
        ));
    }
    if ks / 2 >= h.min(w) {
        return Err(unfit(
            name,
            shape,
            format!(
                "a {ks}×{ks} kernel needs H and W > {} (reflect padding)",
                ks / 2
            ),
        ));
    }
    Ok(Box::new(Blur::from_kernel(k)?))
}
