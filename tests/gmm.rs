//! The Gaussian-mixture prior's denoiser and the PF-ODE, against closed forms.

mod common;
use common::*;

use candle_core::Device;
use daps::noise::stream;
use daps::prior::{Denoiser, GaussianMixture};
use daps::sampler::ode;
use daps::schedule::{ode_sigmas, Discretization};
use nalgebra::DVector;
use rand::Rng;
use rand_distr::StandardNormal;

#[test]
fn denoiser_matches_closed_form_for_every_covariance_kind() {
    for (kind, seed) in [(Kind::Iso, 1), (Kind::Diag, 2), (Kind::Full, 3)] {
        let d = 5;
        let g = random_mixture(kind, d, 3, 1.5, seed);
        let mut rng = stream(seed, 9, 9);
        let pts: Vec<f64> = (0..8 * d)
            .map(|_| 2.0 * rng.sample::<f64, _>(StandardNormal))
            .collect();
        let x = row_tensor(&pts, d);
        for sigma in [0.05, 0.7, 3.0, 40.0] {
            let got = rows(&g.denoise(&x, sigma).unwrap());
            let sc = rows(&g.score(&x, sigma).unwrap());
            for (i, p) in pts.chunks(d).enumerate() {
                let (_, want) = g.denoise_point(&DVector::from_column_slice(p), sigma);
                for j in 0..d {
                    let e = (got[i * d + j] - want[j]).abs();
                    assert!(
                        e < 2e-4 * (1.0 + want[j].abs()),
                        "{kind:?} σ={sigma} point {i}: {} vs {}",
                        got[i * d + j],
                        want[j]
                    );
                    // score = (D − x)/σ²
                    let s_want = (want[j] - p[j]) / (sigma * sigma);
                    assert!(
                        (sc[i * d + j] - s_want).abs() < 2e-3 * (1.0 + s_want.abs()),
                        "{kind:?} score"
                    );
                }
            }
        }
    }
}

#[test]
fn shared_variance_fast_path_matches_closed_form() {
    let d = 6;
    let mut rng = stream(8, 0, 0);
    let means: Vec<DVector<f64>> = (0..4)
        .map(|_| DVector::from_fn(d, |_, _| rng.sample::<f64, _>(StandardNormal)))
        .collect();
    let g = GaussianMixture::isotropic(vec![1.0, 2.0, 3.0, 4.0], means, 0.3, &Device::Cpu).unwrap();
    let pts: Vec<f64> = (0..5 * d)
        .map(|_| rng.sample::<f64, _>(StandardNormal))
        .collect();
    for sigma in [0.1, 1.0, 20.0] {
        let got = rows(&g.denoise(&row_tensor(&pts, d), sigma).unwrap());
        for (i, p) in pts.chunks(d).enumerate() {
            let (_, want) = g.denoise_point(&DVector::from_column_slice(p), sigma);
            for j in 0..d {
                assert!(
                    (got[i * d + j] - want[j]).abs() < 2e-4 * (1.0 + want[j].abs()),
                    "σ={sigma}"
                );
            }
        }
    }
}

#[test]
fn clean_score_matches_mixture_gradient() {
    // σ = 0: ∇log p(x) = Σ γ_k Σ_k⁻¹ (μ_k − x), checked by central differences of log p.
    let d = 3;
    let g = random_mixture(Kind::Full, d, 3, 1.0, 4);
    let logp = |x: &DVector<f64>| -> f64 {
        let mut acc = 0.0;
        for k in 0..g.n_components() {
            let e = &g.eigen()[k];
            let z = e.to_eig(&(x - &g.means()[k]));
            let q: f64 = z.iter().zip(e.lambda.iter()).map(|(z, l)| z * z / l).sum();
            let ld: f64 = e.lambda.iter().map(|l| l.ln()).sum();
            acc += g.weights()[k] * (-0.5 * q - 0.5 * ld).exp();
        }
        acc.ln()
    };
    let x = DVector::from_vec(vec![0.3, -0.2, 0.5]);
    let s = rows(&g.score(&row_tensor(x.as_slice(), d), 0.0).unwrap());
    for j in 0..d {
        let h = 1e-5;
        let mut a = x.clone();
        let mut b = x.clone();
        a[j] += h;
        b[j] -= h;
        let fd = (logp(&a) - logp(&b)) / (2.0 * h);
        assert!(
            (s[j] - fd).abs() < 1e-3 * (1.0 + fd.abs()),
            "coord {j}: {} vs {fd}",
            s[j]
        );
    }
}

/// E[x0 | x0 + σε = x] by self-normalised importance sampling from the prior.
#[test]
fn denoiser_matches_brute_force_monte_carlo() {
    let d = 2;
    let g = random_mixture(Kind::Full, d, 3, 1.0, 5);
    let n = 400_000;
    let (samples, _) = g.sample(n, 77);
    for (x, sigma) in [([0.4, -0.3], 0.8), ([-1.0, 1.2], 1.5)] {
        let logw: Vec<f64> = samples
            .chunks(d)
            .map(|s| -((s[0] - x[0]).powi(2) + (s[1] - x[1]).powi(2)) / (2.0 * sigma * sigma))
            .collect();
        let m = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = logw.iter().map(|l| (l - m).exp()).collect();
        let sw: f64 = w.iter().sum();
        let got = rows(&g.denoise(&row_tensor(&x, d), sigma).unwrap());
        for j in 0..d {
            let est: f64 = samples
                .chunks(d)
                .zip(&w)
                .map(|(s, w)| w * s[j])
                .sum::<f64>()
                / sw;
            // delta-method standard error of a self-normalised estimate
            let var: f64 = samples
                .chunks(d)
                .zip(&w)
                .map(|(s, w)| (w / sw).powi(2) * (s[j] - est).powi(2))
                .sum();
            let se = var.sqrt();
            assert!(
                (got[j] - est).abs() < 5.0 * se + 1e-4,
                "coord {j}: D = {} vs MC {est} ± {se}",
                got[j]
            );
        }
    }
}

#[test]
fn prior_samples_have_the_mixture_moments() {
    let d = 3;
    let g = random_mixture(Kind::Diag, d, 4, 2.0, 6);
    let n = 200_000;
    let (s, _) = g.sample(n, 5);
    let (m, c) = moments(&s, d);
    for j in 0..d {
        let mean: f64 = (0..4).map(|k| g.weights()[k] * g.means()[k][j]).sum();
        let var: f64 = (0..4)
            .map(|k| g.weights()[k] * (g.eigen()[k].lambda[j] + g.means()[k][j].powi(2)))
            .sum::<f64>()
            - mean * mean;
        assert!((m[j] - mean).abs() < 5.0 * (var / n as f64).sqrt());
        assert!((c[j * d + j] - var).abs() < 0.03 * var);
    }
}

/// For N(μ, s²I) the PF-ODE is solved by x(σ) = μ + (x(σ0) − μ)·√((s² + σ²)/(s² + σ0²)).
#[test]
fn pf_ode_converges_to_the_exact_gaussian_flow() {
    let (mu, s2) = (0.7, 0.36);
    let d = 3;
    let prior = GaussianMixture::isotropic(
        vec![1.0],
        vec![DVector::from_element(d, mu)],
        s2,
        &Device::Cpu,
    )
    .unwrap();
    let x0 = [12.0, -5.0, 3.0];
    let (s0, s1) = (10.0, 0.01);
    let exact: Vec<f64> = x0
        .iter()
        .map(|x| mu + (x - mu) * ((s2 + s1 * s1) / (s2 + s0 * s0)).sqrt())
        .collect();
    let mut errs = vec![];
    for m in [5, 10, 20, 40, 80, 160] {
        let grid = ode_sigmas(m, s0, s1, 7.0, Discretization::Main);
        let out = rows(&ode::euler(&prior, &row_tensor(&x0, d), &grid).unwrap());
        let e = out
            .iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        errs.push(e);
    }
    for w in errs.windows(2) {
        assert!(w[1] < w[0], "error must shrink as steps grow: {errs:?}");
    }
    // Euler is first order: doubling the steps roughly halves the error once resolved.
    let ratio = errs[4] / errs[5];
    assert!(
        ratio > 1.6 && ratio < 2.6,
        "order ratio {ratio}, errors {errs:?}"
    );
}

#[test]
fn wrong_dimension_is_a_shape_error() {
    let g = random_mixture(Kind::Iso, 4, 2, 1.0, 1);
    let x = candle_core::Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = g.denoise(&x, 1.0).unwrap_err().to_string();
    assert!(
        e.contains("shape mismatch") && e.contains("[4]") && e.contains("[5]"),
        "{e}"
    );
}

#[test]
fn invalid_mixtures_are_rejected() {
    let dev = Device::Cpu;
    let m = vec![DVector::zeros(2)];
    assert!(GaussianMixture::new(
        vec![-1.0],
        m.clone(),
        vec![daps::prior::Covariance::Isotropic(1.0)],
        &dev
    )
    .is_err());
    assert!(GaussianMixture::new(
        vec![1.0],
        m.clone(),
        vec![daps::prior::Covariance::Isotropic(-1.0)],
        &dev
    )
    .is_err());
    assert!(GaussianMixture::new(
        vec![1.0],
        m,
        vec![daps::prior::Covariance::Diagonal(vec![1.0])],
        &dev
    )
    .is_err());
}
