//! The full-size image path, through the binary: a 256×256 RGB photograph (NASA's astronaut
//! portrait, public domain, shipped by scikit-image; see tests/fixtures/photo/LICENSE.md),
//! `daps measure` (Gaussian blur, ×4 super-resolution) and `daps solve` with the FFHQ-256 ADM
//! architecture (93,563,910 parameters) loaded from a weights file this test writes (random,
//! seeded, small weights: the network is the real one, its output meaningless).
//!
//! The sampler budget is tiny (3 network evaluations in all, one FFHQ-256 forward taking
//! ~15–20 s on a 2-core CPU); the test checks that outputs exist, have the right size, are
//! finite, and that metrics print. It prints the time per annealing step of the run, the time of
//! one Langevin step (A + VJP of the blur at 3×256²), and the estimate for a DAPS-1K run.
//! It is ignored in the default suite (about a minute on 2 cores); the 32×32 CLI tests cover the
//! same code paths at a small size.

use candle_core::{DType, Device, Tensor};
use daps::nn::checkpoint;
use daps::operator::Operator;
use daps::prior::adm::AdmConfig;
use daps::task::{read_safetensors, MeasurementFile};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;
use common::{fixture, s, vec32};

fn photo() -> PathBuf {
    fixture("photo/astronaut-256.png")
}

/// Runs the binary; panics with its stderr on failure; returns (stdout, stderr, seconds).
fn daps(args: &[&str]) -> (String, String, f64) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_daps"))
        .args(args)
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "daps {args:?} failed:\n{e}");
    (o, e, secs)
}

/// Writes every parameter of `params` as f32 to a safetensors file, streaming: norm scales
/// (rank-1 `…weight`) 1, biases 0, everything else uniform with standard deviation `std`.
fn write_random_weights(path: &Path, params: &checkpoint::ParamList, std: f32, seed: u64) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in params {
        let n: usize = shape.iter().product();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}),
        );
        offset += 4 * n;
    }
    let mut json = serde_json::to_string(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(path).unwrap());
    f.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
    f.write_all(json.as_bytes()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let half_width = std * 3f32.sqrt();
    let mut buf = Vec::new();
    for (name, shape) in params {
        let n: usize = shape.iter().product();
        buf.clear();
        if name.ends_with("bias") {
            buf.resize(4 * n, 0);
        } else if shape.len() == 1 && name.ends_with("weight") {
            buf.extend((0..n).flat_map(|_| 1f32.to_le_bytes()));
        } else {
            buf.extend(
                (0..n).flat_map(|_| ((rng.random::<f32>() * 2.0 - 1.0) * half_width).to_le_bytes()),
            );
        }
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

/// Checks a restored PNG and the raw samples file of a 256×256×3 run.
fn check_outputs(png: &Path, samples: &Path) {
    let img = image::open(png).unwrap();
    assert_eq!((img.width(), img.height()), (256, 256), "{}", png.display());
    assert_eq!(img.color(), image::ColorType::Rgb8);
    let (t, _) = read_safetensors(samples).unwrap();
    assert_eq!(t["samples"].dims(), &[1, 3, 256, 256]);
    let v = vec32(&t["samples"]);
    assert!(v.iter().all(|x| x.is_finite()), "non-finite samples");
}

/// The `… s/step` figure of `daps solve`'s summary line.
fn seconds_per_step(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(" s/step"))
        .unwrap_or_else(|| panic!("no timing line in:\n{stderr}"));
    let before = line.split(" s/step").next().unwrap();
    before.rsplit('(').next().unwrap().trim().parse().unwrap()
}

#[test]
#[ignore = "≈66 s: three FFHQ-256 forwards on 2 cores; run with `cargo test --release --test fullsize -- --ignored`"]
fn ffhq256_adm_on_a_256_photo() {
    let dir = std::env::temp_dir().join(format!("daps-fullsize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let photo = photo();

    // The FFHQ-256 ADM architecture with random weights, and its create_model arguments as the
    // sidecar config (`adm:FILE` finds FILE.json).
    let cfg = AdmConfig::ffhq256();
    let params = cfg.param_shapes().unwrap();
    assert_eq!(checkpoint::num_params(&params), 93_563_910);
    let weights = dir.join("ffhq256-random.safetensors");
    let t = Instant::now();
    write_random_weights(&weights, &params, 0.02, 7);
    let write_s = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(&weights).unwrap().len();
    assert!(
        size > 4 * 93_563_910 && size < 4 * 93_563_910 + (1 << 20),
        "{size} bytes"
    );
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/adm_unet/real_param_counts.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut args = counts["ffhq256"]["config"].clone();
    args.as_object_mut().unwrap().remove("model_path");
    std::fs::write(
        weights.with_extension("json"),
        serde_json::to_string_pretty(&args).unwrap(),
    )
    .unwrap();
    assert_eq!(
        AdmConfig::from_json_file(weights.with_extension("json")).unwrap(),
        cfg
    );

    // Measurements of the photograph at full size.
    let blur_y = dir.join("blur.safetensors");
    let sr_y = dir.join("sr4.safetensors");
    for (task, y) in [("gaussian-blur", &blur_y), ("sr4", &sr_y)] {
        let (o, _, _) = daps(&[
            "measure",
            "--task",
            task,
            "--input",
            s(&photo),
            "--out",
            s(y),
            "--seed",
            "1",
        ]);
        assert!(o.contains("3×256×256"), "{o}");
        let mf = MeasurementFile::load(y).unwrap();
        assert_eq!(mf.task.shape(), [3, 256, 256]);
        let expect: &[usize] = if task == "sr4" {
            &[1, 3, 64, 64]
        } else {
            &[1, 3, 256, 256]
        };
        assert_eq!(mf.y.dims(), expect);
        assert!(vec32(&mf.y).iter().all(|v| v.is_finite()));
        let preview = image::open(y.with_extension("png")).unwrap();
        assert_eq!((preview.width(), preview.height()), (256, 256));
    }

    // Gaussian deblurring: 2 annealing steps × 1 ODE step (2 NFE), 2 Langevin steps each.
    let prior = format!("adm:{}:ffhq256", weights.display());
    let out = dir.join("blur-x.png");
    let samples = dir.join("blur-samples.safetensors");
    let (o, e, blur_s) = daps(&[
        "solve",
        "--measurement",
        s(&blur_y),
        "--preset",
        "daps-1k",
        "--prior",
        &prior,
        "--out",
        s(&out),
        "--annealing-steps",
        "2",
        "--ode-steps",
        "1",
        "--mcmc-steps",
        "2",
        "--reference",
        s(&photo),
        "--save-samples",
        s(&samples),
    ]);
    assert!(
        o.contains("PSNR") && o.contains("SSIM") && o.contains("‖A(x)−y‖"),
        "{o}"
    );
    check_outputs(&out, &samples);
    let step_s = seconds_per_step(&e);

    // ×4 super-resolution, the architecture read from the sidecar JSON: 1 annealing step.
    let out = dir.join("sr4-x.png");
    let samples = dir.join("sr4-samples.safetensors");
    let (o, e, sr_s) = daps(&[
        "solve",
        "--measurement",
        s(&sr_y),
        "--preset",
        "daps-1k",
        "--prior",
        &format!("adm:{}", weights.display()),
        "--out",
        s(&out),
        "--annealing-steps",
        "1",
        "--ode-steps",
        "1",
        "--mcmc-steps",
        "2",
        "--reference",
        s(&photo),
        "--save-samples",
        s(&samples),
    ]);
    assert!(o.contains("PSNR"), "{o}");
    check_outputs(&out, &samples);
    let sr_step_s = seconds_per_step(&e);
    let _ = std::fs::remove_dir_all(&dir);

    // One Langevin step's operator cost at 3×256²: A(x) and its VJP for the blur (FFT path).
    let task = daps::task::Task::build(
        daps::task::TaskSpec::defaults("gaussian-blur", 256, 256, &Default::default()).unwrap(),
        [3, 256, 256],
    )
    .unwrap();
    let x = Tensor::zeros((1, 3, 256, 256), DType::F32, &Device::Cpu)
        .unwrap()
        .affine(1.0, 0.1)
        .unwrap();
    let reps = 10;
    let t = Instant::now();
    for _ in 0..reps {
        let r = task.forward(&x).unwrap();
        let _ = task.vjp(&x, &r).unwrap();
    }
    let op_s = t.elapsed().as_secs_f64() / reps as f64;
    // A step of the run = ode_steps NFE + 2 Langevin steps (each A + VJP + an update).
    let nfe_s = (step_s - 2.0 * op_s).max(0.0);
    let daps1k = 200.0 * (5.0 * nfe_s + 100.0 * op_s);
    eprintln!(
        "full size, 1×3×256×256, FFHQ-256 ADM (random weights, written in {write_s:.1} s):\n\
         gaussian-blur solve: {blur_s:.1} s wall for 2 annealing steps; {step_s:.2} s per annealing step \
         (1 NFE + 2 Langevin steps)\n\
         sr4 solve: {sr_s:.1} s wall for 1 annealing step; {sr_step_s:.2} s per annealing step\n\
         blur A + VJP at 3×256²: {:.1} ms; ⇒ one NFE ≈ {nfe_s:.1} s\n\
         DAPS-1K estimate (200 × (5 NFE + 100 Langevin)): {daps1k:.0} s ≈ {:.1} h per image",
        op_s * 1e3,
        daps1k / 3600.0
    );
}
