//! A linear operator given as an explicit matrix acting on flattened samples.

use super::Operator;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;

/// y = A·vec(x) for each sample, with A a `[d_y, d]` matrix.
pub struct MatrixOperator {
    a: DMatrix<f64>,
    a_t: Tensor,   // [d, d_y] f32
    a_row: Tensor, // [d_y, d] f32
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
        let rows: Vec<f32> = (0..m)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| a[(i, j)] as f32)
            .collect();
        let a_row = Tensor::from_vec(rows, (m, n), device)?;
        let a_t = a_row.t()?.contiguous()?;
        Ok(Self {
            a,
            a_t,
            a_row,
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
}

impl Operator for MatrixOperator {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b = self.check(x)?;
        let x2 = x.reshape((b, ()))?.to_dtype(DType::F32)?;
        Ok(x2.matmul(&self.a_t)?)
    }

    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let b = self.check(x)?;
        let g = v.reshape((b, self.rows()))?.matmul(&self.a_row)?;
        let mut shape = vec![b];
        shape.extend_from_slice(&self.sample_shape);
        Ok(g.reshape(shape)?)
    }

    fn name(&self) -> String {
        format!("matrix {}x{}", self.a.nrows(), self.a.ncols())
    }

    fn matrix(&self) -> Option<&DMatrix<f64>> {
        Some(&self.a)
    }
}
