//! MCGdiff (Cardoso et al., ICLR 2024): a particle filter over the prior's reverse chain for a
//! linear-Gaussian y, exact as the particles grow (for the discretised chain).
//!
//! In the SVD basis, ȳ_i = (Uᵀy)_i/s_i = x0_i + τ_i·ε with τ_i = σ_y/s_i: coordinate i of the
//! noised x at level τ_i. Above τ_i a particle is twisted by N(x_i; ȳ_i, σ² − τ_i²); at the first
//! grid level σ_k ≤ τ_i by the exact N(ȳ_i; x_i, τ_i² − σ_k²) (the forward chain from σ_k to τ_i);
//! below, the coordinate runs free. Each step draws the locally optimal proposal (the DDPM step
//! times the twist, per coordinate) after resampling by its predictive weight. Output: one
//! particle per chain, drawn by the final weights (particle 0 after the last resampling).

use super::particles::{self as smc, Spectrum};
use super::{Observer, Problem};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::prior::Scale;
use crate::schedule::{annealing_sigmas, Discretization};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McgdiffConfig {
    /// Reverse steps (network evaluations per particle).
    pub steps: usize,
    /// Particles per output sample.
    pub particles: usize,
    /// Poly-ρ grid from σ_max to σ_min, then 0 (× the prior's scale).
    pub sigma_max: f64,
    pub sigma_min: f64,
    pub rho: f64,
    /// DDIM η of the prior's reverse step (1: ancestral DDPM).
    pub eta: f64,
    /// Variance floor of the twists, relative to τ_i².
    pub kappa: f64,
}

impl Default for McgdiffConfig {
    /// Official `default.yaml` (64 particles, κ 1e-4) and `ddim_100.yaml` (100 steps, η 1);
    /// grid as InverseBench's `mcgdiff.yaml` (poly-7, 100 → 0.01).
    fn default() -> Self {
        Self {
            steps: 100,
            particles: 64,
            sigma_max: 100.0,
            sigma_min: 0.01,
            rho: 7.0,
            eta: 1.0,
            kappa: 1e-4,
        }
    }
}

/// Checks the grid shared by the particle filters; the error names the field.
pub(crate) fn check_grid(
    method: &str,
    steps: usize,
    sigma_max: f64,
    sigma_min: f64,
    rho: f64,
) -> Result<()> {
    let max = super::daps::MAX_STEPS;
    if !(1..=max).contains(&steps) {
        return Err(Error::config(format!(
            "{method}: steps must be in 1..={max}, got {steps}"
        )));
    }
    if !(sigma_min > 0.0 && sigma_max > sigma_min && sigma_max.is_finite()) {
        return Err(Error::config(format!(
            "{method}: need 0 < sigma_min < sigma_max < ∞, got {sigma_min}, {sigma_max}"
        )));
    }
    if !(rho.is_finite() && rho > 0.0) {
        return Err(Error::config(format!(
            "{method}: rho must be finite and > 0, got {rho}"
        )));
    }
    Ok(())
}

impl McgdiffConfig {
    pub fn validate(&self) -> Result<()> {
        check_grid(
            "mcgdiff",
            self.steps,
            self.sigma_max,
            self.sigma_min,
            self.rho,
        )?;
        smc::check_particles("mcgdiff", self.particles, 1.0)?;
        if !(0.0..=1.0).contains(&self.eta) {
            return Err(Error::config(format!(
                "mcgdiff: eta must be in [0, 1], got {}",
                self.eta
            )));
        }
        if !(self.kappa.is_finite() && self.kappa > 0.0) {
            return Err(Error::config(format!(
                "mcgdiff: kappa must be finite and > 0, got {}",
                self.kappa
            )));
        }
        Ok(())
    }
}

/// A `[1, r]` f32 row.
fn row(v: &[f64], device: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Ok(Tensor::from_vec(v.clone(), (1, v.len()), device)?)
}

pub fn mcgdiff(
    p: &Problem,
    cfg: &McgdiffConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let sy = p.measurement.sigma_y;
    smc::check_particles("mcgdiff", cfg.particles, sy)?;
    let spec = Spectrum::of(p, "mcgdiff")?;
    let dev = p.prior.device().clone();
    let (b, n) = (x_shape[0], cfg.particles);
    let mut pshape = x_shape.to_vec();
    pshape[0] = b * n;
    let tau: Vec<f64> = spec.singular_values().iter().map(|s| sy / s).collect();
    let sc = Scale::of(p.prior)?;
    let grid: Vec<f64> = sc.lens(annealing_sigmas(
        cfg.steps,
        cfg.sigma_max,
        cfg.sigma_min,
        cfg.rho,
        Discretization::Legacy,
    ));
    // Coordinate i is twisted at levels 0..=last[i] (the grid ends at 0 ≤ τ_i).
    let last: Vec<usize> = tau
        .iter()
        .map(|t| grid.iter().position(|g| g <= t).unwrap_or(grid.len() - 1))
        .collect();
    let var =
        |k: usize, i: usize| (grid[k].powi(2) - tau[i].powi(2)).abs() + cfg.kappa * tau[i].powi(2);
    let active = |k: usize, i: usize| k <= last[i];
    let ybar = smc::y_per_particle(&spec.ybar(&p.measurement.y)?, b, n)?;
    let y_shape = p.measurement.y.dims().to_vec();
    let mut x = (noise.randn(&pshape.as_slice().into(), &dev)? * grid[0])?;
    for k in 0..cfg.steps {
        let (s, s1) = (grid[k], grid[k + 1]);
        let d = p.prior.denoise(&x, s)?;
        let c = cfg.eta * s1 * (1.0 - (s1 / s).powi(2)).max(0.0).sqrt();
        let m = (&d + ((&x - &d)? * ((s1 * s1 - c * c).max(0.0).sqrt() / s))?)?;
        // Predictive log-weight: Σ_{active at k+1} log N(ȳ; m, c² + v') − Σ_{active at k} log g_k(x).
        let r = tau.len();
        let prec_next: Vec<f64> = (0..r)
            .map(|i| {
                if active(k + 1, i) {
                    1.0 / (c * c + var(k + 1, i))
                } else {
                    0.0
                }
            })
            .collect();
        let mc = spec.coords(&m)?;
        let mut logw = ybar
            .broadcast_sub(&mc)?
            .sqr()?
            .broadcast_mul(&row(&prec_next, &dev)?)?
            .sum(1)?
            .affine(-0.5, 0.0)?;
        if k > 0 {
            let prec: Vec<f64> = (0..r)
                .map(|i| if active(k, i) { 1.0 / var(k, i) } else { 0.0 })
                .collect();
            let cur = spec
                .coords(&x)?
                .broadcast_sub(&ybar)?
                .sqr()?
                .broadcast_mul(&row(&prec, &dev)?)?
                .sum(1)?;
            logw = (logw + cur.affine(0.5, 0.0)?)?;
        }
        let idx = smc::resample(&logw, n, noise, &dev)?;
        let (m, mc) = (m.index_select(&idx, 0)?, mc.index_select(&idx, 0)?);
        // Proposal: N(m, c²) times the twist N(ȳ; ·, v') on each active coordinate.
        let z = noise.randn(&pshape.as_slice().into(), &dev)?;
        let gain: Vec<f64> = (0..r)
            .map(|i| {
                if active(k + 1, i) {
                    c * c * prec_next[i]
                } else {
                    0.0
                }
            })
            .collect();
        let sd: Vec<f64> = (0..r)
            .map(|i| {
                if active(k + 1, i) {
                    (gain[i] * var(k + 1, i)).sqrt() - c
                } else {
                    0.0
                }
            })
            .collect();
        let corr = (ybar.broadcast_sub(&mc)?.broadcast_mul(&row(&gain, &dev)?)?
            + spec.coords(&z)?.broadcast_mul(&row(&sd, &dev)?)?)?;
        x = ((m + (z * c)?)? + spec.lift(&corr, &pshape, &y_shape)?)?;
        smc::report(p, obs, (k, cfg.steps, s), "MCGdiff step", &d, &x, n)?;
    }
    smc::first_of_groups(&x, n)
}
