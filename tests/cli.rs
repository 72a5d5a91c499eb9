//! The `daps` binary end to end.

use std::path::Path;
use std::process::{Command, Output};

fn daps() -> Command {
    Command::new(env!("CARGO_BIN_EXE_daps"))
}

/// Fails the test with the command's stderr unless it succeeded.
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bench speed --quick --json` on the hidden tiny ADM (seconds): the documented keys exist
/// and are positive; no timing is asserted.
#[test]
fn bench_speed_quick_writes_its_keys() {
    let dir = std::env::temp_dir().join(format!("daps-cli-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("speed.json");
    let data = dir.join("digits.safetensors");
    let out = daps()
        .args([
            "bench",
            "speed",
            "--quick",
            "--tiny",
            "--digits-levels",
            "1",
            "--digits-batch",
            "3",
            "--json",
        ])
        .arg(&json)
        .arg("--digits-data")
        .arg(&data)
        .output()
        .unwrap();
    assert_ok(&out);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in [
        "gemm_gflops",
        "ffhq256_gflop_forward",
        "ffhq256_forward_ms_b1",
        "ffhq256_forward_gflops_b1",
        "ffhq256_forward_backward_ms_b1",
        "digits_forward_ms_b16",
        "daps_level_total_ms",
        "daps_level_network_ms",
        "daps_level_operator_ms",
        "cores",
        "threads",
        "digits_daps1k_phase_retrieval_level_ms",
        "digits_daps1k_phase_retrieval_network_ms",
        "digits_daps1k_gaussian_blur_level_ms",
        "digits_daps1k_gaussian_blur_operator_ms",
        "digits_daps1k_gaussian_blur_solve_estimate_s",
        "digits_daps1k_gaussian_blur_network_gflops",
        "digits_gflop_forward",
        "digits_ops_outnorm_fused_ms",
        "digits_ops_outnorm_separate_ms",
        "digits_ops_residual_fused_ms",
        "digits_ops_residual_separate_ms",
        "digits_ops_out_conv_direct_ms",
        "digits_ops_out_conv_im2col_ms",
    ] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {}", v[k]);
    }
    assert_eq!(v["digits_daps1k_levels"], 1);
    assert_eq!(v["digits_daps1k_digits"], 3);
    // GPU figures only with --device cuda
    assert!(v
        .as_object()
        .unwrap()
        .keys()
        .all(|k| !k.starts_with("gpu_")));
    // The files for scripts/speed-digits-pytorch.py: digits, measurements, D(x, 1), presets.
    let t = candle_core::safetensors::load(&data, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["x"].dims(), [3, 1, 32, 32]);
    assert_eq!(t["y_phase-retrieval"].dims(), [3, 1, 48, 48]);
    assert_eq!(t["d_sigma1"].dims(), [3, 1, 32, 32]);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(meta["presets"]["gaussian-blur"]["mcmc_steps"], 100);
    let oversample = meta["presets"]["phase-retrieval"]["oversample"]
        .as_str()
        .unwrap();
    assert_eq!(oversample.parse::<f64>().unwrap(), 2.0);
    for k in ["daps_level_x0_step_ms", "daps_level_other_ms"] {
        assert!(v[k].as_f64().unwrap() >= 0.0, "{k}");
    }
    assert!(
        v["ffhq256_forward_ms_b8"].is_null(),
        "--quick is batch 1 only"
    );
    assert!(v["architecture"].as_str().unwrap().contains("NOT FFHQ-256"));
    assert!(!v["cpu_model"].as_str().unwrap().is_empty());
    assert!(!v["version"].as_str().unwrap().is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_gmm_quick_writes_the_documented_records() {
    let dir = std::env::temp_dir().join(format!("daps-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("gmm.json");
    let out = daps()
        .args(["bench", "gmm", "--quick", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("daps-exact") && text.contains("oracle"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let recs = v.as_array().unwrap();
    assert_eq!(recs.len(), 2 * 5, "2 cells × 5 methods");
    let keys = [
        "d",
        "d_y",
        "method",
        "sw_mean",
        "sw_ci95",
        "tv_mean",
        "tv_ci95",
        "nfe",
        "seconds_per_problem",
        "problems",
        "samples",
    ];
    for r in recs {
        let o = r.as_object().unwrap();
        let mut got: Vec<&str> = o.keys().map(|k| k.as_str()).collect();
        got.sort();
        let mut want = keys.to_vec();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(o["d"], 8);
        assert_eq!(o["problems"], 3);
    }
    // Exact-step DAPS is far closer to the posterior than the prior is, in both metrics.
    for dy in [1, 2] {
        let get = |m: &str, k: &str| {
            recs.iter()
                .find(|r| r["method"] == m && r["d_y"] == dy)
                .unwrap()[k]
                .as_f64()
                .unwrap()
        };
        assert!(get("daps-exact", "sw_mean") < 0.5 * get("prior", "sw_mean"));
        assert!(get("daps-exact", "tv_mean") < 0.5 * get("prior", "tv_mean"));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_gmm_rows_resume_and_shard_to_the_same_records() {
    let dir = std::env::temp_dir().join(format!("daps-cli-shard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |json: &Path, extra: &[&str]| -> String {
        let out = daps()
            .args(["bench", "gmm", "--quick", "--methods", "oracle,prior,daps"])
            .args(["--steps", "10", "--mcmc-steps", "5", "--json"])
            .arg(json)
            .args(extra)
            .output()
            .unwrap();
        assert_ok(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let read = |json: &Path| -> Vec<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
    };
    let key = |r: &serde_json::Value| {
        (
            r["d_y"].as_u64().unwrap(),
            r["method"].as_str().unwrap().to_string(),
            r["sw_mean"].as_f64().unwrap().to_bits(),
            r["tv_mean"].as_f64().unwrap().to_bits(),
        )
    };
    let sorted = |v: Vec<serde_json::Value>| {
        let mut k: Vec<_> = v.iter().map(key).collect();
        k.sort();
        k
    };
    let whole = dir.join("whole.json");
    run(&whole, &[]);
    let all = read(&whole);
    assert_eq!(all.len(), 2 * 3, "2 cells × 3 methods");
    // Two shards give the same rows, bit for bit.
    let (s1, s2) = (dir.join("s1.json"), dir.join("s2.json"));
    run(&s1, &["--shard", "1/2"]);
    run(&s2, &["--shard", "2/2"]);
    let mut both = read(&s1);
    assert_eq!(both.len(), 3);
    both.extend(read(&s2));
    assert_eq!(sorted(both), sorted(all.clone()));
    // An interrupted run (its last row missing) resumes to the same table.
    let cut = dir.join("cut.json");
    std::fs::write(&cut, serde_json::to_string(&all[..5]).unwrap()).unwrap();
    let text = run(&cut, &["--resume"]);
    assert!(text.contains("(5 row(s) kept"), "{text}");
    assert_eq!(sorted(read(&cut)), sorted(all));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = daps()
        .args(["bench", "gmm", "--quick", "--methods", "magic"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown method 'magic'"));
    let out = daps()
        .args(["bench", "gmm", "--quick", "--d", "7"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("even dimension"));
}

#[test]
fn methods_lists_every_sampler_with_its_nfe() {
    let out = daps().arg("methods").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for m in daps::sampler::METHODS {
        let nfe = (m.default)().nfe();
        assert!(
            text.lines()
                .any(|l| l.starts_with(m.name) && l.contains(&format!(" {nfe} "))),
            "{} with NFE {nfe} in:\n{text}",
            m.name
        );
    }
    assert!(
        text.contains("daps-50 50") && text.contains("dps-1000 1000"),
        "{text}"
    );
}

#[test]
fn solve_runs_dps_by_name() {
    let dir = std::env::temp_dir().join(format!("daps-cli-dps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let digit = daps::data::mnist_range(9000..9001).unwrap();
    let png = dir.join("digit.png");
    daps::io::write_image(digit.images(), (-1.0, 1.0), &png).unwrap();
    let y = dir.join("y.safetensors");
    let out = daps()
        .args(["measure", "--task", "sr4", "--input"])
        .arg(&png)
        .arg("--out")
        .arg(&y)
        .output()
        .unwrap();
    assert_ok(&out);
    let x = dir.join("x.png");
    let out = daps()
        .args([
            "solve",
            "--method",
            "dps",
            "--set",
            "steps=4",
            "--measurement",
        ])
        .arg(&y)
        .arg("--out")
        .arg(&x)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("dps 4 steps, ζ 1") && x.is_file(), "{err}");
    // Samplers without presets run with their registered defaults plus the flags.
    for (args, shown) in [
        (
            vec!["daps-smc", "--particles", "2", "--set", "annealing_steps=2"],
            "2 particles × 2 × 5 NFE",
        ),
        (
            vec![
                "daps-tweedie",
                "--set",
                "annealing_steps=1",
                "--set",
                "lanczos_steps=2",
                "--set",
                "cg_steps=2",
            ],
            "1 levels × (1 + 2 Lanczos + ≤2 CG + 1) NFE",
        ),
    ] {
        std::fs::remove_file(&x).ok();
        let out = daps()
            .args(["solve", "--method"])
            .args(&args)
            .arg("--measurement")
            .arg(&y)
            .arg("--out")
            .arg(&x)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains(shown) && x.is_file(), "{err}");
    }
    // A DAPS flag with a DPS preset, and a method that contradicts the preset, are refused.
    for (args, msg) in [
        (
            vec!["--method", "dps", "--lr", "1e-4"],
            "--lr is a DAPS setting",
        ),
        (
            vec!["--method", "dps", "--preset", "daps-50"],
            "does not match preset daps-50",
        ),
        (
            vec!["--method", "dps", "--particles", "4"],
            "unknown sampler setting 'particles' for dps",
        ),
    ] {
        let out = daps()
            .arg("solve")
            .args(&args)
            .arg("--measurement")
            .arg(&y)
            .arg("--out")
            .arg(&x)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(msg), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
