//! `daps report`: merges the per-digit JSON of one or more `daps demo --json` runs (say, one
//! run per range of digits) and prints each method's mean PSNR and SSIM with a 95% interval,
//! and the paired difference of every method from the first on the digits both scored.

use anyhow::Result;
use clap::Args;
use daps::report::{merge, read_records, table, write_records};
use std::path::PathBuf;

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
    if let Some(p) = &a.json {
        let mut inputs = super::outputs::Inputs::default();
        for f in &a.files {
            inputs.add("an input", Some(f));
        }
        super::outputs::file("--json", p, &["json"], &inputs)?;
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
