//! A CPU batch split into one piece per thread gives the results of the batch in one piece:
//! the network's D(x) and DPS's chains (gradient through the network) with 3 threads against 1.
//! They agree up to float rounding only (the matmuls' blocking depends on the batch and the
//! threads): ~1e-6 relative through the network. DPS's one step here is at σ ≈ 157, where
//! D = x − σ·ε̂ multiplies the network's rounding by σ (measured ~6e-5 relative; bound 1e-3).
//! A wrong split (rows of y or chains out of place) differs by O(1).

use candle_core::{Device, Tensor};
use daps::noise::SeededNoise;
use daps::operator::Measurement;
use daps::prior::{batch_splits, default, par_batches, Denoiser};
use daps::sampler::{dps, DpsConfig, Problem, Silent};
use daps::task::{Task, TaskFiles, TaskSpec};

mod common;
use common::vec32;

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
fn splits_cover_the_batch_in_order_one_per_thread() {
    assert_eq!(
        pool(3).install(|| batch_splits(7)),
        vec![(0, 2), (2, 2), (4, 3)]
    );
    assert_eq!(pool(3).install(|| batch_splits(2)), vec![(0, 1), (1, 1)]);
    assert_eq!(pool(1).install(|| batch_splits(7)), vec![(0, 7)]);
    let got = pool(3)
        .install(|| par_batches(10, |s, n| Ok((s, n))))
        .unwrap();
    assert_eq!(got, vec![(0, 3), (3, 3), (6, 4)]);
    // An error in any piece is the result.
    let err = pool(3).install(|| {
        par_batches(10, |s, n| {
            if s == 3 {
                Err(daps::Error::msg("piece 2 failed"))
            } else {
                Ok(n)
            }
        })
    });
    assert!(err.unwrap_err().to_string().contains("piece 2 failed"));
}

#[test]
fn a_split_batch_denoises_as_one_piece() {
    let dev = Device::Cpu;
    let prior = default::digits(&dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (5, 1, 32, 32), &dev).unwrap();
    for sigma in [0.2, 3.0] {
        let one = pool(1).install(|| prior.denoise(&x, sigma).unwrap());
        let split = pool(3).install(|| prior.denoise(&x, sigma).unwrap());
        let d = max_rel_diff(&vec32(&split), &vec32(&one));
        assert!(d <= 1e-5, "σ {sigma}: relative difference {d}");
    }
}

#[test]
fn dps_on_a_split_batch_follows_the_same_chains() {
    let dev = Device::Cpu;
    let prior = default::digits(&dev).unwrap();
    let spec = TaskSpec::defaults("gaussian-blur", 32, 32, &TaskFiles::default()).unwrap();
    let task = Task::build(spec, [1, 32, 32]).unwrap();
    let truth = Tensor::randn(0f32, 0.5, (4, 1, 32, 32), &dev)
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
        let p = Problem {
            prior: &prior,
            operator: &task,
            measurement: m,
        };
        let run = |threads: usize| {
            pool(threads).install(|| {
                let mut noise = SeededNoise::new(7);
                dps(&p, &cfg, &[4, 1, 32, 32], &mut noise, &mut Silent).unwrap()
            })
        };
        let (one, split) = (run(1), run(3));
        let d = max_rel_diff(&vec32(&split), &vec32(&one));
        assert!(
            d <= 1e-3,
            "y rows {}: relative difference {d}",
            m.y.dim(0).unwrap()
        );
    }
}
