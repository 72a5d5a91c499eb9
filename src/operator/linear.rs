//! A linear operator given as an explicit matrix acting on flattened samples.
//!
//! Forward and VJP run in f64 for f64 inputs and in f32 otherwise; the [`Linear`] structure
//! (adjoint, prox, pseudo-inverse) is in closed form with nalgebra.

use super::structure::check_gamma;
use super::{Linear, Operator, Svd};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;
use std::sync::OnceLock;

/// y = A·vec(x) for each sample, with A a `[d_y, d]` matrix.
pub struct MatrixOperator {
    a: DMatrix<f64>,
    a_t: Tensor,     // [d, d_y] f32
    a_row: Tensor,   // [d_y, d] f32
    a_t64: Tensor,   // [d, d_y] f64
    a_row64: Tensor, // [d_y, d] f64
    pinv: OnceLock<DMatrix<f64>>,
    svd: OnceLock<MatrixSvd>,
    sample_shape: Vec<usize>,
}

impl MatrixOperator {
    /// `sample_shape` is the shape of one input sample; its element count must equal A's columns.
    pub fn new(a: DMatrix<f64>, sample_shape: &[usize], device: &Device) -> Result<Self> {
        let d: usize = sample_shape.iter().product();
        if a.ncols() != d {
            return Err(Error::config(format!(
                "matrix operator has {} columns but samples of shape {:?} have {} entries",
                a.ncols(),
                sample_shape,
                d
            )));
        }
        let (m, n) = a.shape();
        let rows: Vec<f64> = (0..m)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| a[(i, j)])
            .collect();
        let a_row64 = Tensor::from_vec(rows, (m, n), device)?;
        let a_t64 = a_row64.t()?.contiguous()?;
        let a_row = a_row64.to_dtype(DType::F32)?;
        let a_t = a_t64.to_dtype(DType::F32)?;
        Ok(Self {
            a,
            a_t,
            a_row,
            a_t64,
            a_row64,
            pinv: OnceLock::new(),
            svd: OnceLock::new(),
            sample_shape: sample_shape.to_vec(),
        })
    }

    pub fn rows(&self) -> usize {
        self.a.nrows()
    }

    fn check(&self, x: &Tensor) -> Result<usize> {
        let b = x.dim(0)?;
        crate::error::expect_shape("matrix operator input", &x.dims()[1..], &self.sample_shape)?;
        Ok(b)
    }

    /// (Aᵀ, A) tensors for computing in `dtype` (f64, else f32), and that dtype.
    fn mats(&self, dtype: DType) -> (&Tensor, &Tensor, DType) {
        if dtype == DType::F64 {
            (&self.a_t64, &self.a_row64, DType::F64)
        } else {
            (&self.a_t, &self.a_row, DType::F32)
        }
    }

    fn sample_dims(&self, b: usize) -> Vec<usize> {
        let mut shape = vec![b];
        shape.extend_from_slice(&self.sample_shape);
        shape
    }

    /// The Moore–Penrose pseudo-inverse `[d, d_y]` (SVD; singular values below
    /// max(d, d_y)·ε·σ_max count as 0), computed once.
    pub fn pseudo_inverse(&self) -> &DMatrix<f64> {
        self.pinv.get_or_init(|| {
            let svd = self.a.clone().svd(true, true);
            let smax = svd.singular_values.max();
            let tol = self.a.nrows().max(self.a.ncols()) as f64 * f64::EPSILON * smax;
            // Invariant: pseudo_inverse fails only without U and Vᵀ, or with tol < 0 (tol ≥ 0,
            // or NaN for a NaN matrix, which it accepts).
            svd.pseudo_inverse(tol)
                .expect("SVD was computed with U and Vᵀ")
        })
    }
}

/// Rows of `t` `[B, ...]` as the columns of a `[n, B]` f64 matrix.
fn columns(t: &Tensor) -> Result<DMatrix<f64>> {
    let b = t.dim(0)?;
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let n = v.len() / b.max(1);
    Ok(DMatrix::from_column_slice(n, b, &v))
}

/// The columns of `m` `[n, B]` as a tensor of shape `shape` (`[B, ...]`) like `like`.
fn from_columns(m: &DMatrix<f64>, shape: Vec<usize>, like: &Tensor) -> Result<Tensor> {
    let v = m.as_slice().to_vec();
    Ok(Tensor::from_vec(v, shape, like.device())?.to_dtype(like.dtype())?)
}

impl Operator for MatrixOperator {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b = self.check(x)?;
        let (a_t, _, dt) = self.mats(x.dtype());
        let x2 = x.reshape((b, ()))?.to_dtype(dt)?;
        Ok(x2.matmul(a_t)?)
    }

    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let b = self.check(x)?;
        let (_, a_row, dt) = self.mats(x.dtype());
        let g = v.reshape((b, self.rows()))?.to_dtype(dt)?.matmul(a_row)?;
        Ok(g.reshape(self.sample_dims(b))?)
    }

    fn name(&self) -> String {
        format!("matrix {}x{}", self.a.nrows(), self.a.ncols())
    }

    fn matrix(&self) -> Option<&DMatrix<f64>> {
        Some(&self.a)
    }

    fn as_linear(&self) -> Option<&dyn Linear> {
        Some(self)
    }
}

/// Closed forms with nalgebra (computed in f64, returned in the input's dtype).
impl Linear for MatrixOperator {
    /// v `[B, d_y]` ↦ Aᵀv `[B, ...]`.
    fn adjoint(&self, v: &Tensor) -> Result<Tensor> {
        let b = v.dim(0)?;
        let (_, a_row, dt) = self.mats(v.dtype());
        let g = v.reshape((b, self.rows()))?.to_dtype(dt)?.matmul(a_row)?;
        Ok(g.reshape(self.sample_dims(b))?.to_dtype(v.dtype())?)
    }

    /// Solves (AᵀA + I/γ) x = Aᵀy + z/γ with a Cholesky factorisation.
    fn prox(&self, z: &Tensor, y: &Tensor, gamma: f64) -> Result<Tensor> {
        check_gamma(gamma)?;
        let bz = self.check(z)?;
        let by = y.dim(0)?;
        let n = bz.max(by);
        if (bz != n && bz != 1) || (by != n && by != 1) {
            return Err(Error::msg(format!(
                "matrix prox: batches of z ({bz}) and y ({by}) do not broadcast"
            )));
        }
        let ys = columns(&y.reshape((by, self.rows()))?)?;
        let zs = columns(z)?;
        let aty = self.a.transpose() * ys;
        let mut rhs = DMatrix::zeros(self.a.ncols(), n);
        for j in 0..n {
            let col = aty.column(if by == 1 { 0 } else { j })
                + zs.column(if bz == 1 { 0 } else { j }) / gamma;
            rhs.set_column(j, &col);
        }
        // Fewer rows than columns: Woodbury, x = γ(r − Aᵀ(AAᵀ + I/γ)⁻¹A r), a d_y × d_y
        // factorisation and matrix products instead of d × d triangular solves per column.
        let wide = self.a.nrows() < self.a.ncols();
        let mut m = if wide {
            &self.a * self.a.transpose()
        } else {
            self.a.transpose() * &self.a
        };
        for i in 0..m.nrows() {
            m[(i, i)] += 1.0 / gamma;
        }
        let chol = m
            .cholesky()
            .ok_or_else(|| Error::msg("matrix prox: AᵀA + I/γ is not positive definite"))?;
        let x = if wide {
            (&rhs - self.a.transpose() * chol.solve(&(&self.a * &rhs))) * gamma
        } else {
            chol.solve(&rhs)
        };
        from_columns(&x, self.sample_dims(n), z)
    }

    /// A⁺y with the SVD pseudo-inverse ([`MatrixOperator::pseudo_inverse`]).
    fn pinv(&self, y: &Tensor) -> Result<Tensor> {
        let b = y.dim(0)?;
        let ys = columns(&y.reshape((b, self.rows()))?)?;
        from_columns(&(self.pseudo_inverse() * ys), self.sample_dims(b), y)
    }

    fn svd(&self) -> Option<&dyn Svd> {
        Some(self)
    }
}

/// V and Q = A V diag(1/s) (zero columns where s = 0) as `[d, d]` and `[d_y, d]` f64 tensors, and s.
struct MatrixSvd {
    v: Tensor,
    q: Tensor,
    s: Vec<f64>,
}

impl MatrixOperator {
    /// V from the SVD of A padded with zero rows to at least d rows (a full orthogonal basis,
    /// null space included); singular values below max(d, d_y)·ε·s_max count as 0.
    fn matrix_svd(&self) -> Result<&MatrixSvd> {
        if let Some(m) = self.svd.get() {
            return Ok(m);
        }
        let (dy, d) = self.a.shape();
        let mut padded = DMatrix::zeros(dy.max(d), d);
        padded.rows_mut(0, dy).copy_from(&self.a);
        let svd = padded.svd(false, true);
        // Invariant: asked for Vᵀ, which is d×d for at least d rows.
        let v = svd.v_t.expect("SVD computed with Vᵀ").transpose();
        let smax = svd.singular_values.max();
        let tol = dy.max(d) as f64 * f64::EPSILON * smax;
        let s: Vec<f64> = svd
            .singular_values
            .iter()
            .map(|&v| if v > tol { v } else { 0.0 })
            .collect();
        let v = &v;
        let mut q = &self.a * v;
        for (j, &sj) in s.iter().enumerate() {
            let f = if sj > 0.0 { 1.0 / sj } else { 0.0 };
            q.column_mut(j).scale_mut(f);
        }
        let dev = self.a_row64.device();
        let row_major = |m: &DMatrix<f64>| m.transpose().as_slice().to_vec();
        let svd = MatrixSvd {
            v: Tensor::from_vec(row_major(v), (d, d), dev)?,
            q: Tensor::from_vec(row_major(&q), (self.a.nrows(), d), dev)?,
            s,
        };
        Ok(self.svd.get_or_init(|| svd))
    }

    /// Rows of `t` `[B, ...]` times `m`, computed in f64, in t's dtype, shaped `shape`.
    fn rows_times(t: &Tensor, m: &Tensor, shape: Vec<usize>) -> Result<Tensor> {
        let b = t.dim(0)?;
        let r = t.reshape((b, ()))?.to_dtype(DType::F64)?.matmul(m)?;
        Ok(r.reshape(shape)?.to_dtype(t.dtype())?)
    }
}

impl Svd for MatrixOperator {
    /// Vᵀx: rows x V.
    fn apply_vt(&self, x: &Tensor) -> Result<Tensor> {
        let b = self.check(x)?;
        Self::rows_times(x, &self.matrix_svd()?.v, self.sample_dims(b))
    }
    fn apply_v(&self, c: &Tensor) -> Result<Tensor> {
        let b = self.check(c)?;
        Self::rows_times(c, &self.matrix_svd()?.v.t()?, self.sample_dims(b))
    }
    fn singular_values(&self, sample: &[usize]) -> Result<Vec<f64>> {
        crate::error::expect_shape("matrix operator input", sample, &self.sample_shape)?;
        Ok(self.matrix_svd()?.s.clone())
    }
    /// (Uᵀy)_i = (yᵀ A v_i)/s_i.
    fn project_y(&self, y: &Tensor) -> Result<Tensor> {
        let b = y.dim(0)?;
        Self::rows_times(y, &self.matrix_svd()?.q, self.sample_dims(b))
    }
}
