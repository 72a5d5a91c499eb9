//! Training infrastructure: the MNIST split, image folders, the optimiser and EMA, exact resume,
//! checkpoints that load as `--prior adm:…`, clear errors.

use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer;
use daps::data::{
    load_image_folder, mnist_heldout, mnist_range, mnist_train, save_grid, DataSpec, ImageSet,
    MNIST_COUNT, MNIST_HELDOUT,
};
use daps::prior::spec::PriorSpec;
use daps::prior::Denoiser;
use daps::sampler::heun::{heun_sample, EdmGrid};
use daps::train::{
    adamw_update, adm_config_json, ema_beta, ema_update, preset, AdamHyper, TrainConfig, Trainer,
    CONFIG_FILE, MODEL_FILE,
};
use std::path::PathBuf;

mod common;
use common::{tmp_dir, vec32};

/// 64 digits average-pooled to 8×8, for the `tiny` preset.
fn tiny_data() -> ImageSet {
    let x = mnist_train().unwrap().images().narrow(0, 0, 64).unwrap();
    ImageSet::from_tensor(x.avg_pool2d(4).unwrap(), "tiny digits").unwrap()
}

fn tiny_config(steps: u64) -> TrainConfig {
    TrainConfig {
        arch: adm_config_json(&preset("tiny").unwrap()),
        batch_size: 8,
        steps,
        lr: 2e-3,
        warmup_steps: 2,
        checkpoint_every: steps.max(1),
        sample_count: 4,
        sample_steps: 3,
        seed: 7,
        ..TrainConfig::default()
    }
}

#[test]
fn mnist_split_sizes_disjoint_range_padding() {
    let train = mnist_train().unwrap();
    let held = mnist_heldout().unwrap();
    assert_eq!(train.len(), MNIST_COUNT - MNIST_HELDOUT);
    assert_eq!(held.len(), MNIST_HELDOUT);
    assert!(held.len() >= 500);
    assert_eq!(train.images().dims(), &[9000, 1, 32, 32]);
    assert_eq!(held.images().dims(), &[1000, 1, 32, 32]);
    for set in [&train, &held] {
        let v = vec32(set.images());
        let (lo, hi) = v
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        assert_eq!(lo, -1.0);
        assert!(hi == 1.0, "max {hi}");
        // the 2-pixel border is background
        let x = set.images();
        for (dim, start) in [(2, 0), (2, 30), (3, 0), (3, 30)] {
            let border = vec32(&x.narrow(dim, start, 2).unwrap());
            assert!(border.iter().all(|&b| b == -1.0), "border {dim} {start}");
        }
        // every class is present
        let labels = set.labels().unwrap();
        assert!((0..10).all(|d| labels.contains(&d)));
    }
    // Disjoint: no held-out image equals a training image (compare exact pixel bytes).
    use std::collections::HashSet;
    let key = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let tv = vec32(train.images());
    let seen: HashSet<Vec<u32>> = tv.chunks(1024).map(key).collect();
    let hv = vec32(held.images());
    let dup = hv.chunks(1024).filter(|c| seen.contains(&key(c))).count();
    assert_eq!(dup, 0, "{dup} held-out digits also in the training split");
    // The split is the fixed tail of the stored order.
    let tail = mnist_range(MNIST_COUNT - 3..MNIST_COUNT).unwrap();
    assert_eq!(
        vec32(tail.images()),
        vec32(&held.images().narrow(0, MNIST_HELDOUT - 3, 3).unwrap())
    );
    // --data digits serves the training split only.
    let d = DataSpec::Digits.load(32, None).unwrap();
    assert_eq!(d.len(), train.len());
}

#[test]
fn image_folder_loading() {
    let dir = tmp_dir("train", "folder");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    // a 40×20 red/blue RGB image and a 16×16 gray ramp in a subfolder
    let rgb = image::RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    rgb.save(dir.join("a.png")).unwrap();
    let gray = image::GrayImage::from_fn(16, 16, |x, _| image::Luma([(x * 16) as u8]));
    gray.save(dir.join("sub/b.PNG")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();

    let set = load_image_folder(&dir, 8, None).unwrap();
    assert_eq!(set.images().dims(), &[2, 3, 8, 8]);
    let v = vec32(set.images());
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    // a.png: shorter side 20 → 8, width 16, centre crop keeps 4 red and 4 blue columns
    let a = set.images().get(0).unwrap();
    let red = vec32(&a.get(0).unwrap().narrow(1, 0, 2).unwrap());
    let blue = vec32(&a.get(2).unwrap().narrow(1, 6, 2).unwrap());
    assert!(red.iter().all(|&x| x > 0.9), "{red:?}");
    assert!(blue.iter().all(|&x| x > 0.9), "{blue:?}");
    // b.PNG: gray, so all channels equal, ramp increasing left to right
    let b = set.images().get(1).unwrap();
    assert_eq!(vec32(&b.get(0).unwrap()), vec32(&b.get(2).unwrap()));
    let row = vec32(&b.get(0).unwrap().get(4).unwrap());
    assert!(row.windows(2).all(|w| w[1] >= w[0]), "{row:?}");

    let g = load_image_folder(&dir.join("sub"), 16, None).unwrap();
    assert_eq!(g.images().dims(), &[1, 1, 16, 16]);
    assert_eq!(
        vec32(&g.images().get(0).unwrap().get(0).unwrap().get(0).unwrap())[1],
        16.0 / 127.5 - 1.0
    );
    let forced = load_image_folder(&dir, 8, Some(1)).unwrap();
    assert_eq!(forced.channels(), 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn clear_errors() {
    let missing = load_image_folder(&PathBuf::from("/nonexistent/daps-images"), 8, None)
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("/nonexistent/daps-images") && missing.contains("not found"),
        "{missing}"
    );
    let empty = tmp_dir("train", "empty");
    std::fs::write(empty.join("readme.txt"), "x").unwrap();
    let e = load_image_folder(&empty, 8, None).unwrap_err().to_string();
    assert!(e.contains("no PNG or JPEG images"), "{e}");
    std::fs::write(empty.join("broken.png"), "definitely not a png").unwrap();
    let e = load_image_folder(&empty, 8, None).unwrap_err().to_string();
    assert!(e.contains("broken.png"), "{e}");
    let e = load_image_folder(&empty, 8, Some(2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 image channels"), "{e}");

    let nostate = tmp_dir("train", "nostate");
    let e = Trainer::resume(&nostate, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("train-state.safetensors") && e.contains("no training state"),
        "{e}"
    );
    let e = DataSpec::Digits.load(64, None).unwrap_err().to_string();
    assert!(e.contains("32×32"), "{e}");
    let e = Trainer::new(
        tiny_config(1),
        mnist_train().unwrap().take(4).unwrap(),
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("1×32×32") && e.contains("1×8×8"), "{e}");
    std::fs::remove_dir_all(&empty).ok();
    std::fs::remove_dir_all(&nostate).ok();
}

#[test]
fn config_json_round_trips() {
    for name in ["digits32", "small64", "tiny"] {
        let cfg = preset(name).unwrap();
        let back =
            daps::prior::adm::AdmConfig::from_create_model_args(&adm_config_json(&cfg)).unwrap();
        assert_eq!(back, cfg, "{name}");
    }
    assert!(preset("huge").is_err());
}

#[test]
fn ema_formula() {
    // EDM: half-life min(500 kimg, 0.05·nimg); β = 0.5^(batch / half-life)
    assert_eq!(ema_beta(32, 0, 500.0, Some(0.05)), 0.0);
    let b = ema_beta(32, 64_000, 500.0, Some(0.05));
    assert!((b - 0.5f64.powf(32.0 / 3200.0)).abs() < 1e-15);
    let b = ema_beta(32, 1 << 40, 500.0, Some(0.05));
    assert!((b - 0.5f64.powf(32.0 / 500_000.0)).abs() < 1e-15);
    assert!((ema_beta(10, 5, 1.0, None) - 0.5f64.powf(0.01)).abs() < 1e-15);
    let ema = Tensor::new(&[1.0f32, -2.0, 4.0], &Device::Cpu).unwrap();
    let th = Tensor::new(&[3.0f32, 0.0, 4.0], &Device::Cpu).unwrap();
    let out = vec32(&ema_update(&ema, &th, 0.75).unwrap());
    assert_eq!(out, vec![1.5, -1.5, 4.0]);

    // Trainer: after one step from init, EMA = init·β + θ₁·(1 − β) with β = 0 (ramp-up)
    let mut t = Trainer::new(tiny_config(2), tiny_data(), &Device::Cpu).unwrap();
    let w0 = t.weights().unwrap();
    t.step().unwrap();
    let (w1, e1) = (t.weights().unwrap(), t.ema_weights());
    for (k, v) in &w1 {
        assert_eq!(vec32(v), vec32(&e1[k]), "{k}");
    }
    t.step().unwrap();
    let (w2, e2) = (t.weights().unwrap(), t.ema_weights());
    let beta = ema_beta(8, 8, 500.0, Some(0.05));
    for (k, v) in &w2 {
        let want = vec32(&ema_update(&w1[k], v, beta).unwrap());
        assert_eq!(vec32(&e2[k]), want, "{k}");
    }
    assert!(w0.keys().any(|k| vec32(&w0[k]) != vec32(&w2[k])));
}

#[test]
fn adamw_matches_candle_nn() {
    let dev = Device::Cpu;
    let init = Tensor::new(&[[0.3f32, -1.2], [2.0, 0.1]], &dev).unwrap();
    let var = Var::from_tensor(&init).unwrap();
    let mut opt = candle_nn::AdamW::new(
        vec![var.clone()],
        candle_nn::ParamsAdamW {
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    let (mut th, mut m, mut v) = (
        init.clone(),
        init.zeros_like().unwrap(),
        init.zeros_like().unwrap(),
    );
    for t in 1..=5u64 {
        let loss = (var.as_tensor().sqr().unwrap().sum_all().unwrap()
            + var.as_tensor().sum_all().unwrap())
        .unwrap();
        let g = loss
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .clone();
        opt.step(&loss.backward().unwrap()).unwrap();
        let h = AdamHyper {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            t,
        };
        (th, m, v) = adamw_update(&th, &m, &v, &g, &h).unwrap();
        assert_eq!(vec32(&th), vec32(var.as_tensor()), "step {t}");
    }
    let _ = (m, v);
}

#[test]
fn tiny_training_lowers_fixed_batch_loss() {
    let data = tiny_data();
    let fixed = data.images().narrow(0, 0, 16).unwrap();
    let mut cfg = tiny_config(30);
    cfg.warmup_steps = 5;
    let mut t = Trainer::new(cfg, data, &Device::Cpu).unwrap();
    let before = t.eval_loss(&fixed, 1).unwrap();
    for _ in 0..30 {
        t.step().unwrap();
    }
    let after = t.eval_loss(&fixed, 1).unwrap();
    eprintln!("fixed-batch loss {before:.4} → {after:.4}");
    assert!(after < 0.8 * before, "{before} → {after}");
    assert_eq!(t.history().len(), 30);
}

#[test]
fn resume_is_exact() {
    let n = 6;
    let dev = Device::Cpu;
    let mut straight = Trainer::new(tiny_config(n), tiny_data(), &dev).unwrap();
    for _ in 0..n {
        straight.step().unwrap();
    }
    let dir = tmp_dir("train", "resume");
    let mut first = Trainer::new(tiny_config(n), tiny_data(), &dev).unwrap();
    for _ in 0..n / 2 {
        first.step().unwrap();
    }
    first.save(&dir).unwrap();
    drop(first);
    let mut resumed = Trainer::resume_with_data(&dir, tiny_data(), &dev).unwrap();
    assert_eq!(resumed.steps_done(), n / 2);
    while resumed.steps_done() < n {
        resumed.step().unwrap();
    }
    let (a, b) = (straight.weights().unwrap(), resumed.weights().unwrap());
    let (ea, eb) = (straight.ema_weights(), resumed.ema_weights());
    for k in a.keys() {
        assert_eq!(vec32(&a[k]), vec32(&b[k]), "weights {k}");
        assert_eq!(vec32(&ea[k]), vec32(&eb[k]), "EMA {k}");
    }
    assert_eq!(straight.history(), resumed.history());
    // other data are refused
    let other = ImageSet::from_tensor(tiny_data().images().affine(0.5, 0.0).unwrap(), "x").unwrap();
    let e = Trainer::resume_with_data(&dir, other, &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("differ"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn checkpoint_loads_as_prior_and_denoises() {
    let dev = Device::Cpu;
    let dir = tmp_dir("train", "ckpt");
    let mut t = Trainer::new(tiny_config(3), tiny_data(), &dev).unwrap();
    for _ in 0..3 {
        t.step().unwrap();
    }
    t.save(&dir).unwrap();
    assert!(dir.join(MODEL_FILE).is_file() && dir.join(CONFIG_FILE).is_file());
    let spec: PriorSpec = format!("adm:{}", dir.join(MODEL_FILE).display())
        .parse()
        .unwrap();
    let prior = spec.load(&dev).unwrap();
    assert_eq!(prior.sample_shape(), Some(vec![1, 8, 8]));
    let x = tiny_data().images().narrow(0, 0, 4).unwrap();
    let noisy = (&x + Tensor::randn(0f32, 0.5, x.shape(), &dev).unwrap()).unwrap();
    let d = prior.denoise(&noisy, 0.5).unwrap();
    assert_eq!(d.dims(), x.dims());
    // the loaded prior is the trainer's EMA network, clamped to the data range [−1, 1] as its
    // model.json says ("clip_denoised": true)
    let json = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
    assert!(json.contains("\"clip_denoised\": true"), "{json}");
    let d2 = t
        .ema_denoiser()
        .unwrap()
        .with_clip(1.0)
        .denoise(&noisy, 0.5)
        .unwrap();
    assert_eq!(vec32(&d), vec32(&d2));
    assert!(vec32(&d).iter().all(|v| v.abs() <= 1.0));
    assert!(vec32(&d).iter().all(|v| v.is_finite()));
    // Heun samples of it, and a grid
    let grid = EdmGrid::new(3);
    assert_eq!(grid.nfe(), 5);
    let s = heun_sample(
        prior.as_ref(),
        &[4, 1, 8, 8],
        &grid,
        &mut daps::noise::SeededNoise::new(0),
        &dev,
    )
    .unwrap();
    assert!(vec32(&s).iter().all(|v| v.is_finite()));
    save_grid(&s, None, Some((-1.0, 1.0)), dir.join("g.png")).unwrap();
    let img = image::open(dir.join("g.png")).unwrap();
    assert_eq!((img.width(), img.height()), (2 * 10 + 2, 2 * 10 + 2));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn heun_matches_the_exact_flow_on_a_gaussian() {
    // For x0 ~ N(0, s²) per pixel, D(x, σ) = s²/(s²+σ²)·x; the ODE maps N(0, σ_max²+s²)… to N(0, s²).
    struct G(f64, Device);
    impl Denoiser for G {
        fn denoise(&self, x: &Tensor, sigma: f64) -> daps::Result<Tensor> {
            let k = self.0 * self.0 / (self.0 * self.0 + sigma * sigma);
            Ok((x * k)?)
        }
        fn device(&self) -> &Device {
            &self.1
        }
        fn name(&self) -> String {
            "gaussian".into()
        }
    }
    let g = G(0.5, Device::Cpu);
    let x = heun_sample(
        &g,
        &[64],
        &EdmGrid::new(200),
        &mut daps::noise::SeededNoise::new(3),
        &Device::Cpu,
    )
    .unwrap();
    // The exact flow scales x by √(s² + σ²): x(0) = σ_max·n · s/√(s² + σ_max²). (Heun's
    // error at 200 steps is 0.04% here; at 18 steps it is 5.5% for this narrow Gaussian.)
    use daps::noise::NoiseSource;
    let n = daps::noise::SeededNoise::new(3)
        .randn(&candle_core::Shape::from(64usize), &Device::Cpu)
        .unwrap();
    let k = 80.0 * 0.5 / (0.25f64 + 6400.0).sqrt();
    for (a, b) in vec32(&x).iter().zip(vec32(&n)) {
        assert!(
            (*a as f64 - k * b as f64).abs() < 1e-3 * (k * b as f64).abs() + 1e-6,
            "{a} vs {}",
            k * b as f64
        );
    }
}

#[test]
fn sigma_distributions_and_edm_loss_through_vp_denoiser() {
    use daps::train::{vp_sigma, Objective};
    let dev = Device::Cpu;
    let mut cfg = tiny_config(1);
    cfg.objective = Objective::Edm;
    let mut t = Trainer::new(cfg.clone(), tiny_data(), &dev).unwrap();
    // EDM: ln σ ~ N(−1.2, 1.2²)
    let ln: Vec<f64> = t.sigmas_at(0, 20_000).iter().map(|s| s.ln()).collect();
    let mean = ln.iter().sum::<f64>() / ln.len() as f64;
    let sd = (ln.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / ln.len() as f64).sqrt();
    assert!(
        (mean + 1.2).abs() < 0.03 && (sd - 1.2).abs() < 0.03,
        "{mean} {sd}"
    );
    assert_ne!(t.sigmas_at(0, 4), t.sigmas_at(1, 4));
    // After one step the EMA equals the weights (β = 0), so the EMA denoiser is the trained net:
    // loss = mean_b λ(σ)·mean((D(x0 + σn, σ) − x0)²), λ = (σ² + σ_d²)/(σ·σ_d)².
    t.step().unwrap();
    let x0 = tiny_data().images().narrow(0, 0, 4).unwrap();
    let n = Tensor::randn(0f32, 1.0, x0.shape(), &dev).unwrap();
    let sigma = 0.7f64;
    let loss = t
        .loss(&x0, &n, &[sigma; 4])
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let den = t.ema_denoiser().unwrap();
    let d = den
        .denoise(&(&x0 + (&n * sigma).unwrap()).unwrap(), sigma)
        .unwrap();
    let mse = (d - &x0)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let lambda = (sigma * sigma + 0.25) / (sigma * sigma * 0.25);
    assert!(
        (loss - lambda * mse).abs() < 1e-4 * loss,
        "{loss} vs {}",
        lambda * mse
    );
    // DDPM: σ = σ_VP(t), t ~ U(t_min, 1); within [σ_VP(t_min), σ_VP(1) ≈ 152]
    let t2 = Trainer::new(tiny_config(1), tiny_data(), &dev).unwrap();
    let s = t2.sigmas_at(0, 5000);
    let hi = vp_sigma(daps::prior::vp::VpSchedule::ddpm(), 1.0);
    assert!((hi - 152.0).abs() < 1.0, "{hi}");
    assert!(s.iter().all(|&x| x > 0.0 && x <= hi));
    let frac_above_100 = s.iter().filter(|&&x| x > 100.0).count() as f64 / s.len() as f64;
    assert!(frac_above_100 > 0.02, "{frac_above_100}");
}

#[test]
fn cli_train_resume_sample() {
    let dir = tmp_dir("train", "cli");
    let data = dir.join("imgs");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..6u32 {
        image::GrayImage::from_fn(8, 8, |x, y| {
            image::Luma([((x * 30 + y * i * 5) % 256) as u8])
        })
        .save(data.join(format!("{i}.png")))
        .unwrap();
    }
    let out = dir.join("run");
    let daps = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_daps"))
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    };
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let (ok, text) = daps(&[
        "train",
        "--data",
        d,
        "--preset",
        "tiny",
        "--out",
        o,
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "1",
        "--sample-count",
        "2",
        "--sample-steps",
        "2",
    ]);
    assert!(ok, "{text}");
    for f in [
        "model.safetensors",
        "model.json",
        "train-state.safetensors",
        "log.csv",
        "samples-step0000001.png",
        "samples-step0000002.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing: {text}");
    }
    let (ok, text) = daps(&["train", "--data", d, "--preset", "tiny", "--out", o]);
    assert!(!ok && text.contains("--resume"), "{text}");
    let (ok, text) = daps(&["train", "--resume", o, "--lr", "0.1"]);
    assert!(!ok && text.contains("--lr cannot be changed"), "{text}");
    let (ok, text) = daps(&["train", "--resume", o, "--steps", "3"]);
    assert!(ok && text.contains("steps 2..3"), "{text}");
    let png = dir.join("s.png");
    let spec = format!("adm:{}/model.safetensors", o);
    let (ok, text) = daps(&[
        "sample",
        "--prior",
        &spec,
        "--out",
        png.to_str().unwrap(),
        "--n",
        "3",
        "--steps",
        "2",
    ]);
    assert!(ok && png.is_file(), "{text}");
    let (ok, text) = daps(&["train", "--resume", dir.to_str().unwrap()]);
    assert!(!ok && text.contains("no training state"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_step_leaves_no_autograd_graph_behind() {
    // The optimizer state and the EMA are plain tensors after a step: if they kept the op that
    // made them, each step would hold on to the previous one's graph (a leak that ran the GPU out
    // of memory within 100 steps).
    let dev = Device::Cpu;
    let mut t = Trainer::new(tiny_config(2), tiny_data(), &dev).unwrap();
    t.step().unwrap();
    t.step().unwrap();
    for (k, e) in t.ema_weights() {
        assert!(!e.track_op(), "EMA {k} still tracks its op");
    }
}
