//! `daps bench speed`: the machine's GEMM rate, the FFHQ-256 ADM network (random weights)
//! forward and forward + backward against it, the built-in digits network, one DAPS
//! annealing level at 256×256 split into network / operator / x0 step / other, and DAPS-1K
//! levels on 10 held-out digits split the same way ([`digits_daps1k`], which also writes what
//! scripts/speed-digits-pytorch.py needs to time the official code on the same problem).
//! With a GPU ([`SpeedSettings::gpu`]) it adds the same network and level figures there, and
//! DAPS-1K / DPS-1000 per image at batch 1 and 16 ([`GpuReport`], `gpu_*` keys); GPU times are
//! read after a device synchronize.

use crate::bench::prior::{nfe_seconds_with, random_adm, Pass};
use crate::error::Result;
use crate::nn::fastops;
use crate::noise::{for_device, NoiseSource, SeededNoise};
use crate::operator::{Linear, Measurement, Operator};
use crate::prior::adm::AdmConfig;
use crate::prior::{Denoiser, GaussianMixture, Pullback};
use crate::sampler::daps::{daps, DapsConfig};
use crate::sampler::{Method, Observer, Problem, Silent, StepInfo};
use crate::task::{Task, TaskFiles, TaskSpec};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub struct SpeedSettings {
    /// Batch 1 only, one timed call per figure (no warm-up).
    pub quick: bool,
    /// A small ADM on 32×32 images instead of FFHQ-256 (for tests: seconds, not minutes).
    pub tiny: bool,
    /// Timed calls per figure (the best is kept) when not `quick`.
    pub reps: usize,
    /// Annealing levels timed per task by the digits DAPS-1K figures ([`digits_daps1k`]).
    pub digits_levels: usize,
    /// Digits per batch in the digits DAPS-1K figures ([`DIGITS_BATCH`] by default).
    pub digits_batch: usize,
    /// Where [`digits_daps1k`] writes its digits and measurements, if anywhere.
    pub digits_data: Option<std::path::PathBuf>,
    /// A GPU to time as well ([`GpuReport`]); the CPU figures are the same with or without it.
    pub gpu: Option<Device>,
}

/// The figures; `*_ms` are wall-clock milliseconds, best of the timed calls.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    pub version: String,
    pub cpu_model: String,
    pub cores: usize,
    /// rayon's pool (im2col, norms, operators) and candle's matmul threads.
    pub threads: usize,
    pub candle_matmul_threads: usize,
    pub quick: bool,
    pub reps: usize,
    /// The ADM architecture timed (`ffhq256_*` keys), always with random weights.
    pub architecture: String,
    pub gemm_n: usize,
    pub gemm_ms: f64,
    pub gemm_gflops: f64,
    pub ffhq256_params: usize,
    /// GFLOP per image counted from the architecture ([`AdmConfig::macs`], 2 per MAC).
    pub ffhq256_gflop_forward: f64,
    /// Forward + backward to the input (frozen weights).
    pub ffhq256_gflop_forward_backward: f64,
    pub ffhq256_forward_ms_b1: f64,
    pub ffhq256_forward_gflops_b1: f64,
    pub ffhq256_forward_gemm_fraction_b1: f64,
    pub ffhq256_forward_backward_ms_b1: f64,
    pub ffhq256_forward_backward_gflops_b1: f64,
    pub ffhq256_forward_backward_gemm_fraction_b1: f64,
    /// The same pass through candle's autograd graph instead of the network's own pullback.
    pub ffhq256_forward_backward_ms_b1_autograd: f64,
    pub ffhq256_forward_ms_b8: Option<f64>,
    pub ffhq256_forward_gflops_b8: Option<f64>,
    pub ffhq256_forward_backward_ms_b8: Option<f64>,
    pub ffhq256_forward_backward_gflops_b8: Option<f64>,
    /// FFHQ-256 forward at batch 1 with the Winograd path of 3×3 convs on, then off
    /// (`nn::fastops::set_winograd`), timed one after the other.
    pub ffhq256_forward_ms_b1_winograd: f64,
    pub ffhq256_forward_ms_b1_im2col: f64,
    pub digits_forward_ms_b1: f64,
    pub digits_forward_backward_ms_b1: f64,
    pub digits_forward_ms_b16: f64,
    pub digits_forward_backward_ms_b16: f64,
    /// The same pass through candle's autograd graph instead of the network's own pullback.
    pub digits_forward_backward_ms_b16_autograd: f64,
    /// The digits network forward at batch 10 (the DAPS-1K digits batch), Winograd on / off.
    pub digits_forward_ms_b10_winograd: f64,
    pub digits_forward_ms_b10_im2col: f64,
    /// One level of DAPS-1K's gaussian-blur preset (τ, lr, 100 Langevin steps) with one
    /// network evaluation (`daps_level_nfe`), on `daps_level_image`.
    pub daps_level_task: String,
    pub daps_level_image: Vec<usize>,
    pub daps_level_nfe: usize,
    pub daps_level_mcmc_steps: usize,
    pub daps_level_total_ms: f64,
    pub daps_level_network_ms: f64,
    /// Operator forward and VJP calls (inside the x0 step and the divergence check).
    pub daps_level_operator_ms: f64,
    /// The x0 step (Langevin updates and their noise) without its operator calls.
    pub daps_level_x0_step_ms: f64,
    /// The rest: initial and level noise, checks, schedule.
    pub daps_level_other_ms: f64,
    /// 200 levels of 5 network calls plus the rest of a level, per image.
    pub daps1k_per_image_estimate_s: f64,
    pub mixture_denoiser_ms: f64,
    pub mixture_denoiser_gemm_fraction: f64,
    #[serde(flatten)]
    pub digits: DigitsReport,
    #[serde(flatten)]
    pub gpu: Option<GpuReport>,
}

/// The GPU figures: the same architecture and random weights as the CPU ones (`architecture`),
/// times read after a device synchronize, best of the timed calls after one warm-up call.
#[derive(Debug, Clone, Serialize)]
pub struct GpuReport {
    /// The GPU's name from the CUDA driver (else `cuda:N`).
    pub gpu_name: String,
    pub gpu_ffhq256_forward_ms_b1: f64,
    pub gpu_ffhq256_forward_gflops_b1: f64,
    pub gpu_ffhq256_forward_backward_ms_b1: f64,
    pub gpu_ffhq256_forward_backward_gflops_b1: f64,
    pub gpu_ffhq256_forward_ms_b8: f64,
    pub gpu_ffhq256_forward_gflops_b8: f64,
    pub gpu_ffhq256_forward_backward_ms_b8: f64,
    pub gpu_ffhq256_forward_backward_gflops_b8: f64,
    /// One level as `daps_level_*` (gaussian-blur, 1 network call, 100 Langevin steps), on the GPU.
    pub gpu_daps_level_total_ms: f64,
    pub gpu_daps_level_network_ms: f64,
    pub gpu_daps_level_operator_ms: f64,
    pub gpu_daps_level_x0_step_ms: f64,
    pub gpu_daps_level_other_ms: f64,
    /// The per-image solves below ran this many annealing levels (DAPS-1K has 200) and DPS steps
    /// (DPS-1000 has 1000), scaled up: every level or step costs the same.
    pub gpu_solve_levels: usize,
    pub gpu_dps_steps: usize,
    /// Gaussian blur on `daps_level_image`, each task preset, whole solves on the GPU, seconds
    /// per image (batch time / batch).
    pub gpu_daps1k_per_image_s_b1: f64,
    pub gpu_daps1k_per_image_s_b16: f64,
    pub gpu_dps1000_per_image_s_b1: f64,
    pub gpu_dps1000_per_image_s_b16: f64,
}

/// The first `model name` of /proc/cpuinfo ("unknown" elsewhere).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Best wall time of `reps` calls of `f` after `warmup` untimed ones.
pub fn best_seconds(warmup: usize, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// `time()` with the Winograd path of 3×3 convs on, then off; the switch is restored.
fn winograd_on_off(time: &mut dyn FnMut() -> Result<f64>) -> Result<(f64, f64)> {
    let was = fastops::winograd();
    fastops::set_winograd(true);
    let on = time();
    fastops::set_winograd(false);
    let off = time();
    fastops::set_winograd(was);
    Ok((on?, off?))
}

/// The tiny stand-in for FFHQ-256 (`--tiny`): 32×32, the FFHQ block structure at 32 channels.
fn tiny_config() -> AdmConfig {
    AdmConfig {
        image_size: 32,
        model_channels: 32,
        channel_mult: vec![1.0, 2.0, 2.0],
        attention_ds: vec![4],
        num_head_channels: Some(32),
        ..AdmConfig::ffhq256()
    }
}

/// Runs every figure; `progress` gets a line before each long part.
pub fn run(s: &SpeedSettings, progress: &mut dyn FnMut(&str)) -> Result<SpeedReport> {
    let dev = Device::Cpu;
    let (warmup, reps) = if s.quick { (0, 1) } else { (1, s.reps.max(1)) };

    progress("GEMM");
    let gemm_n = if s.tiny { 256 } else { 1024 };
    let a = Tensor::randn(0f32, 1f32, (gemm_n, gemm_n), &dev)?;
    let gemm_s = best_seconds(1, 10, &mut || {
        a.matmul(&a)?;
        Ok(())
    })?;
    let gemm_gflops = 2.0 * (gemm_n as f64).powi(3) / gemm_s / 1e9;

    let cfg = if s.tiny {
        tiny_config()
    } else {
        AdmConfig::ffhq256()
    };
    let side = cfg.image_size;
    let macs = cfg.macs(side, side)?;
    let fwd_flop = macs.forward_flops();
    let fb_flop = fwd_flop + macs.input_backward_flops();
    let net = random_adm(&cfg, 0.02, &dev)?;
    let shape = [cfg.in_channels, side, side];
    let mut time_net = |prior: &dyn Denoiser, shape: &[usize], b: usize, pass: Pass| {
        progress(&format!(
            "{}, batch {b}, {}",
            prior.name(),
            match pass {
                Pass::Forward => "forward",
                Pass::Vjp => "forward+backward",
                Pass::Autograd => "forward+backward by candle's autograd",
            }
        ));
        nfe_seconds_with(prior, shape, b, warmup, reps, pass)
    };
    use Pass::{Autograd, Forward, Vjp};
    let f1 = time_net(&net, &shape, 1, Forward)?;
    // After f1, which also takes the first call's costs (page faults, buffers) off these two.
    let (f1w, f1i) = winograd_on_off(&mut || time_net(&net, &shape, 1, Forward))?;
    let fb1 = time_net(&net, &shape, 1, Vjp)?;
    let fb1a = time_net(&net, &shape, 1, Autograd)?;
    let (f8, fb8) = if s.quick {
        (None, None)
    } else {
        (
            Some(time_net(&net, &shape, 8, Forward)?),
            Some(time_net(&net, &shape, 8, Vjp)?),
        )
    };

    let digits = crate::prior::default::digits(&dev)?;
    let dshape = [1, 32, 32];
    let df1 = time_net(&digits, &dshape, 1, Forward)?;
    let dfb1 = time_net(&digits, &dshape, 1, Vjp)?;
    let df16 = time_net(&digits, &dshape, 16, Forward)?;
    let dfb16 = time_net(&digits, &dshape, 16, Vjp)?;
    let dfb16a = time_net(&digits, &dshape, 16, Autograd)?;
    let (df10w, df10i) = winograd_on_off(&mut || time_net(&digits, &dshape, 10, Forward))?;

    progress("one DAPS annealing level");
    let level = daps_level(&net, side)?;
    let digits_report = digits_daps1k(
        s.digits_levels,
        s.digits_batch,
        s.digits_data.as_deref(),
        progress,
    )?;

    let mix = crate::bench::gmm::mixture_prior(80, &dev)?;
    let (mix_ms, mix_frac) = mixture_figure(&mix, gemm_gflops)?;
    let gpu = match &s.gpu {
        Some(g) => Some(gpu_figures(s, g, &cfg, progress)?),
        None => None,
    };

    let gf = |flop: f64, t: f64| flop / t / 1e9;
    let ms = |t: f64| t * 1e3;
    Ok(SpeedReport {
        version: env!("CARGO_PKG_VERSION").into(),
        cpu_model: cpu_model(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        threads: rayon::current_num_threads(),
        candle_matmul_threads: candle_core::utils::get_num_threads(),
        quick: s.quick,
        reps,
        architecture: if s.tiny {
            "tiny 32×32 ADM (test setting, NOT FFHQ-256), random weights".into()
        } else {
            "FFHQ-256 ADM (DPS/DAPS ffhq_10m.pt architecture), random N(0, 0.02²) weights".into()
        },
        gemm_n,
        gemm_ms: ms(gemm_s),
        gemm_gflops,
        ffhq256_params: cfg.num_params()?,
        ffhq256_gflop_forward: fwd_flop / 1e9,
        ffhq256_gflop_forward_backward: fb_flop / 1e9,
        ffhq256_forward_ms_b1: ms(f1),
        ffhq256_forward_gflops_b1: gf(fwd_flop, f1),
        ffhq256_forward_gemm_fraction_b1: gf(fwd_flop, f1) / gemm_gflops,
        ffhq256_forward_backward_ms_b1: ms(fb1),
        ffhq256_forward_backward_gflops_b1: gf(fb_flop, fb1),
        ffhq256_forward_backward_gemm_fraction_b1: gf(fb_flop, fb1) / gemm_gflops,
        ffhq256_forward_backward_ms_b1_autograd: ms(fb1a),
        ffhq256_forward_ms_b8: f8.map(ms),
        ffhq256_forward_gflops_b8: f8.map(|t| gf(8.0 * fwd_flop, t)),
        ffhq256_forward_backward_ms_b8: fb8.map(ms),
        ffhq256_forward_backward_gflops_b8: fb8.map(|t| gf(8.0 * fb_flop, t)),
        ffhq256_forward_ms_b1_winograd: ms(f1w),
        ffhq256_forward_ms_b1_im2col: ms(f1i),
        digits_forward_ms_b1: ms(df1),
        digits_forward_backward_ms_b1: ms(dfb1),
        digits_forward_ms_b16: ms(df16),
        digits_forward_backward_ms_b16: ms(dfb16),
        digits_forward_backward_ms_b16_autograd: ms(dfb16a),
        digits_forward_ms_b10_winograd: ms(df10w),
        digits_forward_ms_b10_im2col: ms(df10i),
        daps_level_task: "gaussian-blur".into(),
        daps_level_image: shape.to_vec(),
        daps_level_nfe: 1,
        daps_level_mcmc_steps: level.mcmc_steps,
        daps_level_total_ms: ms(level.total),
        daps_level_network_ms: ms(level.network),
        daps_level_operator_ms: ms(level.operator),
        daps_level_x0_step_ms: ms(level.x0_step),
        daps_level_other_ms: ms(level.other),
        daps1k_per_image_estimate_s: 200.0
            * (5.0 * level.network + level.operator + level.x0_step + level.other),
        mixture_denoiser_ms: mix_ms,
        mixture_denoiser_gemm_fraction: mix_frac,
        digits: digits_report,
        gpu,
    })
}

/// [`GpuReport`] on `dev` for the ADM architecture `cfg`.
fn gpu_figures(
    s: &SpeedSettings,
    dev: &Device,
    cfg: &AdmConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<GpuReport> {
    // One warm-up call even with `quick`: the first call on a GPU loads its kernels.
    let reps = if s.quick { 1 } else { s.reps.max(1) };
    let side = cfg.image_size;
    let macs = cfg.macs(side, side)?;
    let fwd_flop = macs.forward_flops();
    let fb_flop = fwd_flop + macs.input_backward_flops();
    let net = random_adm(cfg, 0.02, dev)?;
    let shape = [cfg.in_channels, side, side];
    let mut time_net = |b: usize, pass: Pass| {
        progress(&format!(
            "GPU: {}, batch {b}, {}",
            net.name(),
            if pass == Pass::Forward {
                "forward"
            } else {
                "forward+backward"
            }
        ));
        nfe_seconds_with(&net, &shape, b, 1, reps, pass)
    };
    let (f1, fb1, f8, fb8) = (
        time_net(1, Pass::Forward)?,
        time_net(1, Pass::Vjp)?,
        time_net(8, Pass::Forward)?,
        time_net(8, Pass::Vjp)?,
    );
    progress("GPU: one DAPS annealing level");
    let level = daps_level(&net, side)?;
    let levels = s.digits_levels.max(1);
    let dps_steps = 5 * levels;
    let blur = "gaussian-blur";
    let daps = Method::Daps(DapsConfig {
        annealing_steps: levels,
        ..crate::task::preset::preset(blur, "daps-1k")?
    });
    let dps = match crate::task::preset_method(blur, "dps-1000")? {
        Method::Dps(c) => Method::Dps(crate::sampler::DpsConfig {
            steps: dps_steps,
            ..c
        }),
        m => {
            return Err(crate::Error::msg(format!(
                "{blur}'s dps-1000 preset is {}, not dps",
                m.name()
            )))
        }
    };
    let mut per_image = |m: &Method, b: usize, scale: f64| -> Result<f64> {
        progress(&format!("GPU: {} on {b} image(s)", m.label()));
        Ok(solve_seconds(&net, m, blur, side, b)? * scale / b as f64)
    };
    let (daps_scale, dps_scale) = (200.0 / levels as f64, 1000.0 / dps_steps as f64);
    let gf = |flop: f64, t: f64| flop / t / 1e9;
    Ok(GpuReport {
        gpu_name: crate::device::name(dev),
        gpu_ffhq256_forward_ms_b1: f1 * 1e3,
        gpu_ffhq256_forward_gflops_b1: gf(fwd_flop, f1),
        gpu_ffhq256_forward_backward_ms_b1: fb1 * 1e3,
        gpu_ffhq256_forward_backward_gflops_b1: gf(fb_flop, fb1),
        gpu_ffhq256_forward_ms_b8: f8 * 1e3,
        gpu_ffhq256_forward_gflops_b8: gf(8.0 * fwd_flop, f8),
        gpu_ffhq256_forward_backward_ms_b8: fb8 * 1e3,
        gpu_ffhq256_forward_backward_gflops_b8: gf(8.0 * fb_flop, fb8),
        gpu_daps_level_total_ms: level.total * 1e3,
        gpu_daps_level_network_ms: level.network * 1e3,
        gpu_daps_level_operator_ms: level.operator * 1e3,
        gpu_daps_level_x0_step_ms: level.x0_step * 1e3,
        gpu_daps_level_other_ms: level.other * 1e3,
        gpu_solve_levels: levels,
        gpu_dps_steps: dps_steps,
        gpu_daps1k_per_image_s_b1: per_image(&daps, 1, daps_scale)?,
        gpu_daps1k_per_image_s_b16: per_image(&daps, 16, daps_scale)?,
        gpu_dps1000_per_image_s_b1: per_image(&dps, 1, dps_scale)?,
        gpu_dps1000_per_image_s_b16: per_image(&dps, 16, dps_scale)?,
    })
}

/// Wall seconds of one whole solve by `method` of `task` on `batch` random side×side RGB images,
/// on the prior's device (noise there too), synchronized at the end.
fn solve_seconds(
    net: &dyn Denoiser,
    method: &Method,
    task: &str,
    side: usize,
    batch: usize,
) -> Result<f64> {
    let (task, measurement, _) = random_problem(task, side, batch, net.device(), 1)?;
    let p = Problem {
        prior: net,
        operator: &task,
        measurement: &measurement,
    };
    let mut noise = for_device(net.device(), 1)?;
    let t = Instant::now();
    method.run(&p, &[batch, 3, side, side], &mut *noise, &mut Silent)?;
    net.device().synchronize()?;
    Ok(t.elapsed().as_secs_f64())
}

/// The mixture denoiser (K = 25, d = 80, 2000 chains): ms per call and the fraction of the
/// GEMM rate its two [B, K]×[K, d] products reach.
fn mixture_figure(prior: &GaussianMixture, gemm_gflops: f64) -> Result<(f64, f64)> {
    let (chains, d) = (2000, prior.dim());
    let xs = Tensor::randn(0f32, 10f32, (chains, d), &Device::Cpu)?;
    let t = best_seconds(1, 10, &mut || {
        prior.denoise(&xs, 3.0)?;
        Ok(())
    })?;
    let flops = 2.0 * 2.0 * chains as f64 * prior.n_components() as f64 * d as f64;
    Ok((t * 1e3, flops / t / 1e9 / gemm_gflops))
}

/// Seconds spent in one DAPS level, by part.
struct LevelSplit {
    mcmc_steps: usize,
    total: f64,
    network: f64,
    operator: f64,
    x0_step: f64,
    other: f64,
}

/// Wall time inside calls, and when the last call ended.
#[derive(Default)]
struct Clock(Mutex<(f64, Option<Instant>)>);

impl Clock {
    fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        let end = Instant::now();
        // A poisoned lock only means another timed call panicked; the figure is still usable.
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += (end - t).as_secs_f64();
        g.1 = Some(end);
        out
    }

    fn get(&self) -> (f64, Option<Instant>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `out` once `x`'s device has finished its queued work (nothing to wait for on the CPU).
fn synced(x: &Tensor, out: Result<Tensor>) -> Result<Tensor> {
    x.device().synchronize()?;
    out
}

struct TimedPrior<'a> {
    inner: &'a dyn Denoiser,
    clock: Clock,
}

impl Denoiser for TimedPrior<'_> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.clock.time(|| synced(x, self.inner.denoise(x, sigma)))
    }
    fn denoise_vjp(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Pullback<'_>)> {
        self.inner.denoise_vjp(x, sigma)
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn splits_batches(&self) -> bool {
        self.inner.splits_batches()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.inner.sample_shape()
    }
    fn sigma_data(&self) -> f64 {
        self.inner.sigma_data()
    }
    fn sigma_range(&self) -> (f64, f64) {
        self.inner.sigma_range()
    }
    fn data_range(&self) -> (f64, f64) {
        self.inner.data_range()
    }
}

struct TimedOperator<'a> {
    inner: &'a dyn Operator,
    clock: Clock,
}

impl Operator for TimedOperator<'_> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.clock.time(|| synced(x, self.inner.forward(x)))
    }
    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.clock.time(|| synced(x, self.inner.vjp(x, v)))
    }
    fn residual_vjp(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.clock.time(|| synced(x, self.inner.residual_vjp(x, y)))
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn as_linear(&self) -> Option<&dyn Linear> {
        self.inner.as_linear()
    }
}

/// Adds, at each level's end, the time since the prior's last call: the x0 step and checks.
struct LevelEnds<'a> {
    net: &'a Clock,
    x0_all: f64,
}

impl Observer for LevelEnds<'_> {
    fn on_step(&mut self, _: &StepInfo) -> Result<()> {
        if let (_, Some(end)) = self.net.get() {
            self.x0_all += end.elapsed().as_secs_f64();
        }
        Ok(())
    }
}

/// Runs DAPS with `cfg` on `measurement` and splits its wall time by part, per level.
fn split_levels(
    net: &dyn Denoiser,
    task: &Task,
    measurement: &Measurement,
    cfg: &DapsConfig,
    shape: &[usize],
    noise: &mut dyn NoiseSource,
) -> Result<LevelSplit> {
    let prior = TimedPrior {
        inner: net,
        clock: Clock::default(),
    };
    let op = TimedOperator {
        inner: task,
        clock: Clock::default(),
    };
    let p = Problem {
        prior: &prior,
        operator: &op,
        measurement,
    };
    let mut ends = LevelEnds {
        net: &prior.clock,
        x0_all: 0.0,
    };
    let start = Instant::now();
    daps(&p, cfg, shape, noise, &mut ends)?;
    net.device().synchronize()?;
    let total = start.elapsed().as_secs_f64();
    let (network, _) = prior.clock.get();
    let (operator, _) = op.clock.get();
    let n = cfg.annealing_steps.max(1) as f64;
    Ok(LevelSplit {
        mcmc_steps: cfg.mcmc_steps,
        total: total / n,
        network: network / n,
        operator: operator / n,
        x0_step: (ends.x0_all - operator).max(0.0) / n,
        other: (total - network - ends.x0_all).max(0.0) / n,
    })
}

/// One annealing level of DAPS-1K's gaussian-blur preset with one Euler step (one network
/// call) on a `side`×`side` RGB image.
fn daps_level(net: &dyn Denoiser, side: usize) -> Result<LevelSplit> {
    let dev = net.device();
    let (task, measurement, noise) = random_problem("gaussian-blur", side, 1, dev, 7)?;
    // The CPU goes on with the measurement's noise source, as it always has.
    let mut noise: Box<dyn NoiseSource> = if dev.is_cpu() {
        Box::new(noise)
    } else {
        for_device(dev, 7)?
    };
    let cfg = DapsConfig {
        annealing_steps: 1,
        ode_steps: 1,
        ..crate::task::preset::preset("gaussian-blur", "daps-1k")?
    };
    split_levels(
        net,
        &task,
        &measurement,
        &cfg,
        &[1, 3, side, side],
        &mut *noise,
    )
}

/// `task` on `batch` random side×side RGB images: the task, its measurement (σ_y 0.05, made on
/// the CPU with `SeededNoise::new(seed)`, then moved to `dev`) and that noise source.
fn random_problem(
    task: &str,
    side: usize,
    batch: usize,
    dev: &Device,
    seed: u64,
) -> Result<(Task, Measurement, SeededNoise)> {
    let task = Task::build(
        TaskSpec::defaults(task, side, side, &TaskFiles::default())?,
        [3, side, side],
    )?;
    let mut noise = SeededNoise::new(seed);
    let x = Tensor::rand(-1f32, 1f32, (batch, 3, side, side), &Device::Cpu)?;
    let m = Measurement::simulate(&task, &x, 0.05, &mut noise)?;
    let m = Measurement {
        y: m.y.to_device(dev)?,
        sigma_y: m.sigma_y,
    };
    Ok((task, m, noise))
}

/// Held-out digits (9000..) solved as one batch by [`digits_daps1k`] by default.
pub const DIGITS_BATCH: usize = 10;
/// The tasks of [`digits_daps1k`].
pub const DIGITS_TASKS: [&str; 2] = ["phase-retrieval", "gaussian-blur"];

/// DAPS-1K on the built-in digits prior, per level: `digits_daps1k_TASK_{level,network,
/// operator,x0_step,other}_ms` and `_solve_estimate_s` (200 levels).
#[derive(Debug, Clone, Serialize)]
pub struct DigitsReport {
    pub digits_daps1k_digits: usize,
    pub digits_daps1k_levels: usize,
    #[serde(flatten)]
    pub figures: BTreeMap<String, f64>,
}

/// Timed calls per kernel in [`digits_ops`] (alternating with the ops it replaces).
const OPS_REPS: usize = 60;

/// The built-in prior's ResBlocks per network call as (channels, side, count): one per level
/// down, two in the middle, two per level up (channel_mult 1, 2, 2 of 32).
const DIGITS_RESBLOCKS: [(usize, usize, usize); 3] = [(32, 32, 3), (64, 16, 3), (64, 8, 5)];

/// The digits network's fused kernels against the separate ops they replace, at its shapes
/// for a batch of [`DIGITS_BATCH`], timed alternately in this process (best of `OPS_REPS`
/// each), in ms per network call: a ResBlock's out-norm (GroupNorm, scale-shift, SiLU in one
/// pass), its out-conv with the residual added as it writes, and the 32 → 1 output conv
/// (direct kernel against im2col + gemm). Alternating in one process keeps the comparison
/// fair on a machine whose speed drifts between runs.
pub fn digits_ops(figures: &mut BTreeMap<String, f64>) -> Result<()> {
    let dev = Device::Cpu;
    let b = DIGITS_BATCH;
    let mut noise = SeededNoise::new(7);
    let mut randn = |shape: &[usize]| noise.randn(&candle_core::Shape::from(shape.to_vec()), &dev);
    let pair = |a: &mut dyn FnMut() -> Result<()>, z: &mut dyn FnMut() -> Result<()>| {
        let (mut ta, mut tz) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..OPS_REPS {
            ta = ta.min(best_seconds(0, 1, a)?);
            tz = tz.min(best_seconds(0, 1, z)?);
        }
        Ok::<_, crate::Error>((ta, tz))
    };
    let (mut norm, mut res) = ((0.0, 0.0), (0.0, 0.0));
    for (c, side, count) in DIGITS_RESBLOCKS {
        let h = randn(&[b, c, side, side])?;
        let (gamma, beta) = ((randn(&[c])? + 1.0)?, randn(&[c])?);
        let (scale, shift) = (randn(&[b, c])?, randn(&[b, c])?);
        let gn = fastops::GroupNorm::new(gamma.clone(), beta.clone(), 32, 1e-5);
        let (f, s) = pair(
            &mut || {
                gn.forward_scale_shift_silu(&h, &scale, &shift)?;
                Ok(())
            },
            &mut || {
                let n = candle_core::Module::forward(&gn, &h)?;
                fastops::silu(&fastops::scale_shift(&n, &scale, &shift)?)?;
                Ok(())
            },
        )?;
        norm = (norm.0 + count as f64 * f, norm.1 + count as f64 * s);
        let conv = fastops::Conv2d::new((randn(&[c, c, 3, 3])? * 0.05)?, Some(beta), 1, 1);
        let (f, s) = pair(
            &mut || {
                conv.forward_add(&h, &h)?;
                Ok(())
            },
            &mut || {
                (&h + candle_core::Module::forward(&conv, &h)?)?;
                Ok(())
            },
        )?;
        res = (res.0 + count as f64 * f, res.1 + count as f64 * s);
    }
    let h = randn(&[b, 32, 32, 32])?;
    let out = fastops::Conv2d::new((randn(&[1, 32, 3, 3])? * 0.05)?, Some(randn(&[1])?), 1, 1);
    let run = || -> Result<()> {
        candle_core::Module::forward(&out, &h)?;
        Ok(())
    };
    let few = pair(
        &mut || {
            fastops::set_direct_few(true);
            run()
        },
        &mut || {
            fastops::set_direct_few(false);
            run()
        },
    );
    fastops::set_direct_few(true);
    let few = few?;
    for (key, v) in [
        ("outnorm_fused", norm.0),
        ("outnorm_separate", norm.1),
        ("residual_fused", res.0),
        ("residual_separate", res.1),
        ("out_conv_direct", few.0),
        ("out_conv_im2col", few.1),
    ] {
        figures.insert(format!("digits_ops_{key}_ms"), v * 1e3);
    }
    Ok(())
}

/// DAPS-1K (each task's preset: 5 Euler steps and 100 Langevin steps per level) on `batch`
/// held-out digits (9000..) as one batch, with `levels` annealing levels instead of
/// 200 (same cost per level), timed by part per level. With `data`, writes the digits, each
/// task's measurement `y_TASK` and D(x, σ = 1) (`d_sigma1`) there, and the presets and task
/// parameters beside it (same stem, `.json`), for scripts/speed-digits-pytorch.py.
pub fn digits_daps1k(
    levels: usize,
    batch: usize,
    data: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<DigitsReport> {
    if levels == 0 || batch == 0 {
        return Err(crate::Error::config(
            "digits DAPS-1K figures: levels and batch must be ≥ 1",
        ));
    }
    let dev = Device::Cpu;
    let prior = crate::prior::default::digits(&dev)?;
    let held = crate::prior::default::HELD_OUT.start;
    let x = crate::data::mnist_range(held..held + batch)?
        .images()
        .clone();
    let shape = x.dims().to_vec();
    let mut figures = BTreeMap::new();
    // The network's GFLOP per image, counted as for FFHQ-256 (direct convolution; Winograd
    // does fewer multiplies), so the level's network part reads as a rate.
    let net_flop = crate::prior::default::config()?
        .macs(32, 32)?
        .forward_flops();
    figures.insert("digits_gflop_forward".into(), net_flop / 1e9);
    progress("the digits network's fused kernels against the separate ops");
    digits_ops(&mut figures)?;
    let mut tensors = vec![("x", x.clone())];
    let mut meta = serde_json::Map::new();
    for (k, name) in DIGITS_TASKS.iter().enumerate() {
        progress(&format!(
            "DAPS-1K on {batch} digit(s), {name}, {levels} level(s)"
        ));
        let task = Task::build(
            TaskSpec::defaults(name, 32, 32, &TaskFiles::default())?,
            [1, 32, 32],
        )?;
        let mut noise = SeededNoise::new(k as u64);
        let measurement = Measurement::simulate(&task, &x, 0.05, &mut noise)?;
        let cfg = DapsConfig {
            annealing_steps: levels,
            ..crate::task::preset::preset(name, "daps-1k")?
        };
        // As `daps solve` runs it: a batch too small to share, on one thread.
        let s = crate::prior::in_sized_pool(&shape, true, || {
            split_levels(&prior, &task, &measurement, &cfg, &shape, &mut noise)
        })?;
        let key = |part: &str| format!("digits_daps1k_{}_{part}", name.replace('-', "_"));
        for (part, v) in [
            ("level_ms", s.total),
            ("network_ms", s.network),
            ("operator_ms", s.operator),
            ("x0_step_ms", s.x0_step),
            ("other_ms", s.other),
        ] {
            figures.insert(key(part), v * 1e3);
        }
        figures.insert(key("solve_estimate_s"), 200.0 * s.total);
        let calls = (cfg.ode_steps * batch) as f64;
        figures.insert(key("network_gflops"), calls * net_flop / s.network / 1e9);
        let mut p = serde_json::to_value(&cfg).map_err(|e| crate::Error::msg(e.to_string()))?;
        for (k, v) in task.spec().params() {
            p[k] = serde_json::Value::String(v);
        }
        meta.insert(name.to_string(), p);
        tensors.push((name, measurement.y));
    }
    if let Some(path) = data {
        let d = prior.denoise(&x, 1.0)?;
        let mut named: Vec<(String, Tensor)> = tensors
            .into_iter()
            .map(|(n, t)| {
                (
                    if n == "x" {
                        "x".into()
                    } else {
                        format!("y_{n}")
                    },
                    t,
                )
            })
            .collect();
        named.push(("d_sigma1".into(), d));
        let refs: Vec<(&str, Tensor)> =
            named.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        crate::io::write_safetensors(path, &refs, &BTreeMap::new())?;
        let side = serde_json::json!({"levels": levels, "tasks": DIGITS_TASKS, "presets": meta});
        crate::io::atomic_write(
            path.with_extension("json"),
            serde_json::to_string_pretty(&side)
                .map_err(|e| crate::Error::msg(e.to_string()))?
                .as_bytes(),
        )?;
    }
    Ok(DigitsReport {
        digits_daps1k_digits: batch,
        digits_daps1k_levels: levels,
        figures,
    })
}
