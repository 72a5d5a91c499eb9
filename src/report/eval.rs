//! The report of a `daps eval` run: runs combined per image ([`EvalSettings::best_of`]), then
//! per task and method the mean of each metric with its 95% interval and the paired PSNR
//! difference from a baseline method.

use super::DemoRecord;
use crate::bench::mean_ci95;
use crate::eval::{EvalRecord, EvalSettings};
use serde::Serialize;

/// One image's scores for one task and method, its runs combined.
#[derive(Debug, Clone, Serialize)]
pub struct ImageScore {
    pub image: String,
    pub index: usize,
    /// The run with the best PSNR (its picture is shown).
    pub run: usize,
    pub psnr: f64,
    pub ssim: f64,
    pub lpips: Option<f64>,
    pub misfit: f64,
    /// All runs together.
    pub seconds: f64,
    /// Coverage of the truth by the samples' interval, mean over runs (`--samples` ≥ 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
}

/// A mean with the half-width of its 95% interval (`null` with fewer than two values).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub ci95: f64,
}

impl Interval {
    pub fn of(v: &[f64]) -> Self {
        let (mean, ci95) = mean_ci95(v);
        Interval { mean, ci95 }
    }
}

/// The paired PSNR difference of a method from the baseline on the images both scored.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub baseline: String,
    pub images: usize,
    pub psnr_difference: Interval,
    /// Images where this method's PSNR is higher.
    pub wins: usize,
}

/// One task × method.
#[derive(Debug, Clone, Serialize)]
pub struct MethodRow {
    pub task: String,
    pub method: String,
    pub label: String,
    pub nfe: usize,
    pub runs: usize,
    pub psnr: Interval,
    pub ssim: Interval,
    pub lpips: Option<Interval>,
    pub misfit: Interval,
    pub seconds_per_image: f64,
    /// With `--samples` ≥ 2: the coverage over images, and what a calibrated sampler gives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Interval>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage_nominal: Option<f64>,
    pub paired: Option<Paired>,
    pub scores: Vec<ImageScore>,
}

impl MethodRow {
    /// As a [`DemoRecord`] (image positions for digits), for [`super::table`].
    pub fn as_demo(&self) -> DemoRecord {
        DemoRecord {
            task: self.task.clone(),
            method: self.method.clone(),
            nfe: self.nfe,
            runs: self.runs,
            digits: self.scores.iter().map(|s| s.index).collect(),
            psnr: self.scores.iter().map(|s| s.psnr).collect(),
            ssim: self.scores.iter().map(|s| s.ssim).collect(),
            seconds: self.scores.iter().map(|s| s.seconds).sum(),
        }
    }
}

/// Rows per task (in the settings' order) and method (the baseline first, then the settings'
/// order), over the records present.
pub fn aggregate(s: &EvalSettings, recs: &[EvalRecord], baseline: &str) -> Vec<MethodRow> {
    let mut methods: Vec<&String> = s.methods.iter().filter(|m| *m == baseline).collect();
    methods.extend(s.methods.iter().filter(|m| *m != baseline));
    let mut rows = Vec::new();
    for (t, task) in s.tasks.iter().enumerate() {
        for method in &methods {
            let mine: Vec<&EvalRecord> = recs
                .iter()
                .filter(|r| r.task == *task && r.method == **method)
                .collect();
            let Some(first) = mine.first() else { continue };
            let mut scores = Vec::new();
            for (i, id) in s.images.iter().enumerate() {
                let runs: Vec<&&EvalRecord> = mine.iter().filter(|r| r.index == i).collect();
                if let Some(sc) = combine(id, i, &runs, &s.best_of) {
                    scores.push(sc);
                }
            }
            let col = |f: fn(&ImageScore) -> f64| scores.iter().map(f).collect::<Vec<f64>>();
            let lpips: Option<Vec<f64>> = scores.iter().map(|s| s.lpips).collect();
            let coverage: Option<Vec<f64>> = scores.iter().map(|s| s.coverage).collect();
            rows.push(MethodRow {
                task: task.clone(),
                method: (*method).clone(),
                label: first.label.clone(),
                nfe: first.nfe,
                runs: s.runs[t],
                psnr: Interval::of(&col(|s| s.psnr)),
                ssim: Interval::of(&col(|s| s.ssim)),
                lpips: lpips.filter(|v| !v.is_empty()).map(|v| Interval::of(&v)),
                misfit: Interval::of(&col(|s| s.misfit)),
                seconds_per_image: col(|s| s.seconds).iter().sum::<f64>()
                    / scores.len().max(1) as f64,
                coverage: coverage.filter(|v| !v.is_empty()).map(|v| Interval::of(&v)),
                coverage_nominal: first.coverage_nominal,
                paired: None,
                scores,
            });
        }
    }
    for i in 0..rows.len() {
        let Some(b) = rows
            .iter()
            .position(|r| r.task == rows[i].task && r.method == baseline)
        else {
            continue;
        };
        if b == i {
            continue;
        }
        let d: Vec<f64> = rows[i]
            .scores
            .iter()
            .filter_map(|s| {
                let o = rows[b].scores.iter().find(|o| o.index == s.index)?;
                Some(s.psnr - o.psnr)
            })
            .collect();
        rows[i].paired = Some(Paired {
            baseline: baseline.to_string(),
            images: d.len(),
            psnr_difference: Interval::of(&d),
            wins: d.iter().filter(|x| **x > 0.0).count(),
        });
    }
    rows
}

/// One image's runs combined: `each` maximises PSNR and SSIM and minimises LPIPS separately (as
/// the DAPS paper's best-of-4 phase retrieval); `psnr` takes every metric from the best-PSNR run.
fn combine(id: &str, index: usize, runs: &[&&EvalRecord], best_of: &str) -> Option<ImageScore> {
    let best = runs
        .iter()
        .max_by(|a, b| a.psnr.total_cmp(&b.psnr).then(b.run.cmp(&a.run)))?;
    let mut sc = ImageScore {
        image: id.to_string(),
        index,
        run: best.run,
        psnr: best.psnr,
        ssim: best.ssim,
        lpips: best.lpips,
        misfit: best.misfit,
        seconds: runs.iter().map(|r| r.seconds).sum(),
        coverage: runs
            .iter()
            .map(|r| r.coverage)
            .collect::<Option<Vec<f64>>>()
            .map(|v| v.iter().sum::<f64>() / v.len() as f64),
    };
    if best_of == "each" {
        sc.ssim = runs
            .iter()
            .map(|r| r.ssim)
            .fold(f64::NEG_INFINITY, f64::max);
        sc.lpips = runs
            .iter()
            .map(|r| r.lpips)
            .collect::<Option<Vec<f64>>>()
            .map(|v| v.into_iter().fold(f64::INFINITY, f64::min));
    }
    Some(sc)
}

/// The JSON summary `daps report RUN --json` writes.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    pub format: &'static str,
    pub daps_version: &'static str,
    pub settings: &'a EvalSettings,
    /// Records expected but not (yet) written.
    pub missing_records: usize,
    pub rows: &'a [MethodRow],
}

impl<'a> Summary<'a> {
    pub fn new(settings: &'a EvalSettings, rows: &'a [MethodRow], missing: usize) -> Self {
        Summary {
            format: "daps-eval-report",
            daps_version: env!("CARGO_PKG_VERSION"),
            settings,
            missing_records: missing,
            rows,
        }
    }
}
