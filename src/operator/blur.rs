//! Depthwise blur with reflect padding (DAPS Gaussian and motion deblurring).
//!
//! A(x) = ReflectionPad2d(k/2) followed by a depthwise k×k cross-correlation (no flip), the same
//! kernel for every channel. Zero borders of the kernel are trimmed first; a rank-1 kernel runs
//! as two direct 1-D passes, any other through rustfft (two real planes packed into one complex
//! FFT). The adjoint is the correlation with the flipped kernel followed by the adjoint of
//! reflect padding.

use super::fft::{cast, fast_len, plan, transpose, Pooled, Real};
use super::portable::{
    transpose as transpose64, unit, DeviceCache, FourierFilter, HostCMat, SeparableSum,
};
use super::{Linear, Operator, Svd};
use crate::error::{Error, Result};
use crate::nn::cpu_slice;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Triangular};
use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::Fft;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Depthwise blur operator; see the module docs.
#[derive(Clone)]
pub struct Blur {
    core: Arc<Core>,
    label: String,
}

impl Blur {
    /// `scipy.ndimage.gaussian_filter` (σ, truncate 4) of a centred delta on a size×size grid,
    /// as DAPS builds it (`gaussian(61, 3.0)`: radius 12, sums to 1).
    pub fn gaussian(size: usize, sigma: f64) -> Result<Self> {
        check_size(size)?;
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::config(format!(
                "blur: sigma must be > 0, got {sigma}"
            )));
        }
        let g = scipy_gaussian_delta(size, sigma);
        let kernel = g
            .iter()
            .flat_map(|a| g.iter().map(move |b| a * b))
            .collect();
        Self::build(
            kernel,
            size,
            format!("gaussian blur {size}×{size}, σ {sigma}"),
        )
    }

    /// A seeded random motion-blur kernel in the spirit of the `motionblur` package (see
    /// [`motion_kernel`]). It does not reproduce numpy's draws: to use DAPS's exact kernel, load
    /// it with [`Blur::from_safetensors`] (e.g. the `kernel` of `motion_blur.safetensors`).
    pub fn motion(size: usize, intensity: f64, seed: u64) -> Result<Self> {
        let kernel = motion_kernel(size, intensity, seed)?;
        Self::build(
            kernel,
            size,
            format!("motion blur {size}×{size}, intensity {intensity}, seed {seed}"),
        )
    }

    /// A square odd kernel, row-major, used as given (not normalised).
    pub fn from_vec(kernel: Vec<f32>, size: usize) -> Result<Self> {
        let kernel = kernel.into_iter().map(f64::from).collect();
        Self::build(kernel, size, format!("blur {size}×{size}"))
    }

    /// A kernel tensor `[k, k]` (or `[1, 1, k, k]`), used as given.
    pub fn from_kernel(kernel: &Tensor) -> Result<Self> {
        let dims = kernel.dims();
        let k = dims.last().copied().unwrap_or(0);
        let ok = match dims.len() {
            2 => dims[0] == k,
            4 => dims[..3] == [1, 1, k],
            _ => false,
        };
        if !ok {
            return Err(Error::Shape {
                what: "blur kernel ([k, k])".into(),
                expected: vec![k, k],
                got: dims.to_vec(),
            });
        }
        let data = kernel
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        Self::build(data, k, format!("blur {k}×{k}"))
    }

    /// The tensor `kernel` of a .safetensors file, used as given.
    pub fn from_safetensors(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
        let kernel = tensors
            .get("kernel")
            .ok_or_else(|| Error::msg(format!("{}: no tensor named `kernel`", path.display())))?;
        let mut blur = Self::from_kernel(kernel)?;
        blur.label = format!("blur {} from {}", blur.core.size, path.display());
        Ok(blur)
    }

    /// A grayscale (or RGB, converted) square odd PNG, normalised to sum 1.
    pub fn from_png(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let img = image::open(path)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?
            .to_luma32f();
        let (w, h) = img.dimensions();
        if w != h {
            return Err(Error::config(format!(
                "{}: blur kernel must be square, got {w}×{h}",
                path.display()
            )));
        }
        let data: Vec<f64> = img.into_raw().into_iter().map(f64::from).collect();
        let sum: f64 = data.iter().sum();
        if sum <= 0.0 {
            return Err(Error::config(format!(
                "{}: kernel sums to 0",
                path.display()
            )));
        }
        let data = data.into_iter().map(|v| v / sum).collect();
        Self::build(
            data,
            w as usize,
            format!("blur {w}×{w} from {}", path.display()),
        )
    }

    fn build(kernel: Vec<f64>, size: usize, label: String) -> Result<Self> {
        Ok(Self {
            core: Arc::new(Core::new(kernel, size)?),
            label,
        })
    }

    /// Kernel side k.
    pub fn size(&self) -> usize {
        self.core.size
    }

    /// The k×k kernel, row-major.
    pub fn kernel(&self) -> &[f64] {
        &self.core.kernel
    }

    /// The kernel as an f32 `[k, k]` tensor.
    pub fn kernel_tensor(&self, device: &Device) -> Result<Tensor> {
        let k = self.core.size;
        let data: Vec<f32> = self.core.kernel.iter().map(|&v| v as f32).collect();
        Ok(Tensor::from_vec(data, (k, k), device)?)
    }

    /// Whether the fast separable path is used.
    pub fn is_separable(&self) -> bool {
        self.core.separable.is_some()
    }

    /// A (or Aᵀ) of `x`; by the dense products of [`SeparableSum`] when `portable` or off the CPU.
    fn apply(&self, x: &Tensor, adjoint: bool, portable: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4().map_err(|_| Error::Shape {
            what: format!("{} input [B, C, H, W]", self.label),
            expected: vec![1, 3, 256, 256],
            got: x.dims().to_vec(),
        })?;
        self.core.check(h, w)?;
        if portable || !x.device().is_cpu() {
            return match &*self.core.portable(x, h, w, adjoint)? {
                Dense::Sum(s) => s.apply(x),
                Dense::Fourier(f) => f.apply(x),
            };
        }
        let op = BlurOp {
            core: self.core.clone(),
            adjoint,
        };
        Ok(super::fft::apply_on_cpu(x, op)?)
    }
}

impl Operator for Blur {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false, false)
    }

    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        crate::error::expect_shape(&format!("{} cotangent", self.label), v.dims(), x.dims())?;
        self.apply(&v.to_dtype(x.dtype())?, true, false)
    }

    fn forward_portable(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false, true)
    }

    fn vjp_portable(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        crate::error::expect_shape(&format!("{} cotangent", self.label), v.dims(), x.dims())?;
        self.apply(&v.to_dtype(x.dtype())?, true, true)
    }

    fn name(&self) -> String {
        self.label.clone()
    }

    fn as_linear(&self) -> Option<&dyn Linear> {
        Some(self)
    }
}

/// Aᵀ in closed form (the VJP: flipped-kernel correlation, then the adjoint of reflect padding);
/// prox and pseudo-inverse by the CG defaults (reflect padding is not diagonalised by the FFT).
/// A separable kernel also has an SVD ([`Svd`]), for DDRM and DDNM.
impl Linear for Blur {
    fn adjoint(&self, v: &Tensor) -> Result<Tensor> {
        self.apply(v, true, false)
    }

    fn svd(&self) -> Option<&dyn Svd> {
        self.is_separable().then_some(self as &dyn Svd)
    }
}

/// 1-D singular values below this are set to 0, as DDRM's `Deblurring` does (`ZERO = 3e-2`):
/// those directions count as unobserved.
pub const SVD_THRESHOLD: f64 = 3e-2;

/// A separable blur is B_h X B_wᵀ per plane, B the 1-D reflect-padded correlation matrices, so
/// A = (U_h ⊗ U_w) diag(s_h ⊗ s_w) (V_h ⊗ V_w)ᵀ: spectral coordinates V_hᵀ X V_w in x's shape.
impl Svd for Blur {
    fn apply_vt(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.kron(x)?;
        Ok(k.vh.t()?.broadcast_matmul(x)?.broadcast_matmul(&k.vw)?)
    }

    fn apply_v(&self, c: &Tensor) -> Result<Tensor> {
        let k = self.kron(c)?;
        Ok(k.vh.broadcast_matmul(c)?.broadcast_matmul(&k.vw.t()?)?)
    }

    fn singular_values(&self, sample: &[usize]) -> Result<Vec<f64>> {
        let [c, h, w] = sample else {
            return Err(Error::msg(format!(
                "{}: SVD of [C, H, W] samples, got {sample:?}",
                self.label
            )));
        };
        let k = self.core.kron(*h, *w)?;
        let plane: Vec<f64> =
            k.sh.iter()
                .flat_map(|a| k.sw.iter().map(move |b| a * b))
                .collect();
        Ok((0..*c).flat_map(|_| plane.iter().copied()).collect())
    }

    fn project_y(&self, y: &Tensor) -> Result<Tensor> {
        let k = self.kron(y)?;
        let t = k.uh.t()?.broadcast_matmul(y)?.broadcast_matmul(&k.uw)?;
        let (h, w) = (k.sh.len(), k.sw.len());
        let mask: Vec<f64> =
            k.sh.iter()
                .flat_map(|a| {
                    k.sw.iter()
                        .map(move |b| if a * b > 0.0 { 1.0 } else { 0.0 })
                })
                .collect();
        let mask = Tensor::from_vec(mask, (h, w), y.device())?.to_dtype(y.dtype())?;
        Ok(t.broadcast_mul(&mask)?)
    }
}

impl Blur {
    /// The 1-D factors for `x`'s size, in its dtype and on its device.
    fn kron(&self, x: &Tensor) -> Result<KronTensors> {
        let (_, _, h, w) = x.dims4()?;
        let k = self.core.kron(h, w)?;
        let t = |m: &nalgebra::DMatrix<f64>| -> Result<Tensor> {
            // nalgebra is column-major: its transpose's storage is m row-major.
            let rows: Vec<f64> = m.transpose().as_slice().to_vec();
            Ok(Tensor::from_vec(rows, (m.nrows(), m.ncols()), x.device())?.to_dtype(x.dtype())?)
        };
        Ok(KronTensors {
            uh: t(&k.uh)?,
            vh: t(&k.vh)?,
            uw: t(&k.uw)?,
            vw: t(&k.vw)?,
            sh: k.sh.clone(),
            sw: k.sw.clone(),
        })
    }
}

/// SVDs of the 1-D matrices B_h = U_h S_h V_hᵀ and B_w (thresholded s, [`SVD_THRESHOLD`]).
struct Kron {
    uh: nalgebra::DMatrix<f64>,
    vh: nalgebra::DMatrix<f64>,
    sh: Vec<f64>,
    uw: nalgebra::DMatrix<f64>,
    vw: nalgebra::DMatrix<f64>,
    sw: Vec<f64>,
}

struct KronTensors {
    uh: Tensor,
    vh: Tensor,
    sh: Vec<f64>,
    uw: Tensor,
    vw: Tensor,
    sw: Vec<f64>,
}

/// The n×n matrix of a 1-D correlation with `taps` over the source indices `map`
/// (out[i] = Σ_a taps[a]·x[map[i + a]]) and its SVD, small singular values zeroed.
fn svd_1d(
    n: usize,
    taps: &[f64],
    map: &[usize],
) -> Result<(nalgebra::DMatrix<f64>, nalgebra::DMatrix<f64>, Vec<f64>)> {
    let mut b = nalgebra::DMatrix::<f64>::zeros(n, n);
    for i in 0..n {
        for (a, &t) in taps.iter().enumerate() {
            b[(i, map[i + a])] += t;
        }
    }
    let svd = b.svd(true, true);
    let (Some(u), Some(vt)) = (svd.u, svd.v_t) else {
        return Err(Error::msg("blur: 1-D SVD did not converge"));
    };
    let s = svd
        .singular_values
        .iter()
        .map(|&v| if v < SVD_THRESHOLD { 0.0 } else { v })
        .collect();
    Ok((u, vt.transpose(), s))
}

fn check_size(size: usize) -> Result<()> {
    if size.is_multiple_of(2) {
        return Err(Error::config(format!(
            "blur: kernel size must be odd, got {size}"
        )));
    }
    Ok(())
}

/// 1-D `gaussian_filter1d` (truncate 4, mode "reflect") of a centred delta of length `size`.
fn scipy_gaussian_delta(size: usize, sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let mut taps: Vec<f64> = (-radius..=radius)
        .map(|t| (-0.5 / (sigma * sigma) * (t * t) as f64).exp())
        .collect();
    let sum: f64 = taps.iter().sum();
    taps.iter_mut().for_each(|t| *t /= sum);
    let n = size as i64;
    // scipy "reflect": (d c b a | a b c d | d c b a)
    let reflect = |j: i64| {
        let j = j.rem_euclid(2 * n);
        if j >= n {
            2 * n - 1 - j
        } else {
            j
        }
    };
    let centre = n / 2;
    (0..n)
        .map(|i| {
            (-radius..=radius)
                .filter(|&t| reflect(i + t) == centre)
                .map(|t| taps[(t + radius) as usize])
                .sum()
        })
        .collect()
}

/// A random motion-blur kernel following `motionblur.Kernel(size, intensity)`: a random-walk
/// path (Beta(1, 30) steps, triangular jittered angles) drawn with a 1-px line on a 2k×2k canvas,
/// Gaussian-blurred, Lanczos-downsampled to k×k, quantised to 8 bits and normalised to sum 1.
/// Seeded with ChaCha8; the draws differ from numpy's.
pub fn motion_kernel(size: usize, intensity: f64, seed: u64) -> Result<Vec<f64>> {
    check_size(size)?;
    if !(0.0..1.0).contains(&intensity) {
        return Err(Error::config(format!(
            "motion blur: intensity must be in [0, 1), got {intensity}"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let big = 2 * size;
    let diag = std::f64::consts::SQRT_2 * big as f64;
    let eps = f64::EPSILON;

    // Steps of the path.
    let max_len = 0.75 * diag * (rng.random::<f64>() + rng.random::<f64>() * intensity.powi(2));
    // Invariant: constant, valid Beta parameters (here and below).
    let beta_step = Beta::new(1.0, 30.0).expect("valid beta");
    let mut steps = Vec::new();
    let mut total = 0.0;
    while total < max_len && steps.len() < 100_000 {
        let step = rng.sample(beta_step) * (1.0 - intensity + eps) * diag;
        if step < max_len {
            steps.push(step);
            total += step;
        }
    }

    // Angles, with sign flips at jitter rate.
    let max_angle = rng.random::<f64>() * intensity * std::f64::consts::PI;
    let jitter = rng.sample(Beta::new(2.0, 20.0).expect("valid beta"));
    let mut angles = vec![(2.0 * rng.random::<f64>() - 1.0) * max_angle];
    let tri = Triangular::new(0.0, max_angle + eps, intensity * max_angle)
        .map_err(|e| Error::msg(format!("motion blur: {e}")))?;
    while angles.len() < steps.len() {
        let prev = angles[angles.len() - 1];
        let sign = if prev > 0.0 {
            1.0
        } else if prev < 0.0 {
            -1.0
        } else {
            0.0
        };
        let a = rng.sample(tri);
        angles.push(if rng.random::<f64>() < jitter {
            -a * sign
        } else {
            a * sign
        });
    }

    // Path: cumulative sum, centred, randomly rotated, moved to the canvas centre.
    let mut path: Vec<(f64, f64)> = Vec::with_capacity(steps.len());
    let (mut px, mut py) = (0.0, 0.0);
    for (s, a) in steps.iter().zip(&angles) {
        px += s * a.cos();
        py += s * a.sin();
        path.push((px, py));
    }
    let n = path.len() as f64;
    let (cx, cy) = path
        .iter()
        .fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
    let rot = rng.random::<f64>() * std::f64::consts::PI;
    let (sr, cr) = rot.sin_cos();
    let mid = big as f64 / 2.0;
    let path: Vec<(f64, f64)> = path
        .iter()
        .map(|&(x, y)| {
            let (x, y) = (x - cx, y - cy);
            (x * cr - y * sr + mid, x * sr + y * cr + mid)
        })
        .collect();

    // Rasterise a line of width ⌊diag/150⌋ (at least 1 px).
    let mut canvas = vec![0f64; big * big];
    let radius = ((diag / 150.0).floor().max(1.0) - 1.0) / 2.0;
    let mut plot = |x: f64, y: f64| {
        let r = radius.ceil() as i64;
        let (ix, iy) = (x.round() as i64, y.round() as i64);
        for dy in -r..=r {
            for dx in -r..=r {
                let (u, v) = (ix + dx, iy + dy);
                let inside = ((dx * dx + dy * dy) as f64) <= radius * radius + 1e-9;
                if inside && (0..big as i64).contains(&u) && (0..big as i64).contains(&v) {
                    canvas[v as usize * big + u as usize] = 1.0;
                }
            }
        }
    };
    for seg in path.windows(2) {
        let (a, b) = (seg[0], seg[1]);
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let m = (len * 4.0).ceil().max(1.0) as usize;
        for t in 0..=m {
            let f = t as f64 / m as f64;
            plot(a.0 + f * (b.0 - a.0), a.1 + f * (b.1 - a.1));
        }
    }
    if path.len() == 1 {
        plot(path[0].0, path[0].1);
    }

    // Gaussian blur (σ = ⌊0.01·diag⌋), then antialiased Lanczos-3 downsampling by 2.
    let sigma = (0.01 * diag).floor();
    if sigma > 0.0 {
        let r = (3.0 * sigma).ceil() as i64;
        let mut g: Vec<f64> = (-r..=r)
            .map(|t| (-(t * t) as f64 / (2.0 * sigma * sigma)).exp())
            .collect();
        let s: f64 = g.iter().sum();
        g.iter_mut().for_each(|v| *v /= s);
        let taps: Vec<(i64, f64)> = (-r..=r).zip(g).collect();
        canvas = separable_resample(&canvas, big, big, &dense_taps(big, &taps), big);
    }
    let lanczos = lanczos_matrix(big, size);
    let small = separable_resample(&canvas, big, big, &lanczos, size);
    let kernel: Vec<f64> = small
        .iter()
        .map(|v| (v * 255.0).clamp(0.0, 255.0).round())
        .collect();
    let sum: f64 = kernel.iter().sum();
    if sum <= 0.0 {
        return Err(Error::msg("motion blur: empty kernel"));
    }
    Ok(kernel.into_iter().map(|v| v / sum).collect())
}

/// Dense n×n matrix of a 1-D correlation with `taps` (offset, weight), clamped at the edges.
fn dense_taps(n: usize, taps: &[(i64, f64)]) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for &(t, w) in taps {
            let j = (i as i64 + t).clamp(0, n as i64 - 1) as usize;
            m[i * n + j] += w;
        }
    }
    m
}

/// PIL-style antialiased Lanczos-3 resampling matrix, `[out, inp]`, rows normalised.
fn lanczos_matrix(inp: usize, out: usize) -> Vec<f64> {
    let sinc = |x: f64| {
        if x == 0.0 {
            1.0
        } else {
            let p = std::f64::consts::PI * x;
            p.sin() / p
        }
    };
    let lanczos = |x: f64| {
        if x.abs() < 3.0 {
            sinc(x) * sinc(x / 3.0)
        } else {
            0.0
        }
    };
    let scale = inp as f64 / out as f64;
    let support = 3.0 * scale.max(1.0);
    let mut m = vec![0.0; out * inp];
    for o in 0..out {
        let centre = (o as f64 + 0.5) * scale;
        let lo = (centre - support).floor().max(0.0) as usize;
        let hi = ((centre + support).ceil() as usize).min(inp);
        let row = &mut m[o * inp..(o + 1) * inp];
        for (j, r) in row.iter_mut().enumerate().take(hi).skip(lo) {
            *r = lanczos((j as f64 + 0.5 - centre) / scale.max(1.0));
        }
        let s: f64 = row.iter().sum();
        if s != 0.0 {
            row.iter_mut().for_each(|r| *r /= s);
        }
    }
    m
}

/// y = M·x·Mᵀ for a square h×w image and a `[out, h]` matrix M (h = w).
fn separable_resample(x: &[f64], h: usize, w: usize, m: &[f64], out: usize) -> Vec<f64> {
    debug_assert_eq!(h, w);
    let mut t = vec![0.0; out * w]; // M·x
    for o in 0..out {
        for i in 0..h {
            let c = m[o * h + i];
            if c != 0.0 {
                for j in 0..w {
                    t[o * w + j] += c * x[i * w + j];
                }
            }
        }
    }
    let mut y = vec![0.0; out * out];
    for i in 0..out {
        for o in 0..out {
            y[i * out + o] = (0..w).map(|j| m[o * w + j] * t[i * w + j]).sum();
        }
    }
    y
}

/// Plans per (H, W, dtype); values are `Plan<T>`.
type PlanCache = Mutex<HashMap<(usize, usize, TypeId), Arc<dyn Any + Send + Sync>>>;

/// The kernel with its zero border trimmed, plus cached per-size plans.
struct Core {
    size: usize,
    kernel: Vec<f64>,
    r0: usize,
    c0: usize,
    kh: usize,
    kw: usize,
    taps: Vec<f64>,
    /// Column and row taps when the trimmed kernel is rank-1.
    separable: Option<(Vec<f64>, Vec<f64>)>,
    plans: PlanCache,
    /// Per (H, W): the SVD of a separable kernel.
    svds: Mutex<HashMap<(usize, usize), Arc<Kron>>>,
    /// Per device, (H, W, adjoint): the dense form for tensors off the CPU.
    portable: DeviceCache<(usize, usize, bool), Dense>,
}

impl Core {
    fn new(kernel: Vec<f64>, size: usize) -> Result<Self> {
        check_size(size)?;
        if kernel.len() != size * size {
            return Err(Error::Shape {
                what: "blur kernel".into(),
                expected: vec![size, size],
                got: vec![kernel.len()],
            });
        }
        if kernel.iter().any(|v| !v.is_finite()) {
            return Err(Error::config("blur: kernel has non-finite entries"));
        }
        let nz = |i: usize, j: usize| kernel[i * size + j] != 0.0;
        let rows: Vec<usize> = (0..size).filter(|&i| (0..size).any(|j| nz(i, j))).collect();
        let cols: Vec<usize> = (0..size).filter(|&j| (0..size).any(|i| nz(i, j))).collect();
        let (Some(&r0), Some(&r1), Some(&c0), Some(&c1)) =
            (rows.first(), rows.last(), cols.first(), cols.last())
        else {
            return Err(Error::config("blur: kernel is all zero"));
        };
        let (kh, kw) = (r1 - r0 + 1, c1 - c0 + 1);
        let taps: Vec<f64> = (0..kh)
            .flat_map(|a| (0..kw).map(move |b| (a, b)))
            .map(|(a, b)| kernel[(a + r0) * size + b + c0])
            .collect();
        let separable = rank_one(&taps, kh, kw);
        Ok(Self {
            size,
            kernel,
            r0,
            c0,
            kh,
            kw,
            taps,
            separable,
            plans: Mutex::new(HashMap::new()),
            svds: Mutex::new(HashMap::new()),
            portable: DeviceCache::new(),
        })
    }

    /// Σ_r B_h(s_r u_r)·X·B_w(v_r)ᵀ over the trimmed kernel's SVD (or the adjoint,
    /// Σ_r B_hᵀ·X·B_w), B the 1-D correlations with the reflect padding folded in.
    /// A kernel of rank above [`MAX_SEPARABLE_TERMS`] goes through the Fourier domain instead
    /// ([`Core::fourier`]).
    fn portable(&self, like: &Tensor, h: usize, w: usize, adjoint: bool) -> Result<Arc<Dense>> {
        self.portable.get(like, (h, w, adjoint), || {
            let geo = self.geometry(h, w)?;
            let terms = match &self.separable {
                Some((c, r)) => vec![(c.clone(), r.clone())],
                None => svd_terms(&self.taps, self.kh, self.kw)?,
            };
            if terms.len() > MAX_SEPARABLE_TERMS {
                return Ok(Dense::Fourier(self.fourier(&geo, adjoint, like)?));
            }
            let band = |n: usize, taps: &[f64], map: &[usize]| {
                let mut b = vec![0.0; n * n];
                for i in 0..n {
                    for (a, &t) in taps.iter().enumerate() {
                        b[i * n + map[i + a]] += t;
                    }
                }
                b
            };
            let (mut ls, mut ms) = (Vec::new(), Vec::new());
            for (u, v) in &terms {
                let (bh, bw) = (band(h, u, &geo.rmap), band(w, v, &geo.cmap));
                if adjoint {
                    ls.push(transpose64(&bh, h, h));
                    ms.push(bw);
                } else {
                    ls.push(bh);
                    ms.push(transpose64(&bw, w, w));
                }
            }
            Ok(Dense::Sum(SeparableSum::new(
                &ls,
                &ms,
                (h, h),
                (w, w),
                like,
            )?))
        })
    }

    /// The correlation as a circular one on the reflect-padded (n_h = H + kh − 1) ×
    /// (n_w = W + kw − 1) plane, valid part kept: Y = Re(S_h·(conj K ⊙ (F_h P_h·X·(F_w P_w)ᵀ))·S_wᵀ),
    /// F the unnormalised DFT, P the padding, K the DFT of the zero-padded taps, S the first H
    /// (W) rows of the inverse DFT. The adjoint swaps and conjugate-transposes the factors.
    fn fourier(&self, geo: &Geometry, adjoint: bool, like: &Tensor) -> Result<FourierFilter> {
        let (h, w, kh, kw) = (geo.h, geo.w, self.kh, self.kw);
        let (nh, nw) = (h + kh - 1, w + kw - 1);
        // F·P: [n, n_src], entry (f, q) = Σ_{m: map[m] = q} e^{−2πi f m/n}.
        let fold = |n: usize, src: usize, map: &[usize]| {
            let mut re = vec![0.0; n * src];
            let mut im = vec![0.0; n * src];
            for f in 0..n {
                for (m, &q) in map.iter().enumerate() {
                    let (a, b) = unit((f * m) as i64, n, -1.0);
                    re[f * src + q] += a;
                    im[f * src + q] += b;
                }
            }
            HostCMat {
                re,
                im,
                rows: n,
                cols: src,
            }
        };
        let fph = fold(nh, h, &geo.rmap);
        let fpw = fold(nw, w, &geo.cmap);
        // S: [len, n], entry (i, f) = e^{2πi i f/n}/n.
        let inv = |len: usize, n: usize| {
            HostCMat::from_fn(len, n, |i, f| {
                let (a, b) = unit((i * f) as i64, n, 1.0);
                (a / n as f64, b / n as f64)
            })
        };
        let (sh, sw) = (inv(h, nh), inv(w, nw));
        // conj K[f, g] = Σ_{a,b} taps[a, b]·e^{+2πi (f a/n_h + g b/n_w)}.
        let spec = |sign: f64| {
            HostCMat::from_fn(nh, nw, |f, g| {
                let (mut re, mut im) = (0.0, 0.0);
                for a in 0..kh {
                    let (ca, sa) = unit((f * a) as i64, nh, sign);
                    for b in 0..kw {
                        let (cb, sb) = unit((g * b) as i64, nw, sign);
                        let t = self.taps[a * kw + b];
                        re += t * (ca * cb - sa * sb);
                        im += t * (ca * sb + sa * cb);
                    }
                }
                (re, im)
            })
        };
        if adjoint {
            // Aᵀ V = Re(P_hᵀF_hᴴ·(K ⊙ (S_hᴴ·V·conj(S_w)))·conj(F_w P_w)).
            FourierFilter::new(
                (&sh.adjoint(), &sw.conj()),
                &spec(-1.0),
                (&fph.adjoint(), &fpw.conj()),
                like,
            )
        } else {
            FourierFilter::new(
                (&fph, &fpw.transpose()),
                &spec(1.0),
                (&sh, &sw.transpose()),
                like,
            )
        }
    }

    /// The SVD of a separable kernel at size H × W (cached).
    fn kron(&self, h: usize, w: usize) -> Result<Arc<Kron>> {
        let Some((col, row)) = &self.separable else {
            return Err(Error::Unsupported(
                "blur: only a separable kernel has an SVD".into(),
            ));
        };
        let mut svds = self.svds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = svds.get(&(h, w)) {
            return Ok(k.clone());
        }
        let geo = self.geometry(h, w)?;
        let (uh, vh, sh) = svd_1d(h, col, &geo.rmap)?;
        let (uw, vw, sw) = svd_1d(w, row, &geo.cmap)?;
        let k = Arc::new(Kron {
            uh,
            vh,
            sh,
            uw,
            vw,
            sw,
        });
        svds.insert((h, w), k.clone());
        Ok(k)
    }

    /// ReflectionPad2d(k/2) needs H, W > k/2.
    fn check(&self, h: usize, w: usize) -> Result<()> {
        let p = self.size / 2;
        if p >= h || p >= w {
            return Err(Error::config(format!(
                "blur {0}×{0}: reflect padding {p} needs H and W > {p}, got {h}×{w}",
                self.size
            )));
        }
        Ok(())
    }

    /// Index maps of the (trimmed) reflect-padded image.
    fn geometry(&self, h: usize, w: usize) -> Result<Geometry> {
        self.check(h, w)?;
        let p = self.size / 2;
        let reflect = |t: i64, n: usize| {
            let n = n as i64;
            let t = if t < 0 { -t } else { t };
            (if t >= n { 2 * (n - 1) - t } else { t }) as usize
        };
        let map = |n: usize, k: usize, off: usize| -> Vec<usize> {
            (0..n + k - 1)
                .map(|m| reflect(m as i64 + off as i64 - p as i64, n))
                .collect()
        };
        Ok(Geometry {
            h,
            w,
            rmap: map(h, self.kh, self.r0),
            cmap: map(w, self.kw, self.c0),
        })
    }

    fn plan<T: Real>(&self, h: usize, w: usize) -> Result<Arc<Plan<T>>> {
        let key = (h, w, TypeId::of::<T>());
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.get(&key) {
            if let Ok(p) = p.clone().downcast::<Plan<T>>() {
                return Ok(p);
            }
        }
        let geo = self.geometry(h, w)?;
        let kind = match &self.separable {
            Some((c, r)) => Kind::Separable {
                col: c.iter().map(|&v| cast(v)).collect(),
                row: r.iter().map(|&v| cast(v)).collect(),
            },
            None => Kind::Fft(FftPlan::new(&self.taps, self.kh, self.kw, &geo)),
        };
        let p = Arc::new(Plan { geo, kind });
        plans.insert(key, p.clone());
        Ok(p)
    }
}

/// (column, row) factors of a rank-1 matrix, if it is one (to 1e-6 relative).
fn rank_one(k: &[f64], kh: usize, kw: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    let (imax, vmax) = k
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))?;
    let (a0, b0) = (imax / kw, imax % kw);
    let col: Vec<f64> = (0..kh).map(|a| k[a * kw + b0]).collect();
    let row: Vec<f64> = (0..kw).map(|b| k[a0 * kw + b] / vmax).collect();
    let tol = 1e-6 * vmax.abs();
    let ok = (0..kh).all(|a| (0..kw).all(|b| (k[a * kw + b] - col[a] * row[b]).abs() <= tol));
    ok.then_some((col, row))
}

/// Above this many SVD terms a dense blur goes through the Fourier domain: a rank-R sum costs
/// ≈ 4R·n³ per n×n plane, the dense DFT route ≈ 40·n³ (with n_h ≈ n).
const MAX_SEPARABLE_TERMS: usize = 8;

/// The dense forms of a blur (see [`Core::portable`]).
enum Dense {
    Sum(SeparableSum),
    Fourier(FourierFilter),
}

/// The rank-one terms (s_r·u_r, v_r) of a kh×kw kernel's SVD, singular values below 1e-12 of
/// the largest dropped (f64 rounding level).
fn svd_terms(taps: &[f64], kh: usize, kw: usize) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    let svd = nalgebra::DMatrix::from_row_slice(kh, kw, taps).svd(true, true);
    let (Some(u), Some(vt)) = (svd.u, svd.v_t) else {
        return Err(Error::msg("blur: kernel SVD did not converge"));
    };
    let s = &svd.singular_values;
    let top = s.iter().cloned().fold(0.0, f64::max);
    Ok((0..s.len())
        .filter(|&r| s[r] > 1e-12 * top)
        .map(|r| {
            let col = u.column(r).iter().map(|a| a * s[r]).collect();
            let row = vt.row(r).iter().copied().collect();
            (col, row)
        })
        .collect())
}

struct Geometry {
    h: usize,
    w: usize,
    /// Source row / column of each row / column of the trimmed padded image.
    rmap: Vec<usize>,
    cmap: Vec<usize>,
}

struct Plan<T: Real> {
    geo: Geometry,
    kind: Kind<T>,
}

enum Kind<T: Real> {
    Separable { col: Vec<T>, row: Vec<T> },
    Fft(FftPlan<T>),
}

struct FftPlan<T: Real> {
    nh: usize,
    nw: usize,
    fwd_rows: Arc<dyn Fft<T>>,
    inv_rows: Arc<dyn Fft<T>>,
    fwd_cols: Arc<dyn Fft<T>>,
    inv_cols: Arc<dyn Fft<T>>,
    /// DFT of the trimmed kernel, transposed (`[nw, nh]`), scaled by 1/(nh·nw).
    spec_t: Vec<Complex<T>>,
}

impl<T: Real> FftPlan<T> {
    fn new(taps: &[f64], kh: usize, kw: usize, geo: &Geometry) -> Self {
        let (nh, nw) = (fast_len(geo.rmap.len()), fast_len(geo.cmap.len()));
        let mut k = vec![Complex::new(0.0, 0.0); nh * nw];
        for a in 0..kh {
            for b in 0..kw {
                k[a * nw + b].re = taps[a * kw + b];
            }
        }
        let (rows, cols) = (plan::<f64>(nw, false), plan::<f64>(nh, false));
        rows.process(&mut k);
        let mut kt = vec![Complex::new(0.0, 0.0); nh * nw];
        transpose(&k, nh, nw, &mut kt);
        cols.process(&mut kt);
        let s = 1.0 / (nh * nw) as f64;
        Self {
            nh,
            nw,
            fwd_rows: plan(nw, false),
            inv_rows: plan(nw, true),
            fwd_cols: plan(nh, false),
            inv_cols: plan(nh, true),
            spec_t: kt
                .iter()
                .map(|z| Complex::new(cast(z.re * s), cast(z.im * s)))
                .collect(),
        }
    }
}

struct Work<T> {
    a: Vec<Complex<T>>,
    b: Vec<Complex<T>>,
    scratch: Vec<Complex<T>>,
    t: Vec<T>,
    row: Vec<T>,
}

impl<T> Default for Work<T> {
    fn default() -> Self {
        Self {
            a: Vec::new(),
            b: Vec::new(),
            scratch: Vec::new(),
            t: Vec::new(),
            row: Vec::new(),
        }
    }
}

impl<T: Real> Plan<T> {
    /// Forward (or adjoint) of one plane, or of two planes packed as re/im in the FFT path.
    fn run_planes(&self, inp: [&[T]; 2], out: [&mut [T]; 2], adjoint: bool, ws: &mut Work<T>) {
        match &self.kind {
            Kind::Separable { col, row } => {
                for (x, y) in inp.into_iter().zip(out) {
                    if !x.is_empty() {
                        if adjoint {
                            self.sep_adjoint(col, row, x, y, ws);
                        } else {
                            self.sep_forward(col, row, x, y, ws);
                        }
                    }
                }
            }
            Kind::Fft(f) => self.fft_run(f, inp, out, adjoint, ws),
        }
    }

    fn sep_forward(&self, col: &[T], row: &[T], x: &[T], y: &mut [T], ws: &mut Work<T>) {
        let Geometry { h, w, rmap, cmap } = &self.geo;
        let (h, w, he) = (*h, *w, rmap.len());
        ws.t.clear();
        ws.t.resize(he * w, T::zero());
        ws.row.resize(cmap.len(), T::zero());
        for (m, &src) in rmap.iter().enumerate() {
            let xr = &x[src * w..(src + 1) * w];
            for (d, &c) in ws.row.iter_mut().zip(cmap) {
                *d = xr[c];
            }
            let t = &mut ws.t[m * w..(m + 1) * w];
            for (b, &r) in row.iter().enumerate() {
                for (tv, &xv) in t.iter_mut().zip(&ws.row[b..b + w]) {
                    *tv += r * xv;
                }
            }
        }
        for i in 0..h {
            let yr = &mut y[i * w..(i + 1) * w];
            yr.fill(T::zero());
            for (a, &c) in col.iter().enumerate() {
                for (yv, &tv) in yr.iter_mut().zip(&ws.t[(i + a) * w..(i + a + 1) * w]) {
                    *yv += c * tv;
                }
            }
        }
    }

    fn sep_adjoint(&self, col: &[T], row: &[T], v: &[T], g: &mut [T], ws: &mut Work<T>) {
        let Geometry { h, w, rmap, cmap } = &self.geo;
        let (h, w, we) = (*h, *w, cmap.len());
        ws.t.clear();
        ws.t.resize(h * we, T::zero());
        for i in 0..h {
            let s = &mut ws.t[i * we..(i + 1) * we];
            for (b, &r) in row.iter().enumerate() {
                for (sv, &vv) in s[b..b + w].iter_mut().zip(&v[i * w..(i + 1) * w]) {
                    *sv += r * vv;
                }
            }
        }
        g.fill(T::zero());
        ws.row.resize(we, T::zero());
        for (m, &dst) in rmap.iter().enumerate() {
            ws.row.fill(T::zero());
            let lo = (m + 1).saturating_sub(h);
            for (a, &c) in col.iter().enumerate().take(m + 1).skip(lo) {
                let s = &ws.t[(m - a) * we..(m - a + 1) * we];
                for (rv, &sv) in ws.row.iter_mut().zip(s) {
                    *rv += c * sv;
                }
            }
            let gr = &mut g[dst * w..(dst + 1) * w];
            for (&c, &rv) in cmap.iter().zip(&ws.row) {
                gr[c] += rv;
            }
        }
    }

    fn fft_run(
        &self,
        f: &FftPlan<T>,
        inp: [&[T]; 2],
        out: [&mut [T]; 2],
        adjoint: bool,
        ws: &mut Work<T>,
    ) {
        let Geometry { h, w, rmap, cmap } = &self.geo;
        let (h, w, he, nh, nw) = (*h, *w, rmap.len(), f.nh, f.nw);
        let zero = Complex::new(T::zero(), T::zero());
        ws.a.clear();
        ws.a.resize(nh * nw, zero);
        ws.b.resize(nh * nw, zero);
        let len = [&f.fwd_rows, &f.inv_rows, &f.fwd_cols, &f.inv_cols]
            .iter()
            .map(|p| p.get_inplace_scratch_len())
            .max()
            .unwrap_or(0);
        ws.scratch.resize(len, zero);
        let get = |x: &[T], i: usize| if x.is_empty() { T::zero() } else { x[i] };

        // Input rows (padded image for the forward, v for the adjoint) and output rows.
        let (rows_in, rows_out) = if adjoint { (h, he) } else { (he, h) };
        if adjoint {
            for i in 0..h {
                for j in 0..w {
                    ws.a[i * nw + j] = Complex::new(get(inp[0], i * w + j), get(inp[1], i * w + j));
                }
            }
        } else {
            for (m, &src) in rmap.iter().enumerate() {
                for (n, &c) in cmap.iter().enumerate() {
                    let s = src * w + c;
                    ws.a[m * nw + n] = Complex::new(get(inp[0], s), get(inp[1], s));
                }
            }
        }
        f.fwd_rows
            .process_with_scratch(&mut ws.a[..rows_in * nw], &mut ws.scratch);
        transpose(&ws.a, nh, nw, &mut ws.b);
        f.fwd_cols.process_with_scratch(&mut ws.b, &mut ws.scratch);
        for (z, k) in ws.b.iter_mut().zip(&f.spec_t) {
            *z *= if adjoint { *k } else { k.conj() };
        }
        f.inv_cols.process_with_scratch(&mut ws.b, &mut ws.scratch);
        transpose(&ws.b, nw, nh, &mut ws.a);
        f.inv_rows
            .process_with_scratch(&mut ws.a[..rows_out * nw], &mut ws.scratch);

        let [ya, yb] = out;
        if adjoint {
            ya.fill(T::zero());
            yb.fill(T::zero());
            for (m, &dst) in rmap.iter().enumerate() {
                for (n, &c) in cmap.iter().enumerate() {
                    let z = ws.a[m * nw + n];
                    ya[dst * w + c] += z.re;
                    if !yb.is_empty() {
                        yb[dst * w + c] += z.im;
                    }
                }
            }
        } else {
            for i in 0..h {
                for j in 0..w {
                    let z = ws.a[i * nw + j];
                    ya[i * w + j] = z.re;
                    if !yb.is_empty() {
                        yb[i * w + j] = z.im;
                    }
                }
            }
        }
    }

    /// Applies the plan to `planes` consecutive h×w planes.
    fn run(&self, x: &[T], adjoint: bool) -> Vec<T> {
        let n = self.geo.h * self.geo.w;
        let mut y = vec![T::zero(); x.len()];
        // Pairs of planes (packed into one complex FFT); the last pair may hold one plane.
        y.par_chunks_mut(2 * n)
            .zip(x.par_chunks(2 * n))
            .for_each_init(
                || Pooled::<Work<T>>::take(|_| true, Work::default),
                |ws, (y, x)| {
                    let (x0, x1) = x.split_at(n);
                    let (y0, y1) = y.split_at_mut(n);
                    self.run_planes([x0, x1], [y0, y1], adjoint, ws);
                },
            );
        y
    }
}

struct BlurOp {
    core: Arc<Core>,
    adjoint: bool,
}

impl BlurOp {
    fn run<T: Real>(&self, x: &[T], h: usize, w: usize) -> candle_core::Result<Vec<T>> {
        let plan = self
            .core
            .plan::<T>(h, w)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(plan.run(x, self.adjoint))
    }
}

impl CustomOp1 for BlurOp {
    fn name(&self) -> &'static str {
        if self.adjoint {
            "blur-adjoint"
        } else {
            "blur"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, _, h, w) = l.shape().dims4()?;
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(self.run(cpu_slice::<f32>(s, l)?, h, w)?),
            DType::F64 => CpuStorage::F64(self.run(cpu_slice::<f64>(s, l)?, h, w)?),
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
        let op = BlurOp {
            core: self.core.clone(),
            adjoint: !self.adjoint,
        };
        Ok(Some(super::fft::apply_on_cpu(grad, op)?))
    }
}
