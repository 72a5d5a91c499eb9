//! Multi-coil Cartesian CS-MRI (DAPS CVPR Table 2; the fastMRI / InverseBench forward model).
//!
//! A(x) = M ⊙ fft2c(S_c ⊙ x) for every coil c, where
//! - x is a complex image stored as two channels, `[B, 2, H, W]` (real, imaginary);
//! - S are coil sensitivity maps `[C, H, W, 2]` ([`birdcage_maps`], or [`read_maps`] from a
//!   file), normally with Σ_c |S_c|² = 1;
//! - M is a {0, 1} k-space mask `[H, W]`; [`cartesian_mask`] samples whole columns
//!   (phase-encode lines) with a fully sampled centre;
//! - the measurement is the masked centred orthonormal k-space of every coil, `[B, C, H, W, 2]`
//!   (complex as a trailing dimension, zero where M = 0).
//!
//! A is linear; its VJP is the adjoint Aᴴv = Σ_c conj(S_c) ⊙ ifft2c(M ⊙ v_c) (fft2c is unitary),
//! so with Σ_c |S_c|² = 1 and a full mask AᴴA = I. Forward and adjoint are CPU kernels on rustfft,
//! wrapped as custom ops that are each other's backward, so both also work under autograd.

use super::fft::{apply_on_cpu, CenteredFft2, Pooled, Real, Workspace};
use super::portable::{self, DeviceCache};
use super::{Linear, Operator};
use crate::error::{expect_shape, Error, Result};
use crate::nn::cpu_slice;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use rustfft::num_complex::Complex;
use std::f64::consts::PI;
use std::path::Path;
use std::sync::Arc;

/// Relative radius of the simulated birdcage (sigpy's default).
pub const BIRDCAGE_RADIUS: f64 = 1.5;

/// sigpy `birdcage_maps((coils, h, w), r=1.5)`: coil c sits at radius 1.5 (image half-widths) and
/// angle 2πc/C, and S_c ∝ e^{iφ}/distance with φ = atan2(x, −y) − 2πc/C; the maps are then
/// divided by their root sum of squares, so Σ_c |S_c|² = 1. Returns f64 `[C, H, W, 2]`.
pub fn birdcage_maps(coils: usize, h: usize, w: usize) -> Result<Tensor> {
    if coils == 0 || h == 0 || w == 0 {
        return Err(Error::config(format!(
            "birdcage maps need at least one coil and pixel, got {coils} coils of {h}×{w}"
        )));
    }
    let n = h * w;
    let mut maps = vec![Complex::new(0.0, 0.0); coils * n];
    for c in 0..coils {
        let angle = 2.0 * PI * c as f64 / coils as f64;
        let (cx, cy) = (BIRDCAGE_RADIUS * angle.cos(), BIRDCAGE_RADIUS * angle.sin());
        for y in 0..h {
            let dy = (y as f64 - h as f64 / 2.0) / (h as f64 / 2.0) - cy;
            for x in 0..w {
                let dx = (x as f64 - w as f64 / 2.0) / (w as f64 / 2.0) - cx;
                let phi = dx.atan2(-dy) - angle;
                maps[c * n + y * w + x] = Complex::from_polar(1.0 / dx.hypot(dy), phi);
            }
        }
    }
    for i in 0..n {
        let rss = (0..coils)
            .map(|c| maps[c * n + i].norm_sqr())
            .sum::<f64>()
            .sqrt();
        for c in 0..coils {
            maps[c * n + i] /= rss;
        }
    }
    let flat: Vec<f64> = maps.iter().flat_map(|z| [z.re, z.im]).collect();
    Ok(Tensor::from_vec(flat, (coils, h, w, 2), &Device::Cpu)?)
}

/// Reads coil maps from the tensor `maps` `[C, H, W, 2]` of a safetensors file.
pub fn read_maps(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        Error::msg(format!(
            "cannot read coil maps from {}: {e}",
            path.display()
        ))
    })?;
    let maps = tensors.get("maps").ok_or_else(|| {
        Error::msg(format!(
            "{}: no tensor 'maps' ([C, H, W, 2] coil sensitivities)",
            path.display()
        ))
    })?;
    check_maps(maps)?;
    Ok(maps.clone())
}

fn check_maps(maps: &Tensor) -> Result<(usize, usize, usize)> {
    match *maps.dims() {
        [c, h, w, 2] if c > 0 && h > 0 && w > 0 => Ok((c, h, w)),
        _ => Err(Error::Shape {
            what: "coil maps [C, H, W, 2]".into(),
            expected: vec![8, 256, 256, 2],
            got: maps.dims().to_vec(),
        }),
    }
}

/// The fastMRI pairing of centre fraction and acceleration: 0.08 at ×4, 0.04 at ×8 (0.32/R).
pub fn default_center_fraction(acceleration: f64) -> f64 {
    0.32 / acceleration
}

/// A Cartesian column mask of width `w` (true = sampled), as fastMRI's `RandomMaskFunc`:
/// round(w·center_fraction) centre columns starting at ⌊(w − low + 1)/2⌋ (they hold the DC
/// column w/2), plus columns drawn uniformly without replacement from the rest. Unlike fastMRI,
/// which draws each column with the probability that gives the acceleration on average, the total
/// is exactly max(round(w/R), low), so the acceleration is R up to rounding.
pub fn column_mask(
    w: usize,
    acceleration: f64,
    center_fraction: f64,
    seed: u64,
) -> Result<Vec<bool>> {
    if !(acceleration.is_finite() && acceleration >= 1.0) {
        return Err(Error::config(format!(
            "MRI acceleration must be finite and ≥ 1, got {acceleration}"
        )));
    }
    if !(0.0..=1.0).contains(&center_fraction) {
        return Err(Error::config(format!(
            "MRI centre fraction must be in [0, 1], got {center_fraction}"
        )));
    }
    if w == 0 {
        return Err(Error::config("MRI mask: width 0"));
    }
    let low = ((w as f64 * center_fraction).round() as usize).min(w);
    let total = ((w as f64 / acceleration).round() as usize)
        .clamp(1, w)
        .max(low);
    let pad = (w - low).div_ceil(2);
    let mut mask = vec![false; w];
    mask[pad..pad + low].fill(true);
    let rest: Vec<usize> = (0..w).filter(|&j| !mask[j]).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in rand::seq::index::sample(&mut rng, rest.len(), total - low) {
        mask[rest[i]] = true;
    }
    Ok(mask)
}

/// [`column_mask`] repeated over the rows, as f32 `[H, W]` (1 = sampled).
pub fn cartesian_mask(
    h: usize,
    w: usize,
    acceleration: f64,
    center_fraction: f64,
    seed: u64,
) -> Result<Tensor> {
    let cols = column_mask(w, acceleration, center_fraction, seed)?;
    let m: Vec<f32> = (0..h)
        .flat_map(|_| cols.iter().map(|&s| if s { 1.0 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(m, (h, w), &Device::Cpu)?)
}

/// Maps and mask, as the CPU kernels use them.
struct Coils {
    coils: usize,
    h: usize,
    w: usize,
    maps64: Vec<Complex<f64>>,
    maps32: Vec<Complex<f32>>,
    mask: Vec<bool>,
    /// Per device: (Re S, Im S) `[C, H, W]` and M `[H, W]` for the dense form.
    portable: DeviceCache<(), [Tensor; 3]>,
}

/// The maps in the kernel's precision.
trait MapsOf: Real {
    fn maps(c: &Coils) -> &[Complex<Self>];
}

impl MapsOf for f64 {
    fn maps(c: &Coils) -> &[Complex<f64>] {
        &c.maps64
    }
}

impl MapsOf for f32 {
    fn maps(c: &Coils) -> &[Complex<f32>] {
        &c.maps32
    }
}

struct Work<T> {
    ws: Workspace<T>,
    zin: Vec<Complex<T>>,
    zout: Vec<Complex<T>>,
}

impl Coils {
    fn work<T: Real>(&self) -> Pooled<Work<T>> {
        let n = self.h * self.w;
        let zero = Complex::new(T::zero(), T::zero());
        Pooled::take(
            |w: &Work<T>| w.zin.len() == n,
            || Work {
                ws: Workspace::default(),
                zin: vec![zero; n],
                zout: vec![zero; n],
            },
        )
    }

    /// y[b, c] = M ⊙ fft2c(S_c ⊙ x[b]) for x `[B, 2, H, W]`, y `[B, C, H, W, 2]`.
    fn forward<T: MapsOf>(&self, x: &[T]) -> Vec<T> {
        let n = self.h * self.w;
        let plan = CenteredFft2::<T>::new(self.h, self.w, false);
        let maps = T::maps(self);
        let mut y = vec![T::zero(); x.len() * self.coils];
        y.par_chunks_mut(2 * n).enumerate().for_each_init(
            || self.work::<T>(),
            |wk, (k, out)| {
                let wk = &mut **wk;
                let (b, c) = (k / self.coils, k % self.coils);
                let (re, im) = x[2 * b * n..2 * (b + 1) * n].split_at(n);
                let s = &maps[c * n..(c + 1) * n];
                for (i, z) in wk.zin.iter_mut().enumerate() {
                    *z = s[i] * Complex::new(re[i], im[i]);
                }
                plan.run(&wk.zin, &mut wk.zout, &mut wk.ws);
                for ((o, z), &m) in out.chunks_exact_mut(2).zip(&wk.zout).zip(&self.mask) {
                    if m {
                        o[0] = z.re;
                        o[1] = z.im;
                    }
                }
            },
        );
        y
    }

    /// g[b] = Σ_c conj(S_c) ⊙ ifft2c(M ⊙ v[b, c]) for v `[B, C, H, W, 2]`, g `[B, 2, H, W]`.
    fn adjoint<T: MapsOf>(&self, v: &[T]) -> Vec<T> {
        let (n, nc) = (self.h * self.w, self.coils);
        let zero = Complex::new(T::zero(), T::zero());
        let plan = CenteredFft2::<T>::new(self.h, self.w, true);
        let maps = T::maps(self);
        // Back-projection of each (image, coil), then a sum over coils.
        let mut parts = vec![zero; v.len() / 2];
        parts
            .par_chunks_mut(n)
            .zip(v.par_chunks(2 * n))
            .enumerate()
            .for_each_init(
                || self.work::<T>(),
                |wk, (k, (part, vk))| {
                    let wk = &mut **wk;
                    for ((z, p), &m) in wk.zin.iter_mut().zip(vk.chunks_exact(2)).zip(&self.mask) {
                        *z = if m { Complex::new(p[0], p[1]) } else { zero };
                    }
                    plan.run(&wk.zin, part, &mut wk.ws);
                    let s = &maps[(k % nc) * n..(k % nc + 1) * n];
                    for (p, s) in part.iter_mut().zip(s) {
                        *p = s.conj() * *p;
                    }
                },
            );
        let mut g = vec![T::zero(); v.len() / nc];
        g.par_chunks_mut(2 * n)
            .zip(parts.par_chunks(nc * n))
            .for_each(|(g, p)| {
                let (re, im) = g.split_at_mut(n);
                for pc in p.chunks_exact(n) {
                    for ((r, i), z) in re.iter_mut().zip(im.iter_mut()).zip(pc) {
                        *r = *r + z.re;
                        *i = *i + z.im;
                    }
                }
            });
        g
    }
}

/// The multi-coil MRI operator (see the module docs).
#[derive(Clone)]
pub struct Mri {
    coils: Arc<Coils>,
}

impl Mri {
    /// From maps `[C, H, W, 2]` (used as given) and a mask `[H, W]` or `[1, 1, H, W]` of 0s and 1s.
    pub fn new(maps: &Tensor, mask: &Tensor) -> Result<Self> {
        let (coils, h, w) = check_maps(maps)?;
        let mask = match *mask.dims() {
            [mh, mw] | [1, 1, mh, mw] if (mh, mw) == (h, w) => mask,
            _ => {
                return Err(Error::Shape {
                    what: "MRI mask [H, W] (the maps' H and W)".into(),
                    expected: vec![h, w],
                    got: mask.dims().to_vec(),
                })
            }
        };
        let values = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.to_device(&Device::Cpu)?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?)
        };
        let m = values(mask)?;
        if m.iter().any(|&v| v != 0.0 && v != 1.0) {
            return Err(Error::config("MRI mask values must be 0 or 1"));
        }
        let s = values(maps)?;
        if s.iter().any(|v| !v.is_finite()) {
            return Err(Error::config("MRI coil maps contain NaN or Inf"));
        }
        let maps64: Vec<Complex<f64>> = s
            .chunks_exact(2)
            .map(|p| Complex::new(p[0], p[1]))
            .collect();
        let maps32 = maps64
            .iter()
            .map(|z| Complex::new(z.re as f32, z.im as f32))
            .collect();
        Ok(Self {
            coils: Arc::new(Coils {
                coils,
                h,
                w,
                maps64,
                maps32,
                mask: m.iter().map(|&v| v == 1.0).collect(),
                portable: DeviceCache::new(),
            }),
        })
    }

    /// Birdcage maps for `coils` coils and a [`cartesian_mask`] of acceleration R with the
    /// fastMRI centre fraction 0.32/R.
    pub fn simulated(
        coils: usize,
        h: usize,
        w: usize,
        acceleration: f64,
        seed: u64,
    ) -> Result<Self> {
        let maps = birdcage_maps(coils, h, w)?;
        let cf = default_center_fraction(acceleration);
        Self::new(&maps, &cartesian_mask(h, w, acceleration, cf, seed)?)
    }

    pub fn num_coils(&self) -> usize {
        self.coils.coils
    }

    /// (H, W) of the images.
    pub fn size(&self) -> (usize, usize) {
        (self.coils.h, self.coils.w)
    }

    /// The maps, f64 `[C, H, W, 2]`.
    pub fn maps(&self) -> Result<Tensor> {
        let k = &self.coils;
        let flat: Vec<f64> = k.maps64.iter().flat_map(|z| [z.re, z.im]).collect();
        Ok(Tensor::from_vec(
            flat,
            (k.coils, k.h, k.w, 2),
            &Device::Cpu,
        )?)
    }

    /// The mask, f32 `[H, W]` (1 = sampled).
    pub fn mask(&self) -> Result<Tensor> {
        let k = &self.coils;
        let m: Vec<f32> = k.mask.iter().map(|&s| if s { 1.0 } else { 0.0 }).collect();
        Ok(Tensor::from_vec(m, (k.h, k.w), &Device::Cpu)?)
    }

    /// H·W over the number of sampled k-space points.
    pub fn acceleration(&self) -> f64 {
        let k = &self.coils;
        let sampled = k.mask.iter().filter(|&&s| s).count();
        (k.h * k.w) as f64 / sampled as f64
    }

    /// Aᴴv for v `[B, C, H, W, 2]`, as `[B, 2, H, W]`. Differentiable.
    pub fn adjoint(&self, v: &Tensor) -> Result<Tensor> {
        let b = v.dims().first().copied().unwrap_or(0);
        expect_shape(
            "MRI k-space [B, C, H, W, 2]",
            v.dims(),
            &self.kspace_dims(b),
        )?;
        if !v.device().is_cpu() {
            return self.adjoint_dense(v);
        }
        Ok(apply_on_cpu(v, self.op(true))?)
    }

    /// (Re S, Im S, M) in `like`'s dtype on its device.
    fn dense_parts(&self, like: &Tensor) -> Result<std::sync::Arc<[Tensor; 3]>> {
        let k = &self.coils;
        k.portable.get(like, (), || {
            let t = |v, shape: &[usize]| portable::host_tensor(v, shape, like);
            let shape = [k.coils, k.h, k.w];
            Ok([
                t(k.maps64.iter().map(|z| z.re).collect(), &shape)?,
                t(k.maps64.iter().map(|z| z.im).collect(), &shape)?,
                t(
                    k.mask.iter().map(|&m| f64::from(u8::from(m))).collect(),
                    &[k.h, k.w],
                )?,
            ])
        })
    }

    /// A x by dense products (any device): M ⊙ fft2c(S_c ⊙ x).
    fn forward_dense(&self, x: &Tensor) -> Result<Tensor> {
        let (h, w) = (self.coils.h, self.coils.w);
        let p = self.dense_parts(x)?;
        let [sr, si, m] = &*p;
        let (xr, xi) = (x.narrow(1, 0, 1)?, x.narrow(1, 1, 1)?); // [B, 1, H, W]
        let pr = (xr.broadcast_mul(sr)? - xi.broadcast_mul(si)?)?;
        let pi = (xr.broadcast_mul(si)? + xi.broadcast_mul(sr)?)?;
        let (kr, ki) = portable::dft2(x, (h, 0, h), (w, 0, w), false)?.apply(&pr, Some(&pi))?;
        portable::join(&kr.broadcast_mul(m)?, &ki.broadcast_mul(m)?)
    }

    /// Aᴴv by dense products (any device): Σ_c conj(S_c) ⊙ ifft2c(M ⊙ v_c).
    fn adjoint_dense(&self, v: &Tensor) -> Result<Tensor> {
        let (h, w) = (self.coils.h, self.coils.w);
        let (vr, vi) = portable::parts(v)?;
        let p = self.dense_parts(&vr)?;
        let [sr, si, m] = &*p;
        let (vr, vi) = (vr.broadcast_mul(m)?, vi.broadcast_mul(m)?);
        let (qr, qi) = portable::dft2(&vr, (h, 0, h), (w, 0, w), true)?.apply(&vr, Some(&vi))?;
        let re = (qr.broadcast_mul(sr)? + qi.broadcast_mul(si)?)?.sum_keepdim(1)?;
        let im = (qi.broadcast_mul(sr)? - qr.broadcast_mul(si)?)?.sum_keepdim(1)?;
        Ok(Tensor::cat(&[&re, &im], 1)?)
    }

    fn op(&self, adjoint: bool) -> MriOp {
        MriOp {
            coils: self.coils.clone(),
            adjoint,
        }
    }

    fn image_dims(&self, b: usize) -> Vec<usize> {
        vec![b, 2, self.coils.h, self.coils.w]
    }

    fn kspace_dims(&self, b: usize) -> Vec<usize> {
        vec![b, self.coils.coils, self.coils.h, self.coils.w, 2]
    }

    fn check_image(&self, x: &Tensor) -> Result<usize> {
        let b = x.dims().first().copied().unwrap_or(0);
        expect_shape(
            "MRI image [B, 2, H, W] (real, imaginary)",
            x.dims(),
            &self.image_dims(b),
        )?;
        Ok(b)
    }
}

impl Operator for Mri {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_image(x)?;
        if !x.device().is_cpu() {
            return self.forward_dense(x);
        }
        Ok(apply_on_cpu(x, self.op(false))?)
    }

    fn vjp(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let b = self.check_image(x)?;
        expect_shape("MRI cotangent", v.dims(), &self.kspace_dims(b))?;
        let v = v.detach().to_dtype(x.dtype())?;
        if !x.device().is_cpu() {
            return self.adjoint_dense(&v);
        }
        Ok(apply_on_cpu(&v, self.op(true))?)
    }

    fn forward_portable(&self, x: &Tensor) -> Result<Tensor> {
        self.check_image(x)?;
        self.forward_dense(x)
    }

    fn vjp_portable(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let b = self.check_image(x)?;
        expect_shape("MRI cotangent", v.dims(), &self.kspace_dims(b))?;
        self.adjoint_dense(&v.detach().to_dtype(x.dtype())?)
    }

    fn name(&self) -> String {
        let k = &self.coils;
        format!(
            "multi-coil MRI ({} coils, {}×{}, ×{:.2} undersampling)",
            k.coils,
            k.h,
            k.w,
            self.acceleration()
        )
    }

    fn as_linear(&self) -> Option<&dyn Linear> {
        Some(self)
    }
}

/// Aᵀ is [`Mri::adjoint`] (Aᴴ, the adjoint for the real inner product of the (re, im) storage);
/// prox and pseudo-inverse by the CG defaults.
impl Linear for Mri {
    fn adjoint(&self, v: &Tensor) -> Result<Tensor> {
        Mri::adjoint(self, v)
    }
}

/// A (or Aᴴ when `adjoint`) as a custom op; each is the other's backward.
struct MriOp {
    coils: Arc<Coils>,
    adjoint: bool,
}

impl CustomOp1 for MriOp {
    fn name(&self) -> &'static str {
        if self.adjoint {
            "mri-adjoint"
        } else {
            "mri"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let k = &*self.coils;
        let dims = l.dims();
        let b = dims.first().copied().unwrap_or(0);
        let (image, kspace) = (
            [b, 2, k.h, k.w].to_vec(),
            [b, k.coils, k.h, k.w, 2].to_vec(),
        );
        let (inp, out) = if self.adjoint {
            (kspace, image)
        } else {
            (image, kspace)
        };
        if dims != inp.as_slice() {
            bail!("{}: expected {inp:?}, got {dims:?}", self.name());
        }
        let run = |k: &Coils, s: &CpuStorage| -> candle_core::Result<CpuStorage> {
            Ok(match (s.dtype(), self.adjoint) {
                (DType::F32, false) => CpuStorage::F32(k.forward(cpu_slice::<f32>(s, l)?)),
                (DType::F32, true) => CpuStorage::F32(k.adjoint(cpu_slice::<f32>(s, l)?)),
                (DType::F64, false) => CpuStorage::F64(k.forward(cpu_slice::<f64>(s, l)?)),
                (DType::F64, true) => CpuStorage::F64(k.adjoint(cpu_slice::<f64>(s, l)?)),
                (dt, _) => bail!("{}: unsupported dtype {dt:?}", self.name()),
            })
        };
        Ok((run(k, s)?, Shape::from(out)))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = MriOp {
            coils: self.coils.clone(),
            adjoint: !self.adjoint,
        };
        Ok(Some(apply_on_cpu(grad, op)?))
    }
}
