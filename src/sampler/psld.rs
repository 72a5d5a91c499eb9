//! PSLD (Rout et al., NeurIPS 2023; official `ldm/models/diffusion/psld.py`): latent DDIM plus
//! z′ −= ∇_z [ω‖y − A(Dec ẑ0)‖ + γ‖Enc(Aᵀy + (I − AᵀA) Dec ẑ0) − ẑ0‖], ẑ0 = D(z, σ), the
//! gradient taken through the denoiser (candle autograd), the decoder ([`LatentPrior`]'s
//! pullback) and the encoder (candle autograd). As the published code, the "gluing" term uses
//! the adjoint Aᵀ (= A⁺ for inpainting, where the projection is exact) and the norms are not
//! squared; unlike it, each chain's norms are its own and y is not re-noised.
//!
//! EDM form: DDIM z′ = ẑ0 + √(σ′² − c²)·ε̂ + c·ξ, c = η·σ′·√(1 − σ′²/σ²), over the σ's of
//! DDPM's 1000-step linear schedule respaced to `steps` (capped at the prior's σ_max), and the
//! VP update z_vp −= g becomes z′ −= √((1+σ²)(1+σ′²))·g (as in DPS, baselines.md §2.1).

use super::{check_finite, Divergence, Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::operator::{per_chain_sq_norm, Linear};
use crate::prior::latent::LatentPrior;
use crate::prior::Scale;
use crate::schedule::VpSchedule;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PsldConfig {
    /// DDIM steps (= network evaluations, each with one VJP through D, Dec and Enc).
    pub steps: usize,
    /// DDIM stochasticity η (0: deterministic, as published).
    pub eta: f64,
    /// ω, the weight of the measurement term ‖y − A(Dec ẑ0)‖.
    pub omega: f64,
    /// γ, the weight of the gluing term ‖Enc(Aᵀy + (I − AᵀA)Dec ẑ0) − ẑ0‖.
    pub gamma: f64,
}

impl Default for PsldConfig {
    /// The published settings (baselines.md §2.14, official `psld.py` / README): 1000 DDIM
    /// steps, η 0, ω 1, γ 0.1.
    fn default() -> Self {
        Self {
            steps: 1000,
            eta: 0.0,
            omega: 1.0,
            gamma: 0.1,
        }
    }
}

impl PsldConfig {
    pub fn validate(&self) -> Result<()> {
        let max = super::daps::MAX_STEPS;
        if !(1..=max).contains(&self.steps) {
            return Err(Error::config(format!(
                "steps must be in 1..={max}, got {}",
                self.steps
            )));
        }
        super::check_range("eta", self.eta, 0.0, 1.0)?;
        for (name, v) in [("omega", self.omega), ("gamma", self.gamma)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(format!(
                    "{name} must be finite and ≥ 0, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// The latent prior and linear operator PSLD needs, or an error naming what is missing.
pub fn psld_parts<'a>(p: &Problem<'a>) -> Result<(&'a dyn LatentPrior, &'a dyn Linear)> {
    let lat = p.prior.as_latent().ok_or_else(|| {
        Error::config(format!(
            "psld needs a latent diffusion prior (ldm:… or sd:…); {} is a pixel-space prior",
            p.prior.name()
        ))
    })?;
    let lin = p.operator.as_linear().ok_or_else(|| {
        Error::config(format!(
            "psld needs a linear operator (its gluing term uses the adjoint Aᵀ); {} is not linear",
            p.operator.name()
        ))
    })?;
    Ok((lat, lin))
}

pub fn psld(
    p: &Problem,
    cfg: &PsldConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let (lat, lin) = psld_parts(p)?;
    let mut z_shape = vec![x_shape[0]];
    z_shape.extend(lat.latent_shape(&x_shape[1..])?);
    let device = p.prior.device().clone();
    let sc = Scale::of(p.prior)?;
    // Unit-scale σ's (the step factor) and the prior's σ's.
    let unit = ddim_sigmas(p, sc, cfg.steps);
    let n = cfg.steps;
    let mut guard = Divergence::new(p, sc);
    let mut z = (noise.randn(&z_shape.as_slice().into(), &device)? * sc.len(unit[0]))?;
    for k in 0..n {
        let (su, su_next) = (unit[k], unit[k + 1]);
        let (sigma, sigma_next) = (sc.len(su), sc.len(su_next));
        let (z0, g) = gradient(p, lat, lin, cfg, &z, sigma, noise)?;
        let eps = ((&z - &z0)? / sigma)?;
        let c = cfg.eta * sigma_next * (1.0 - (sigma_next / sigma).powi(2)).max(0.0).sqrt();
        let mut next = (&z0 + (eps * (sigma_next * sigma_next - c * c).max(0.0).sqrt())?)?;
        if c > 0.0 {
            next = (next + (noise.randn(z.shape(), &device)? * c)?)?;
        }
        // ∇ of the (unsquared) norms is dimensionless: the step is s × the VP factor.
        let step = sc.len(((1.0 + su * su) * (1.0 + su_next * su_next)).sqrt());
        z = (next - (g * step)?)?.detach();
        check_finite(&z, k, "PSLD step")?;
        let x0 = lat.decode(&z0)?;
        let misfit = guard.check(&x0, 0.0, k, "PSLD x̂0")?;
        obs.on_step(&StepInfo {
            step: k,
            steps: n,
            sigma,
            x0hat: Some(&x0),
            x0: &x0,
            misfit,
        })?;
    }
    lat.decode(&z)
}

/// The unit-scale σ's of latent DDIM: DDPM's 1000-step linear schedule respaced to `steps`,
/// capped at the prior's σ_max, then 0 (× the scale for the prior's σ's).
pub(crate) fn ddim_sigmas(p: &Problem, sc: Scale, steps: usize) -> Vec<f64> {
    let cap = p.prior.sigma_range().1;
    let vp = VpSchedule::ddpm_linear(steps);
    (0..vp.alpha_bar.len())
        .map(|k| vp.sigma(k).min(cap / sc.len(1.0)))
        .chain([0.0])
        .collect()
}

/// `t / ‖t‖` per chain (0 where the norm vanishes).
pub(crate) fn unit_rows(t: &Tensor) -> Result<Tensor> {
    let norms = per_chain_sq_norm(t)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    let mut shape = vec![t.dim(0)?];
    shape.extend(std::iter::repeat_n(1, t.rank() - 1));
    Ok(t.broadcast_div(&norms.reshape(shape)?)?)
}

/// ẑ0 = D(z, σ) and x̂0 = Dec ẑ0 (both detached), and ∇_z of a loss on (x̂0, ẑ0) whose gradients
/// `outer(x̂0, ẑ0)` = (g_x, g_ẑ0) gives: J_Dᵀ(J_Decᵀ g_x + g_ẑ0), through D by candle autograd
/// and the decoder by the prior's pullback. `who` names the sampler in errors.
pub(crate) fn through_prior(
    p: &Problem,
    lat: &dyn LatentPrior,
    z: &Tensor,
    sigma: f64,
    who: &str,
    outer: impl FnOnce(&Tensor, &Tensor) -> Result<(Tensor, Option<Tensor>)>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let zv = Var::from_tensor(z)?;
    let z0 = p.prior.denoise(zv.as_tensor(), sigma)?;
    let z0d = z0.detach();
    let (x0, pullback) = lat.decode_with_pullback(&z0d)?;
    let (gx, gz0) = outer(&x0, &z0d)?;
    let mut gz = pullback(&gx)?;
    if let Some(g) = gz0 {
        gz = (gz + g)?;
    }
    let grads = (z0 * gz)?.sum_all()?.backward()?;
    let g = grads.get(zv.as_tensor()).cloned().ok_or_else(|| {
        Error::msg(format!(
            "{who}: no gradient flows through the prior {}",
            p.prior.name()
        ))
    })?;
    Ok((z0d, x0.detach(), g))
}

/// ẑ0 = D(z, σ) and ∇_z of the PSLD loss (ω and γ included), for the chains of `z`.
fn gradient(
    p: &Problem,
    lat: &dyn LatentPrior,
    lin: &dyn Linear,
    cfg: &PsldConfig,
    z: &Tensor,
    sigma: f64,
    noise: &mut dyn NoiseSource,
) -> Result<(Tensor, Tensor)> {
    let (z0, _, g) = through_prior(p, lat, z, sigma, "PSLD", |x0, z0d| {
        // ω term: ∇_x ‖A x − y‖ = Aᵀ(r/‖r‖).
        let r = p.measurement.residual(p.operator, x0)?;
        let mut gx = (lin.adjoint(&unit_rows(&r)?)? * cfg.omega)?;
        if cfg.gamma == 0.0 {
            return Ok((gx, None));
        }
        // γ term: e = Enc(Aᵀy + (I − AᵀA)x); ∇_x = (I − AᵀA) J_Encᵀ u, ∇_ẑ0 = −u, u = (e − ẑ0)/‖·‖.
        let y = p.measurement.y.to_dtype(x0.dtype())?;
        let ata = |v: &Tensor| lin.adjoint(&p.operator.forward(v)?);
        let glued = lin.adjoint(&y)?.broadcast_add(&(x0 - ata(x0)?)?)?;
        let gv = Var::from_tensor(&glued)?;
        let e = lat.encode(gv.as_tensor(), noise)?;
        let u = unit_rows(&(e.detach() - z0d)?)?;
        let grads = (e * &u)?.sum_all()?.backward()?;
        let ge = grads
            .get(gv.as_tensor())
            .cloned()
            .ok_or_else(|| Error::msg("PSLD: no gradient flows through the prior's encoder"))?;
        gx = (gx + ((&ge - ata(&ge)?)? * cfg.gamma)?)?;
        Ok((gx, Some((u * (-cfg.gamma))?)))
    })?;
    Ok((z0, g))
}
