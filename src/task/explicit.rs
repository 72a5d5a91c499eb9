//! Linear operators as explicit matrices, for the exact x0 step on small images.

use crate::error::{Error, Result};
use crate::operator::{Linear, Operator};
use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;

/// The largest sample (C·H·W) [`explicit_matrix`] accepts: 3×32×32.
pub const MAX_EXPLICIT_DIM: usize = 3 * 32 * 32;

/// The `[d_y, d]` matrix of a linear operator on samples of shape `sample_shape`, column j being
/// A(e_j) (evaluated in f64, in batches of basis images).
pub fn explicit_matrix(op: &dyn Operator, sample_shape: &[usize]) -> Result<DMatrix<f64>> {
    let d: usize = sample_shape.iter().product();
    if d == 0 || d > MAX_EXPLICIT_DIM {
        return Err(Error::Unsupported(format!(
            "explicit matrix of {}: samples of shape {sample_shape:?} have {d} entries (at most {MAX_EXPLICIT_DIM}, e.g. 3×32×32)",
            op.name()
        )));
    }
    let mut a: Option<DMatrix<f64>> = None;
    let chunk = 256;
    for start in (0..d).step_by(chunk) {
        let n = chunk.min(d - start);
        let mut basis = vec![0f64; n * d];
        for i in 0..n {
            basis[i * d + start + i] = 1.0;
        }
        let mut shape = vec![n];
        shape.extend_from_slice(sample_shape);
        let x = Tensor::from_vec(basis, shape, &Device::Cpu)?;
        let y = op.forward(&x)?.to_dtype(DType::F64)?.reshape((n, ()))?;
        let dy = y.dim(1)?;
        let rows = y.flatten_all()?.to_vec1::<f64>()?;
        let a = a.get_or_insert_with(|| DMatrix::zeros(dy, d));
        for i in 0..n {
            for r in 0..dy {
                a[(r, start + i)] = rows[i * dy + r];
            }
        }
    }
    // Invariant: d > 0 was checked above, so the loop ran at least once.
    Ok(a.expect("d > 0"))
}

/// A linear operator with its explicit matrix attached, for the exact x0 step. Forward and VJP
/// stay the operator's own (so measurements keep their shape); [`Operator::matrix`] gives A.
pub struct Explicit<'a> {
    pub(super) op: &'a dyn Operator,
    pub(super) a: DMatrix<f64>,
}

impl<'a> Explicit<'a> {
    /// `op` with the matrix [`explicit_matrix`] computes on samples of shape `sample_shape`.
    pub fn new(op: &'a dyn Operator, sample_shape: &[usize]) -> Result<Self> {
        let a = explicit_matrix(op, sample_shape)?;
        Ok(Self { op, a })
    }
}

impl Operator for Explicit<'_> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.op.forward(x)
    }
    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.op.vjp(x, v)
    }
    fn residual_vjp(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.op.residual_vjp(x, y)
    }
    fn name(&self) -> String {
        format!("{} (explicit matrix)", self.op.name())
    }
    fn matrix(&self) -> Option<&DMatrix<f64>> {
        Some(&self.a)
    }
    fn as_linear(&self) -> Option<&dyn Linear> {
        self.op.as_linear()
    }
}
