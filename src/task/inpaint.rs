//! Inpainting tasks: a {0, 1} mask `[1, 1, H, W]`, stored in the measurement file.

use super::{
    on_size, same_shape, unfit, DefaultValue, FileFlag, FileParam, Kind, Param, Preview, Stored,
};
use super::{TaskDef, TaskSpec, TaskTensors};
use crate::error::Result;
use crate::operator::inpaint::{box_mask, random_mask, Inpaint};
use crate::operator::Operator;
use candle_core::{Device, Tensor};

const SEED: Param = Param {
    key: "seed",
    kind: Kind::Uint,
    default: DefaultValue::Uint(42),
};

pub static BOX: TaskDef = TaskDef {
    name: "inpaint-box",
    official: "inpainting",
    summary: "box inpainting, one 128×128 hole (scaled) at a seeded position",
    linear: true,
    channels: None,
    demo: true,
    params: &[SEED],
    file: None,
    stores: &[Stored::Mask],
    generate: |spec, h, w| mask(box_mask(h, w, spec.uint("seed")), spec, h, w),
    operator: inpaint,
    output: same_shape,
    preset: include_str!("../../presets/inpaint-box.toml"),
    preview: Preview::Identity,
};

pub static RANDOM: TaskDef = TaskDef {
    name: "inpaint-random",
    official: "inpainting_rand",
    summary: "random inpainting, 70% of pixels dropped",
    linear: true,
    channels: None,
    demo: true,
    params: &[
        Param {
            key: "drop",
            kind: Kind::Float,
            default: DefaultValue::Float(0.7),
        },
        SEED,
    ],
    file: None,
    stores: &[Stored::Mask],
    generate: |spec, h, w| {
        let m = random_mask(h, w, spec.float("drop"), spec.uint("seed"));
        mask(m, spec, h, w)
    },
    operator: inpaint,
    output: same_shape,
    preset: include_str!("../../presets/inpaint-random.toml"),
    preview: Preview::Identity,
};

pub static MASK: TaskDef = TaskDef {
    name: "inpaint-mask",
    official: "–",
    summary: "inpainting with a user mask PNG (nonzero = observed)",
    linear: true,
    channels: None,
    demo: false,
    params: &[Param {
        key: "file",
        kind: Kind::Path,
        default: DefaultValue::File,
    }],
    file: Some(FileParam {
        flag: FileFlag::Mask,
        key: "file",
        missing: "task inpaint-mask needs a mask image: --mask FILE.png",
    }),
    stores: &[Stored::Mask],
    generate: |spec, h, w| {
        let file = spec.path("file").unwrap_or_default();
        Ok(TaskTensors {
            mask: Some(Inpaint::from_png(file, h, w, &Device::Cpu)?.mask),
            ..TaskTensors::default()
        })
    },
    operator: inpaint,
    output: same_shape,
    preset: include_str!("../../presets/inpaint-mask.toml"),
    preview: Preview::Identity,
};

/// A generated mask as `[1, 1, H, W]`.
fn mask(m: Result<Vec<f32>>, spec: &TaskSpec, h: usize, w: usize) -> Result<TaskTensors> {
    let m = m.map_err(on_size(spec.name(), h, w))?;
    Ok(TaskTensors {
        mask: Some(Tensor::from_vec(m, (1, 1, h, w), &Device::Cpu)?),
        ..TaskTensors::default()
    })
}

fn inpaint(spec: &TaskSpec, shape: [usize; 3], t: &TaskTensors) -> Result<Box<dyn Operator>> {
    let [_, h, w] = shape;
    let name = spec.name();
    // Invariant: `Task::assemble` checked that the tensors of `stores` are present.
    let m = t.mask.clone().expect("a stored mask");
    crate::error::expect_shape(&format!("{name} mask"), m.dims(), &[1, 1, h, w])?;
    let v = m.flatten_all()?.to_vec1::<f32>()?;
    if v.iter().any(|x| !(*x == 0.0 || *x == 1.0)) {
        return Err(unfit(name, shape, "mask values must be 0 or 1"));
    }
    Ok(Box::new(Inpaint::new(m)?))
}
