//! PnP-DM (Wu et al., NeurIPS 2024): split Gibbs sampling of π(x, z) ∝ p(x)·N(z; x, ρ²I)·p(y|z)
//! with an annealed coupling ρ_k = max(ρ_0·decay^k, ρ_min). Each iteration:
//! 1. likelihood step z ~ p(z | x, y) ∝ N(z; x, ρ²)·N(y; A z, σ_y²): for a linear operator
//!    drawn exactly by perturb-and-solve with its prox, z = prox(x + ρε₁; y + σ_y ε₂, ρ²/σ_y²);
//!    otherwise unadjusted Langevin started at x;
//! 2. prior step x ~ p(x0 | x0 + ρε = z): the EDM reverse SDE from σ = ρ over the points of the
//!    EDM grid below ρ, x ← x + 2(σ − σ')(D(x, σ) − x)/σ + √(2σ(σ − σ'))ξ, no noise on the last step.
//!
//! At a fixed ρ with exact steps the x-marginal is the posterior for the inflated noise
//! σ_y² I + ρ² AAᵀ; it is exact only as ρ → 0. Output: x after the last iteration. ρ and the
//! grid are given at scale 1 (× the prior's scale).

use super::{check_finite, mean_misfit, Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::prior::Scale;
use crate::schedule::poly_grid;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PnpDmConfig {
    /// Gibbs iterations.
    pub iterations: usize,
    /// Coupling ρ_k = max(rho0·rho_decay^k, rho_min).
    pub rho0: f64,
    pub rho_decay: f64,
    pub rho_min: f64,
    /// The prior step's EDM grid: poly-7 from grid_sigma_max to grid_sigma_min.
    pub grid_steps: usize,
    pub grid_sigma_max: f64,
    pub grid_sigma_min: f64,
    /// Nonlinear operators: Langevin steps of the likelihood step and their size relative to
    /// (1/ρ² + 1/σ_y²)⁻¹.
    pub langevin_steps: usize,
    pub langevin_lr: f64,
}

impl Default for PnpDmConfig {
    /// Official `commands.sh` / `configs/sampler/pnp_edm.yaml` (deblurring, SR; σ_y 0.05): 100
    /// iterations, ρ 10 × 0.9^k down to 0.3, EDM grid of 100 points 80 → 0.002. Langevin: 100
    /// steps as the official phase-retrieval setting (its absolute γ = 1e-4 at σ_y = 0.01 is
    /// ≈ 1 in these units; 0.5 leaves room for ‖A‖ > 1).
    fn default() -> Self {
        Self {
            iterations: 100,
            rho0: 10.0,
            rho_decay: 0.9,
            rho_min: 0.3,
            grid_steps: 100,
            grid_sigma_max: 80.0,
            grid_sigma_min: 0.002,
            langevin_steps: 100,
            langevin_lr: 0.5,
        }
    }
}

impl PnpDmConfig {
    pub fn validate(&self) -> Result<()> {
        let max = super::daps::MAX_STEPS;
        for (name, v) in [
            ("iterations", self.iterations),
            ("grid_steps", self.grid_steps),
            ("langevin_steps", self.langevin_steps),
        ] {
            if !(1..=max).contains(&v) {
                return Err(Error::config(format!(
                    "pnp-dm: {name} must be in 1..={max}, got {v}"
                )));
            }
        }
        if !(self.rho_min > 0.0 && self.rho0 >= self.rho_min && self.rho0.is_finite()) {
            return Err(Error::config(format!(
                "pnp-dm: need 0 < rho_min ≤ rho0 < ∞, got {}, {}",
                self.rho_min, self.rho0
            )));
        }
        if !(self.rho_decay > 0.0 && self.rho_decay <= 1.0) {
            return Err(Error::config(format!(
                "pnp-dm: rho_decay must be in (0, 1], got {}",
                self.rho_decay
            )));
        }
        let (lo, hi) = (self.grid_sigma_min, self.grid_sigma_max);
        if !(lo > 0.0 && hi > lo && hi.is_finite()) {
            return Err(Error::config(format!(
                "pnp-dm: need 0 < grid_sigma_min < grid_sigma_max < ∞, got {}, {}",
                self.grid_sigma_min, self.grid_sigma_max
            )));
        }
        if !(self.langevin_lr.is_finite() && self.langevin_lr > 0.0) {
            return Err(Error::config(format!(
                "pnp-dm: langevin_lr must be finite and > 0, got {}",
                self.langevin_lr
            )));
        }
        Ok(())
    }

    /// ρ_k of iteration k.
    pub fn rho(&self, k: usize) -> f64 {
        (self.rho0 * self.rho_decay.powi(k as i32)).max(self.rho_min)
    }

    /// The prior step's levels for coupling ρ: ρ, then the grid points below it.
    pub fn prior_levels(&self, rho: f64) -> Vec<f64> {
        let grid = poly_grid(
            self.grid_sigma_max,
            self.grid_sigma_min,
            self.grid_steps,
            7.0,
        );
        std::iter::once(rho)
            .chain(grid.into_iter().filter(|&s| s < rho))
            .collect()
    }

    /// Network evaluations per chain (one per prior-step level but the last).
    pub fn nfe(&self) -> usize {
        (0..self.iterations)
            .map(|k| self.prior_levels(self.rho(k)).len() - 1)
            .sum()
    }
}

pub fn pnp_dm(
    p: &Problem,
    cfg: &PnpDmConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let sy = p.measurement.sigma_y;
    if !(sy.is_finite() && sy > 0.0) {
        return Err(Error::config(format!(
            "pnp-dm needs measurement noise σ_y > 0, got {sy}"
        )));
    }
    let sc = Scale::of(p.prior)?;
    let dev = p.prior.device().clone();
    let mut yshape = p.measurement.y.dims().to_vec();
    yshape[0] = x_shape[0];
    let y = p.measurement.y.broadcast_as(yshape)?.contiguous()?;
    let mut x = (noise.randn(&x_shape.into(), &dev)? * sc.len(cfg.rho0))?;
    for k in 0..cfg.iterations {
        let rho = sc.len(cfg.rho(k));
        let mut z = match p.operator.as_linear() {
            Some(lin) => {
                let zp = (&x + (noise.randn(x.shape(), &dev)? * rho)?)?;
                let yp = (&y + (noise.randn(y.shape(), &dev)? * sy)?)?;
                lin.prox(&zp, &yp, (rho / sy).powi(2))?
            }
            None => {
                let gamma = cfg.langevin_lr / (1.0 / (rho * rho) + 1.0 / (sy * sy));
                let mut z = x.clone();
                for _ in 0..cfg.langevin_steps {
                    let g = (p.measurement.residual_vjp(p.operator, &z)? / (sy * sy))?;
                    let grad = (g + ((&z - &x)? / (rho * rho))?)?;
                    let xi = noise.randn(z.shape(), &dev)?;
                    z = ((z - (grad * gamma)?)? + (xi * (2.0 * gamma).sqrt())?)?;
                }
                z
            }
        };
        let levels: Vec<f64> = sc.lens(cfg.prior_levels(cfg.rho(k)));
        let mut d = z.clone();
        for (j, w) in levels.windows(2).enumerate() {
            let (s, s1) = (w[0], w[1]);
            d = p.prior.denoise(&z, s)?;
            z = (&z + ((&d - &z)? * (2.0 * (s - s1) / s))?)?;
            if j + 2 < levels.len() {
                z = (z + (noise.randn(d.shape(), &dev)? * (2.0 * s * (s - s1)).sqrt())?)?;
            }
        }
        x = z;
        check_finite(&x, k, "PnP-DM iteration")?;
        obs.on_step(&StepInfo {
            step: k,
            steps: cfg.iterations,
            sigma: rho,
            x0hat: Some(&d),
            x0: &x,
            misfit: mean_misfit(p.operator, p.measurement, &x)?,
        })?;
    }
    Ok(x)
}
