//! `daps report`: merges the per-digit JSON of one or more `daps demo --json` runs (say, one
//! run per range of digits) and prints each method's mean PSNR and SSIM with a 95% interval,
//! and the paired difference of every method from the first on the digits both scored.

use super::demo::DemoRecord;
use crate::bench::mean_ci95;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// JSON files written by `daps demo --json` (records of the same task and method are merged;
    /// a digit may appear once per task and method).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Writes the merged records as one JSON file (the format `daps demo --json` writes).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn report(a: ReportArgs) -> Result<()> {
    let mut lists = Vec::new();
    for f in &a.files {
        lists.push((f.clone(), read_records(f)?));
    }
    let merged = merge(lists)?;
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&merged)?;
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    print!("{}", table(&merged));
    Ok(())
}

/// The records of one `daps demo --json` file.
pub fn read_records(path: &Path) -> Result<Vec<DemoRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let recs: Vec<DemoRecord> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a `daps demo --json` file", path.display()))?;
    for r in &recs {
        if r.psnr.len() != r.digits.len() || r.ssim.len() != r.digits.len() {
            bail!(
                "{}: {} {} has {} digits but {} PSNR and {} SSIM values",
                path.display(),
                r.task,
                r.method,
                r.digits.len(),
                r.psnr.len(),
                r.ssim.len()
            );
        }
    }
    Ok(recs)
}

/// Concatenates the records of each (task, method) in the order given; times add up. Errors on
/// a digit scored twice for one task and method, or on runs/NFE that differ between files.
pub fn merge(lists: Vec<(PathBuf, Vec<DemoRecord>)>) -> Result<Vec<DemoRecord>> {
    let mut out: Vec<DemoRecord> = Vec::new();
    for (file, recs) in lists {
        for r in recs {
            match out
                .iter_mut()
                .find(|m| m.task == r.task && m.method == r.method)
            {
                None => out.push(r),
                Some(m) => {
                    if m.runs != r.runs || m.nfe != r.nfe {
                        bail!(
                            "{}: {} {} has runs {} / NFE {}, earlier files {} / {}",
                            file.display(),
                            r.task,
                            r.method,
                            r.runs,
                            r.nfe,
                            m.runs,
                            m.nfe
                        );
                    }
                    if let Some(d) = r.digits.iter().find(|d| m.digits.contains(d)) {
                        bail!(
                            "{}: digit {d} of {} {} is already in an earlier file",
                            file.display(),
                            r.task,
                            r.method
                        );
                    }
                    m.digits.extend(r.digits);
                    m.psnr.extend(r.psnr);
                    m.ssim.extend(r.ssim);
                    m.seconds += r.seconds;
                }
            }
        }
    }
    Ok(out)
}

/// PSNR differences `a − b` on the digits both records scored, in `a`'s order.
pub fn paired_psnr(a: &DemoRecord, b: &DemoRecord) -> Vec<f64> {
    a.digits
        .iter()
        .zip(&a.psnr)
        .filter_map(|(d, pa)| {
            let j = b.digits.iter().position(|e| e == d)?;
            Some(pa - b.psnr[j])
        })
        .collect()
}

/// The report's text: per task, each method's PSNR ± 95% / SSIM ± 95% (digits, seconds), then
/// each later method's paired PSNR difference from the first; the mean over tasks at the end.
pub fn table(records: &[DemoRecord]) -> String {
    let mut tasks: Vec<&str> = Vec::new();
    let mut methods: Vec<&str> = Vec::new();
    for r in records {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    let find = |t: &str, m: &str| records.iter().find(|r| r.task == t && r.method == m);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:<10} {:>7} {:>5} {:>16} {:>15} {:>9}",
        "task", "method", "digits", "runs", "PSNR ± 95%", "SSIM ± 95%", "seconds"
    );
    for t in &tasks {
        for m in &methods {
            let Some(r) = find(t, m) else { continue };
            let (p, pc) = mean_ci95(&r.psnr);
            let (q, qc) = mean_ci95(&r.ssim);
            let _ = writeln!(
                s,
                "{:<16} {:<10} {:>7} {:>5} {:>9.2} ± {:<4.2} {:>8.3} ± {:.3} {:>9.1}",
                t,
                m,
                r.digits.len(),
                r.runs,
                p,
                pc,
                q,
                qc,
                r.seconds
            );
        }
        let Some(first) = find(t, methods[0]) else {
            continue;
        };
        for m in &methods[1..] {
            let Some(r) = find(t, m) else { continue };
            let d = paired_psnr(first, r);
            if d.is_empty() {
                continue;
            }
            let (dm, dc) = mean_ci95(&d);
            let wins = d.iter().filter(|x| **x > 0.0).count();
            let _ = writeln!(
                s,
                "{:<16}   paired PSNR {} − {}: {:+.2} ± {:.2} dB over {} digits ({} better on {})",
                "",
                methods[0],
                m,
                dm,
                dc,
                d.len(),
                methods[0],
                wins
            );
        }
    }
    let _ = writeln!(s, "mean over tasks (each method over the tasks it ran):");
    for m in &methods {
        let rs: Vec<&DemoRecord> = records.iter().filter(|r| r.method == *m).collect();
        let p = rs.iter().map(|r| mean_ci95(&r.psnr).0).sum::<f64>() / rs.len() as f64;
        let q = rs.iter().map(|r| mean_ci95(&r.ssim).0).sum::<f64>() / rs.len() as f64;
        let _ = writeln!(
            s,
            "  {:<10} PSNR {:>6.2}  SSIM {:.3}  ({} tasks)",
            m,
            p,
            q,
            rs.len()
        );
    }
    s
}
