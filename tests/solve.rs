//! `daps measure` / `daps solve` / `daps tasks` end to end, through the binary.
//!
//! The exact-posterior test: a two-component Gaussian-mixture prior with diagonal covariances on
//! 1×8×8 images (2×8×8 complex images for MRI), the exact x0 step (explicit operator matrix), 4000
//! samples per linear task.
//! The sample mean and per-pixel variance must match the closed-form posterior within 5 Monte
//! Carlo standard errors per pixel: SE(mean) = sd/√n, SE(var) = √((m4 − var²)/n) with m4 the
//! posterior's fourth central moment estimated from the samples (≈ var·√(2/n) for a Gaussian).

use candle_core::{DType, Device, Tensor};
use daps::noise::{NoiseSource, SeededNoise};
use daps::operator::Operator;
use daps::task::{read_safetensors, write_safetensors, MeasurementFile, Task, Value};
use nalgebra::{DMatrix, DVector};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use std::path::{Path, PathBuf};

mod common;
use common::{daps, max_abs_diff, s, tmp_dir, vec64};

fn ok(args: &[&str]) -> String {
    let out = daps(args);
    assert!(
        out.status.success(),
        "daps {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = daps(args);
    assert!(!out.status.success(), "daps {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A smooth-ish random 8-bit image, `c` = 1 (gray) or 3 (RGB).
fn write_png(path: &Path, c: usize, h: usize, w: usize, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<u8> = (0..c * h * w)
        .map(|i| {
            let (y, x) = ((i / c) / w, (i / c) % w);
            let base = 128.0 + 60.0 * ((x as f64 * 0.4).sin() + (y as f64 * 0.3).cos());
            (base + rng.random_range(-30.0..30.0)).clamp(0.0, 255.0) as u8
        })
        .collect();
    let (w, h) = (w as u32, h as u32);
    match c {
        1 => image::GrayImage::from_raw(w, h, v)
            .unwrap()
            .save(path)
            .unwrap(),
        _ => image::RgbImage::from_raw(w, h, v)
            .unwrap()
            .save(path)
            .unwrap(),
    }
}

#[test]
fn measure_roundtrip_every_task() {
    let dir = tmp_dir("solve", "roundtrip");
    let img = dir.join("x.png");
    write_png(&img, 3, 32, 32, 1);
    let mask = dir.join("mask.png");
    let m: Vec<u8> = (0..32 * 32)
        .map(|i| if (i * 7) % 5 < 3 { 255 } else { 0 })
        .collect();
    image::GrayImage::from_raw(32, 32, m)
        .unwrap()
        .save(&mask)
        .unwrap();
    let kernel = dir.join("kernel.safetensors");
    let k = Tensor::from_vec(
        vec![0.0f32, 0.1, 0.0, 0.2, 0.4, 0.1, 0.0, 0.2, 0.0],
        (3, 3),
        &Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(&[("kernel", k.clone())].into_iter().collect(), &kernel)
        .unwrap();
    let maps_file = dir.join("maps.safetensors");
    let maps = daps::operator::mri::birdcage_maps(3, 32, 32)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    candle_core::safetensors::save(&[("maps", maps.clone())].into_iter().collect(), &maps_file)
        .unwrap();
    let x = daps::io::read_image(&img).unwrap();
    assert_eq!(x.dims(), &[1, 3, 32, 32]);
    let xc = daps::io::read_complex_image(&img).unwrap();
    assert_eq!(xc.dims(), &[1, 2, 32, 32]);
    // (luminance in [0, 1], 0)
    let unit = ((&x + 1.0).unwrap() * 0.5).unwrap();
    let lum = (0..3)
        .map(|c| (unit.narrow(1, c, 1).unwrap() * [0.299, 0.587, 0.114][c]).unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    assert!(max_abs_diff(&xc.narrow(1, 0, 1).unwrap(), &lum) < 1e-6);
    assert_eq!(vec64(&xc.narrow(1, 1, 1).unwrap()).iter().sum::<f64>(), 0.0);

    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("sr4", vec![]),
        ("sr4-pool", vec![]),
        ("inpaint-box", vec![]),
        ("inpaint-random", vec![]),
        ("inpaint-mask", vec!["--mask", s(&mask)]),
        ("gaussian-blur", vec![]),
        ("motion-blur", vec![]),
        ("motion-blur", vec!["--kernel", s(&kernel)]),
        ("phase-retrieval", vec![]),
        ("hdr", vec!["--param", "scale=1.5"]),
        ("mri-4x", vec![]),
        ("mri-8x", vec!["--maps", s(&maps_file), "--param", "seed=3"]),
    ];
    for (i, (task, extra)) in cases.iter().enumerate() {
        let out = dir.join(format!("y{i}.safetensors"));
        let mut args = vec![
            "measure",
            "--task",
            task,
            "--input",
            s(&img),
            "--out",
            s(&out),
        ];
        args.extend(["--sigma-y", "0.1", "--seed", "7"]);
        args.extend(extra.iter().copied());
        ok(&args);
        let preview = image::open(out.with_extension("png")).unwrap();
        let mf = MeasurementFile::load(&out).unwrap();
        let mri = task.starts_with("mri-");
        let (c, x) = if mri { (2, &xc) } else { (3, &x) };
        assert_eq!(mf.task.name(), *task);
        assert_eq!(mf.task.shape(), [c, 32, 32]);
        assert_eq!((mf.sigma_y, mf.seed), (0.1, 7));
        // The same task built afresh from the stored spec gives the same A(x) as the stored
        // operator, and y = A(x) + σ_y·n with the seeded noise, exactly (MRI: n masked to the
        // sampled k-space).
        let fresh = Task::build(mf.task.spec().clone(), [c, 32, 32]).unwrap();
        let ax = mf.task.forward(x).unwrap();
        assert!(
            max_abs_diff(&ax, &fresh.forward(x).unwrap()) < 1e-6,
            "{task}"
        );
        let mut n = SeededNoise::new(7).randn(ax.shape(), &Device::Cpu).unwrap();
        if mri {
            let m = mf.task.mask().unwrap().reshape((1, 1, 32, 32, 1)).unwrap();
            n = n.broadcast_mul(&m).unwrap();
        }
        let y = (&ax + (n * 0.1).unwrap()).unwrap();
        assert!(max_abs_diff(&y, &mf.y) < 1e-6, "{task}");
        let (pw, ph) = (preview.width() as usize, preview.height() as usize);
        match *task {
            "phase-retrieval" => assert_eq!((ph, pw), (48, 48)),
            _ => assert_eq!((ph, pw), (32, 32), "{task}"),
        }
        match *task {
            "inpaint-mask" => {
                let observed = vec64(mf.task.mask().unwrap()).iter().sum::<f64>();
                assert_eq!(
                    observed as usize,
                    (0..1024).filter(|i| (i * 7) % 5 < 3).count()
                );
            }
            "motion-blur" if !extra.is_empty() => {
                assert!(max_abs_diff(mf.task.kernel().unwrap(), &k) == 0.0);
                assert_eq!(mf.task.spec().value("kernel_size"), Some(&Value::Uint(3)));
            }
            "hdr" => assert_eq!(mf.task.spec().value("scale"), Some(&Value::Float(1.5))),
            "mri-4x" | "mri-8x" => {
                let p = mf.task.spec();
                let uint = |k: &str| p.value(k).and_then(Value::as_u64).unwrap();
                let (coils, seed) = (uint("coils"), uint("seed"));
                let maps_file = p.value("maps").and_then(Value::as_str);
                assert_eq!(mf.y.dims()[1..], [coils as usize, 32, 32, 2]);
                assert_eq!(mf.task.mask().unwrap().dims(), &[32, 32]);
                let cols = vec64(&mf.task.mask().unwrap().narrow(0, 0, 1).unwrap())
                    .iter()
                    .sum::<f64>();
                if *task == "mri-4x" {
                    assert_eq!((coils, seed, maps_file.is_none()), (8, 42, true));
                    assert_eq!(cols, 8.0);
                } else {
                    assert_eq!((coils, seed), (3, 3));
                    assert!(maps_file.unwrap().ends_with("maps.safetensors"));
                    assert_eq!(max_abs_diff(mf.task.maps().unwrap(), &maps), 0.0);
                    assert_eq!(cols, 4.0);
                }
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A valid measurement file to corrupt.
fn good_measurement(dir: &Path) -> PathBuf {
    let img = dir.join("x.png");
    write_png(&img, 1, 16, 16, 2);
    let out = dir.join("good.safetensors");
    ok(&[
        "measure",
        "--task",
        "inpaint-box",
        "--input",
        s(&img),
        "--out",
        s(&out),
    ]);
    out
}

#[test]
fn bad_input_is_named() {
    let dir = tmp_dir("solve", "errors");
    let good = good_measurement(&dir);
    let img = dir.join("x.png");
    let y = dir.join("y.safetensors");

    let e = fails(&[
        "measure",
        "--task",
        "deblur",
        "--input",
        s(&img),
        "--out",
        s(&y),
    ]);
    assert!(
        e.contains("unknown task 'deblur'") && e.contains("inpaint-random"),
        "{e}"
    );
    let odd = dir.join("odd.png");
    write_png(&odd, 3, 30, 30, 3);
    let e = fails(&[
        "measure",
        "--task",
        "sr4",
        "--input",
        s(&odd),
        "--out",
        s(&y),
    ]);
    assert!(e.contains("multiples of 4") && e.contains("30×30"), "{e}");
    let e = fails(&[
        "measure",
        "--task",
        "gaussian-blur",
        "--input",
        s(&img),
        "--out",
        s(&y),
        "--param",
        "kernel_size=61",
    ]);
    assert!(e.contains("needs H and W > 30"), "{e}");
    let junk = dir.join("junk.png");
    std::fs::write(&junk, b"not an image").unwrap();
    let e = fails(&[
        "measure",
        "--task",
        "hdr",
        "--input",
        s(&junk),
        "--out",
        s(&y),
    ]);
    assert!(
        e.contains("cannot read image") && e.contains("junk.png"),
        "{e}"
    );
    let e = fails(&[
        "measure",
        "--task",
        "inpaint-mask",
        "--input",
        s(&img),
        "--out",
        s(&y),
    ]);
    assert!(e.contains("--mask"), "{e}");
    let e = fails(&[
        "measure",
        "--task",
        "hdr",
        "--input",
        s(&img),
        "--out",
        s(&y),
        "--param",
        "sigma=2",
    ]);
    assert!(e.contains("no parameter 'sigma'"), "{e}");

    // Corrupted measurement files.
    let (tensors, meta) = read_safetensors(&good).unwrap();
    let write =
        |name: &str, t: &[(&str, Tensor)], m: &std::collections::BTreeMap<String, String>| {
            let p = dir.join(name);
            write_safetensors(&p, t, m).unwrap();
            p
        };
    let yt = tensors["y"].clone();
    let mask = tensors["mask"].clone();
    let solve = |p: &Path| {
        fails(&[
            "solve",
            "--measurement",
            s(p),
            "--prior",
            "gmm:/nonexistent.safetensors",
            "--out",
            s(&dir.join("o.png")),
        ])
    };
    let mut v = vec64(&yt);
    v[5] = f64::NAN;
    let nan = Tensor::from_vec(v, yt.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let e = solve(&write(
        "nan.safetensors",
        &[("y", nan), ("mask", mask.clone())],
        &meta,
    ));
    assert!(e.contains("y contains NaN"), "{e}");
    let e = solve(&write("nomask.safetensors", &[("y", yt.clone())], &meta));
    assert!(e.contains("missing tensor 'mask'"), "{e}");
    let e = solve(&write("noy.safetensors", &[("mask", mask.clone())], &meta));
    assert!(e.contains("missing tensor 'y'"), "{e}");
    let small = yt.narrow(3, 0, 8).unwrap();
    let e = solve(&write(
        "shape.safetensors",
        &[("y", small), ("mask", mask.clone())],
        &meta,
    ));
    assert!(e.contains("y has shape [1, 1, 16, 8]"), "{e}");
    let mut m2 = meta.clone();
    m2.insert("task".into(), "deblur".into());
    let e = solve(&write(
        "task.safetensors",
        &[("y", yt.clone()), ("mask", mask.clone())],
        &m2,
    ));
    assert!(e.contains("unknown task 'deblur'"), "{e}");
    let mut m3 = meta.clone();
    m3.insert("shape".into(), "[1, 12, 12]".into());
    let e = solve(&write(
        "size.safetensors",
        &[("y", yt.clone()), ("mask", mask)],
        &m3,
    ));
    // y is checked against the shape the task gives before the mask (nothing is built first)
    assert!(
        e.contains("y has shape [1, 1, 16, 16], but inpaint-box on 1×12×12 gives [1, 1, 12, 12]"),
        "{e}"
    );
    let e = solve(&img);
    assert!(e.contains("not a readable safetensors"), "{e}");

    let out = s(&dir.join("o.png")).to_string();
    let e = fails(&[
        "solve",
        "--measurement",
        s(&good),
        "--out",
        &out,
        "--preset",
        "daps-2k",
    ]);
    assert!(
        e.contains("unknown preset 'daps-2k'") && e.contains("daps-100"),
        "{e}"
    );
    // No --prior: the built-in digits prior, which only takes 1×32×32 images.
    let e = fails(&["solve", "--measurement", s(&good), "--out", &out]);
    assert!(
        e.contains("takes samples of shape [1, 32, 32]") && e.contains("measurement is of a"),
        "{e}"
    );
    let e = fails(&[
        "solve",
        "--measurement",
        s(&good),
        "--out",
        &out,
        "--set",
        "lrr=1",
    ]);
    assert!(e.contains("unknown sampler setting 'lrr'"), "{e}");
    let e = fails(&[
        "solve",
        "--measurement",
        s(&good),
        "--out",
        &out,
        "--x0-method",
        "magic",
    ]);
    assert!(e.contains("magic"), "{e}");

    // MRI: --maps only for MRI; the stored maps are required and checked.
    let e = fails(&[
        "measure",
        "--task",
        "hdr",
        "--input",
        s(&img),
        "--out",
        s(&y),
        "--maps",
        s(&good),
    ]);
    assert!(e.contains("--maps only applies"), "{e}");
    let e = fails(&[
        "measure",
        "--task",
        "mri-4x",
        "--input",
        s(&img),
        "--out",
        s(&y),
        "--maps",
        s(&good),
    ]);
    assert!(e.contains("no tensor 'maps'"), "{e}");
    let mri = dir.join("mri.safetensors");
    ok(&[
        "measure",
        "--task",
        "mri-4x",
        "--input",
        s(&img),
        "--out",
        s(&mri),
    ]);
    let (t, meta) = read_safetensors(&mri).unwrap();
    assert_eq!(t["maps"].dims(), &[8, 16, 16, 2]);
    let e = solve(&write(
        "nomaps.safetensors",
        &[("y", t["y"].clone()), ("mask", t["mask"].clone())],
        &meta,
    ));
    assert!(e.contains("missing tensor 'maps'"), "{e}");
    let bad_maps = (&t["maps"] * f64::NAN).unwrap();
    let e = solve(&write(
        "nanmaps.safetensors",
        &[
            ("y", t["y"].clone()),
            ("mask", t["mask"].clone()),
            ("maps", bad_maps),
        ],
        &meta,
    ));
    assert!(e.contains("NaN"), "{e}");
    let few = t["maps"].narrow(0, 0, 2).unwrap();
    let e = solve(&write(
        "fewmaps.safetensors",
        &[
            ("y", t["y"].clone()),
            ("mask", t["mask"].clone()),
            ("maps", few),
        ],
        &meta,
    ));
    assert!(e.contains("coil maps"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes a mixture prior file on c×h×w and returns (weights, means, diagonal variances).
fn write_prior(
    path: &Path,
    c: usize,
    h: usize,
    w: usize,
) -> (Vec<f64>, Vec<DVector<f64>>, Vec<DVector<f64>>) {
    let d = c * h * w;
    let weights = vec![0.6, 0.4];
    let means: Vec<DVector<f64>> = (0..2)
        .map(|k| {
            DVector::from_fn(d, |i, _| {
                let (ch, y, x) = ((i / (h * w)) as f64, ((i / w) % h) as f64, (i % w) as f64);
                0.3 * ((0.7 + 0.3 * k as f64) * x + 0.5 * y + ch).sin() - 0.1 * k as f64
            })
        })
        .collect();
    let vars: Vec<DVector<f64>> = (0..2)
        .map(|k| DVector::from_fn(d, |i, _| 0.02 + 0.03 * ((i * (k + 3)) % 7) as f64 / 6.0))
        .collect();
    let t = |v: Vec<f64>, shape: Vec<usize>| {
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let flat = |vs: &[DVector<f64>]| {
        vs.iter()
            .flat_map(|v| v.iter().copied())
            .collect::<Vec<_>>()
    };
    let tensors = [
        ("weights".to_string(), t(weights.clone(), vec![2])),
        ("means".to_string(), t(flat(&means), vec![2, c, h, w])),
        ("variances".to_string(), t(flat(&vars), vec![2, d])),
    ];
    candle_core::safetensors::save(&tensors.into_iter().collect(), path).unwrap();
    // the file holds f32: use the stored values
    let r = |v: &DVector<f64>| v.map(|x| x as f32 as f64);
    (
        weights,
        means.iter().map(r).collect(),
        vars.iter().map(r).collect(),
    )
}

/// Closed-form posterior mean and per-pixel variance of a diagonal-covariance mixture prior
/// under y = A x + σ n.
fn posterior_moments(
    w: &[f64],
    means: &[DVector<f64>],
    vars: &[DVector<f64>],
    a: &DMatrix<f64>,
    y: &DVector<f64>,
    sigma: f64,
) -> (DVector<f64>, DVector<f64>) {
    let d = a.ncols();
    let s2 = sigma * sigma;
    let mut logw = Vec::new();
    let mut comps = Vec::new();
    for k in 0..w.len() {
        let c = DMatrix::from_diagonal(&vars[k]);
        let s = a * &c * a.transpose() + DMatrix::identity(a.nrows(), a.nrows()) * s2;
        let ch = s.clone().cholesky().unwrap();
        let r = y - a * &means[k];
        let logdet: f64 = 2.0 * ch.l().diagonal().iter().map(|v| v.ln()).sum::<f64>();
        logw.push(w[k].ln() - 0.5 * r.dot(&ch.solve(&r)) - 0.5 * logdet);
        let prec = DMatrix::from_diagonal(&vars[k].map(|v| 1.0 / v)) + a.transpose() * a / s2;
        let cov = prec.try_inverse().unwrap();
        let mu = &cov * (means[k].component_div(&vars[k]) + a.transpose() * y / s2);
        comps.push((mu, cov.diagonal()));
    }
    let mx = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let pw: Vec<f64> = logw.iter().map(|l| (l - mx).exp()).collect();
    let tot: f64 = pw.iter().sum();
    let mut mean = DVector::zeros(d);
    let mut second = DVector::zeros(d);
    for (p, (mu, var)) in pw.iter().zip(&comps) {
        mean += mu * (p / tot);
        second += (var + mu.component_mul(mu)) * (p / tot);
    }
    let var = second - mean.component_mul(&mean);
    (mean, var)
}

#[test]
fn exact_posterior_on_every_linear_task() {
    let dir = tmp_dir("solve", "exact");
    let (h, w) = (8, 8);
    let d1 = h * w;
    // Real images 1×8×8; complex (MRI) images 2×8×8.
    let priors = [1, 2].map(|c| {
        let f = dir.join(format!("prior{c}.safetensors"));
        let p = write_prior(&f, c, h, w);
        (format!("gmm:{}", f.display()), p)
    });
    let (_, (_, pm, pv)) = &priors[0];
    // Ground truth: a draw from the prior component 0 (for MRI, its luminance in [0, 1] is the
    // real part).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let x: Vec<u8> = (0..d1)
        .map(|i| {
            let v = pm[0][i] + pv[0][i].sqrt() * rng.sample::<f64, _>(StandardNormal);
            ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
        })
        .collect();
    let img = dir.join("x.png");
    image::GrayImage::from_raw(w as u32, h as u32, x)
        .unwrap()
        .save(&img)
        .unwrap();
    let n = 4000;
    let tasks: [(&str, &[&str]); 8] = [
        ("sr4", &[]),
        ("sr4-pool", &[]),
        ("inpaint-box", &[]),
        ("inpaint-random", &[]),
        (
            "gaussian-blur",
            &["--param", "kernel_size=5", "--param", "sigma=1.0"],
        ),
        ("motion-blur", &["--param", "kernel_size=5"]),
        // 2 coils keep the explicit matrix small (2·8·8·2 = 256 rows; unsampled rows are 0)
        ("mri-4x", &["--param", "coils=2"]),
        ("mri-8x", &["--param", "coils=2"]),
    ];
    for (task, extra) in tasks {
        let c = if task.starts_with("mri-") { 2 } else { 1 };
        let d = c * d1;
        let (prior, (pw, pm, pv)) = &priors[c - 1];
        let y = dir.join(format!("{task}.safetensors"));
        let mut args = vec![
            "measure",
            "--task",
            task,
            "--input",
            s(&img),
            "--out",
            s(&y),
            "--seed",
            "3",
        ];
        args.extend_from_slice(extra);
        ok(&args);
        // The sampler runs in-process (writing 4000 PNGs per task through the binary cost most
        // of this test's time); the binary's solve path is checked on the first task.
        let mf = MeasurementFile::load(&y).unwrap();
        if task == "sr4" {
            let samples = dir.join(format!("{task}-samples.safetensors"));
            let out = dir.join(format!("{task}-x.png"));
            ok(&[
                "solve",
                "--measurement",
                s(&y),
                "--prior",
                prior,
                "--out",
                s(&out),
                "--preset",
                "daps-100",
                "--annealing-steps",
                "10",
                "--x0-method",
                "exact",
                "--samples",
                "3",
                "--seed",
                "11",
                "--save-samples",
                s(&samples),
            ]);
            assert!(dir.join(format!("{task}-x_mean.png")).is_file());
            let (t, _) = read_safetensors(&samples).unwrap();
            assert_eq!(t["samples"].dims(), &[3, c, h, w]);
        }
        let gmm = daps::prior::load(Some(prior), &Device::Cpu).unwrap();
        let explicit = mf.task.explicit().unwrap();
        let mut cfg = daps::task::preset(task, "daps-100").unwrap();
        cfg.annealing_steps = 10;
        cfg.x0_method = daps::sampler::X0Method::Exact;
        let measurement = mf.measurement();
        let problem = daps::sampler::Problem {
            prior: &*gmm,
            operator: &explicit,
            measurement: &measurement,
        };
        let x = daps::sampler::Method::Daps(cfg)
            .run(
                &problem,
                &[n, c, h, w],
                &mut SeededNoise::new(11),
                &mut daps::sampler::Silent,
            )
            .unwrap();
        assert_eq!(x.dims(), &[n, c, h, w]);
        let xs = vec64(&x);

        let a = explicit.matrix().unwrap().clone();
        // The matrix is the operator: A·v = A(v) for a random v.
        let v = SeededNoise::new(1)
            .randn(&(1, c, h, w).into(), &Device::Cpu)
            .unwrap();
        let av = &a * DVector::from_vec(vec64(&v));
        let fv = vec64(&mf.task.forward(&v).unwrap());
        assert!(
            av.iter().zip(&fv).all(|(p, q)| (p - q).abs() < 1e-5),
            "{task}: matrix"
        );
        let yv = DVector::from_vec(vec64(&mf.y));
        let (mean, var) = posterior_moments(pw, pm, pv, &a, &yv, mf.sigma_y);

        let mut worst: (f64, f64) = (0.0, 0.0);
        for j in 0..d {
            let col: Vec<f64> = (0..n).map(|i| xs[i * d + j]).collect();
            let m = col.iter().sum::<f64>() / n as f64;
            let c2 = col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            let m4 = col.iter().map(|v| (v - m).powi(4)).sum::<f64>() / n as f64;
            let z_mean = (m - mean[j]).abs() / (var[j] / n as f64).sqrt();
            let se_var = ((m4 - c2 * c2).max(0.0) / n as f64).sqrt();
            let z_var = (c2 - var[j]).abs() / se_var;
            worst = (worst.0.max(z_mean), worst.1.max(z_var));
            assert!(
                z_mean < 5.0 && z_var < 5.0,
                "{task} pixel {j}: mean {m:.4} vs {:.4} ({z_mean:.1} SE), var {c2:.5} vs {:.5} ({z_var:.1} SE)",
                mean[j],
                var[j]
            );
        }
        eprintln!(
            "{task}: worst |z| mean {:.2}, variance {:.2}",
            worst.0, worst.1
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn solve_writes_samples_frames_and_metrics() {
    let dir = tmp_dir("solve", "outputs");
    let (h, w) = (16, 16);
    let prior_file = dir.join("prior.safetensors");
    write_prior(&prior_file, 1, h, w);
    let img = dir.join("gt.png");
    write_png(&img, 1, h, w, 4);
    let y = dir.join("y.safetensors");
    ok(&[
        "measure",
        "--task",
        "inpaint-random",
        "--input",
        s(&img),
        "--out",
        s(&y),
    ]);
    let prior = format!("gmm:{}", prior_file.display());
    let frames = dir.join("frames");
    let out = dir.join("x.png");
    let text = ok(&[
        "solve",
        "--measurement",
        s(&y),
        "--prior",
        &prior,
        "--out",
        s(&out),
        "--preset",
        "daps-100",
        "--annealing-steps",
        "10",
        "--mcmc-steps",
        "10",
        "--samples",
        "3",
        "--reference",
        s(&img),
        "--save-trajectory",
        s(&frames),
        "--trajectory-every",
        "4",
    ]);
    assert!(text.contains("PSNR") && text.contains("mean"), "{text}");
    for f in ["x_0.png", "x_1.png", "x_2.png", "x_mean.png"] {
        let i = image::open(dir.join(f)).unwrap();
        assert_eq!((i.width(), i.height()), (16, 16));
    }
    for step in [0, 4, 8, 9] {
        let f = image::open(frames.join(format!("x0_{step:04}.png"))).unwrap();
        assert_eq!(
            (f.width(), f.height()),
            (3 * 16, 16),
            "three chains side by side"
        );
        assert!(frames.join(format!("x0hat_{step:04}.png")).is_file());
    }
    assert!(!frames.join("x0_0001.png").exists());

    // A failure mid-run (a frame that cannot be written at step 4) keeps the last x0.
    let frames2 = dir.join("frames2");
    std::fs::create_dir_all(frames2.join("x0_0004.png")).unwrap();
    let e = fails(&[
        "solve",
        "--measurement",
        s(&y),
        "--prior",
        &prior,
        "--out",
        s(&out),
        "--preset",
        "daps-100",
        "--annealing-steps",
        "10",
        "--mcmc-steps",
        "10",
        "--save-trajectory",
        s(&frames2),
        "--trajectory-every",
        "4",
    ]);
    assert!(
        e.contains("annealing step 4") && e.contains("x_partial_step0004.png"),
        "{e}"
    );
    assert!(dir.join("x_partial_step0004.png").is_file());

    // MRI: complex samples are written (and scored) as magnitudes; raw samples keep 2 channels.
    let prior2 = dir.join("prior2.safetensors");
    write_prior(&prior2, 2, h, w);
    let ym = dir.join("mri.safetensors");
    ok(&[
        "measure",
        "--task",
        "mri-8x",
        "--input",
        s(&img),
        "--out",
        s(&ym),
    ]);
    let preview = image::open(ym.with_extension("png")).unwrap();
    assert_eq!((preview.width(), preview.height()), (16, 16));
    let mframes = dir.join("mri-frames");
    let raw = dir.join("mri-samples.safetensors");
    let text = ok(&[
        "solve",
        "--measurement",
        s(&ym),
        "--prior",
        &format!("gmm:{}", prior2.display()),
        "--out",
        s(&dir.join("m.png")),
        "--preset",
        "daps-100",
        "--annealing-steps",
        "4",
        "--mcmc-steps",
        "5",
        "--samples",
        "2",
        "--reference",
        s(&img),
        "--save-trajectory",
        s(&mframes),
        "--save-samples",
        s(&raw),
    ]);
    assert!(text.contains("PSNR") && text.contains("mean"), "{text}");
    for f in ["m_0.png", "m_1.png", "m_mean.png"] {
        let i = image::open(dir.join(f)).unwrap();
        assert_eq!((i.width(), i.height()), (16, 16));
        assert_eq!(i.color(), image::ColorType::L8, "a magnitude image");
    }
    let f = image::open(mframes.join("x0_0003.png")).unwrap();
    assert_eq!((f.width(), f.height()), (2 * 16, 16));
    let (t, _) = read_safetensors(&raw).unwrap();
    assert_eq!(t["samples"].dims(), &[2, 2, 16, 16]);

    // tasks lists every task with its preset values.
    let t = ok(&["tasks"]);
    for name in [
        "sr4-pool",
        "inpaint-mask",
        "phase-retrieval",
        "hdr",
        "lr 2e-5",
        "400 × 10",
        "mri-4x",
        "mri-8x",
        "y for a 2×256×256 image: [8, 256, 256, 2]",
    ] {
        assert!(t.contains(name), "{name}: {t}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mean squared difference of two same-size PNGs, on [0, 1].
fn png_mse(a: &Path, b: &Path) -> f64 {
    let (a, b) = (
        image::open(a).unwrap().to_luma8(),
        image::open(b).unwrap().to_luma8(),
    );
    assert_eq!(a.dimensions(), b.dimensions());
    let n = a.as_raw().len() as f64;
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&p, &q)| ((p as f64 - q as f64) / 255.0).powi(2))
        .sum::<f64>()
        / n
}

#[test]
fn solve_a_folder_in_batches_per_operator_and_resume() {
    let dir = tmp_dir("solve", "folder");
    let (h, w) = (16, 16);
    let prior_file = dir.join("prior.safetensors");
    write_prior(&prior_file, 1, h, w);
    let prior = format!("gmm:{}", prior_file.display());
    let (ys, gts) = (dir.join("y"), dir.join("gt"));
    std::fs::create_dir_all(&ys).unwrap();
    std::fs::create_dir_all(&gts).unwrap();
    // Three measurements of one operator (random inpainting, same mask) and one of another.
    // b is a's negative, so that the images differ on every observed pixel.
    for (name, task, seed) in [
        ("a", "inpaint-random", 1),
        ("b", "inpaint-random", 1),
        ("c", "inpaint-random", 3),
        ("d", "inpaint-box", 4),
    ] {
        let gt = gts.join(format!("{name}.png"));
        write_png(&gt, 1, h, w, seed);
        if name == "b" {
            let mut img = image::open(&gt).unwrap().to_luma8();
            image::imageops::invert(&mut img);
            img.save(&gt).unwrap();
        }
        let seed = seed.to_string();
        let y = ys.join(format!("{name}.safetensors"));
        ok(&[
            "measure",
            "--task",
            task,
            "--input",
            s(&gt),
            "--out",
            s(&y),
            "--seed",
            &seed,
        ]);
    }
    let out = dir.join("out");
    let args = [
        "solve",
        "--measurement",
        s(&ys),
        "--prior",
        &prior,
        "--out",
        s(&out),
        "--reference",
        s(&gts),
        "--preset",
        "daps-100",
        "--annealing-steps",
        "10",
        "--x0-method",
        "exact",
        "--batch",
        "2",
    ];
    let text = ok(&args);
    assert!(text.contains("done: 4 measurement(s) solved"), "{text}");
    let record = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(format!("{name}.json"))).unwrap())
            .unwrap()
    };
    // Batches follow the operator groups in name order: [a, b], [c], [d].
    for (name, batch) in [
        ("a", vec!["a", "b"]),
        ("b", vec!["a", "b"]),
        ("c", vec!["c"]),
        ("d", vec!["d"]),
    ] {
        let r = record(name);
        assert_eq!(r["batch"], serde_json::json!(batch), "{name}: {r}");
        assert!(r["psnr"][0].as_f64().unwrap().is_finite());
    }
    assert_eq!(record("a")["seed"], record("b")["seed"]);
    assert_ne!(record("a")["seed"], record("c")["seed"]);
    // Each restoration belongs to its own measurement: the observed pixels (30%) pull it to
    // its own image.
    for (own, other) in [("a", "b"), ("b", "a"), ("c", "b")] {
        let x = out.join(format!("{own}.png"));
        let (m_own, m_other) = (
            png_mse(&x, &gts.join(format!("{own}.png"))),
            png_mse(&x, &gts.join(format!("{other}.png"))),
        );
        assert!(
            m_own < m_other,
            "{own}: mse to own {m_own}, to {other} {m_other}"
        );
    }
    // A rerun resumes: nothing left to do; another seed into the same folder is refused.
    let stamp = std::fs::metadata(out.join("a.png"))
        .unwrap()
        .modified()
        .unwrap();
    let again = ok(&args);
    assert!(again.contains("0 measurement(s) solved") && again.contains("(4 already done)"));
    assert_eq!(
        std::fs::metadata(out.join("a.png"))
            .unwrap()
            .modified()
            .unwrap(),
        stamp
    );
    let mut other_seed = args.to_vec();
    other_seed.extend(["--seed", "5"]);
    assert!(fails(&other_seed).contains("holds another solve"));
    // The batches side by side (`--jobs 3`, 3 threads): the same pictures and records.
    let side = dir.join("side");
    let mut jobs = args.to_vec();
    jobs[6] = s(&side);
    jobs.extend(["--jobs", "3"]);
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_daps"))
        .env("RAYON_NUM_THREADS", "3")
        .args(&jobs)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Everything but the time and the output paths (another folder).
    let strip = |mut r: serde_json::Value| {
        let o = r.as_object_mut().unwrap();
        o.remove("seconds");
        o.remove("outputs");
        r
    };
    for name in ["a", "b", "c", "d"] {
        let text = std::fs::read_to_string(side.join(format!("{name}.json"))).unwrap();
        let got: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(strip(got), strip(record(name)), "{name}");
        let png = format!("{name}.png");
        assert_eq!(
            std::fs::read(side.join(&png)).unwrap(),
            std::fs::read(out.join(&png)).unwrap(),
            "{png}"
        );
    }
    // Bad inputs are named before any work: a broken file, --batch or --jobs with one file,
    // --jobs 0, the measurement folder as the output.
    std::fs::write(ys.join("e.safetensors"), b"not a measurement").unwrap();
    let out2 = dir.join("out2");
    let mut broken = args.to_vec();
    broken[6] = s(&out2);
    let e = fails(&broken);
    assert!(e.contains("e.safetensors"), "{e}");
    assert!(!out2.join("solve.json").exists() && !out2.join("a.png").exists());
    std::fs::remove_file(ys.join("e.safetensors")).unwrap();
    for flag in ["--batch", "--jobs"] {
        let e = fails(&[
            "solve",
            "--measurement",
            s(&ys.join("a.safetensors")),
            "--prior",
            &prior,
            "--out",
            s(&dir.join("x.png")),
            flag,
            "2",
        ]);
        assert!(e.contains(&format!("{flag} applies to a folder")), "{e}");
    }
    let mut no_jobs = args.to_vec();
    no_jobs[6] = s(&out2);
    no_jobs.extend(["--jobs", "0"]);
    assert!(fails(&no_jobs).contains("--batch and --jobs must be at least 1"));
    let mut into_inputs = args.to_vec();
    into_inputs[6] = s(&ys);
    assert!(fails(&into_inputs).contains("refusing to overwrite an input"));
    let _ = std::fs::remove_dir_all(&dir);
}
