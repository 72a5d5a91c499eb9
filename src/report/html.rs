//! A self-contained HTML page for a `daps eval` run: pictures inlined as data URIs, plots as
//! inline SVG, no script and nothing fetched at view time.

use super::eval::{MethodRow, Summary};
use crate::eval::RunDir;
use std::fmt::Write as _;

/// Pictures per task in the page's grid.
pub const GRID_IMAGES: usize = 4;

const COLOURS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22",
];

/// The page.
pub fn page(summary: &Summary, run: &RunDir) -> String {
    let s = summary.settings;
    let rows = summary.rows;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>daps eval: {}</title><style>{CSS}</style></head><body>\n\
         <h1>daps eval report</h1>\n<p class=\"meta\">{} image(s) from <code>{}</code>, \
         {} task(s), {} method(s), σ<sub>y</sub> = {}, prior <code>{}</code>, seed {}. \
         daps {}.{}</p>\n",
        esc(&s.data),
        s.images.len(),
        esc(&s.data),
        s.tasks.len(),
        s.methods.len(),
        s.sigma_y,
        esc(&s.prior),
        s.seed,
        summary.daps_version,
        if summary.missing_records > 0 {
            format!(
                " <b>Incomplete: {} record(s) missing</b> (the run is still going or was stopped; \
                 rerun the same command to finish it).",
                summary.missing_records
            )
        } else {
            String::new()
        }
    );
    let methods: Vec<&str> = {
        let mut m: Vec<&str> = Vec::new();
        for r in rows {
            if !m.contains(&r.method.as_str()) {
                m.push(&r.method);
            }
        }
        m
    };
    let colour = |m: &str| COLOURS[methods.iter().position(|x| *x == m).unwrap_or(0) % 10];
    h.push_str("<h2>Summary</h2>\n");
    h.push_str(&summary_table(rows));
    for task in &s.tasks {
        let tr: Vec<&MethodRow> = rows.iter().filter(|r| &r.task == task).collect();
        if tr.is_empty() {
            continue;
        }
        let _ = writeln!(
            h,
            "<h2 id=\"{0}\">{0}</h2>\n<div class=\"plots\">",
            esc(task)
        );
        let bars: Vec<(String, f64, f64, &str)> = tr
            .iter()
            .map(|r| {
                (
                    r.method.clone(),
                    r.psnr.mean,
                    r.psnr.ci95,
                    colour(&r.method),
                )
            })
            .collect();
        h.push_str(&bar_chart(&bars, "mean PSNR (dB) ± 95%"));
        let pts = |x: fn(&MethodRow) -> f64| -> Vec<(String, f64, f64, f64, &str)> {
            tr.iter()
                .map(|r| {
                    (
                        r.method.clone(),
                        x(r),
                        r.psnr.mean,
                        r.psnr.ci95,
                        colour(&r.method),
                    )
                })
                .collect()
        };
        h.push_str(&scatter(
            &pts(|r| r.nfe.max(1) as f64),
            "network evaluations per image",
        ));
        h.push_str(&scatter(&pts(|r| r.seconds_per_image), "seconds per image"));
        h.push_str("</div>\n");
        h.push_str(&grid(task, &tr, run, s));
    }
    let _ = write!(
        h,
        "<h2>Settings</h2>\n<pre>{}</pre>\n</body></html>\n",
        esc(&serde_json::to_string_pretty(s).unwrap_or_default())
    );
    h
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 8px;white-space:nowrap;border-bottom:1px solid #ddd;\
text-align:right;font-variant-numeric:tabular-nums}td.w{white-space:normal}th{background:#f3f3f3}td.l,th.l{text-align:left}\
.meta{color:#555}.plots{display:flex;flex-wrap:wrap;gap:16px}.grid td{text-align:center;\
border:none;padding:2px 4px;font-size:12px}.grid img{width:96px;height:96px;\
image-rendering:pixelated;display:block;margin:auto}svg text{font-size:11px;font-family:sans-serif}\
pre{background:#f6f6f6;padding:8px;font-size:12px}";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn interval(i: &super::eval::Interval, digits: usize) -> String {
    if i.ci95.is_finite() {
        format!("{:.digits$} ± {:.digits$}", i.mean, i.ci95)
    } else {
        format!("{:.digits$}", i.mean)
    }
}

fn summary_table(rows: &[MethodRow]) -> String {
    let lp = rows.iter().any(|r| r.lpips.is_some());
    let cov = rows.iter().any(|r| r.coverage.is_some());
    let mut t = String::from(
        "<table><tr><th class=\"l\">task</th><th class=\"l\">method</th><th>NFE</th><th>images</th>\
         <th>runs</th><th>PSNR (dB)</th><th>SSIM</th>",
    );
    if lp {
        t.push_str("<th>LPIPS</th>");
    }
    if cov {
        t.push_str("<th>coverage (nominal)</th>");
    }
    t.push_str("<th>misfit (RMS)</th><th>s / image</th><th class=\"l\">paired PSNR − baseline's</th></tr>\n");
    for r in rows {
        let _ = write!(
            t,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td>",
            esc(&r.task),
            esc(&r.method),
            r.nfe,
            r.scores.len(),
            r.runs,
            interval(&r.psnr, 2),
            interval(&r.ssim, 3)
        );
        if lp {
            let _ = write!(
                t,
                "<td>{}</td>",
                r.lpips.as_ref().map_or("–".into(), |l| interval(l, 3))
            );
        }
        if cov {
            let c = match (&r.coverage, r.coverage_nominal) {
                (Some(c), Some(n)) => format!("{} ({:.3})", interval(c, 3), n),
                _ => "–".into(),
            };
            let _ = write!(t, "<td>{c}</td>");
        }
        let paired = r.paired.as_ref().map_or("baseline".to_string(), |p| {
            let d = &p.psnr_difference;
            let ci = if d.ci95.is_finite() {
                format!(" ± {:.2}", d.ci95)
            } else {
                String::new()
            };
            format!("{:+.2}{ci} dB (better on {}/{})", d.mean, p.wins, p.images)
        });
        let _ = writeln!(
            t,
            "<td>{:.4}</td><td>{:.2}</td><td class=\"l w\">{}</td></tr>",
            r.misfit.mean, r.seconds_per_image, paired
        );
    }
    t.push_str("</table>\n");
    t
}

/// Horizontal bars with 95% whiskers.
fn bar_chart(bars: &[(String, f64, f64, &str)], title: &str) -> String {
    let (w, lw, row) = (340.0, 110.0, 22.0);
    let hgt = 40.0 + row * bars.len() as f64;
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let hi = bars
        .iter()
        .map(|b| finite(b.1) + finite(b.2))
        .fold(1.0_f64, f64::max)
        * 1.05;
    let x = |v: f64| lw + (w - lw - 50.0) * (v / hi).clamp(0.0, 1.0);
    let mut s = format!(
        "<svg width=\"{w}\" height=\"{hgt}\" role=\"img\"><text x=\"{lw}\" y=\"14\">{}</text>",
        esc(title)
    );
    for (i, (name, m, ci, col)) in bars.iter().enumerate() {
        let y = 24.0 + row * i as f64;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{lw}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"{col}\"/>\
             <text x=\"{}\" y=\"{}\">{:.2}</text>",
            lw - 4.0,
            y + 13.0,
            esc(name),
            x(finite(*m)) - lw,
            row - 6.0,
            x(finite(*m) + finite(*ci)) + 3.0,
            y + 13.0,
            m
        );
        if ci.is_finite() {
            let _ = write!(
                s,
                "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#000\"/>",
                x(m - ci),
                x(m + ci),
                y + 8.0,
                y + 8.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// PSNR (± 95%) against a cost on a log axis, one labelled point per method.
fn scatter(pts: &[(String, f64, f64, f64, &str)], xlabel: &str) -> String {
    let (w, hgt, l, r, t, b) = (330.0, 220.0, 44.0, 16.0, 14.0, 34.0);
    let ok: Vec<&(String, f64, f64, f64, &str)> = pts
        .iter()
        .filter(|p| p.1 > 0.0 && p.1.is_finite() && p.2.is_finite())
        .collect();
    let mut s = format!("<svg width=\"{w}\" height=\"{hgt}\" role=\"img\">");
    if ok.is_empty() {
        s.push_str("</svg>\n");
        return s;
    }
    let lx: Vec<f64> = ok.iter().map(|p| p.1.log10()).collect();
    let (x0, x1) = (
        lx.iter().cloned().fold(f64::INFINITY, f64::min).floor(),
        lx.iter().cloned().fold(f64::NEG_INFINITY, f64::max).ceil(),
    );
    let x1 = if x1 <= x0 { x0 + 1.0 } else { x1 };
    let err = |p: &(String, f64, f64, f64, &str)| if p.3.is_finite() { p.3 } else { 0.0 };
    let y0 = ok
        .iter()
        .map(|p| p.2 - err(p))
        .fold(f64::INFINITY, f64::min)
        .floor()
        - 1.0;
    let y1 = ok
        .iter()
        .map(|p| p.2 + err(p))
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil()
        + 1.0;
    let px = |v: f64| l + (w - l - r) * (v.log10() - x0) / (x1 - x0);
    let py = |v: f64| t + (hgt - t - b) * (y1 - v) / (y1 - y0);
    let _ = write!(
        s,
        "<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
        w - l - r,
        hgt - t - b
    );
    for e in x0 as i32..=x1 as i32 {
        let v = 10f64.powi(e);
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            px(v),
            hgt - b + 14.0,
            if e >= 0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        );
    }
    for k in 0..=4 {
        let v = y0 + (y1 - y0) * k as f64 / 4.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.1}</text>",
            l - 4.0,
            py(v) + 4.0
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{} (log)</text>\
         <text x=\"10\" y=\"{}\" transform=\"rotate(-90 10 {})\" text-anchor=\"middle\">PSNR (dB)</text>",
        (l + w - r) / 2.0,
        hgt - 4.0,
        esc(xlabel),
        (t + hgt - b) / 2.0,
        (t + hgt - b) / 2.0
    );
    for p in ok {
        let (cx, cy) = (px(p.1), py(p.2));
        if p.3.is_finite() {
            let _ = write!(
                s,
                "<line x1=\"{cx}\" x2=\"{cx}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\"/>",
                py(p.2 - p.3),
                py(p.2 + p.3),
                p.4
            );
        }
        let _ = write!(
            s,
            "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"4\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            p.4,
            cx + 6.0,
            cy - 4.0,
            esc(&p.0)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Truth | measurement | each method, for the first [`GRID_IMAGES`] images the methods scored.
fn grid(task: &str, rows: &[&MethodRow], run: &RunDir, s: &crate::eval::EvalSettings) -> String {
    let mut g = String::from("<table class=\"grid\"><tr><th>truth</th><th>measurement</th>");
    for r in rows {
        let _ = write!(g, "<th>{}</th>", esc(&r.method));
    }
    g.push_str("</tr>\n");
    for (i, id) in s.images.iter().enumerate().take(GRID_IMAGES) {
        let _ = write!(
            g,
            "<tr><td>{}{}</td><td>{}</td>",
            img(&run.truth(id)),
            esc(id),
            img(&run.measurement_preview(task, id))
        );
        for r in rows {
            match r.scores.iter().find(|sc| sc.index == i) {
                Some(sc) => {
                    let _ = write!(
                        g,
                        "<td>{}{:.2} / {:.3}</td>",
                        img(&run.image(task, &r.method, id, sc.run)),
                        sc.psnr,
                        sc.ssim
                    );
                }
                None => g.push_str("<td>–</td>"),
            }
        }
        g.push_str("</tr>\n");
    }
    g.push_str("</table>\n");
    g
}

/// An `<img>` with the PNG inlined, or a dash when the file is missing.
fn img(path: &std::path::Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => format!(
            "<img alt=\"\" src=\"data:image/png;base64,{}\">",
            base64(&bytes)
        ),
        Err(_) => "–".into(),
    }
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
