//! ReSample (Song et al., ICLR 2024; official `ldm/models/diffusion/ddim.py`): latent DDIM (η 0)
//! with DPS-style guidance z′ −= ζ_t·∇_z‖y − A(Dec ẑ0)‖, ζ_t = `guidance`·ᾱ_t; every `skip` steps
//! of the later two thirds, a look-ahead of `lookahead` DDIM network calls to ẑ0, hard data
//! consistency (middle third: AdamW on x from Dec ẑ0, then Enc; last third: AdamW on z through
//! the decoder) and stochastic resampling of z′ around the result; a final latent optimisation.
//!
//! EDM form (baselines.md §1): z = z_VP/√ᾱ, σ² = (1 − ᾱ)/ᾱ, over PSLD's σ grid; DDIM
//! z′ = ẑ0 + σ′ε̂; the VP step z′ −= ζ_t g becomes z′ −= ζ_t√((1+σ²)(1+σ′²))·g. The resampling
//! z′_VP ~ N((γ√ᾱ′ẑ0(y) + (1−ᾱ′)z′_VP)/(γ + 1−ᾱ′), (1/γ + 1/(1−ᾱ′))⁻¹), γ = `gamma`·(1−ᾱ′)/(1−ᾱ)
//! ·(1 − ᾱ/ᾱ′), divided by √ᾱ′, is the product of N(ẑ0(y), σ′²) (ẑ0(y) noised to σ′) and
//! N(z′, v), v = γ/ᾱ′ = γ(1+σ′²): z′ ~ N((v·ẑ0(y) + σ′²z′)/(v + σ′²), vσ′²/(v + σ′²)).
//!
//! Unlike the official code: ẑ0 is Tweedie's D(z, σ) (its `pseudo_x0` removes only √(1−ᾱ) of
//! the noise), the look-ahead's ᾱ's follow the network's σ (the code's lag one step), norms and
//! stopping rules are per chain, and the optimisations stop at an RMS residual `tol` (default
//! σ_y: the code's eps 1e-3 "needs tuning according to noise level").

use super::psld::{ddim_sigmas, through_prior, unit_rows};
use super::{check_finite, check_range, Divergence, Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::operator::per_chain_sq_norm;
use crate::prior::latent::LatentPrior;
use crate::prior::Scale;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResampleConfig {
    /// DDIM steps (network evaluations, each with one VJP through D and the decoder).
    pub steps: usize,
    /// ζ_t = guidance·ᾱ_t, the VP step on ‖y − A(Dec ẑ0)‖.
    pub guidance: f64,
    /// ReSample at the official step indices n − 1 − k that are multiples of `skip`.
    pub skip: usize,
    /// Network evaluations of each look-ahead.
    pub lookahead: usize,
    /// γ = gamma·(1−ᾱ′)/(1−ᾱ)·(1 − ᾱ/ᾱ′), the VP variance given to the unconditional z′.
    pub gamma: f64,
    /// AdamW step size of the pixel optimisation (image units) and its iteration cap.
    pub pixel_lr: f64,
    pub pixel_iters: usize,
    /// AdamW step size of the latent optimisations (latent units × the prior's scale), its cap,
    /// and the window after which a chain whose loss rose over the window stops.
    pub latent_lr: f64,
    pub latent_iters: usize,
    pub patience: usize,
    /// AdamW's decoupled weight decay (per step: × (1 − lr·weight_decay), lr at unit scale).
    pub weight_decay: f64,
    /// RMS residual ‖A x − y‖/√dim y at which a chain's optimisation stops (units of y); unset:
    /// σ_y, the noise level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tol: Option<f64>,
}

impl Default for ResampleConfig {
    /// The official code: 500 DDIM steps (`sample_condition.py` --ddim_steps); ζ_t = 0.5·ᾱ_t
    /// (`resample_sampling`, `scale=a_t*.5`; the task configs' `scale` is never read); skip 10
    /// (`index % 10`); 5 look-ahead calls (`inter_timesteps = 5`); γ's factor 40; pixel AdamW lr
    /// 1e-2 ≤ 2000 iterations (`pixel_optimization`); latent AdamW lr 5e-3 ≤ 500 iterations,
    /// window 200 (`latent_optimization`); weight decay 0.01 (torch AdamW's default).
    fn default() -> Self {
        Self {
            steps: 500,
            guidance: 0.5,
            skip: 10,
            lookahead: 5,
            gamma: 40.0,
            pixel_lr: 1e-2,
            pixel_iters: 2000,
            latent_lr: 5e-3,
            latent_iters: 500,
            patience: 200,
            weight_decay: 0.01,
            tol: None,
        }
    }
}

/// Where ReSample enforces consistency.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Pixel,
    Latent,
}

impl ResampleConfig {
    pub fn validate(&self) -> Result<()> {
        let max = super::daps::MAX_STEPS;
        if !(1..=max).contains(&self.steps) {
            return Err(Error::config(format!(
                "steps must be in 1..={max}, got {}",
                self.steps
            )));
        }
        for (name, v) in [
            ("skip", self.skip),
            ("lookahead", self.lookahead),
            ("patience", self.patience),
        ] {
            if v == 0 {
                return Err(Error::config(format!("{name} must be ≥ 1, got 0")));
            }
        }
        for (name, v) in [
            ("guidance", self.guidance),
            ("gamma", self.gamma),
            ("pixel_lr", self.pixel_lr),
            ("latent_lr", self.latent_lr),
            ("weight_decay", self.weight_decay),
            ("tol", self.tol.unwrap_or(0.0)),
        ] {
            check_range(name, v, 0.0, f64::MAX)?;
        }
        if self.gamma == 0.0 {
            return Err(Error::config("gamma must be > 0 (the resampling variance)"));
        }
        Ok(())
    }

    /// The stage and look-ahead calls of step k (0 = noisiest), if it resamples: official
    /// index i = n − 1 − k with 0 < i ≤ n − ⌊n/3⌋ and i % skip = 0; pixel for i ≥ ⌊n/3⌋.
    fn resample_at(&self, k: usize) -> Option<(Stage, usize)> {
        let n = self.steps;
        let i = n - 1 - k;
        let split = n / 3;
        if i == 0 || i > n - split || !i.is_multiple_of(self.skip) {
            return None;
        }
        let stage = if i >= split {
            Stage::Pixel
        } else {
            Stage::Latent
        };
        Some((stage, self.lookahead.min(i)))
    }

    /// Network evaluations per chain: the DDIM steps and the look-aheads (decoder and encoder
    /// passes of the optimisations stop early and are not counted).
    pub fn nfe(&self) -> usize {
        self.steps
            + (0..self.steps)
                .filter_map(|k| self.resample_at(k))
                .map(|(_, calls)| calls)
                .sum::<usize>()
    }

    /// How many steps resample in the pixel and in the latent stage.
    fn resample_counts(&self) -> (usize, usize) {
        let stages: Vec<Stage> = (0..self.steps)
            .filter_map(|k| self.resample_at(k).map(|(s, _)| s))
            .collect();
        let pixel = stages.iter().filter(|s| **s == Stage::Pixel).count();
        (pixel, stages.len() - pixel)
    }

    pub fn describe(&self) -> String {
        let (np, nl) = self.resample_counts();
        format!(
            "{} DDIM steps (+VJP through D and decoder) + {} look-ahead NFE, ζ {}·ᾱ, ReSample every \
             {} ({np} pixel: AdamW lr {} ≤{} it. + encoder; {nl} + 1 latent: lr {} ≤{} it., window \
             {}; decoder pass + VJP each), γ factor {}, tol {}",
            self.steps,
            self.nfe() - self.steps,
            self.guidance,
            self.skip,
            self.pixel_lr,
            self.pixel_iters,
            self.latent_lr,
            self.latent_iters,
            self.patience,
            self.gamma,
            self.tol.map_or("σ_y".to_string(), |t| t.to_string()),
        )
    }
}

/// The latent prior ReSample needs, or an error naming what is missing.
pub fn resample_prior<'a>(p: &Problem<'a>) -> Result<&'a dyn LatentPrior> {
    p.prior.as_latent().ok_or_else(|| {
        Error::config(format!(
            "resample needs a latent diffusion prior (ldm:… or sd:…); {} is a pixel-space prior",
            p.prior.name()
        ))
    })
}

pub fn resample(
    p: &Problem,
    cfg: &ResampleConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let lat = resample_prior(p)?;
    let mut z_shape = vec![x_shape[0]];
    z_shape.extend(lat.latent_shape(&x_shape[1..])?);
    let device = p.prior.device().clone();
    let sc = Scale::of(p.prior)?;
    let tol = cfg.tol.unwrap_or(p.measurement.sigma_y);
    let unit = ddim_sigmas(p, sc, cfg.steps);
    let n = cfg.steps;
    let (op, m) = (p.operator, p.measurement);
    // ‖A x − y‖²'s residual and gradient Jᵀr in pixels, and through the decoder in latents.
    let pixel = |x: &Tensor| -> Result<(Tensor, Tensor)> {
        let r = m.residual(op, x)?;
        let g = op.vjp(x, &r)?;
        Ok((r, g))
    };
    let latent = |z: &Tensor| -> Result<(Tensor, Tensor)> {
        let (x, pullback) = lat.decode_with_pullback(z)?;
        let r = m.residual(op, &x)?;
        let g = pullback(&op.vjp(&x, &r)?)?;
        Ok((r, g))
    };
    let fit_latent = |z: &Tensor| {
        let lr = (sc.len(cfg.latent_lr), cfg.latent_lr * cfg.weight_decay);
        adamw(z, lr, cfg.latent_iters, Some(cfg.patience), tol, &latent)
    };
    let mut guard = Divergence::new(p, sc);
    let mut z = (noise.randn(&z_shape.as_slice().into(), &device)? * sc.len(unit[0]))?;
    for k in 0..n {
        let (su, su_next) = (unit[k], unit[k + 1]);
        let (sigma, sigma_next) = (sc.len(su), sc.len(su_next));
        let (z0, x0, g) = through_prior(p, lat, &z, sigma, "ReSample", |x0, _| {
            // ∇_x ‖A x − y‖ = Jᵀ(r/‖r‖).
            let r = m.residual(op, x0)?;
            Ok((op.vjp(x0, &unit_rows(&r)?)?, None))
        })?;
        let (ab, ab_next) = (1.0 / (1.0 + su * su), 1.0 / (1.0 + su_next * su_next));
        let step = sc.len(cfg.guidance * ab * ((1.0 + su * su) * (1.0 + su_next * su_next)).sqrt());
        let eps = ((&z - &z0)? / sigma)?;
        let mut next = ((&z0 + (eps * sigma_next)?)? - (g * step)?)?;
        if let Some((stage, calls)) = cfg.resample_at(k) {
            // Look ahead from z′ (at σ′) to ẑ0.
            let mut za = next.clone();
            let mut zhat = next.clone();
            for j in 0..calls {
                let s = sc.len(unit[k + 1 + j]);
                zhat = p.prior.denoise(&za, s)?;
                if j + 1 < calls {
                    let eps = ((&za - &zhat)? / s)?;
                    za = (&zhat + (eps * sc.len(unit[k + 2 + j]))?)?;
                }
            }
            let zy = match stage {
                Stage::Pixel => {
                    let lr = (cfg.pixel_lr, cfg.pixel_lr * cfg.weight_decay);
                    let x = adamw(&lat.decode(&zhat)?, lr, cfg.pixel_iters, None, tol, &pixel)?;
                    lat.encode(&x, noise)?
                }
                Stage::Latent => fit_latent(&zhat)?,
            };
            let gamma = cfg.gamma * (1.0 - ab_next) / (1.0 - ab) * (1.0 - ab / ab_next);
            let v = sc.sq(gamma * (1.0 + su_next * su_next));
            let s2 = sigma_next * sigma_next;
            let mean = (((zy * v)? + (next * s2)?)? / (v + s2))?;
            let xi = noise.randn(mean.shape(), &device)?;
            next = (mean + (xi * (v * s2 / (v + s2)).sqrt())?)?;
        }
        z = next.detach();
        check_finite(&z, k, "ReSample step")?;
        let misfit = guard.check(&x0, 0.0, k, "ReSample x̂0")?;
        obs.on_step(&StepInfo {
            step: k,
            steps: n,
            sigma,
            x0hat: Some(&x0),
            x0: &x0,
            misfit,
        })?;
    }
    lat.decode(&fit_latent(&z)?)
}

/// AdamW (torch's defaults: β 0.9, 0.999, ε 1e-8) on each chain of `x` for ‖r‖²/dim r, with
/// `f(x)` = (r, Jᵀr) and `lr` = (step, decay per step). A chain stops when its RMS residual
/// is ≤ `tol` or, with a window w, when its loss exceeds its loss w iterations earlier; all stop
/// after `iters`.
fn adamw(
    x: &Tensor,
    lr: (f64, f64),
    iters: usize,
    window: Option<usize>,
    tol: f64,
    mut f: impl FnMut(&Tensor) -> Result<(Tensor, Tensor)>,
) -> Result<Tensor> {
    let b = x.dim(0)?;
    let mut x = x.detach();
    let (mut m1, mut m2) = (x.zeros_like()?, x.zeros_like()?);
    let (b1, b2) = (0.9f64, 0.999f64);
    let mut active = vec![true; b];
    let mut losses: Vec<Vec<f64>> = Vec::new();
    let mut mask_shape = vec![b];
    mask_shape.extend(std::iter::repeat_n(1, x.rank() - 1));
    for it in 0..iters {
        let (r, g) = f(&x)?;
        let dim = (r.elem_count() / b) as f64;
        let loss: Vec<f64> = per_chain_sq_norm(&r)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .into_iter()
            .map(|l| l / dim)
            .collect();
        for (c, l) in loss.iter().enumerate() {
            let rose = window.is_some_and(|w| it >= w && losses[it - w][c] < *l);
            if *l <= tol * tol || rose {
                active[c] = false;
            }
        }
        losses.push(loss);
        if !active.contains(&true) {
            break;
        }
        let g = (g.to_dtype(x.dtype())? * (2.0 / dim))?;
        m1 = ((m1 * b1)? + (&g * (1.0 - b1))?)?;
        m2 = ((m2 * b2)? + (g.sqr()? * (1.0 - b2))?)?;
        let t = (it + 1) as i32;
        let vhat = (&m2 / (1.0 - b2.powi(t)))?;
        let step = ((&m1 / (1.0 - b1.powi(t)))? / (vhat.sqrt()? + 1e-8)?)?;
        let moved = ((&x * (1.0 - lr.1))? - (step * lr.0)?)?;
        let on: Vec<f32> = active.iter().map(|&a| if a { 1.0 } else { 0.0 }).collect();
        let on = Tensor::from_vec(on, mask_shape.as_slice(), x.device())?.to_dtype(x.dtype())?;
        x = (&x + (moved - &x)?.broadcast_mul(&on)?)?;
    }
    Ok(x)
}
