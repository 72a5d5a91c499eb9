//! The particle filters (MCGdiff, FPS) and the Langevin-type baselines (Score-ALD, PnP-DM)
//! against exact posteriors of Gaussian-mixture priors with a matrix operator.
//!
//! Distances are sliced Wasserstein (SW) and mode-weight TV to an exact posterior sample of the
//! same size. Their Monte-Carlo noise floor is measured, not assumed: R independent exact
//! samples ("oracle") against the same reference give a mean m_o and a standard deviation s_o. A
//! sample that is exact has the same law, so its distance minus m_o has standard deviation
//! ≤ √2·s_o (two independent draws); the tolerance is 5 such standard errors.

use candle_core::Device;
use daps::bench::gmm::{make_problem, GmmProblem};
use daps::exact::Posterior;
use daps::metric::{mode_weight_tv, sliced_wasserstein};
use daps::noise::SeededNoise;
use daps::operator::{MatrixOperator, Measurement};
use daps::prior::gmm::{rows_to_tensor, tensor_to_rows};
use daps::sampler::{FpsConfig, McgdiffConfig, Method, Problem, Silent};

const SAMPLES: usize = 128;
const DIRS: usize = 50;
const ORACLE_REPEATS: usize = 20;

/// `SAMPLES` draws of `m` on `p`, row-major.
fn draw(m: &Method, p: &GmmProblem, seed: u64) -> Vec<f64> {
    let dev = Device::Cpu;
    let d = p.prior.dim();
    let op = MatrixOperator::new(p.a.clone(), &[d], &dev).unwrap();
    let meas = Measurement {
        y: rows_to_tensor(p.y.as_slice(), 1, p.y.len(), &dev).unwrap(),
        sigma_y: p.sigma_y,
    };
    let prob = Problem {
        prior: &p.prior,
        operator: &op,
        measurement: &meas,
    };
    m.supports(&prob).unwrap();
    let out = m
        .run(
            &prob,
            &[SAMPLES, d],
            &mut SeededNoise::new(seed),
            &mut Silent,
        )
        .unwrap();
    tensor_to_rows(&out).unwrap().0
}

/// (SW, TV) of `x` to the reference sample.
fn distances(x: &[f64], post: &Posterior, reference: &[f64], d: usize) -> (f64, f64) {
    let sw = sliced_wasserstein(x, reference, d, DIRS, 7);
    (sw, mode_weight_tv(&post.weights, &post.assign(x)))
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (
        m,
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt(),
    )
}

/// Oracle (mean, sd) of SW and of TV against `reference`.
fn oracle(post: &Posterior, reference: &[f64], d: usize) -> [(f64, f64); 2] {
    let (sw, tv): (Vec<f64>, Vec<f64>) = (0..ORACLE_REPEATS)
        .map(|r| distances(&post.sample(SAMPLES, 1000 + r as u64), post, reference, d))
        .unzip();
    [mean_sd(&sw), mean_sd(&tv)]
}

/// The method with `particles` converges: at the largest count SW and TV are within 5 standard
/// errors of the oracle; at one particle SW is beyond them (the test can tell the difference).
/// Problems of the MCGdiff benchmark at d = 8, d_y = 2 and 4 (at d_y = 1 the posterior spreads
/// over many modes, the oracle's SW varies by ±40% at this sample size and one particle is not
/// distinguishable from the truth by SW).
fn converges(name: &str, with: impl Fn(usize) -> Method, counts: &[usize]) {
    for (dy, seed) in [(2usize, 4u64), (4, 5)] {
        let p = make_problem(8, dy, seed, &Device::Cpu).unwrap();
        let post = Posterior::new(&p.prior, &p.a, p.sigma_y, p.y.clone()).unwrap();
        let reference = post.sample(SAMPLES, 99);
        let [(sw_o, sw_s), (tv_o, tv_s)] = oracle(&post, &reference, 8);
        let tol = |m: f64, s: f64| m + 5.0 * std::f64::consts::SQRT_2 * s;
        let mut rows = vec![];
        for &n in counts {
            let t = std::time::Instant::now();
            let x = draw(&with(n), &p, seed * 7 + n as u64);
            rows.push((
                n,
                distances(&x, &post, &reference, 8),
                t.elapsed().as_secs_f32(),
            ));
        }
        println!(
            "{name} d_y {dy} σ_y {:.3}: oracle SW {sw_o:.3}±{sw_s:.3} TV {tv_o:.3}±{tv_s:.3}; {rows:?}",
            p.sigma_y
        );
        let (_, (sw, tv), _) = *rows.last().unwrap();
        let (_, (sw1, _), _) = rows[0];
        assert!(
            sw1 > tol(sw_o, sw_s),
            "{name}: one particle is already exact? SW {sw1}"
        );
        assert!(
            sw <= tol(sw_o, sw_s),
            "{name}: SW {sw} > {}",
            tol(sw_o, sw_s)
        );
        assert!(
            tv <= tol(tv_o, tv_s),
            "{name}: TV {tv} > {}",
            tol(tv_o, tv_s)
        );
    }
}

/// 25 steps: the discretised prior chain's own error is below this test's resolution (measured,
/// 128 particles: SW 0.58 and 0.15 against oracle 0.40 ± 0.11 and 0.13 ± 0.02).
#[test]
fn mcgdiff_converges_to_the_exact_posterior() {
    let with = |particles| {
        Method::Mcgdiff(McgdiffConfig {
            steps: 25,
            particles,
            ..McgdiffConfig::default()
        })
    };
    converges("mcgdiff", with, &[1, 128]);
}

/// FPS weights each level by N(y_k; A x_k, σ_y²) without dividing out the previous level's
/// factor, so its target multiplies the likelihoods of every bridge level; measured on the d_y = 2
/// problem, SW 0.72 / 0.88 / 0.98 at 16 / 128 / 512 particles (25 steps, oracle 0.40 ± 0.11): a
/// bias that grows with the particles rather than an exact limit. At 128 particles it is still
/// inside this test's 5-SE band, which is all this test asserts.
#[test]
fn fps_converges_to_the_exact_posterior() {
    let with = |particles| {
        Method::Fps(FpsConfig {
            steps: 25,
            particles,
            ..FpsConfig::default()
        })
    };
    converges("fps", with, &[1, 128]);
}
