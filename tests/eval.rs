//! `daps eval` + `daps report`: a run gives the same merged results whole, as two shards in
//! separate processes writing one folder, and killed after its first records then resumed
//! (with one finished record corrupted in between).

mod common;

use common::{s, tmp_dir};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn daps() -> Command {
    Command::new(env!("CARGO_BIN_EXE_daps"))
}

/// The evaluation: 3 digits × 2 tasks × 2 methods, one batch (= job) per task and method.
fn eval_args(out: &Path) -> Vec<String> {
    [
        "eval",
        "--data",
        "digits",
        "--limit",
        "3",
        "--tasks",
        "sr4,inpaint-box",
        "--methods",
        "daps-50,dps-50",
        "--batch",
        "3",
        "--out",
        s(out),
    ]
    .map(String::from)
    .to_vec()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `daps report RUN --json` without the fields that time things.
fn merged(run: &Path) -> Value {
    let json = run.with_extension("json");
    run_ok(daps().arg("report").arg(run).arg("--json").arg(&json));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    strip_times(&mut v);
    v
}

fn strip_times(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !(k.contains("time") || k.contains("seconds")));
            m.values_mut().for_each(strip_times);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_times),
        _ => {}
    }
}

fn records(run: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(run.join("records")) else {
        return out;
    };
    for t in tasks.flatten() {
        for m in std::fs::read_dir(t.path()).unwrap().flatten() {
            for r in std::fs::read_dir(m.path()).unwrap().flatten() {
                if r.path().extension().is_some_and(|e| e == "json") {
                    out.push(r.path());
                }
            }
        }
    }
    out
}

#[test]
fn whole_sharded_side_by_side_and_resumed_runs_agree() {
    let dir = tmp_dir("eval", "agree");
    // (a) whole.
    let whole = dir.join("whole");
    let text = run_ok(daps().args(eval_args(&whole)));
    assert!(text.contains("done: 4 job(s)"), "{text}");
    assert_eq!(records(&whole).len(), 12, "3 digits × 2 tasks × 2 methods");
    let a = merged(&whole);
    assert_eq!(a["missing_records"], 0);
    assert_eq!(a["rows"].as_array().unwrap().len(), 4);

    // (b) two shards at once, separate processes, one folder.
    let sharded = dir.join("sharded");
    let mut kids: Vec<_> = ["1/2", "2/2"]
        .iter()
        .map(|k| {
            daps()
                .args(eval_args(&sharded))
                .args(["--shard", k])
                .output()
        })
        .collect();
    for k in kids.drain(..) {
        let o = k.unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        merged(&sharded),
        a,
        "two shards give the whole run's results"
    );

    // (b') the batches side by side in one process (`--jobs`, 3 threads).
    let side = dir.join("side-by-side");
    run_ok(
        daps()
            .env("RAYON_NUM_THREADS", "3")
            .args(eval_args(&side))
            .args(["--jobs", "3"]),
    );
    assert_eq!(merged(&side), a, "--jobs 3 gives the whole run's results");

    // (c) killed after its first records, one finished record corrupted, then resumed.
    let resumed = dir.join("resumed");
    let mut child = daps()
        .args(eval_args(&resumed))
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while records(&resumed).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "no record appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first = records(&resumed);
    assert!(
        !first.is_empty() && first.len() < 12,
        "{} records before the kill",
        first.len()
    );
    std::fs::write(&first[0], b"{\"image\": \"digit-90").unwrap();
    let partial = merged(&resumed);
    assert!(partial["missing_records"].as_u64().unwrap() >= 1);
    let text = run_ok(daps().args(eval_args(&resumed)));
    assert!(text.contains("job(s)"), "{text}");
    assert_eq!(
        merged(&resumed),
        a,
        "a resumed run gives the whole run's results"
    );

    // A rerun of a finished run does nothing; other settings are refused.
    let text = run_ok(daps().args(eval_args(&whole)));
    assert!(text.contains("done: 0 job(s)"), "{text}");
    let mut other = eval_args(&whole);
    other[4] = "2".into();
    let out = daps().args(&other).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("holds another evaluation") && err.contains("images"),
        "{err}"
    );

    // The HTML page is self-contained: every picture inlined, nothing fetched.
    let html = dir.join("report.html");
    run_ok(
        daps()
            .arg("report")
            .arg(&whole)
            .arg("--html")
            .arg(&html)
            .args(["--baseline", "dps-50"]),
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("src=\"/"));
    // Per task: 3 truths + 3 measurements + 3 × 2 methods.
    assert_eq!(page.matches("data:image/png;base64,").count(), 2 * 12);
    assert!(page.contains("<svg") && page.contains("better on"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_eval_input_is_refused_before_work() {
    let dir = tmp_dir("eval", "bad");
    let out = dir.join("run");
    for (change, want) in [
        (("--tasks", "sr4,nonsense"), "nonsense"),
        (
            ("--methods", "daps-50,ddrm-7x"),
            "unknown method 'ddrm-7x' for task sr4",
        ),
        (("--limit", "2000"), "exceeds the 1000 held-out digits"),
        (
            ("--batch", "0"),
            "--batch, --samples, --limit and --jobs must be ≥ 1",
        ),
        (("--methods", "daps-50@lr"), "'lr' is not KEY=VALUE"),
        (("--methods", "daps-50@no_such_key=1"), "no_such_key"),
    ] {
        let mut args = eval_args(&out);
        let i = args.iter().position(|a| a == change.0).unwrap();
        args[i + 1] = change.1.into();
        let o = daps().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(want),
            "{change:?}: {err}"
        );
        assert!(records(&out).is_empty());
    }
    let o = daps()
        .args(eval_args(&out))
        .args(["--shard", "3/2"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("--shard must be k/n"));
    let o = daps()
        .args(eval_args(&out))
        .args(["--jobs", "0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("--jobs must be ≥ 1"));
    let o = daps()
        .args(eval_args(&out))
        .args(["--runs", "1,hdr=4"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("not among --tasks"));
    let mut args = eval_args(&out);
    let i = args.iter().position(|a| a == "--tasks").unwrap();
    args[i + 1] = "sr4".into();
    let i = args.iter().position(|a| a == "--methods").unwrap();
    args[i + 1] = "daps-50,mcgdiff".into();
    let o = daps().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("mcgdiff cannot solve any of the tasks (sr4)"),
        "{err}"
    );
    assert!(records(&out).is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

/// A listed method runs on the tasks it supports; the others are skipped and recorded in the
/// run's settings (`excluded`), so the report knows the gap is not missing work.
#[test]
fn methods_run_on_the_tasks_they_support() {
    let dir = tmp_dir("eval", "supports");
    let out = dir.join("run");
    let mut args = eval_args(&out);
    for (k, v) in [
        ("--limit", "1"),
        ("--batch", "1"),
        ("--methods", "ddrm@steps=2,mcgdiff@steps=2@particles=2"),
    ] {
        let i = args.iter().position(|a| a == k).unwrap();
        args[i + 1] = v.into();
    }
    run_ok(daps().args(&args));
    let names: Vec<String> = records(&out)
        .iter()
        .map(|p| {
            p.strip_prefix(out.join("records"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("sr4/mcgdiff")),
        "{names:?}"
    );
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(
        settings["excluded"],
        serde_json::json!([["sr4", "mcgdiff@steps=2@particles=2"]])
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `--samples K` runs K chains per image: records carry the coverage of the truth by the K
/// samples' per-pixel interval and its nominal value ((K+1−2)/(K+1) = 3/5 for K = 4); a method
/// spec with `@KEY=VALUE` overrides is its own row with the override in its label.
#[test]
fn samples_give_coverage_and_overrides_are_rows() {
    let dir = tmp_dir("eval", "samples");
    let out = dir.join("run");
    let mut args = eval_args(&out);
    let i = args.iter().position(|a| a == "--methods").unwrap();
    args[i + 1] = "daps-50,daps-50@tau_rule=measurement@lr_rule=stable@lr=0.5".into();
    let i = args.iter().position(|a| a == "--tasks").unwrap();
    args[i + 1] = "inpaint-box".into();
    let i = args.iter().position(|a| a == "--limit").unwrap();
    args[i + 1] = "2".into();
    run_ok(daps().args(&args).args(["--samples", "4"]));
    let recs = records(&out);
    assert_eq!(recs.len(), 4);
    let mut labels = std::collections::BTreeSet::new();
    for r in &recs {
        let v: Value = serde_json::from_slice(&std::fs::read(r).unwrap()).unwrap();
        let c = v["coverage"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&c), "{c}");
        assert_eq!(v["coverage_nominal"].as_f64().unwrap(), 0.6);
        labels.insert(v["label"].as_str().unwrap().to_string());
    }
    assert_eq!(
        labels.into_iter().collect::<Vec<_>>(),
        [
            "DAPS-50",
            "DAPS-50 [tau_rule=measurement, lr_rule=stable, lr=0.5]"
        ]
    );
    let text = run_ok(daps().arg("report").arg(&out));
    assert!(text.contains("nominal 60.0%"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs of the same images and seed (so the same measurements) with different methods report
/// as one table, paired across runs, and so do their `--json` summaries; runs of other
/// measurements, or a method given twice, are refused.
#[test]
fn runs_of_the_same_measurements_report_together() {
    let dir = tmp_dir("eval", "together");
    let run = |name: &str, tasks: &str, methods: &str, seed: &str| {
        let out = dir.join(name);
        let mut args = eval_args(&out);
        for (k, v) in [
            ("--limit", "2"),
            ("--batch", "2"),
            ("--tasks", tasks),
            ("--methods", methods),
        ] {
            let i = args.iter().position(|a| a == k).unwrap();
            args[i + 1] = v.into();
        }
        args.extend(["--seed".into(), seed.into()]);
        run_ok(daps().args(&args));
        out
    };
    let a = run("a", "sr4", "daps-50", "0");
    let b = run("b", "sr4,inpaint-box", "ddrm@steps=2", "0");
    let json = dir.join("both.json");
    let text = run_ok(
        daps()
            .arg("report")
            .args([&a, &b])
            .args(["--baseline", "daps-50", "--json"])
            .arg(&json),
    );
    assert!(
        text.contains("paired PSNR daps-50 − ddrm@steps=2"),
        "{text}"
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let row = |task: &str, m: &str| {
        rows.iter()
            .find(|r| r["task"] == task && r["method"] == m)
            .unwrap_or_else(|| panic!("no row {task} {m}: {v}"))
            .clone()
    };
    assert_eq!(rows.len(), 3, "sr4 × 2 methods, inpaint-box × ddrm");
    assert_eq!(row("sr4", "ddrm@steps=2")["paired"]["images"], 2);
    assert!(row("inpaint-box", "ddrm@steps=2")["paired"].is_null());
    // The rows are each run's own.
    let alone = merged(&b);
    let own = alone["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "sr4")
        .unwrap()
        .clone();
    assert_eq!(row("sr4", "ddrm@steps=2")["psnr"], own["psnr"]);
    // Other measurements (another seed), or one method twice: refused.
    let c = run("c", "sr4", "ddrm@steps=2", "1");
    let e = daps().arg("report").args([&a, &c]).output().unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("differ in seed"));
    let e = daps().arg("report").args([&b, &b]).output().unwrap();
    assert!(String::from_utf8_lossy(&e.stderr).contains("give each method once"));

    // The runs' own summaries merge into the same rows as the folders (runs made apart, their
    // folders gone); `--as` reports a spec under another name; other measurements are refused.
    let summary = |run: &Path| {
        let json = run.with_extension("json");
        run_ok(daps().arg("report").arg(run).arg("--json").arg(&json));
        json
    };
    let (sa, sb, sc) = (summary(&a), summary(&b), summary(&c));
    let merged_json = dir.join("merged.json");
    let text = run_ok(
        daps()
            .arg("report")
            .args([&sa, &sb])
            .args(["--baseline", "daps-50", "--json"])
            .arg(&merged_json),
    );
    assert!(
        text.contains("paired PSNR daps-50 − ddrm@steps=2"),
        "{text}"
    );
    let mut m: Value = serde_json::from_slice(&std::fs::read(&merged_json).unwrap()).unwrap();
    let mut f = v.clone();
    strip_times(&mut m);
    strip_times(&mut f);
    assert_eq!(m["rows"], f["rows"], "summaries merge as their folders do");
    let text = run_ok(
        daps()
            .arg("report")
            .args([&sa, &sb])
            .args(["--as", "ddrm2=ddrm@steps=2"]),
    );
    assert!(text.contains("paired PSNR daps-50 − ddrm2:"), "{text}");
    assert!(!text.contains("ddrm@steps=2"), "{text}");
    let e = daps().arg("report").args([&sa, &sc]).output().unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("differ in seed"));
    std::fs::remove_dir_all(&dir).ok();
}
