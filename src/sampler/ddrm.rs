//! DDRM (Kawar et al., NeurIPS 2022): DDIM-like steps in the spectral basis of A = U diag(s) Vᵀ,
//! each coordinate x̄ = Vᵀx moved towards ȳ = (Uᵀy)/s (noise σ_y/s) or left to the prior.
//!
//! Step σ → σ′ with x̄0 = Vᵀ D(V x̄, σ), ε̄ = (x̄ − x̄0)/σ, z ~ N(0, I), per coordinate:
//! s = 0: x̄0 + √(1−η²)σ′ε̄ + ησ′z; sσ′ < σ_y: x̄0 + √(1−η²)(σ′s/σ_y)(ȳ − x̄0) + ησ′z;
//! sσ′ ≥ σ_y: η_b ȳ + (1−η_b)x̄0 + √(σ′² − η_b²σ_y²/s²) z. Start: ȳ + √(σ_T² − σ_y²/s²) z where
//! sσ_T > σ_y, else σ_T z. Every rule is in units of σ and σ_y; the grid is × the prior's scale.

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
pub struct DdrmConfig {
    /// Denoiser calls, on a geometric σ grid from `sigma_max` to `sigma_min`, then 0.
    pub steps: usize,
    /// η (noise fraction, DDRM's η = η_A = η_C).
    pub eta: f64,
    /// η_b: weight of ȳ on coordinates measured with less noise than σ′.
    pub eta_b: f64,
    pub sigma_max: f64,
    pub sigma_min: f64,
}

impl Default for DdrmConfig {
    /// Official `main.py` η 0.85, η_b 1 and README 20 steps; the grid is InverseBench's
    /// geometric 100 → 0.01 (the official 20 DDPM steps span σ 97.1 → 0.01).
    fn default() -> Self {
        Self {
            steps: 20,
            eta: 0.85,
            eta_b: 1.0,
            sigma_max: 100.0,
            sigma_min: 0.01,
        }
    }
}

impl DdrmConfig {
    pub fn validate(&self) -> Result<()> {
        check_grid(self.steps, self.sigma_max, self.sigma_min)?;
        check_range("eta", self.eta, 0.0, 1.0)?;
        check_range("eta_b", self.eta_b, 0.0, 1.0)
    }

    /// σ_0 > … > σ_{N−1}, then 0.
    pub fn sigmas(&self) -> Vec<f64> {
        let mut s = geometric_grid(self.sigma_max, self.sigma_min, self.steps);
        s.push(0.0);
        s
    }
}

/// Per-coordinate values as a `[1, ...sample]` tensor in `like`'s dtype.
fn coef(v: &[f64], like: &Tensor) -> Result<Tensor> {
    let mut dims = like.dims().to_vec();
    dims[0] = 1;
    Ok(Tensor::from_vec(v.to_vec(), dims, like.device())?.to_dtype(like.dtype())?)
}

pub fn ddrm(
    p: &Problem,
    cfg: &DdrmConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let svd = svd_of(p, "ddrm")?;
    let sc = Scale::of(p.prior)?;
    let device = p.prior.device().clone();
    let s = svd.singular_values(&x_shape[1..])?;
    let sy = p.measurement.sigma_y;
    let z = noise.randn(&x_shape.into(), &device)?;
    let inv_s: Vec<f64> = s
        .iter()
        .map(|&v| if v > 0.0 { 1.0 / v } else { 0.0 })
        .collect();
    let ty = svd.project_y(&p.measurement.y.to_dtype(z.dtype())?)?;
    let ybar = ty.broadcast_mul(&coef(&inv_s, &z)?)?;
    let sig: Vec<f64> = sc.lens(cfg.sigmas());
    let st = sig[0];
    let (ay, az): (Vec<f64>, Vec<f64>) = s
        .iter()
        .map(|&si| {
            if si * st > sy {
                (1.0, (st * st - (sy / si).powi(2)).sqrt())
            } else {
                (0.0, st)
            }
        })
        .unzip();
    let mut xbar = ybar
        .broadcast_mul(&coef(&ay, &z)?)?
        .broadcast_add(&z.broadcast_mul(&coef(&az, &z)?)?)?;
    let mut x = svd.apply_v(&xbar)?;
    let (eta, eb) = (cfg.eta, cfg.eta_b);
    for i in 0..cfg.steps {
        let (sg, sn) = (sig[i], sig[i + 1]);
        let x0 = p.prior.denoise(&x, sg)?;
        let x0bar = svd.apply_vt(&x0)?;
        let eps = ((&xbar - &x0bar)? / sg)?;
        // x̄′ = c0·x̄0 + ce·ε̄ + cy·ȳ + cz·z, per coordinate.
        let mut c = [vec![], vec![], vec![], vec![]];
        for &si in &s {
            let r = if si == 0.0 {
                [1.0, (1.0 - eta * eta).sqrt() * sn, 0.0, eta * sn]
            } else if si * sn < sy {
                let w = (1.0 - eta * eta).sqrt() * sn * si / sy;
                [1.0 - w, 0.0, w, eta * sn]
            } else {
                let v = (sn * sn - (eb * sy / si).powi(2)).max(0.0);
                [1.0 - eb, 0.0, eb, v.sqrt()]
            };
            for (ck, rk) in c.iter_mut().zip(r) {
                ck.push(rk);
            }
        }
        let z = noise.randn(xbar.shape(), &device)?;
        xbar = (x0bar.broadcast_mul(&coef(&c[0], &z)?)?
            + eps.broadcast_mul(&coef(&c[1], &z)?)?
            + ybar
                .broadcast_mul(&coef(&c[2], &z)?)?
                .broadcast_as(z.shape())?
            + z.broadcast_mul(&coef(&c[3], &z)?)?)?;
        check_finite(&xbar, i, "DDRM step")?;
        x = svd.apply_v(&xbar)?;
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
