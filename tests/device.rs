//! `--device cuda`: the whole solve on the GPU. The CUDA tests run only where a CUDA device opens
//! (a `--features cuda` build on a machine with a GPU; `scripts/gpu-check.sh` runs them there);
//! elsewhere each prints "skipped: no CUDA device (…)" and passes. The `--device` argument and
//! the noise choice are checked everywhere.
//!
//! Tolerances: operators in f32 on both devices, ‖A_cuda − A_cpu‖ ≤ 1e-4·‖A_cpu‖ per output (f32
//! rounding, ≈ 1e-7 per operation, summed over FFT / convolution depths of a few hundred terms,
//! stays well below it).

use candle_core::{Device, Tensor};
use daps::noise::{for_device, DeviceNoise, NoiseSource, SeededNoise};
use daps::operator::{Measurement, Operator};
use daps::sampler::{Problem, Silent};
use daps::task::{Task, TaskFiles, TaskSpec, TASKS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

mod common;
use common::{daps, tmp_dir, vec32};

const REL: f64 = 1e-4;
const SIDE: usize = 16;

/// CUDA device 0, or `None` after printing why the test is skipped.
fn cuda() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            let why = e.to_string();
            println!(
                "skipped: no CUDA device ({})",
                why.lines().next().unwrap_or("")
            );
            None
        }
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (vec32(got), vec32(want));
    assert_eq!(g.len(), w.len());
    let d: f64 = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let n: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

fn channels(name: &str) -> usize {
    match name {
        n if n.starts_with("mri-") => 2,
        "inpaint-box" | "gaussian-blur" | "sr4" => 1,
        _ => 3,
    }
}

/// Every registered task at 16×16 (`nonlinear-blur` needs the bkse weights, not shipped).
fn tasks() -> Vec<(&'static str, Task)> {
    let dir = tmp_dir("device", "mask");
    let mask = dir.join("mask.png");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    image::GrayImage::from_fn(SIDE as u32, SIDE as u32, |_, _| {
        image::Luma([if rng.random_bool(0.6) { 255 } else { 0 }])
    })
    .save(&mask)
    .unwrap();
    TASKS
        .iter()
        .filter(|t| t.name != "nonlinear-blur")
        .map(|t| {
            let files = TaskFiles {
                mask: (t.name == "inpaint-mask").then(|| mask.clone()),
                ..Default::default()
            };
            let spec = TaskSpec::defaults(t.name, SIDE, SIDE, &files).unwrap();
            let task = Task::build(spec, [channels(t.name), SIDE, SIDE])
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
            (t.name, task)
        })
        .collect()
}

#[test]
fn every_task_forward_and_vjp_on_cuda_match_the_cpu() {
    let Some(gpu) = cuda() else { return };
    for (name, task) in tasks() {
        let shape = [2, channels(name), SIDE, SIDE];
        // In the image range, away from HDR's kinks at ±1/2 only by chance: both devices see
        // the same point, so a kink changes nothing.
        let x = (randn(&shape, 1) * 0.5).unwrap();
        let ax = task.forward(&x).unwrap();
        let v = randn(ax.dims(), 2);
        let g = task.vjp(&x, &v).unwrap();
        let xg = x.to_device(&gpu).unwrap();
        let axg = task.forward(&xg).unwrap();
        assert!(axg.device().is_cuda(), "{name}: A(x) left the device");
        let gg = task.vjp(&xg, &v.to_device(&gpu).unwrap()).unwrap();
        assert!(gg.device().is_cuda(), "{name}: Jᵀv left the device");
        let (ef, eb) = (rel_err(&axg, &ax), rel_err(&gg, &g));
        assert!(
            ef <= REL,
            "{name}: forward on CUDA off by {ef:.2e} (relative)"
        );
        assert!(eb <= REL, "{name}: VJP on CUDA off by {eb:.2e} (relative)");
    }
}

#[test]
fn device_noise_is_reproducible_on_cuda() {
    let Some(gpu) = cuda() else { return };
    let draws = |seed: u64| {
        let mut n = for_device(&gpu, seed).unwrap();
        // an odd count too: cuRAND makes pairs
        [vec![3, 5, 7], vec![2, 1, 32, 32]]
            .iter()
            .map(|s| {
                let t = n.randn(&s.as_slice().into(), &gpu).unwrap();
                assert!(t.device().is_cuda());
                vec32(&t)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(draws(5), draws(5), "same seed, same draws");
    assert_ne!(draws(5), draws(6), "another seed, other draws");
    // N(0, 1): mean within 5 standard errors (1/√n), variance within 5·√(2/n) of 1.
    let n = 1 << 18;
    let v = vec32(
        &DeviceNoise::new(&gpu, 9)
            .unwrap()
            .randn(&[n].as_slice().into(), &gpu)
            .unwrap(),
    );
    let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n as f64;
    let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    let nf = n as f64;
    assert!(mean.abs() <= 5.0 / nf.sqrt(), "mean {mean}");
    assert!(
        (var - 1.0).abs() <= 5.0 * (2.0 / nf).sqrt(),
        "variance {var}"
    );
}

/// PSNR in dB of `x` against `truth` (both in [−1, 1]), mean over images.
fn psnr(x: &Tensor, truth: &Tensor) -> f64 {
    let u = |t: &Tensor| ((t.clamp(-1f32, 1f32).unwrap() + 1.0).unwrap() * 0.5).unwrap();
    daps::metric::image::psnr(&u(x), &u(truth), 1.0)
        .unwrap()
        .iter()
        .sum::<f64>()
        / x.dim(0).unwrap() as f64
}

/// DAPS-50 (50 levels, one network call each, 100 Langevin steps) on 2 held-out digits,
/// Gaussian blur, the built-in prior: once on the CPU, once on CUDA with the same measurement.
///
/// With the same noise (`SeededNoise`, generated on the CPU and copied) the two runs differ
/// only by float rounding, which the Langevin chains do not amplify (every level is a
/// contraction towards x̂0 plus fresh noise): their PSNRs must agree to 0.5 dB. The real device
/// path (`Method::run_on_device`, noise drawn by cuRAND) draws other noise, so its PSNR is a
/// different sample: with 2 digits its spread over seeds is ~1–2 dB, so it is only held to
/// finite output and a PSNR within 3 dB of the CPU run (a broken device path gives noise, far
/// below).
#[test]
fn daps_on_cuda_agrees_with_the_cpu() {
    let Some(gpu) = cuda() else { return };
    let held = daps::prior::default::HELD_OUT.start;
    let truth = daps::data::mnist_range(held..held + 2)
        .unwrap()
        .images()
        .clone();
    let task = Task::build(
        TaskSpec::defaults("gaussian-blur", 32, 32, &TaskFiles::default()).unwrap(),
        [1, 32, 32],
    )
    .unwrap();
    let m = Measurement::simulate(&task, &truth, 0.05, &mut SeededNoise::new(3)).unwrap();
    let method = daps::task::preset_method("gaussian-blur", "daps-50").unwrap();
    let shape = [2, 1, 32, 32];
    let run = |dev: &Device| {
        let prior = daps::prior::load_on(None, dev, None).unwrap();
        let md = Measurement {
            y: m.y.to_device(dev).unwrap(),
            sigma_y: m.sigma_y,
        };
        let p = Problem {
            prior: &*prior,
            operator: &task,
            measurement: &md,
        };
        let x = method
            .run(&p, &shape, &mut SeededNoise::new(11), &mut Silent)
            .unwrap();
        assert!(x.device().same_device(dev));
        let own = method.run_on_device(&p, &shape, 11, &mut Silent).unwrap();
        assert!(own.device().is_cpu());
        (x.to_device(&Device::Cpu).unwrap(), own)
    };
    let (cpu, _) = run(&Device::Cpu);
    let (same_noise, device_noise) = run(&gpu);
    let (pc, ps, pd) = (
        psnr(&cpu, &truth),
        psnr(&same_noise, &truth),
        psnr(&device_noise, &truth),
    );
    println!("PSNR: CPU {pc:.2} dB, CUDA same noise {ps:.2} dB, CUDA device noise {pd:.2} dB");
    assert!(
        (pc - ps).abs() <= 0.5,
        "same noise: CPU {pc:.2} vs CUDA {ps:.2} dB"
    );
    assert!(
        vec32(&device_noise).iter().all(|v| v.is_finite()),
        "device-noise run not finite"
    );
    assert!(
        pd >= pc - 3.0,
        "device noise: CUDA {pd:.2} vs CPU {pc:.2} dB"
    );
}

/// `bench speed --device cuda` on the hidden tiny ADM: the GPU keys exist and are positive (no
/// timing is asserted).
#[test]
fn bench_speed_on_cuda_writes_the_gpu_keys() {
    let Some(_) = cuda() else { return };
    let json = tmp_dir("device", "speed").join("speed.json");
    // DAPS_BIN: the binary when this test binary was carried to another machine.
    let bin = std::env::var_os("DAPS_BIN").unwrap_or(env!("CARGO_BIN_EXE_daps").into());
    let o = std::process::Command::new(bin)
        .args([
            "bench",
            "speed",
            "--quick",
            "--tiny",
            "--digits-levels",
            "1",
            "--device",
            "cuda",
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(!v["gpu_name"].as_str().unwrap().is_empty());
    for k in [
        "gpu_ffhq256_forward_ms_b1",
        "gpu_ffhq256_forward_gflops_b8",
        "gpu_ffhq256_forward_backward_ms_b8",
        "gpu_daps_level_total_ms",
        "gpu_daps_level_network_ms",
        "gpu_daps1k_per_image_s_b16",
        "gpu_dps1000_per_image_s_b1",
    ] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {}", v[k]);
    }
}

#[test]
fn noise_for_the_cpu_is_the_seeded_noise() {
    let mut a = for_device(&Device::Cpu, 4).unwrap();
    let mut b = SeededNoise::new(4);
    for s in [[2usize, 3], [1, 70_000]] {
        let shape = s.as_slice().into();
        assert_eq!(
            vec32(&a.randn(&shape, &Device::Cpu).unwrap()),
            vec32(&b.randn(&shape, &Device::Cpu).unwrap())
        );
    }
    assert_eq!(a.fork(), b.fork());
    let e = DeviceNoise::new(&Device::Cpu, 1).err().unwrap().to_string();
    assert!(e.contains("SeededNoise"), "{e}");
}

#[test]
fn device_argument() {
    assert!(daps::device::parse("cpu").unwrap().is_cpu());
    assert_eq!(daps::device::name(&Device::Cpu), "cpu");
    for bad in ["tpu", "cuda:x", "cuda1"] {
        let e = daps::device::parse(bad).err().unwrap().to_string();
        assert!(e.contains(bad) && e.contains("cpu, cuda or cuda:N"), "{e}");
    }
    if cfg!(feature = "cuda") {
        return;
    }
    let e = daps::device::parse("cuda:1").err().unwrap().to_string();
    assert!(e.contains("--features cuda"), "{e}");
    // The commands refuse it before any work (no prior loaded, nothing written).
    let dir = tmp_dir("device", "cli");
    let out = dir.join("grid.png");
    for args in [
        vec!["demo", "--device", "cuda", "--out", out.to_str().unwrap()],
        vec![
            "eval",
            "--tasks",
            "inpaint-box",
            "--methods",
            "daps-50",
            "--device",
            "cuda",
            "--out",
            dir.join("run").to_str().unwrap(),
        ],
    ] {
        let o = daps(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("--features cuda"),
            "{err}"
        );
    }
    assert!(!out.exists() && !dir.join("run").exists());
}
