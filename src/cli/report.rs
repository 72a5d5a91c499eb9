//! `daps report`: the summary of a `daps eval` run folder (a table with 95% intervals and
//! paired differences from a baseline, a JSON summary, a self-contained HTML page), or the merge
//! of `daps demo --json` files (say, one per range of digits).

use anyhow::{bail, Result};
use clap::Args;
use daps::eval::{read_run, RunDir};
use daps::report::eval::{aggregate, MethodRow, Summary};
use daps::report::{merge, read_records, table, write_records};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// A `daps eval` run folder, or JSON files written by `daps demo --json` (records of the
    /// same task and method are merged; a digit may appear once per task and method).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Writes the summary as JSON (for demo files: the merged records, in their format).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Eval runs: writes a self-contained HTML page (pictures, plots, settings).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Eval runs: the method the others are compared with [default: the first].
    #[arg(long)]
    pub baseline: Option<String>,
}

pub fn report(a: ReportArgs) -> Result<()> {
    let mut inputs = super::outputs::Inputs::default();
    for f in &a.files {
        inputs.add("an input", Some(f));
    }
    if let Some(p) = &a.json {
        super::outputs::file("--json", p, &["json"], &inputs)?;
    }
    if let Some(p) = &a.html {
        super::outputs::file("--html", p, &["html", "htm"], &inputs)?;
    }
    if a.files.iter().any(|f| f.is_dir()) {
        if a.files.len() != 1 {
            bail!("give one `daps eval` run folder, or `daps demo --json` files");
        }
        return eval_report(&a);
    }
    if a.html.is_some() || a.baseline.is_some() {
        bail!("--html and --baseline need a `daps eval` run folder");
    }
    let mut lists = Vec::new();
    for f in &a.files {
        lists.push((f.clone(), read_records(f)?));
    }
    let merged = merge(lists)?;
    if let Some(p) = &a.json {
        write_records(p, &merged)?;
    }
    print!("{}", table(&merged));
    Ok(())
}

fn eval_report(a: &ReportArgs) -> Result<()> {
    let dir = &a.files[0];
    let (settings, recs, missing) = read_run(dir)?;
    let baseline = match &a.baseline {
        Some(b) if !settings.methods.contains(b) => bail!(
            "--baseline {b} is not a method of this run ({})",
            settings.methods.join(", ")
        ),
        Some(b) => b.clone(),
        None => settings.methods[0].clone(),
    };
    let rows: Vec<MethodRow> = aggregate(&settings, &recs, &baseline);
    let summary = Summary::new(&settings, &rows, missing);
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&summary)?;
        daps::io::atomic_write(p, text.as_bytes())?;
    }
    if let Some(p) = &a.html {
        let page = daps::report::html::page(&summary, &RunDir(dir.clone()));
        daps::io::atomic_write(p, page.as_bytes())?;
    }
    let demo: Vec<_> = rows.iter().map(MethodRow::as_demo).collect();
    print!("{}", table(&demo));
    if rows.iter().any(|r| r.coverage.is_some()) {
        println!(
            "coverage: fraction of true pixels inside the per-pixel interval of {} samples \
             (a calibrated sampler: the nominal value)",
            settings.samples
        );
        for r in &rows {
            if let (Some(c), Some(n)) = (&r.coverage, r.coverage_nominal) {
                println!(
                    "  {:<18} {:<28} {:5.1}% ± {:4.1}  (nominal {:.1}%)",
                    r.task,
                    r.label,
                    100.0 * c.mean,
                    100.0 * c.ci95,
                    100.0 * n
                );
            }
        }
    }
    if missing > 0 {
        println!(
            "incomplete: {missing} record(s) missing (rerun the `daps eval` command to finish)"
        );
    }
    Ok(())
}
