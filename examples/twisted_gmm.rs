//! Diagnostic: `twisted-smc` on the GMM benchmark with any settings (JSON), the same problems,
//! seeds and metrics as `daps bench gmm`: `cargo run --release --example twisted_gmm -- D DY
//! PROBLEMS SAMPLES '{"particles": 8, "steps": 24}'`.

use candle_core::Device;
use daps::bench::gmm::{make_problem, score, GmmBenchConfig, Method as Row};
use daps::bench::mean_ci95;
use daps::exact::Posterior;
use daps::metric::{mode_weight_tv, sliced_wasserstein};
use daps::noise::SeededNoise;
use daps::operator::{MatrixOperator, Measurement};
use daps::prior::gmm::{rows_to_tensor, tensor_to_rows};
use daps::sampler::{Method, Problem, Silent};

fn main() -> daps::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let num = |i: usize| a[i].parse::<usize>().expect("a number");
    let (d, dy, problems, samples) = (num(1), num(2), num(3), num(4));
    let mut json: serde_json::Value = serde_json::from_str(&a[5]).expect("JSON settings");
    let device = Device::Cpu;
    let cfg = GmmBenchConfig {
        dims: vec![d],
        dys: vec![dy],
        problems,
        samples,
        ..GmmBenchConfig::default()
    };
    let (id, iy) = (
        [8, 80, 800].iter().position(|&v| v == d).unwrap_or(0),
        [1, 2, 4].iter().position(|&v| v == dy).unwrap_or(0),
    );
    let (mut sw, mut tv, mut osw, mut otv) = (vec![], vec![], vec![], vec![]);
    // FROM=i: start at problem i (diagnosing one problem).
    let from: usize = std::env::var("FROM").map_or(0, |v| v.parse().expect("FROM a number"));
    for i in from..problems {
        let seed = 2u64.pow(id as u32) * 3u64.pow(iy as u32) + i as u64;
        let mut p = make_problem(d, dy, seed, &device)?;
        // TAU=v: a flat likelihood (σ_y = v) to measure the reverse chain's own prior.
        if let Ok(t) = std::env::var("TAU") {
            p.sigma_y = t.parse().expect("TAU a number");
        }
        json["tau"] = serde_json::json!(p.sigma_y);
        let post = Posterior::new(&p.prior, &p.a, p.sigma_y, p.y.clone())?;
        let reference = post.sample(samples, seed ^ 0xAAAA);
        let o = score(
            Row::Oracle,
            &p,
            &post,
            &reference,
            &cfg,
            seed.wrapping_mul(31),
            &device,
        )?;
        let m: Method =
            serde_json::from_value(serde_json::json!({ "TwistedSmc": json })).expect("settings");
        let op = MatrixOperator::new(p.a.clone(), &[d], &device)?;
        let meas = Measurement {
            y: rows_to_tensor(p.y.as_slice(), 1, dy, &device)?,
            sigma_y: p.sigma_y,
        };
        let prob = Problem {
            prior: &p.prior,
            operator: &op,
            measurement: &meas,
        };
        let out = m.run(
            &prob,
            &[samples, d],
            &mut SeededNoise::new(seed.wrapping_mul(31) + 1),
            &mut Silent,
        )?;
        let x = tensor_to_rows(&out)?.0;
        let s = (
            sliced_wasserstein(
                &x,
                &reference,
                d,
                cfg.directions,
                (seed.wrapping_mul(31) + 1) ^ 0x5157,
            ),
            mode_weight_tv(&post.weights, &post.assign(&x)),
        );
        osw.push(o.0);
        otv.push(o.1);
        if std::env::var("VERBOSE").is_ok() {
            println!(
                "  problem {i}: σ_y {:.3} oracle {:.3}/{:.3} method {:.3}/{:.3}",
                p.sigma_y, o.0, o.1, s.0, s.1
            );
        }
        if std::env::var("VERBOSE").as_deref() == Ok("2") {
            let lab = post.assign(&x);
            for (k, w) in post.weights.iter().enumerate() {
                let f = lab.iter().filter(|&&l| l == k).count() as f64 / samples as f64;
                if w.max(f) > 0.01 {
                    println!("    mode {k:2}: posterior {w:.3} sampled {f:.3}");
                }
            }
        }
        sw.push(s.0);
        tv.push(s.1);
    }
    let (o, s, t) = (mean_ci95(&osw), mean_ci95(&sw), mean_ci95(&tv));
    println!(
        "d {d} dy {dy} oracle SW {:.4} TV {:.4}  SW {:.4} ± {:.4} ({:.2}×)  TV {:.4} ± {:.4}  {}",
        o.0,
        mean_ci95(&otv).0,
        s.0,
        s.1,
        s.0 / o.0,
        t.0,
        t.1,
        a[5]
    );
    Ok(())
}
