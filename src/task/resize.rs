//! Super-resolution tasks: `sr4` (antialiased bicubic) and `sr4-pool` (average pooling).

use super::{
    no_tensors, unfit, unfit_config, DefaultValue, Kind, Param, Preview, TaskDef, TaskSpec,
};
use crate::error::Result;
use crate::operator::resize::{AvgPool, SuperResolution};
use crate::operator::Operator;
use candle_core::Device;

const FACTOR: &[Param] = &[Param {
    key: "factor",
    kind: Kind::Uint,
    default: DefaultValue::Uint(4),
}];

pub static SR4: TaskDef = TaskDef {
    name: "sr4",
    official: "down_sampling",
    summary: "super-resolution ×4, antialiased bicubic (MATLAB imresize)",
    linear: true,
    channels: None,
    demo: true,
    params: FACTOR,
    file: None,
    stores: &[],
    generate: no_tensors,
    operator: |spec, shape, _| {
        let f = factor(spec, shape)?;
        let [_, h, w] = shape;
        Ok(Box::new(SuperResolution::new(f, h, w, &Device::Cpu)?))
    },
    output: downsampled,
    preset: include_str!("../../presets/sr4.toml"),
    preview: Preview::Upsample,
};

pub static SR4_POOL: TaskDef = TaskDef {
    name: "sr4-pool",
    official: "–",
    summary: "super-resolution ×4, average pooling",
    linear: true,
    channels: None,
    demo: false,
    params: FACTOR,
    file: None,
    stores: &[],
    generate: no_tensors,
    operator: |spec, shape, _| {
        let f = factor(spec, shape)?;
        let op = AvgPool::new(f).map_err(unfit_config(spec.name(), shape))?;
        Ok(Box::new(op) as Box<dyn Operator>)
    },
    output: downsampled,
    preset: include_str!("../../presets/sr4-pool.toml"),
    preview: Preview::Upsample,
};

/// [C, H/factor, W/factor].
fn downsampled(spec: &TaskSpec, shape: [usize; 3]) -> Result<Vec<usize>> {
    let f = factor(spec, shape)?;
    let [c, h, w] = shape;
    Ok(vec![c, h / f, w / f])
}

/// The factor, which must divide H and W.
fn factor(spec: &TaskSpec, shape: [usize; 3]) -> Result<usize> {
    let f = usize::try_from(spec.uint("factor")).unwrap_or(usize::MAX);
    let [_, h, w] = shape;
    if f == 0 || h % f != 0 || w % f != 0 {
        return Err(unfit(
            spec.name(),
            shape,
            format!("H and W must be positive multiples of {f}"),
        ));
    }
    Ok(f)
}
