//! `daps train` (an ADM prior on images, see [`daps::train`]) and `daps sample` (unconditional
//! samples of any prior with EDM's Heun sampler).

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use daps::data::{save_grid, DataSpec};
use daps::noise::SeededNoise;
use daps::prior::adm::AdmConfig;
use daps::sampler::heun::EdmGrid;
use daps::train::{adm_config_json, preset, with_shape, Objective, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// Training images: `digits` (the built-in MNIST training split) or a folder of PNG/JPEG
    /// images (searched recursively, resized by the shorter side and centre-cropped).
    #[arg(long)]
    pub data: Option<String>,
    /// Folder for checkpoints: model.safetensors (EMA) + model.json, train-state.safetensors,
    /// log.csv, samples-stepNNNNNNN.png.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run saved in DIR with its saved settings (--steps may extend it).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Architecture preset: digits32 (default), small64, tiny.
    #[arg(long)]
    pub preset: Option<String>,
    /// Architecture as a JSON file of guided-diffusion create_model arguments (instead of --preset).
    #[arg(long, value_name = "FILE.json")]
    pub arch: Option<PathBuf>,
    /// Override the preset's image size.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// 1 (grayscale) or 3 (RGB); default: the data's (1 for digits or all-gray folders).
    #[arg(long)]
    pub channels: Option<usize>,
    /// ddpm (continuous-time ε loss, default) or edm (log-normal σ, EDM weighting).
    #[arg(long)]
    pub objective: Option<String>,
    /// Total optimisation steps [default: 10000].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Images per step [default: 32].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak AdamW learning rate [default: 5e-4].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear learning-rate warm-up steps [default: 200].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// AdamW decoupled weight decay [default: 0.01].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm (0: off) [default: 1].
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// EMA half-life in thousands of images [default: 500].
    #[arg(long)]
    pub ema_halflife_kimg: Option<f64>,
    /// EMA half-life at most this fraction of the images seen (negative: no ramp-up) [default: 0.05].
    #[arg(long)]
    pub ema_rampup: Option<f64>,
    /// Seed of the initial weights, batches, σ and noise [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// EDM objective: mean of ln σ [default: -1.2].
    #[arg(long, allow_hyphen_values = true)]
    pub p_mean: Option<f64>,
    /// EDM objective: std of ln σ [default: 1.2].
    #[arg(long)]
    pub p_std: Option<f64>,
    /// EDM objective: σ_data of the loss weighting [default: 0.5].
    #[arg(long)]
    pub sigma_data: Option<f64>,
    /// Save a checkpoint every N steps [default: 200].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Samples in the grid saved at each checkpoint (0: none) [default: 16].
    #[arg(long)]
    pub sample_count: Option<usize>,
    /// Heun steps for those samples [default: 10].
    #[arg(long)]
    pub sample_steps: Option<usize>,
    /// Start afresh even if --out holds a saved run.
    #[arg(long)]
    pub force: bool,
    /// Print the settings and the architecture and exit.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// The prior, e.g. adm:runs/digits32/model.safetensors (see `--prior` specs); default: the
    /// built-in digits prior.
    #[arg(long)]
    pub prior: Option<String>,
    #[command(flatten)]
    pub text: super::PromptArgs,
    /// Output grid PNG.
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    /// Heun steps (2·steps − 1 network evaluations).
    #[arg(long, default_value_t = 18)]
    pub steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 80.0)]
    pub sigma_max: f64,
    #[arg(long, default_value_t = 0.002)]
    pub sigma_min: f64,
    #[arg(long, default_value_t = 7.0)]
    pub rho: f64,
    /// Samples per network batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Grid columns [default: ⌈√n⌉].
    #[arg(long)]
    pub cols: Option<usize>,
}

/// The device for training and sampling: CUDA when built with `cuda` and one is present.
pub fn device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        return Ok(Device::cuda_if_available(0)?);
    }
    #[allow(unreachable_code)]
    Ok(Device::Cpu)
}

fn settings_given_on_resume(a: &TrainArgs) -> Vec<&'static str> {
    let mut v = Vec::new();
    macro_rules! given {
        ($($f:ident => $n:literal),*) => { $(if a.$f.is_some() { v.push($n); })* };
    }
    given!(data => "--data", preset => "--preset", arch => "--arch", image_size => "--image-size",
        channels => "--channels", objective => "--objective", batch_size => "--batch-size",
        lr => "--lr", warmup => "--warmup", weight_decay => "--weight-decay",
        grad_clip => "--grad-clip", ema_halflife_kimg => "--ema-halflife-kimg",
        ema_rampup => "--ema-rampup", seed => "--seed", p_mean => "--p-mean", p_std => "--p-std",
        sigma_data => "--sigma-data");
    v
}

/// The architecture from --arch or --preset, with --image-size / channels applied.
fn architecture(a: &TrainArgs, data_channels: Option<usize>) -> Result<AdmConfig> {
    let base = match (&a.arch, &a.preset) {
        (Some(_), Some(_)) => bail!("give either --arch or --preset, not both"),
        (Some(f), None) => AdmConfig::from_json_file(f)?,
        (None, p) => preset(p.as_deref().unwrap_or("digits32"))?,
    };
    let size = a.image_size.unwrap_or(base.image_size);
    let ch = data_channels.unwrap_or(base.in_channels);
    Ok(with_shape(&base, size, ch)?)
}

fn new_config(a: &TrainArgs) -> Result<(TrainConfig, daps::data::ImageSet)> {
    let data_arg = a
        .data
        .as_deref()
        .context("--data is required (`digits` or a folder of images), or --resume DIR")?;
    let mut spec: DataSpec = data_arg.parse()?;
    // The image size comes from the architecture; the channels from the flag or the data.
    let size = architecture(a, Some(1))?.image_size;
    let data = spec.load(size, a.channels)?;
    let arch = architecture(a, Some(data.channels()))?;
    // an absolute folder path, so that --resume works from any directory
    if let DataSpec::Folder(p) = &spec {
        spec = DataSpec::Folder(std::fs::canonicalize(p)?);
    }
    let d = TrainConfig::default();
    let cfg = TrainConfig {
        data: spec.to_string(),
        arch: adm_config_json(&arch),
        objective: match &a.objective {
            Some(o) => o.parse::<Objective>()?,
            None => d.objective,
        },
        p_mean: a.p_mean.unwrap_or(d.p_mean),
        p_std: a.p_std.unwrap_or(d.p_std),
        sigma_data: a.sigma_data.unwrap_or(d.sigma_data),
        batch_size: a.batch_size.unwrap_or(d.batch_size),
        steps: a.steps.unwrap_or(d.steps),
        lr: a.lr.unwrap_or(d.lr),
        warmup_steps: a.warmup.unwrap_or(d.warmup_steps),
        weight_decay: a.weight_decay.unwrap_or(d.weight_decay),
        grad_clip: a.grad_clip.unwrap_or(d.grad_clip),
        ema_halflife_kimg: a.ema_halflife_kimg.unwrap_or(d.ema_halflife_kimg),
        ema_rampup: match a.ema_rampup {
            Some(r) if r < 0.0 => None,
            Some(r) => Some(r),
            None => d.ema_rampup,
        },
        seed: a.seed.unwrap_or(d.seed),
        checkpoint_every: a.checkpoint_every.unwrap_or(d.checkpoint_every),
        sample_count: a.sample_count.unwrap_or(d.sample_count),
        sample_steps: a.sample_steps.unwrap_or(d.sample_steps),
        ..d
    };
    cfg.validate()?;
    Ok((cfg, data))
}

pub fn train(a: TrainArgs) -> Result<()> {
    let dev = device()?;
    let (mut trainer, out) = match &a.resume {
        Some(dir) => {
            let given = settings_given_on_resume(&a);
            if !given.is_empty() {
                bail!(
                    "{} cannot be changed when resuming: the saved run's settings are used \
                     (only --steps, --checkpoint-every, --sample-count, --sample-steps may be given)",
                    given.join(", ")
                );
            }
            if let Some(o) = a.out.as_ref().filter(|o| *o != dir) {
                bail!(
                    "--resume {} writes into that folder; --out {} differs",
                    dir.display(),
                    o.display()
                );
            }
            let mut t = Trainer::resume(dir, &dev)
                .with_context(|| format!("cannot resume from {}", dir.display()))?;
            if let Some(s) = a.steps {
                t.set_total_steps(s);
            }
            let c = t.config().clone();
            t.set_checkpointing(
                a.checkpoint_every.unwrap_or(c.checkpoint_every),
                a.sample_count.unwrap_or(c.sample_count),
                a.sample_steps.unwrap_or(c.sample_steps),
            );
            (t, dir.clone())
        }
        None => {
            let out = a
                .out
                .clone()
                .context("--out DIR is required (where checkpoints go)")?;
            let (cfg, data) = new_config(&a)?;
            if !a.dry_run {
                let mut inputs = super::outputs::Inputs::default();
                inputs.add("--arch", a.arch.as_deref());
                super::outputs::dir("--out", &out, &inputs)?;
            }
            if out.join(daps::train::STATE_FILE).exists() && !a.force && !a.dry_run {
                bail!(
                    "{} already holds a training run: continue it with --resume {0}, \
                     or start afresh with --force",
                    out.display()
                );
            }
            if a.dry_run {
                println!("{}", serde_json::to_string_pretty(&cfg)?);
                let arch = cfg.adm()?;
                println!(
                    "{} images from {}; {} parameters",
                    data.len(),
                    data.name(),
                    arch.num_params()?
                );
                return Ok(());
            }
            (Trainer::new(cfg, data, &dev)?, out)
        }
    };
    run(&mut trainer, &out)
}

fn run(trainer: &mut Trainer, out: &Path) -> Result<()> {
    let c = trainer.config().clone();
    let arch = trainer.arch().clone();
    println!(
        "training an ADM prior ({}×{}×{}, {} ch, mult {:?}, {} res blocks, attention at ds {:?}; {} parameters) \
         on {} ({} images)",
        arch.in_channels,
        arch.image_size,
        arch.image_size,
        arch.model_channels,
        arch.channel_mult,
        arch.num_res_blocks,
        arch.attention_ds,
        trainer.num_params(),
        trainer.data().name(),
        trainer.data().len()
    );
    println!(
        "objective {:?}, batch {}, lr {} (warm-up {}), AdamW wd {}, clip {}, EMA half-life {} kimg (ramp-up {:?}), seed {}; \
         steps {}..{} → {}",
        c.objective,
        c.batch_size,
        c.lr,
        c.warmup_steps,
        c.weight_decay,
        c.grad_clip,
        c.ema_halflife_kimg,
        c.ema_rampup,
        c.seed,
        trainer.steps_done(),
        c.steps,
        out.display()
    );
    if trainer.steps_done() >= c.steps {
        println!(
            "already at step {} of {}: nothing to do (raise --steps to continue)",
            trainer.steps_done(),
            c.steps
        );
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let bar = ProgressBar::new(c.steps).with_position(trainer.steps_done());
    bar.set_style(
        ProgressStyle::with_template(
            "[{elapsed_precise}] {bar:30} {pos}/{len} ({per_sec}, eta {eta}) {msg}",
        )?
        .progress_chars("=> "),
    );
    let session = Instant::now();
    let first = trainer.steps_done();
    let mut smooth: Option<f64> = None;
    let mut step_s = 0.0;
    while trainer.steps_done() < c.steps {
        let t0 = Instant::now();
        let st = trainer.step()?;
        let dt = t0.elapsed().as_secs_f64();
        step_s += dt;
        trainer.add_seconds(dt);
        let s = smooth.map_or(st.loss, |s| 0.98 * s + 0.02 * st.loss);
        smooth = Some(s);
        bar.set_message(format!(
            "loss {:.4} (avg {s:.4}) |g| {:.3} lr {:.2e}",
            st.loss, st.grad_norm, st.lr
        ));
        bar.inc(1);
        let every = trainer.config().checkpoint_every;
        if st.step.is_multiple_of(every) || st.step == c.steps {
            let t1 = Instant::now();
            let grid = checkpoint(trainer, out)?;
            bar.println(format!(
                "step {}: checkpoint in {} ({:.1} s){}; loss avg {s:.4}",
                st.step,
                out.display(),
                t1.elapsed().as_secs_f64(),
                grid.map(|g| format!(", samples {}", g.display()))
                    .unwrap_or_default()
            ));
        }
    }
    bar.finish();
    let done = trainer.steps_done() - first;
    let wall = session.elapsed().as_secs_f64();
    println!(
        "{done} steps in {wall:.1} s: {:.3} s/step training, {:.3} s/step with checkpoints; \
         {:.1} s of training steps in total",
        step_s / done.max(1) as f64,
        wall / done.max(1) as f64,
        trainer.seconds()
    );
    println!(
        "prior: --prior adm:{}",
        out.join(daps::train::MODEL_FILE).display()
    );
    Ok(())
}

/// Saves the state and the EMA model, then a sample grid; returns the grid's path.
pub fn checkpoint(trainer: &Trainer, out: &Path) -> Result<Option<PathBuf>> {
    trainer.save(out)?;
    if trainer.config().sample_count == 0 {
        return Ok(None);
    }
    let x = trainer.ema_samples()?;
    let path = out.join(format!("samples-step{:07}.png", trainer.steps_done()));
    // Training data (image folders, MNIST) are read into [−1, 1].
    save_grid(&x, None, Some(daps::metric::image::IMAGE_RANGE), &path)?;
    Ok(Some(path))
}

pub fn sample(a: SampleArgs) -> Result<()> {
    if a.n == 0 || a.batch == 0 {
        bail!("--n and --batch must be ≥ 1");
    }
    let mut inputs = super::outputs::Inputs::default();
    inputs.prior(a.prior.as_deref());
    super::outputs::file("--out", &a.out, &["png"], &inputs)?;
    let dev = device()?;
    // No --prior: the built-in digits prior.
    let prior = daps::prior::load_with(a.prior.as_deref(), &dev, a.text.condition().as_ref())?;
    let shape = prior
        .sample_shape()
        .context("this prior does not fix an image shape")?;
    let latent = prior.as_latent();
    if shape.len() != 3 || (latent.is_none() && shape[0] != 1 && shape[0] != 3) {
        bail!("prior samples have shape {shape:?}; a grid needs images [C, H, W] (C = 1 or 3)");
    }
    // A latent prior's σ range ends far below 80 (Stable Diffusion: ≈14.6).
    let sigma_max = match latent {
        Some(_) if a.sigma_max > prior.sigma_range().1 => {
            let m = prior.sigma_range().1;
            println!(
                "σ_max {} lowered to the prior's largest σ, {m:.3}",
                a.sigma_max
            );
            m
        }
        _ => a.sigma_max,
    };
    let grid = EdmGrid {
        steps: a.steps,
        sigma_max,
        sigma_min: a.sigma_min,
        rho: a.rho,
    };
    println!(
        "{}: {} samples {:?}, Heun {} steps ({} NFE), σ {}→{}",
        prior.name(),
        a.n,
        shape,
        grid.steps,
        grid.nfe(),
        grid.sigma_max,
        grid.sigma_min
    );
    let t0 = Instant::now();
    let mut noise = SeededNoise::new(a.seed);
    let mut parts = Vec::new();
    let mut left = a.n;
    while left > 0 {
        let b = left.min(a.batch);
        let mut sh = vec![b];
        sh.extend(&shape);
        let z = daps::sampler::heun::heun_sample(prior.as_ref(), &sh, &grid, &mut noise, &dev)?;
        // Latent samples are decoded to images.
        parts.push(match latent {
            Some(l) => l.decode(&z)?,
            None => z,
        });
        left -= b;
    }
    let x = candle_core::Tensor::cat(&parts, 0)?;
    let range = match latent {
        Some(_) => daps::metric::image::IMAGE_RANGE,
        None => prior.data_range(),
    };
    save_grid(&x, a.cols, Some(range), &a.out)?;
    println!(
        "wrote {} in {:.1} s",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
