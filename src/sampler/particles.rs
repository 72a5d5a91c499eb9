//! What the particle filters (MCGdiff, FPS) share: the operator's spectrum, groups of particles
//! per chain, multinomial resampling.

use super::{check_finite, mean_misfit, Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::{stream, NoiseSource};
use crate::operator::Linear;
use candle_core::{DType, Device, Tensor};
use rand::Rng;

/// A linear operator through its SVD A = U diag(s) V_rᵀ (nonzero s only), in one of the two
/// forms that are cheap: an explicit matrix (nalgebra SVD), or an operator whose nonzero singular
/// values are all equal (AAᵀ = s²·projection: inpainting, average pooling), whose coordinates
/// are then A x / s in y's own basis.
pub(crate) enum Spectrum<'a> {
    Matrix {
        /// V_r `[r, d]` and U_r `[d_y, r]`, f32.
        v: Tensor,
        u: Tensor,
        s: Vec<f64>,
    },
    Uniform {
        lin: &'a dyn Linear,
        s: f64,
        /// Entries of one measurement.
        r: usize,
    },
}

impl<'a> Spectrum<'a> {
    /// The spectrum of `p`'s operator, or an error naming what `method` misses.
    pub fn of(p: &Problem<'a>, method: &str) -> Result<Self> {
        let op = p.operator;
        let missing = || {
            Error::Unsupported(format!(
                "{method} needs the operator's SVD: an explicit matrix, or equal nonzero \
                 singular values (inpainting, SR by pooling); {} has neither",
                op.name()
            ))
        };
        if let Some(a) = op.matrix() {
            let svd = a.clone().svd(true, true);
            let (u, vt) = (svd.u.ok_or_else(missing)?, svd.v_t.ok_or_else(missing)?);
            let smax = svd.singular_values.max();
            let keep: Vec<usize> = (0..svd.singular_values.len())
                .filter(|&i| svd.singular_values[i] > 1e-9 * smax)
                .collect();
            let dev = p.prior.device();
            let (dy, d) = a.shape();
            let vt = &vt;
            let v: Vec<f32> = keep
                .iter()
                .flat_map(|&i| (0..d).map(move |j| vt[(i, j)] as f32))
                .collect();
            let u: Vec<f32> = (0..dy)
                .flat_map(|j| keep.iter().map(move |&i| (j, i)))
                .map(|(j, i)| u[(j, i)] as f32)
                .collect();
            let r = keep.len();
            return Ok(Spectrum::Matrix {
                v: Tensor::from_vec(v, (r, d), dev)?,
                u: Tensor::from_vec(u, (dy, r), dev)?,
                s: keep.iter().map(|&i| svd.singular_values[i]).collect(),
            });
        }
        let lin = op.as_linear().ok_or_else(missing)?;
        // (AAᵀ)² = s²·AAᵀ on a fixed random vector: one nonzero singular value s.
        let y1 = p.measurement.y.narrow(0, 0, 1)?.to_dtype(DType::F64)?;
        let mut rng = stream(0x5EC7, 0, 0);
        let g: Vec<f64> = (0..y1.elem_count())
            .map(|_| rng.random::<f64>() - 0.5)
            .collect();
        let g = Tensor::from_vec(g, y1.shape(), y1.device())?;
        let aat = |t: &Tensor| -> Result<Tensor> { op.forward(&lin.adjoint(t)?) };
        let w = aat(&g)?;
        let w2 = aat(&w)?;
        let dot =
            |a: &Tensor, b: &Tensor| -> Result<f64> { Ok((a * b)?.sum_all()?.to_scalar::<f64>()?) };
        let ww = dot(&w, &w)?;
        let s2 = dot(&w, &w2)? / ww;
        let err = dot(&(&w2 - (&w * s2)?)?, &(&w2 - (&w * s2)?)?)?.sqrt();
        if !(ww > 0.0 && s2 > 0.0 && err <= 1e-6 * s2 * ww.sqrt()) {
            return Err(missing());
        }
        Ok(Spectrum::Uniform {
            lin,
            s: s2.sqrt(),
            r: y1.elem_count(),
        })
    }

    /// The nonzero singular values, one per coordinate.
    pub fn singular_values(&self) -> Vec<f64> {
        match self {
            Spectrum::Matrix { s, .. } => s.clone(),
            Spectrum::Uniform { s, r, .. } => vec![*s; *r],
        }
    }

    /// V_rᵀ x as `[P, r]`.
    pub fn coords(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        Ok(match self {
            Spectrum::Matrix { v, .. } => x.reshape((n, ()))?.matmul(&v.t()?)?,
            Spectrum::Uniform { lin, s, .. } => {
                (lin.forward(x)?.reshape((n, ()))? / *s)?.to_dtype(DType::F32)?
            }
        })
    }

    /// V_r c for c `[P, r]`, as shape `x_shape`.
    pub fn lift(&self, c: &Tensor, x_shape: &[usize], y_shape: &[usize]) -> Result<Tensor> {
        Ok(match self {
            Spectrum::Matrix { v, .. } => c.matmul(v)?.reshape(x_shape)?,
            Spectrum::Uniform { lin, s, .. } => {
                let mut ys = y_shape.to_vec();
                ys[0] = c.dim(0)?;
                (lin.adjoint(&c.reshape(ys)?)? / *s)?.reshape(x_shape)?
            }
        })
    }

    /// ȳ = U_rᵀ y / s as `[B_y, r]` (the part of y in A's range).
    pub fn ybar(&self, y: &Tensor) -> Result<Tensor> {
        let n = y.dim(0)?;
        let y = y.to_dtype(DType::F32)?;
        Ok(match self {
            Spectrum::Matrix { u, s, .. } => {
                let inv = Tensor::from_vec(
                    s.iter().map(|s| (1.0 / s) as f32).collect::<Vec<_>>(),
                    (1, s.len()),
                    y.device(),
                )?;
                y.reshape((n, ()))?.matmul(u)?.broadcast_mul(&inv)?
            }
            Spectrum::Uniform { lin, s, .. } => {
                let proj = lin.forward(&lin.adjoint(&y)?)?;
                (proj.reshape((n, ()))? / (s * s * s))?
            }
        })
    }
}

/// Repeats each chain of `t` `[B, ...]` `n` times: `[B·n, ...]`, chain b's copies contiguous.
pub(crate) fn expand(t: &Tensor, n: usize) -> Result<Tensor> {
    let b = t.dim(0)?;
    let idx: Vec<u32> = (0..b * n).map(|i| (i / n) as u32).collect();
    Ok(t.index_select(&Tensor::new(idx, t.device())?, 0)?)
}

/// Particle 0 of each group of `n`: `[B·n, ...]` → `[B, ...]`.
pub(crate) fn first_of_groups(t: &Tensor, n: usize) -> Result<Tensor> {
    let b = t.dim(0)? / n;
    let idx: Vec<u32> = (0..b).map(|i| (i * n) as u32).collect();
    Ok(t.index_select(&Tensor::new(idx, t.device())?, 0)?)
}

/// Multinomial resampling within each group of `n` particles by the log-weights `logw`
/// (`[B·n]`): ancestor indices into the whole batch. Uniforms come from a fork of `noise`.
pub(crate) fn resample(
    logw: &Tensor,
    n: usize,
    noise: &mut dyn NoiseSource,
    device: &Device,
) -> Result<Tensor> {
    let lw = logw.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let mut rng = stream(noise.fork(), 0, 0);
    let mut idx = Vec::with_capacity(lw.len());
    for (g, w) in lw.chunks(n).enumerate() {
        let max = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if !max.is_finite() {
            return Err(Error::msg(format!(
                "particle weights of chain {g} are not finite (max log-weight {max})"
            )));
        }
        let mut cdf: Vec<f64> = w
            .iter()
            .scan(0.0, |acc, l| {
                *acc += (l - max).exp();
                Some(*acc)
            })
            .collect();
        let total = cdf[n - 1];
        cdf.iter_mut().for_each(|c| *c /= total);
        for _ in 0..n {
            let u: f64 = rng.random();
            let a = cdf.partition_point(|&c| c < u).min(n - 1);
            idx.push((g * n + a) as u32);
        }
    }
    Ok(Tensor::new(idx, device)?)
}

/// The measurement y `[B_y, ...]` per particle `[B·n, ...]` (a shared y stays `[1, ...]`).
pub(crate) fn y_per_particle(y: &Tensor, b: usize, n: usize) -> Result<Tensor> {
    match y.dim(0)? {
        1 => Ok(y.clone()),
        by if by == b => expand(y, n),
        by => Err(Error::config(format!(
            "measurement has {by} chains, the run has {b}"
        ))),
    }
}

/// Checks the particle count and that the problem has measurement noise.
pub(crate) fn check_particles(method: &str, particles: usize, sigma_y: f64) -> Result<()> {
    if !(1..=super::daps::MAX_STEPS).contains(&particles) {
        return Err(Error::config(format!(
            "{method}: particles must be in 1..={}, got {particles}",
            super::daps::MAX_STEPS
        )));
    }
    if !(sigma_y.is_finite() && sigma_y > 0.0) {
        return Err(Error::config(format!(
            "{method} needs measurement noise σ_y > 0, got {sigma_y}"
        )));
    }
    Ok(())
}

/// Whether `p` has what the particle filters need (see [`Spectrum::of`]).
pub(crate) fn supports(p: &Problem, method: &str) -> Result<()> {
    Spectrum::of(p, method).map(|_| ())
}

/// Checks the particles `x` after step `k` and reports particle 0 of each group of `n`.
pub(crate) fn report(
    p: &Problem,
    obs: &mut dyn Observer,
    (k, steps, sigma): (usize, usize, f64),
    stage: &'static str,
    x0hat: &Tensor,
    x: &Tensor,
    n: usize,
) -> Result<()> {
    check_finite(x, k, stage)?;
    let (x0, x0hat) = (first_of_groups(x, n)?, first_of_groups(x0hat, n)?);
    obs.on_step(&StepInfo {
        step: k,
        steps,
        sigma,
        x0hat: Some(&x0hat),
        x0: &x0,
        misfit: mean_misfit(p.operator, p.measurement, &x0)?,
    })
}
