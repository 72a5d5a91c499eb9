//! Nonlinear tasks without stored tensors: phase retrieval, HDR, and the bkse nonlinear blur.

use super::{
    no_tensors, same_shape, unfit, unfit_config, DefaultValue, FileFlag, FileParam, Kind, Param,
};
use super::{Preview, TaskDef};
use crate::operator::fft::PhaseRetrieval;
use crate::operator::nonlinear_blur::NonlinearBlur;
use crate::operator::{Hdr, Operator};
use candle_core::Device;

pub static PHASE_RETRIEVAL: TaskDef = TaskDef {
    name: "phase-retrieval",
    official: "phase_retrieval",
    summary: "Fourier phase retrieval, oversampling 2",
    linear: false,
    channels: None,
    demo: true,
    params: &[Param {
        key: "oversample",
        kind: Kind::Float,
        default: DefaultValue::Float(2.0),
    }],
    file: None,
    stores: &[],
    generate: no_tensors,
    operator: |spec, shape, _| {
        let op = PhaseRetrieval::new(spec.float("oversample"))
            .map_err(unfit_config(spec.name(), shape))?;
        Ok(Box::new(op) as Box<dyn Operator>)
    },
    output: |spec, shape| {
        let op = PhaseRetrieval::new(spec.float("oversample"))
            .map_err(unfit_config(spec.name(), shape))?;
        let [c, h, w] = shape;
        let (ph, pw) = op.padding(h, w);
        let side = |n: usize, p: usize| p.checked_mul(2).and_then(|p| p.checked_add(n));
        match (side(h, ph), side(w, pw)) {
            (Some(hp), Some(wp)) => Ok(vec![c, hp, wp]),
            _ => Err(unfit(
                spec.name(),
                shape,
                format!("oversample {} is too large", op.oversample),
            )),
        }
    },
    preset: include_str!("../../presets/phase-retrieval.toml"),
    preview: Preview::LogMagnitude,
};

pub static HDR: TaskDef = TaskDef {
    name: "hdr",
    official: "high_dynamic_range",
    summary: "high dynamic range, clip(2x, −1, 1)",
    linear: false,
    channels: None,
    demo: true,
    params: &[Param {
        key: "scale",
        kind: Kind::Float,
        default: DefaultValue::Float(2.0),
    }],
    file: None,
    stores: &[],
    generate: no_tensors,
    operator: |spec, shape, _| {
        let op = Hdr::new(spec.float("scale")).map_err(unfit_config(spec.name(), shape))?;
        Ok(Box::new(op) as Box<dyn Operator>)
    },
    output: same_shape,
    preset: include_str!("../../presets/hdr.toml"),
    preview: Preview::Identity,
};

/// bkse weights file; the kernel latent is `scale·randn` after numpy `seed(seed)`.
pub static NONLINEAR_BLUR: TaskDef = TaskDef {
    name: "nonlinear-blur",
    official: "nonlinear_blur",
    summary: "nonlinear blur: bkse KernelWizard network (GOPRO_wVAE.pth via --blur-weights), fixed kernel latent",
    linear: false,
    channels: None,
    demo: false,
    params: &[
        Param {
            key: "weights",
            kind: Kind::Path,
            default: DefaultValue::File,
        },
        Param {
            key: "seed",
            kind: Kind::U32,
            default: DefaultValue::Uint(0),
        },
        Param {
            key: "scale",
            kind: Kind::Float,
            default: DefaultValue::Float(1.2),
        },
    ],
    file: Some(FileParam {
        flag: FileFlag::Weights,
        key: "weights",
        missing: "task nonlinear-blur needs the bkse network weights: --blur-weights \
                  GOPRO_wVAE.pth (see `daps tasks`)",
    }),
    stores: &[],
    generate: no_tensors,
    operator: |spec, shape, _| {
        let [c, h, w] = shape;
        let scale = spec.float("scale");
        if !scale.is_finite() {
            return Err(unfit(
                spec.name(),
                shape,
                format!("scale must be finite, got {scale}"),
            ));
        }
        let weights = spec.path("weights").unwrap_or_default();
        let seed = spec.uint("seed") as u32;
        let op = NonlinearBlur::load(weights, &Device::Cpu)?.with_latent(seed, scale);
        op.check_shape(c, h, w)?;
        Ok(Box::new(op) as Box<dyn Operator>)
    },
    output: same_shape,
    preset: include_str!("../../presets/nonlinear-blur.toml"),
    preview: Preview::Identity,
};
