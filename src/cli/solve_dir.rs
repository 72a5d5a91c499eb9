//! `daps solve --measurement DIR --out OUT`: every measurement file of a folder, solved in
//! batches.
//!
//! Files of one operator (task, parameters, mask, kernel, coil maps, image shape) and one σ_y form
//! a group; a group is cut, in name order, into batches of `--batch` measurements, each run as one
//! sampler call of `batch × --samples` chains. A batch's noise is seeded by `--seed` and the name
//! of its first file, so a result depends on the seed and the batch it was solved in, not on the
//! other files of the folder. Everything is checked before the first batch runs (files, groups,
//! the sampler on every group, references, outputs). Each finished measurement leaves its
//! picture(s) and `NAME.json` (written last, atomically); rerunning the same command skips the
//! batches whose records are all there, and a failed batch leaves the finished ones in place.

use super::outputs::{self, Inputs};
use super::solve::{
    check_prior_takes, exact_step_operator, sampler_operator, solve_method, write_samples,
    Progress, SolveArgs,
};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use daps::io::{atomic_write, display, read_task_image};
use daps::metric::image::{psnr, ssim, IMAGE_RANGE};
use daps::operator::{per_chain_sq_norm, Measurement};
use daps::sampler::{Method, Problem};
use daps::task::{MeasurementFile, TaskFiles};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Measurements per batch without `--batch`.
const DEFAULT_BATCH: usize = 16;

/// What a folder solve was started with (`OUT/solve.json`): a rerun must match it to resume.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Settings {
    measurements: PathBuf,
    prior: String,
    /// Per group: the task and the sampler's description.
    groups: Vec<[String; 2]>,
    samples: usize,
    seed: u64,
    batch: usize,
}

/// One solved measurement (`OUT/NAME.json`).
#[derive(Serialize, Deserialize)]
struct Record {
    measurement: PathBuf,
    task: String,
    sigma_y: f64,
    method: String,
    settings: String,
    seed: u64,
    /// The files solved in the same sampler call.
    batch: Vec<String>,
    outputs: Vec<PathBuf>,
    /// ‖A(x) − y‖ per sample.
    misfit: Vec<f64>,
    /// Against the reference, per sample (when `--reference` is given).
    psnr: Option<Vec<f64>>,
    ssim: Option<Vec<f64>>,
    seconds: f64,
}

/// The measurements of one operator and σ_y, in name order.
struct Group {
    items: Vec<usize>,
    method: Method,
}

/// The `*.safetensors` files of `dir`, sorted by name.
fn measurement_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--measurement {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "--measurement {}: the folder holds no .safetensors measurement file",
            dir.display()
        );
    }
    Ok(files)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `dir/NAME.png` (or .jpg, .jpeg).
fn reference_file(dir: &Path, name: &str) -> Result<PathBuf> {
    outputs::IMAGE
        .iter()
        .map(|e| dir.join(format!("{name}.{e}")))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "--reference {}: no {name}.png (or .jpg, .jpeg) for the measurement {name}.safetensors",
                dir.display()
            )
        })
}

pub fn solve_dir(a: &SolveArgs) -> Result<()> {
    let dir = &a.measurement;
    let batch = a.batch.unwrap_or(DEFAULT_BATCH);
    let jobs = a.jobs.unwrap_or(1);
    if batch == 0 || jobs == 0 {
        bail!("--batch and --jobs must be at least 1");
    }
    for (flag, given) in [
        ("--save-trajectory", a.save_trajectory.is_some()),
        ("--save-samples", a.save_samples.is_some()),
    ] {
        if given {
            bail!(
                "{flag} is not supported with a folder of measurements; solve one file to use it"
            );
        }
    }
    if a.reference.as_ref().is_some_and(|r| !r.is_dir()) {
        bail!(
            "--reference must be a folder of NAME.png images when --measurement is a folder ({})",
            dir.display()
        );
    }
    if a.lpips_weights.is_some() {
        bail!("--lpips-weights is not supported with a folder of measurements");
    }
    let mut inputs = Inputs::default();
    inputs
        .add("--measurement", Some(dir))
        .add("--reference", a.reference.as_deref())
        .add("--blur-weights", a.blur_weights.as_deref())
        .prior(a.prior.as_deref());
    outputs::dir("--out", &a.out, &inputs)?;

    // Every file, read and grouped by operator before any work.
    let paths = measurement_files(dir)?;
    let files = TaskFiles {
        weights: a.blur_weights.clone(),
        ..TaskFiles::default()
    };
    let mut mfs = Vec::with_capacity(paths.len());
    for p in &paths {
        let mf = MeasurementFile::load_with(p, &files)?;
        for w in &mf.warnings {
            eprintln!("warning: {}: {w}", p.display());
        }
        daps::task::check_batch(batch.saturating_mul(a.samples), mf.task.shape())
            .context("--batch × --samples")?;
        mfs.push(mf);
    }
    let mut groups: Vec<Group> = Vec::new();
    for (i, mf) in mfs.iter().enumerate() {
        let mut found = None;
        for (g, group) in groups.iter().enumerate() {
            let first = &mfs[group.items[0]];
            if first.sigma_y == mf.sigma_y && first.task.same_operator(&mf.task)? {
                found = Some(g);
                break;
            }
        }
        match found {
            Some(g) => groups[g].items.push(i),
            None => groups.push(Group {
                items: vec![i],
                method: solve_method(mf.task.name(), a)
                    .with_context(|| format!("{}", paths[i].display()))?,
            }),
        }
    }
    let references: Vec<Option<Tensor>> = match &a.reference {
        Some(rdir) => paths
            .iter()
            .zip(&mfs)
            .map(|(p, mf)| {
                let f = reference_file(rdir, &stem(p))?;
                let r = read_task_image(&f, mf.task.is_complex())?;
                let [c, h, w] = mf.task.shape();
                if r.dims() != [1, c, h, w] {
                    bail!(
                        "reference {} is {:?}, but {} is of a {c}×{h}×{w} image",
                        f.display(),
                        &r.dims()[1..],
                        p.display()
                    );
                }
                Ok(Some(r))
            })
            .collect::<Result<_>>()?,
        None => vec![None; paths.len()],
    };

    let dev = daps::device::parse(&a.device)?;
    let prior = daps::prior::load_on(a.prior.as_deref(), &dev, a.text.condition().as_ref())?;
    let mut explicit = Vec::with_capacity(groups.len());
    for g in &groups {
        let mf = &mfs[g.items[0]];
        check_prior_takes(&*prior, mf.task.shape())
            .with_context(|| format!("{}", paths[g.items[0]].display()))?;
        explicit.push(exact_step_operator(&g.method, &*prior, &mf.task)?);
        let m = mf.measurement();
        let problem = Problem {
            prior: &*prior,
            operator: sampler_operator(&explicit[explicit.len() - 1], &mf.task),
            measurement: &m,
        };
        g.method.supports(&problem).with_context(|| {
            format!(
                "{} on {} ({})",
                g.method.name(),
                mf.task.name(),
                paths[g.items[0]].display()
            )
        })?;
    }

    // A rerun resumes only the same solve.
    let settings = Settings {
        measurements: dir.canonicalize().unwrap_or_else(|_| dir.clone()),
        prior: a.prior.clone().unwrap_or_else(|| "default".into()),
        groups: groups
            .iter()
            .map(|g| {
                [
                    mfs[g.items[0]].task.describe(),
                    format!("{} {}", g.method.name(), g.method.describe()),
                ]
            })
            .collect(),
        samples: a.samples,
        seed: a.seed,
        batch,
    };
    let claim = a.out.join("solve.json");
    if let Ok(text) = std::fs::read_to_string(&claim) {
        let old: Settings = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a daps solve record", claim.display()))?;
        if old != settings {
            bail!(
                "--out {} holds another solve (its solve.json differs: measurements, prior, \
                 sampler, --samples, --seed or --batch); use a new --out",
                a.out.display()
            );
        }
    } else {
        atomic_write(&claim, serde_json::to_string_pretty(&settings)?.as_bytes())?;
    }

    let record_path = |i: usize| a.out.join(format!("{}.json", stem(&paths[i])));
    let batches: Vec<(usize, &[usize])> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, group)| group.items.chunks(batch).map(move |c| (g, c)))
        .collect();
    let todo: Vec<&(usize, &[usize])> = batches
        .iter()
        .filter(|(_, items)| items.iter().any(|&i| !record_path(i).is_file()))
        .collect();
    eprintln!(
        "daps solve: {} measurement(s) in {} group(s) of one operator; {} batch(es) of ≤ {batch}, \
         {} already done; prior {}; {} sample(s) each, seed {}",
        paths.len(),
        groups.len(),
        batches.len(),
        batches.len() - todo.len(),
        prior.name(),
        a.samples,
        a.seed
    );
    for (g, group) in groups.iter().enumerate() {
        eprintln!(
            "  group {}: {} file(s), {}; σ_y {}; {} {}",
            g + 1,
            group.items.len(),
            mfs[group.items[0]].task.describe(),
            mfs[group.items[0]].sigma_y,
            group.method.name(),
            group.method.describe()
        );
    }

    super::check_jobs(jobs, prior.device().is_cpu(), &a.device)?;
    if let Some((_, items)) = todo.first() {
        let [c, h, w] = mfs[items[0]].task.shape();
        let shape = [items.len() * a.samples, c, h, w];
        super::suggest_jobs(&shape, todo.len(), jobs, prior.device().is_cpu());
    }
    let started = Instant::now();
    let solved = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let one = |&(g, items): &(usize, &[usize])| -> Result<()> {
        let group = &groups[g];
        let first = &mfs[items[0]];
        let task = &first.task;
        let op = sampler_operator(&explicit[g], task);
        let n = items.len();
        let ks = a.samples;
        let ys: Vec<Tensor> = items
            .iter()
            .flat_map(|&i| std::iter::repeat_n(mfs[i].y.clone(), ks))
            .collect();
        let m = Measurement {
            y: Tensor::cat(&ys, 0)?,
            sigma_y: first.sigma_y,
        };
        let problem = Problem {
            prior: &*prior,
            operator: op,
            measurement: &m,
        };
        let names: Vec<String> = items.iter().map(|&i| stem(&paths[i])).collect();
        let seed = a.seed.wrapping_add(daps::eval::name_hash(&names[0]));
        let [c, h, w] = task.shape();
        let mut progress = Progress::new(group.method.steps(), task.is_complex(), None);
        if jobs > 1 {
            // Side by side, bars would overwrite each other: a line per finished batch instead.
            progress
                .bar
                .set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let t0 = Instant::now();
        let shape = [n * ks, c, h, w];
        let result = super::sized_threads(&shape, prior.device().is_cpu(), || {
            Ok(group
                .method
                .run_on_device(&problem, &shape, seed, &mut progress))
        })?;
        progress.bar.finish_and_clear();
        let x = result
            .map_err(|e| {
                anyhow!(e).context(format!(
                    "batch of {}: {} failed; the {} measurement(s) solved before it are in {}; \
                     rerun the same command to resume",
                    names.join(", "),
                    group.method.name(),
                    solved.load(Ordering::Relaxed),
                    a.out.display()
                ))
            })?
            .to_device(&Device::Cpu)?;
        let seconds = t0.elapsed().as_secs_f64() / n as f64;
        let mut psnrs = Vec::new();
        for (j, &i) in items.iter().enumerate() {
            let xs = x.narrow(0, j * ks, ks)?;
            let rec = write_one(
                a,
                &paths[i],
                &mfs[i],
                references[i].as_ref(),
                &xs,
                group,
                seed,
                &names,
                seconds,
            )?;
            if let Some(p) = &rec.psnr {
                psnrs.push(p.iter().sum::<f64>() / p.len() as f64);
            }
            atomic_write(
                record_path(i),
                serde_json::to_string_pretty(&rec)?.as_bytes(),
            )?;
            solved.fetch_add(1, Ordering::Relaxed);
        }
        let score = if psnrs.is_empty() {
            String::new()
        } else {
            format!(
                "  PSNR {:.2}",
                psnrs.iter().sum::<f64>() / psnrs.len() as f64
            )
        };
        let k = finished.fetch_add(1, Ordering::Relaxed);
        eprintln!(
            "  [{}/{}] {:<16} {} .. {} ({n}){score}  ({:.1} s)",
            k + 1,
            todo.len(),
            task.name(),
            names[0],
            names[n - 1],
            seconds * n as f64
        );
        Ok(())
    };
    super::in_lanes(&todo, jobs, |batch| one(batch))?;
    let solved = solved.into_inner();
    println!(
        "done: {solved} measurement(s) solved in {:.1} s ({} already done); results in {}",
        started.elapsed().as_secs_f64(),
        paths.len() - todo.iter().map(|(_, items)| items.len()).sum::<usize>(),
        a.out.display()
    );
    Ok(())
}

/// Writes one measurement's samples (`OUT/NAME.png`, or `NAME_i.png` and `NAME_mean.png`) and
/// returns its record (the caller writes it last).
#[allow(clippy::too_many_arguments)]
fn write_one(
    a: &SolveArgs,
    path: &Path,
    mf: &MeasurementFile,
    reference: Option<&Tensor>,
    xs: &Tensor,
    group: &Group,
    seed: u64,
    batch: &[String],
    seconds: f64,
) -> Result<Record> {
    let name = stem(path);
    let complex = mf.task.is_complex();
    let outputs = write_samples(xs, &a.out.join(format!("{name}.png")), complex)?;
    let r = mf.measurement().residual(&mf.task, xs)?;
    let misfit: Vec<f64> = per_chain_sq_norm(&r)?
        .sqrt()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    let (psnr_v, ssim_v) = match reference {
        Some(gt) => {
            let n = xs.dim(0)?;
            let u = display(xs, complex, IMAGE_RANGE)?;
            let g = display(gt, complex, IMAGE_RANGE)?.repeat((n, 1, 1, 1))?;
            (Some(psnr(&u, &g, 1.0)?), ssim(&u, &g, 1.0).ok())
        }
        None => (None, None),
    };
    Ok(Record {
        measurement: path.to_path_buf(),
        task: mf.task.describe(),
        sigma_y: mf.sigma_y,
        method: group.method.name().to_string(),
        settings: group.method.describe(),
        seed,
        batch: batch.to_vec(),
        outputs,
        misfit,
        psnr: psnr_v,
        ssim: ssim_v,
        seconds,
    })
}
