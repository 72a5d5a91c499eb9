//! `daps report`: merging demo JSON files, intervals and paired differences.

use daps::bench::mean_ci95;
use daps::report::DemoRecord;
use daps::report::{markdown, merge, paired_psnr, read_records, table};
use std::path::PathBuf;

fn rec(method: &str, digits: &[usize], psnr: &[f64]) -> DemoRecord {
    DemoRecord {
        task: "hdr".into(),
        method: method.into(),
        nfe: 50,
        runs: 1,
        digits: digits.to_vec(),
        psnr: psnr.to_vec(),
        ssim: psnr.iter().map(|p| p / 100.0).collect(),
        seconds: 1.5,
    }
}

#[test]
fn mean_and_interval_are_the_textbook_ones() {
    // mean 3, sample variance 2.5, n 5: 1.96·√(2.5/5)
    let (m, c) = mean_ci95(&[1.0, 2.0, 3.0, 4.0, 5.0]);
    assert!((m - 3.0).abs() < 1e-12);
    assert!((c - 1.96 * 0.5f64.sqrt()).abs() < 1e-12);
    // one value: its mean, and no interval
    let (m, c) = mean_ci95(&[7.0]);
    assert_eq!(m, 7.0);
    assert!(c.is_nan());
}

#[test]
fn files_for_separate_digits_merge_into_one_record_per_task_and_method() {
    let a = vec![
        rec("DAPS-50", &[0, 1], &[20.0, 22.0]),
        rec("DPS-50", &[0, 1], &[18.0, 23.0]),
    ];
    let b = vec![rec("DAPS-50", &[2], &[30.0]), rec("DPS-50", &[2], &[25.0])];
    let m = merge(vec![(PathBuf::from("a"), a), (PathBuf::from("b"), b)]).unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].digits, vec![0, 1, 2]);
    assert_eq!(m[0].psnr, vec![20.0, 22.0, 30.0]);
    assert_eq!(m[1].ssim.len(), 3);
    assert!((m[0].seconds - 3.0).abs() < 1e-12);
    // paired on common digits, in the first record's order
    assert_eq!(paired_psnr(&m[0], &m[1]), vec![2.0, -1.0, 5.0]);
    let t = table(&m);
    assert!(t.contains("paired PSNR DAPS-50 − DPS-50: +2.00"), "{t}");
    assert!(t.contains("(DAPS-50 better on 2)"), "{t}");
}

#[test]
fn a_digit_scored_twice_or_other_settings_are_refused() {
    let a = vec![rec("DAPS-50", &[0, 1], &[20.0, 22.0])];
    let b = vec![rec("DAPS-50", &[1, 2], &[21.0, 30.0])];
    let e = merge(vec![
        (PathBuf::from("a"), a.clone()),
        (PathBuf::from("b.json"), b),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("digit 1"), "{e}");
    assert!(e.to_string().contains("b.json"), "{e}");
    let mut c = rec("DAPS-50", &[5], &[20.0]);
    c.runs = 4;
    let e = merge(vec![(PathBuf::from("a"), a), (PathBuf::from("c"), vec![c])]).unwrap_err();
    assert!(e.to_string().contains("runs 4"), "{e}");
}

#[test]
fn a_file_that_is_not_demo_json_is_named() {
    let dir = std::env::temp_dir().join(format!("daps-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("x.json");
    std::fs::write(&p, "{\"task\": 1}").unwrap();
    let e = read_records(&p).unwrap_err();
    assert!(format!("{e:#}").contains("x.json"), "{e:#}");
    let mut r = rec("DAPS-50", &[0, 1], &[20.0, 22.0]);
    r.psnr.pop();
    std::fs::write(&p, serde_json::to_string(&vec![r]).unwrap()).unwrap();
    let e = read_records(&p).unwrap_err();
    assert!(e.to_string().contains("2 digits but 1 PSNR"), "{e}");
    assert!(read_records(&dir.join("missing.json")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn markdown_table_marks_the_best_the_short_rows_and_the_missing_tasks() {
    let mut sr4 = rec("dps-1000", &[0, 1], &[20.0, 22.0]);
    sr4.task = "sr4".into();
    sr4.nfe = 1000;
    let records = vec![
        rec("dps-1000", &[0, 1], &[28.0, 30.0]), // hdr 29
        rec("red-diff", &[0], &[31.0]),          // hdr 31 on one image
        sr4,                                     // sr4 21, red-diff has none
    ];
    let md = markdown(&records);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines[0], "| method | NFE | hdr | sr4 | mean (tasks) |");
    assert_eq!(lines[1], "|---|---|---|---|---|");
    assert_eq!(
        lines[2],
        "| `dps-1000` | 50/1000 | 29.00 | **21.00** | 25.00 (2) |"
    );
    assert_eq!(
        lines[3],
        "| `red-diff` | 50 | **31.00** (n = 1) | – | 31.00 (1) |"
    );
    assert_eq!(lines.len(), 4);
}
