//! LatentDAPS (Zhang et al., CVPR 2025, §4.3; official `sampler.py` `LatentDAPS`, main branch):
//! the DAPS loop on the latent z of a latent diffusion prior, with the operator A∘decode
//! ([`Decoded`]), an HMC x0 step, and the data gradient ∇Σ(A(decode z) − y)² clamped elementwise
//! to [−c, c] (c = 1) before dividing by τ². Starts from noise; returns decode(z) of the last
//! x0 sample. Every step is computed in the reference's order (fixture README
//! `latent_daps_loop/`), so a replay of its random draws reproduces it.

use super::{check_finite, Divergence, Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::operator::Operator;
use crate::prior::latent::LatentPrior;
use crate::prior::{Denoiser, Scale};
use crate::schedule::{annealing_sigmas, lr_multiplier, ode_sigmas, Discretization};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatentDapsConfig {
    /// N, the number of annealing levels.
    pub annealing_steps: usize,
    pub sigma_max: f64,
    pub sigma_min: f64,
    pub rho: f64,
    /// M, Euler steps of the inner PF-ODE.
    pub ode_steps: usize,
    pub sigma_min_ode: f64,
    /// HMC steps per level, step size η (h = √η), its final ratio, momentum m.
    pub mcmc_steps: usize,
    pub lr: f64,
    pub lr_min_ratio: f64,
    pub momentum: f64,
    pub tau: f64,
    /// The elementwise bound on the latent data gradient.
    pub grad_clamp: f64,
}

impl Default for LatentDapsConfig {
    /// The official LatentDAPS-100 (`latent_edm_daps.yaml`: 50 levels × 2 Euler steps, σ 10 → 0.1,
    /// ODE to 0.001) with the HMC settings of the `ldm` block of `down_sampling.yaml`.
    fn default() -> Self {
        Self {
            annealing_steps: 50,
            sigma_max: 10.0,
            sigma_min: 0.1,
            rho: 7.0,
            ode_steps: 2,
            sigma_min_ode: 0.001,
            mcmc_steps: 24,
            lr: 1.35e-4,
            lr_min_ratio: 0.023,
            momentum: 0.86,
            tau: 0.01,
            grad_clamp: 1.0,
        }
    }
}

impl LatentDapsConfig {
    pub fn validate(&self) -> Result<()> {
        super::check_grid(self.annealing_steps, self.sigma_max, self.sigma_min)?;
        let max = super::daps::MAX_STEPS;
        for (name, v) in [
            ("ode_steps", self.ode_steps),
            ("mcmc_steps", self.mcmc_steps),
        ] {
            if !(1..=max).contains(&v) {
                return Err(Error::config(format!(
                    "{name} must be in 1..={max}, got {v}"
                )));
            }
        }
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::config(format!(
                    "{name} must be finite and > 0, got {v}"
                )))
            }
        };
        pos("rho", self.rho)?;
        pos("lr", self.lr)?;
        pos("tau", self.tau)?;
        pos("grad_clamp", self.grad_clamp)?;
        pos("sigma_min_ode", self.sigma_min_ode)?;
        if self.sigma_min_ode >= self.sigma_max {
            return Err(Error::config("sigma_min_ode must be < sigma_max"));
        }
        super::check_range("lr_min_ratio", self.lr_min_ratio, 0.0, 1.0)?;
        super::check_range("momentum", self.momentum, 0.0, 1.0)
    }

    pub fn nfe(&self) -> usize {
        self.annealing_steps * self.ode_steps
    }
}

/// The latent prior of `p`, or an error naming what latent-daps needs.
pub fn latent_of<'a>(p: &Problem<'a>) -> Result<&'a dyn LatentPrior> {
    p.prior.as_latent().ok_or_else(|| {
        Error::config(format!(
            "latent-daps needs a latent diffusion prior (--prior ldm:CKPT:CONFIG.yaml); {} is a \
             pixel-space prior",
            p.prior.name()
        ))
    })
}

/// x̂0: Euler steps of the PF-ODE along `grid`, as the reference writes them:
/// s = (D − x)/t², x ← x + (t' − t)·(−(t·s)), with t in f32.
pub fn ode_estimate(prior: &dyn Denoiser, z: &Tensor, grid: &[f64]) -> Result<Tensor> {
    let mut x = z.clone();
    for w in grid.windows(2) {
        let (t, tn) = (w[0] as f32, w[1] as f32);
        let d = prior.denoise(&x, t as f64)?;
        let s = ((d - &x)? / (t * t) as f64)?;
        let drift = (s * t as f64)?.neg()?;
        x = (&x + (drift * (tn - t) as f64)?)?;
    }
    Ok(x)
}

/// clamp(∇_z Σ(A(decode z) − y)², −c, c) per chain (the gradient passes the quantiser straight
/// through); also returns the unclamped gradient. This is the VJP of
/// [`crate::prior::latent::Decoded`], with one decoder pass shared by the residual and the VJP.
pub fn data_gradient(
    lat: &dyn LatentPrior,
    op: &dyn Operator,
    m: &crate::operator::Measurement,
    z: &Tensor,
    c: f64,
) -> Result<(Tensor, Tensor)> {
    let (x, pullback) = lat.decode_with_pullback(z)?;
    let r = m.residual(op, &x)?;
    let g = pullback(&op.vjp(&x, &(r * 2.0)?)?)?;
    let clamped = g.clamp(-c as f32, c as f32)?;
    Ok((g, clamped))
}

/// The HMC target's score −g/τ² + (z_t − x)/σ² + (ẑ0 − z_t)/σ², summed in that order
/// (`prior` is the last term, fixed over a level).
pub fn hmc_score(
    g: &Tensor,
    tau: f64,
    zt: &Tensor,
    x: &Tensor,
    sigma: f64,
    prior: &Tensor,
) -> Result<Tensor> {
    let data = (g.neg()? / (tau * tau))?;
    let xt = ((zt - x)? / (sigma * sigma))?;
    Ok(((data + xt)? + prior)?)
}

/// Runs LatentDAPS for `x_shape[0]` chains of images `x_shape[1..]` and returns the final
/// latents (decode them for the images: [`latent_daps`]).
pub fn latent_daps_z(
    p: &Problem,
    cfg: &LatentDapsConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let lat = latent_of(p)?;
    let mut z_shape = vec![x_shape[0]];
    z_shape.extend(lat.latent_shape(&x_shape[1..])?);
    let device = p.prior.device().clone();
    let sc = Scale::of(p.prior)?;
    let n = cfg.annealing_steps;
    let disc = Discretization::Main;
    let sig = sc.lens(annealing_sigmas(
        n,
        cfg.sigma_max,
        cfg.sigma_min,
        cfg.rho,
        disc,
    ));
    let tau = sc.len(cfg.tau);
    let mut guard = Divergence::new(p, sc);
    let m = cfg.momentum;
    let sd = (2.0 * (1.0 - m)).sqrt();
    let mut z = (noise.randn(&z_shape.as_slice().into(), &device)? * sig[0])?;
    for i in 0..n {
        let sigma = sig[i];
        let grid = ode_sigmas(
            cfg.ode_steps,
            sigma,
            sc.len(cfg.sigma_min_ode),
            cfg.rho,
            disc,
        );
        let z0hat = ode_estimate(p.prior, &z, &grid)?;
        check_finite(&z0hat, i, "PF-ODE estimate ẑ0")?;
        let h = (sc.sq(cfg.lr) * lr_multiplier(i, n, cfg.lr_min_ratio, disc)).sqrt();
        let prior = ((&z0hat - &z)? / (sigma * sigma))?;
        let mut x = z0hat.clone();
        let mut v = noise.randn(x.shape(), &device)?;
        for _ in 0..cfg.mcmc_steps {
            let (_, g) = data_gradient(lat, p.operator, p.measurement, &x, cfg.grad_clamp)?;
            let score = hmc_score(&g, tau, &z, &x, sigma, &prior)?;
            let eps = noise.randn(x.shape(), &device)?;
            v = (((v * m)? + (score * h)?)? + (eps * sd)?)?;
            x = (&x + (&v * h)?)?;
        }
        check_finite(&x, i, "HMC x0 step")?;
        let x0hat_img = lat.decode(&z0hat)?;
        let x0_img = lat.decode(&x)?;
        let misfit = guard.check(&x0_img, sigma, i, "HMC x0 step")?;
        obs.on_step(&StepInfo {
            step: i,
            steps: n,
            sigma,
            x0hat: Some(&x0hat_img),
            x0: &x0_img,
            misfit,
        })?;
        let eps = noise.randn(x.shape(), &device)?;
        z = (&x + (eps * sig[i + 1])?)?;
    }
    Ok(z)
}

/// LatentDAPS: decode of [`latent_daps_z`], images `x_shape`.
pub fn latent_daps(
    p: &Problem,
    cfg: &LatentDapsConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    let z = latent_daps_z(p, cfg, x_shape, noise, obs)?;
    latent_of(p)?.decode(&z)
}
