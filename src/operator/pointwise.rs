//! Pointwise operators.

use super::Operator;
use crate::error::{Error, Result};
use candle_core::Tensor;

/// High dynamic range: A(x) = clip(scale·x, −1, 1) (DAPS uses scale 2).
pub struct Hdr {
    pub scale: f64,
}

impl Hdr {
    /// Checks that `scale` is finite and positive.
    pub fn new(scale: f64) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::config(format!(
                "scale must be finite and > 0, got {scale}"
            )));
        }
        Ok(Self { scale })
    }
}

impl Default for Hdr {
    fn default() -> Self {
        Self { scale: 2.0 }
    }
}

impl Operator for Hdr {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.affine(self.scale, 0.0)?.clamp(-1f32, 1f32)?)
    }

    /// scale·v where |scale·x| < 1, 0 where clipped.
    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let inside = x.affine(self.scale, 0.0)?.abs()?.lt(1.0)?;
        let zero = v.zeros_like()?;
        Ok(inside.where_cond(&v.affine(self.scale, 0.0)?, &zero)?)
    }

    fn name(&self) -> String {
        format!("hdr (scale {})", self.scale)
    }
}
