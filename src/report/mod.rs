//! Per-digit records of a digits evaluation (`daps demo --json`) and their report: merging files
//! (say, one per range of digits), means with 95% intervals, and paired differences between
//! methods on the digits both scored; and the report of a `daps eval` run ([`eval`], [`html`]).

pub mod eval;
pub mod html;

use crate::bench::mean_ci95;
use crate::error::{Error, Result};
use crate::io::io_err;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One task × method over all digits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoRecord {
    pub task: String,
    pub method: String,
    pub nfe: usize,
    pub runs: usize,
    /// Held-out digit indices into the built-in set.
    pub digits: Vec<usize>,
    /// Per digit, best over runs.
    pub psnr: Vec<f64>,
    pub ssim: Vec<f64>,
    pub seconds: f64,
}

impl DemoRecord {
    pub fn mean_psnr(&self) -> f64 {
        mean(&self.psnr)
    }
    pub fn mean_ssim(&self) -> f64 {
        mean(&self.ssim)
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Writes records as a JSON array, atomically (the format `daps demo --json` writes).
pub fn write_records(path: &Path, records: &[DemoRecord]) -> Result<()> {
    let text = serde_json::to_string_pretty(records).map_err(|e| Error::msg(e.to_string()))?;
    crate::io::atomic_write(path, text.as_bytes())
}

/// The records of one `daps demo --json` file.
pub fn read_records(path: &Path) -> Result<Vec<DemoRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let recs: Vec<DemoRecord> = serde_json::from_str(&text).map_err(|e| {
        Error::msg(format!(
            "{} is not a `daps demo --json` file: {e}",
            path.display()
        ))
    })?;
    for r in &recs {
        if r.psnr.len() != r.digits.len() || r.ssim.len() != r.digits.len() {
            return Err(Error::msg(format!(
                "{}: {} {} has {} digits but {} PSNR and {} SSIM values",
                path.display(),
                r.task,
                r.method,
                r.digits.len(),
                r.psnr.len(),
                r.ssim.len()
            )));
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
                        return Err(Error::msg(format!(
                            "{}: {} {} has runs {} / NFE {}, earlier files {} / {}",
                            file.display(),
                            r.task,
                            r.method,
                            r.runs,
                            r.nfe,
                            m.runs,
                            m.nfe
                        )));
                    }
                    if let Some(d) = r.digits.iter().find(|d| m.digits.contains(d)) {
                        return Err(Error::msg(format!(
                            "{}: digit {d} of {} {} is already in an earlier file",
                            file.display(),
                            r.task,
                            r.method
                        )));
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
    table_against(records, None)
}

/// [`table`] with the paired differences taken from `baseline` (default: the first method).
pub fn table_against(records: &[DemoRecord], baseline: Option<&str>) -> String {
    let (tasks, methods) = tasks_and_methods(records, baseline);
    let find = |t: &str, m: &str| records.iter().find(|r| r.task == t && r.method == m);
    let mw = methods
        .iter()
        .map(|m| m.chars().count())
        .max()
        .unwrap_or(0)
        .max(10);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:<mw$} {:>7} {:>5} {:>16} {:>15} {:>9}",
        "task", "method", "digits", "runs", "PSNR ± 95%", "SSIM ± 95%", "seconds"
    );
    for t in &tasks {
        for m in &methods {
            let Some(r) = find(t, m) else { continue };
            let (p, pc) = mean_ci95(&r.psnr);
            let (q, qc) = mean_ci95(&r.ssim);
            let _ = writeln!(
                s,
                "{:<16} {:<mw$} {:>7} {:>5} {:>9.2} ± {:<4.2} {:>8.3} ± {:.3} {:>9.1}",
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
            "  {:<mw$} PSNR {:>6.2}  SSIM {:.3}  ({} tasks)",
            m,
            p,
            q,
            rs.len()
        );
    }
    // Where the methods ran different tasks, also the means over the tasks they all ran.
    let common: Vec<&str> = tasks
        .iter()
        .copied()
        .filter(|t| methods.iter().all(|m| find(t, m).is_some()))
        .collect();
    if methods.len() > 1 && !common.is_empty() && common.len() < tasks.len() {
        let _ = writeln!(
            s,
            "mean over the tasks every method ran ({}):",
            common.join(", ")
        );
        for m in &methods {
            let rs: Vec<&DemoRecord> = common.iter().filter_map(|t| find(t, m)).collect();
            let p = rs.iter().map(|r| mean_ci95(&r.psnr).0).sum::<f64>() / rs.len() as f64;
            let q = rs.iter().map(|r| mean_ci95(&r.ssim).0).sum::<f64>() / rs.len() as f64;
            let _ = writeln!(s, "  {:<mw$} PSNR {:>6.2}  SSIM {:.3}", m, p, q);
        }
    }
    s
}

/// The tasks and methods of `records` in first-seen order, `first` (if a method there) first.
fn tasks_and_methods<'a>(
    records: &'a [DemoRecord],
    first: Option<&'a str>,
) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut tasks: Vec<&str> = Vec::new();
    let mut methods: Vec<&str> = Vec::new();
    if let Some(b) = first.filter(|b| records.iter().any(|r| r.method == *b)) {
        methods.push(b);
    }
    for r in records {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    (tasks, methods)
}

/// The records as a Markdown table: one row per method (`NFE` as recorded; several values
/// joined by `/` where the tasks' presets differ), one column of mean PSNR (dB) per task, the
/// best of each task in bold, and the mean over the tasks a method ran with their count. A row
/// scored on fewer images than the table's most carries `(n = K)`; a task a method did not run
/// is `–`. Methods and tasks in first-seen order.
pub fn markdown(records: &[DemoRecord]) -> String {
    let (tasks, methods) = tasks_and_methods(records, None);
    let find = |t: &str, m: &str| records.iter().find(|r| r.task == t && r.method == m);
    let most = records.iter().map(|r| r.psnr.len()).max().unwrap_or(0);
    let best: Vec<f64> = tasks
        .iter()
        .map(|t| {
            records
                .iter()
                .filter(|r| r.task == *t && !r.psnr.is_empty())
                .map(DemoRecord::mean_psnr)
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    let mut s = format!("| method | NFE | {} | mean (tasks) |\n", tasks.join(" | "));
    let _ = writeln!(s, "|---|---|{}---|", "---|".repeat(tasks.len()));
    for m in &methods {
        let mine: Vec<&DemoRecord> = records.iter().filter(|r| r.method == *m).collect();
        let mut nfe: Vec<usize> = mine.iter().map(|r| r.nfe).collect();
        nfe.sort_unstable();
        nfe.dedup();
        let nfe = nfe
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join("/");
        let cells: Vec<String> = tasks
            .iter()
            .zip(&best)
            .map(|(t, &b)| match find(t, m).filter(|r| !r.psnr.is_empty()) {
                None => "–".into(),
                Some(r) => {
                    let p = r.mean_psnr();
                    let mut c = if p == b {
                        format!("**{p:.2}**")
                    } else {
                        format!("{p:.2}")
                    };
                    if r.psnr.len() < most {
                        let _ = write!(c, " (n = {})", r.psnr.len());
                    }
                    c
                }
            })
            .collect();
        let ran: Vec<f64> = mine
            .iter()
            .filter(|r| !r.psnr.is_empty())
            .map(|r| r.mean_psnr())
            .collect();
        let avg = if ran.is_empty() {
            "–".into()
        } else {
            format!("{:.2} ({})", mean(&ran), ran.len())
        };
        let _ = writeln!(s, "| `{m}` | {nfe} | {} | {avg} |", cells.join(" | "));
    }
    s
}
