//! DPS (Chung et al., ICLR 2023): DDPM ancestral sampling with a measurement-gradient step
//! x ← x − ζ·∇_x ‖y − A(x̂0(x))‖, the gradient taken through the denoiser.
//!
//! The state lives in VP space (x = √ᾱ·x_EDM); the EDM denoiser is called at σ = √((1−ᾱ)/ᾱ).
//! Each chain's norm is its own (the official code takes one norm over the whole batch).

use super::{check_finite, per_piece, Divergence, Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::prior::Scale;
use crate::schedule::VpSchedule;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpsConfig {
    /// Number of DDPM steps (= network evaluations), respaced from the 1000-step schedule.
    pub steps: usize,
    /// Step size ζ on the gradient of the residual norm, in units of the prior's scale s
    /// (the step is ζ·s). [`DpsConfig::with_steps`] keeps ζ·steps, the total guidance.
    pub zeta: f64,
    /// Clip x̂0 to c half-widths about the centre of the prior's data range before the
    /// ancestral step ([−c, c] for images in [−1, 1]; presets: 1).
    pub clip: Option<f64>,
}

impl Default for DpsConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            zeta: 1.0,
            clip: None,
        }
    }
}

impl DpsConfig {
    /// Checks every field against its valid range; the error names the field and the range.
    pub fn validate(&self) -> Result<()> {
        let max = super::daps::MAX_STEPS;
        if !(1..=max).contains(&self.steps) {
            return Err(Error::config(format!(
                "steps must be in 1..={max}, got {}",
                self.steps
            )));
        }
        if !(self.zeta.is_finite() && self.zeta >= 0.0) {
            return Err(Error::config(format!(
                "zeta must be finite and ≥ 0, got {}",
                self.zeta
            )));
        }
        if let Some(c) = self.clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::config(format!(
                    "clip must be finite and > 0, got {c}"
                )));
            }
        }
        Ok(())
    }

    /// The same total guidance over `steps` steps: ζ scaled by old steps / new steps.
    pub fn with_steps(&self, steps: usize) -> Self {
        Self {
            steps,
            zeta: self.zeta * self.steps as f64 / steps.max(1) as f64,
            clip: self.clip,
        }
    }
}

pub fn dps(
    p: &Problem,
    cfg: &DpsConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let device = p.prior.device().clone();
    let sc = Scale::of(p.prior)?;
    let (centre, radius) = sc.centre_radius();
    let vp = VpSchedule::ddpm_linear(cfg.steps);
    let n = vp.alpha_bar.len();
    let mut guard = Divergence::new(p, sc);
    // The VP state of data scaled by s is s times that of the unit-scale data.
    let mut x = (noise.randn(&x_shape.into(), &device)? * sc.len(1.0))?;
    for k in 0..n {
        let ab = vp.alpha_bar[k];
        let ab_prev = if k + 1 < n { vp.alpha_bar[k + 1] } else { 1.0 };
        let sigma = sc.len(vp.sigma(k));
        let (x0d, g) = per_piece(p, &x, |part, xs| guidance(part, xs, ab, sigma))?;
        let mut x0c = x0d.clone();
        if let Some(c) = cfg.clip {
            let (lo, hi) = (centre - c * radius, centre + c * radius);
            x0c = x0c.clamp(lo as f32, hi as f32)?;
        }
        // q(x_prev | x, x̂0) of the respaced chain.
        let alpha = ab / ab_prev;
        let beta = 1.0 - alpha;
        let c0 = ab_prev.sqrt() * beta / (1.0 - ab);
        let ct = alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab);
        let var = beta * (1.0 - ab_prev) / (1.0 - ab);
        let mut next = (x0c.affine(c0, 0.0)? + x.affine(ct, 0.0)?)?;
        if k + 1 < n {
            next = (next
                + noise
                    .randn(x.shape(), &device)?
                    .affine(sc.len(var.sqrt()), 0.0)?)?;
        }
        // ∇‖y − A(x̂0)‖ is dimensionless: the step is ζ·s.
        x = (next - g.affine(sc.len(cfg.zeta), 0.0)?)?.detach();
        check_finite(&x, k, "DPS step")?;
        let misfit = guard.check(&x0d, 0.0, k, "DPS x̂0")?;
        obs.on_step(&StepInfo {
            step: k,
            steps: n,
            sigma,
            x0hat: Some(&x0d),
            x0: &x,
            misfit,
        })?;
    }
    Ok(x)
}

/// x̂0 = D(x/√ᾱ, σ) and ∇_x Σ_b ‖A(x̂0_b) − y_b‖ = J_Dᵀ · J_Aᵀ r/‖r‖ (J_Aᵀ from the operator's
/// own VJP), for the chains of `x`.
pub(crate) fn guidance(p: &Problem, x: &Tensor, ab: f64, sigma: f64) -> Result<(Tensor, Tensor)> {
    let (x0d, pullback) = p
        .prior
        .denoise_vjp(&x.affine(1.0 / ab.sqrt(), 0.0)?, sigma)?;
    let r = p.measurement.residual(p.operator, &x0d)?;
    let b = r.dim(0)?;
    let norms = crate::operator::per_chain_sq_norm(&r)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    let mut nshape = vec![b];
    nshape.extend(std::iter::repeat_n(1, r.rank() - 1));
    let unit = r.broadcast_div(&norms.reshape(nshape)?)?;
    let v = p.operator.vjp(&x0d, &unit)?;
    // x̂0 = D(x/√ᾱ): the chain rule's 1/√ᾱ.
    let g = pullback(&v)
        .map_err(|e| {
            Error::msg(format!(
                "DPS: no gradient through the prior {}: {e}",
                p.prior.name()
            ))
        })?
        .affine(1.0 / ab.sqrt(), 0.0)?;
    Ok((x0d, g))
}
