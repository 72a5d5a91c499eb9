//! DiffPIR (Zhu et al., CVPRW 2023): denoise, solve the data proximal problem around x̂0, re-noise.
//!
//! On the official quadratic grid of DDPM noise levels σ_0 = 157.4 > … > σ_N = 0.01 (N = steps):
//! × the prior's scale; x̂0 = D(x, σ_i); x̂0ᶜ = argmin_z ½‖Az − y‖² + (ρ_i/2)‖z − x̂0‖², ρ_i = λσ_y²/(4σ_i²) (the
//! official σ_n is in [0, 1] units, σ_y/2 here; both scale with the data);
//! x ← x̂0ᶜ + σ_{i+1}(√(1−ζ)·ε̂ + √ζ·z), ε̂ = (x − x̂0ᶜ)/σ_i. σ_y = 0: x̂0ᶜ = x̂0 − A⁺(A x̂0 − y).
//! The output is the last state (σ_N, no final denoising). Any linear operator (its prox).

use super::{check_finite, check_range, linear_of, mean_misfit};
use super::{Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::prior::Scale;
use crate::schedule::ddpm_sigmas;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffpirConfig {
    /// Denoiser calls (at most 1000: the grid is DDPM's).
    pub steps: usize,
    /// λ: weight of the prior in the data proximal step.
    pub lambda: f64,
    /// ζ: fraction of fresh noise in the re-noising.
    pub zeta: f64,
}

impl Default for DiffpirConfig {
    /// Official `configs/deblur.yaml`: 100 steps, λ 1, ζ 0.1.
    fn default() -> Self {
        Self {
            steps: 100,
            lambda: 1.0,
            zeta: 0.1,
        }
    }
}

impl DiffpirConfig {
    pub fn validate(&self) -> Result<()> {
        if !(1..=1000).contains(&self.steps) {
            return Err(Error::config(format!(
                "steps must be in 1..=1000 (DDPM's grid), got {}",
                self.steps
            )));
        }
        check_range("lambda", self.lambda, f64::MIN_POSITIVE, f64::MAX)?;
        check_range("zeta", self.zeta, 0.0, 1.0)
    }

    /// σ(t_i), t_i = 999 − min(⌊1000·√(i/N)⌋, 999), i = 0..=N.
    pub fn sigmas(&self) -> Vec<f64> {
        let table = ddpm_sigmas();
        let n = self.steps as f64;
        (0..=self.steps)
            .map(|i| {
                let seq = ((1000.0 * (i as f64 / n).sqrt()).floor() as usize).min(999);
                table[999 - seq]
            })
            .collect()
    }
}

pub fn diffpir(
    p: &Problem,
    cfg: &DiffpirConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let lin = linear_of(p, "diffpir")?;
    let device = p.prior.device().clone();
    let sy = p.measurement.sigma_y;
    let sc = Scale::of(p.prior)?;
    let sig: Vec<f64> = sc.lens(cfg.sigmas());
    let mut x = (noise.randn(&x_shape.into(), &device)? * sig[0])?;
    for i in 0..cfg.steps {
        let (sg, sn) = (sig[i], sig[i + 1]);
        let x0 = p.prior.denoise(&x, sg)?;
        let x0c = if sy > 0.0 {
            let rho = cfg.lambda * sy * sy / (4.0 * sg * sg);
            lin.prox(&x0, &p.measurement.y, 1.0 / rho)?
        } else {
            (&x0 - lin.pinv(&p.measurement.residual(p.operator, &x0)?)?)?
        }
        .to_dtype(x.dtype())?;
        let eps = ((&x - &x0c)? / sg)?;
        let z = noise.randn(x.shape(), &device)?;
        let fresh = ((eps * (1.0 - cfg.zeta).sqrt())? + (z * cfg.zeta.sqrt())?)?;
        x = (&x0c + (fresh * sn)?)?;
        check_finite(&x, i, "DiffPIR step")?;
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
