//! Bad inputs to the binary: each is refused before any sampling, with a message that names the
//! problem, and nothing the user gave is overwritten. Outputs go into folders created on demand.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{daps, s, tmp_dir};

/// A 32×32 digit PNG and its sr4 measurement, in `dir`.
fn digit_and_measurement(dir: &Path) -> (PathBuf, PathBuf) {
    let digit = daps::data::mnist_range(9000..9001).unwrap();
    let png = dir.join("digit.png");
    daps::io::write_image(digit.images(), (-1.0, 1.0), &png).unwrap();
    let y = dir.join("y.safetensors");
    let out = daps(&[
        "measure",
        "--task",
        "sr4",
        "--input",
        s(&png),
        "--out",
        s(&y),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    (png, y)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must fail, returning its stderr.
fn refused(args: &[&str], expect: &str) -> String {
    let out = daps(args);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains(expect),
        "daps {args:?}: expected an error containing {expect:?}, got:\n{err}"
    );
    err
}

#[test]
fn outputs_are_checked_before_any_work_and_never_overwrite_inputs() {
    let dir = tmp_dir("bad-input", "outputs");
    let (png, y) = digit_and_measurement(&dir);
    let png_bytes = std::fs::read(&png).unwrap();
    // `measure --out x.safetensors` would write its preview over the input x.png.
    let same_stem = dir.join("digit.safetensors");
    refused(
        &[
            "measure",
            "--task",
            "sr4",
            "--input",
            s(&png),
            "--out",
            s(&same_stem),
        ],
        "is the same file as --input",
    );
    assert_eq!(
        std::fs::read(&png).unwrap(),
        png_bytes,
        "the input is intact"
    );
    assert!(!same_stem.exists());
    let quick = ["--preset", "daps-50", "--set", "annealing_steps=2"];
    let solve = |extra: &[&str], expect: &str| {
        let mut args = vec!["solve", "--measurement", s(&y)];
        args.extend_from_slice(&quick);
        args.extend_from_slice(extra);
        refused(&args, expect)
    };
    solve(
        &["--out", s(&dir.join("x.txt"))],
        "expected a .png or .jpg or .jpeg file",
    );
    solve(
        &["--out", s(&png), "--reference", s(&png)],
        "is the same file as --reference",
    );
    // The prior's file, found by parsing the spec as the loader does (its config after a colon).
    solve(
        &[
            "--out",
            s(&png),
            "--prior",
            &format!("adm:{}:ffhq256", s(&png)),
        ],
        "is the same file as --prior",
    );
    // With several samples, OUT_1.png would be the reference.
    let one = dir.join("x_1.png");
    std::fs::copy(&png, &one).unwrap();
    solve(
        &[
            "--out",
            s(&dir.join("x.png")),
            "--samples",
            "2",
            "--reference",
            s(&one),
        ],
        "over --reference",
    );
    solve(
        &["--out", s(&dir.join("x.png")), "--save-samples", s(&y)],
        "--save-samples",
    );
    solve(
        &[
            "--out",
            s(&dir.join("x.png")),
            "--save-samples",
            s(&dir.join("s.npy")),
        ],
        "expected a .safetensors file",
    );
    // A missing folder is created, as `sample` does.
    let nested = dir.join("new/deeper/x.png");
    let out = daps(&[
        "solve",
        "--measurement",
        s(&y),
        "--out",
        s(&nested),
        quick[0],
        quick[1],
        quick[2],
        quick[3],
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(nested.is_file());
    // `report --json` onto one of its inputs.
    let rec = dir.join("r.json");
    std::fs::write(&rec, "[]").unwrap();
    refused(
        &["report", s(&rec), "--json", s(&rec)],
        "is the same file as an input",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_values_are_named() {
    let dir = tmp_dir("bad-input", "values");
    let (png, y) = digit_and_measurement(&dir);
    let x = dir.join("x.png");
    let solve = |set: &str, expect: &str| {
        refused(
            &[
                "solve",
                "--measurement",
                s(&y),
                "--out",
                s(&x),
                "--preset",
                "daps-50",
                "--set",
                set,
            ],
            expect,
        );
    };
    solve("lr_min_ratio=-5", "lr_min_ratio must be in [0, 1], got -5");
    solve("rho=0", "rho must be finite and > 0, got 0");
    solve("rho=-1", "rho must be finite and > 0, got -1");
    solve("lr=inf", "lr must be finite and > 0, got inf");
    solve(
        "sigma_max=inf",
        "sigma_max must be finite and > sigma_min, got inf",
    );
    solve("mcmc_steps=0", "mcmc_steps must be in 1..=");
    // A negative value after a flag is a value (then refused), not taken for another flag.
    refused(
        &[
            "solve",
            "--measurement",
            s(&y),
            "--out",
            s(&x),
            "--preset",
            "daps-1k",
            "--lr",
            "-1",
        ],
        "lr must be finite and > 0, got -1",
    );
    refused(
        &["demo", "--sigma-y", "-1", "--out", s(&dir.join("d.png"))],
        "--sigma-y must be finite and in [0, 10]",
    );
    refused(
        &[
            "measure",
            "--task",
            "hdr",
            "--input",
            s(&png),
            "--out",
            s(&dir.join("h.safetensors")),
            "--sigma-y",
            "1e30",
        ],
        "--sigma-y must be finite and in [0, 10]",
    );
    refused(
        &[
            "demo",
            "--dps-steps",
            "0",
            "--tasks",
            "sr4",
            "--out",
            s(&dir.join("d.png")),
        ],
        "steps must be in 1..=",
    );
    refused(&["bench", "speed", "--reps", "0"], "--reps must be ≥ 1");
    refused(
        &["bench", "speed", "--digits-levels", "0"],
        "--digits-levels must be ≥ 1",
    );
    refused(
        &["bench", "speed", "--digits-batch", "0"],
        "--digits-batch must be 1..=1000",
    );
    // A batch too large to allocate is an error, not an abort.
    refused(
        &[
            "solve",
            "--measurement",
            s(&y),
            "--out",
            s(&x),
            "--samples",
            "100000000",
        ],
        "--samples",
    );
    // An I/O error says its cause once.
    let err = refused(
        &[
            "solve",
            "--measurement",
            s(&dir.join("missing.safetensors")),
            "--out",
            s(&x),
        ],
        "missing.safetensors",
    );
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
