//! Forward operators A and their measurement-noise model.
//!
//! An operator maps a batch `[B, ...]` to a batch of measurements `[B, ...]`. The data-fidelity
//! gradient needs Jᵀv; the default computes it with candle autograd through [`Operator::forward`],
//! and operators with a cheaper closed form (matrices, FFTs) override [`Operator::vjp`].
//!
//! Linear operators also expose their structure through [`Operator::as_linear`]: the adjoint,
//! the proximal map of ½‖A x − y‖² and the pseudo-inverse ([`Linear`]; see [`structure`] for
//! which operators have closed forms and which use conjugate gradients, [`cg`]).

pub mod blur;
pub mod fft;
pub mod inpaint;
pub mod linear;
pub mod mri;
pub mod nonlinear_blur;
pub mod pointwise;
pub mod portable;
pub mod resize;
pub mod structure;
pub mod toy;

use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use candle_core::{Tensor, Var};

pub use linear::MatrixOperator;
pub use pointwise::Hdr;
pub use structure::{cg, CgOptions, CgSolution, Linear, Svd};
pub use toy::TrapOperator;

pub trait Operator: Send + Sync {
    /// A(x), differentiable in `x`.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Jᵀ v at `x` (the vector–Jacobian product). Default: autograd through `forward`.
    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        autograd_pullback(self, x, |_| Ok(v.detach()))
    }

    /// Jᵀ(A(x) − y) at `x`: the data gradient of ½‖A(x) − y‖², `y` `[B, ...]` or `[1, ...]`.
    /// Default: `forward`, then `vjp` of the residual; an operator whose VJP recomputes what its
    /// forward computed overrides it to do that once (phase retrieval: one FFT fewer per call).
    fn residual_vjp(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        residual_then_vjp(self, x, y)
    }

    /// A(x) by candle tensor ops only ([`portable`]), so it runs on any device with no host
    /// copy; operators with CPU kernels take this path in `forward` for tensors off the CPU.
    /// Default: `forward`, for operators that are tensor ops already.
    fn forward_portable(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x)
    }

    /// Jᵀv by candle tensor ops only (see [`Operator::forward_portable`]). Default: `vjp`.
    fn vjp_portable(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.vjp(x, v)
    }

    /// A short human-readable description.
    fn name(&self) -> String;

    /// The operator as an explicit matrix `[d_y, d]` acting on flattened samples, when linear.
    fn matrix(&self) -> Option<&nalgebra::DMatrix<f64>> {
        None
    }

    /// The operator's linear structure (adjoint, prox, pseudo-inverse), when it is linear.
    fn as_linear(&self) -> Option<&dyn Linear> {
        None
    }
}

/// A measurement y = A(x) + σ_y·n with Gaussian noise.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// `[B, ...]` or `[1, ...]` (then shared by every chain).
    pub y: Tensor,
    pub sigma_y: f64,
}

impl Measurement {
    /// Simulates y = A(x) + σ_y·n.
    pub fn simulate(
        op: &dyn Operator,
        x: &Tensor,
        sigma_y: f64,
        noise: &mut dyn NoiseSource,
    ) -> Result<Self> {
        let ax = op.forward(x)?;
        let n = noise.randn(ax.shape(), ax.device())?;
        let y = (ax + (n * sigma_y)?)?;
        Ok(Self { y, sigma_y })
    }

    /// Per-chain residual r = A(x) − y, broadcasting a shared y.
    pub fn residual(&self, op: &dyn Operator, x: &Tensor) -> Result<Tensor> {
        let ax = op.forward(x)?;
        Ok(ax.broadcast_sub(&self.y)?)
    }

    /// Jᵀ(A(x) − y) ([`Operator::residual_vjp`]): `op.vjp(x, &self.residual(op, x)?)` with
    /// the same values, in one pass where the operator fuses them.
    pub fn residual_vjp(&self, op: &dyn Operator, x: &Tensor) -> Result<Tensor> {
        op.residual_vjp(x, &self.y)
    }
}

/// The default [`Operator::residual_vjp`]: `forward`, the residual, then `vjp` of it.
pub fn residual_then_vjp<O: Operator + ?Sized>(op: &O, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let r = op.forward(x)?.broadcast_sub(y)?;
    op.vjp(x, &r)
}

/// Jᵀ(A(x) − y) by autograd through one `forward` with its graph kept: for operators whose VJP
/// is autograd's (the default), one forward pass fewer than [`residual_then_vjp`], with the
/// same values.
pub fn autograd_residual_vjp(op: &dyn Operator, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    autograd_pullback(op, x, |out| Ok(out.detach().broadcast_sub(y)?))
}

/// Jᵀv at `x` by candle's autograd through `forward`, the cotangent v made from A(x).
fn autograd_pullback<O: Operator + ?Sized>(
    op: &O,
    x: &Tensor,
    cotangent: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let xv = Var::from_tensor(&x.detach())?;
    let out = op.forward(xv.as_tensor())?;
    let v = cotangent(&out)?;
    let grads = (out * v)?.sum_all()?.backward()?;
    grads
        .get(xv.as_tensor())
        .cloned()
        .ok_or_else(|| Error::msg(format!("{}: no gradient reached the input", op.name())))
}

/// Per-chain squared norms Σ r² over all but the first dimension, as `[B]`.
pub fn per_chain_sq_norm(r: &Tensor) -> Result<Tensor> {
    let b = r.dim(0)?;
    Ok(r.reshape((b, ()))?.sqr()?.sum(1)?)
}
