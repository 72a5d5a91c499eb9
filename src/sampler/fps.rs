//! FPS-SMC (Dou & Song, ICLR 2024): filtering posterior sampling. A noised copy of y runs down
//! the same noise levels as x (the "y-bridge", y_k ≈ A x_k + σ_y·n); at each level the particles
//! take the prior's DDIM step (noise fraction c) times N(y_k; A x, σ_y²), drawn exactly by
//! perturb-and-solve with the operator's prox, after resampling by the predictive weight
//! N(y_k; A m, σ_y² I + v AAᵀ). Output: particle 0 after the last resampling (one drawn by the
//! final weights).
//!
//! The weight's quadratic form is the minimum of the prox problem:
//! rᵀ(σ_y² I + v AAᵀ)⁻¹r = min_x ‖A x − y‖²/σ_y² + ‖x − m‖²/v, attained at μ = prox(m, y, v/σ_y²).
//! Differences from the official code: x̂0 is not clipped (no data-unit constant), the bridge
//! starts at y + σ_0·A ε (official: σ_0·A ε), and x_0 ~ N(0, σ_0²) is conditioned on it exactly.

use super::mcgdiff::check_grid;
use super::particles::{self as smc, Spectrum};
use super::{Observer, Problem};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::operator::per_chain_sq_norm;
use crate::prior::Scale;
use crate::schedule::{annealing_sigmas, Discretization};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FpsConfig {
    /// Reverse steps (network evaluations per particle).
    pub steps: usize,
    /// Particles per output sample.
    pub particles: usize,
    /// Noise fraction c of the DDIM step (x' = x̂0 + √(1−c)·σ'·ε̂ + √c·σ'·z).
    pub c_rate: f64,
    /// Poly-ρ grid from σ_max to σ_min, then 0 (× the prior's scale).
    pub sigma_max: f64,
    pub sigma_min: f64,
    pub rho: f64,
}

impl Default for FpsConfig {
    /// Official `sample_condition.py`: M = 5 particles, c_rate 0.95, 1000 steps.
    fn default() -> Self {
        Self {
            steps: 1000,
            particles: 5,
            c_rate: 0.95,
            sigma_max: 100.0,
            sigma_min: 0.01,
            rho: 7.0,
        }
    }
}

impl FpsConfig {
    pub fn validate(&self) -> Result<()> {
        check_grid("fps", self.steps, self.sigma_max, self.sigma_min, self.rho)?;
        smc::check_particles("fps", self.particles, 1.0)?;
        if !(self.c_rate > 0.0 && self.c_rate <= 1.0) {
            return Err(Error::config(format!(
                "fps: c_rate must be in (0, 1], got {}",
                self.c_rate
            )));
        }
        Ok(())
    }
}

pub fn fps(
    p: &Problem,
    cfg: &FpsConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let sy = p.measurement.sigma_y;
    smc::check_particles("fps", cfg.particles, sy)?;
    Spectrum::of(p, "fps")?;
    let lin = p.operator.as_linear().ok_or_else(|| {
        Error::Unsupported(format!(
            "fps needs a linear operator; {} is not",
            p.operator.name()
        ))
    })?;
    let dev = p.prior.device().clone();
    let (b, n, c) = (x_shape[0], cfg.particles, cfg.c_rate);
    let mut pshape = x_shape.to_vec();
    pshape[0] = b * n;
    let sc = Scale::of(p.prior)?;
    let grid: Vec<f64> = sc.lens(annealing_sigmas(
        cfg.steps,
        cfg.sigma_max,
        cfg.sigma_min,
        cfg.rho,
        Discretization::Legacy,
    ));
    let mut yshape = p.measurement.y.dims().to_vec();
    yshape[0] = b;
    let y = p
        .measurement
        .y
        .to_dtype(candle_core::DType::F32)?
        .broadcast_as(yshape)?
        .contiguous()?;
    let a_noise = |noise: &mut dyn NoiseSource| -> Result<Tensor> {
        p.operator.forward(&noise.randn(&x_shape.into(), &dev)?)
    };
    // The bridge at level 0, and x_0 ~ N(0, σ_0²) conditioned on it.
    let mut yk = (&y + (a_noise(noise)? * grid[0])?)?;
    let perturbed = |noise: &mut dyn NoiseSource, sd: f64, yk: &Tensor| -> Result<Tensor> {
        let z = (noise.randn(&pshape.as_slice().into(), &dev)? * sd)?;
        let e = (noise.randn(yk.shape(), &dev)? * sy)?;
        lin.prox(&z, &e, sd * sd / (sy * sy))
    };
    let mut x = (perturbed(noise, grid[0], &smc::expand(&yk, n)?)?
        + lin.prox(
            &Tensor::zeros(pshape.as_slice(), candle_core::DType::F32, &dev)?,
            &smc::expand(&yk, n)?,
            (grid[0] / sy).powi(2),
        )?)?;
    for k in 0..cfg.steps {
        let (s, s1) = (grid[k], grid[k + 1]);
        // y_{k+1} = y + √(1−c)(σ'/σ)(y_k − y) + √c·σ'·A ε.
        yk = ((&y + ((&yk - &y)? * ((1.0 - c).sqrt() * s1 / s))?)?
            + (a_noise(noise)? * (c.sqrt() * s1))?)?;
        let ykp = smc::expand(&yk, n)?;
        let d = p.prior.denoise(&x, s)?;
        let m = (&d + ((&x - &d)? * ((1.0 - c).sqrt() * s1 / s))?)?;
        let v = c * s1 * s1;
        let mu = if v > 0.0 {
            lin.prox(&m, &ykp, v / (sy * sy))?
        } else {
            m.clone()
        };
        let mut quad = per_chain_sq_norm(&p.operator.forward(&mu)?.broadcast_sub(&ykp)?)?
            .affine(1.0 / (sy * sy), 0.0)?;
        if v > 0.0 {
            quad = (quad + per_chain_sq_norm(&(&mu - &m)?)?.affine(1.0 / v, 0.0)?)?;
        }
        let idx = smc::resample(&quad.affine(-0.5, 0.0)?, n, noise, &dev)?;
        x = mu.index_select(&idx, 0)?;
        if v > 0.0 {
            x = (x + perturbed(noise, v.sqrt(), &ykp)?)?;
        }
        smc::report(p, obs, (k, cfg.steps, s), "FPS step", &d, &x, n)?;
    }
    smc::first_of_groups(&x, n)
}
