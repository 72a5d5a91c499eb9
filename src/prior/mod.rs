//! Priors. Every prior is an EDM denoiser D(x, σ) ≈ E[x0 | x0 + σε] on batched tensors.

pub mod adm;
pub mod default;
pub mod fastops;
pub mod gmm;
pub mod offload;
pub mod spec;
pub mod unet2d;
pub mod vp;

use crate::error::Result;
use candle_core::{Device, Tensor};

pub use gmm::{Covariance, GaussianMixture};

/// An EDM denoiser. `x` is `[B, ...]`; one σ is shared by the whole batch.
pub trait Denoiser: Send + Sync {
    /// D(x, σ) = E[x0 | x_σ = x], same shape as `x`. Must be differentiable in `x` through candle
    /// autograd for gradient-through-denoiser methods such as DPS.
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor>;

    /// The score ∇ log p_σ(x) = (D(x,σ) − x)/σ². Priors with a closed form may override it,
    /// and may then accept σ = 0 (the clean prior's score).
    fn score(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if sigma <= 0.0 {
            return Err(crate::Error::Unsupported(format!(
                "{}: score at σ = 0 needs a closed-form prior",
                self.name()
            )));
        }
        let d = self.denoise(x, sigma)?;
        Ok(((d - x)? / (sigma * sigma))?)
    }

    /// The device the prior's parameters live on.
    fn device(&self) -> &Device;

    /// A short human-readable description.
    fn name(&self) -> String;

    /// The shape of one sample (without the batch dimension), when the prior fixes it.
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }

    /// Closed-form access for exact steps; `None` for neural priors.
    fn as_gmm(&self) -> Option<&GaussianMixture> {
        None
    }
}
