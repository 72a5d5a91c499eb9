//! The DAPS paper's 2-D nonlinear "trap" operator.

use super::Operator;
use crate::error::Result;
use candle_core::Tensor;

/// A(x) = exp(−‖x − c1‖²/w) + exp(−‖x − c2‖²/w) with c1 = (0,0), c2 = (0.5,0.5), w = 0.05.
/// Input `[B, 2]`, output `[B, 1]`.
pub struct TrapOperator {
    pub width: f64,
}

impl Default for TrapOperator {
    fn default() -> Self {
        Self { width: 0.05 }
    }
}

impl TrapOperator {
    /// The same map on a plain point, for building references.
    pub fn eval(&self, p: [f64; 2]) -> f64 {
        let r1 = p[0] * p[0] + p[1] * p[1];
        let r2 = (p[0] - 0.5).powi(2) + (p[1] - 0.5).powi(2);
        (-r1 / self.width).exp() + (-r2 / self.width).exp()
    }
}

impl Operator for TrapOperator {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::error::expect_shape("trap operator input", &x.dims()[1..], &[2])?;
        let r1 = x.sqr()?.sum_keepdim(1)?;
        let r2 = (x - 0.5)?.sqr()?.sum_keepdim(1)?;
        let w = -1.0 / self.width;
        Ok((r1.affine(w, 0.0)?.exp()? + r2.affine(w, 0.0)?.exp()?)?)
    }

    fn name(&self) -> String {
        "nonlinear trap (2-D)".into()
    }
}
