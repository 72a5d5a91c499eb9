//! `daps bench …`: benchmarks with known answers (Gaussian mixtures, the 2-D toy) and speed.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use daps::bench::gmm::{GmmBenchConfig, Method, Record};
use daps::bench::toy2d::Toy2dConfig;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct GmmArgs {
    /// A small size for CI (d = 8, d_y ∈ {1, 2}, 3 problems, 300 samples, 40 × 5 NFE, 20 Langevin steps).
    #[arg(long)]
    pub quick: bool,
    /// Dimensions (comma-separated, even).
    #[arg(long, value_delimiter = ',')]
    pub d: Option<Vec<usize>>,
    /// Measurement dimensions (comma-separated).
    #[arg(long = "dy", alias = "d-y", value_delimiter = ',')]
    pub dy: Option<Vec<usize>>,
    #[arg(long)]
    pub problems: Option<usize>,
    #[arg(long)]
    pub samples: Option<usize>,
    /// Annealing steps N (DPS runs N × ode-steps steps).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub ode_steps: Option<usize>,
    /// Langevin steps per annealing step.
    #[arg(long)]
    pub mcmc_steps: Option<usize>,
    /// Langevin step size in units of τ² (τ = σ_y of each problem).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub lr_min_ratio: Option<f64>,
    /// Top of the annealing (DAPS starts from N(0, σ_max² I)).
    #[arg(long)]
    pub sigma_max: Option<f64>,
    /// DPS step size ζ.
    #[arg(long)]
    pub zeta: Option<f64>,
    /// Rows to run: oracle, prior, and samplers of `daps methods`; `all` = oracle, prior and
    /// every sampler that supports the problems [default: oracle, prior, daps-exact, daps, dps].
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// Particle counts K of daps-smc, twisted-smc (per sample), mcgdiff and fps (comma-separated;
    /// one row each) [default: daps-smc 4; twisted-smc the most within N × M NFE at each d_y;
    /// mcgdiff, fps 64, --quick 32].
    #[arg(long, value_delimiter = ',')]
    pub particles: Option<Vec<usize>>,
    /// Write the records as a JSON array (rewritten after each completed row).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the rows already in --json (same d, d_y, method, problems, samples and NFE) and run
    /// only the missing ones: an interrupted run continues where it stopped.
    #[arg(long, requires = "json")]
    pub resume: bool,
    /// `k/n`: run only every n-th row of the table (rows counted over d, d_y, method), starting
    /// at the k-th, e.g. one Slurm array task each; the shards' records together are the table's.
    #[arg(long)]
    pub shard: Option<String>,
}

#[derive(Args)]
pub struct Toy2dArgs {
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// DPS step size ζ.
    #[arg(long)]
    pub zeta: Option<f64>,
}

#[derive(Args)]
pub struct SpeedArgs {
    /// Batch 1 only and one timed call per figure (about a minute on 2 cores).
    #[arg(long)]
    pub quick: bool,
    /// Write the figures as JSON (keys: see `daps::bench::speed::SpeedReport`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Timed calls per figure without --quick (the best is reported).
    #[arg(long, default_value_t = 2)]
    pub reps: usize,
    /// A tiny 32×32 ADM instead of FFHQ-256 (for tests; the JSON says so).
    #[arg(long, hide = true)]
    pub tiny: bool,
    /// Annealing levels timed per task for the digits DAPS-1K figures (10 held-out digits as
    /// one batch; 200 levels in a real solve, each costing the same).
    #[arg(long, default_value_t = 2)]
    pub digits_levels: usize,
    /// Digits per batch in the digits DAPS-1K figures (held-out digits 9000..; 1 times a
    /// one-digit solve).
    #[arg(long, default_value_t = daps::bench::speed::DIGITS_BATCH)]
    pub digits_batch: usize,
    /// Only the digits DAPS-1K figures (no GEMM, FFHQ-256 or mixture figures).
    #[arg(long)]
    pub digits_only: bool,
    /// Turn the Winograd path of 3×3 convolutions off for the whole run (the default-path
    /// figures then time im2col; the `*_winograd` keys still time Winograd).
    #[arg(long)]
    pub no_winograd: bool,
    /// Also write the digits, their measurements and D(x, σ = 1) to this .safetensors file
    /// (and the presets to its .json twin) for scripts/speed-digits-pytorch.py.
    #[arg(long)]
    pub digits_data: Option<PathBuf>,
    /// `cuda[:N]` (a `--features cuda` build) adds the GPU figures (`gpu_*` keys) to the CPU
    /// ones: the FFHQ-256 network at batch 1 and 8, one DAPS level, DAPS-1K and DPS-1000 per
    /// image at batch 1 and 16 (--digits-levels levels / 5× as many DPS steps, scaled up).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args)]
pub struct PriorArgs {
    /// The prior [default: the built-in digits prior].
    #[arg(long)]
    pub prior: Option<String>,
    /// Held-out digits (9000..) for the denoising error; the same number of training digits
    /// (0..) are reported beside them.
    #[arg(long, default_value_t = 500)]
    pub digits: usize,
    /// Images per network call for the denoising error.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Timed repetitions per figure (the best is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Also time the FFHQ-256 ADM architecture (random weights, batch 1).
    #[arg(long)]
    pub ffhq: bool,
    /// Where the network runs: cpu, or cuda[:N] (a `--features cuda` build).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args)]
pub struct LatentArgs {
    /// A latent prior (`ldm:CKPT:CONFIG.yaml`) [default: the FFHQ-256 LDM-VQ4 architecture
    /// (DAPS's ffhq256ldm.yaml) with random weights].
    #[arg(long)]
    pub prior: Option<String>,
    /// Image side in pixels (square RGB images).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Where the networks run: cpu, or cuda[:N] (a `--features cuda` build).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `daps bench latent`.
pub fn latent(a: LatentArgs) -> Result<()> {
    use daps::bench::prior::{latent_times, random_ldm};
    use daps::prior::ldm::{LdmConfig, LdmPrior};
    use daps::prior::spec::PriorSpec;
    let dev = daps::device::parse(&a.device)?;
    let prior = match &a.prior {
        None => random_ldm(&LdmConfig::ffhq256(), 0.02, &dev)?,
        Some(s) => match s.parse::<PriorSpec>()? {
            PriorSpec::Ldm { ckpt, config } => LdmPrior::from_files(&ckpt, &config, &dev)?,
            _ => bail!("--prior: `daps bench latent` takes a latent prior, ldm:CKPT:CONFIG.yaml"),
        },
    };
    println!("prior: {}", daps::prior::Denoiser::name(&prior));
    let shape = [3, a.size, a.size];
    let t = latent_times(&prior, &shape)?;
    println!(
        "3×{0}×{0} images, batch 1, one timed call each: denoiser {1:.2} s, decode {2:.2} s, \
         decode + VJP {3:.2} s",
        a.size, t.nfe, t.decode, t.decode_vjp
    );
    println!("LatentDAPS-100 (50 levels × 2 NFE) per image, with each task's latent-daps preset:");
    for task in daps::task::TASKS {
        if !daps::task::has_preset(task.name, "latent-daps") {
            continue;
        }
        let daps::sampler::Method::LatentDaps(c) =
            daps::task::preset_method(task.name, "latent-daps")?
        else {
            continue;
        };
        let secs = t.run_seconds(c.annealing_steps, c.ode_steps, c.mcmc_steps);
        println!(
            "  {:<16} {:>3} HMC steps: {:>8.0} s (+ the operator), denoiser {:.0}% of it",
            task.name,
            c.mcmc_steps,
            secs,
            100.0 * (c.annealing_steps * c.ode_steps) as f64 * t.nfe / secs
        );
    }
    Ok(())
}

pub fn gmm(a: GmmArgs) -> Result<()> {
    let mut cfg = if a.quick {
        GmmBenchConfig::quick()
    } else {
        GmmBenchConfig::default()
    };
    if let Some(v) = a.d {
        cfg.dims = v;
    }
    if let Some(v) = a.dy {
        cfg.dys = v;
    }
    macro_rules! set {
        ($($f:ident <- $v:expr),*) => { $(if let Some(v) = $v { cfg.$f = v; })* };
    }
    set!(problems <- a.problems, samples <- a.samples, annealing_steps <- a.steps, ode_steps <- a.ode_steps,
         mcmc_steps <- a.mcmc_steps, lr <- a.lr, lr_min_ratio <- a.lr_min_ratio,
        sigma_max <- a.sigma_max, dps_zeta <- a.zeta, particles <- a.particles);
    if let Some(ms) = a.methods {
        cfg.methods = Vec::new();
        for s in &ms {
            if s == "all" {
                cfg.methods.extend(Method::all(&cfg, &Device::Cpu)?);
            } else {
                cfg.methods.push(Method::parse(s)?);
            }
        }
    }
    if cfg.problems == 0 || cfg.samples < 2 {
        bail!("need at least 1 problem and 2 samples");
    }
    if let Some(p) = &a.json {
        super::outputs::file("--json", p, &["json"], &Default::default())?;
    }
    let shard: daps::eval::Shard = match &a.shard {
        Some(s) => s.parse()?,
        None => daps::eval::Shard::WHOLE,
    };
    // Rows already in --json, kept (and skipped) with --resume.
    let mut done: Vec<Record> = match (&a.json, a.resume) {
        (Some(p), true) if p.exists() => {
            let text = std::fs::read_to_string(p)?;
            serde_json::from_str(&text).with_context(|| {
                format!("--resume: {} is not a bench gmm record list", p.display())
            })?
        }
        _ => Vec::new(),
    };
    let kept = done.len();
    println!(
        "Gaussian-mixture benchmark: {} problems × {} samples; DAPS {} × {} NFE, {} Langevin steps, lr {}·τ² (min ratio {}); DPS {} steps, ζ = {}",
        cfg.problems, cfg.samples, cfg.annealing_steps, cfg.ode_steps, cfg.mcmc_steps, cfg.lr, cfg.lr_min_ratio,
        cfg.annealing_steps * cfg.ode_steps, cfg.dps_zeta
    );
    println!(
        "{:>5} {:>4}  {:<13} {:>20} {:>20} {:>7} {:>12}",
        "d", "d_y", "method", "SW (±95%)", "mode TV (±95%)", "NFE", "s/problem"
    );
    let started = std::time::Instant::now();
    let print = |r: &Record| {
        println!(
            "{:>5} {:>4}  {:<13} {:>11.4} ± {:<6.4} {:>11.4} ± {:<6.4} {:>7} {:>12.3}",
            r.d,
            r.d_y,
            r.method,
            r.sw_mean,
            r.sw_ci95,
            r.tv_mean,
            r.tv_ci95,
            r.nfe,
            r.seconds_per_problem
        );
        std::io::stdout().flush().ok();
    };
    let have: Vec<(usize, usize, String, usize)> = done
        .iter()
        .filter(|r| r.problems == cfg.problems && r.samples == cfg.samples)
        .map(|r| (r.d, r.d_y, r.method.clone(), r.nfe))
        .collect();
    let select = |k: &daps::bench::gmm::RowKey| {
        let resumed = have
            .iter()
            .any(|(d, dy, m, n)| *d == k.d && *dy == k.d_y && m == k.method && *n == k.nfe);
        shard.takes_index(k.index) && !resumed
    };
    for r in done.iter() {
        if have
            .iter()
            .any(|(d, dy, m, _)| *d == r.d && *dy == r.d_y && *m == r.method)
        {
            print(r);
        }
    }
    if kept > 0 {
        println!("({kept} row(s) kept from the --json file)");
    }
    let json = a.json.clone();
    let bar = indicatif::ProgressBar::new((cfg.dims.len() * cfg.dys.len() * cfg.problems) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} problems, {msg} [{elapsed} < {eta}]",
        )
        .expect("valid template"),
    );
    let result = daps::bench::gmm::run(
        &cfg,
        &Device::Cpu,
        select,
        |d, dy, i| {
            if i > 0 || d != cfg.dims[0] || dy != cfg.dys[0] {
                bar.inc(1);
            }
            bar.set_message(format!("d = {d}, d_y = {dy}"));
        },
        |r| {
            bar.suspend(|| print(r));
            done.push(r.clone());
            if let Some(p) = &json {
                write_json(p, &done).map_err(|e| daps::Error::msg(format!("{e:#}")))?;
            }
            Ok(())
        },
    );
    bar.finish_and_clear();
    println!("total wall time {:.1} s", started.elapsed().as_secs_f64());
    if let Err(e) = result {
        if let Some(p) = &json {
            eprintln!(
                "{} completed rows are in {} (rerun with --resume to continue)",
                done.len(),
                p.display()
            );
        }
        return Err(e.into());
    }
    Ok(())
}

fn write_json(path: &PathBuf, records: &[Record]) -> Result<()> {
    daps::io::atomic_write(path, serde_json::to_string_pretty(records)?.as_bytes())?;
    Ok(())
}

pub fn toy2d(a: Toy2dArgs) -> Result<()> {
    let mut cfg = Toy2dConfig {
        samples: a.samples,
        repeats: a.repeats,
        ..Toy2dConfig::default()
    };
    if let Some(z) = a.zeta {
        cfg.dps.zeta = z;
    }
    if cfg.repeats == 0 || cfg.samples < 2 {
        bail!("need at least 1 repeat and 2 samples");
    }
    println!(
        "2-D trap toy: {} samples, {} repeats; DAPS {} × {} NFE, {} Langevin steps, τ = {}; DPS {} steps, ζ = {}",
        cfg.samples, cfg.repeats, cfg.daps.annealing_steps, cfg.daps.ode_steps, cfg.daps.mcmc_steps, cfg.daps.tau,
        cfg.dps.steps, cfg.dps.zeta
    );
    let rows = daps::bench::toy2d::run(&cfg, &Device::Cpu, |r| {
        eprintln!(
            "repeat {}/{}: sampling, then the exact W1 of each method (an assignment problem)",
            r + 1,
            cfg.repeats
        )
    })?;
    println!("{:<13} {:>18} {:>10}", "method", "W1 (±95%)", "seconds");
    for r in rows {
        match &r.skipped {
            Some(why) => println!("{:<13} not run: {why}", r.method),
            None => println!(
                "{:<13} {:>9.4} ± {:<6.4} {:>10.3}",
                r.method, r.w1_mean, r.w1_ci95, r.seconds
            ),
        }
    }
    Ok(())
}

pub fn speed(a: SpeedArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("--reps must be ≥ 1");
    }
    if a.digits_levels == 0 {
        bail!("--digits-levels must be ≥ 1");
    }
    if a.digits_batch == 0 || a.digits_batch > 1000 {
        bail!(
            "--digits-batch must be 1..=1000 (the held-out digits), not {}",
            a.digits_batch
        );
    }
    let dev = daps::device::parse(&a.device)?;
    let gpu = (!dev.is_cpu()).then_some(dev);
    if gpu.is_some() && a.digits_only {
        bail!(
            "--device {} times the full run; drop --digits-only",
            a.device
        );
    }
    if let Some(p) = &a.json {
        super::outputs::file("--json", p, &["json"], &Default::default())?;
    }
    if let Some(p) = &a.digits_data {
        super::outputs::file("--digits-data", p, &["safetensors"], &Default::default())?;
    }
    daps::nn::fastops::set_winograd(!a.no_winograd);
    if a.digits_only {
        return speed_digits(&a);
    }
    let settings = daps::bench::speed::SpeedSettings {
        quick: a.quick,
        tiny: a.tiny,
        reps: a.reps,
        digits_levels: a.digits_levels,
        digits_batch: a.digits_batch,
        digits_data: a.digits_data.clone(),
        gpu,
    };
    let r = daps::bench::speed::run(&settings, &mut |what| eprintln!("timing {what} …"))?;
    let pct = |f: f64| 100.0 * f;
    println!(
        "{} ({} cores), {} threads; daps {}",
        r.cpu_model, r.cores, r.threads, r.version
    );
    println!(
        "GEMM {n}×{n} f32: {:.2} ms, {:.1} GFLOP/s",
        r.gemm_ms,
        r.gemm_gflops,
        n = r.gemm_n
    );
    println!(
        "{} ({} parameters): {:.1} GFLOP forward, {:.1} GFLOP forward+backward to the input, per image (counted from the architecture)",
        r.architecture, r.ffhq256_params, r.ffhq256_gflop_forward, r.ffhq256_gflop_forward_backward
    );
    println!(
        "  batch 1: forward {:.0} ms ({:.1} GFLOP/s, {:.0}% of GEMM), forward+backward {:.0} ms ({:.1} GFLOP/s, {:.0}%)",
        r.ffhq256_forward_ms_b1,
        r.ffhq256_forward_gflops_b1,
        pct(r.ffhq256_forward_gemm_fraction_b1),
        r.ffhq256_forward_backward_ms_b1,
        r.ffhq256_forward_backward_gflops_b1,
        pct(r.ffhq256_forward_backward_gemm_fraction_b1)
    );
    if let (Some(f), Some(gf), Some(fb), Some(gfb)) = (
        r.ffhq256_forward_ms_b8,
        r.ffhq256_forward_gflops_b8,
        r.ffhq256_forward_backward_ms_b8,
        r.ffhq256_forward_backward_gflops_b8,
    ) {
        println!(
            "  batch 8: forward {f:.0} ms ({gf:.1} GFLOP/s, {:.0}% of GEMM), forward+backward {fb:.0} ms ({gfb:.1} GFLOP/s, {:.0}%)",
            pct(gf / r.gemm_gflops),
            pct(gfb / r.gemm_gflops)
        );
    }
    println!(
        "digits prior: batch 1 forward {:.1} ms, forward+backward {:.1} ms; batch 16 forward {:.1} ms, forward+backward {:.1} ms",
        r.digits_forward_ms_b1,
        r.digits_forward_backward_ms_b1,
        r.digits_forward_ms_b16,
        r.digits_forward_backward_ms_b16
    );
    println!(
        "3×3 convs by Winograd F(4,3) vs im2col: digits batch 10 forward {:.1} vs {:.1} ms ({:.2}×), FFHQ-256 batch 1 forward {:.0} vs {:.0} ms ({:.2}×)",
        r.digits_forward_ms_b10_winograd,
        r.digits_forward_ms_b10_im2col,
        r.digits_forward_ms_b10_im2col / r.digits_forward_ms_b10_winograd,
        r.ffhq256_forward_ms_b1_winograd,
        r.ffhq256_forward_ms_b1_im2col,
        r.ffhq256_forward_ms_b1_im2col / r.ffhq256_forward_ms_b1_winograd
    );
    let share = |v: f64| pct(v / r.daps_level_total_ms);
    println!(
        "one DAPS level ({}, {:?}, {} NFE + {} Langevin steps): {:.0} ms = network {:.0} ms ({:.0}%) + operator {:.0} ms ({:.0}%) + x0 step {:.0} ms ({:.0}%) + other {:.0} ms ({:.0}%)",
        r.daps_level_task,
        r.daps_level_image,
        r.daps_level_nfe,
        r.daps_level_mcmc_steps,
        r.daps_level_total_ms,
        r.daps_level_network_ms,
        share(r.daps_level_network_ms),
        r.daps_level_operator_ms,
        share(r.daps_level_operator_ms),
        r.daps_level_x0_step_ms,
        share(r.daps_level_x0_step_ms),
        r.daps_level_other_ms,
        share(r.daps_level_other_ms)
    );
    println!(
        "  DAPS-1K (200 levels × 5 NFE) per image ≈ {:.0} s",
        r.daps1k_per_image_estimate_s
    );
    println!(
        "mixture denoiser (K = 25, d = 80, 2000 chains): {:.2} ms per call, {:.0}% of GEMM on its matrix products",
        r.mixture_denoiser_ms,
        pct(r.mixture_denoiser_gemm_fraction)
    );
    print_digits(&r.digits);
    if let Some(g) = &r.gpu {
        print_gpu(g, &r.architecture);
    }
    if let Some(p) = &a.json {
        daps::io::atomic_write(p, serde_json::to_string_pretty(&r)?.as_bytes())?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.digits_data {
        println!("wrote {} (and its .json)", p.display());
    }
    Ok(())
}

/// `bench speed --digits-only`: the digits DAPS-1K figures alone.
fn speed_digits(a: &SpeedArgs) -> Result<()> {
    use daps::bench::speed::{cpu_model, digits_daps1k};
    let r = digits_daps1k(
        a.digits_levels,
        a.digits_batch,
        a.digits_data.as_deref(),
        &mut |what| eprintln!("timing {what} …"),
    )?;
    let threads = rayon::current_num_threads();
    println!(
        "{} , {threads} threads; daps {}",
        cpu_model(),
        env!("CARGO_PKG_VERSION")
    );
    print_digits(&r);
    if let Some(p) = &a.json {
        let mut v = serde_json::to_value(&r)?;
        v["cpu_model"] = cpu_model().into();
        v["threads"] = threads.into();
        v["version"] = env!("CARGO_PKG_VERSION").into();
        daps::io::atomic_write(p, serde_json::to_string_pretty(&v)?.as_bytes())?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.digits_data {
        println!("wrote {} (and its .json)", p.display());
    }
    Ok(())
}

fn print_gpu(g: &daps::bench::speed::GpuReport, architecture: &str) {
    println!("GPU {}: {architecture}", g.gpu_name);
    for (b, f, gf, fb, gfb) in [
        (
            1,
            g.gpu_ffhq256_forward_ms_b1,
            g.gpu_ffhq256_forward_gflops_b1,
            g.gpu_ffhq256_forward_backward_ms_b1,
            g.gpu_ffhq256_forward_backward_gflops_b1,
        ),
        (
            8,
            g.gpu_ffhq256_forward_ms_b8,
            g.gpu_ffhq256_forward_gflops_b8,
            g.gpu_ffhq256_forward_backward_ms_b8,
            g.gpu_ffhq256_forward_backward_gflops_b8,
        ),
    ] {
        println!(
            "  batch {b}: forward {f:.1} ms ({gf:.0} GFLOP/s), forward+backward {fb:.1} ms ({gfb:.0} GFLOP/s)"
        );
    }
    let t = g.gpu_daps_level_total_ms;
    let share = |v: f64| 100.0 * v / t;
    println!(
        "  one DAPS level: {t:.1} ms = network {:.1} ms ({:.0}%) + operator {:.1} ms ({:.0}%) + x0 step {:.1} ms ({:.0}%) + other {:.1} ms ({:.0}%)",
        g.gpu_daps_level_network_ms,
        share(g.gpu_daps_level_network_ms),
        g.gpu_daps_level_operator_ms,
        share(g.gpu_daps_level_operator_ms),
        g.gpu_daps_level_x0_step_ms,
        share(g.gpu_daps_level_x0_step_ms),
        g.gpu_daps_level_other_ms,
        share(g.gpu_daps_level_other_ms)
    );
    println!(
        "  per image, whole solves ({} levels / {} DPS steps run, scaled): DAPS-1K {:.1} s at batch 1, {:.1} s at batch 16; DPS-1000 {:.1} s / {:.1} s",
        g.gpu_solve_levels,
        g.gpu_dps_steps,
        g.gpu_daps1k_per_image_s_b1,
        g.gpu_daps1k_per_image_s_b16,
        g.gpu_dps1000_per_image_s_b1,
        g.gpu_dps1000_per_image_s_b16
    );
}

fn print_digits(r: &daps::bench::speed::DigitsReport) {
    let op = |k: &str| {
        r.figures
            .get(&format!("digits_ops_{k}_ms"))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let ratio = |fused: &str, separate: &str| op(separate) / op(fused);
    println!(
        "digits network, per call of {} digits, alternating in this process: out-norms fused {:.2} ms / separate {:.2} ms ({:.2}×), out-convs + residual {:.2} / {:.2} ms ({:.2}×), 32 → 1 output conv direct {:.2} / im2col {:.2} ms ({:.2}×)",
        daps::bench::speed::DIGITS_BATCH,
        op("outnorm_fused"),
        op("outnorm_separate"),
        ratio("outnorm_fused", "outnorm_separate"),
        op("residual_fused"),
        op("residual_separate"),
        ratio("residual_fused", "residual_separate"),
        op("out_conv_direct"),
        op("out_conv_im2col"),
        ratio("out_conv_direct", "out_conv_im2col")
    );
    for task in daps::bench::speed::DIGITS_TASKS {
        let f = |part: &str| {
            r.figures
                .get(&format!("digits_daps1k_{}_{part}", task.replace('-', "_")))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let total = f("level_ms");
        let share = |v: f64| 100.0 * v / total;
        println!(
            "digits DAPS-1K, {task}, {} digits, per level (mean of {}): {total:.0} ms = network {:.0} ms ({:.0}%, {:.1} GFLOP/s) + operator {:.0} ms ({:.0}%) + x0 step {:.0} ms ({:.0}%) + other {:.0} ms ({:.0}%); 200 levels ≈ {:.0} s",
            r.digits_daps1k_digits,
            r.digits_daps1k_levels,
            f("network_ms"),
            share(f("network_ms")),
            f("network_gflops"),
            f("operator_ms"),
            share(f("operator_ms")),
            f("x0_step_ms"),
            share(f("x0_step_ms")),
            f("other_ms"),
            share(f("other_ms")),
            f("solve_estimate_s")
        );
    }
}

pub fn prior(a: PriorArgs) -> Result<()> {
    use daps::bench::prior::{denoising_error, nfe_seconds, random_adm, Pass, SIGMAS};
    use daps::data::mnist_range;
    let dev = daps::device::parse(&a.device)?;
    let prior = daps::prior::load(a.prior.as_deref(), &dev)?;
    let shape = prior
        .sample_shape()
        .context("this prior does not fix an image shape")?;
    println!("prior: {}", prior.name());
    let held = daps::prior::default::HELD_OUT;
    if a.digits == 0 || a.digits > held.len() {
        bail!("--digits must be in 1..={}", held.len());
    }
    if shape == [1, 32, 32] {
        let test = mnist_range(held.start..held.start + a.digits)?;
        let train = mnist_range(0..a.digits)?;
        let t = denoising_error(&*prior, test.images(), &SIGMAS, a.batch, 1)?;
        let r = denoising_error(&*prior, train.images(), &SIGMAS, a.batch, 1)?;
        println!(
            "denoising error, {} held-out digits ({}..{}) and {} training digits (0..{}):",
            a.digits,
            held.start,
            held.start + a.digits,
            a.digits,
            a.digits
        );
        println!(
            "{:>7} {:>12} {:>12} {:>12} {:>12}",
            "σ", "RMSE held", "PSNR held", "RMSE train", "mean-image"
        );
        for (t, r) in t.iter().zip(&r) {
            println!(
                "{:>7} {:>12.4} {:>12.2} {:>12.4} {:>12.4}",
                t.sigma, t.rmse, t.psnr, r.rmse, t.rmse_mean_image
            );
        }
    } else {
        println!("(denoising error: only for 1×32×32 digit priors)");
    }
    println!("time per network evaluation (best of {}):", a.reps);
    for b in [1usize, 16] {
        let f = nfe_seconds(&*prior, &shape, b, a.reps, Pass::Forward)?;
        let fb = nfe_seconds(&*prior, &shape, b, a.reps, Pass::Vjp)?;
        println!(
            "  batch {b:>2}: forward {:8.2} ms ({:.2} ms/image), forward+backward {:8.2} ms",
            f * 1e3,
            f * 1e3 / b as f64,
            fb * 1e3
        );
    }
    if a.ffhq {
        let cfg = daps::prior::adm::AdmConfig::ffhq256();
        let net = random_adm(&cfg, 0.02, &dev)?;
        let f = nfe_seconds(&net, &[3, 256, 256], 1, a.reps.min(3), Pass::Forward)?;
        println!(
            "  FFHQ-256 ADM ({} parameters, random weights), batch 1: forward {:.2} s",
            cfg.num_params()?,
            f
        );
    }
    Ok(())
}
