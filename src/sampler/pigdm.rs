//! ΠGDM (Song et al., ICLR 2023): DDIM steps plus pseudo-inverse guidance through the denoiser,
//! x′ = DDIM(x, x̂0) + w·J_Dᵀ v with v = Aᵀ(AAᵀ + (σ_y²/r²) I)⁻¹(y − A x̂0) and
//! r² = σ²σ_d²/(σ² + σ_d²) (σ_d = 1 × the prior's [`Scale`]; the σ grid scales too).
//!
//! v comes from the operator's prox: (AᵀA + I/γ)⁻¹Aᵀ(y − A x̂0) = prox(x̂0, y, γ) − x̂0 with
//! γ = r²/σ_y² (closed forms or CG); σ_y = 0 gives v = A⁺(y − A x̂0). DDIM with η (convention B):
//! x′ = x̂0 + √(σ′² − c²)·ε̂ + c·z, c = η σ′ √(1 − σ′²/σ²). Any linear operator.

use super::{check_finite, check_grid, check_range, linear_of, mean_misfit, per_piece};
use super::{Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::prior::Scale;
use crate::schedule::geometric_grid;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PigdmConfig {
    /// Denoiser calls (each with a backward pass), on a geometric σ grid, then 0.
    pub steps: usize,
    /// DDIM η (0: deterministic).
    pub eta: f64,
    /// Weight w of the guidance J_Dᵀv.
    pub weight: f64,
    pub sigma_max: f64,
    pub sigma_min: f64,
}

impl Default for PigdmConfig {
    /// RED-diff's `_configs/algo/pgdm.yaml`: η 0, weight 1 (= w in EDM coordinates);
    /// InverseBench's 100 steps on a geometric grid 100 → 0.01.
    fn default() -> Self {
        Self {
            steps: 100,
            eta: 0.0,
            weight: 1.0,
            sigma_max: 100.0,
            sigma_min: 0.01,
        }
    }
}

impl PigdmConfig {
    pub fn validate(&self) -> Result<()> {
        check_grid(self.steps, self.sigma_max, self.sigma_min)?;
        check_range("eta", self.eta, 0.0, 1.0)?;
        check_range("weight", self.weight, 0.0, f64::MAX)
    }
}

pub fn pigdm(
    p: &Problem,
    cfg: &PigdmConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    linear_of(p, "pigdm")?;
    let device = p.prior.device().clone();
    let sc = Scale::of(p.prior)?;
    let mut sig = geometric_grid(sc.len(cfg.sigma_max), sc.len(cfg.sigma_min), cfg.steps);
    sig.push(0.0);
    let mut x = (noise.randn(&x_shape.into(), &device)? * sig[0])?;
    for i in 0..cfg.steps {
        let (sg, sn) = (sig[i], sig[i + 1]);
        let (x0, g) = per_piece(p, &x, |part, xs| guidance(part, xs, sg, sc.len(1.0)))?;
        let eps = ((&x - &x0)? / sg)?;
        let c = cfg.eta * sn * (1.0 - (sn / sg).powi(2)).max(0.0).sqrt();
        let z = noise.randn(x.shape(), &device)?;
        let ddim = (&x0 + (eps * (sn * sn - c * c).max(0.0).sqrt())? + (z * c)?)?;
        x = (ddim + (g * cfg.weight)?)?;
        check_finite(&x, i, "ΠGDM step")?;
        obs.on_step(&StepInfo {
            step: i,
            steps: cfg.steps,
            sigma: sg,
            x0hat: Some(&x0),
            x0: &x,
            misfit: mean_misfit(p.operator, p.measurement, &x0)?,
        })?;
    }
    Ok(x)
}

/// x̂0 = D(x, σ) and J_Dᵀ v for the chains of `x` (`sd`: σ_d).
fn guidance(p: &Problem, x: &Tensor, sigma: f64, sd: f64) -> Result<(Tensor, Tensor)> {
    let lin = linear_of(p, "pigdm")?;
    let (x0, pullback) = p.prior.denoise_vjp(x, sigma)?;
    let sy = p.measurement.sigma_y;
    let v = if sy > 0.0 {
        let r2 = sigma * sigma * sd * sd / (sigma * sigma + sd * sd);
        (lin.prox(&x0, &p.measurement.y, r2 / (sy * sy))? - &x0)?
    } else {
        lin.pinv(&p.measurement.residual(p.operator, &x0)?)?.neg()?
    };
    let g = pullback(&v.to_dtype(x0.dtype())?).map_err(|e| {
        Error::msg(format!(
            "ΠGDM: no gradient through the prior {}: {e}",
            p.prior.name()
        ))
    })?;
    Ok((x0, g))
}
