//! Timings of the networks: the ADM and diffusers UNets, the `nn::fastops` kernels against
//! candle's, and a training step. Plain programs, not tests: they print and assert nothing.
//!
//! Run all: `cargo bench --bench network`; run some: `cargo bench --bench network -- NAME...`
//! (each NAME selects the timings whose `group/function` name contains it, e.g. `adm`,
//! `fastops`, `measure_step_time`). Names: adm/timing_forward_tiny_and_ffhq256,
//! unet2d/timing_forward_tiny, fastops/measure_ops, fastops/measure_blocks,
//! fastops/measure_matmul_layouts, train/measure_step_time, train/measure_op_times.

use candle_core::{DType, Device, Module, Tensor, Var};
use daps::data::mnist_train;
use daps::nn::fastops;
use daps::prior::adm::{AdmConfig, AdmUnet};
use daps::prior::unet2d::Unet2dModel;
use daps::prior::vp::VpDenoiser;
use daps::prior::Denoiser;
use daps::train::{adm_config_json, preset, TrainConfig, Trainer};

#[path = "../tests/common/mod.rs"]
mod common;
use common::{cpu_seconds, fixture, load, rand};

fn main() {
    let timings: &[(&str, fn())] = &[
        (
            "adm/timing_forward_tiny_and_ffhq256",
            timing_forward_tiny_and_ffhq256,
        ),
        ("unet2d/timing_forward_tiny", timing_forward_tiny),
        ("fastops/measure_ops", measure_ops),
        ("fastops/measure_blocks", measure_blocks),
        ("fastops/measure_matmul_layouts", measure_matmul_layouts),
        ("train/measure_step_time", measure_step_time),
        ("train/measure_op_times", measure_op_times),
    ];
    common::run_timings(timings);
}

/// The tiny ADM of the fixtures (tests/fixtures/adm_unet).
fn adm_tiny() -> AdmUnet {
    let cfg = AdmConfig::from_json_file(fixture("adm_unet/tiny_config.json")).unwrap();
    AdmUnet::load(
        &cfg,
        fixture("adm_unet/tiny_weights.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn time_forward(model: &AdmUnet, x: &Tensor, t: &Tensor, reps: usize) -> f64 {
    model.forward(x, t).unwrap(); // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let s = std::time::Instant::now();
        let y = model.forward(x, t).unwrap();
        y.sum_all().unwrap().to_scalar::<f32>().unwrap();
        best = best.min(s.elapsed().as_secs_f64());
    }
    best
}

fn timing_forward_tiny_and_ffhq256() {
    let dev = Device::Cpu;
    let model = adm_tiny();
    let io = load("adm_unet/tiny_io.safetensors");
    let x1 = io["x"].narrow(0, 0, 1).unwrap();
    let t1 = io["timesteps"].narrow(0, 0, 1).unwrap();
    let tt = time_forward(&model, &x1, &t1, 10);
    eprintln!("tiny ADM (32x32, batch 1) forward: {:.2} ms", tt * 1e3);
    let den = VpDenoiser::new(model);
    let x = Var::from_tensor(&x1).unwrap();
    let s = std::time::Instant::now();
    let l = den.denoise(x.as_tensor(), 1.0).unwrap().sum_all().unwrap();
    l.backward().unwrap();
    eprintln!(
        "tiny ADM denoiser forward+backward: {:.2} ms",
        s.elapsed().as_secs_f64() * 1e3
    );

    let cfg = AdmConfig::ffhq256();
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let s = std::time::Instant::now();
    let model = AdmUnet::new(&cfg, vb).unwrap();
    eprintln!("FFHQ-256 random init: {:.2} s", s.elapsed().as_secs_f64());
    let x = Tensor::randn(0f32, 1.0, (1, 3, 256, 256), &dev).unwrap();
    let t = Tensor::new(&[258.7f32], &dev).unwrap();
    let tf = time_forward(&model, &x, &t, 2);
    eprintln!("FFHQ-256 ADM (256x256, batch 1) forward: {:.3} s", tf);
}

fn timing_forward_tiny() {
    let m = Unet2dModel::from_pretrained(fixture("diffusers_unet2d"), &Device::Cpu).unwrap();
    let io = load("diffusers_unet2d/tiny_io.safetensors");
    let x = io["x"].narrow(0, 0, 1).unwrap();
    let t = io["timesteps_float"].narrow(0, 0, 1).unwrap();
    m.forward(&x, &t).unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        let s = std::time::Instant::now();
        m.forward(&x, &t).unwrap();
        best = best.min(s.elapsed().as_secs_f64());
    }
    eprintln!(
        "tiny UNet2DModel (32x32, batch 1) forward: {:.2} ms",
        best * 1e3
    );
}

/// Best-of-n (wall ms, process CPU ms) of `f`.
fn time<F: FnMut()>(n: usize, mut f: F) -> (f64, f64) {
    let mut best = (f64::INFINITY, f64::INFINITY);
    for _ in 0..n {
        let c = cpu_seconds();
        let t = std::time::Instant::now();
        f();
        let w = t.elapsed().as_secs_f64() * 1e3;
        let c = (cpu_seconds() - c) * 1e3;
        if w < best.0 {
            best = (w, c);
        }
    }
    best
}

/// Per-op forward and forward+backward times, candle vs fastops, at the digits32 sizes (batch 32).
fn measure_ops() {
    let n = 5;
    // Forward only at batch 1 (the sampling path of a 256-px model).
    for &(c, h) in &[(128usize, 64usize), (128, 128)] {
        let x = rand(&[1, c, h, h], 1, DType::F32);
        let w = rand(&[c, c, 3, 3], 2, DType::F32);
        let candle = time(3, || {
            x.conv2d(&w, 1, 1, 1, 1).unwrap();
        });
        let fast = time(3, || {
            fastops::conv2d(&x, &w, 1, 1).unwrap();
        });
        eprintln!(
            "conv fwd 1x{c}x{h}x{h} 3x3: candle {:.1} ms (cpu {:.1}), fast {:.1} ms (cpu {:.1})",
            candle.0, candle.1, fast.0, fast.1
        );
    }
    let b = 32;
    let report = |name: &str, fwd: (f64, f64), both: (f64, f64)| {
        eprintln!(
            "{name:<40} fwd {:7.1} ms (cpu {:7.1})  bwd {:7.1} ms (cpu {:7.1})",
            fwd.0,
            fwd.1,
            both.0 - fwd.0,
            both.1 - fwd.1
        );
    };
    for &(ci, co, k, p, s, h) in &[
        (32usize, 32usize, 3usize, 1usize, 1usize, 32usize),
        (64, 64, 3, 1, 1, 16),
        (64, 64, 3, 1, 2, 16),
        (32, 32, 3, 1, 2, 32),
        (128, 64, 1, 0, 1, 16),
    ] {
        let x = Var::from_tensor(&rand(&[b, ci, h, h], 1, DType::F32)).unwrap();
        let w = Var::from_tensor(&rand(&[co, ci, k, k], 2, DType::F32)).unwrap();
        for fast in [false, true] {
            let run = |bwd: bool| {
                let y = if fast {
                    fastops::conv2d(x.as_tensor(), w.as_tensor(), p, s).unwrap()
                } else {
                    x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1).unwrap()
                };
                if bwd {
                    y.sum_all().unwrap().backward().unwrap();
                }
            };
            let fwd = time(n, || run(false));
            let both = time(n, || run(true));
            let name = format!(
                "conv {ci}->{co} k{k} s{s} {h}x{h} {}",
                if fast { "fast" } else { "candle" }
            );
            report(&name, fwd, both);
        }
    }
    {
        let x = Var::from_tensor(&rand(&[b, 32, 32, 32], 3, DType::F32)).unwrap();
        let r = rand(&[b, 32, 32, 32], 6, DType::F32);
        for fast in [false, true] {
            let run = |bwd: bool| {
                let y = if fast {
                    fastops::silu(x.as_tensor()).unwrap()
                } else {
                    x.as_tensor().silu().unwrap()
                };
                if bwd {
                    (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                }
            };
            let fwd = time(n, || run(false));
            let both = time(n, || run(true));
            report(
                &format!("silu 32ch 32x32 {}", if fast { "fast" } else { "candle" }),
                fwd,
                both,
            );
        }
    }
    for &(c, h) in &[(32usize, 32usize), (64, 16), (128, 8)] {
        let x = Var::from_tensor(&rand(&[b, c, h, h], 3, DType::F32)).unwrap();
        let gm = Var::from_tensor(&(rand(&[c], 4, DType::F32) + 1.0).unwrap()).unwrap();
        let bt = Var::from_tensor(&rand(&[c], 5, DType::F32)).unwrap();
        let r = rand(&[b, c, h, h], 6, DType::F32);
        for fast in [false, true] {
            let run = |bwd: bool| {
                let y = if fast {
                    fastops::group_norm(x.as_tensor(), gm.as_tensor(), bt.as_tensor(), 32, 1e-5)
                        .unwrap()
                } else {
                    candle_nn::GroupNorm::new(
                        gm.as_tensor().clone(),
                        bt.as_tensor().clone(),
                        c,
                        32,
                        1e-5,
                    )
                    .unwrap()
                    .forward(x.as_tensor())
                    .unwrap()
                };
                if bwd {
                    (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                }
            };
            let fwd = time(n, || run(false));
            let both = time(n, || run(true));
            let name = format!(
                "group norm {c}ch {h}x{h} {}",
                if fast { "fast" } else { "candle" }
            );
            report(&name, fwd, both);
        }
    }
}

/// Per-block forward times of the digits32 ADM (batch 32, random weights).
fn measure_blocks() {
    use daps::prior::adm::AdmUnet;
    let cfg = daps::train::preset("digits32").unwrap();
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let net = AdmUnet::new(&cfg, vb).unwrap();
    let x = rand(&[32, 1, 32, 32], 1, DType::F32);
    let t = Tensor::full(500f32, 32, &Device::Cpu).unwrap();
    for _ in 0..3 {
        let mut last = std::time::Instant::now();
        let mut line = String::new();
        let y = net
            .forward_traced(&x, &t, &mut |name, _| {
                let now = std::time::Instant::now();
                line += &format!("{name} {:.0}ms, ", (now - last).as_secs_f64() * 1e3);
                last = now;
            })
            .unwrap();
        let t0 = std::time::Instant::now();
        let _ = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        eprintln!(
            "{line}\n  (no-grad net; backward n/a {:.0} ms)",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    // With gradients: weights as variables.
    let xv = Var::from_tensor(&x).unwrap();
    for _ in 0..2 {
        let c0 = cpu_seconds();
        let y = net.forward(xv.as_tensor(), &t).unwrap();
        let c1 = cpu_seconds();
        let _ = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        eprintln!(
            "tracked: fwd {:.2} CPU-s, bwd {:.2} CPU-s",
            c1 - c0,
            cpu_seconds() - c1
        );
    }
}

fn measure_matmul_layouts() {
    let w = rand(&[32, 288], 1, DType::F32);
    let colb = rand(&[32, 288, 1024], 2, DType::F32);
    let col1 = rand(&[288, 32 * 1024], 3, DType::F32);
    let a = time(5, || {
        w.broadcast_left(32).unwrap().matmul(&colb).unwrap();
    });
    let b = time(5, || {
        w.matmul(&col1).unwrap();
    });
    let c = time(5, || {
        let _ = w
            .matmul(&col1)
            .unwrap()
            .reshape((32, 32, 1024))
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap();
    });
    let d = time(5, || {
        let _ = Tensor::zeros((32, 288, 1024), DType::F32, &Device::Cpu)
            .unwrap()
            .affine(1.0, 1.0)
            .unwrap();
    });
    eprintln!("batched {a:?}, single {b:?}, single+transpose {c:?}, alloc+touch 37MB {d:?}");
}

/// Measures a training step of a preset (PRESET, default digits32; or ARCH = create_model JSON)
/// at batch B (default 32): `PRESET=tiny B=8 cargo bench --bench network -- measure_step`.
fn measure_step_time() {
    use daps::prior::vp::TimestepNet;
    use std::time::Instant;
    let cpu = || -> f64 {
        let s = std::fs::read_to_string("/proc/self/stat").unwrap();
        let f: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let b: usize = std::env::var("B")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let name = std::env::var("PRESET").unwrap_or("digits32".into());
    let arch = match std::env::var("ARCH") {
        Ok(j) => serde_json::from_str(&j).unwrap(),
        Err(_) => adm_config_json(&preset(&name).unwrap()),
    };
    let cfg = TrainConfig {
        arch,
        batch_size: b,
        ..TrainConfig::default()
    };
    let data = mnist_train().unwrap().take(256).unwrap();
    let mut t = Trainer::new(cfg.clone(), data.clone(), &Device::Cpu).unwrap();
    t.step().unwrap();
    let x = data.images().narrow(0, 0, b).unwrap();
    let ts = Tensor::full(500f32, b, &Device::Cpu).unwrap();
    let den = t.ema_denoiser().unwrap();
    let n = Tensor::randn(0f32, 1.0, x.shape(), &Device::Cpu).unwrap();
    for _ in 0..2 {
        let c0 = cpu();
        let _ = den.net().forward_t(&x, &ts).unwrap();
        let c1 = cpu();
        let loss = t.loss(&x, &n, &vec![1.0; b]).unwrap();
        let c2 = cpu();
        let _g = loss.backward().unwrap();
        let c3 = cpu();
        let w = Instant::now();
        t.step().unwrap();
        let (w4, c4) = (w.elapsed().as_secs_f64(), cpu());
        eprintln!(
            "{name} batch {b} (CPU seconds): forward {:.2}; loss forward {:.2} + backward {:.2}; \
             full step {:.2} ({w4:.2} s wall)",
            c1 - c0,
            c2 - c1,
            c3 - c2,
            c4 - c3
        );
    }
}

/// Forward/backward times of single layers at digits32's largest resolution (batch 32).
fn measure_op_times() {
    use candle_core::Module;
    use std::time::Instant;
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
    let b = 32;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, 32, 32, 32), &dev).unwrap()).unwrap();
    let conv = candle_nn::conv2d(
        32,
        32,
        3,
        candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        },
        vb.pp("c"),
    )
    .unwrap();
    let gn = candle_nn::group_norm(32, 32, 1e-5, vb.pp("g")).unwrap();
    let time = |what: &str, f: &dyn Fn() -> Tensor| {
        let _ = f();
        let t0 = Instant::now();
        let y = f();
        let fw = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let _g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        eprintln!(
            "{what}: fwd {:.1} ms, bwd {:.1} ms",
            fw * 1e3,
            t1.elapsed().as_secs_f64() * 1e3
        );
    };
    time("conv 32->32 3x3 @32x32", &|| {
        conv.forward(x.as_tensor()).unwrap()
    });
    time("groupnorm", &|| gn.forward(x.as_tensor()).unwrap());
    time("silu", &|| x.as_tensor().silu().unwrap());
    time("add", &|| (x.as_tensor() + x.as_tensor()).unwrap());
    time("avgpool", &|| x.as_tensor().avg_pool2d(2).unwrap());
    time("cat", &|| {
        Tensor::cat(&[x.as_tensor(), x.as_tensor()], 1).unwrap()
    });
}
