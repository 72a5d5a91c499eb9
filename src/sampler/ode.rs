//! The probability-flow ODE dx/dσ = (x − D(x, σ))/σ, integrated with Euler steps.

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
