//! RED-diff (Mardani et al., ICLR 2024): variational inference with a point mass at μ, Adam on
//! λ·(μ − D(μ + σ_t ε, σ_t))/d + v·Aᵀ(Aμ − y)/d_y (d, d_y: sizes of a sample and of its
//! measurement; the official loss's means) over DDPM noise levels t = 1000 − 1000/N, …, 0.
//!
//! Start μ = A⁺y for a linear operator, else 0. Adam's step is `lr`·σ_d and its ε 1e-8·σ_d
//! (σ_d = 1 × the prior's [`Scale`]) and the noise levels are × the scale, so the update scales
//! with the data. Any operator (VJP of A only);
//! no gradient through the denoiser. The output is μ: a point estimate, no posterior spread.

use super::{check_finite, check_range, mean_misfit};
use super::{Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::prior::Scale;
use crate::schedule::ddpm_sigmas;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedDiffConfig {
    /// Denoiser calls (at most 1000: the levels are DDPM's).
    pub steps: usize,
    /// Adam step size, in units of the data scale.
    pub lr: f64,
    /// λ: weight of the denoiser's regulariser.
    pub lambda: f64,
    /// v: weight of the data term.
    pub obs_weight: f64,
}

impl Default for RedDiffConfig {
    /// Official `_configs/algo/reddiff.yaml` (λ 0.25, v 1, lr 0.1, 'linear' weighting) with
    /// `sample_batch.sh`'s 1000 steps.
    fn default() -> Self {
        Self {
            steps: 1000,
            lr: 0.1,
            lambda: 0.25,
            obs_weight: 1.0,
        }
    }
}

impl RedDiffConfig {
    pub fn validate(&self) -> Result<()> {
        if !(1..=1000).contains(&self.steps) {
            return Err(Error::config(format!(
                "steps must be in 1..=1000 (DDPM's levels), got {}",
                self.steps
            )));
        }
        check_range("lr", self.lr, f64::MIN_POSITIVE, f64::MAX)?;
        check_range("lambda", self.lambda, 0.0, f64::MAX)?;
        check_range("obs_weight", self.obs_weight, 0.0, f64::MAX)
    }

    /// σ(t) for t = 1000 − skip, …, skip, 0 (skip = 1000/steps).
    pub fn sigmas(&self) -> Vec<f64> {
        let table = ddpm_sigmas();
        let skip = 1000 / self.steps;
        (0..self.steps)
            .rev()
            .map(|k| table[(k * skip).min(999)])
            .collect()
    }
}

pub fn red_diff(
    p: &Problem,
    cfg: &RedDiffConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let device = p.prior.device().clone();
    let sc = Scale::of(p.prior)?;
    let sd = sc.len(1.0);
    let eps0 = noise.randn(&x_shape.into(), &device)?;
    let mut mu = match p.operator.as_linear() {
        Some(lin) => lin
            .pinv(&p.measurement.y.to_dtype(eps0.dtype())?)?
            .broadcast_as(x_shape)?
            .contiguous()?,
        None => eps0.zeros_like()?,
    };
    let d = mu.elem_count() / x_shape[0];
    let dy = p.measurement.y.elem_count() / p.measurement.y.dim(0)?;
    let (b1, b2) = (0.9f64, 0.99f64);
    let mut m1 = mu.zeros_like()?;
    let mut m2 = mu.zeros_like()?;
    let sig: Vec<f64> = sc.lens(cfg.sigmas());
    for (k, &s) in sig.iter().enumerate() {
        let e = if k == 0 {
            eps0.clone()
        } else {
            noise.randn(mu.shape(), &device)?
        };
        let den = p.prior.denoise(&(&mu + (e * s)?)?, s)?;
        let g_data = p
            .measurement
            .residual_vjp(p.operator, &mu)?
            .to_dtype(mu.dtype())?;
        let g = (((&mu - &den)? * (cfg.lambda / d as f64))?
            + (g_data * (cfg.obs_weight / dy as f64))?)?;
        m1 = ((m1 * b1)? + (&g * (1.0 - b1))?)?;
        m2 = ((m2 * b2)? + (g.sqr()? * (1.0 - b2))?)?;
        let t = (k + 1) as i32;
        let mhat = (&m1 / (1.0 - b1.powi(t)))?;
        let vhat = (&m2 / (1.0 - b2.powi(t)))?;
        let step = (mhat / ((vhat.sqrt()? + 1e-8 * sd)?))?;
        mu = (&mu - (step * (cfg.lr * sd))?)?;
        check_finite(&mu, k, "RED-diff step")?;
        obs.on_step(&StepInfo {
            step: k,
            steps: cfg.steps,
            sigma: s,
            x0hat: Some(&den),
            x0: &mu,
            misfit: mean_misfit(p.operator, p.measurement, &mu)?,
        })?;
    }
    Ok(mu)
}
