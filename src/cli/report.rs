//! `daps report`: the summary of a `daps eval` run folder (a table with 95% intervals and
//! paired differences from a baseline, a JSON summary, a self-contained HTML page), the merge of
//! such summaries (runs of the same measurements made apart), or the merge of `daps demo --json`
//! files (say, one per range of digits).

use anyhow::{bail, Result};
use clap::Args;
use daps::eval::{read_runs, RunDir};
use daps::report::eval::{
    aggregate, alias, is_summary, keep_first, merge_summaries, parse_aliases, read_summary,
    MethodRow, Summary,
};
use daps::report::{
    markdown, merge, read_records, table, table_against, write_records, DemoRecord,
};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// A `daps eval` run folder (or several, of the same images, seed, σ_y and prior, hence the
    /// same measurements, with different methods: one table, paired across runs); or summaries
    /// that `daps report RUN --json` wrote, of runs with the same seed, σ_y and prior (paired by
    /// image; a `--samples` run's coverage joins the rows of its task and method); or JSON files
    /// written by `daps demo --json` (records of the same task and method are merged; a digit
    /// may appear once per task and method).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Eval runs and summaries: report method SPEC under the name NAME (repeatable), e.g. the
    /// per-task specs that a preset stands for under the preset's name.
    #[arg(long = "as", value_name = "NAME=SPEC")]
    pub aliases: Vec<String>,
    /// Writes the summary as JSON (for demo files: the merged records, in their format).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Eval runs: writes a self-contained HTML page (pictures, plots, settings).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Eval runs: the method the others are compared with [default: the first].
    #[arg(long)]
    pub baseline: Option<String>,
    /// Eval runs: writes a PNG grid, per task the first images (truth | measurement | each
    /// method, PSNR / SSIM under each).
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Images per task in the `--png` grid.
    #[arg(long, default_value_t = 3)]
    pub png_images: usize,
    /// Eval runs and summaries: only the first N images (of the merged list), means, intervals
    /// and paired differences recomputed; e.g. a 20-image run beside 100-image ones on the
    /// images they share.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub first: Option<u64>,
    /// Writes the table as Markdown: one row per method, mean PSNR per task (best in bold, a
    /// row of fewer images marked), the mean over the tasks each method ran.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

fn write_markdown(a: &ReportArgs, records: &[DemoRecord]) -> Result<()> {
    if let Some(p) = &a.markdown {
        daps::io::atomic_write(p, markdown(records).as_bytes())?;
    }
    Ok(())
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
    if let Some(p) = &a.png {
        super::outputs::file("--png", p, &["png"], &inputs)?;
    }
    if let Some(p) = &a.markdown {
        super::outputs::file("--markdown", p, &["md"], &inputs)?;
    }
    if a.files.iter().any(|f| f.is_dir()) {
        if !a.files.iter().all(|f| f.is_dir()) {
            bail!("give `daps eval` run folders, or `daps demo --json` files, not both");
        }
        if a.files.len() > 1 && (a.html.is_some() || a.png.is_some()) {
            bail!("--html and --png take one run folder (its pictures); the table and --json take several");
        }
        return eval_report(&a);
    }
    let summaries = a.files.iter().filter(|f| is_summary(f)).count();
    if summaries > 0 {
        if summaries < a.files.len() {
            bail!("give `daps report --json` summaries, or `daps demo --json` files, not both");
        }
        if a.html.is_some() || a.png.is_some() {
            bail!("--html and --png need a `daps eval` run folder (its pictures)");
        }
        return summary_report(&a);
    }
    if a.html.is_some()
        || a.baseline.is_some()
        || a.png.is_some()
        || !a.aliases.is_empty()
        || a.first.is_some()
    {
        bail!(
            "--html, --png, --baseline, --as and --first need `daps eval` run folders or their \
             summaries"
        );
    }
    let mut lists = Vec::new();
    for f in &a.files {
        lists.push((f.clone(), read_records(f)?));
    }
    let merged = merge(lists)?;
    if let Some(p) = &a.json {
        write_records(p, &merged)?;
    }
    write_markdown(&a, &merged)?;
    print!("{}", table(&merged));
    Ok(())
}

fn summary_report(a: &ReportArgs) -> Result<()> {
    let aliases = parse_aliases(&a.aliases)?;
    let mut files = Vec::new();
    for f in &a.files {
        files.push((f.clone(), read_summary(f)?));
    }
    let (mut settings, mut rows, missing) =
        merge_summaries(&files, &aliases, a.baseline.as_deref())?;
    if let Some(n) = a.first {
        let baseline = a
            .baseline
            .clone()
            .unwrap_or_else(|| settings.methods[0].clone());
        keep_first(&mut settings, &mut rows, n as usize, &baseline);
    }
    if let Some(p) = &a.json {
        let summary = Summary::new(&settings, &rows, missing);
        let text = serde_json::to_string_pretty(&summary)?;
        daps::io::atomic_write(p, text.as_bytes())?;
    }
    write_markdown(a, &rows.iter().map(MethodRow::as_demo).collect::<Vec<_>>())?;
    print_rows(&rows, &settings, 0);
    for (f, s) in &files {
        if s.missing_records > 0 {
            println!(
                "incomplete: {} lacks {} record(s) of its run",
                f.display(),
                s.missing_records
            );
        }
    }
    Ok(())
}

fn eval_report(a: &ReportArgs) -> Result<()> {
    let dir = &a.files[0];
    let (mut settings, mut recs, missing) = read_runs(&a.files)?;
    let aliases = parse_aliases(&a.aliases)?;
    if !aliases.is_empty() {
        // Two specs under one name: fine where no task has records of both.
        let mut specs = std::collections::HashMap::new();
        for r in &recs {
            let name = alias(&aliases, &r.method);
            let first = specs
                .entry((r.task.clone(), name.to_string()))
                .or_insert_with(|| r.method.clone());
            if *first != r.method {
                bail!(
                    "--as {name}: task {} has records of {first} and of {}",
                    r.task,
                    r.method
                );
            }
        }
        for r in &mut recs {
            r.method = alias(&aliases, &r.method).to_string();
        }
        let mut methods: Vec<String> = Vec::new();
        for m in &settings.methods {
            let m = alias(&aliases, m).to_string();
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
        settings.methods = methods;
    }
    let baseline = match &a.baseline {
        Some(b) if !settings.methods.contains(b) => bail!(
            "--baseline {b} is not a method of the run(s) ({})",
            settings.methods.join(", ")
        ),
        Some(b) => b.clone(),
        None => settings.methods[0].clone(),
    };
    let mut rows: Vec<MethodRow> = aggregate(&settings, &recs, &baseline);
    if let Some(n) = a.first {
        keep_first(&mut settings, &mut rows, n as usize, &baseline);
    }
    let summary = Summary::new(&settings, &rows, missing);
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&summary)?;
        daps::io::atomic_write(p, text.as_bytes())?;
    }
    if let Some(p) = &a.html {
        let page = daps::report::html::page(&summary, &RunDir(dir.clone()));
        daps::io::atomic_write(p, page.as_bytes())?;
    }
    if let Some(p) = &a.png {
        grid_png(&rows, &settings, &RunDir(dir.clone()), a.png_images, p)?;
    }
    write_markdown(a, &rows.iter().map(MethodRow::as_demo).collect::<Vec<_>>())?;
    print_rows(&rows, &settings, missing);
    Ok(())
}

/// The table, the coverage lines and the count of missing records.
fn print_rows(rows: &[MethodRow], settings: &daps::eval::EvalSettings, missing: usize) {
    let demo: Vec<_> = rows.iter().map(MethodRow::as_demo).collect();
    let baseline = rows
        .iter()
        .find_map(|r| r.paired.as_ref().map(|p| p.baseline.as_str()));
    print!("{}", table_against(&demo, baseline));
    let samples = settings.samples;
    if rows.iter().any(|r| r.coverage.is_some()) {
        println!(
            "coverage: fraction of true pixels inside the per-pixel interval of {} samples \
             (a calibrated sampler: the nominal value)",
            samples
        );
        for r in rows {
            if let (Some(c), Some(n)) = (&r.coverage, r.coverage_nominal) {
                let over = r
                    .coverage_images
                    .map_or(String::new(), |k| format!(", over {k} images"));
                println!(
                    "  {:<18} {:<28} {:5.1}% ± {:4.1}  (nominal {:.1}%{over})",
                    r.task,
                    r.method,
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
}

/// Per task (in the run's order) its first `n` images: truth | measurement | each method of
/// the run, PSNR / SSIM under each; every picture scaled by an integer to about 96 px.
fn grid_png(
    rows: &[MethodRow],
    s: &daps::eval::EvalSettings,
    run: &RunDir,
    n: usize,
    out: &std::path::Path,
) -> Result<()> {
    use super::grid::{text_width, Canvas, TEXT_HEIGHT};
    let cell = 96;
    let read = |p: &std::path::Path| -> Option<candle_core::Tensor> {
        let t = daps::io::read_image(p).ok()?;
        ((t + 1.0).ok()? / 2.0).ok()
    };
    let tasks: Vec<&str> = s.tasks.iter().map(String::as_str).collect();
    let (cw, ch) = (cell + 2, cell + 2);
    let label_w = tasks.iter().map(|t| text_width(t)).max().unwrap_or(0) + 8;
    // Column titles: the label without its overrides ("DDRM-100 [steps=100]" → "DDRM-100").
    let titles: Vec<String> = s
        .methods
        .iter()
        .map(|m| {
            rows.iter()
                .find(|r| r.method == *m)
                .map_or(m.as_str(), |r| {
                    r.label.split(" [").next().unwrap_or(&r.label)
                })
                .to_string()
        })
        .collect();
    let col_w = titles
        .iter()
        .map(|m| text_width(m))
        .max()
        .unwrap_or(0)
        .max(text_width("00.00/0.000"))
        .max(cw)
        + 6;
    let cell_h = ch + TEXT_HEIGHT + 6;
    let header = TEXT_HEIGHT + 8;
    let n = n.min(s.images.len()).max(1);
    let block = n * cell_h + 8;
    let mut canvas = Canvas::new(
        label_w + (2 + s.methods.len()) * col_w,
        header + tasks.len() * block,
    );
    let heads = ["TRUTH".to_string(), "MEASUREMENT".to_string()];
    for (j, t) in heads.iter().chain(&titles).enumerate() {
        canvas.text_centred(t, label_w + j * col_w, cw, 3);
    }
    let draw = |c: &mut Canvas, img: Option<candle_core::Tensor>, x: usize, y: usize| {
        let Some(img) = img else { return Ok(()) };
        let h = img.dims().get(2).copied().unwrap_or(cell).max(1);
        let k = (cell / h).max(1);
        let off = cell.saturating_sub(h * k) / 2;
        c.image(&img, x + off, y + off, k)
    };
    for (bi, task) in tasks.iter().enumerate() {
        let y0 = header + bi * block;
        canvas.text(task, 2, y0 + ch / 2 - TEXT_HEIGHT / 2);
        for (i, id) in s.images.iter().enumerate().take(n) {
            let y = y0 + i * cell_h;
            draw(&mut canvas, read(&run.truth(id)), label_w, y)?;
            draw(
                &mut canvas,
                read(&run.measurement_preview(task, id)),
                label_w + col_w,
                y,
            )?;
            for (j, m) in s.methods.iter().enumerate() {
                let x = label_w + (2 + j) * col_w;
                let Some(r) = rows.iter().find(|r| r.task == *task && r.method == *m) else {
                    continue;
                };
                let Some(sc) = r.scores.iter().find(|sc| sc.index == i) else {
                    continue;
                };
                draw(&mut canvas, read(&run.image(task, m, id, sc.run)), x, y)?;
                canvas.text_centred(&format!("{:.2}/{:.3}", sc.psnr, sc.ssim), x, cw, y + ch + 2);
            }
        }
    }
    canvas.save(out)
}
