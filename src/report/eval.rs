//! The report of a `daps eval` run: runs combined per image ([`EvalSettings::best_of`]), then
//! per task and method the mean of each metric with its 95% interval and the paired PSNR
//! difference from a baseline method.

use super::DemoRecord;
use crate::bench::mean_ci95;
use crate::error::{Error, Result};
use crate::eval::{EvalRecord, EvalSettings};
use crate::io::io_err;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One image's scores for one task and method, its runs combined.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
}

/// A mean with the half-width of its 95% interval (`null` with fewer than two values).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Paired {
    pub baseline: String,
    pub images: usize,
    pub psnr_difference: Interval,
    /// Images where this method's PSNR is higher.
    pub wins: usize,
}

/// One task × method.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Interval>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage_nominal: Option<f64>,
    /// Set when the coverage comes from a `--samples` run of other (usually fewer) images than
    /// the scores: how many images it covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage_images: Option<usize>,
    pub paired: Option<Paired>,
    pub scores: Vec<ImageScore>,
}

impl MethodRow {
    /// Recomputes the means and intervals from `scores` (coverage too, unless it was joined
    /// from a `--samples` run of other images).
    fn restat(&mut self) {
        let col = |f: fn(&ImageScore) -> f64| self.scores.iter().map(f).collect::<Vec<f64>>();
        self.psnr = Interval::of(&col(|s| s.psnr));
        self.ssim = Interval::of(&col(|s| s.ssim));
        let lpips: Option<Vec<f64>> = self.scores.iter().map(|s| s.lpips).collect();
        self.lpips = lpips.filter(|v| !v.is_empty()).map(|v| Interval::of(&v));
        self.misfit = Interval::of(&col(|s| s.misfit));
        self.seconds_per_image =
            col(|s| s.seconds).iter().sum::<f64>() / self.scores.len().max(1) as f64;
        if self.coverage_images.is_none() {
            let coverage: Option<Vec<f64>> = self.scores.iter().map(|s| s.coverage).collect();
            self.coverage = coverage.filter(|v| !v.is_empty()).map(|v| Interval::of(&v));
        }
    }

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
            let mut row = MethodRow {
                task: task.clone(),
                method: (*method).clone(),
                label: first.label.clone(),
                nfe: first.nfe,
                runs: s.runs[t],
                psnr: Interval::of(&[]),
                ssim: Interval::of(&[]),
                lpips: None,
                misfit: Interval::of(&[]),
                seconds_per_image: 0.0,
                coverage: None,
                coverage_nominal: first.coverage_nominal,
                coverage_images: None,
                paired: None,
                scores,
            };
            row.restat();
            rows.push(row);
        }
    }
    pair(&mut rows, baseline);
    rows
}

/// Sets each row's paired PSNR difference from the baseline's row of its task, on the images
/// (by position in the image list) both scored.
fn pair(rows: &mut [MethodRow], baseline: &str) {
    for i in 0..rows.len() {
        rows[i].paired = None;
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

/// A report that `daps report RUN --json` wrote, read back.
#[derive(Debug, Clone, Deserialize)]
pub struct SummaryFile {
    pub format: String,
    pub daps_version: String,
    pub settings: EvalSettings,
    pub missing_records: usize,
    pub rows: Vec<MethodRow>,
}

/// Whether `path` holds a `daps report --json` summary of an eval run (not a demo file).
pub fn is_summary(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .is_ok_and(|v| v.get("format").and_then(|f| f.as_str()) == Some("daps-eval-report"))
}

pub fn read_summary(path: &Path) -> Result<SummaryFile> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let s: SummaryFile = serde_json::from_str(&text).map_err(|e| {
        Error::msg(format!(
            "{} is not a `daps report --json` summary: {e}",
            path.display()
        ))
    })?;
    if s.format != "daps-eval-report" {
        return Err(Error::msg(format!(
            "{}: format '{}', expected daps-eval-report",
            path.display(),
            s.format
        )));
    }
    Ok(s)
}

/// `NAME=SPEC` pairs (`--as`): rows of method SPEC are reported as method NAME (e.g. the specs
/// that a per-task preset stands for, under the preset's name).
pub fn parse_aliases(args: &[String]) -> Result<Vec<(String, String)>> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((n, s)) if !n.trim().is_empty() && !s.trim().is_empty() => {
                Ok((n.trim().to_string(), s.trim().to_string()))
            }
            _ => Err(Error::config(format!(
                "--as takes NAME=SPEC (e.g. daps-tuned=daps-1k@sigma_min=0.01), got '{a}'"
            ))),
        })
        .collect()
}

/// The name a method spec is reported under.
pub fn alias<'a>(aliases: &'a [(String, String)], spec: &'a str) -> &'a str {
    aliases
        .iter()
        .find(|(_, s)| s == spec)
        .map_or(spec, |(n, _)| n.as_str())
}

/// Only the first `n` images of the list (`daps report --first N`): rows keep the scores of
/// those images, their means, intervals and paired differences recomputed; rows left without
/// a score are dropped. Compares runs of different lengths (say 100 and 20 images) on the
/// images they share.
pub fn keep_first(
    settings: &mut EvalSettings,
    rows: &mut Vec<MethodRow>,
    n: usize,
    baseline: &str,
) {
    settings.images.truncate(n);
    for r in rows.iter_mut() {
        r.scores.retain(|s| s.index < n);
        r.restat();
    }
    rows.retain(|r| !r.scores.is_empty());
    pair(rows, baseline);
}

/// Reports of runs with the same data, seed, σ_y and prior (hence the same measurement of each
/// image and task), merged into one table: images in first-seen order (scores are paired by
/// image, so the runs may cover different images), rows per task and method (the baseline
/// first, default the first file's first method), method specs renamed by `aliases`, paired
/// differences recomputed against the baseline. A row from a `--samples` run (coverage) whose
/// task and method also have a single-sample row elsewhere gives that row its coverage (with
/// `coverage_images`); a row given twice is kept once when the scores agree (two summaries of
/// one run), and refused otherwise. Returns the merged
/// settings, the rows and the missing records of all files.
pub fn merge_summaries(
    files: &[(PathBuf, SummaryFile)],
    aliases: &[(String, String)],
    baseline: Option<&str>,
) -> Result<(EvalSettings, Vec<MethodRow>, usize)> {
    let Some(((first_path, first), rest)) = files.split_first() else {
        return Err(Error::config("no report given"));
    };
    let mut settings = first.settings.clone();
    settings.images.clear();
    settings.tasks.clear();
    settings.runs.clear();
    settings.methods.clear();
    settings.excluded.clear();
    for (path, f) in std::iter::once((first_path, first)).chain(rest.iter().map(|(p, f)| (p, f))) {
        let s = &f.settings;
        let differs = [
            ("data", s.data != first.settings.data),
            ("seed", s.seed != first.settings.seed),
            ("sigma_y", s.sigma_y != first.settings.sigma_y),
            ("prior", s.prior != first.settings.prior),
        ];
        if let Some((what, _)) = differs.iter().find(|(_, d)| *d) {
            return Err(Error::config(format!(
                "{} and {} differ in {what}: only reports of the same data, seed, σ_y and prior \
                 (the same measurements) are merged",
                first_path.display(),
                path.display()
            )));
        }
        for id in &s.images {
            if !settings.images.contains(id) {
                settings.images.push(id.clone());
            }
        }
        for (t, task) in s.tasks.iter().enumerate() {
            if !settings.tasks.contains(task) {
                settings.tasks.push(task.clone());
                settings.runs.push(s.runs[t]);
            }
        }
        for m in &s.methods {
            let m = alias(aliases, m).to_string();
            if !settings.methods.contains(&m) {
                settings.methods.push(m);
            }
        }
        settings.excluded.extend(s.excluded.iter().cloned());
        settings.samples = settings.samples.max(s.samples);
    }
    // Rows with their file, scores re-indexed onto the merged image list.
    let mut main: Vec<(usize, MethodRow)> = Vec::new();
    let mut cover: Vec<(usize, MethodRow)> = Vec::new();
    for (k, (_, f)) in files.iter().enumerate() {
        for r in &f.rows {
            let mut r = r.clone();
            r.method = alias(aliases, &r.method).to_string();
            for sc in &mut r.scores {
                sc.index = settings
                    .images
                    .iter()
                    .position(|id| *id == sc.image)
                    .unwrap_or(sc.index);
            }
            if f.settings.samples >= 2 {
                cover.push((k, r));
            } else {
                main.push((k, r));
            }
        }
    }
    // A coverage row is a row of its own where no single-sample row has its task and method.
    for (k, r) in std::mem::take(&mut cover) {
        if main
            .iter()
            .any(|(_, m)| m.task == r.task && m.method == r.method)
        {
            cover.push((k, r));
        } else {
            main.push((k, r));
        }
    }
    // The same row in two reports (they summarised one run folder, perhaps at different
    // stages): kept once, the one with more images, when the scores they share agree.
    let mut kept: Vec<(usize, MethodRow)> = Vec::new();
    for (k, r) in main {
        let Some(i) = kept
            .iter()
            .position(|(_, m)| m.task == r.task && m.method == r.method)
        else {
            kept.push((k, r));
            continue;
        };
        let agree = r.scores.iter().all(|s| {
            kept[i].1.scores.iter().all(|o| {
                o.image != s.image || (o.run == s.run && o.psnr == s.psnr && o.ssim == s.ssim)
            })
        });
        if !agree {
            return Err(Error::config(format!(
                "task {} method {} is in {} and in {} with other scores: give each once (or \
                 report one under another name with --as NAME=SPEC)",
                r.task,
                r.method,
                files[kept[i].0].0.display(),
                files[k].0.display()
            )));
        }
        if r.scores.len() > kept[i].1.scores.len() {
            kept[i] = (k, r);
        }
    }
    let mut rows: Vec<MethodRow> = kept.into_iter().map(|(_, r)| r).collect();
    for (k, c) in cover {
        let r = rows
            .iter_mut()
            .find(|m| m.task == c.task && m.method == c.method)
            .expect("a coverage row has a row to join");
        if r.coverage.is_some() {
            return Err(Error::config(format!(
                "task {} method {}: a second coverage in {}",
                c.task,
                c.method,
                files[k].0.display()
            )));
        }
        r.coverage = c.coverage;
        r.coverage_nominal = c.coverage_nominal;
        r.coverage_images = c.coverage.map(|_| c.scores.len());
    }
    let baseline = match baseline {
        Some(b) if !settings.methods.iter().any(|m| m == b) => {
            return Err(Error::config(format!(
                "--baseline {b} is not a method of the reports ({})",
                settings.methods.join(", ")
            )))
        }
        Some(b) => b.to_string(),
        None => settings.methods[0].clone(),
    };
    // Tasks in merged order; the baseline first, then the merged method order.
    let rank = |m: &str| {
        if m == baseline {
            0
        } else {
            1 + settings.methods.iter().position(|x| x == m).unwrap_or(0)
        }
    };
    rows.sort_by_key(|r| {
        (
            settings
                .tasks
                .iter()
                .position(|t| *t == r.task)
                .unwrap_or(0),
            rank(&r.method),
        )
    });
    pair(&mut rows, &baseline);
    let missing = files.iter().map(|(_, f)| f.missing_records).sum();
    Ok((settings, rows, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(images: &[&str], methods: &[&str], samples: usize) -> EvalSettings {
        EvalSettings {
            data: "digits".into(),
            images: images.iter().map(|s| s.to_string()).collect(),
            tasks: vec!["sr4".into()],
            methods: methods.iter().map(|s| s.to_string()).collect(),
            runs: vec![1],
            best_of: "each".into(),
            sigma_y: 0.05,
            seed: 0,
            batch: 4,
            prior: "default".into(),
            excluded: vec![],
            samples,
        }
    }

    /// A summary of one task whose method `m` scored `psnr[i]` on `images[i]`.
    fn summary(images: &[&str], rows: &[(&str, &[f64])], samples: usize) -> SummaryFile {
        let methods: Vec<&str> = rows.iter().map(|(m, _)| *m).collect();
        let s = settings(images, &methods, samples);
        let mut recs = Vec::new();
        for (m, psnr) in rows {
            for (i, (id, p)) in images.iter().zip(psnr.iter()).enumerate() {
                recs.push(EvalRecord {
                    image: id.to_string(),
                    index: i,
                    task: "sr4".into(),
                    method: m.to_string(),
                    label: m.to_uppercase(),
                    nfe: 10,
                    run: 0,
                    seed: 1,
                    psnr: *p,
                    ssim: 0.5,
                    lpips: None,
                    misfit: 0.05,
                    seconds: 1.0,
                    coverage: (samples >= 2).then_some(0.25 * (i + 1) as f64),
                    coverage_nominal: (samples >= 2).then_some(0.6),
                });
            }
        }
        let rows = aggregate(&s, &recs, methods[0]);
        SummaryFile {
            format: "daps-eval-report".into(),
            daps_version: "test".into(),
            settings: s,
            missing_records: 0,
            rows,
        }
    }

    fn files(s: Vec<SummaryFile>) -> Vec<(PathBuf, SummaryFile)> {
        s.into_iter()
            .enumerate()
            .map(|(i, f)| (PathBuf::from(format!("r{i}.json")), f))
            .collect()
    }

    #[test]
    fn summaries_pair_by_image_and_coverage_joins_its_row() {
        // Run 0: method a on images x, y, z. Run 1: method b on z, x (another order).
        // Run 2: 4 samples of a on x only: its coverage joins a's row.
        let f = files(vec![
            summary(&["x", "y", "z"], &[("a", &[10.0, 11.0, 12.0])], 1),
            summary(&["z", "x"], &[("b", &[15.0, 13.0])], 1),
            summary(&["x"], &[("a", &[99.0])], 4),
        ]);
        let (s, rows, _) = merge_summaries(&f, &[], Some("a")).unwrap();
        assert_eq!(s.images, ["x", "y", "z"]);
        assert_eq!(rows.len(), 2);
        let b = &rows[1];
        assert_eq!(b.method, "b");
        let p = b.paired.as_ref().unwrap();
        assert_eq!(p.images, 2);
        // b − a on z: 15 − 12, on x: 13 − 10.
        assert!((p.psnr_difference.mean - 3.0).abs() < 1e-12);
        assert_eq!(p.wins, 2);
        let a = &rows[0];
        assert_eq!(a.psnr.mean, 11.0, "the single-sample row keeps its scores");
        assert_eq!(a.coverage.unwrap().mean, 0.25);
        assert_eq!(a.coverage_images, Some(1));
        // Renamed: b as c; the baseline named by its new name.
        let al = parse_aliases(&["c=b".into()]).unwrap();
        let (s, rows, _) = merge_summaries(&f, &al, Some("c")).unwrap();
        assert_eq!(s.methods, ["a", "c"]);
        assert_eq!(rows[0].method, "c");
        assert!(rows[0].paired.is_none(), "the baseline has no pair");
        assert!((rows[1].paired.as_ref().unwrap().psnr_difference.mean + 3.0).abs() < 1e-12);
    }

    #[test]
    fn summaries_of_other_measurements_or_clashing_rows_are_refused() {
        let one = || summary(&["x", "y"], &[("a", &[10.0, 11.0])], 1);
        // The same row twice (two summaries of one run): kept once.
        let (_, rows, _) = merge_summaries(&files(vec![one(), one()]), &[], None).unwrap();
        assert_eq!(rows.len(), 1);
        // The same task and method with other scores: refused, naming both files.
        let other = summary(&["x"], &[("a", &[9.0])], 1);
        let e = merge_summaries(&files(vec![one(), other]), &[], None).unwrap_err();
        assert!(e.to_string().contains("r0.json and in r1.json"), "{e}");
        // Another seed: other measurements.
        let mut seed = summary(&["x"], &[("b", &[9.0])], 1);
        seed.settings.seed = 7;
        let e = merge_summaries(&files(vec![one(), seed]), &[], None).unwrap_err();
        assert!(e.to_string().contains("differ in seed"), "{e}");
        assert!(parse_aliases(&["nameonly".into()]).is_err());
        assert!(parse_aliases(&["=spec".into()]).is_err());
        let e = merge_summaries(&files(vec![one()]), &[], Some("zzz")).unwrap_err();
        assert!(e.to_string().contains("--baseline zzz"), "{e}");
    }

    #[test]
    fn first_images_restrict_means_and_pairs_to_the_shared_images() {
        // a on four images, b on the first two only (a shorter run of the same measurements).
        let f = files(vec![
            summary(
                &["w", "x", "y", "z"],
                &[("a", &[10.0, 12.0, 30.0, 40.0])],
                1,
            ),
            summary(&["w", "x"], &[("b", &[11.0, 15.0])], 1),
            summary(&["y"], &[("c", &[1.0])], 1),
        ]);
        let (mut s, mut rows, _) = merge_summaries(&f, &[], Some("a")).unwrap();
        assert_eq!(rows[0].psnr.mean, 23.0, "before: a over its four images");
        keep_first(&mut s, &mut rows, 2, "a");
        assert_eq!(s.images, ["w", "x"]);
        assert_eq!(rows.len(), 2, "c had no score among the first two images");
        assert_eq!(rows[0].psnr.mean, 11.0);
        assert_eq!(rows[0].scores.len(), 2);
        let p = rows[1].paired.as_ref().unwrap();
        assert_eq!(p.images, 2);
        assert!((p.psnr_difference.mean - 2.0).abs() < 1e-12);
        assert_eq!(rows[1].psnr.mean, 13.0);
    }
}
