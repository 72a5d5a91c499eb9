//! DDNM+ (Wang et al., ICLR 2023), the simplified form of its README: range-null-space
//! decomposition with the pseudo-inverse, x̂0ᶜ = x̂0 − λ·A⁺(A x̂0 − y), then re-noise to σ′.
//!
//! λ = 1 where σ′ ≥ σ_y, else σ′/σ_y; the re-noising has total standard deviation
//! γ = √(σ′² − λ²σ_y²), split as γ(√(1−η²)·ε̂ + η·z) with the denoiser's ε̂ = (x − x̂0)/σ.
//! σ_y = 0 gives the original DDNM. Needs a closed-form A⁺ (operators with an SVD).

use super::{check_finite, check_grid, check_range, mean_misfit, svd_of};
use super::{Observer, Problem, StepInfo};
use crate::error::Result;
use crate::noise::NoiseSource;
use crate::prior::Scale;
use crate::schedule::geometric_grid;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DdnmConfig {
    /// Denoiser calls, on a geometric σ grid from `sigma_max` to `sigma_min`, then 0.
    pub steps: usize,
    /// Noise fraction η of the re-noising.
    pub eta: f64,
    pub sigma_max: f64,
    pub sigma_min: f64,
}

impl Default for DdnmConfig {
    /// Official `configs/*.yml`: 100 steps, η 0.85, no time travel; InverseBench's geometric
    /// grid 100 → 0.01 (the official 100 DDPM steps span σ 143.8 → 0.01).
    fn default() -> Self {
        Self {
            steps: 100,
            eta: 0.85,
            sigma_max: 100.0,
            sigma_min: 0.01,
        }
    }
}

impl DdnmConfig {
    pub fn validate(&self) -> Result<()> {
        check_grid(self.steps, self.sigma_max, self.sigma_min)?;
        check_range("eta", self.eta, 0.0, 1.0)
    }
}

pub fn ddnm(
    p: &Problem,
    cfg: &DdnmConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    svd_of(p, "ddnm")?;
    // Invariant: an operator with an SVD is linear.
    let lin = p.operator.as_linear().expect("an SVD implies Linear");
    let device = p.prior.device().clone();
    let sy = p.measurement.sigma_y;
    let sc = Scale::of(p.prior)?;
    let mut sig = geometric_grid(sc.len(cfg.sigma_max), sc.len(cfg.sigma_min), cfg.steps);
    sig.push(0.0);
    let mut x = (noise.randn(&x_shape.into(), &device)? * sig[0])?;
    for i in 0..cfg.steps {
        let (sg, sn) = (sig[i], sig[i + 1]);
        let x0 = p.prior.denoise(&x, sg)?;
        let eps = ((&x - &x0)? / sg)?;
        let lam = if sn >= sy { 1.0 } else { sn / sy };
        let r = p.measurement.residual(p.operator, &x0)?;
        let x0c = (&x0 - (lin.pinv(&r)? * lam)?)?;
        let gamma = (sn * sn - (lam * sy).powi(2)).max(0.0).sqrt();
        let z = noise.randn(x.shape(), &device)?;
        let e = cfg.eta;
        x = (&x0c + ((eps * (1.0 - e * e).sqrt())? + (z * e)?)? * gamma)?;
        check_finite(&x, i, "DDNM step")?;
        obs.on_step(&StepInfo {
            step: i,
            steps: cfg.steps,
            sigma: sg,
            x0hat: Some(&x0),
            x0: &x0c,
            misfit: mean_misfit(p.operator, p.measurement, &x0c)?,
        })?;
    }
    Ok(x)
}
