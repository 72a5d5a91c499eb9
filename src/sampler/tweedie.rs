//! DAPS-Tweedie: DAPS whose x0 step uses the Tweedie moments of p(x0 | x_t) instead of
//! N(x̂0, σ_t² I): mean m = D(x_t, σ_t) (the posterior mean; not the ODE end point, which for a
//! Gaussian prior is μ + J^{1/2}(x_t − μ), a prior-like point, not E[x0 | x_t]) and covariance
//! C = σ_t²·J, J = ∂D/∂x (= Cov(x0 | x_t)/σ_t², symmetric for an exact denoiser). With a linear
//! A and Gaussian noise, x0 ~ N(m, C)·N(y; A x0, τ² I) is drawn by Matheron's rule:
//! x' = m + σ_t·J^{1/2}ξ (Lanczos on J), x0 = x' + σ_t² J Aᵀ (σ_t² A J Aᵀ + τ² I)⁻¹(y + τε − A x')
//! (conjugate gradients). For a Gaussian prior, τ = σ_y and enough Lanczos and CG iterations
//! every level is exact, so the output is the exact posterior (Proposition 1 of DAPS). J is
//! applied by vector–Jacobian products through D's graph (for a network, Jᵀ stands in for J).
//! Cost per level: one forward pass and at most `lanczos_steps + cg_steps + 1` VJPs, each VJP
//! counted as one network evaluation.

use super::{check_finite, likelihood_tau, linear_of, mean_misfit, Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::operator::structure::{chain_dots, chain_scalars};
use crate::operator::{cg, CgOptions, Linear};
use crate::schedule::{annealing_sigmas, Discretization};
use candle_core::Tensor;
use nalgebra::{DMatrix, SymmetricEigen};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DapsTweedieConfig {
    pub annealing_steps: usize,
    pub sigma_max: f64,
    pub sigma_min: f64,
    pub rho: f64,
    pub discretization: Discretization,
    /// Lanczos iterations for J^{1/2}ξ (exact once ≥ the number of distinct eigenvalues of J).
    pub lanczos_steps: usize,
    /// Conjugate-gradient iterations for (σ² A J Aᵀ + τ² I)⁻¹, at most (exact at dim y).
    pub cg_steps: usize,
    /// Likelihood σ; unset: the measurement's σ_y.
    pub tau: Option<f64>,
}

impl Default for DapsTweedieConfig {
    /// 30 levels × (1 + 16 + 12 + 1) = 900 NFE, under DAPS-1K's 1000.
    fn default() -> Self {
        Self {
            annealing_steps: 30,
            sigma_max: 100.0,
            sigma_min: 0.1,
            rho: 7.0,
            discretization: Discretization::Main,
            lanczos_steps: 16,
            cg_steps: 12,
            tau: None,
        }
    }
}

impl DapsTweedieConfig {
    pub fn validate(&self) -> Result<()> {
        let steps = 1..=super::daps::MAX_STEPS;
        let pos = |x: f64| x.is_finite() && x > 0.0;
        let checks: [(bool, &str, String); 7] = [
            (
                steps.contains(&self.annealing_steps),
                "annealing_steps",
                format!("in {steps:?}, got {}", self.annealing_steps),
            ),
            (
                (1..=MAX_KRYLOV).contains(&self.lanczos_steps),
                "lanczos_steps",
                format!("in 1..={MAX_KRYLOV}, got {}", self.lanczos_steps),
            ),
            (
                (1..=MAX_KRYLOV).contains(&self.cg_steps),
                "cg_steps",
                format!("in 1..={MAX_KRYLOV}, got {}", self.cg_steps),
            ),
            (
                pos(self.sigma_min),
                "sigma_min",
                format!("finite and > 0, got {}", self.sigma_min),
            ),
            (
                self.sigma_max.is_finite() && self.sigma_max > self.sigma_min,
                "sigma_max",
                format!("finite and > sigma_min, got {}", self.sigma_max),
            ),
            (
                pos(self.rho),
                "rho",
                format!("finite and > 0, got {}", self.rho),
            ),
            (
                self.tau.is_none_or(pos),
                "tau",
                format!("finite and > 0 when set, got {:?}", self.tau),
            ),
        ];
        super::first_failed(&checks)
    }

    /// Network evaluations per chain: per level one forward pass of D and at most
    /// `lanczos_steps + cg_steps + 1` VJPs through it (each counted as one evaluation).
    pub fn nfe(&self) -> usize {
        self.annealing_steps * (2 + self.lanczos_steps + self.cg_steps)
    }
}

/// The largest number of Lanczos or CG iterations (Lanczos keeps every vector).
pub const MAX_KRYLOV: usize = 4096;

/// Runs DAPS with the Tweedie x0 step for a batch of chains of shape `x_shape`.
pub fn daps_tweedie(
    p: &Problem,
    cfg: &DapsTweedieConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let lin = linear_of(p, "daps-tweedie")?;
    // σ's and a given τ are in units of the prior's scale (`prior::Scale`).
    let sc = crate::prior::Scale::of(p.prior)?;
    let tau = likelihood_tau(cfg.tau.map(|t| sc.len(t)), p.measurement, "daps-tweedie")?;
    let device = p.prior.device().clone();
    let sig: Vec<f64> = sc.lens(annealing_sigmas(
        cfg.annealing_steps,
        cfg.sigma_max,
        cfg.sigma_min,
        cfg.rho,
        cfg.discretization,
    ));
    let mut x = (noise.randn(&x_shape.into(), &device)? * sc.len(cfg.sigma_max))?;
    let mut x0 = x.clone();
    for i in 0..cfg.annealing_steps {
        let s = sig[i];
        x0 = tweedie_step(p, lin, &x, s, tau, cfg, noise)?;
        check_finite(&x0, i, "Tweedie x0 step")?;
        obs.on_step(&StepInfo {
            step: i,
            steps: cfg.annealing_steps,
            sigma: s,
            x0hat: None,
            x0: &x0,
            misfit: mean_misfit(p.operator, p.measurement, &x0)?,
        })?;
        x = (&x0 + (noise.randn(x0.shape(), &device)? * sig[i + 1])?)?;
    }
    Ok(x0)
}

/// One draw of x0 ~ N(D(x_t), σ²J)·N(y; A x0, τ² I) by Matheron's rule.
fn tweedie_step(
    p: &Problem,
    lin: &dyn Linear,
    xt: &Tensor,
    s: f64,
    tau: f64,
    cfg: &DapsTweedieConfig,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let (m, pullback) = p.prior.denoise_vjp(&xt.detach(), s)?;
    // J v (= Jᵀv, the denoiser's VJP).
    let jac = |v: &Tensor| -> Result<Tensor> {
        pullback(v)
            .map_err(|e| Error::msg(format!("{}: no gradient reached x_t: {e}", p.prior.name())))
    };
    let xi = noise.randn(xt.shape(), xt.device())?;
    let xp = (&m + (lanczos_sqrt(&jac, &xi, cfg.lanczos_steps)? * s)?)?;
    let axp = lin.forward(&xp)?;
    let y = p.measurement.y.broadcast_as(axp.shape())?;
    let r = ((y + (noise.randn(axp.shape(), xt.device())? * tau)?)? - axp)?;
    let apply = |u: &Tensor| -> Result<Tensor> {
        let aju = lin.forward(&jac(&lin.adjoint(u)?)?)?;
        Ok(((aju * (s * s))? + (u * (tau * tau))?)?)
    };
    let opts = CgOptions {
        rtol: 1e-6,
        max_iter: cfg.cg_steps,
    };
    let u = cg(apply, &r, None, opts)?.x;
    Ok((xp + (jac(&lin.adjoint(&u)?)? * (s * s))?)?)
}

/// J^{1/2}ξ per chain by `k` Lanczos iterations with full reorthogonalisation: ‖ξ‖·Q f(T) e₁,
/// f = √ on T's eigenvalues (clipped at 0). A chain whose Krylov space is exhausted (β below
/// 1e-4 of the largest ‖J q_j‖, far above f32 round-off) stops there.
pub(crate) fn lanczos_sqrt(
    jac: &dyn Fn(&Tensor) -> Result<Tensor>,
    xi: &Tensor,
    k: usize,
) -> Result<Tensor> {
    let b = xi.dim(0)?;
    let beta0: Vec<f64> = chain_dots(xi, xi)?.into_iter().map(f64::sqrt).collect();
    let inv: Vec<f64> = beta0.iter().map(|v| 1.0 / v).collect();
    let mut qs = vec![xi.broadcast_mul(&chain_scalars(&inv, xi)?)?];
    let mut alpha = vec![vec![0.0; k]; b];
    let mut beta = vec![vec![0.0; k]; b];
    // Per chain, the largest ‖J q_j‖ so far: the scale that a breakdown is measured against.
    let mut jnorm = vec![0.0f64; b];
    for j in 0..k {
        let q = &qs[j];
        let mut w = jac(q)?;
        let a = chain_dots(q, &w)?;
        let wn = chain_dots(&w, &w)?;
        for c in 0..b {
            alpha[c][j] = a[c];
            jnorm[c] = jnorm[c].max(wn[c].sqrt());
        }
        if j + 1 == k {
            break;
        }
        // Classical Gram–Schmidt against every earlier vector, twice (f32).
        for _ in 0..2 {
            for qi in &qs {
                let dots = chain_dots(qi, &w)?;
                w = (w - qi.broadcast_mul(&chain_scalars(&dots, xi)?)?)?;
            }
        }
        let norms = chain_dots(&w, &w)?;
        let mut scale = vec![0.0; b];
        for c in 0..b {
            let nm = norms[c].sqrt();
            if nm > 1e-4 * jnorm[c] {
                beta[c][j + 1] = nm;
                scale[c] = 1.0 / nm;
            }
        }
        qs.push(w.broadcast_mul(&chain_scalars(&scale, xi)?)?);
    }
    let coef: Vec<Vec<f64>> = (0..b)
        .map(|c| {
            let t = DMatrix::from_fn(k, k, |r, col| {
                if r == col {
                    alpha[c][r]
                } else if r + 1 == col {
                    beta[c][col]
                } else if col + 1 == r {
                    beta[c][r]
                } else {
                    0.0
                }
            });
            let e = SymmetricEigen::new(t);
            let f = e.eigenvalues.map(|l| l.max(0.0).sqrt());
            let v = &e.eigenvectors;
            (0..k)
                .map(|r| beta0[c] * (0..k).map(|l| v[(r, l)] * f[l] * v[(0, l)]).sum::<f64>())
                .collect()
        })
        .collect();
    let mut out = xi.zeros_like()?;
    for (j, q) in qs.iter().enumerate() {
        let cj: Vec<f64> = coef.iter().map(|c| c[j]).collect();
        out = (out + q.broadcast_mul(&chain_scalars(&cj, xi)?)?)?;
    }
    Ok(out)
}
