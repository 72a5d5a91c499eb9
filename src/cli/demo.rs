//! `daps demo`: held-out digits, every task that fits 32×32 images, DAPS against DPS with the
//! built-in prior, one grid PNG and a metrics table. No arguments and no network needed.
//!
//! Each task measures the same digits (y = A(x) + σ_y·n, seeded), then every method restores
//! them in batches of `--batch` digits (one chain per digit, each with its own y). Phase
//! retrieval is scored as the paper does: best of `--pr-runs` runs per digit and per metric.

use super::grid::{text_width, Canvas, TEXT_HEIGHT};
use super::outputs::{self, Inputs};
use super::solve::key_value;
use anyhow::{bail, Context, Result};
use candle_core::{IndexOp, Tensor};
use clap::Args;
use daps::data::mnist_range;
use daps::eval::name_hash;
use daps::metric::image::{psnr, ssim, to_unit, IMAGE_RANGE};
use daps::noise::SeededNoise;
use daps::operator::Measurement;
use daps::prior::Denoiser;
use daps::report::DemoRecord;
use daps::sampler::{Method, Problem, Silent, METHODS};
use daps::task::{demo_tasks, preset_method, resolve_method, Task, TaskFiles, TaskSpec};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of held-out digits (from digit 9000 + --first of the built-in set).
    #[arg(long, default_value_t = 4)]
    pub digits: usize,
    /// Offset into the held-out digits 9000..10000 (or the training digits, see --split).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Which digits: held-out (9000..10000, never seen in training) or train (0..9000: for
    /// tuning settings without touching the held-out digits).
    #[arg(long, default_value = "held-out")]
    pub split: String,
    /// The grid PNG (truth | measurement | DAPS | DPS…, PSNR / SSIM under each).
    #[arg(long, default_value = "out/demo.png")]
    pub out: PathBuf,
    /// Digits shown per task in the grid (all are scored).
    #[arg(long, default_value_t = 4)]
    pub grid_digits: usize,
    /// Tasks (comma-separated) [default: all that fit 32×32].
    #[arg(long, value_delimiter = ',')]
    pub tasks: Option<Vec<String>>,
    /// DAPS budget (presets/): daps-50 (50 annealing levels × 1 ODE step; fits a few minutes
    /// on 2 cores), daps-100, daps-1k or daps-4k.
    #[arg(long, default_value = "daps-50")]
    pub preset: String,
    /// Overrides a DAPS setting for every task, e.g. `--set annealing_steps=25` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// DPS runs (comma-separated numbers of steps = network evaluations) [default: DAPS's NFE].
    #[arg(long, value_delimiter = ',')]
    pub dps_steps: Option<Vec<usize>>,
    /// The methods instead of `--preset` and `--dps-steps`, comma-separated: a task preset
    /// (`daps-50`, `dps-1000`), `dps-N`, a method of `daps methods`, or `all` (every registered
    /// method on the tasks it supports).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["preset", "dps_steps", "dps_zeta", "set"])]
    pub methods: Option<Vec<String>>,
    /// DPS ζ for every task and run, instead of the per-task ζ·1000/steps.
    #[arg(long)]
    pub dps_zeta: Option<f64>,
    /// Runs per digit for phase retrieval (best of them is scored, per metric).
    #[arg(long, default_value_t = 4)]
    pub pr_runs: usize,
    /// Measurement noise σ_y in [−1, 1] image units.
    #[arg(long, default_value_t = 0.05)]
    pub sigma_y: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Digits per sampler batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Writes every digit's metrics as JSON (rewritten after each task and method).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Prior [default: the built-in digits prior; `default@f16` / `@bf16` runs it in half precision].
    #[arg(long)]
    pub prior: Option<String>,
    /// Where the solves run (prior, operators, noise, samplers): cpu, or cuda[:N] (a
    /// `--features cuda` build); measurements and metrics are made on the CPU.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The first sampler of the demo for `task`: its `--preset`, then `--set`.
fn first_method(task: &str, a: &DemoArgs) -> Result<Method> {
    let mut m = preset_method(task, &a.preset)?;
    for s in &a.set {
        let (k, v) = key_value(s)?;
        m = m.set(k, v)?;
    }
    m.validate()?;
    Ok(m)
}

/// The demo's samplers for `task`: the `--preset` one, then DPS at each `--dps-steps` (default:
/// the first one's NFE) with the task's dps-1000 ζ scaled to the same total guidance.
fn demo_methods(name: &str, a: &DemoArgs) -> Result<Vec<Method>> {
    if let Some(specs) = &a.methods {
        let specs: Vec<String> = if specs == &["all"] {
            METHODS.iter().map(|m| m.name.to_string()).collect()
        } else {
            specs.clone()
        };
        return specs
            .iter()
            .map(|m| {
                let method = resolve_method(name, m)?;
                method
                    .validate()
                    .with_context(|| format!("method {m} on {name}"))?;
                Ok(method)
            })
            .collect();
    }
    let first = first_method(name, a)?;
    let nfe = first.nfe();
    let Method::Dps(dps) = preset_method(name, "dps-1000")? else {
        bail!("preset dps-1000 of {name} is not a DPS preset");
    };
    let mut methods = vec![first];
    for &steps in a.dps_steps.as_deref().unwrap_or(&[nfe]) {
        let mut c = dps.with_steps(steps);
        if let Some(z) = a.dps_zeta {
            c.zeta = z;
        }
        methods.push(Method::Dps(c));
    }
    for m in &methods {
        m.validate()
            .with_context(|| format!("{} on {name}", m.label()))?;
    }
    Ok(methods)
}

/// Restores `x`'s digits (measurement `y`, one row per digit) with `method`, in batches.
fn restore(
    prior: &dyn Denoiser,
    task: &Task,
    y: &Tensor,
    sigma_y: f64,
    method: &Method,
    batch: usize,
    seed: u64,
) -> Result<Tensor> {
    let n = y.dim(0)?;
    let [c, h, w] = task.shape();
    let mut out = Vec::new();
    for (k, start) in (0..n).step_by(batch).enumerate() {
        let len = batch.min(n - start);
        let m = Measurement {
            y: y.narrow(0, start, len)?,
            sigma_y,
        };
        let problem = Problem {
            prior,
            operator: task,
            measurement: &m,
        };
        let seed = seed.wrapping_mul(1_000_003).wrapping_add(k as u64);
        let shape = [len, c, h, w];
        let x = method
            .run_on_device(&problem, &shape, seed, &mut Silent)
            .with_context(|| format!("{} on {}", method.label(), task.name()))?;
        out.push(x);
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// A viewable [0, 1] image of each digit's measurement, `[N, 1, 32, 32]`: the task's preview,
/// centre-cropped to the image size (phase retrieval's padded Fourier magnitudes).
pub(super) fn preview(task: &Task, y: &Tensor) -> Result<Tensor> {
    let [_, h, w] = task.shape();
    let u = task.preview(y)?;
    let (_, _, hh, ww) = u.dims4()?;
    let (t, l) = ((hh.saturating_sub(h)) / 2, (ww.saturating_sub(w)) / 2);
    Ok(u.narrow(2, t, h.min(hh))?.narrow(3, l, w.min(ww))?)
}

/// Per-digit (PSNR, SSIM) of `x` against `truth`, both clipped to the digits' range [−1, 1]
/// and scored on [0, 1] (as DAPS does).
fn score(x: &Tensor, truth: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let (u, t) = (to_unit(x, IMAGE_RANGE)?, to_unit(truth, IMAGE_RANGE)?);
    Ok((psnr(&u, &t, 1.0)?, ssim(&u, &t, 1.0)?))
}

/// Best of `runs` restorations `[runs·N, ...]` (run-major) per digit: the images with the best
/// PSNR, and the best PSNR and best SSIM (each maximised separately, as the paper scores phase
/// retrieval).
fn best_of_runs(xs: &Tensor, truth: &Tensor, runs: usize) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let n = truth.dim(0)?;
    let (mut img, mut p, mut s) = (
        Vec::with_capacity(n),
        vec![f64::NEG_INFINITY; n],
        vec![f64::NEG_INFINITY; n],
    );
    let mut pick = vec![0usize; n];
    for r in 0..runs {
        let (pr, sr) = score(&xs.narrow(0, r * n, n)?, truth)?;
        for i in 0..n {
            if pr[i] > p[i] {
                p[i] = pr[i];
                pick[i] = r;
            }
            s[i] = s[i].max(sr[i]);
        }
    }
    for (i, r) in pick.iter().enumerate() {
        img.push(xs.narrow(0, r * n + i, 1)?);
    }
    Ok((Tensor::cat(&img, 0)?, p, s))
}

/// One task of the demo: its measurement of the digits and the samplers that restore them.
struct TaskPlan<'a> {
    name: String,
    task: &'a Task,
    y: Tensor,
    methods: Vec<Method>,
    runs: usize,
    /// The first digits' measurement, as the grid shows it.
    measured: Tensor,
}

/// One sampler's result on one task: its record and the first digits' restored images.
#[derive(Clone)]
struct Done {
    record: DemoRecord,
    image: Tensor,
}

/// What the grid shows for one task: truth, measurement preview, then one image per method,
/// each `[n, 1, H, W]` in [0, 1], with per-digit metrics for the method columns.
struct GridRow {
    task: String,
    truth: Tensor,
    measured: Tensor,
    restored: Vec<(Tensor, Vec<f64>, Vec<f64>)>,
}

pub fn demo(a: DemoArgs) -> Result<()> {
    if a.digits == 0 || a.batch == 0 || a.pr_runs == 0 {
        bail!("--digits, --batch and --pr-runs must be ≥ 1");
    }
    super::check_sigma_y(a.sigma_y)?;
    let dev = daps::device::parse(&a.device)?;
    let mut inputs = Inputs::default();
    inputs.prior(a.prior.as_deref());
    outputs::file("--out", &a.out, &["png"], &inputs)?;
    if let Some(p) = &a.json {
        outputs::file("--json", p, &["json"], &inputs)?;
    }
    let held_out = daps::prior::default::HELD_OUT;
    let split = match a.split.as_str() {
        "held-out" => held_out.clone(),
        "train" => 0..held_out.start,
        other => bail!("--split must be held-out or train, got '{other}'"),
    };
    let (lo, hi) = (split.start + a.first, split.start + a.first + a.digits);
    if hi > split.end {
        bail!(
            "--first {} + --digits {} exceeds the {} {} digits",
            a.first,
            a.digits,
            split.len(),
            a.split
        );
    }
    let tasks: Vec<String> = match &a.tasks {
        Some(t) => t.clone(),
        None => demo_tasks().map(String::from).collect(),
    };
    let prior = daps::prior::load_on(a.prior.as_deref(), &dev, None)?;
    if prior.as_latent().is_some() {
        bail!(
            "daps demo runs on 1×32×32 digits; {} is a latent prior (use daps solve --method latent-daps)",
            prior.name()
        );
    }
    let digits = mnist_range(lo..hi)?;
    let truth = digits.images().clone();
    let (_, c, h, w) = truth.dims4()?;
    if let Some(s) = prior.sample_shape() {
        if s != [c, h, w] {
            bail!(
                "prior {} takes {s:?} images; the demo's digits are {c}×{h}×{w}",
                prior.name()
            );
        }
    }
    let indices: Vec<usize> = (lo..hi).collect();
    eprintln!(
        "daps demo: {} {} digits ({lo}..{hi}), {} task(s), σ_y {}, prior {}",
        a.digits,
        a.split,
        tasks.len(),
        a.sigma_y,
        prior.name()
    );
    let started = Instant::now();
    let shown = a.grid_digits.min(a.digits);
    // Every task and its DAPS settings are checked before anything runs.
    let mut built = Vec::with_capacity(tasks.len());
    for name in &tasks {
        let spec = TaskSpec::defaults(name, h, w, &TaskFiles::default())?;
        if spec.is_complex() {
            bail!("task {name} takes complex images; the demo runs real 32×32 digits");
        }
        let task = Task::build(spec, [c, h, w]).with_context(|| format!("task {name}"))?;
        let probe = Measurement {
            y: daps::operator::Operator::forward(&task, &truth.narrow(0, 0, 1)?)?,
            sigma_y: a.sigma_y,
        };
        let problem = Problem {
            prior: &*prior,
            operator: &task,
            measurement: &probe,
        };
        if a.methods.as_deref() != Some(&["all".to_string()]) {
            for m in demo_methods(name, &a)? {
                m.supports(&problem)
                    .with_context(|| format!("{} cannot solve {name}", m.label()))?;
            }
        }
        built.push(task);
    }
    // Each task's measurement and samplers, then every (task, sampler) pair as one job.
    let mut plans = Vec::with_capacity(tasks.len());
    for (name, task) in tasks.iter().zip(&built) {
        let y = Measurement::simulate(
            task,
            &truth,
            a.sigma_y,
            &mut SeededNoise::new(a.seed ^ name_hash(name)),
        )?
        .y;
        let m_all = Measurement {
            y: y.clone(),
            sigma_y: a.sigma_y,
        };
        let problem = Problem {
            prior: &*prior,
            operator: task,
            measurement: &m_all,
        };
        let all = a.methods.as_deref() == Some(&["all".to_string()]);
        let mut methods = Vec::new();
        for m in demo_methods(name, &a)? {
            match m.supports(&problem) {
                Ok(()) => methods.push(m),
                Err(e) if all => eprintln!("  skipping {} on {name}: {e}", m.name()),
                Err(e) => bail!("{} cannot solve {name}: {e}", m.label()),
            }
        }
        let runs = if name == "phase-retrieval" {
            a.pr_runs
        } else {
            1
        };
        let measured = preview(task, &y.narrow(0, 0, shown)?)?;
        plans.push(TaskPlan {
            name: name.clone(),
            task,
            y,
            methods,
            runs,
            measured,
        });
    }
    let jobs: Vec<(usize, usize)> = plans
        .iter()
        .enumerate()
        .flat_map(|(ti, p)| (0..p.methods.len()).map(move |mi| (ti, mi)))
        .collect();
    let run_job = |ti: usize, mi: usize| -> Result<Done> {
        let (plan, method) = (&plans[ti], &plans[ti].methods[mi]);
        let t0 = Instant::now();
        // All runs in one batch: y repeated `runs` times, run-major.
        let y_runs = Tensor::cat(&vec![&plan.y; plan.runs], 0)?;
        let seed = a.seed ^ name_hash(&plan.name) ^ name_hash(&method.label()).rotate_left(17);
        let xs = restore(
            &*prior, plan.task, &y_runs, a.sigma_y, method, a.batch, seed,
        )?;
        let (x, p, s) = best_of_runs(&xs, &truth, plan.runs)?;
        let record = DemoRecord {
            task: plan.name.clone(),
            method: method.label(),
            nfe: method.nfe(),
            runs: plan.runs,
            digits: indices.clone(),
            psnr: p,
            ssim: s,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let image = to_unit(&x.narrow(0, 0, shown)?, IMAGE_RANGE)?;
        Ok(Done { record, image })
    };
    let truth_shown = to_unit(&truth.narrow(0, 0, shown)?, IMAGE_RANGE)?;
    // Finished jobs, by (task, sampler); after each one the JSON and the grid are rewritten
    // with all finished so far, so a run that stops keeps them.
    let done: Vec<Vec<Option<Done>>> = plans.iter().map(|p| vec![None; p.methods.len()]).collect();
    let done = std::sync::Mutex::new(done);
    let finish = |ti: usize, mi: usize, d: Done| -> Result<()> {
        let mut done = done
            .lock()
            .map_err(|_| anyhow::anyhow!("a demo job panicked"))?;
        eprintln!(
            "  {:<16} {:<10} PSNR {:6.2}  SSIM {:.4}  ({:.1} s)",
            d.record.task,
            d.record.method,
            d.record.mean_psnr(),
            d.record.mean_ssim(),
            d.record.seconds
        );
        done[ti][mi] = Some(d);
        let records: Vec<DemoRecord> = done
            .iter()
            .flatten()
            .flatten()
            .map(|d| d.record.clone())
            .collect();
        if let Some(p) = &a.json {
            write_json(p, &records)?;
        }
        if !done[ti].iter().all(Option::is_some) {
            return Ok(());
        }
        let rows: Vec<GridRow> = plans
            .iter()
            .zip(done.iter())
            .filter(|(_, ds)| ds.iter().all(Option::is_some))
            .map(|(plan, ds)| GridRow {
                task: plan.name.clone(),
                truth: truth_shown.clone(),
                measured: plan.measured.clone(),
                restored: ds
                    .iter()
                    .flatten()
                    .map(|d| {
                        (
                            d.image.clone(),
                            d.record.psnr[..shown].to_vec(),
                            d.record.ssim[..shown].to_vec(),
                        )
                    })
                    .collect(),
            })
            .collect();
        // The grid of the complete rows, now that this job completed its task's.
        draw_grid(&rows, &records, &a.out)?;
        Ok(())
    };
    if dev.is_cpu() && rayon::current_num_threads() > 1 {
        // Whole jobs in parallel: a sampler on a few digits is too small a piece of work to
        // spread over cores op by op (on 2 cores the demo ran 1.1× faster than on one that way).
        // Each job's arithmetic does not depend on the threads, so neither do the results.
        jobs.par_iter()
            .try_for_each(|&(ti, mi)| finish(ti, mi, run_job(ti, mi)?))?;
    } else {
        for &(ti, mi) in &jobs {
            finish(ti, mi, run_job(ti, mi)?)?;
        }
    }
    let records: Vec<DemoRecord> = done
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a demo job panicked"))?
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.record)
        .collect();
    print_table(&records);
    println!(
        "grid: {}; {} digits, total {:.1} s",
        a.out.display(),
        a.digits,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write_json(path: &Path, records: &[DemoRecord]) -> Result<()> {
    Ok(daps::report::write_records(path, records)?)
}

/// Mean PSNR / SSIM per task and method, and the mean over tasks.
pub fn print_table(records: &[DemoRecord]) {
    let mut methods: Vec<String> = Vec::new();
    let mut tasks: Vec<String> = Vec::new();
    for r in records {
        if !methods.contains(&r.method) {
            methods.push(r.method.clone());
        }
        if !tasks.contains(&r.task) {
            tasks.push(r.task.clone());
        }
    }
    let find = |t: &str, m: &str| records.iter().find(|r| r.task == t && r.method == m);
    print!("{:<16}", "task");
    for m in &methods {
        print!(" {:>16}", format!("{m} PSNR/SSIM"));
    }
    println!();
    for t in &tasks {
        print!("{t:<16}");
        for m in &methods {
            match find(t, m) {
                Some(r) => print!(" {:>9.2} / {:.3}", r.mean_psnr(), r.mean_ssim()),
                None => print!(" {:>16}", "–"),
            }
        }
        println!();
    }
    print!("{:<16}", "mean");
    for m in &methods {
        let rs: Vec<&DemoRecord> = records.iter().filter(|r| &r.method == m).collect();
        let p = mean(&rs.iter().map(|r| r.mean_psnr()).collect::<Vec<_>>());
        let s = mean(&rs.iter().map(|r| r.mean_ssim()).collect::<Vec<_>>());
        print!(" {p:>9.2} / {s:.3}");
    }
    println!();
}

/// The grid: one block per task (rows = digits), columns truth | y | methods, metrics under each.
fn draw_grid(rows: &[GridRow], records: &[DemoRecord], out: &Path) -> Result<()> {
    let scale = 3;
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let (n, _, h, w) = first.truth.dims4()?;
    let (cw, ch) = (w * scale + 2, h * scale + 2);
    let methods: Vec<String> = {
        let mut m: Vec<String> = Vec::new();
        for r in records {
            if !m.contains(&r.method) {
                m.push(r.method.clone());
            }
        }
        m
    };
    let cols = 2 + methods.len();
    let label_w = rows
        .iter()
        .map(|r| text_width(&r.task))
        .max()
        .unwrap_or(0)
        .max(text_width("PSNR/SSIM"))
        + 8;
    let gap = 6;
    let cell_w = cw.max(text_width("00.00/0.000")) + gap;
    let cell_h = ch + TEXT_HEIGHT + 6;
    let header = TEXT_HEIGHT + 8;
    let block_gap = 8;
    let width = label_w + cols * cell_w;
    let height = header + rows.len() * (n * cell_h + block_gap);
    let mut canvas = Canvas::new(width, height);
    let mut titles = vec!["TRUTH".to_string(), "MEASUREMENT".to_string()];
    titles.extend(methods.iter().cloned());
    for (j, t) in titles.iter().enumerate() {
        canvas.text_centred(t, label_w + j * cell_w, cw, 3);
    }
    for (bi, row) in rows.iter().enumerate() {
        let y0 = header + bi * (n * cell_h + block_gap);
        canvas.text(&row.task, 2, y0 + ch / 2 - TEXT_HEIGHT);
        canvas.text("PSNR/SSIM", 2, y0 + ch / 2 + 3);
        for i in 0..row.truth.dim(0)? {
            let y = y0 + i * cell_h;
            canvas.image(&row.truth.i(i)?, label_w, y, scale)?;
            canvas.image(&row.measured.i(i)?, label_w + cell_w, y, scale)?;
            for (j, (img, p, s)) in row.restored.iter().enumerate() {
                let x = label_w + (2 + j) * cell_w;
                canvas.image(&img.i(i)?, x, y, scale)?;
                canvas.text_centred(&format!("{:.2}/{:.3}", p[i], s[i]), x, cw, y + ch + 2);
            }
        }
    }
    canvas.save(out)
}
