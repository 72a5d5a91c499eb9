//! Multi-coil CS-MRI tasks: complex images `[2, H, W]`, a k-space column mask `[H, W]` and
//! coil maps `[C, H, W, 2]`, both stored in the measurement file.

use super::{
    all_finite, cpu_f32, on_size, unfit, DefaultValue, FileFlag, FileParam, Kind, MAX_COILS,
};
use super::{Param, Preview, Stored, TaskDef, TaskSpec, TaskTensors, Value};
use crate::error::Result;
use crate::operator::mri::{
    birdcage_maps, cartesian_mask, default_center_fraction, read_maps, Mri,
};
use crate::operator::Operator;

/// acceleration R, centre fraction 0.32/R, 8 birdcage coils (or `--maps`), mask seed 42.
macro_rules! mri_params {
    ($r:expr) => {
        &[
            // Undersampling factor R: round(W/R) of the W k-space columns are sampled.
            Param {
                key: "acceleration",
                kind: Kind::Float,
                default: DefaultValue::Float($r),
            },
            // Fraction of fully sampled centre columns (fastMRI: 0.32/R).
            Param {
                key: "center_fraction",
                kind: Kind::Float,
                default: DefaultValue::Sized(|_, _| Value::Float(default_center_fraction($r))),
            },
            // Number of simulated birdcage coils (the maps file's C when `maps` is given).
            Param {
                key: "coils",
                kind: Kind::Uint,
                default: DefaultValue::Uint(8),
            },
            // Seed of the random columns of the mask.
            Param {
                key: "seed",
                kind: Kind::Uint,
                default: DefaultValue::Uint(42),
            },
            // Coil maps file (safetensors with `maps` [C, H, W, 2]) instead of birdcage maps.
            Param {
                key: "maps",
                kind: Kind::OptionalPath,
                default: DefaultValue::File,
            },
        ]
    };
}

const MAPS_FILE: Option<FileParam> = Some(FileParam {
    flag: FileFlag::Maps,
    key: "maps",
    missing: "",
});

pub static MRI_4X: TaskDef = TaskDef {
    name: "mri-4x",
    official: "– (multi-coil MRI, CVPR Table 2)",
    summary: "multi-coil CS-MRI ×4 (complex image; column mask, 8% centre; birdcage maps)",
    linear: true,
    channels: Some(2),
    demo: false,
    params: mri_params!(4.0),
    file: MAPS_FILE,
    stores: &[Stored::Mask, Stored::Maps],
    generate,
    operator,
    output,
    preset: include_str!("../../presets/mri-4x.toml"),
    preview: Preview::ZeroFilled,
};

pub static MRI_8X: TaskDef = TaskDef {
    name: "mri-8x",
    official: "– (multi-coil MRI, CVPR Table 2)",
    summary: "multi-coil CS-MRI ×8 (complex image; column mask, 4% centre; birdcage maps)",
    linear: true,
    channels: Some(2),
    demo: false,
    params: mri_params!(8.0),
    file: MAPS_FILE,
    stores: &[Stored::Mask, Stored::Maps],
    generate,
    operator,
    output,
    preset: include_str!("../../presets/mri-8x.toml"),
    preview: Preview::ZeroFilled,
};

fn generate(spec: &mut TaskSpec, h: usize, w: usize) -> Result<TaskTensors> {
    let ctx = on_size(spec.name(), h, w);
    let m = match spec.path("maps") {
        Some(f) => read_maps(f)?,
        None => birdcage_maps(spec.uint("coils") as usize, h, w).map_err(&ctx)?,
    };
    let (acceleration, center_fraction) =
        (spec.float("acceleration"), spec.float("center_fraction"));
    let mask =
        cartesian_mask(h, w, acceleration, center_fraction, spec.uint("seed")).map_err(&ctx)?;
    spec.put("coils", Value::Uint(m.dim(0)? as u64));
    Ok(TaskTensors {
        // Stored as f32 in the measurement file: build from the same values.
        maps: Some(cpu_f32(&m)?),
        mask: Some(mask),
        kernel: None,
    })
}

/// [coils, H, W, 2].
fn output(spec: &TaskSpec, shape: [usize; 3]) -> Result<Vec<usize>> {
    let [_, h, w] = shape;
    let coils = spec.uint("coils");
    if coils == 0 || coils > MAX_COILS as u64 {
        return Err(unfit(
            spec.name(),
            shape,
            format!("coils must be in 1..={MAX_COILS}, got {coils}"),
        ));
    }
    Ok(vec![coils as usize, h, w, 2])
}

fn operator(spec: &TaskSpec, shape: [usize; 3], t: &TaskTensors) -> Result<Box<dyn Operator>> {
    let [_, h, w] = shape;
    let name = spec.name();
    let bad = |m: String| Err(unfit(name, shape, m));
    let (acceleration, center_fraction) =
        (spec.float("acceleration"), spec.float("center_fraction"));
    if !(acceleration.is_finite() && acceleration >= 1.0) {
        return bad(format!(
            "acceleration must be finite and ≥ 1, got {acceleration}"
        ));
    }
    if !(0.0..=1.0).contains(&center_fraction) {
        return bad(format!(
            "center_fraction must be in [0, 1], got {center_fraction}"
        ));
    }
    // Invariant: `Task::assemble` checked that the tensors of `stores` are present.
    let m = t.mask.as_ref().expect("a stored mask");
    crate::error::expect_shape(&format!("{name} k-space mask"), m.dims(), &[h, w])?;
    let v = m.flatten_all()?.to_vec1::<f32>()?;
    if v.iter().any(|x| !(*x == 0.0 || *x == 1.0)) {
        return bad("k-space mask values must be 0 or 1".into());
    }
    if !v.contains(&1.0) {
        return bad("k-space mask samples nothing".into());
    }
    // Invariant: `Task::assemble` checked that the tensors of `stores` are present.
    let s = t.maps.as_ref().expect("stored maps");
    let coils = spec.uint("coils") as usize;
    crate::error::expect_shape(&format!("{name} coil maps"), s.dims(), &[coils, h, w, 2])?;
    if !all_finite(s)? {
        return bad("coil maps have NaN or Inf entries".into());
    }
    Ok(Box::new(Mri::new(s, m)?))
}
