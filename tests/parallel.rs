//! A CPU batch runs in pieces of `CHAINS_PER_PIECE` chains, whatever the thread count, so the
//! same seed gives bit-identical output with 1, 2 or 3 threads: the network's D(x), DPS's chains
//! (gradient through the network) and `daps solve` through the binary (DAPS and DPS, sr4 and
//! phase retrieval). Against a batch in one piece, the pieces agree up to float rounding only (the
//! matmuls' blocking depends on the rows): ~1e-6 relative through the network. DPS's one step
//! here is at σ ≈ 157, where D = x − σ·ε̂ multiplies the network's rounding by σ (bound 1e-3).
//! A wrong split (rows of y or chains out of place) differs by O(1).

use candle_core::{Device, Tensor};
use daps::noise::SeededNoise;
use daps::operator::Measurement;
use daps::prior::{
    batch_splits, default, par_batches, too_small_to_share, Denoiser, CHAINS_PER_PIECE, MAX_PIECES,
};
use daps::sampler::{dps, DpsConfig, Problem, Silent};
use daps::task::{Task, TaskFiles, TaskSpec};

mod common;
use common::{s, tmp_dir, vec32};
use std::process::Command;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(scale > 0.0);
    err / scale
}

#[test]
fn splits_are_fixed_pieces_whatever_the_threads() {
    assert_eq!(CHAINS_PER_PIECE, 8);
    for threads in [1, 3] {
        let p = pool(threads);
        assert_eq!(
            p.install(|| batch_splits(20)),
            vec![(0, 8), (8, 8), (16, 4)]
        );
        assert_eq!(p.install(|| batch_splits(8)), vec![(0, 8)]);
        assert_eq!(p.install(|| batch_splits(3)), vec![(0, 3)]);
        assert_eq!(p.install(|| batch_splits(0)), vec![]);
        // A large batch is cut into MAX_PIECES pieces of ⌈b / 16⌉.
        let big = p.install(|| batch_splits(4001));
        assert_eq!(big.len(), MAX_PIECES);
        assert_eq!((big[0], big[15]), ((0, 251), (3765, 236)));
        let got = p.install(|| par_batches(17, |s, n| Ok((s, n)))).unwrap();
        assert_eq!(got, vec![(0, 8), (8, 8), (16, 1)]);
        // An error in any piece is the result.
        let err = p.install(|| {
            par_batches(20, |s, n| {
                if s == 8 {
                    Err(daps::Error::msg("piece 2 failed"))
                } else {
                    Ok(n)
                }
            })
        });
        assert!(err.unwrap_err().to_string().contains("piece 2 failed"));
    }
    // One piece of at most 8 digits is run on one thread by the binary; two pieces, or a
    // larger image, are shared out.
    assert!(too_small_to_share(&[1, 1, 32, 32]) && too_small_to_share(&[8, 1, 32, 32]));
    assert!(!too_small_to_share(&[9, 1, 32, 32]) && !too_small_to_share(&[1, 3, 64, 64]));
}

#[test]
fn a_split_batch_denoises_the_same_bits_with_any_threads() {
    let dev = Device::Cpu;
    let prior = default::digits(&dev).unwrap();
    // 12 chains: pieces of 8 and 4 (one piece per thread would be 12 or 4, 4, 4: different bits).
    let x = Tensor::randn(0f32, 1.0, (12, 1, 32, 32), &dev).unwrap();
    for sigma in [0.2, 3.0] {
        let one = pool(1).install(|| prior.denoise(&x, sigma).unwrap());
        let three = pool(3).install(|| prior.denoise(&x, sigma).unwrap());
        assert_eq!(vec32(&one), vec32(&three), "σ {sigma}: 1 vs 3 threads");
        // Each piece of 8 chains alone gives the same bits.
        let pieces: Vec<Tensor> = [(0, 8), (8, 4)]
            .iter()
            .map(|&(s, n)| prior.denoise(&x.narrow(0, s, n).unwrap(), sigma).unwrap())
            .collect();
        let pieces = Tensor::cat(&pieces, 0).unwrap();
        assert_eq!(vec32(&one), vec32(&pieces), "σ {sigma}: pieces");
        // The batch in one piece (a tracked input is not split) agrees up to rounding.
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let whole = prior.denoise(var.as_tensor(), sigma).unwrap();
        let d = max_rel_diff(&vec32(&one), &vec32(&whole));
        assert!(d <= 1e-5, "σ {sigma}: relative difference {d}");
    }
}

/// A prior evaluated in one piece per batch: the reference for the split ones.
struct Unsplit<'a>(&'a dyn Denoiser);

impl Denoiser for Unsplit<'_> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> daps::Result<Tensor> {
        self.0.denoise(x, sigma)
    }
    fn device(&self) -> &Device {
        self.0.device()
    }
    fn splits_batches(&self) -> bool {
        false
    }
    fn name(&self) -> String {
        self.0.name()
    }
}

#[test]
fn dps_on_a_split_batch_follows_the_same_chains_with_any_threads() {
    let dev = Device::Cpu;
    let prior = default::digits(&dev).unwrap();
    let whole = Unsplit(&prior);
    let spec = TaskSpec::defaults("gaussian-blur", 32, 32, &TaskFiles::default()).unwrap();
    let task = Task::build(spec, [1, 32, 32]).unwrap();
    // 10 chains: pieces of 8 and 2.
    let shape = [10, 1, 32, 32];
    let truth = Tensor::randn(0f32, 0.5, &shape, &dev)
        .unwrap()
        .clamp(-1f32, 1f32)
        .unwrap();
    let per_chain = Measurement::simulate(&task, &truth, 0.05, &mut SeededNoise::new(1)).unwrap();
    let shared = Measurement {
        y: per_chain.y.narrow(0, 0, 1).unwrap(),
        sigma_y: 0.05,
    };
    let cfg = DpsConfig {
        steps: 1,
        zeta: 1.0,
        clip: Some(1.0),
    };
    for m in [&per_chain, &shared] {
        let run = |prior: &dyn Denoiser, threads: usize| {
            let p = Problem {
                prior,
                operator: &task,
                measurement: m,
            };
            pool(threads).install(|| {
                let mut noise = SeededNoise::new(7);
                dps(&p, &cfg, &shape, &mut noise, &mut Silent).unwrap()
            })
        };
        let rows = m.y.dim(0).unwrap();
        let one = vec32(&run(&prior, 1));
        for threads in [2, 3] {
            let split = vec32(&run(&prior, threads));
            assert_eq!(one, split, "y rows {rows}: 1 vs {threads} threads");
        }
        let d = max_rel_diff(&one, &vec32(&run(&whole, 2)));
        assert!(d <= 1e-3, "y rows {rows}: relative difference {d}");
    }
}

/// The bits of the `samples` tensor of a `--save-samples` file.
fn sample_bits(path: &std::path::Path) -> Vec<u32> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    vec32(&t["samples"]).iter().map(|v| v.to_bits()).collect()
}

#[test]
fn solve_gives_the_same_bits_with_any_threads() {
    let dir = tmp_dir("parallel", "solve");
    let digit = daps::data::mnist_range(9000..9001).unwrap();
    let png = dir.join("digit.png");
    daps::io::write_image(digit.images(), (-1.0, 1.0), &png).unwrap();
    let bin = env!("CARGO_BIN_EXE_daps");
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for task in ["sr4", "phase-retrieval"] {
        let y = dir.join(format!("{task}.safetensors"));
        ok(Command::new(bin)
            .args([
                "measure",
                "--task",
                task,
                "--input",
                s(&png),
                "--out",
                s(&y),
            ])
            .output()
            .unwrap());
        let methods: [&[&str]; 2] = [
            &["--preset", "daps-50", "--set", "annealing_steps=3"],
            &["--method", "dps", "--set", "steps=2"],
        ];
        // 12 chains: pieces of 8 and 4 (one piece per thread, the pieces with 3 threads would be
        // 4, 4, 4, and their bits differ from 12 in one piece); 2 chains: one small piece, which
        // the binary runs on one thread of its own.
        for (method, chains) in methods.into_iter().flat_map(|m| [(m, 12), (m, 2)]) {
            let run = |threads: usize| {
                let samples = dir.join(format!("samples-{threads}.safetensors"));
                ok(Command::new(bin)
                    .env("RAYON_NUM_THREADS", threads.to_string())
                    .args([
                        "solve",
                        "--measurement",
                        s(&y),
                        "--samples",
                        &chains.to_string(),
                        "--seed",
                        "3",
                    ])
                    .args(method)
                    .args([
                        "--out",
                        s(&dir.join("x.png")),
                        "--save-samples",
                        s(&samples),
                    ])
                    .output()
                    .unwrap());
                sample_bits(&samples)
            };
            let one = run(1);
            assert_eq!(one.len(), chains * 32 * 32);
            for threads in [2, 3] {
                assert!(
                    one == run(threads),
                    "{task} {method:?}: 1 vs {threads} threads differ"
                );
            }
        }
    }
}

/// `daps demo` runs its (task, sampler) jobs side by side when it has several threads: the
/// records (all but the times) and the grid PNG are the same bytes as with one thread.
#[test]
fn demo_gives_the_same_records_and_grid_with_any_threads() {
    let dir = tmp_dir("parallel", "demo");
    let bin = env!("CARGO_BIN_EXE_daps");
    let run = |threads: usize| {
        let (png, json) = (
            dir.join(format!("grid-{threads}.png")),
            dir.join(format!("r-{threads}.json")),
        );
        let out = Command::new(bin)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .args(["demo", "--digits", "2", "--tasks", "sr4,gaussian-blur,hdr"])
            .args(["--set", "annealing_steps=3", "--set", "mcmc_steps=4"])
            .args(["--dps-steps", "3", "--out", s(&png), "--json", s(&json)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        for r in v.as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("seconds");
        }
        (v, std::fs::read(&png).unwrap())
    };
    let one = run(1);
    assert_eq!(one.0.as_array().unwrap().len(), 6, "3 tasks × 2 samplers");
    for threads in [2, 3] {
        assert!(one == run(threads), "1 vs {threads} threads differ");
    }
}
