//! Evaluation runs (`daps eval`): images × tasks × methods × runs in one folder, resumable and
//! shardable.
//!
//! The work is cut into [`Job`]s, one sampler batch each: (task, method, run, block of
//! `batch` consecutive images). A job's noise seed depends only on the run's seed and the job's
//! coordinates, so a job gives the same records whichever process runs it. `--shard k/n` takes
//! the jobs whose index is ≡ k−1 (mod n). A job writes one small JSON [`EvalRecord`] per image,
//! atomically and last; a job whose records all exist and parse is done, so a rerun skips it and
//! a killed run loses at most the jobs in flight.
//!
//! Folder layout (`RUN/`):
//! - `eval.json`: the [`EvalSettings`]; a rerun with other settings is refused.
//! - `truth/ID.png`, `measurements/TASK/ID.{safetensors,png}`: each measurement simulated once
//!   (seed recorded in the file), so every method and run sees the same y;
//! - `images/TASK/METHOD/ID-rRUN.png` and `records/TASK/METHOD/ID-rRUN.json`.

use crate::error::{Error, Result};
use crate::io::io_err;
use crate::noise::mix;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The nominal level of the per-pixel interval whose coverage the records hold.
pub const COVERAGE_LEVEL: f64 = 0.9;

/// What an evaluation run is; stored as `RUN/eval.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSettings {
    /// `digits` or the image folder.
    pub data: String,
    /// Image ids in evaluation order (`digit-9000`, or file stems).
    pub images: Vec<String>,
    pub tasks: Vec<String>,
    /// Method specs as given (`daps-50`, `dps-1000`, `ddrm`).
    pub methods: Vec<String>,
    /// Runs per image, per task.
    pub runs: Vec<usize>,
    /// How runs of one image combine in the report: `psnr` (the run with the best PSNR gives
    /// every metric) or `each` (each metric maximised separately, as the DAPS paper scores phase
    /// retrieval).
    pub best_of: String,
    pub sigma_y: f64,
    pub seed: u64,
    /// Images per sampler batch (part of the settings: a batch is a job).
    pub batch: usize,
    /// The `--prior` spec (`default`: the built-in digits prior).
    pub prior: String,
    /// `[task, method]` pairs left out: methods that cannot solve the task.
    #[serde(default)]
    pub excluded: Vec<[String; 2]>,
    /// Posterior samples per image and run (chains of one job); with K ≥ 2 each record also
    /// holds the coverage of the truth by the samples' per-pixel interval. Metrics are of the
    /// first sample.
    #[serde(default = "one")]
    pub samples: usize,
}

fn one() -> usize {
    1
}

impl EvalSettings {
    /// Checks the settings' own consistency.
    /// Whether `s` is these settings with images appended (`--limit` raised on a run): the
    /// only change to a run's settings that keeps its records.
    pub fn extended_by(&self, s: &EvalSettings) -> bool {
        s.images.len() > self.images.len()
            && s.images.starts_with(&self.images)
            && EvalSettings {
                images: self.images.clone(),
                ..s.clone()
            } == *self
    }

    pub fn validate(&self) -> Result<()> {
        if self.images.is_empty() || self.tasks.is_empty() || self.methods.is_empty() {
            return Err(Error::config(
                "an evaluation needs images, tasks and methods",
            ));
        }
        if self.runs.len() != self.tasks.len() || self.runs.contains(&0) {
            return Err(Error::config("runs: one count ≥ 1 per task"));
        }
        if self.batch == 0 || self.samples == 0 {
            return Err(Error::config("batch and samples must be ≥ 1"));
        }
        if !matches!(self.best_of.as_str(), "psnr" | "each") {
            return Err(Error::config(format!(
                "best-of must be psnr or each, got '{}'",
                self.best_of
            )));
        }
        for (list, extra) in [(&self.images, ""), (&self.tasks, ""), (&self.methods, "@=")] {
            for (i, a) in list.iter().enumerate() {
                if !safe_name(&a.replace(|c| extra.contains(c), "_")) {
                    return Err(Error::config(format!(
                        "'{a}' cannot name a file (letters, digits, '.', '_', '-' only{})",
                        if extra.is_empty() {
                            ""
                        } else {
                            "; methods also '@', '='"
                        }
                    )));
                }
                if list[..i].contains(a) {
                    return Err(Error::config(format!("'{a}' is given twice")));
                }
            }
        }
        Ok(())
    }

    /// Every job, in the canonical order that shards slice.
    pub fn jobs(&self) -> Vec<Job> {
        let n = self.images.len();
        let mut jobs = Vec::new();
        for (t, task) in self.tasks.iter().enumerate() {
            for method in &self.methods {
                if self.excluded.iter().any(|[t, m]| t == task && m == method) {
                    continue;
                }
                for run in 0..self.runs[t] {
                    for start in (0..n).step_by(self.batch) {
                        jobs.push(Job {
                            index: jobs.len(),
                            task: task.clone(),
                            method: method.clone(),
                            run,
                            images: start..(start + self.batch).min(n),
                        });
                    }
                }
            }
        }
        jobs
    }

    /// The sampler seed of a job: from the run's seed and the job's coordinates only.
    pub fn job_seed(&self, job: &Job) -> u64 {
        mix(
            mix(mix(self.seed ^ name_hash(&job.task)) ^ name_hash(&job.method))
                ^ ((job.run as u64) << 32 | job.images.start as u64),
        )
    }

    /// The measurement-noise seed of one image of one task (the same for every method and run).
    pub fn measurement_seed(&self, task: &str, image: &str) -> u64 {
        mix(mix(self.seed ^ 0x4D45_4153) ^ name_hash(task) ^ name_hash(image).rotate_left(29))
    }
}

/// Letters, digits, `.`, `_` and `-`, not starting with `.`: safe as a file name.
pub fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// FNV-1a of a name: seeds that depend on a task's or method's name, not on its position.
pub fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One sampler batch of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Position in [`EvalSettings::jobs`].
    pub index: usize,
    pub task: String,
    pub method: String,
    pub run: usize,
    /// Positions in [`EvalSettings::images`].
    pub images: std::ops::Range<usize>,
}

/// `k/n` with 1 ≤ k ≤ n: the k-th of n slices of the jobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shard {
    /// 0-based.
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::config(format!(
                "--shard must be k/n with 1 ≤ k ≤ n (e.g. 1/4), got '{s}'"
            ))
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || k == 0 || k > n {
            return Err(bad());
        }
        Ok(Shard {
            index: k - 1,
            count: n,
        })
    }
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn takes(&self, job: &Job) -> bool {
        self.takes_index(job.index)
    }

    /// Whether the `i`-th unit of work (counted from 0) is this shard's.
    pub fn takes_index(&self, i: usize) -> bool {
        i % self.count == self.index
    }
}

/// One image × task × method × run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Image id and its position in the run's image list.
    pub image: String,
    pub index: usize,
    pub task: String,
    /// The method spec (`daps-50`), its label (`DAPS-50`) and its network evaluations per chain.
    pub method: String,
    pub label: String,
    pub nfe: usize,
    pub run: usize,
    /// The sampler seed of the job that made this record.
    pub seed: u64,
    pub psnr: f64,
    pub ssim: f64,
    pub lpips: Option<f64>,
    /// RMS of A(x) − y per measured entry (compare with σ_y).
    pub misfit: f64,
    /// The job's wall time divided by its images (all samples of an image together).
    pub seconds: f64,
    /// With K ≥ 2 samples: the fraction of true pixels inside the samples' per-pixel interval
    /// (`metric::image::coverage`, level 90%), and that interval's nominal coverage (what a
    /// calibrated sampler gives in expectation: 15/17 for K = 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage_nominal: Option<f64>,
}

/// The paths of a run folder.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn settings(&self) -> PathBuf {
        self.0.join("eval.json")
    }
    pub fn truth(&self, image: &str) -> PathBuf {
        self.0.join("truth").join(format!("{image}.png"))
    }
    pub fn measurement(&self, task: &str, image: &str) -> PathBuf {
        self.0
            .join("measurements")
            .join(task)
            .join(format!("{image}.safetensors"))
    }
    pub fn measurement_preview(&self, task: &str, image: &str) -> PathBuf {
        self.0
            .join("measurements")
            .join(task)
            .join(format!("{image}.png"))
    }
    pub fn image(&self, task: &str, method: &str, image: &str, run: usize) -> PathBuf {
        self.0
            .join("images")
            .join(task)
            .join(method)
            .join(format!("{image}-r{run}.png"))
    }
    pub fn record(&self, task: &str, method: &str, image: &str, run: usize) -> PathBuf {
        self.0
            .join("records")
            .join(task)
            .join(method)
            .join(format!("{image}-r{run}.json"))
    }

    /// Writes `s` as `eval.json`, or checks that the one there is the same.
    pub fn claim(&self, s: &EvalSettings) -> Result<()> {
        s.validate()?;
        let path = self.settings();
        if path.exists() {
            let have = read_settings(&self.0)?;
            if have.extended_by(s) {
                // more images on the same settings: the finished records stay valid (a job's
                // seed and block of images do not depend on how many images follow)
                let text =
                    serde_json::to_string_pretty(s).map_err(|e| Error::msg(e.to_string()))?;
                return crate::io::atomic_write(&path, text.as_bytes());
            }
            if have != *s {
                return Err(Error::config(format!(
                    "{} holds another evaluation ({}); rerun with the same settings to resume, or \
                     choose another --out",
                    path.display(),
                    settings_diff(&have, s)
                )));
            }
            return Ok(());
        }
        std::fs::create_dir_all(&self.0).map_err(|e| io_err(&self.0, e))?;
        let text = serde_json::to_string_pretty(s).map_err(|e| Error::msg(e.to_string()))?;
        crate::io::atomic_write(&path, text.as_bytes())
    }

    /// The record of `job`'s image `i`, if it exists and is whole.
    pub fn finished(&self, s: &EvalSettings, job: &Job, i: usize) -> Option<EvalRecord> {
        let id = &s.images[i];
        let p = self.record(&job.task, &job.method, id, job.run);
        let r: EvalRecord = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        (r.image == *id
            && r.index == i
            && r.task == job.task
            && r.method == job.method
            && r.run == job.run)
            .then_some(r)
    }

    /// Whether every record of `job` exists and is whole.
    pub fn job_done(&self, s: &EvalSettings, job: &Job) -> bool {
        job.images
            .clone()
            .all(|i| self.finished(s, job, i).is_some())
    }

    /// Writes a record atomically (creating its folder).
    pub fn write_record(&self, r: &EvalRecord) -> Result<()> {
        let p = self.record(&r.task, &r.method, &r.image, r.run);
        ensure_parent(&p)?;
        let text = serde_json::to_string_pretty(r).map_err(|e| Error::msg(e.to_string()))?;
        crate::io::atomic_write(&p, text.as_bytes())
    }
}

/// Creates the folder `p` will be written in.
pub fn ensure_parent(p: &Path) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| io_err(d, e))?;
    }
    Ok(())
}

/// The settings of the run in `dir`.
pub fn read_settings(dir: &Path) -> Result<EvalSettings> {
    let path = dir.join("eval.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::msg(format!(
            "{} is not a `daps eval` settings file: {e}",
            path.display()
        ))
    })
}

/// Several runs of the same images, seed, σ_y and prior (so the same measurements) with
/// different methods, as one run: tasks in first-seen order, methods in run order, records and
/// missing counts together. A task in several runs must have the same runs per image there;
/// a method may appear in one run only.
pub fn read_runs(dirs: &[PathBuf]) -> Result<(EvalSettings, Vec<EvalRecord>, usize)> {
    let Some((first, rest)) = dirs.split_first() else {
        return Err(Error::config("no run folder given"));
    };
    let (mut merged, mut recs, mut missing) = read_run(first)?;
    for dir in rest {
        let (s, r, m) = read_run(dir)?;
        let differs = [
            ("data", s.data != merged.data),
            ("images", s.images != merged.images),
            ("seed", s.seed != merged.seed),
            ("sigma_y", s.sigma_y != merged.sigma_y),
            ("prior", s.prior != merged.prior),
            ("best_of", s.best_of != merged.best_of),
        ];
        if let Some((what, _)) = differs.iter().find(|(_, d)| *d) {
            return Err(Error::config(format!(
                "{} and {} differ in {what}: only runs of the same images, seed, σ_y and prior \
                 (the same measurements) are reported together",
                first.display(),
                dir.display()
            )));
        }
        if let Some(m) = s.methods.iter().find(|m| merged.methods.contains(m)) {
            return Err(Error::config(format!(
                "method {m} is in {} and in an earlier run: give each method once",
                dir.display()
            )));
        }
        for (t, task) in s.tasks.iter().enumerate() {
            match merged.tasks.iter().position(|x| x == task) {
                Some(u) if merged.runs[u] != s.runs[t] => {
                    return Err(Error::config(format!(
                        "task {task}: {} runs per image in {}, {} in {}",
                        s.runs[t],
                        dir.display(),
                        merged.runs[u],
                        first.display()
                    )))
                }
                Some(_) => {}
                None => {
                    merged.tasks.push(task.clone());
                    merged.runs.push(s.runs[t]);
                }
            }
        }
        merged.methods.extend(s.methods);
        merged.excluded.extend(s.excluded);
        recs.extend(r);
        missing += m;
    }
    Ok((merged, recs, missing))
}

/// Every whole record of the run in `dir`, in job order, and the number of missing ones.
pub fn read_run(dir: &Path) -> Result<(EvalSettings, Vec<EvalRecord>, usize)> {
    let s = read_settings(dir)?;
    let run = RunDir(dir.to_path_buf());
    let (mut recs, mut missing) = (Vec::new(), 0);
    for job in s.jobs() {
        for i in job.images.clone() {
            match run.finished(&s, &job, i) {
                Some(r) => recs.push(r),
                None => missing += 1,
            }
        }
    }
    Ok((s, recs, missing))
}

/// Which fields differ between two settings, for the refusal message.
fn settings_diff(a: &EvalSettings, b: &EvalSettings) -> String {
    let (ja, jb) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let (Some(ma), Some(mb)) = (ja.as_object(), jb.as_object()) else {
        return String::new();
    };
    let mut out = Vec::new();
    for (k, va) in ma {
        if mb.get(k) != Some(va) {
            let short = |v: &serde_json::Value| {
                let s = v.to_string();
                if s.chars().count() > 60 {
                    format!("{}…", s.chars().take(60).collect::<String>())
                } else {
                    s
                }
            };
            out.push(format!(
                "{k}: {} there, {} now",
                short(va),
                short(mb.get(k).unwrap_or(&serde_json::Value::Null))
            ));
        }
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EvalSettings {
        EvalSettings {
            data: "digits".into(),
            images: (0..5).map(|i| format!("digit-{}", 9000 + i)).collect(),
            tasks: vec!["sr4".into(), "phase-retrieval".into()],
            methods: vec!["daps-50".into(), "dps-50".into()],
            runs: vec![1, 2],
            best_of: "each".into(),
            sigma_y: 0.05,
            seed: 0,
            batch: 2,
            prior: "default".into(),
            excluded: vec![],
            samples: 1,
        }
    }

    #[test]
    fn shards_partition_the_jobs() {
        let s = settings();
        let jobs = s.jobs();
        // 2 methods × (1 + 2 runs) × ⌈5/2⌉ blocks.
        assert_eq!(jobs.len(), 2 * 3 * 3);
        for n in 1..=4 {
            let mut seen = vec![0; jobs.len()];
            for k in 1..=n {
                let sh: Shard = format!("{k}/{n}").parse().unwrap();
                for j in jobs.iter().filter(|j| sh.takes(j)) {
                    seen[j.index] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "n = {n}: {seen:?}");
        }
        let seeds: std::collections::HashSet<u64> = jobs.iter().map(|j| s.job_seed(j)).collect();
        assert_eq!(seeds.len(), jobs.len(), "every job has its own seed");
        for bad in ["0/2", "3/2", "1", "a/b", "1/0"] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains("--shard must be k/n"), "{bad}: {e}");
        }
    }

    #[test]
    fn settings_refuse_bad_names_and_counts() {
        let mut s = settings();
        let mut ok = s.clone();
        ok.methods.push("daps-1k@tau_rule=measurement".into());
        ok.validate().unwrap();
        s.methods.push("../x".into());
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cannot name a file"));
        let mut s = settings();
        s.runs = vec![1];
        assert!(s.validate().is_err());
        let mut s = settings();
        s.tasks.push("sr4".into());
        s.runs.push(1);
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("given twice"));
    }

    #[test]
    fn a_run_extends_to_more_images_and_keeps_its_finished_jobs() {
        let dir = std::env::temp_dir().join(format!("daps-eval-extend-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let run = RunDir(dir.clone());
        let mut s = settings();
        s.images.truncate(4);
        run.claim(&s).unwrap();
        let mut more = settings();
        more.images.push("digit-9005".into());
        assert!(s.extended_by(&more) && !more.extended_by(&s) && !s.extended_by(&s));
        // the first two blocks of two images are the same jobs, with the same seeds
        let (old, new) = (s.jobs(), more.jobs());
        for (a, b) in old.iter().zip(&new).take(2) {
            assert_eq!((&a.images, s.job_seed(a)), (&b.images, more.job_seed(b)));
        }
        run.claim(&more).unwrap();
        assert_eq!(read_settings(&dir).unwrap(), more);
        // fewer images, another order, or another setting with more images: refused
        let e = run.claim(&s).unwrap_err().to_string();
        assert!(e.contains("holds another evaluation"), "{e}");
        let mut swapped = more.clone();
        swapped.images.swap(0, 1);
        assert!(run.claim(&swapped).is_err());
        let mut other = more.clone();
        other.images.push("digit-9006".into());
        other.seed = 1;
        assert!(run.claim(&other).is_err());
        assert_eq!(read_settings(&dir).unwrap(), more);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
