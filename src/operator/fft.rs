//! Centred orthonormal 2-D FFTs (fastMRI `fft2c`) on rustfft, and the phase-retrieval operator.
//!
//! Complex tensors carry (re, im) in a trailing dimension of size 2. [`fft2c`] and [`ifft2c`] are
//! candle custom ops; both transforms are unitary, so the backward of one is the other and they
//! compose with autograd (to any order). Kernels run on the CPU in f32 or f64; tensors on other
//! devices are moved there and back.

use super::portable::{dft2, Sandwich};
use super::Operator;
use crate::error::{Error, Result};
use crate::nn::cpu_slice;
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, WithDType, D,
};
use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::num_traits::Float;
use rustfft::{Fft, FftNum, FftPlanner};
use std::any::Any;
use std::sync::{Arc, Mutex, OnceLock};

/// Floating-point types the CPU kernels run in (f32 and f64).
pub trait Real: FftNum + Float + WithDType {
    /// A process-wide planner; rustfft caches plans inside it.
    fn planner() -> &'static Mutex<FftPlanner<Self>>;
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            fn planner() -> &'static Mutex<FftPlanner<$t>> {
                static PLANNER: OnceLock<Mutex<FftPlanner<$t>>> = OnceLock::new();
                PLANNER.get_or_init(|| Mutex::new(FftPlanner::new()))
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

pub(crate) fn cast<T: Real>(v: f64) -> T {
    <T as WithDType>::from_f64(v)
}

/// A 1-D plan of length `len` (unnormalised, like rustfft).
pub(crate) fn plan<T: Real>(len: usize, inverse: bool) -> Arc<dyn Fft<T>> {
    let mut p = T::planner().lock().unwrap_or_else(|e| e.into_inner());
    if inverse {
        p.plan_fft_inverse(len)
    } else {
        p.plan_fft_forward(len)
    }
}

/// The smallest 5-smooth integer ≥ n (fast rustfft sizes).
pub(crate) fn fast_len(n: usize) -> usize {
    (n.max(1)..)
        .find(|&m| {
            let mut m = m;
            for p in [2, 3, 5] {
                while m % p == 0 {
                    m /= p;
                }
            }
            m == 1
        })
        .expect("5-smooth numbers are unbounded")
}

/// Blocked transpose: `dst[c·rows + r] = src[r·cols + c]`.
pub(crate) fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// Cyclic roll: `dst[i][j] = src[(i + di) % h][(j + dj) % w]`.
fn roll2<T: Copy>(src: &[T], dst: &mut [T], h: usize, w: usize, di: usize, dj: usize) {
    for i in 0..h {
        let s = &src[((i + di) % h) * w..][..w];
        let d = &mut dst[i * w..(i + 1) * w];
        d[..w - dj].copy_from_slice(&s[dj..]);
        d[w - dj..].copy_from_slice(&s[..dj]);
    }
}

/// Scratch buffers for [`CenteredFft2::run`].
pub(crate) struct Workspace<T> {
    a: Vec<Complex<T>>,
    b: Vec<Complex<T>>,
    scratch: Vec<Complex<T>>,
}

impl<T: Real> Default for Workspace<T> {
    fn default() -> Self {
        Self {
            a: Vec::new(),
            b: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

/// A planned centred orthonormal transform of h×w planes:
/// `fftshift(F(ifftshift(x)))/√(hw)`, with F the DFT or its (unnormalised) inverse.
pub(crate) struct CenteredFft2<T: Real> {
    h: usize,
    w: usize,
    rows: Arc<dyn Fft<T>>,
    cols: Arc<dyn Fft<T>>,
    scale: T,
}

impl<T: Real> CenteredFft2<T> {
    pub fn new(h: usize, w: usize, inverse: bool) -> Self {
        Self {
            h,
            w,
            rows: plan(w, inverse),
            cols: plan(h, inverse),
            scale: cast(1.0 / ((h * w) as f64).sqrt()),
        }
    }

    /// Transforms one plane `inp` (h·w, row-major) into `out`.
    pub fn run(&self, inp: &[Complex<T>], out: &mut [Complex<T>], ws: &mut Workspace<T>) {
        let (h, w) = (self.h, self.w);
        let zero = Complex::new(T::zero(), T::zero());
        ws.a.resize(h * w, zero);
        ws.b.resize(h * w, zero);
        let len = self
            .rows
            .get_inplace_scratch_len()
            .max(self.cols.get_inplace_scratch_len());
        ws.scratch.resize(len, zero);

        roll2(inp, &mut ws.a, h, w, h / 2, w / 2); // ifftshift
        self.rows.process_with_scratch(&mut ws.a, &mut ws.scratch);
        transpose(&ws.a, h, w, &mut ws.b);
        self.cols.process_with_scratch(&mut ws.b, &mut ws.scratch);
        transpose(&ws.b, w, h, &mut ws.a);
        roll2(&ws.a, out, h, w, h - h / 2, w - w / 2); // fftshift
        for z in out.iter_mut() {
            *z *= self.scale;
        }
    }
}

/// Scratch buffers kept between calls: fresh multi-megabyte allocations cost page faults.
static POOL: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());

/// A pooled scratch value, returned to the pool on drop.
pub(crate) struct Pooled<W: Any + Send>(Option<Box<W>>);

impl<W: Any + Send> Pooled<W> {
    /// Takes a pooled `W` accepted by `fits`, or makes a new one.
    pub fn take(fits: impl Fn(&W) -> bool, make: impl FnOnce() -> W) -> Self {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let found = pool
            .iter()
            .position(|b| b.downcast_ref::<W>().is_some_and(&fits));
        let w = match found {
            Some(i) => pool.swap_remove(i).downcast::<W>().ok(),
            None => None,
        };
        drop(pool);
        Self(Some(w.unwrap_or_else(|| Box::new(make()))))
    }
}

impl<W: Any + Send> std::ops::Deref for Pooled<W> {
    type Target = W;
    fn deref(&self) -> &W {
        // Invariant: `Some` from construction until `drop` takes it.
        self.0.as_ref().expect("present until drop")
    }
}

impl<W: Any + Send> std::ops::DerefMut for Pooled<W> {
    fn deref_mut(&mut self) -> &mut W {
        self.0.as_mut().expect("present until drop")
    }
}

impl<W: Any + Send> Drop for Pooled<W> {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            pool.push(w);
            // Bound the memory held: drop the oldest entries.
            let excess = pool.len().saturating_sub(16);
            pool.drain(..excess);
        }
    }
}

/// Applies a CPU custom op, moving a non-CPU tensor to the CPU and back (differentiably).
pub(crate) fn apply_on_cpu<C>(x: &Tensor, op: C) -> candle_core::Result<Tensor>
where
    C: CustomOp1 + Send + Sync + 'static,
{
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(op)
    } else {
        x.to_device(&Device::Cpu)?
            .contiguous()?
            .apply_op1(op)?
            .to_device(x.device())
    }
}

struct Fft2cOp {
    inverse: bool,
}

impl Fft2cOp {
    fn run<T: Real>(&self, data: &[T], h: usize, w: usize) -> Vec<T> {
        let n = h * w;
        let plan = CenteredFft2::<T>::new(h, w, self.inverse);
        let zero = Complex::new(T::zero(), T::zero());
        let mut out = vec![T::zero(); data.len()];
        out.par_chunks_mut(2 * n)
            .zip(data.par_chunks(2 * n))
            .for_each_init(
                || (Workspace::default(), Vec::new(), vec![zero; n]),
                |(ws, zin, zout), (o, i)| {
                    zin.clear();
                    zin.extend(i.chunks_exact(2).map(|p| Complex::new(p[0], p[1])));
                    plan.run(zin, zout, ws);
                    for (d, z) in o.chunks_exact_mut(2).zip(zout.iter()) {
                        d[0] = z.re;
                        d[1] = z.im;
                    }
                },
            );
        out
    }
}

impl CustomOp1 for Fft2cOp {
    fn name(&self) -> &'static str {
        if self.inverse {
            "ifft2c"
        } else {
            "fft2c"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let r = dims.len();
        if r < 3 || dims[r - 1] != 2 {
            bail!("{}: expected [..., H, W, 2], got {dims:?}", self.name());
        }
        let (h, w) = (dims[r - 3], dims[r - 2]);
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(self.run(cpu_slice::<f32>(s, l)?, h, w)),
            DType::F64 => CpuStorage::F64(self.run(cpu_slice::<f64>(s, l)?, h, w)),
            dt => bail!("{}: unsupported dtype {dt:?}", self.name()),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(apply_on_cpu(
            grad,
            Fft2cOp {
                inverse: !self.inverse,
            },
        )?))
    }
}

fn check_complex(z: &Tensor, what: &str) -> Result<()> {
    let dims = z.dims();
    let r = dims.len();
    if r < 3 || dims[r - 1] != 2 || dims[r - 2] == 0 || dims[r - 3] == 0 {
        let mut expected = dims.to_vec();
        expected.push(2);
        return Err(Error::Shape {
            what: format!("{what} input ([..., H, W, 2])"),
            expected,
            got: dims.to_vec(),
        });
    }
    Ok(())
}

/// Centred orthonormal 2-D FFT over dims (-3, -2) of a complex `[..., H, W, 2]` tensor:
/// `fftshift(fft2(ifftshift(z), norm="ortho"))`. Differentiable.
pub fn fft2c(z: &Tensor) -> Result<Tensor> {
    check_complex(z, "fft2c")?;
    if !z.device().is_cpu() {
        return super::portable::fft2c(z, false);
    }
    Ok(apply_on_cpu(z, Fft2cOp { inverse: false })?)
}

/// Inverse of [`fft2c`] (and its adjoint): `fftshift(ifft2(ifftshift(z), norm="ortho"))`.
pub fn ifft2c(z: &Tensor) -> Result<Tensor> {
    check_complex(z, "ifft2c")?;
    if !z.device().is_cpu() {
        return super::portable::fft2c(z, true);
    }
    Ok(apply_on_cpu(z, Fft2cOp { inverse: true })?)
}

/// Builds a complex `[..., 2]` tensor from real and imaginary parts of equal shape.
pub fn complex(re: &Tensor, im: &Tensor) -> Result<Tensor> {
    Ok(Tensor::stack(&[re, im], D::Minus1)?)
}

/// A real tensor as complex (zero imaginary part).
pub fn real_to_complex(re: &Tensor) -> Result<Tensor> {
    complex(re, &re.zeros_like()?)
}

/// The real and imaginary parts of a complex `[..., 2]` tensor.
pub fn complex_parts(z: &Tensor) -> Result<(Tensor, Tensor)> {
    let re = z.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
    let im = z.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
    Ok((re, im))
}

struct ComplexAbsOp;

impl ComplexAbsOp {
    fn run<T: Real>(data: &[T]) -> Vec<T> {
        data.chunks_exact(2).map(|p| p[0].hypot(p[1])).collect()
    }
}

impl CustomOp1 for ComplexAbsOp {
    fn name(&self) -> &'static str {
        "complex-abs"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        if dims.last() != Some(&2) {
            bail!("complex-abs: expected [..., 2], got {dims:?}");
        }
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(Self::run(cpu_slice::<f32>(s, l)?)),
            DType::F64 => CpuStorage::F64(Self::run(cpu_slice::<f64>(s, l)?)),
            dt => bail!("complex-abs: unsupported dtype {dt:?}"),
        };
        Ok((out, Shape::from(&dims[..dims.len() - 1])))
    }

    /// g·z/|z|, and 0 where z = 0 (instead of NaN).
    fn bwd(&self, z: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let r = res.unsqueeze(D::Minus1)?;
        let safe = r.eq(0.0)?.where_cond(&r.ones_like()?, &r)?;
        let unit = z.broadcast_div(&safe)?;
        Ok(Some(unit.broadcast_mul(&grad.unsqueeze(D::Minus1)?)?))
    }
}

/// |z| of a complex `[..., 2]` tensor, with gradient 0 (not NaN) at z = 0.
pub fn complex_abs(z: &Tensor) -> Result<Tensor> {
    if z.dims().last() != Some(&2) {
        return Err(Error::Shape {
            what: "complex_abs input ([..., 2])".into(),
            expected: vec![2],
            got: z.dims().to_vec(),
        });
    }
    Ok(apply_on_cpu(z, ComplexAbsOp)?)
}

/// Fourier phase retrieval: A(x) = |fft2c(pad(x/2 + 1/2))| per channel, zero padding
/// ⌊oversample/8 · H⌋ rows and ⌊oversample/8 · W⌋ columns on each side (DAPS: 2.0, 256 → 384).
///
/// Forward and VJP are fused CPU kernels that transform two real channels with one complex FFT;
/// the forward is a custom op whose backward is the VJP, so it also works under autograd. The
/// VJP is 0 (not NaN) where a Fourier coefficient vanishes.
#[derive(Debug, Clone, Copy)]
pub struct PhaseRetrieval {
    pub oversample: f64,
}

impl Default for PhaseRetrieval {
    fn default() -> Self {
        Self { oversample: 2.0 }
    }
}

impl PhaseRetrieval {
    /// Checks that `oversample` is finite and ≥ 0.
    pub fn new(oversample: f64) -> Result<Self> {
        if !(oversample.is_finite() && oversample >= 0.0) {
            return Err(Error::config(format!(
                "oversample must be finite and ≥ 0, got {oversample}"
            )));
        }
        Ok(Self { oversample })
    }

    /// Padding (rows, columns) per side for an H×W image.
    pub fn padding(&self, h: usize, w: usize) -> (usize, usize) {
        let p = |n: usize| (self.oversample / 8.0 * n as f64).floor() as usize;
        (p(h), p(w))
    }

    /// Validates the input; returns (H, W).
    fn check(&self, x: &Tensor) -> Result<(usize, usize)> {
        if !(self.oversample.is_finite() && self.oversample >= 0.0) {
            return Err(Error::config(format!(
                "phase retrieval: oversample must be finite and ≥ 0, got {}",
                self.oversample
            )));
        }
        let dims = x.dims();
        if dims.len() != 4 || dims[2] == 0 || dims[3] == 0 {
            return Err(Error::Shape {
                what: "phase retrieval input [B, C, H, W]".into(),
                expected: vec![1, 3, 256, 256],
                got: dims.to_vec(),
            });
        }
        Ok((dims[2], dims[3]))
    }
}

impl PhaseRetrieval {
    /// The dense 2-D DFT of the padded plane for an H×W input (adjoint: back to H×W).
    fn dense(&self, like: &Tensor, adjoint: bool) -> Result<Arc<Sandwich>> {
        let (_, _, h, w) = like.dims4()?;
        let (ph, pw) = self.padding(h, w);
        dft2(like, (h + 2 * ph, ph, h), (w + 2 * pw, pw, w), adjoint)
    }

    /// (Re, Im) of fft2c(pad(x/2 + 1/2)) by dense products (any device).
    fn spectrum_dense(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let u = x.affine(0.5, 0.5)?;
        self.dense(x, false)?.apply(&u, None)
    }

    /// Checks a cotangent's shape against the input's.
    fn check_cotangent(&self, x: &Tensor, v: &Tensor) -> Result<()> {
        let (h, w) = self.check(x)?;
        let (ph, pw) = self.padding(h, w);
        let mut expected = x.dims().to_vec();
        expected[2] = h + 2 * ph;
        expected[3] = w + 2 * pw;
        crate::error::expect_shape("phase retrieval cotangent", v.dims(), &expected)
    }

    /// ½ Re(Fᴴ(v ⊙ z/|z|)) restricted to the unpadded plane, 0 where z = 0.
    fn vjp_dense(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (zr, zi) = self.spectrum_dense(x)?;
        let mag = (zr.sqr()? + zi.sqr()?)?.sqrt()?;
        let safe = mag.eq(0.0)?.where_cond(&mag.ones_like()?, &mag)?;
        let s = v.to_dtype(x.dtype())?.div(&safe)?;
        let (g, _) = self.dense(x, true)?.apply(&(zr * &s)?, Some(&(zi * &s)?))?;
        Ok(g.affine(0.5, 0.0)?)
    }
}

impl Operator for PhaseRetrieval {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        if !x.device().is_cpu() {
            return self.forward_portable(x);
        }
        Ok(apply_on_cpu(x, PhaseRetrievalOp(*self))?)
    }

    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.check_cotangent(x, v)?;
        if !x.device().is_cpu() {
            return self.vjp_dense(x, v);
        }
        Ok(PhaseRetrievalOp(*self).vjp(x, v)?)
    }

    fn residual_vjp(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let (h, w) = self.check(x)?;
        let (ph, pw) = self.padding(h, w);
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let fused = x.device().is_cpu()
            && matches!(x.dtype(), DType::F32 | DType::F64)
            && y.dtype() == x.dtype()
            && y.rank() == 4
            && (y.dim(0)? == b || y.dim(0)? == 1)
            && y.dims()[1..] == [c, h + 2 * ph, w + 2 * pw];
        if !fused {
            return super::residual_then_vjp(self, x, y);
        }
        let op = PhaseRetrievalOp(*self);
        Ok(match x.dtype() {
            DType::F32 => op.residual_vjp_tensor::<f32>(x, y, h, w)?,
            _ => op.residual_vjp_tensor::<f64>(x, y, h, w)?,
        })
    }

    fn forward_portable(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        let (zr, zi) = self.spectrum_dense(x)?;
        Ok((zr.sqr()? + zi.sqr()?)?.sqrt()?)
    }

    fn vjp_portable(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.check_cotangent(x, v)?;
        self.vjp_dense(x, v)
    }

    fn name(&self) -> String {
        format!("phase retrieval (oversample {})", self.oversample)
    }
}

/// Fused plane kernels; each call handles a pair of channels packed as re + i·im.
///
/// Spectra are kept in standard (unshifted) frequency order and transposed (`[wp][hp]`), so
/// the centring shifts become index maps and each 2-D transform needs a single transpose.
struct PrKernel<T: Real> {
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    hp: usize,
    wp: usize,
    row_fwd: Arc<dyn Fft<T>>,
    col_fwd: Arc<dyn Fft<T>>,
    row_inv: Arc<dyn Fft<T>>,
    col_inv: Arc<dyn Fft<T>>,
    /// Centred index → standard index, per axis: (i + n − ⌊n/2⌋) mod n.
    shift_h: Vec<usize>,
    shift_w: Vec<usize>,
    /// Standard index → offset of its centred row (·wp) and its centred column.
    unshift_h: Vec<usize>,
    unshift_w: Vec<usize>,
    scale: T,
}

struct PrWork<T> {
    a: Vec<Complex<T>>,
    b: Vec<Complex<T>>,
    c: Vec<Complex<T>>,
    ra: Vec<T>,
    rb: Vec<T>,
    scratch: Vec<Complex<T>>,
}

const TILE: usize = 32;

impl<T: Real> PrKernel<T> {
    fn new(op: &PhaseRetrieval, h: usize, w: usize) -> Self {
        let (ph, pw) = op.padding(h, w);
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        let shift = |n: usize| (0..n).map(|i| (i + n - n / 2) % n).collect();
        Self {
            h,
            w,
            ph,
            pw,
            hp,
            wp,
            row_fwd: plan(wp, false),
            col_fwd: plan(hp, false),
            row_inv: plan(wp, true),
            col_inv: plan(hp, true),
            shift_h: shift(hp),
            shift_w: shift(wp),
            unshift_h: (0..hp).map(|r| (r + hp / 2) % hp * wp).collect(),
            unshift_w: (0..wp).map(|c| (c + wp / 2) % wp).collect(),
            scale: cast(1.0 / ((hp * wp) as f64).sqrt()),
        }
    }

    fn work(&self) -> Pooled<PrWork<T>> {
        let n = self.hp * self.wp;
        Pooled::take(|w: &PrWork<T>| w.a.len() == n, || self.new_work())
    }

    fn new_work(&self) -> PrWork<T> {
        let zero = Complex::new(T::zero(), T::zero());
        let n = self.hp * self.wp;
        let scratch = [&self.row_fwd, &self.col_fwd, &self.row_inv, &self.col_inv]
            .iter()
            .map(|p| p.get_inplace_scratch_len())
            .max()
            .unwrap_or(0);
        PrWork {
            a: vec![zero; n],
            b: vec![zero; n],
            c: vec![zero; n],
            ra: vec![T::zero(); n],
            rb: vec![T::zero(); n],
            scratch: vec![zero; scratch],
        }
    }

    /// ws.b = DFT(ifftshift(pad(xa/2 + 1/2) + i·pad(xb/2 + 1/2))), unnormalised, transposed.
    /// An empty `xb` counts as zero.
    fn transform(&self, xa: &[T], xb: &[T], ws: &mut PrWork<T>) {
        let (half, wp) = (cast::<T>(0.5), self.wp);
        ws.a.fill(Complex::new(T::zero(), T::zero()));
        for i in 0..self.h {
            let r = self.shift_h[i + self.ph];
            let row = &mut ws.a[r * wp..(r + 1) * wp];
            for j in 0..self.w {
                let z = &mut row[self.shift_w[j + self.pw]];
                z.re = xa[i * self.w + j] * half + half;
                if !xb.is_empty() {
                    z.im = xb[i * self.w + j] * half + half;
                }
            }
            // Only rows holding image data are nonzero.
            self.row_fwd.process_with_scratch(row, &mut ws.scratch);
        }
        transpose(&ws.a, self.hp, wp, &mut ws.b);
        self.col_fwd
            .process_with_scratch(&mut ws.b, &mut ws.scratch);
    }

    /// Calls `f(k, m)` for each transposed index k and the index m of the frequency −k.
    fn for_each_mirrored(&self, mut f: impl FnMut(usize, usize)) {
        let (hp, wp) = (self.hp, self.wp);
        for c in 0..wp {
            let mc = (wp - c) % wp;
            f(c * hp, mc * hp);
            for r in 1..hp {
                f(c * hp + r, mc * hp + hp - r);
            }
        }
    }

    /// Calls `f(k, m, ck, cm)` once for each pair of a transposed index k and the index m of −k
    /// (k = m for the frequencies that are their own mirror), with ck, cm their offsets in a
    /// centred row-major plane.
    fn for_each_pair(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let (hp, wp) = (self.hp, self.wp);
        let (uh, uw) = (&self.unshift_h, &self.unshift_w);
        for c in 0..=wp / 2 {
            let mc = (wp - c) % wp;
            // A column that mirrors onto itself pairs rows r and hp − r within it.
            let rows = if c == mc { hp / 2 + 1 } else { hp };
            for r in 0..rows {
                let mr = (hp - r) % hp;
                f(c * hp + r, mc * hp + mr, uh[r] + uw[c], uh[mr] + uw[mc]);
            }
        }
    }

    /// The spectra of the two real channels at k, from the packed spectrum (m: index of −k).
    fn split(z: &[Complex<T>], k: usize, m: usize) -> (Complex<T>, Complex<T>) {
        let (zk, zm) = (z[k], z[m].conj());
        let half = cast::<T>(0.5);
        let a = (zk + zm) * half;
        let d = (zk - zm) * half;
        (a, Complex::new(d.im, -d.re)) // (zk − zm)/(2i)
    }

    /// dst (centred, row-major `[hp][wp]`) ← f(src (standard, transposed)), in tiles.
    fn gather<S: Copy, U>(&self, src: &[S], dst: &mut [U], f: impl Fn(S) -> U) {
        let (hp, wp) = (self.hp, self.wp);
        for i0 in (0..hp).step_by(TILE) {
            for j0 in (0..wp).step_by(TILE) {
                for i in i0..(i0 + TILE).min(hp) {
                    let r = self.shift_h[i];
                    for j in j0..(j0 + TILE).min(wp) {
                        dst[i * wp + j] = f(src[self.shift_w[j] * hp + r]);
                    }
                }
            }
        }
    }

    /// The inverse of [`Self::gather`] for real data: dst (standard, transposed) ← src (centred).
    fn scatter(&self, src: &[T], dst: &mut [T]) {
        let (hp, wp) = (self.hp, self.wp);
        for i0 in (0..hp).step_by(TILE) {
            for j0 in (0..wp).step_by(TILE) {
                for i in i0..(i0 + TILE).min(hp) {
                    let r = self.shift_h[i];
                    for j in j0..(j0 + TILE).min(wp) {
                        dst[self.shift_w[j] * hp + r] = src[i * wp + j];
                    }
                }
            }
        }
    }

    fn forward(&self, x: [&[T]; 2], y: [&mut [T]; 2], ws: &mut PrWork<T>) {
        self.transform(x[0], x[1], ws);
        let [ya, yb] = y;
        let s = self.scale;
        if yb.is_empty() {
            self.gather(&ws.b, ya, |z| abs(z) * s);
            return;
        }
        let (z, ra, rb) = (&ws.b, &mut ws.ra, &mut ws.rb);
        self.for_each_mirrored(|k, m| {
            let (a, b) = Self::split(z, k, m);
            ra[k] = abs(a) * s;
            rb[k] = abs(b) * s;
        });
        self.gather(&ws.ra, ya, |v| v);
        self.gather(&ws.rb, yb, |v| v);
    }

    /// The spectrum of x into ws.b and the one or two planes `v` (centred) into ws.ra, ws.rb
    /// (standard, transposed); whether there are two.
    fn load(&self, x: [&[T]; 2], v: [&[T]; 2], ws: &mut PrWork<T>) -> bool {
        self.transform(x[0], x[1], ws);
        let paired = !v[1].is_empty();
        self.scatter(v[0], &mut ws.ra);
        if paired {
            self.scatter(v[1], &mut ws.rb);
        }
        paired
    }

    /// g = ½·Re(ifft2c(v·z/|z|)) cropped, per channel (0 where z = 0).
    fn vjp(&self, x: [&[T]; 2], v: [&[T]; 2], g: [&mut [T]; 2], ws: &mut PrWork<T>) {
        let paired = self.load(x, v, ws);
        // ws.a, ws.c = v·z/|z| for each channel.
        let (z, wa, wb, va, vb) = (&ws.b, &mut ws.a, &mut ws.c, &ws.ra, &ws.rb);
        self.for_each_mirrored(|k, m| {
            let (a, b) = Self::split(z, k, m);
            wa[k] = unit(a, va[k]);
            wb[k] = if paired { unit(b, vb[k]) } else { zero() };
        });
        self.vjp_tail(g, ws);
    }

    /// [`Self::vjp`] at v = A(x) − y, from one transform of x (not one for A(x) and one for
    /// the VJP): the same values, bit for bit, as `forward`, the subtraction, then `vjp`.
    ///
    /// Each pair of mirrored frequencies (k, −k) is visited once: the split spectra at −k are
    /// the conjugates of those at k (exactly: the same sums, negated), so their magnitudes are
    /// computed once, and the Hermitian parts at k and −k (see [`Self::vjp_tail`]) are written
    /// straight over the spectrum, with no v·z/|z| planes in between.
    fn residual_vjp(&self, x: [&[T]; 2], y: [&[T]; 2], g: [&mut [T]; 2], ws: &mut PrWork<T>) {
        self.transform(x[0], x[1], ws);
        let paired = !y[1].is_empty();
        let (s, half) = (self.scale, cast::<T>(0.5));
        let (z, [ya, yb]) = (&mut ws.b, y);
        // The Hermitian parts of wa, wb at k (as vjp_tail), packed as one spectrum.
        let herm = |wk: Complex<T>, wm: Complex<T>, vk: Complex<T>, vm: Complex<T>| {
            let ha = (wk + wm.conj()) * half;
            let hb = (vk + vm.conj()) * half;
            Complex::new(ha.re - hb.im, ha.im + hb.re)
        };
        // y is read in place (centred), not scattered into the spectrum's order first.
        self.for_each_pair(|k, m, ck, cm| {
            let (a, b) = Self::split(z, k, m);
            let (wak, wbk, wam, wbm) = if paired {
                // As `forward` computes each channel's magnitude: from the split spectra.
                let (ra, rb) = (abs(a), abs(b));
                (
                    unit_of(a, ra, ra * s - ya[ck]),
                    unit_of(b, rb, rb * s - yb[ck]),
                    unit_of(a.conj(), ra, ra * s - ya[cm]),
                    unit_of(b.conj(), rb, rb * s - yb[cm]),
                )
            } else {
                // One channel: `forward` takes the magnitude of the packed spectrum itself.
                (
                    unit(a, abs(z[k]) * s - ya[ck]),
                    zero(),
                    unit(a.conj(), abs(z[m]) * s - ya[cm]),
                    zero(),
                )
            };
            if k == m {
                z[k] = herm(wak, wak, wbk, wbk);
            } else {
                z[k] = herm(wak, wam, wbk, wbm);
                z[m] = herm(wam, wak, wbm, wbk);
            }
        });
        self.inverse_crop(g, ws);
    }

    /// The rest of [`Self::vjp`] from ws.a, ws.c = v·z/|z| per channel.
    fn vjp_tail(&self, g: [&mut [T]; 2], ws: &mut PrWork<T>) {
        // Re(ifft2c(w)) = ifft2c(Hermitian part of w): both channels in one transform.
        let half = cast::<T>(0.5);
        let (wa, wb, u) = (&ws.a, &ws.c, &mut ws.b);
        self.for_each_mirrored(|k, m| {
            let ha = (wa[k] + wa[m].conj()) * half;
            let hb = (wb[k] + wb[m].conj()) * half;
            u[k] = Complex::new(ha.re - hb.im, ha.im + hb.re);
        });
        self.inverse_crop(g, ws);
    }

    /// g = the unpadded plane of the inverse transform of ws.b (transposed, standard order),
    /// real part to the first channel, imaginary to the second, each times ½·scale.
    fn inverse_crop(&self, g: [&mut [T]; 2], ws: &mut PrWork<T>) {
        let half = cast::<T>(0.5);
        self.col_inv
            .process_with_scratch(&mut ws.b, &mut ws.scratch);
        transpose(&ws.b, self.wp, self.hp, &mut ws.a);
        let s = self.scale * half;
        let [ga, gb] = g;
        for i in 0..self.h {
            let r = self.shift_h[i + self.ph];
            let row = &mut ws.a[r * self.wp..(r + 1) * self.wp];
            self.row_inv.process_with_scratch(row, &mut ws.scratch);
            for j in 0..self.w {
                let z = row[self.shift_w[j + self.pw]];
                ga[i * self.w + j] = z.re * s;
                if !gb.is_empty() {
                    gb[i * self.w + j] = z.im * s;
                }
            }
        }
    }
}

fn zero<T: Real>() -> Complex<T> {
    Complex::new(T::zero(), T::zero())
}

fn abs<T: Real>(z: Complex<T>) -> T {
    (z.re * z.re + z.im * z.im).sqrt()
}

/// v·z/|z| (0 where z = 0).
fn unit<T: Real>(z: Complex<T>, v: T) -> Complex<T> {
    unit_of(z, abs(z), v)
}

/// [`unit`] with r = |z| given.
#[inline(always)]
fn unit_of<T: Real>(z: Complex<T>, r: T, v: T) -> Complex<T> {
    if r > T::zero() {
        z * (v / r)
    } else {
        zero()
    }
}

/// Splits a chunk of one or two planes of `n` values.
fn two<T>(s: &[T], n: usize) -> [&[T]; 2] {
    let (a, b) = s.split_at(n);
    [a, b]
}

fn two_mut<T>(s: &mut [T], n: usize) -> [&mut [T]; 2] {
    let (a, b) = s.split_at_mut(n);
    [a, b]
}

struct PhaseRetrievalOp(PhaseRetrieval);

impl PhaseRetrievalOp {
    fn forward_cpu<T: Real>(&self, x: &[T], h: usize, w: usize) -> Vec<T> {
        let k = PrKernel::<T>::new(&self.0, h, w);
        let (n, np) = (h * w, k.hp * k.wp);
        let mut y = vec![T::zero(); x.len() / n * np];
        y.par_chunks_mut(2 * np)
            .zip(x.par_chunks(2 * n))
            .for_each_init(
                || k.work(),
                |ws, (y, x)| k.forward(two(x, n), two_mut(y, np), ws),
            );
        y
    }

    fn vjp_cpu<T: Real>(&self, x: &[T], v: &[T], h: usize, w: usize) -> Vec<T> {
        let k = PrKernel::<T>::new(&self.0, h, w);
        let (n, np) = (h * w, k.hp * k.wp);
        let mut g = vec![T::zero(); x.len()];
        g.par_chunks_mut(2 * n)
            .zip(x.par_chunks(2 * n).zip(v.par_chunks(2 * np)))
            .for_each_init(
                || k.work(),
                |ws, (g, (x, v))| k.vjp(two(x, n), two(v, np), two_mut(g, n), ws),
            );
        g
    }

    /// Jᵀ(A(x) − y) on the CPU for x `[B, C, H, W]` (flat) and y `[B or 1, C, H', W']` (flat,
    /// `yp` planes): plane p of x meets plane p mod yp of y.
    fn residual_vjp_cpu<T: Real>(&self, x: &[T], y: &[T], h: usize, w: usize) -> Vec<T> {
        let k = PrKernel::<T>::new(&self.0, h, w);
        let (n, np) = (h * w, k.hp * k.wp);
        let yp = y.len() / np;
        let plane = |p: usize| &y[(p % yp) * np..][..np];
        let mut g = vec![T::zero(); x.len()];
        g.par_chunks_mut(2 * n)
            .zip(x.par_chunks(2 * n))
            .enumerate()
            .for_each_init(
                || k.work(),
                |ws, (i, (g, x))| {
                    let y1 = if x.len() > n { plane(2 * i + 1) } else { &[] };
                    k.residual_vjp(two(x, n), [plane(2 * i), y1], two_mut(g, n), ws)
                },
            );
        g
    }

    /// [`Self::residual_vjp_cpu`] on CPU tensors of `T` values.
    fn residual_vjp_tensor<T: Real + candle_core::WithDType>(
        &self,
        x: &Tensor,
        y: &Tensor,
        h: usize,
        w: usize,
    ) -> candle_core::Result<Tensor> {
        let (xf, yf) = (
            x.flatten_all()?.to_vec1::<T>()?,
            y.flatten_all()?.to_vec1::<T>()?,
        );
        Tensor::from_vec(
            self.residual_vjp_cpu(&xf, &yf, h, w),
            x.shape(),
            &Device::Cpu,
        )
    }

    /// Jᵀv for x `[B, C, H, W]` and v `[B, C, H', W']`, on the CPU, returned on x's device.
    fn vjp(&self, x: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let flat = |t: &Tensor| t.to_device(&Device::Cpu)?.flatten_all();
        let (xf, vf) = (flat(x)?, flat(&v.to_dtype(x.dtype())?)?);
        let g = match x.dtype() {
            DType::F32 => Tensor::from_vec(
                self.vjp_cpu(&xf.to_vec1::<f32>()?, &vf.to_vec1::<f32>()?, h, w),
                x.shape(),
                &Device::Cpu,
            )?,
            DType::F64 => Tensor::from_vec(
                self.vjp_cpu(&xf.to_vec1::<f64>()?, &vf.to_vec1::<f64>()?, h, w),
                x.shape(),
                &Device::Cpu,
            )?,
            dt => bail!("phase retrieval: unsupported dtype {dt:?}"),
        };
        g.to_device(x.device())
    }
}

impl CustomOp1 for PhaseRetrievalOp {
    fn name(&self) -> &'static str {
        "phase-retrieval"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let (ph, pw) = self.0.padding(h, w);
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(self.forward_cpu(cpu_slice::<f32>(s, l)?, h, w)),
            DType::F64 => CpuStorage::F64(self.forward_cpu(cpu_slice::<f64>(s, l)?, h, w)),
            dt => bail!("phase retrieval: unsupported dtype {dt:?}"),
        };
        Ok((out, Shape::from((b, c, h + 2 * ph, w + 2 * pw))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.vjp(x, grad)?))
    }
}
