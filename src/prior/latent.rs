//! Latent diffusion priors (CompVis LDM, Stable Diffusion): an EDM denoiser on latents z and the
//! autoencoder between latents and images. LatentDAPS runs the DAPS loop on z with the operator
//! A∘decode ([`Decoded`]).

use super::Denoiser;
use crate::error::Result;
use crate::noise::NoiseSource;
use crate::operator::Operator;
use candle_core::Tensor;

/// The text condition of a text-to-image prior (Stable Diffusion): classifier-free guidance
/// ε = ε(∅') + w·(ε(c) − ε(∅')), with ∅' the negative prompt ("" by default).
#[derive(Debug, Clone, PartialEq)]
pub struct TextCondition {
    pub prompt: String,
    pub negative_prompt: String,
    pub guidance: f64,
}

/// The VJP of one decode: g ↦ ∂⟨decode(z), g⟩/∂z at the z it was made for.
pub type Pullback<'a> = Box<dyn FnOnce(&Tensor) -> Result<Tensor> + Send + 'a>;

/// A latent diffusion model as a prior over images. [`Denoiser`] itself acts on latents
/// `[B, c, h, w]`; this trait adds the autoencoder.
pub trait LatentPrior: Denoiser {
    /// The latent shape `[c, h, w]` for an image shape `[C, H, W]`; an error naming the size when
    /// the autoencoder cannot take it.
    fn latent_shape(&self, image: &[usize]) -> Result<Vec<usize>>;

    /// Images `[B, C, H, W]` (in [−1, 1] up to the autoencoder's error; not clamped) from
    /// latents, exactly as the reference decodes (VQ models re-quantise).
    fn decode(&self, z: &Tensor) -> Result<Tensor>;

    /// ∂⟨decode(z), g⟩/∂z. Vector quantisation passes the gradient straight through.
    fn decode_vjp(&self, z: &Tensor, g: &Tensor) -> Result<Tensor>;

    /// Latents of images `[B, C, H, W]`; autoencoders whose encoder samples draw from `noise`.
    fn encode(&self, x: &Tensor, noise: &mut dyn NoiseSource) -> Result<Tensor>;

    /// decode(z) and its VJP, for a gradient that needs the decoded image first (A∘decode).
    /// The default decodes again in [`LatentPrior::decode_vjp`]; a prior that keeps the graph
    /// of this decode saves that second decoder pass.
    fn decode_with_pullback(&self, z: &Tensor) -> Result<(Tensor, Pullback<'_>)> {
        let x = self.decode(z)?;
        let z = z.clone();
        Ok((x, Box::new(move |g: &Tensor| self.decode_vjp(&z, g))))
    }
}

/// The operator A∘decode on latents, for a latent prior and an image-space operator.
pub struct Decoded<'a> {
    pub prior: &'a dyn LatentPrior,
    pub operator: &'a dyn Operator,
}

impl Operator for Decoded<'_> {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        self.operator.forward(&self.prior.decode(z)?)
    }

    fn vjp(&self, z: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (x, pullback) = self.prior.decode_with_pullback(z)?;
        pullback(&self.operator.vjp(&x, v)?)
    }

    /// One decode for the residual and the pullback (not one for A(decode z), one for the VJP).
    fn residual_vjp(&self, z: &Tensor, y: &Tensor) -> Result<Tensor> {
        let (x, pullback) = self.prior.decode_with_pullback(z)?;
        pullback(&self.operator.residual_vjp(&x, y)?)
    }

    fn name(&self) -> String {
        format!("{} ∘ decode", self.operator.name())
    }
}
