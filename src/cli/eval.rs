//! `daps eval`: a dataset × tasks × methods × runs into one folder, resumable and shardable (see
//! [`daps::eval`] for the jobs, seeds and folder layout); `daps report RUN/` summarises it.

use super::outputs::{self, Inputs};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use daps::eval::COVERAGE_LEVEL;
use daps::eval::{EvalRecord, EvalSettings, Job, RunDir, Shard};
use daps::io::{write_image, write_unit_image};
use daps::metric::image::{coverage, psnr, ssim, to_unit, IMAGE_RANGE};
use daps::metric::lpips::Lpips;
use daps::operator::{per_chain_sq_norm, Measurement, Operator};
use daps::prior::Denoiser;
use daps::sampler::{Method, Problem, Silent, METHODS};
use daps::task::{demo_tasks, resolve_method, MeasurementFile, Task, TaskFiles, TaskSpec};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// `digits` (the built-in 32×32 digits) or a folder of PNG/JPEG images (sorted by path,
    /// resized and centre-cropped to the prior's image size).
    #[arg(long, default_value = "digits")]
    pub data: String,
    /// Images to evaluate [default: 100 digits, or every image of the folder]. Raising it on an
    /// existing run extends that run (its finished records are kept).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Offset into the images (for digits: into the split).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Digits only: held-out (9000..10000, never trained on) or train (0..9000, for tuning).
    #[arg(long, default_value = "held-out")]
    pub split: String,
    /// Tasks, comma-separated, or `all` (every real-image task that fits the images).
    #[arg(long, value_delimiter = ',', required = true)]
    pub tasks: Vec<String>,
    /// Methods, comma-separated: a task preset (`daps-50`, `daps-1k`, `dps-1000`), `dps-N`, a
    /// method of `daps methods` (its preset section, else its defaults), each optionally with
    /// `@KEY=VALUE` overrides, or `all` (every registered method). Each method runs on the tasks
    /// it supports (the others are listed and skipped); one that supports none is an error.
    #[arg(long, value_delimiter = ',', required = true)]
    pub methods: Vec<String>,
    /// Runs per image: `N` for every task, and/or `TASK=N` (e.g. `1,phase-retrieval=4`).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub runs: Vec<String>,
    /// How the report combines runs of one image: `each` (best PSNR and best SSIM separately,
    /// as the DAPS paper scores phase retrieval) or `psnr` (every metric from the best-PSNR run).
    #[arg(long, default_value = "each")]
    pub best_of: String,
    /// Measurement noise σ_y in image units ([−1, 1]).
    #[arg(long, default_value_t = 0.05)]
    pub sigma_y: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per sampler batch (a batch is the unit of work: shards and resumption never split it).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Posterior samples per image (chains of one batch): with K ≥ 2 the records add the
    /// coverage of the truth by the samples' per-pixel interval (16 for a calibration table);
    /// PSNR, SSIM and the saved picture are of the first sample.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Prior [default: the built-in digits prior; `default@f16` / `@bf16` runs it in half precision].
    #[arg(long)]
    pub prior: Option<String>,
    /// Where the solves run (prior, operators, noise, samplers): cpu, or cuda[:N] (a
    /// `--features cuda` build); measurements, metrics and files stay on the CPU.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// VGG16 LPIPS weights (safetensors, see `daps::metric::lpips`): adds LPIPS to the records.
    #[arg(long)]
    pub lpips_weights: Option<PathBuf>,
    /// `k/n`: run only the k-th of n deterministic slices of the work (1 ≤ k ≤ n); the n shards
    /// together give the same records as one unsharded run.
    #[arg(long)]
    pub shard: Option<String>,
    /// Batches run side by side (CPU only; at most the thread count at once): for small images
    /// on several cores, where one batch's ops are too small to keep them all busy. The same
    /// records either way; each record's time is its batch's, run beside the others.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// The run folder (created; rerunning the same command resumes it).
    #[arg(long)]
    pub out: PathBuf,
}

/// One task, built, with its methods resolved.
struct Planned {
    task: Task,
    methods: Vec<(String, Method)>,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let shard: Shard = match &a.shard {
        Some(s) => s.parse()?,
        None => Shard::WHOLE,
    };
    super::check_sigma_y(a.sigma_y)?;
    let dev = daps::device::parse(&a.device)?;
    if a.batch == 0 || a.samples == 0 || a.limit == Some(0) || a.jobs == 0 {
        bail!("--batch, --samples, --limit and --jobs must be ≥ 1");
    }
    super::check_jobs(a.jobs, dev.is_cpu(), &a.device)?;
    let mut inputs = Inputs::default();
    inputs
        .prior(a.prior.as_deref())
        .add("--lpips-weights", a.lpips_weights.as_deref());
    if a.data != "digits" {
        inputs.add("--data", Some(std::path::Path::new(&a.data)));
    }
    for (flag, p) in inputs.paths() {
        if p.starts_with(&a.out) {
            bail!(
                "--out {} holds the input {flag} {}",
                a.out.display(),
                p.display()
            );
        }
    }
    outputs::writable_dir("--out", &a.out)?;

    let prior = daps::prior::load_on(a.prior.as_deref(), &dev, None)?;
    if prior.as_latent().is_some() {
        bail!(
            "daps eval with a latent prior ({}): not yet supported; use daps solve --method latent-daps",
            prior.name()
        );
    }
    let (ids, truth) = load_data(&a, &*prior)?;
    let (_, c, h, w) = truth.dims4()?;
    let lpips = match &a.lpips_weights {
        Some(p) => Some(Lpips::load(p, &candle_core::Device::Cpu)?),
        None => None,
    };

    // Tasks and methods are checked before any work.
    let task_names: Vec<String> = if a.tasks == ["all"] {
        demo_tasks().map(String::from).collect()
    } else {
        a.tasks.clone()
    };
    let all_methods = a.methods == ["all"];
    let method_names: Vec<String> = if all_methods {
        METHODS.iter().map(|m| m.name.to_string()).collect()
    } else {
        a.methods.clone()
    };
    let mut plan = Vec::new();
    let mut excluded = Vec::new();
    let mut first_refusal = std::collections::HashMap::new();
    for name in &task_names {
        let spec = TaskSpec::defaults(name, h, w, &TaskFiles::default())?;
        if spec.is_complex() {
            bail!("task {name} takes complex images; daps eval runs real images");
        }
        let task = Task::build(spec, [c, h, w]).with_context(|| format!("task {name}"))?;
        // A probe measurement for `supports`: the truth of the first image, noiseless.
        let probe = Measurement {
            y: task.forward(&truth.narrow(0, 0, 1)?)?,
            sigma_y: a.sigma_y,
        };
        let problem = Problem {
            prior: &*prior,
            operator: &task,
            measurement: &probe,
        };
        let mut methods = Vec::new();
        for m in &method_names {
            let method = resolve_method(name, m)?;
            method
                .validate()
                .with_context(|| format!("method {m} on {name}"))?;
            match method.supports(&problem) {
                Ok(()) => methods.push((m.clone(), method)),
                Err(e) => {
                    eprintln!("  skipping {m} on {name}: {e}");
                    excluded.push([name.clone(), m.clone()]);
                    first_refusal.entry(m.clone()).or_insert(e.to_string());
                }
            }
        }
        plan.push(Planned { task, methods });
    }
    // A method named explicitly must solve at least one of the tasks.
    for m in method_names.iter().filter(|_| !all_methods) {
        if plan.iter().all(|p| p.methods.iter().all(|(n, _)| n != m)) {
            let e = first_refusal.get(m).cloned().unwrap_or_default();
            bail!(
                "method {m} cannot solve any of the tasks ({}): {e}",
                task_names.join(", ")
            );
        }
    }
    let settings = EvalSettings {
        data: a.data.clone(),
        images: ids,
        tasks: task_names.clone(),
        methods: method_names,
        runs: runs_per_task(&a.runs, &task_names)?,
        best_of: a.best_of.clone(),
        sigma_y: a.sigma_y,
        seed: a.seed,
        batch: a.batch,
        prior: a.prior.clone().unwrap_or_else(|| "default".into()),
        excluded,
        samples: a.samples,
    };
    let run = RunDir(a.out.clone());
    run.claim(&settings)?;

    let jobs: Vec<Job> = settings
        .jobs()
        .into_iter()
        .filter(|j| shard.takes(j))
        .collect();
    let todo: Vec<&Job> = jobs
        .iter()
        .filter(|j| !run.job_done(&settings, j))
        .collect();
    eprintln!(
        "daps eval: {} image(s), {} task(s), {} method(s); shard {}/{}: {} job(s), {} already done",
        settings.images.len(),
        settings.tasks.len(),
        settings.methods.len(),
        shard.index + 1,
        shard.count,
        jobs.len(),
        jobs.len() - todo.len()
    );
    let chains = a.batch.min(settings.images.len()) * a.samples;
    super::suggest_jobs(&[chains, c, h, w], todo.len(), a.jobs, dev.is_cpu());
    let started = Instant::now();
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let one = |job: &Job| -> Result<()> {
        let t = settings
            .tasks
            .iter()
            .position(|t| *t == job.task)
            .unwrap_or(0);
        let p = &plan[t];
        let Some((_, method)) = p.methods.iter().find(|(m, _)| *m == job.method) else {
            return Ok(());
        };
        let recs = run_job(
            &run,
            &settings,
            job,
            &p.task,
            method,
            &*prior,
            &truth,
            lpips.as_ref(),
        )
        .with_context(|| {
            format!(
                "{} on {} (run {}, images {}..{})",
                job.method, job.task, job.run, job.images.start, job.images.end
            )
        })?;
        let mean = recs.iter().map(|r| r.psnr).sum::<f64>() / recs.len().max(1) as f64;
        let k = finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "  [{}/{}] {:<16} {:<12} run {} images {:>4}..{:<4} PSNR {:6.2}  ({:.1} s)",
            k + 1,
            todo.len(),
            job.task,
            job.method,
            job.run,
            job.images.start,
            job.images.end,
            mean,
            recs.iter().map(|r| r.seconds).sum::<f64>()
        );
        Ok(())
    };
    super::in_lanes(&todo, a.jobs, |job| one(job))?;
    println!(
        "done: {} job(s) in {:.1} s; `daps report {}` summarises the run",
        todo.len(),
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

/// Image ids and the images `[N, C, H, W]` in [−1, 1].
fn load_data(a: &EvalArgs, prior: &dyn Denoiser) -> Result<(Vec<String>, Tensor)> {
    if a.data == "digits" {
        let held_out = daps::prior::default::HELD_OUT;
        let split = match a.split.as_str() {
            "held-out" => held_out.clone(),
            "train" => 0..held_out.start,
            other => bail!("--split must be held-out or train, got '{other}'"),
        };
        let n = a.limit.unwrap_or(100);
        let (lo, hi) = (split.start + a.first, split.start + a.first + n);
        if hi > split.end {
            bail!(
                "--first {} + --limit {n} exceeds the {} {} digits",
                a.first,
                split.len(),
                a.split
            );
        }
        let set = daps::data::mnist_range(lo..hi)?;
        check_prior_shape(prior, set.images())?;
        return Ok((
            (lo..hi).map(|i| format!("digit-{i}")).collect(),
            set.images().clone(),
        ));
    }
    let dir = std::path::Path::new(&a.data);
    let paths = daps::data::find_images(dir)?;
    let Some([c, h, w]) = prior.sample_shape().map(|s| [s[0], s[1], s[2]]) else {
        bail!(
            "prior {} does not fix an image size; daps eval needs one to load {}",
            prior.name(),
            dir.display()
        );
    };
    if h != w {
        bail!(
            "prior {} takes {h}×{w} images; folders load square images",
            prior.name()
        );
    }
    let set = daps::data::load_image_folder(dir, h, Some(c))?;
    let mut ids: Vec<String> = Vec::new();
    for p in &paths {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let id: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if ids.contains(&id) {
            bail!(
                "two images in {} give the id '{id}' (rename one)",
                dir.display()
            );
        }
        ids.push(id);
    }
    let lo = a.first.min(ids.len());
    let hi = a.limit.map_or(ids.len(), |n| (lo + n).min(ids.len()));
    if lo >= hi {
        bail!(
            "--first {} leaves no images of the {} in {}",
            a.first,
            ids.len(),
            dir.display()
        );
    }
    Ok((ids[lo..hi].to_vec(), set.images().narrow(0, lo, hi - lo)?))
}

fn check_prior_shape(prior: &dyn Denoiser, x: &Tensor) -> Result<()> {
    let (_, c, h, w) = x.dims4()?;
    if let Some(s) = prior.sample_shape() {
        if s != [c, h, w] {
            bail!(
                "prior {} takes {s:?} images; the data are {c}×{h}×{w}",
                prior.name()
            );
        }
    }
    Ok(())
}

/// `N` for every task and `TASK=N` overrides, as one count per task.
fn runs_per_task(spec: &[String], tasks: &[String]) -> Result<Vec<usize>> {
    let mut all = 1;
    let mut per: Vec<(String, usize)> = Vec::new();
    let count = |v: &str| -> Result<usize> {
        match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => bail!("--runs takes counts ≥ 1 (N or TASK=N), got '{v}'"),
        }
    };
    for s in spec {
        match s.split_once('=') {
            Some((t, v)) => {
                if !tasks.iter().any(|x| x == t) {
                    bail!("--runs names task '{t}', which is not among --tasks");
                }
                per.push((t.to_string(), count(v)?));
            }
            None => all = count(s)?,
        }
    }
    Ok(tasks
        .iter()
        .map(|t| per.iter().rev().find(|(x, _)| x == t).map_or(all, |p| p.1))
        .collect())
}

/// The measurement of image `i` for `task`: read from the run folder, or simulated with its
/// recorded seed and saved (with the truth and a preview) when missing or unreadable.
fn measurement(
    run: &RunDir,
    s: &EvalSettings,
    task: &Task,
    truth: &Tensor,
    i: usize,
) -> Result<Tensor> {
    let id = &s.images[i];
    let path = run.measurement(task.name(), id);
    let seed = s.measurement_seed(task.name(), id);
    if let Ok(mf) = MeasurementFile::load(&path) {
        if mf.seed == seed && mf.sigma_y == s.sigma_y && mf.y.dims()[0] == 1 {
            return Ok(mf.y);
        }
    }
    let x = truth.narrow(0, i, 1)?;
    let rebuilt = Task::build(task.spec().clone(), task.shape())?;
    let mf = MeasurementFile::simulate(rebuilt, &x, s.sigma_y, seed)?;
    daps::eval::ensure_parent(&path)?;
    mf.save(&path)?;
    write_unit_image(
        &super::demo::preview(task, &mf.y)?,
        &run.measurement_preview(task.name(), id),
    )?;
    let tp = run.truth(id);
    if !tp.exists() {
        daps::eval::ensure_parent(&tp)?;
        write_image(&x, IMAGE_RANGE, &tp)?;
    }
    Ok(mf.y)
}

/// Runs one job and writes its pictures and records (records last).
#[allow(clippy::too_many_arguments)]
fn run_job(
    run: &RunDir,
    s: &EvalSettings,
    job: &Job,
    task: &Task,
    method: &Method,
    prior: &dyn Denoiser,
    truth: &Tensor,
    lpips: Option<&Lpips>,
) -> Result<Vec<EvalRecord>> {
    let ys = job
        .images
        .clone()
        .map(|i| measurement(run, s, task, truth, i))
        .collect::<Result<Vec<_>>>()?;
    // K samples per image: image i's chains are i·K .. i·K + K − 1.
    let k = s.samples;
    let ys: Vec<Tensor> = ys
        .iter()
        .flat_map(|y| std::iter::repeat_n(y.clone(), k))
        .collect();
    let m = Measurement {
        y: Tensor::cat(&ys, 0)?,
        sigma_y: s.sigma_y,
    };
    let problem = Problem {
        prior,
        operator: task,
        measurement: &m,
    };
    let [c, h, w] = task.shape();
    let n = job.images.len();
    let seed = s.job_seed(job);
    let t0 = Instant::now();
    let shape = [n * k, c, h, w];
    let all = super::sized_threads(&shape, prior.device().is_cpu(), || {
        Ok(method.run_on_device(&problem, &shape, seed, &mut Silent)?)
    })?;
    let seconds = t0.elapsed().as_secs_f64() / n as f64;
    let first: Vec<u32> = (0..n).map(|i| (i * k) as u32).collect();
    let x = all.index_select(&Tensor::new(first.as_slice(), all.device())?, 0)?;
    let gt = truth.narrow(0, job.images.start, n)?;
    // Images are in [−1, 1] (loaded from PNG/JPEG or the built-in digits); metrics on [0, 1].
    let (u, gu) = (to_unit(&x, IMAGE_RANGE)?, to_unit(&gt, IMAGE_RANGE)?);
    let (p, q) = (psnr(&u, &gu, 1.0)?, ssim(&u, &gu, 1.0)?);
    let l = lpips.map(|l| l.distance(&u, &gu)).transpose()?;
    let r = m
        .residual(task, &all)?
        .index_select(&Tensor::new(first.as_slice(), all.device())?, 0)?;
    let per_entry = (r.elem_count() / n) as f64;
    let misfit: Vec<f32> = (per_chain_sq_norm(&r)? / per_entry)?.sqrt()?.to_vec1()?;
    let mut recs = Vec::with_capacity(n);
    for (j, i) in job.images.clone().enumerate() {
        let id = &s.images[i];
        let img = run.image(&job.task, &job.method, id, job.run);
        daps::eval::ensure_parent(&img)?;
        write_image(&x.narrow(0, j, 1)?, IMAGE_RANGE, &img)?;
        let cov = if k >= 2 {
            let (cv, nominal) = coverage(
                &all.narrow(0, j * k, k)?,
                &gt.narrow(0, j, 1)?,
                COVERAGE_LEVEL,
            )?;
            (Some(cv), Some(nominal))
        } else {
            (None, None)
        };
        recs.push(EvalRecord {
            image: id.clone(),
            index: i,
            task: job.task.clone(),
            method: job.method.clone(),
            label: method_label(&job.method, method),
            nfe: method.nfe(),
            run: job.run,
            seed,
            psnr: p[j],
            ssim: q[j],
            lpips: l.as_ref().map(|v| v[j]),
            misfit: misfit[j] as f64,
            seconds,
            coverage: cov.0,
            coverage_nominal: cov.1,
        });
    }
    for r in &recs {
        run.write_record(r)?;
    }
    Ok(recs)
}

/// A method's label; a spec with overrides (`daps-1k@tau_rule=measurement`) keeps them visible.
fn method_label(spec: &str, method: &Method) -> String {
    match spec.split_once('@') {
        Some((_, over)) => format!("{} [{}]", method.label(), over.replace('@', ", ")),
        None => method.label(),
    }
}
