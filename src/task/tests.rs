use super::*;
use crate::noise::SeededNoise;
use crate::operator::mri::default_center_fraction;
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
    let set = spec.set("scale", "3").unwrap();
    assert_eq!(set.value("scale"), Some(&Value::Float(3.0)));
    assert_eq!(
        serde_json::to_string(&set).unwrap(),
        r#"{"task":"hdr","scale":3.0}"#
    );
    let e = spec.set("scale", "\"x\"").unwrap_err().to_string();
    assert!(e.contains("bad value"), "{e}");
    let sr = TaskSpec::defaults("sr4", 8, 8, &TaskFiles::default()).unwrap();
    let e = sr.set("factor", "2.5").unwrap_err().to_string();
    assert!(e.contains("bad value '2.5' for factor"), "{e}");
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
    use crate::sampler::Method;
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

/// `daps solve`'s per-task default is a preset each demo task has, at most DAPS-1K's budget;
/// other tasks keep DAPS-1K.
#[test]
fn solve_defaults_are_presets_at_the_equal_nfe_budget() {
    for task in demo_tasks() {
        let p = solve_default(task);
        assert!(has_preset(task, p), "{task}: {p}");
        let m = preset_method(task, p).unwrap();
        assert!(m.nfe() <= 1000, "{task}: {p} takes {} NFE", m.nfe());
    }
    assert_eq!(SOLVE_DEFAULTS.len(), demo_tasks().count());
    assert_eq!(solve_default("mri-4x"), DEFAULT_BUDGET);
}

/// Each sampler's own section names that sampler, and a task has the SVD samplers' sections
/// exactly when its operator has an SVD, the linear ones' when it is linear; red-diff everywhere.
#[test]
fn method_presets_match_what_their_samplers_support() {
    for t in TASKS {
        let task = build(t.name, [3, 32, 32]).or_else(|_| build(t.name, [2, 32, 32]));
        let have = budgets(t.name).unwrap();
        for b in METHOD_PRESETS {
            if have.contains(&b) {
                assert_eq!(preset_method(t.name, b).unwrap().name(), b, "{}", t.name);
            }
        }
        let Ok(task) = task else { continue };
        let lin = task.as_linear();
        let svd = lin.and_then(|l| l.svd()).is_some();
        for (b, want) in [
            ("ddrm", svd),
            ("ddnm", svd),
            ("pigdm", lin.is_some()),
            ("diffpir", lin.is_some()),
            ("red-diff", true),
        ] {
            assert_eq!(have.contains(&b), want, "{} {b}", t.name);
        }
    }
    assert_eq!(default_budget("ddrm"), "ddrm");
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
        t8.spec().value("center_fraction"),
        Some(&Value::Float(default_center_fraction(8.0)))
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

#[test]
fn operator_json_keeps_the_file_format() {
    // The `operator` metadata of measurement files: field order and number formats.
    let json = |name: &str, files: &TaskFiles| {
        serde_json::to_string(&TaskSpec::defaults(name, 256, 256, files).unwrap()).unwrap()
    };
    let none = TaskFiles::default();
    assert_eq!(json("sr4", &none), r#"{"task":"sr4","factor":4}"#);
    assert_eq!(
        json("inpaint-random", &none),
        r#"{"task":"inpaint-random","drop":0.7,"seed":42}"#
    );
    assert_eq!(
        json("motion-blur", &none),
        r#"{"task":"motion-blur","kernel_size":61,"intensity":0.5,"seed":42}"#
    );
    let kernel = TaskFiles {
        kernel: Some(PathBuf::from("k.png")),
        ..TaskFiles::default()
    };
    assert_eq!(
        json("motion-blur", &kernel),
        r#"{"task":"motion-blur","kernel_size":61,"intensity":0.5,"seed":42,"file":"k.png"}"#
    );
    assert_eq!(
        json("mri-4x", &none),
        r#"{"task":"mri-4x","acceleration":4.0,"center_fraction":0.08,"coils":8,"seed":42}"#
    );
    let spec: TaskSpec = serde_json::from_str(
        r#"{"task":"mri-8x","acceleration":8,"center_fraction":0.04,"coils":8,"seed":42}"#,
    )
    .unwrap();
    assert_eq!(spec.value("acceleration"), Some(&Value::Float(8.0)));
    assert_eq!(spec.value("maps"), None);
    for bad in [
        r#"{"task":"sr4"}"#,
        r#"{"task":"sr4","factor":4.5}"#,
        r#"{"task":"deblur","factor":4}"#,
        r#"{"factor":4}"#,
    ] {
        assert!(serde_json::from_str::<TaskSpec>(bad).is_err(), "{bad}");
    }
}

#[test]
fn every_task_has_one_complete_definition() {
    for t in TASKS {
        assert_eq!(info(t.name).unwrap().name, t.name);
        assert!(!t.preset.is_empty(), "{}", t.name);
        if let Some(f) = t.file {
            assert!(t.params.iter().any(|p| p.key == f.key), "{}", t.name);
        }
        assert_eq!(
            t.params
                .iter()
                .filter(|p| matches!(p.default, DefaultValue::File))
                .count(),
            usize::from(t.file.is_some()),
            "{}",
            t.name
        );
    }
    assert_eq!(
        demo_tasks().collect::<Vec<_>>(),
        [
            "sr4",
            "inpaint-box",
            "inpaint-random",
            "gaussian-blur",
            "motion-blur",
            "phase-retrieval",
            "hdr"
        ]
    );
}

#[test]
fn previews_are_images_of_the_image_size() {
    for (name, c, shape) in [
        ("sr4", 3, [1, 3, 32, 32]),
        ("phase-retrieval", 3, [1, 3, 48, 48]),
        ("hdr", 3, [1, 3, 32, 32]),
        ("mri-4x", 2, [1, 1, 32, 32]),
    ] {
        let t = build(name, [c, 32, 32]).unwrap();
        let x = crate::noise::NoiseSource::randn(
            &mut SeededNoise::new(5),
            &(1, c, 32, 32).into(),
            &Device::Cpu,
        )
        .unwrap();
        let p = t.preview(&t.forward(&x).unwrap()).unwrap();
        assert_eq!(p.dims(), &shape, "{name}");
        let v: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|v| (0.0..=1.0).contains(v)), "{name}");
    }
}

/// `daps-tuned` (settings chosen on training digits) exists for every demo task, is a DAPS
/// variant at DAPS-1K's budget, is listed among the task's presets and resolves by name.
#[test]
fn tuned_presets_are_daps_at_the_daps_1k_budget() {
    for t in demo_tasks() {
        let m = preset_method(t, "daps-tuned").unwrap();
        assert!(
            matches!(m, crate::sampler::Method::Daps(_)),
            "{t}: {}",
            m.name()
        );
        assert_eq!(m.nfe(), preset_method(t, "daps-1k").unwrap().nfe(), "{t}");
        assert!(budgets(t).unwrap().contains(&"daps-tuned"), "{t}");
        assert_eq!(
            resolve_method(t, "daps-tuned").unwrap().name(),
            m.name(),
            "{t}"
        );
    }
}

/// `daps-guided` sections (ζ chosen on training digits) are the `daps-guided` sampler with
/// ζ > 0 at DAPS-1K's budget, listed among the task's presets; `--methods daps-guided` takes
/// the section where a task has one and the registered defaults elsewhere.
#[test]
fn guided_presets_are_guided_daps_at_the_daps_1k_budget() {
    let mut with = 0;
    for t in demo_tasks() {
        let m = resolve_method(t, "daps-guided").unwrap();
        assert_eq!(m.name(), "daps-guided", "{t}");
        let crate::sampler::Method::Daps(c) = &m else {
            panic!("{t}: {}", m.name())
        };
        assert!(c.guidance > 0.0, "{t}");
        assert_eq!(m.nfe(), preset_method(t, "daps-1k").unwrap().nfe(), "{t}");
        if budgets(t).unwrap().contains(&"daps-guided") {
            with += 1;
            assert_eq!(m, preset_method(t, "daps-guided").unwrap(), "{t}");
        }
    }
    assert!(with >= 6, "{with} demo tasks have a daps-guided section");
}
