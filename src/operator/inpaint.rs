//! Inpainting: A(x) = x ⊙ mask with a {0, 1} mask shared by every channel and image.

use super::portable::{on_device_of, DeviceCache};
use super::structure::check_gamma;
use super::{Linear, Operator, Svd};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Masking operator; `mask` is `[1, 1, H, W]` (1 = observed).
pub struct Inpaint {
    pub mask: Tensor,
    label: String,
    copies: DeviceCache<usize, Tensor>,
}

impl Inpaint {
    /// From a mask tensor `[1, 1, H, W]` or `[H, W]`.
    pub fn new(mask: Tensor) -> Result<Self> {
        let mask = match *mask.dims() {
            [h, w] => mask.reshape((1, 1, h, w))?,
            [1, 1, _, _] => mask,
            _ => {
                return Err(Error::Shape {
                    what: "inpainting mask [1, 1, H, W]".into(),
                    expected: vec![1, 1, 256, 256],
                    got: mask.dims().to_vec(),
                })
            }
        };
        let (_, _, h, w) = mask.dims4()?;
        Ok(Self {
            mask,
            label: format!("inpainting {h}×{w}"),
            copies: DeviceCache::new(),
        })
    }

    fn from_vec(
        mask: Vec<f32>,
        h: usize,
        w: usize,
        label: String,
        device: &Device,
    ) -> Result<Self> {
        let mut op = Self::new(Tensor::from_vec(mask, (1, 1, h, w), device)?)?;
        op.label = label;
        Ok(op)
    }

    /// DAPS box mask (see [`box_mask`]).
    pub fn boxed(h: usize, w: usize, seed: u64, device: &Device) -> Result<Self> {
        let mask = box_mask(h, w, seed)?;
        Self::from_vec(mask, h, w, format!("box inpainting {h}×{w}"), device)
    }

    /// Random pixel mask with ⌊H·W·p⌋ pixels dropped (see [`random_mask`]).
    pub fn random(h: usize, w: usize, p: f64, seed: u64, device: &Device) -> Result<Self> {
        let mask = random_mask(h, w, p, seed)?;
        Self::from_vec(
            mask,
            h,
            w,
            format!("random inpainting {h}×{w}, p {p}"),
            device,
        )
    }

    /// A PNG (any pixel format, converted to 8-bit gray): nonzero = observed. It must be H×W.
    pub fn from_png(path: impl AsRef<Path>, h: usize, w: usize, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let img = image::open(path)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?
            .to_luma8();
        let (pw, ph) = img.dimensions();
        crate::error::expect_shape(
            &format!("mask {}", path.display()),
            &[ph as usize, pw as usize],
            &[h, w],
        )?;
        let mask = img
            .into_raw()
            .into_iter()
            .map(|v| (v != 0) as u8 as f32)
            .collect();
        Self::from_vec(
            mask,
            h,
            w,
            format!("inpainting from {}", path.display()),
            device,
        )
    }

    /// Fraction of observed pixels.
    pub fn observed_fraction(&self) -> Result<f64> {
        Ok(self
            .mask
            .to_dtype(DType::F64)?
            .mean_all()?
            .to_scalar::<f64>()?)
    }

    fn mask_for(&self, x: &Tensor, what: &str) -> Result<Tensor> {
        let (_, _, h, w) = self.mask.dims4()?;
        let dims = x.dims();
        if dims.len() != 4 || dims[2..] != [h, w] {
            return Err(Error::Shape {
                what: format!("{} {what}", self.label),
                expected: vec![dims.first().copied().unwrap_or(1), 3, h, w],
                got: dims.to_vec(),
            });
        }
        on_device_of(&self.copies, 0, &self.mask, x)
    }
}

impl Operator for Inpaint {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let m = self.mask_for(x, "input")?;
        Ok(x.broadcast_mul(&m)?)
    }

    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        crate::error::expect_shape(&format!("{} cotangent", self.label), v.dims(), x.dims())?;
        let m = self.mask_for(x, "input")?;
        Ok(v.to_dtype(x.dtype())?.broadcast_mul(&m)?)
    }

    fn name(&self) -> String {
        self.label.clone()
    }

    fn as_linear(&self) -> Option<&dyn Linear> {
        Some(self)
    }
}

/// Closed forms: A = Aᵀ = diag(m), so AᵀA = diag(m) and A⁺ = diag(m) (m ∈ {0, 1}).
impl Linear for Inpaint {
    /// m ⊙ v.
    fn adjoint(&self, v: &Tensor) -> Result<Tensor> {
        let m = self.mask_for(v, "cotangent")?;
        Ok(v.broadcast_mul(&m)?)
    }

    /// (m ⊙ y + z/γ) / (m + 1/γ).
    fn prox(&self, z: &Tensor, y: &Tensor, gamma: f64) -> Result<Tensor> {
        check_gamma(gamma)?;
        let m = self.mask_for(z, "prox point")?;
        let y = y.to_dtype(z.dtype())?;
        let num = y.broadcast_mul(&m)?.broadcast_add(&(z / gamma)?)?;
        Ok(num.broadcast_div(&(m + 1.0 / gamma)?)?)
    }

    /// m ⊙ y.
    fn pinv(&self, y: &Tensor) -> Result<Tensor> {
        self.adjoint(y)
    }

    fn svd(&self) -> Option<&dyn Svd> {
        Some(self)
    }
}

/// U = V = I, s = m.
impl Svd for Inpaint {
    fn apply_vt(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn apply_v(&self, c: &Tensor) -> Result<Tensor> {
        Ok(c.clone())
    }
    fn singular_values(&self, sample: &[usize]) -> Result<Vec<f64>> {
        let mut dims = vec![1];
        dims.extend_from_slice(sample);
        let m = self.mask_for(
            &Tensor::zeros(dims.clone(), DType::F64, self.mask.device())?,
            "input",
        )?;
        Ok(m.broadcast_as(dims)?.flatten_all()?.to_vec1::<f64>()?)
    }
    fn project_y(&self, y: &Tensor) -> Result<Tensor> {
        self.adjoint(y)
    }
}

/// DAPS box mask: 1 outside one hole of ⌊128·H/256⌋×⌊128·W/256⌋ pixels, whose top (left) is
/// uniform in [margin, H − margin − hole) with margin ⌊32·H/256⌋ (numpy `randint` bounds).
/// Row-major H×W.
pub fn box_mask(h: usize, w: usize, seed: u64) -> Result<Vec<f32>> {
    let scaled = |n: usize, v: usize| v * n / 256;
    let (hole_h, hole_w) = (scaled(h, 128), scaled(w, 128));
    let (margin_h, margin_w) = (scaled(h, 32), scaled(w, 32));
    if hole_h == 0 || hole_w == 0 || h < 2 * margin_h + hole_h + 1 || w < 2 * margin_w + hole_w + 1
    {
        return Err(Error::config(format!(
            "box mask: image {h}×{w} is too small"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let top = rng.random_range(margin_h..h - margin_h - hole_h);
    let left = rng.random_range(margin_w..w - margin_w - hole_w);
    let mut mask = vec![1f32; h * w];
    for i in top..top + hole_h {
        mask[i * w + left..i * w + left + hole_w].fill(0.0);
    }
    Ok(mask)
}

/// Random mask: exactly ⌊H·W·p⌋ distinct pixels, drawn uniformly, are set to 0 (DAPS uses
/// p ∈ [0.70, 0.71)). Row-major H×W.
pub fn random_mask(h: usize, w: usize, p: f64, seed: u64) -> Result<Vec<f32>> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::config(format!(
            "random mask: drop fraction must be in [0, 1], got {p}"
        )));
    }
    let n = h * w;
    let drop = (n as f64 * p).floor() as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut mask = vec![1f32; n];
    for i in rand::seq::index::sample(&mut rng, n, drop) {
        mask[i] = 0.0;
    }
    Ok(mask)
}
