//! DDNM+ (Wang et al., ICLR 2023), the simplified form of its README: range-null-space
//! decomposition with the pseudo-inverse, x̂0ᶜ = x̂0 − λ·A⁺(A x̂0 − y), then re-noise to σ′.
//!
//! λ = 1 where σ′ ≥ σ_y, else σ′/σ_y; the re-noising has total standard deviation
//! γ = √(σ′² − λ²σ_y²), split as γ(√(1−η²)·ε̂ + η·z) with the denoiser's ε̂ = (x − x̂0)/σ.
//! σ_y = 0 gives the original DDNM. Needs a closed-form A⁺ (operators with an SVD).
//!
//! Time travel (RePaint's jump schedule, DDNM's `travel_length` l and `travel_repeat` r): every
//! l levels the state is re-noised l levels up, x ← x + √(σ_up² − σ²)·z, and denoised down again,
//! r − 1 times. l = r = 1 (the official configs) is off.

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
    /// Time travel: jump length l and repeats r (1, 1 = off).
    pub travel_length: usize,
    pub travel_repeat: usize,
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
            travel_length: 1,
            travel_repeat: 1,
        }
    }
}

impl DdnmConfig {
    pub fn validate(&self) -> Result<()> {
        check_grid(self.steps, self.sigma_max, self.sigma_min)?;
        if self.travel_length == 0 || self.travel_repeat == 0 || self.travel_length >= self.steps {
            return Err(crate::Error::config(format!(
                "ddnm: travel_length must be in 1..steps and travel_repeat ≥ 1, got {} and {}",
                self.travel_length, self.travel_repeat
            )));
        }
        check_range("eta", self.eta, 0.0, 1.0)
    }

    /// Denoiser calls: the steps plus the re-done ones.
    pub fn nfe(&self) -> usize {
        travel_schedule(self.steps, self.travel_length, self.travel_repeat).len() - 1 - self.jumps()
    }

    fn jumps(&self) -> usize {
        let s = travel_schedule(self.steps, self.travel_length, self.travel_repeat);
        s.windows(2).filter(|w| w[1] < w[0]).count()
    }
}

/// The grid indices visited (0 = σ_max, `steps` = σ 0): RePaint's `get_schedule_jump` with
/// DDNM's time t = steps − 1 − index; a step to a smaller index is a jump up.
pub fn travel_schedule(steps: usize, length: usize, repeat: usize) -> Vec<usize> {
    let (n, l) = (steps as i64, length as i64);
    let mut left: std::collections::HashMap<i64, usize> = (0..(n - l).max(0))
        .step_by(length.max(1))
        .map(|j| (j, repeat - 1))
        .collect();
    let mut t = n;
    let mut ts = vec![n];
    while t >= 1 {
        t -= 1;
        ts.push(t);
        if let Some(k) = left.get_mut(&t).filter(|k| **k > 0) {
            *k -= 1;
            for _ in 0..l {
                t += 1;
                ts.push(t);
            }
        }
    }
    ts.push(-1);
    // ts runs from t = steps (before the first step: index 0 is t = steps − 1) down to −1.
    ts[1..].iter().map(|&t| (n - 1 - t) as usize).collect()
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
    let path = travel_schedule(cfg.steps, cfg.travel_length, cfg.travel_repeat);
    let calls = cfg.nfe();
    let mut call = 0;
    for w in path.windows(2) {
        let (i, j) = (w[0], w[1]);
        if j < i {
            // Time travel: forward diffusion from σ_i up to σ_j.
            let up = (sig[j] * sig[j] - sig[i] * sig[i]).max(0.0).sqrt();
            x = (&x + (noise.randn(x.shape(), &device)? * up)?)?;
            continue;
        }
        let (sg, sn) = (sig[i], sig[j]);
        let x0 = p.prior.denoise(&x, sg)?;
        let eps = ((&x - &x0)? / sg)?;
        let lam = if sn >= sy { 1.0 } else { sn / sy };
        let r = p.measurement.residual(p.operator, &x0)?;
        let x0c = (&x0 - (lin.pinv(&r)? * lam)?)?;
        let gamma = (sn * sn - (lam * sy).powi(2)).max(0.0).sqrt();
        let z = noise.randn(x.shape(), &device)?;
        let e = cfg.eta;
        x = (&x0c + ((eps * (1.0 - e * e).sqrt())? + (z * e)?)? * gamma)?;
        check_finite(&x, call, "DDNM step")?;
        obs.on_step(&StepInfo {
            step: call,
            steps: calls,
            sigma: sg,
            x0hat: Some(&x0),
            x0: &x0c,
            misfit: mean_misfit(p.operator, p.measurement, &x0c)?,
        })?;
        call += 1;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn travel_schedule_is_repaints() {
        assert_eq!(travel_schedule(4, 1, 1), vec![0, 1, 2, 3, 4]);
        // RePaint get_schedule_jump(6, ·, 2, 2) = 5 4 3 2 1 0 1 2 1 0 −1 … in t: jumps at t = 0, 2.
        let s = travel_schedule(6, 2, 2);
        let t: Vec<i64> = s.iter().map(|&i| 5 - i as i64).collect();
        assert_eq!(t, vec![5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]);
        let c = DdnmConfig {
            steps: 6,
            travel_length: 2,
            travel_repeat: 2,
            ..DdnmConfig::default()
        };
        assert_eq!(c.nfe(), 10);
    }
}
