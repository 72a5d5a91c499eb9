//! Downsampling operators: DAPS super-resolution (antialiased bicubic) and average pooling.

use super::portable::{on_device_of, DeviceCache};
use super::structure::check_gamma;
use super::{Linear, Operator, Svd};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};

/// Keys cubic kernel with a = −0.5 (MATLAB `imresize`).
fn cubic(x: f64) -> f64 {
    let a = x.abs();
    let (a2, a3) = (a * a, a * a * a);
    if a <= 1.0 {
        1.5 * a3 - 2.5 * a2 + 1.0
    } else if a <= 2.0 {
        -0.5 * a3 + 2.5 * a2 - 4.0 * a + 2.0
    } else {
        0.0
    }
}

/// The `[out_len, in_len]` matrix of one axis of Shocher's MATLAB-imresize port (DAPS
/// `Resizer.contributions`, cubic kernel): kernel stretched by 1/scale when downscaling
/// (antialiasing), weights normalised per row, mirror boundary (edge repeated).
pub fn imresize_matrix(in_len: usize, out_len: usize, scale: f64) -> Vec<f64> {
    let antialias = scale < 1.0;
    let kernel = |x: f64| {
        if antialias {
            scale * cubic(scale * x)
        } else {
            cubic(x)
        }
    };
    let width = if antialias { 4.0 / scale } else { 4.0 };
    let taps = width.ceil() as i64 + 2;
    let (n, m) = (in_len as f64, out_len as f64);
    let mut mat = vec![0.0; out_len * in_len];
    for o in 0..out_len {
        let shifted = (o + 1) as f64 - (m - n * scale) / 2.0;
        let centre = shifted / scale + 0.5 * (1.0 - 1.0 / scale);
        let left = (centre - width / 2.0).floor() as i64;
        let fov: Vec<i64> = (0..taps).map(|t| left + t - 1).collect();
        let mut w: Vec<f64> = fov
            .iter()
            .map(|&f| kernel(centre - f as f64 - 1.0))
            .collect();
        let sum: f64 = w.iter().sum();
        let sum = if sum == 0.0 { 1.0 } else { sum };
        w.iter_mut().for_each(|v| *v /= sum);
        let period = 2 * in_len as i64;
        for (&f, &wv) in fov.iter().zip(&w) {
            let j = f.rem_euclid(period);
            let j = if j >= in_len as i64 {
                period - 1 - j
            } else {
                j
            };
            mat[o * in_len + j as usize] += wv;
        }
    }
    mat
}

fn dims4(x: &Tensor, what: &str) -> Result<(usize, usize, usize, usize)> {
    x.dims4().map_err(|_| Error::Shape {
        what: format!("{what} input [B, C, H, W]"),
        expected: vec![1, 3, 256, 256],
        got: x.dims().to_vec(),
    })
}

/// DAPS `down_sampling`: ×k antialiased bicubic downsampling, y = M_h·x·M_wᵀ per channel,
/// for a fixed input size H×W (output ⌈H/k⌉×⌈W/k⌉).
pub struct SuperResolution {
    factor: usize,
    in_hw: (usize, usize),
    m_h: Tensor,
    m_w: Tensor,
    /// Copies of M_h, M_w, M_hᵀ, M_wᵀ (keys 0–3) on other devices and dtypes.
    copies: DeviceCache<usize, Tensor>,
    /// The 1-D SVDs, computed on first use (DDRM, DDNM, MCGdiff).
    svd: std::sync::OnceLock<Result<SrSvd>>,
}

impl SuperResolution {
    pub fn new(factor: usize, h: usize, w: usize, device: &Device) -> Result<Self> {
        if factor == 0 || h == 0 || w == 0 {
            return Err(Error::config(format!(
                "super-resolution: need factor, H, W ≥ 1, got ×{factor} on {h}×{w}"
            )));
        }
        let scale = 1.0 / factor as f64;
        let matrix = |n: usize| -> Result<Tensor> {
            let out = (n as f64 * scale).ceil() as usize;
            let m: Vec<f32> = if factor == 1 {
                (0..n * n).map(|i| (i / n == i % n) as u8 as f32).collect()
            } else {
                imresize_matrix(n, out, scale)
                    .into_iter()
                    .map(|v| v as f32)
                    .collect()
            };
            Ok(Tensor::from_vec(m, (out, n), device)?)
        };
        Ok(Self {
            factor,
            in_hw: (h, w),
            m_h: matrix(h)?,
            m_w: matrix(w)?,
            copies: DeviceCache::new(),
            svd: std::sync::OnceLock::new(),
        })
    }

    /// The row matrix M_h `[H/k, H]` and the column matrix M_w `[W/k, W]` (f32).
    pub fn matrices(&self) -> (&Tensor, &Tensor) {
        (&self.m_h, &self.m_w)
    }

    fn check(&self, x: &Tensor) -> Result<()> {
        let (b, c, _, _) = dims4(x, "super-resolution")?;
        crate::error::expect_shape(
            "super-resolution input",
            x.dims(),
            &[b, c, self.in_hw.0, self.in_hw.1],
        )
    }

    /// M_h·t·M_wᵀ, or M_hᵀ·t·M_w when `adjoint`, with the matrices on `t`'s device.
    fn apply(&self, t: &Tensor, adjoint: bool) -> Result<Tensor> {
        let k = if adjoint { 2 } else { 0 };
        // Transposed views (no copy); only a copy for another device or dtype is materialised.
        let (a, b) = if adjoint {
            (self.m_h.t()?, self.m_w.t()?)
        } else {
            (self.m_h.clone(), self.m_w.clone())
        };
        let a = on_device_of(&self.copies, k, &a, t)?;
        let b = on_device_of(&self.copies, k + 1, &b, t)?;
        Self::sandwich(t, &a, &b)
    }

    /// M_a·t·M_bᵀ over the last two dims of `t` `[B, C, R, S]`.
    pub(crate) fn sandwich(t: &Tensor, m_a: &Tensor, m_b: &Tensor) -> Result<Tensor> {
        let (b, c, r, s) = t.dims4()?;
        let (m_a, m_b) = (m_a.to_dtype(t.dtype())?, m_b.to_dtype(t.dtype())?);
        let (ra, sb) = (m_a.dim(0)?, m_b.dim(0)?);
        let u = t.reshape((b * c * r, s))?.matmul(&m_b.t()?)?; // [BCR, S']
        let u = u.reshape((b * c, r, sb))?;
        let y = m_a.broadcast_left(b * c)?.matmul(&u)?; // [BC, R', S']
        Ok(y.reshape((b, c, ra, sb))?)
    }
}

impl Operator for SuperResolution {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        self.apply(x, false)
    }

    /// M_hᵀ·v·M_w.
    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        let (b, c, _, _) = x.dims4()?;
        let expected = [b, c, self.m_h.dim(0)?, self.m_w.dim(0)?];
        crate::error::expect_shape("super-resolution cotangent", v.dims(), &expected)?;
        self.apply(&v.to_dtype(x.dtype())?, true)
    }

    fn name(&self) -> String {
        format!(
            "super-resolution ×{} (bicubic, {}×{})",
            self.factor, self.in_hw.0, self.in_hw.1
        )
    }

    fn as_linear(&self) -> Option<&dyn Linear> {
        Some(self)
    }
}

/// Aᵀv = M_hᵀ·v·M_w; prox and pseudo-inverse by the CG defaults; an SVD ([`Svd`]) from the
/// two 1-D matrices, for DDRM and DDNM.
impl Linear for SuperResolution {
    fn adjoint(&self, v: &Tensor) -> Result<Tensor> {
        let (b, c, _, _) = dims4(v, "super-resolution adjoint")?;
        let expected = [b, c, self.m_h.dim(0)?, self.m_w.dim(0)?];
        crate::error::expect_shape("super-resolution adjoint input", v.dims(), &expected)?;
        self.apply(v, true)
    }

    fn svd(&self) -> Option<&dyn Svd> {
        Some(self)
    }
}

/// One axis: M = U diag(s) V₁ᵀ (M is [m, n], m ≤ n) with V = [V₁ | N] completed to an
/// orthonormal basis of Rⁿ by the null space N; s below [`crate::operator::blur::SVD_THRESHOLD`]
/// zeroed, as for blur.
struct Axis {
    u: nalgebra::DMatrix<f64>,
    v: nalgebra::DMatrix<f64>,
    s: Vec<f64>,
}

impl Axis {
    fn new(m: nalgebra::DMatrix<f64>) -> Result<Self> {
        let (rows, n) = m.shape();
        let svd = m.svd(true, true);
        let (Some(u), Some(vt)) = (svd.u, svd.v_t) else {
            return Err(Error::msg("super-resolution: 1-D SVD did not converge"));
        };
        let v1 = vt.transpose(); // [n, rows]
                                 // The null space: eigenvectors of I − V₁V₁ᵀ with eigenvalue 1.
        let proj = nalgebra::DMatrix::<f64>::identity(n, n) - &v1 * v1.transpose();
        let eig = proj.symmetric_eigen();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let mut v = nalgebra::DMatrix::<f64>::zeros(n, n);
        v.columns_mut(0, rows).copy_from(&v1);
        for (k, &i) in order.iter().take(n - rows).enumerate() {
            v.set_column(rows + k, &eig.eigenvectors.column(i));
        }
        let threshold = crate::operator::blur::SVD_THRESHOLD;
        let s = svd
            .singular_values
            .iter()
            .map(|&x| if x < threshold { 0.0 } else { x })
            .chain(std::iter::repeat_n(0.0, n - rows))
            .collect();
        Ok(Self { u, v, s })
    }
}

struct SrSvd {
    h: Axis,
    w: Axis,
}

impl SuperResolution {
    fn svd_parts(&self) -> Result<&SrSvd> {
        let (h, w) = self.in_hw;
        let scale = 1.0 / self.factor as f64;
        let axis = |n: usize| -> Result<Axis> {
            let out = (n as f64 * scale).ceil() as usize;
            let m = if self.factor == 1 {
                nalgebra::DMatrix::identity(n, n)
            } else {
                nalgebra::DMatrix::from_row_slice(out, n, &imresize_matrix(n, out, scale))
            };
            Axis::new(m)
        };
        self.svd
            .get_or_init(|| {
                Ok(SrSvd {
                    h: axis(h)?,
                    w: axis(w)?,
                })
            })
            .as_ref()
            .map_err(|e| Error::msg(e.to_string()))
    }

    /// `m` (nalgebra, column-major) as a tensor in `like`'s dtype and device.
    fn tensor(m: &nalgebra::DMatrix<f64>, like: &Tensor) -> Result<Tensor> {
        let rows: Vec<f64> = m.transpose().as_slice().to_vec();
        Ok(
            Tensor::from_vec(rows, (m.nrows(), m.ncols()), like.device())?
                .to_dtype(like.dtype())?,
        )
    }
}

/// A = (U_h ⊗ U_w) diag(s_h ⊗ s_w) (V_h ⊗ V_w)ᵀ: spectral coordinates V_hᵀ X V_w in x's shape
/// `[H, W]`, nonzero s only in the top-left `[H/k, W/k]` block, where Uᵀy = U_hᵀ Y U_w goes.
impl Svd for SuperResolution {
    fn apply_vt(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        let p = self.svd_parts()?;
        let (vh, vw) = (Self::tensor(&p.h.v, x)?, Self::tensor(&p.w.v, x)?);
        Self::sandwich(x, &vh.t()?, &vw.t()?)
    }

    fn apply_v(&self, c: &Tensor) -> Result<Tensor> {
        self.check(c)?;
        let p = self.svd_parts()?;
        Self::sandwich(c, &Self::tensor(&p.h.v, c)?, &Self::tensor(&p.w.v, c)?)
    }

    fn singular_values(&self, sample: &[usize]) -> Result<Vec<f64>> {
        let (h, w) = self.in_hw;
        let [c, sh, sw] = sample else {
            return Err(Error::msg(format!(
                "{}: SVD of [C, H, W] samples, got {sample:?}",
                self.name()
            )));
        };
        if (*sh, *sw) != (h, w) {
            return Err(Error::config(format!(
                "{}: SVD of {h}×{w} images, got {sh}×{sw}",
                self.name()
            )));
        }
        let p = self.svd_parts()?;
        let plane: Vec<f64> =
            p.h.s
                .iter()
                .flat_map(|a| p.w.s.iter().map(move |b| a * b))
                .collect();
        Ok((0..*c).flat_map(|_| plane.iter().copied()).collect())
    }

    fn project_y(&self, y: &Tensor) -> Result<Tensor> {
        let p = self.svd_parts()?;
        let (b, c, _, _) = dims4(y, "super-resolution SVD")?;
        let (m_h, m_w) = (p.h.u.nrows(), p.w.u.nrows());
        crate::error::expect_shape("super-resolution measurement", y.dims(), &[b, c, m_h, m_w])?;
        let t = Self::sandwich(
            y,
            &Self::tensor(&p.h.u, y)?.t()?,
            &Self::tensor(&p.w.u, y)?.t()?,
        )?;
        let mask: Vec<f64> = p.h.s[..m_h]
            .iter()
            .flat_map(|a| {
                p.w.s[..m_w]
                    .iter()
                    .map(move |b| f64::from(u8::from(a * b > 0.0)))
            })
            .collect();
        let mask = Tensor::from_vec(mask, (m_h, m_w), y.device())?.to_dtype(y.dtype())?;
        let t = t.broadcast_mul(&mask)?;
        let (h, w) = self.in_hw;
        Ok(t.pad_with_zeros(2, 0, h - m_h)?
            .pad_with_zeros(3, 0, w - m_w)?)
    }
}

/// ×k average pooling (H and W must be multiples of k).
#[derive(Debug, Clone, Copy)]
pub struct AvgPool {
    pub factor: usize,
}

impl AvgPool {
    /// Checks that `factor` is at least 1.
    pub fn new(factor: usize) -> Result<Self> {
        if factor == 0 {
            return Err(Error::config("average pooling: factor must be ≥ 1, got 0"));
        }
        Ok(Self { factor })
    }

    fn check(&self, x: &Tensor) -> Result<(usize, usize)> {
        let (_, _, h, w) = dims4(x, "average pooling")?;
        let k = self.factor;
        if k == 0 || h == 0 || w == 0 || h % k != 0 || w % k != 0 {
            return Err(Error::config(format!(
                "average pooling ×{k}: H and W must be positive multiples of {k}, got {h}×{w}"
            )));
        }
        Ok((h, w))
    }
}

impl Operator for AvgPool {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        Ok(x.avg_pool2d(self.factor)?)
    }

    /// v spread over each k×k block, divided by k².
    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (h, w) = self.check(x)?;
        let (b, c, _, _) = x.dims4()?;
        let k = self.factor;
        crate::error::expect_shape("average pooling cotangent", v.dims(), &[b, c, h / k, w / k])?;
        let v = v.to_dtype(x.dtype())?;
        Ok(v.upsample_nearest2d(h, w)?
            .affine(1.0 / (k * k) as f64, 0.0)?)
    }

    fn name(&self) -> String {
        format!("average pooling ×{}", self.factor)
    }

    fn as_linear(&self) -> Option<&dyn Linear> {
        Some(self)
    }
}

/// Closed forms: Aᵀ spreads each value over its k×k block divided by k², so AAᵀ = I/k² (A has
/// full row rank), A⁺ = k²·Aᵀ, and the prox follows from the Woodbury identity.
impl Linear for AvgPool {
    /// Nearest-neighbour upsampling by k, divided by k².
    fn adjoint(&self, v: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = dims4(v, "average pooling adjoint")?;
        let k = self.factor;
        if k == 0 {
            return Err(Error::config("average pooling ×0"));
        }
        Ok(v.upsample_nearest2d(h * k, w * k)?
            .affine(1.0 / (k * k) as f64, 0.0)?)
    }

    /// With b = Aᵀy + z/γ and c = 1/k²: (AᵀA + I/γ)⁻¹ = γI − γ²Aᵀ(I + γAAᵀ)⁻¹A, so
    /// x = γ·b − γ²/(1 + γc)·Aᵀ(A b).
    fn prox(&self, z: &Tensor, y: &Tensor, gamma: f64) -> Result<Tensor> {
        check_gamma(gamma)?;
        self.check(z)?;
        let k2 = (self.factor * self.factor) as f64;
        let b = self
            .adjoint(&y.to_dtype(z.dtype())?)?
            .broadcast_add(&(z / gamma)?)?;
        let ab = b.avg_pool2d(self.factor)?;
        let corr = self
            .adjoint(&ab)?
            .affine(gamma * gamma / (1.0 + gamma / k2), 0.0)?;
        Ok(((b * gamma)? - corr)?)
    }

    /// k²·Aᵀy: nearest-neighbour upsampling.
    fn pinv(&self, y: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = dims4(y, "average pooling pseudo-inverse")?;
        let k = self.factor;
        Ok(y.upsample_nearest2d(h * k, w * k)?)
    }

    fn svd(&self) -> Option<&dyn Svd> {
        Some(self)
    }
}

/// Per k×k block, V is the Householder reflection H = I − 2wwᵀ/‖w‖², w = e₁ − 𝟙/k (symmetric,
/// H e₁ = 𝟙/k): the first coordinate is the block sum / k, with s = 1/k (A x = (𝟙/k)ᵀx / k), the
/// other k² − 1 are null directions. Spectral layout: `[B, C, H/k, W/k, k²]` read as
/// `[B, C, H, W]`; U = I.
impl Svd for AvgPool {
    fn apply_vt(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = dims4(x, "average pooling SVD")?;
        let k = self.factor;
        let blocks = x
            .reshape(vec![b, c, h / k, k, w / k, k])?
            .permute(vec![0, 1, 2, 4, 3, 5])?
            .reshape((b * c * (h / k) * (w / k), k * k))?;
        Ok(blocks
            .matmul(&self.householder(x)?)?
            .reshape((b, c, h, w))?)
    }
    fn apply_v(&self, s: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = dims4(s, "average pooling SVD")?;
        let k = self.factor;
        let blocks = s.reshape((b * c * (h / k) * (w / k), k * k))?;
        Ok(blocks
            .matmul(&self.householder(s)?)?
            .reshape(vec![b, c, h / k, w / k, k, k])?
            .permute(vec![0, 1, 2, 4, 3, 5])?
            .reshape((b, c, h, w))?)
    }
    fn singular_values(&self, sample: &[usize]) -> Result<Vec<f64>> {
        let k = self.factor;
        let n: usize = sample.iter().product();
        Ok((0..n)
            .map(|i| {
                if i % (k * k) == 0 {
                    1.0 / k as f64
                } else {
                    0.0
                }
            })
            .collect())
    }
    fn project_y(&self, y: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = dims4(y, "average pooling SVD")?;
        let k = self.factor;
        let zeros = Tensor::zeros((b, c, h, w, k * k - 1), y.dtype(), y.device())?;
        Ok(Tensor::cat(&[&y.unsqueeze(4)?, &zeros], 4)?.reshape((b, c, h * k, w * k))?)
    }
}

impl AvgPool {
    /// The k²×k² reflection of [`Svd for AvgPool`], in x's dtype.
    fn householder(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.factor;
        let n = k * k;
        let wv: Vec<f64> = (0..n)
            .map(|i| f64::from(u8::from(i == 0)) - 1.0 / k as f64)
            .collect();
        let w2: f64 = wv.iter().map(|v| v * v).sum();
        let h: Vec<f64> = (0..n * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                let id = f64::from(u8::from(i == j));
                if w2 > 0.0 {
                    id - 2.0 * wv[i] * wv[j] / w2
                } else {
                    id
                }
            })
            .collect();
        Ok(Tensor::from_vec(h, (n, n), x.device())?.to_dtype(x.dtype())?)
    }
}
