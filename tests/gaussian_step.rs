//! The closed-form Gaussian x0 step (`x0_method = "gaussian"`, perturb-and-solve with the
//! operator's prox) against the explicit closed form of its target
//! N(x0; x̂0, σ² I)·exp(−c‖A x0 − y‖²/(2τ²)): covariance Σ = (c·AᵀA/τ² + I/σ²)⁻¹, mean
//! Σ(c·Aᵀy/τ² + x̂0/σ²). With a closed-form prox the draw is exact, so sample means and
//! covariances must agree within Monte-Carlo error: 5 standard errors per entry
//! (SE(mean_j) = √(Σ_jj/n), SE(cov_ij) = √((Σ_ii Σ_jj + Σ_ij²)/n), Gaussian fourth moments).

use candle_core::{DType, Device, Tensor};
use daps::noise::SeededNoise;
use daps::operator::inpaint::Inpaint;
use daps::operator::{MatrixOperator, Measurement, Operator};
use daps::prior::GaussianMixture;
use daps::sampler::mcmc::{gaussian, Target};
use daps::sampler::{DataGradient, PriorTerm, Problem};
use nalgebra::{DMatrix, DVector};

mod common;
use common::{moments, vec64};

const N: usize = 20_000;

/// Draws N x0 samples for x̂0 (one row, repeated), σ, τ, and checks them against the closed form.
fn check(
    op: &dyn Operator,
    a: &DMatrix<f64>,
    x0hat: &[f64],
    y: &[f64],
    sigma: f64,
    tau: f64,
    dg: DataGradient,
) {
    let d = x0hat.len();
    let dev = Device::Cpu;
    let prior = GaussianMixture::isotropic(vec![1.0], vec![DVector::zeros(d)], 1.0, &dev).unwrap();
    let h = Tensor::from_vec(x0hat.to_vec(), (1, d), &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .broadcast_as((N, d))
        .unwrap()
        .contiguous()
        .unwrap();
    let ym = Measurement {
        y: Tensor::from_vec(y.to_vec(), (1, y.len()), &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
        sigma_y: tau,
    };
    check_with(op, &prior, &h, &ym, a, x0hat, y, sigma, tau, dg, d);
}

#[allow(clippy::too_many_arguments)]
fn check_with(
    op: &dyn Operator,
    prior: &GaussianMixture,
    h: &Tensor,
    ym: &Measurement,
    a: &DMatrix<f64>,
    x0hat: &[f64],
    y: &[f64],
    sigma: f64,
    tau: f64,
    dg: DataGradient,
    d: usize,
) {
    let p = Problem {
        prior,
        operator: op,
        measurement: ym,
    };
    let t = Target {
        problem: p,
        sigma,
        x0hat: h,
        xt: h,
        tau,
        data_gradient: dg,
        prior_term: PriorTerm::Gaussian,
    };
    let x = gaussian(&t, &mut SeededNoise::new(7)).unwrap();
    let xs = vec64(&x.reshape((N, d)).unwrap());
    let (m, c) = moments(&xs, d);
    let cf = match dg {
        DataGradient::Paper => 1.0,
        DataGradient::Doubled => 2.0,
    };
    let prec = a.transpose() * a * (cf / (tau * tau)) + DMatrix::identity(d, d) / (sigma * sigma);
    let cov = prec.try_inverse().unwrap();
    let rhs = a.transpose() * DVector::from_column_slice(y) * (cf / (tau * tau))
        + DVector::from_column_slice(x0hat) / (sigma * sigma);
    let mean = &cov * rhs;
    let n = N as f64;
    for i in 0..d {
        let se = (cov[(i, i)] / n).sqrt();
        assert!(
            (m[i] - mean[i]).abs() < 5.0 * se,
            "mean {i}: {} vs {} (SE {se:.2e})",
            m[i],
            mean[i]
        );
        for j in 0..d {
            let se = ((cov[(i, i)] * cov[(j, j)] + cov[(i, j)].powi(2)) / n).sqrt();
            assert!(
                (c[i * d + j] - cov[(i, j)]).abs() < 5.0 * se,
                "cov ({i}, {j}): {} vs {} (SE {se:.2e})",
                c[i * d + j],
                cov[(i, j)]
            );
        }
    }
}

#[test]
fn matrix_operator_draws_the_exact_gaussian_target() {
    let a = DMatrix::from_row_slice(
        3,
        6,
        &[
            1.0, 0.5, 0.0, -0.3, 0.2, 0.0, 0.0, 1.2, -0.7, 0.0, 0.4, 0.1, 0.3, 0.0, 0.9, 0.6, 0.0,
            -1.0,
        ],
    );
    let op = MatrixOperator::new(a.clone(), &[6], &Device::Cpu).unwrap();
    let x0hat = [0.3, -0.2, 0.5, 0.1, 0.0, -0.4];
    let y = [0.8, -0.1, 0.4];
    for dg in [DataGradient::Paper, DataGradient::Doubled] {
        check(&op, &a, &x0hat, &y, 0.7, 0.3, dg);
    }
}

#[test]
fn inpainting_draws_the_exact_gaussian_target() {
    // 1×3×3 image, 5 of 9 pixels observed; y has the image's shape (zero where unobserved).
    let mask = [1.0f32, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
    let op =
        Inpaint::new(Tensor::from_vec(mask.to_vec(), (1, 1, 3, 3), &Device::Cpu).unwrap()).unwrap();
    let a = DMatrix::from_diagonal(&DVector::from_iterator(9, mask.iter().map(|&v| v as f64)));
    let x0hat = [0.2, -0.5, 0.1, 0.0, 0.4, -0.3, 0.6, 0.2, -0.1];
    let y: Vec<f64> = [0.5, 0.0, -0.2, 0.3, 0.0, 0.0, 0.1, 0.0, 0.7]
        .iter()
        .zip(&mask)
        .map(|(v, m)| v * *m as f64)
        .collect();
    let dev = Device::Cpu;
    let prior = GaussianMixture::isotropic(vec![1.0], vec![DVector::zeros(9)], 1.0, &dev).unwrap();
    let h = Tensor::from_vec(x0hat.to_vec(), (1, 1, 3, 3), &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .broadcast_as((N, 1, 3, 3))
        .unwrap()
        .contiguous()
        .unwrap();
    let ym = Measurement {
        y: Tensor::from_vec(y.clone(), (1, 1, 3, 3), &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
        sigma_y: 0.1,
    };
    check_with(
        &op,
        &prior,
        &h,
        &ym,
        &a,
        &x0hat,
        &y,
        0.5,
        0.1,
        DataGradient::Paper,
        9,
    );
}

#[test]
fn a_nonlinear_operator_is_refused_by_name() {
    let dev = Device::Cpu;
    let prior = GaussianMixture::isotropic(vec![1.0], vec![DVector::zeros(4)], 1.0, &dev).unwrap();
    let op = daps::operator::Hdr::new(2.0).unwrap();
    let h = Tensor::zeros((2, 1, 2, 2), DType::F32, &dev).unwrap();
    let ym = Measurement {
        y: h.clone(),
        sigma_y: 0.1,
    };
    let t = Target {
        problem: Problem {
            prior: &prior,
            operator: &op,
            measurement: &ym,
        },
        sigma: 1.0,
        x0hat: &h,
        xt: &h,
        tau: 0.1,
        data_gradient: DataGradient::Paper,
        prior_term: PriorTerm::Gaussian,
    };
    let e = gaussian(&t, &mut SeededNoise::new(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a linear operator"), "{e}");
}
