//! The probability-flow ODE dx/dσ = (x − D(x, σ))/σ, integrated with Euler steps.

use super::{per_piece, Problem};
use crate::error::Result;
use crate::prior::Denoiser;
use candle_core::Tensor;

/// Euler integration along `sigmas` (decreasing; the last may be 0). One denoiser call per step.
pub fn euler(prior: &dyn Denoiser, x: &Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let mut x = x.clone();
    for w in sigmas.windows(2) {
        let (s, s_next) = (w[0], w[1]);
        let d = prior.denoise(&x, s)?;
        let slope = ((&x - d)? / s)?;
        x = (x + (slope * (s_next - s))?)?;
    }
    Ok(x)
}

/// [`euler`] with DPS's measurement step after each Euler step: x ← x − ζ·s·(1 + σ²/s²)·
/// ∇_x‖y − A(D(x, σ))‖, s the prior's scale (`scale`). (1 + σ²/s²) is 1/ᾱ: DPS's constant
/// step on its VP state x√ᾱ seen in EDM coordinates. One denoiser VJP per step.
pub fn guided_euler(
    p: &Problem,
    x: &Tensor,
    sigmas: &[f64],
    zeta: f64,
    scale: f64,
) -> Result<Tensor> {
    let mut x = x.clone();
    for w in sigmas.windows(2) {
        let (s, s_next) = (w[0], w[1]);
        let (d, g) = per_piece(p, &x, |part, xs| super::dps::guidance(part, xs, 1.0, s))?;
        let slope = ((&x - d)? / s)?;
        let inv_ab = 1.0 + (s / scale) * (s / scale);
        x = ((x + (slope * (s_next - s))?)? - (g * (zeta * scale * inv_ab))?)?.detach();
    }
    Ok(x)
}
