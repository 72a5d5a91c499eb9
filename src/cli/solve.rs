//! `daps measure`, `daps solve`, `daps tasks`: from a PNG to a measurement file, and from a
//! measurement file to restored PNGs with metrics.
//!
//! Images are read as RGB or grayscale (alpha dropped) and mapped [0, 255] → [−1, 1], f32
//! `[1, C, H, W]`. The measurement file format is described in [`daps::task::MeasurementFile`].
//!
//! The MRI tasks take complex images `[1, 2, H, W]` (real, imaginary). A PNG becomes the complex
//! image (v, 0) with v its luminance (0.299 R + 0.587 G + 0.114 B for RGB) mapped [0, 255] →
//! [0, 1], so that its magnitude is the picture (MRI images are normalised magnitudes, and
//! real/imaginary parts then lie in [−1, 1]). Restored images, trajectory frames and the metrics
//! use the magnitude |x| on [0, 1]; `--save-samples` keeps the raw two channels.

use super::outputs::{self, Inputs};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use daps::io::{display, read_complex_image, read_image, read_task_image, write_unit_image};
use daps::metric::image::{psnr, ssim, IMAGE_RANGE};
use daps::metric::lpips::Lpips;
use daps::operator::{per_chain_sq_norm, Operator};
use daps::prior::Denoiser;
use daps::sampler::{Method, Observer, Problem, StepInfo, X0Method};
use daps::task::{
    self, default_budget, preset_method, Explicit, MeasurementFile, Task, TaskFiles, TaskSpec,
    BUDGETS, TASKS,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct MeasureArgs {
    /// Task (see `daps tasks`).
    #[arg(long)]
    pub task: String,
    /// Image to measure (PNG or JPEG, RGB or grayscale).
    #[arg(long)]
    pub input: PathBuf,
    /// Measurement file to write (.safetensors); a preview PNG is written next to it.
    #[arg(long)]
    pub out: PathBuf,
    /// Measurement noise σ_y, in [−1, 1] image units.
    #[arg(long, default_value_t = 0.05)]
    pub sigma_y: f64,
    /// Seed of the measurement noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Mask PNG for inpaint-mask (nonzero = observed), the image's size.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Kernel for motion-blur: a square odd PNG (normalised to sum 1) or a .safetensors file
    /// with a `kernel` tensor (used as given).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Coil sensitivity maps for mri-4x / mri-8x: a .safetensors file with `maps` [C, H, W, 2]
    /// (default: simulated birdcage maps).
    #[arg(long)]
    pub maps: Option<PathBuf>,
    /// bkse network weights for nonlinear-blur: GOPRO_wVAE.pth (or a .safetensors conversion).
    #[arg(long)]
    pub blur_weights: Option<PathBuf>,
    /// Overrides a task parameter, e.g. `--param sigma=1.5` (repeatable; see `daps tasks`).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SolveArgs {
    /// Measurement file written by `daps measure`, or a folder of them: each NAME.safetensors
    /// is solved into --out (then a folder) as NAME.png, measurements of one operator batched
    /// together; rerunning the same command resumes.
    #[arg(long)]
    pub measurement: PathBuf,
    /// With a folder of measurements: measurements per sampler batch (each with --samples
    /// chains) [default: 16].
    #[arg(long)]
    pub batch: Option<usize>,
    /// With a folder of measurements: batches solved side by side (CPU only; at most the thread
    /// count at once), for small images on several cores; the same results [default: 1].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// bkse weights for a nonlinear-blur measurement (instead of the path it records).
    #[arg(long)]
    pub blur_weights: Option<PathBuf>,
    /// Prior as KIND:PATH[:CONFIG]: adm:FILE.pt:ffhq256, adm-x0:…, unet2d:DIR, gmm:FILE.safetensors, sd:DIR; an ADM network (or `default`) takes @bf16 / @f16 for mixed precision.
    #[arg(long)]
    pub prior: Option<String>,
    #[command(flatten)]
    pub text: super::PromptArgs,
    /// Where the solve runs (prior, operator, noise, sampler): cpu, or cuda[:N] (a `--features
    /// cuda` build); the result comes back to the CPU for the files and metrics.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Restored image; with --samples N > 1, OUT_0 … OUT_{N−1} and OUT_mean. With a folder of
    /// measurements, a folder (NAME.png, or NAME_i.png and NAME_mean.png, and NAME.json with the
    /// metrics, per measurement).
    #[arg(long)]
    pub out: PathBuf,
    /// Sampler (see `daps methods`) [default: the preset's, else daps].
    #[arg(long)]
    pub method: Option<String>,
    /// Sampler budget: daps-1k, daps-4k, daps-100, daps-50, dps-1000, or a sampler's own section
    /// (ddrm, ddnm, pigdm, diffpir, red-diff, mcgdiff, fps, score-ald, pnp-dm, where the task has
    /// one), daps-tuned (values per task in presets/) [default: the task's winner of the digits
    /// equal-NFE table (`daps tasks` marks it), else daps-1k; daps-1k with --method daps,
    /// dps-1000 with --method dps; its own section with --method NAME].
    #[arg(long)]
    pub preset: Option<String>,
    /// Independent samples (chains, run as one batch).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Ground-truth image: prints PSNR, SSIM and ‖A(x) − y‖ per sample. With a folder of
    /// measurements, a folder holding NAME.png (or .jpg, .jpeg) for each NAME.safetensors.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// VGG16 LPIPS weights (safetensors, see `daps::metric::lpips`): adds LPIPS to the metrics.
    #[arg(long, requires = "reference")]
    pub lpips_weights: Option<PathBuf>,
    /// Writes x̂0 and x0 frames (first 8 chains side by side) to this folder.
    #[arg(long)]
    pub save_trajectory: Option<PathBuf>,
    /// Frame interval in annealing steps (default: about 20 frames per run).
    #[arg(long)]
    pub trajectory_every: Option<usize>,
    /// Writes the raw samples (f32 `samples` [N, C, H, W] in [−1, 1], unclipped) as safetensors.
    #[arg(long)]
    pub save_samples: Option<PathBuf>,
    /// x0 step: langevin, hmc, mh, exact (linear tasks with a gmm: prior), or gaussian (the
    /// Gaussian x0 target drawn exactly; linear tasks).
    #[arg(long, value_parser = parse_x0_method)]
    pub x0_method: Option<X0Method>,
    #[arg(long)]
    pub annealing_steps: Option<usize>,
    #[arg(long)]
    pub ode_steps: Option<usize>,
    #[arg(long)]
    pub mcmc_steps: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub lr_min_ratio: Option<f64>,
    #[arg(long)]
    pub tau: Option<f64>,
    /// Particles per sample (daps-smc).
    #[arg(long)]
    pub particles: Option<usize>,
    /// Overrides any sampler setting, e.g. `--set momentum=0.5` (repeatable; TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Args, Debug)]
pub struct TasksArgs {
    /// Show the parameters for this image size (H = W).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
}

pub fn key_value(s: &str) -> Result<(&str, &str)> {
    s.split_once('=')
        .map(|(k, v)| (k.trim(), v.trim()))
        .ok_or_else(|| anyhow!("expected KEY=VALUE, got '{s}'"))
}

// ---------------------------------------------------------------------------------------------
// Images

/// A viewable [0, 1] image of the measurement ([`Task::preview`]).
pub fn preview(mf: &MeasurementFile) -> Result<Tensor> {
    Ok(mf.task.preview(&mf.y)?)
}

// ---------------------------------------------------------------------------------------------
// daps measure

pub fn measure(a: MeasureArgs) -> Result<()> {
    let mut inputs = Inputs::default();
    inputs
        .add("--input", Some(&a.input))
        .add("--mask", a.mask.as_deref())
        .add("--kernel", a.kernel.as_deref())
        .add("--maps", a.maps.as_deref())
        .add("--blur-weights", a.blur_weights.as_deref());
    outputs::file("--out", &a.out, &["safetensors"], &inputs)?;
    let view = a.out.with_extension("png");
    outputs::file(
        "the preview (--out with .png)",
        &view,
        outputs::IMAGE,
        &inputs,
    )?;
    super::check_sigma_y(a.sigma_y)?;
    daps::task::info(&a.task)?;
    let files = TaskFiles {
        mask: a.mask.clone(),
        kernel: a.kernel.clone(),
        maps: a.maps.clone(),
        weights: a.blur_weights.clone(),
    };
    let probe = read_image(&a.input)?;
    let (_, _, h, w) = probe.dims4()?;
    let mut spec = TaskSpec::defaults(&a.task, h, w, &files)?;
    for p in &a.params {
        let (k, v) = key_value(p)?;
        spec = spec.set(k, v)?;
    }
    let x = if spec.is_complex() {
        read_complex_image(&a.input)?
    } else {
        probe
    };
    let c = x.dim(1)?;
    let task = Task::build(spec, [c, h, w])
        .with_context(|| format!("{} ({c}×{h}×{w})", a.input.display()))?;
    let mf = MeasurementFile::simulate(task, &x, a.sigma_y, a.seed)?;
    mf.save(&a.out)?;
    write_unit_image(&preview(&mf)?, &view)?;
    println!(
        "{}: {}, σ_y {}, seed {}; y {:?} → {} (preview {})",
        a.input.display(),
        mf.task.describe(),
        mf.sigma_y,
        mf.seed,
        mf.y.dims(),
        a.out.display(),
        view.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// daps solve

fn parse_x0_method(s: &str) -> Result<X0Method> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| anyhow!("unknown x0 step '{s}' (valid: langevin, hmc, mh, exact, gaussian)"))
}

/// The sampler: the task's preset (or `--method`'s default preset), then the explicit flags
/// (field by field), then `--set`.
pub fn solve_method(task: &str, a: &SolveArgs) -> Result<Method> {
    if let Some(name) = &a.method {
        daps::sampler::method_info(name)?;
    }
    let budget = match (&a.preset, &a.method) {
        (Some(p), _) => p.as_str(),
        (None, Some(m)) => default_budget(m),
        (None, None) => task::solve_default(task),
    };
    // A sampler without settings for this task runs with its registered defaults.
    let mut m = match (&a.preset, &a.method) {
        (None, Some(name)) if !task::has_preset(task, budget) => Method::from_name(name)?,
        _ => preset_method(task, budget)?,
    };
    match (&mut m, a.method.as_deref()) {
        (_, None) => {}
        (m, Some(name)) if m.name() == name => {}
        (Method::Daps(c), Some("daps-exact")) => c.x0_method = X0Method::Exact,
        (Method::Daps(c), Some("daps-gaussian")) => c.x0_method = X0Method::Gaussian,
        (Method::Daps(c), Some("daps-guided")) => {
            if let Method::Daps(d) = Method::from_name("daps-guided")? {
                c.guidance = d.guidance;
            }
        }
        // A sampler without presets of its own: its registered defaults.
        (m, Some(name)) if a.preset.is_none() => *m = Method::from_name(name)?,
        (m, Some(name)) => bail!(
            "--method {name} does not match preset {budget}, which is a {} preset",
            m.name()
        ),
    }
    let daps_flags = [
        ("--x0-method", a.x0_method.is_some()),
        ("--annealing-steps", a.annealing_steps.is_some()),
        ("--ode-steps", a.ode_steps.is_some()),
        ("--mcmc-steps", a.mcmc_steps.is_some()),
        ("--lr", a.lr.is_some()),
        ("--lr-min-ratio", a.lr_min_ratio.is_some()),
        ("--tau", a.tau.is_some()),
    ];
    match &mut m {
        Method::Daps(c) => {
            macro_rules! set {
                ($($f:ident),*) => { $(if let Some(v) = a.$f { c.$f = v; })* };
            }
            set!(
                x0_method,
                annealing_steps,
                ode_steps,
                mcmc_steps,
                lr,
                lr_min_ratio,
                tau
            );
        }
        other => {
            if let Some((flag, _)) = daps_flags.iter().find(|(_, given)| *given) {
                bail!(
                    "{flag} is a DAPS setting; {} takes --set KEY=VALUE",
                    other.name()
                );
            }
        }
    }
    if let Some(k) = a.particles {
        m = m.set("particles", &k.to_string())?;
    }
    for s in &a.set {
        let (k, v) = key_value(s)?;
        m = m.set(k, v)?;
    }
    m.validate()?;
    Ok(m)
}

/// Progress bar, trajectory frames, and the last x0 (kept for a run that fails).
pub(super) struct Progress {
    pub(super) bar: ProgressBar,
    complex: bool,
    frames: Option<(PathBuf, usize)>,
    pub(super) last: Option<(usize, Tensor)>,
    pub(super) misfit: f64,
}

/// The first (up to) 8 chains of `[N, C, H, W]` side by side, as `[C, H, n·W]`.
fn strip(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?.min(8);
    let parts: Vec<Tensor> = (0..n)
        .map(|i| x.get(i))
        .collect::<candle_core::Result<_>>()?;
    Ok(Tensor::cat(&parts, 2)?)
}

impl Progress {
    /// A bar over `steps` sampler steps; `frames`: (folder, every k steps) for trajectory frames.
    pub(super) fn new(steps: usize, complex: bool, frames: Option<(PathBuf, usize)>) -> Self {
        let bar = ProgressBar::new(steps as u64).with_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps, ETA {eta_precise}  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Self {
            bar,
            complex,
            frames,
            last: None,
            misfit: f64::NAN,
        }
    }

    fn save_frames(&self, s: &StepInfo) -> Result<()> {
        let Some((dir, every)) = &self.frames else {
            return Ok(());
        };
        if !s.step.is_multiple_of(*every) && s.step + 1 != s.steps {
            return Ok(());
        }
        let frame = |x: &Tensor, p: PathBuf| -> Result<()> {
            let x = x.to_device(&Device::Cpu)?;
            Ok(write_unit_image(
                &strip(&display(&x, self.complex, IMAGE_RANGE)?)?,
                &p,
            )?)
        };
        if let Some(h) = s.x0hat {
            frame(h, dir.join(format!("x0hat_{:04}.png", s.step)))?;
        }
        frame(s.x0, dir.join(format!("x0_{:04}.png", s.step)))
    }
}

impl Observer for Progress {
    fn on_step(&mut self, s: &StepInfo) -> daps::Result<()> {
        self.bar.set_length(s.steps as u64);
        self.bar.set_position(s.step as u64 + 1);
        self.bar
            .set_message(format!("σ {:<8.4} ‖A(x0)−y‖ {:.4}", s.sigma, s.misfit));
        self.last = Some((s.step, s.x0.clone()));
        self.misfit = s.misfit;
        self.save_frames(s)
            .map_err(|e| daps::Error::msg(format!("saving trajectory frames: {e:#}")))
    }
}

/// The `i` or `mean` of `OUT_i.EXT` / `OUT_mean.EXT` when `p` is such a name next to `out`.
fn sample_label(out: &Path, p: &Path) -> Option<String> {
    let same_dir = |a: &Path, b: &Path| {
        let dir = |x: &Path| {
            let d = x
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            d.canonicalize().ok()
        };
        dir(a).is_some() && dir(a) == dir(b)
    };
    let stem = out.file_stem()?.to_str()?;
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("png");
    let name = p.file_name()?.to_str()?;
    let label = name
        .strip_prefix(&format!("{stem}_"))?
        .strip_suffix(&format!(".{ext}"))?;
    same_dir(out, p).then(|| label.to_string())
}

/// `out` for one sample; `OUT_i` / `OUT_mean` (same extension) for several.
fn output_path(out: &Path, label: Option<&str>) -> PathBuf {
    match label {
        None => out.to_path_buf(),
        Some(l) => {
            let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("x");
            let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
            out.with_file_name(format!("{stem}_{l}.{ext}"))
        }
    }
}

/// Writes every sample and, for several, their mean; returns the paths. Complex samples are
/// written as their magnitude (the mean is the mean complex image's magnitude).
pub(super) fn write_samples(x: &Tensor, out: &Path, complex: bool) -> Result<Vec<PathBuf>> {
    let n = x.dim(0)?;
    let write = |x: &Tensor, p: &Path| {
        write_unit_image(&display(&x.unsqueeze(0)?, complex, IMAGE_RANGE)?, p)
    };
    if n == 1 {
        write(&x.get(0)?, out)?;
        return Ok(vec![out.to_path_buf()]);
    }
    let mut paths = Vec::with_capacity(n + 1);
    for i in 0..n {
        let p = output_path(out, Some(&i.to_string()));
        write(&x.get(i)?, &p)?;
        paths.push(p);
    }
    let p = output_path(out, Some("mean"));
    write(&x.mean(0)?, &p)?;
    paths.push(p);
    Ok(paths)
}

/// Checks every output of `daps solve` before any work: the image(s) `--out` names (one per
/// sample, their mean, a partial result), `--save-samples`, `--save-trajectory`.
fn check_solve_outputs(a: &SolveArgs) -> Result<()> {
    let mut inputs = Inputs::default();
    inputs
        .add("--measurement", Some(&a.measurement))
        .add("--reference", a.reference.as_deref())
        .add("--lpips-weights", a.lpips_weights.as_deref())
        .add("--blur-weights", a.blur_weights.as_deref())
        .prior(a.prior.as_deref());
    outputs::file("--out", &a.out, outputs::IMAGE, &inputs)?;
    if a.samples > 1 {
        // OUT_0 … OUT_{N−1}, OUT_mean: one folder, so only the names can meet an input.
        for (flag, p) in inputs.paths() {
            if let Some(label) = sample_label(&a.out, p) {
                if label == "mean" || label.parse::<usize>().is_ok_and(|i| i < a.samples) {
                    bail!(
                        "--out {} would write {} over {flag}: refusing to overwrite an input",
                        a.out.display(),
                        p.display()
                    );
                }
            }
        }
    }
    if let Some(p) = &a.save_samples {
        outputs::file("--save-samples", p, &["safetensors"], &inputs)?;
        inputs.add("--save-samples", Some(p));
    }
    if let Some(d) = &a.save_trajectory {
        outputs::dir("--save-trajectory", d, &inputs)?;
    }
    Ok(())
}

/// Checks that `prior` takes images of the measurement's shape (a latent prior: their latents).
pub(super) fn check_prior_takes(prior: &dyn Denoiser, [c, h, w]: [usize; 3]) -> Result<()> {
    if let Some(l) = prior.as_latent() {
        // A latent prior's own shape is that of its latents.
        l.latent_shape(&[c, h, w])
            .with_context(|| format!("the measurement is of a {c}×{h}×{w} image"))?;
    } else if let Some(s) = prior.sample_shape() {
        if s != [c, h, w] {
            bail!(
                "prior {} takes samples of shape {s:?}, but the measurement is of a {c}×{h}×{w} image",
                prior.name()
            );
        }
    }
    Ok(())
}

/// The explicit operator matrix the exact x0 step needs (a Gaussian-mixture prior and a linear
/// task), or `None` when the sampler runs with the task itself.
pub(super) fn exact_step_operator<'a>(
    method: &Method,
    prior: &dyn Denoiser,
    task: &'a Task,
) -> Result<Option<Explicit<'a>>> {
    if !matches!(method, Method::Daps(c) if c.x0_method == X0Method::Exact) {
        return Ok(None);
    }
    if prior.as_gmm().is_none() {
        bail!("--x0-method exact needs a Gaussian-mixture prior (--prior gmm:FILE.safetensors)");
    }
    if !task.is_linear() {
        bail!(
            "--x0-method exact needs a linear task; {} is not",
            task.name()
        );
    }
    Ok(Some(task.explicit()?))
}

/// The explicit matrix when the exact x0 step needs one, else the task.
pub(super) fn sampler_operator<'a>(
    explicit: &'a Option<Explicit<'a>>,
    task: &'a Task,
) -> &'a dyn Operator {
    match explicit {
        Some(e) => e,
        None => task,
    }
}

pub fn solve(a: SolveArgs) -> Result<()> {
    if a.samples == 0 {
        bail!("--samples must be at least 1");
    }
    if a.measurement.is_dir() {
        return super::solve_dir::solve_dir(&a);
    }
    for (flag, given) in [("--batch", a.batch.is_some()), ("--jobs", a.jobs.is_some())] {
        if given {
            bail!(
                "{flag} applies to a folder of measurements; {} is a file",
                a.measurement.display()
            );
        }
    }
    let dev = daps::device::parse(&a.device)?;
    let files = TaskFiles {
        weights: a.blur_weights.clone(),
        ..TaskFiles::default()
    };
    let mf = MeasurementFile::load_with(&a.measurement, &files)?;
    for w in &mf.warnings {
        eprintln!("warning: {}: {w}", a.measurement.display());
    }
    let task = &mf.task;
    daps::task::check_batch(a.samples, task.shape()).context("--samples")?;
    check_solve_outputs(&a)?;
    let method = solve_method(task.name(), &a)?;
    let [c, h, w] = task.shape();
    let complex = task.is_complex();
    let reference = match &a.reference {
        Some(p) => {
            let r = read_task_image(p, complex)?;
            if r.dims() != [1, c, h, w] {
                bail!(
                    "reference {} is {:?}, but the measurement is of a {c}×{h}×{w} image",
                    p.display(),
                    &r.dims()[1..]
                );
            }
            Some(r)
        }
        None => None,
    };
    let lpips = match &a.lpips_weights {
        Some(p) => Some(Lpips::load(p, &Device::Cpu)?),
        None => None,
    };
    let prior = daps::prior::load_on(a.prior.as_deref(), &dev, a.text.condition().as_ref())?;
    check_prior_takes(&*prior, task.shape())?;
    let explicit = exact_step_operator(&method, &*prior, task)?;
    let op = sampler_operator(&explicit, task);
    let measurement = mf.measurement();
    let problem = Problem {
        prior: &*prior,
        operator: op,
        measurement: &measurement,
    };
    method.supports(&problem)?;
    let settings = method.describe();
    if a.preset.is_none() && a.method.is_none() {
        eprintln!(
            "preset {} (this task's default: the winner of the digits equal-NFE table, see \
             README; choose with --preset or --method)",
            task::solve_default(task.name())
        );
    }
    eprintln!(
        "{}; σ_y {}; prior {}; {} {settings}; {} sample(s), seed {}",
        task.describe(),
        mf.sigma_y,
        prior.name(),
        method.name(),
        a.samples,
        a.seed
    );
    if let Method::Daps(cfg) = &method {
        let from = if a.tau.is_some() {
            "--tau".to_string()
        } else if a.set.iter().any(|s| s.trim_start().starts_with("tau")) {
            "--set".to_string()
        } else {
            format!(
                "preset {}",
                a.preset
                    .as_deref()
                    .unwrap_or(task::solve_default(mf.task.name()))
            )
        };
        if cfg.tau_rule == daps::sampler::TauRule::Measurement && mf.sigma_y > 0.0 {
            eprintln!(
                "likelihood: τ = σ_y = {} (tau_rule = measurement, from {from})",
                mf.sigma_y
            );
        } else {
            eprintln!(
                "likelihood: τ = {} from {from}; the measurement's σ_y = {} is not used by the x0 \
                 step (the official presets temper the likelihood with τ = 0.01; `--tau {}` or \
                 `--set tau_rule=measurement` uses σ_y)",
                cfg.tau, mf.sigma_y, mf.sigma_y
            );
        }
    }
    let steps = method.steps();
    let every = a.trajectory_every.unwrap_or((steps / 20).max(1)).max(1);
    let mut progress = Progress::new(
        steps,
        complex,
        a.save_trajectory.clone().map(|d| (d, every)),
    );
    let started = Instant::now();
    let shape = [a.samples, c, h, w];
    let result = super::sized_threads(&shape, prior.device().is_cpu(), || {
        Ok(method.run_on_device(&problem, &shape, a.seed, &mut progress))
    })?;
    progress.bar.finish_and_clear();
    let x = match result {
        Ok(x) => x,
        Err(e) => {
            let Some((step, x0)) = progress.last.take() else {
                return Err(anyhow!(e).context(format!(
                    "{} failed before its first step ended",
                    method.name()
                )));
            };
            let partial = output_path(&a.out, Some(&format!("partial_step{step:04}")));
            let kept = write_samples(&x0.to_device(&Device::Cpu)?, &partial, complex)?;
            return Err(anyhow!(e).context(format!(
                "{} stopped; the last x0 (annealing step {step}) is in {}",
                method.name(),
                kept.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    eprintln!(
        "{steps} steps in {:.1} s ({:.3} s/step); mean ‖A(x0)−y‖ {:.4}",
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() / steps as f64,
        progress.misfit
    );
    if let Some(p) = &a.save_samples {
        let mut meta = BTreeMap::new();
        meta.insert("measurement".into(), a.measurement.display().to_string());
        meta.insert("seed".into(), a.seed.to_string());
        task::write_safetensors(p, &[("samples", x.clone())], &meta)?;
    }
    let paths = write_samples(&x, &a.out, complex)?;
    println!(
        "wrote {}",
        if paths.len() <= 3 {
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            format!(
                "{}, …, {}",
                paths[0].display(),
                paths[paths.len() - 1].display()
            )
        }
    );
    print_metrics(&x, reference.as_ref(), lpips.as_ref(), &mf)?;
    Ok(())
}

/// Per-sample ‖A(x) − y‖, and PSNR / SSIM (and LPIPS) against the reference when there is one.
fn print_metrics(
    x: &Tensor,
    reference: Option<&Tensor>,
    lpips: Option<&Lpips>,
    mf: &MeasurementFile,
) -> Result<()> {
    let n = x.dim(0)?;
    let r = mf.measurement().residual(&mf.task, x)?;
    let misfit: Vec<f32> = per_chain_sq_norm(&r)?.sqrt()?.to_vec1()?;
    let Some(gt) = reference else {
        let mean = misfit.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
        println!("‖A(x) − y‖: mean {mean:.4} over {n} sample(s)");
        return Ok(());
    };
    let mut rows = Vec::with_capacity(n + 1);
    let complex = mf.task.is_complex();
    // The tasks' images span IMAGE_RANGE; scored on [0, 1] as DAPS does.
    let gt_unit = display(gt, complex, IMAGE_RANGE)?;
    let score = |img: &Tensor| -> Result<(f64, Option<f64>, Option<f64>)> {
        let u = display(img, complex, IMAGE_RANGE)?;
        let p = psnr(&u, &gt_unit, 1.0)?[0];
        let s = ssim(&u, &gt_unit, 1.0).ok().map(|v| v[0]);
        let l = lpips.map(|l| l.distance(&u, &gt_unit)).transpose()?;
        Ok((p, s, l.map(|v| v[0])))
    };
    for (i, m) in misfit.iter().enumerate() {
        let (p, s, l) = score(&x.narrow(0, i, 1)?)?;
        rows.push((i.to_string(), p, s, l, *m as f64));
    }
    if n > 1 {
        let m = x.mean_keepdim(0)?;
        let (p, s, l) = score(&m)?;
        let r = mf.measurement().residual(&mf.task, &m)?;
        let mm = per_chain_sq_norm(&r)?.sqrt()?.to_vec1::<f32>()?[0] as f64;
        rows.push(("mean".into(), p, s, l, mm));
    }
    let lp = if lpips.is_some() { "  LPIPS" } else { "" };
    println!(
        "{:>8} {:>8} {:>7}{lp} {:>10}",
        "sample", "PSNR", "SSIM", "‖A(x)−y‖"
    );
    type Row = (String, f64, Option<f64>, Option<f64>, f64);
    let fmt = |(l, p, s, lp, m): &Row| {
        let s = s.map_or("–".to_string(), |v| format!("{v:.4}"));
        let lp = lp.map_or(String::new(), |v| format!(" {v:>6.4}"));
        println!("{l:>8} {p:>8.2} {s:>7}{lp} {m:>10.4}");
    };
    let shown = 20;
    for r in rows.iter().take(shown.min(n)) {
        fmt(r);
    }
    if n > shown {
        println!("{:>8}", "…");
    }
    if n > 1 {
        fmt(&rows[n]);
        let ps: Vec<f64> = rows[..n].iter().map(|r| r.1).collect();
        let mean = ps.iter().sum::<f64>() / n as f64;
        let sd = (ps.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        println!("PSNR over samples: mean {mean:.2} ± {sd:.2} (sd)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// daps tasks

pub fn tasks(a: TasksArgs) -> Result<()> {
    let s = a.size;
    println!("Tasks (parameters at {s}×{s}; override with `daps measure --param KEY=VALUE`):\n");
    for t in TASKS {
        println!("{:<16} {} (DAPS: {})", t.name, t.summary, t.official);
        let files = TaskFiles {
            mask: (t.name == "inpaint-mask").then(|| PathBuf::from("MASK.png")),
            weights: (t.name == "nonlinear-blur").then(|| PathBuf::from("GOPRO_wVAE.pth")),
            ..TaskFiles::default()
        };
        let spec = TaskSpec::defaults(t.name, s, s, &files)?;
        let ch = spec.channels().unwrap_or(3);
        let params: Vec<String> = spec
            .params()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let shape = match t.name {
            "inpaint-mask" => "same as the image".to_string(),
            "nonlinear-blur" => "same as the image (H, W multiples of 128)".to_string(),
            _ => match Task::build(spec.clone(), [ch, s, s]) {
                Ok(task) => format!("{:?}", task.output_shape()),
                Err(e) => format!("not available at this size: {e}"),
            },
        };
        println!("{:<16} parameters: {}", "", params.join(", "));
        println!("{:<16} y for a {ch}×{s}×{s} image: {shape}", "");
        let budgets = task::budgets(t.name)?;
        let default = task::solve_default(t.name);
        for b in &budgets {
            let m = preset_method(t.name, b)?;
            let mark = if *b == default {
                " (solve's default)"
            } else {
                ""
            };
            println!("{:<16} {b:<11} {}{mark}", "", m.describe());
        }
        // Other sections named after a sampler (`--method NAME` uses them).
        for info in daps::sampler::METHODS {
            if !budgets.contains(&info.name) && task::has_preset(t.name, info.name) {
                let m = preset_method(t.name, info.name)?;
                println!("{:<16} {:<11} {}", "", info.name, m.describe());
            }
        }
        println!();
    }
    println!(
        "Blur kernels keep 61×61 / σ 3 from 128 px up; smaller images use σ = 3·s/256 and the odd size\n\
         nearest 61·s/256 (s = min(H, W)). The box hole is 128·H/256 × 128·W/256. Masks and kernels\n\
         use `seed` (default 42); --seed of `daps measure` seeds the measurement noise only.\n\
         MRI tasks take complex images (2 channels: real, imaginary): a PNG is read as (luminance in\n\
         [0, 1], 0), outputs and metrics use the magnitude; k-space noise is masked like y. Their\n\
         presets are not official (no DAPS config exists): lr 1e-4, τ 0.01, mid-range of InverseBench's sweep.\n\
         nonlinear-blur runs the bkse KernelWizard network: pass its weights GOPRO_wVAE.pth (bkse\n\
         project, VinAIResearch/blur-kernel-space-exploring; not shipped) with --blur-weights FILE."
    );
    Ok(())
}

/// `daps methods`: every registered sampler with its NFE per chain (default settings, and the
/// budgets of the task presets that use it).
pub fn methods() -> Result<()> {
    println!("{:<12} {:>6}  {}", "method", "NFE", "description");
    for info in daps::sampler::METHODS {
        let m = (info.default)();
        let mut budgets: Vec<String> = BUDGETS
            .iter()
            .filter_map(|b| {
                let p = preset_method("sr4", b).ok()?;
                (p.name() == info.name).then(|| format!("{b} {}", p.nfe()))
            })
            .collect();
        if task::METHOD_PRESETS.contains(&info.name) {
            // Its own section, in the tasks it supports.
            for t in task::TASKS {
                if task::budgets(t.name)?.contains(&info.name) {
                    let p = preset_method(t.name, info.name)?;
                    budgets.push(format!("{} {}", t.name, p.nfe()));
                }
            }
        }
        println!("{:<12} {:>6}  {}", info.name, m.nfe(), info.summary);
        println!("{:<12} {:>6}  {}", "", "", info.reference);
        if !budgets.is_empty() {
            println!(
                "{:<12} {:>6}  presets (NFE): {}",
                "",
                "",
                budgets.join(", ")
            );
        }
    }
    println!(
        "\nNFE: network evaluations per chain with the default settings (`daps-exact` calls no\n\
         network: it needs a Gaussian-mixture prior). Select with `daps solve --method NAME` and\n\
         `--preset BUDGET`; `daps tasks` shows every preset's settings per task."
    );
    Ok(())
}
