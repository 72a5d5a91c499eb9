//! daps-tweedie against the exact posterior of a Gaussian prior, and daps-smc's particle
//! reweighting on the Gaussian-mixture benchmark.

mod common;
use common::*;

use candle_core::Device;
use daps::bench::gmm::make_problem;
use daps::exact::{Conditioner, Posterior};
use daps::metric::mode_weight_tv;
use daps::noise::SeededNoise;
use daps::operator::{MatrixOperator, Measurement, Operator, TrapOperator};
use daps::sampler::smc::DapsSmcConfig;
use daps::sampler::tweedie::DapsTweedieConfig;
use daps::sampler::{Method, Problem, Sampler, Silent};
use nalgebra::{DMatrix, DVector};
use rand::Rng;

/// With a Gaussian prior, a matrix operator, τ = σ_y and enough Lanczos (≥ d) and CG (≥ d_y)
/// iterations, every level draws p(x0 | x_t, y) exactly, so the output is the posterior
/// (up to x_T ~ N(0, σ_max²) standing in for p(x_T | y), negligible at σ_max = 100). Mean and
/// covariance within 5 Monte-Carlo SE (Gaussian formulae in `assert_moments`), no bias term.
/// The default 16 Lanczos steps exceed d = 4: the Krylov space is exhausted and must stop cleanly.
#[test]
fn daps_tweedie_samples_the_exact_posterior_of_a_gaussian_prior() {
    let (d, dy, sy, n) = (4, 2, 0.3, 8000);
    let gmm = random_mixture(Kind::Full, d, 1, 1.0, 12);
    let mut rng = daps::noise::stream(12, 5, 5);
    let a = DMatrix::from_fn(dy, d, |_, _| {
        rng.sample::<f64, _>(rand_distr::StandardNormal) * 0.7
    });
    let y = DVector::from_fn(dy, |_, _| rng.sample::<f64, _>(rand_distr::StandardNormal));
    let op = MatrixOperator::new(a.clone(), &[d], &Device::Cpu).unwrap();
    let meas = Measurement {
        y: row_tensor(y.as_slice(), dy),
        sigma_y: sy,
    };
    let p = Problem {
        prior: &gmm,
        operator: &op,
        measurement: &meas,
    };
    let cfg = DapsTweedieConfig {
        annealing_steps: 10,
        ..DapsTweedieConfig::default()
    };
    assert_eq!(cfg.nfe(), 10 * (2 + 16 + 12));
    let out = rows(
        &cfg.run(&p, &[n, d], &mut SeededNoise::new(5), &mut Silent)
            .unwrap(),
    );
    let (_, m, c) = Conditioner::new(&gmm, &a, sy, None)
        .unwrap()
        .mixture(None, &y);
    assert_moments(&out, d, &m[0], &c[0], 5.0, 0.0, "daps-tweedie");
}

#[test]
fn daps_tweedie_smc_gaussian_and_exact_refuse_a_nonlinear_operator_by_name() {
    let gmm = daps::bench::toy2d::prior(&Device::Cpu).unwrap();
    let op = TrapOperator::default();
    let meas = Measurement {
        y: row_tensor(&[0.5], 1),
        sigma_y: 0.3,
    };
    let p = Problem {
        prior: &gmm,
        operator: &op as &dyn Operator,
        measurement: &meas,
    };
    for name in ["daps-tweedie", "daps-smc", "daps-gaussian"] {
        let m = Method::from_name(name).unwrap();
        let e = m.supports(&p).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("linear operator"), "{e}");
        let e = m
            .run(&p, &[2, 2], &mut SeededNoise::new(0), &mut Silent)
            .unwrap_err()
            .to_string();
        assert!(e.contains("linear operator"), "{e}");
    }
    // The exact x0 step needs a matrix: refused before any work, by name.
    let e = Method::from_name("daps-exact")
        .unwrap()
        .supports(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("daps-exact") && e.contains("matrix operator"),
        "{e}"
    );
    // σ_y = 0 with no τ set: named before any work.
    let a = DMatrix::from_row_slice(1, 2, &[1.0, 0.0]);
    let op = MatrixOperator::new(a, &[2], &Device::Cpu).unwrap();
    let meas = Measurement {
        y: row_tensor(&[0.5], 1),
        sigma_y: 0.0,
    };
    let p = Problem {
        prior: &gmm,
        operator: &op,
        measurement: &meas,
    };
    let e = Method::from_name("daps-smc")
        .unwrap()
        .run(&p, &[2, 2], &mut SeededNoise::new(0), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("σ_y is 0; set tau"), "{e}");
}

/// Mode weights: on the first benchmark problem (d = 8, d_y = 1, 25 modes), one particle (which
/// is daps-gaussian with τ = σ_y) mis-weights the modes; 16 particles per sample must cut the
/// mode-weight TV of n = 400 samples. Margin from Monte-Carlo error: each output is an
/// independent draw and one draw moves the empirical TV by at most 1/n, so by McDiarmid
/// P(|TV − E TV| ≥ t) ≤ 2·exp(−2nt²); t = √(ln(2·10⁶)/(2n)) = 0.135 holds each value within t of
/// its mean with probability 1 − 10⁻⁶, and TV(16) < TV(1) − 2t shows E TV(16) < E TV(1).
/// K = 16 is not the oracle: the prior chain's Euler ODE (3 steps) and the σ_min blur remain.
#[test]
fn daps_smc_particles_correct_the_mode_weights() {
    let dev = Device::Cpu;
    let (d, n) = (8, 400);
    // The benchmark's first problem of cell (8, 1): seed 2⁰·3⁰ + 0.
    let prob = make_problem(d, 1, 1, &dev).unwrap();
    let op = MatrixOperator::new(prob.a.clone(), &[d], &dev).unwrap();
    let meas = Measurement {
        y: row_tensor(prob.y.as_slice(), 1),
        sigma_y: prob.sigma_y,
    };
    let p = Problem {
        prior: &prob.prior,
        operator: &op,
        measurement: &meas,
    };
    let post = Posterior::new(&prob.prior, &prob.a, prob.sigma_y, prob.y.clone()).unwrap();
    let tv = |k: usize| {
        let cfg = DapsSmcConfig {
            particles: k,
            annealing_steps: 20,
            ode_steps: 3,
            ..DapsSmcConfig::default()
        };
        assert_eq!(cfg.nfe(), k * 60);
        let x = cfg
            .run(&p, &[n, d], &mut SeededNoise::new(9), &mut Silent)
            .unwrap();
        mode_weight_tv(&post.weights, &post.assign(&rows(&x)))
    };
    let (tv1, tv16) = (tv(1), tv(16));
    let t = ((2e6f64).ln() / (2.0 * n as f64)).sqrt();
    println!(
        "mode TV: K = 1 {tv1:.3}, K = 16 {tv16:.3} (margin 2t = {:.3})",
        2.0 * t
    );
    assert!(tv16 < tv1 - 2.0 * t, "K = 1 {tv1}, K = 16 {tv16}");
}
