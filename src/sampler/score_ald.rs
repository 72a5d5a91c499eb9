//! Score-ALD (Jalal et al., NeurIPS 2021): annealed Langevin dynamics on the prior score plus
//! the likelihood score, at geometric noise levels σ_1 > … > σ_L:
//! x ← x + α_i·[s(x, σ_i) − Aᵀ(A x − y)/(σ_y² + σ_i²)] + √(2α_i)·ξ, α_i = lr·σ_i²,
//! with the paper's annealed likelihood weight 1/(σ_y² + σ_i²) (the official MRI code instead
//! rescales the data gradient to a multiple of the score's norm, which is not Bayesian). Any
//! differentiable operator (Jᵀ from its VJP). Output: the state after the last level.

use super::{check_finite, mean_misfit, Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::prior::Scale;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreAldConfig {
    /// Noise levels, geometric from σ_max to σ_min (× the prior's scale).
    pub levels: usize,
    /// Langevin steps per level (network evaluations per level).
    pub steps_each: usize,
    /// Step size relative to the level: α_i = lr·σ_i².
    pub lr: f64,
    pub sigma_max: f64,
    pub sigma_min: f64,
}

impl Default for ScoreAldConfig {
    /// Official NCSNv2 settings: 3 steps per level, ε = 3e-5 at σ_L = 0.0066 (lr = ε/σ_L² ≈ 0.69);
    /// the official 1156 levels (from σ ≈ 1.23) rounded to 1000 over the EDM range 100 → 0.01.
    fn default() -> Self {
        Self {
            levels: 1000,
            steps_each: 3,
            lr: 0.69,
            sigma_max: 100.0,
            sigma_min: 0.01,
        }
    }
}

impl ScoreAldConfig {
    pub fn validate(&self) -> Result<()> {
        let max = super::daps::MAX_STEPS;
        if !(1..=max).contains(&self.levels) || !(1..=max).contains(&self.steps_each) {
            return Err(Error::config(format!(
                "score-ald: levels and steps_each must be in 1..={max}, got {} and {}",
                self.levels, self.steps_each
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config(format!(
                "score-ald: lr must be finite and > 0, got {}",
                self.lr
            )));
        }
        if !(self.sigma_min > 0.0 && self.sigma_max >= self.sigma_min && self.sigma_max.is_finite())
        {
            return Err(Error::config(format!(
                "score-ald: need 0 < sigma_min ≤ sigma_max < ∞, got {}, {}",
                self.sigma_min, self.sigma_max
            )));
        }
        Ok(())
    }

    /// The levels σ_1 > … > σ_L.
    pub fn sigmas(&self) -> Vec<f64> {
        let n = self.levels;
        let r = if n > 1 {
            (self.sigma_min / self.sigma_max).powf(1.0 / (n - 1) as f64)
        } else {
            1.0
        };
        (0..n).map(|i| self.sigma_max * r.powi(i as i32)).collect()
    }
}

pub fn score_ald(
    p: &Problem,
    cfg: &ScoreAldConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let dev = p.prior.device().clone();
    let sc = Scale::of(p.prior)?;
    let sigmas: Vec<f64> = sc.lens(cfg.sigmas());
    let s2y = p.measurement.sigma_y.powi(2);
    let mut x = (noise.randn(&x_shape.into(), &dev)? * sigmas[0])?;
    for (i, &s) in sigmas.iter().enumerate() {
        let alpha = cfg.lr * s * s;
        let mut d = x.clone();
        for _ in 0..cfg.steps_each {
            d = p.prior.denoise(&x, s)?;
            let g = p.measurement.residual_vjp(p.operator, &x)?;
            let drift = ((&d - &x)? / (s * s))?.sub(&(g / (s2y + s * s))?)?;
            let xi = noise.randn(x.shape(), &dev)?;
            x = ((&x + (drift * alpha)?)? + (xi * (2.0 * alpha).sqrt())?)?;
        }
        check_finite(&x, i, "Score-ALD level")?;
        obs.on_step(&StepInfo {
            step: i,
            steps: sigmas.len(),
            sigma: s,
            x0hat: Some(&d),
            x0: &x,
            misfit: mean_misfit(p.operator, p.measurement, &x)?,
        })?;
    }
    Ok(x)
}
