//! EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1 without churn): draws
//! from the prior itself, no measurement (`daps sample`, training previews).

use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::prior::Denoiser;
use crate::schedule::poly_grid;
use candle_core::{Device, Tensor};

/// EDM's time steps: `steps` levels from σ_max to σ_min, equally spaced in σ^(1/ρ).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdmGrid {
    pub steps: usize,
    pub sigma_max: f64,
    pub sigma_min: f64,
    pub rho: f64,
}

impl EdmGrid {
    /// σ_max 80, σ_min 0.002, ρ 7.
    pub fn new(steps: usize) -> Self {
        Self {
            steps,
            sigma_max: 80.0,
            sigma_min: 0.002,
            rho: 7.0,
        }
    }

    /// The `steps` levels followed by 0.
    pub fn sigmas(&self) -> Vec<f64> {
        let mut s = poly_grid(self.sigma_max, self.sigma_min, self.steps, self.rho);
        s.push(0.0);
        s
    }

    /// Denoiser calls of [`heun_sample`]: 2·steps − 1.
    pub fn nfe(&self) -> usize {
        (2 * self.steps).saturating_sub(1)
    }
}

/// EDM's deterministic Heun sampler (Algorithm 1, no churn): x ~ N(0, σ_max²), then
/// Euler steps with a second-order correction except on the last step to σ = 0.
pub fn heun_sample(
    prior: &dyn Denoiser,
    shape: &[usize],
    grid: &EdmGrid,
    noise: &mut dyn NoiseSource,
    device: &Device,
) -> Result<Tensor> {
    if grid.steps == 0 || !(grid.sigma_max > grid.sigma_min && grid.sigma_min > 0.0) {
        return Err(Error::config(
            "sampler: need ≥ 1 step and σ_max > σ_min > 0",
        ));
    }
    let sig = grid.sigmas();
    let mut x = (noise.randn(&shape.into(), device)? * sig[0])?;
    for w in sig.windows(2) {
        let (s, s_next) = (w[0], w[1]);
        let d = ((&x - prior.denoise(&x, s)?)? / s)?;
        let x_next = (&x + (&d * (s_next - s))?)?;
        x = if s_next > 0.0 {
            let d2 = ((&x_next - prior.denoise(&x_next, s_next)?)? / s_next)?;
            (&x + ((d + d2)? * (0.5 * (s_next - s)))?)?
        } else {
            x_next
        };
    }
    Ok(x)
}
