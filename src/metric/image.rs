//! Full-reference image metrics as DAPS evaluates them (piq 0.8), for any data range.
//!
//! Inputs are `[B, C, H, W]` tensors whose values span `range` (hi − lo: 1 for [0, 1] images,
//! as DAPS scores them after [`to_unit`]); each metric returns one value per image, in f64.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// The data range of the image tasks, PNG files and the built-in prior.
pub const IMAGE_RANGE: (f64, f64) = (-1.0, 1.0);

/// Maps values in `range` (lo, hi) to [0, 1], clipped.
pub fn to_unit(x: &Tensor, range: (f64, f64)) -> Result<Tensor> {
    let (lo, hi) = range;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(Error::config(format!(
            "display range must be finite with lo < hi, got ({lo}, {hi})"
        )));
    }
    let k = 1.0 / (hi - lo);
    Ok(x.affine(k, -lo * k)?.clamp(0.0, 1.0)?)
}

/// Robust limits of each image of `x` `[B, ...]`: its 0.5th and 99.5th percentiles (widened to
/// a nonzero span), for viewing data without a declared range.
pub fn robust_range(x: &Tensor) -> Result<Vec<(f64, f64)>> {
    let b = x.dim(0)?;
    let v = x
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .reshape((b, ()))?
        .to_vec2::<f64>()?;
    Ok(v.into_iter()
        .map(|mut row| {
            row.retain(|v| v.is_finite());
            if row.is_empty() {
                return (0.0, 1.0);
            }
            row.sort_by(f64::total_cmp);
            let at = |q: f64| row[((row.len() - 1) as f64 * q).round() as usize];
            let (lo, hi) = (at(0.005), at(0.995));
            let pad = if hi > lo { 0.0 } else { lo.abs().max(1e-12) };
            (lo - pad, hi + pad)
        })
        .collect())
}

/// Each image of `x` mapped to [0, 1] by its own [`robust_range`].
pub fn to_unit_robust(x: &Tensor) -> Result<Tensor> {
    let parts = robust_range(x)?
        .into_iter()
        .enumerate()
        .map(|(i, r)| to_unit(&x.narrow(0, i, 1)?, r))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// `range` as a positive finite span, or an error naming the metric.
fn span(range: f64, what: &str) -> Result<f64> {
    if range.is_finite() && range > 0.0 {
        Ok(range)
    } else {
        Err(Error::config(format!(
            "{what}: data range must be finite and > 0, got {range}"
        )))
    }
}

/// Both images as f64 data, with their shape (B, C, H, W).
fn pair(a: &Tensor, b: &Tensor, what: &str) -> Result<(Vec<f64>, Vec<f64>, [usize; 4])> {
    let (n, c, h, w) = a.dims4().map_err(|_| Error::Shape {
        what: format!("{what} input [B, C, H, W]"),
        expected: vec![1, 3, 256, 256],
        got: a.dims().to_vec(),
    })?;
    crate::error::expect_shape(&format!("{what} second input"), b.dims(), a.dims())?;
    let data = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?)
    };
    Ok((data(a)?, data(b)?, [n, c, h, w]))
}

/// PSNR in dB per image of `a` against the reference `b` with data range `range` (hi − lo):
/// −10·log10(MSE/range² + 1e-8), MSE over C·H·W (piq `psnr`).
pub fn psnr(a: &Tensor, b: &Tensor, range: f64) -> Result<Vec<f64>> {
    let r2 = span(range, "psnr")?.powi(2);
    let (x, y, [n, ..]) = pair(a, b, "psnr")?;
    let per = x.len() / n.max(1);
    Ok(x.chunks(per)
        .zip(y.chunks(per))
        .map(|(x, y)| {
            let mse = x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / per as f64;
            -10.0 * (mse / r2 + 1e-8).log10()
        })
        .collect())
}

const WINDOW: usize = 11;
const SIGMA: f64 = 1.5;
const K1: f64 = 0.01;
const K2: f64 = 0.03;

/// SSIM per image (piq `ssim` defaults) with data range `range` (hi − lo): 11×11 Gaussian window
/// (σ 1.5), valid region only, C1 = (0.01·range)², C2 = (0.03·range)², mean over the map and
/// then over channels. Images whose smaller side gives f = round(min(H, W)/256) > 1 are first
/// average-pooled by f, as piq does.
pub fn ssim(a: &Tensor, b: &Tensor, range: f64) -> Result<Vec<f64>> {
    let range = span(range, "ssim")?;
    let (c1, c2) = ((K1 * range).powi(2), (K2 * range).powi(2));
    let (_, _, h, w) = a.dims4().map_err(|_| Error::Shape {
        what: "ssim input [B, C, H, W]".into(),
        expected: vec![1, 3, 256, 256],
        got: a.dims().to_vec(),
    })?;
    crate::error::expect_shape("ssim second input", b.dims(), a.dims())?;
    let f = ((h.min(w) as f64) / 256.0).round_ties_even().max(1.0) as usize;
    let (a, b) = if f > 1 {
        (a.avg_pool2d(f)?, b.avg_pool2d(f)?)
    } else {
        (a.clone(), b.clone())
    };
    let (x, y, [n, c, h, w]) = pair(&a, &b, "ssim")?;
    if h < WINDOW || w < WINDOW {
        return Err(Error::config(format!(
            "ssim: images must be at least {WINDOW}×{WINDOW} (after pooling), got {h}×{w}"
        )));
    }
    let g: Vec<f64> = (0..WINDOW)
        .map(|i| {
            let d = i as f64 - (WINDOW - 1) as f64 / 2.0;
            (-d * d / (2.0 * SIGMA * SIGMA)).exp()
        })
        .collect();
    let s: f64 = g.iter().sum();
    let g: Vec<f64> = g.into_iter().map(|v| v / s).collect();

    let plane = h * w;
    let per_channel: Vec<f64> = x
        .chunks(plane)
        .zip(y.chunks(plane))
        .map(|(x, y)| {
            let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
            let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
            let xy: Vec<f64> = x.iter().zip(y).map(|(a, b)| a * b).collect();
            let [mx, my, exx, eyy, exy] =
                [x, y, &xx[..], &yy[..], &xy[..]].map(|p| filter_valid(p, h, w, &g));
            let count = mx.len() as f64;
            (0..mx.len())
                .map(|i| {
                    let (mx2, my2, mxy) = (mx[i] * mx[i], my[i] * my[i], mx[i] * my[i]);
                    let cs = (2.0 * (exy[i] - mxy) + c2) / ((exx[i] - mx2) + (eyy[i] - my2) + c2);
                    (2.0 * mxy + c1) / (mx2 + my2 + c1) * cs
                })
                .sum::<f64>()
                / count
        })
        .collect();
    Ok(per_channel
        .chunks(c)
        .map(|ch| ch.iter().sum::<f64>() / c as f64)
        .take(n)
        .collect())
}

/// Separable valid-region correlation of an h×w plane with the window g⊗g.
fn filter_valid(p: &[f64], h: usize, w: usize, g: &[f64]) -> Vec<f64> {
    let k = g.len();
    let (oh, ow) = (h - k + 1, w - k + 1);
    let mut t = vec![0.0; h * ow];
    for i in 0..h {
        for j in 0..ow {
            t[i * ow + j] = g.iter().zip(&p[i * w + j..]).map(|(a, b)| a * b).sum();
        }
    }
    let mut out = vec![0.0; oh * ow];
    for i in 0..oh {
        for (a, &ga) in g.iter().enumerate() {
            let row = &t[(i + a) * ow..(i + a + 1) * ow];
            for (o, &tv) in out[i * ow..(i + 1) * ow].iter_mut().zip(row) {
                *o += ga * tv;
            }
        }
    }
    out
}

/// The per-pixel central interval of K posterior samples used by [`coverage`]: the order
/// statistics [x₍ᵢ₎, x₍K+1−ᵢ₎] with the rank i whose nominal coverage (K + 1 − 2i)/(K + 1) is
/// closest to `level`. That is the exact expected coverage of a calibrated sampler (the truth
/// is then a (K+1)-th exchangeable draw, its rank uniform), whatever the distribution; the
/// quantile interval of K samples is not (K = 16, 90% by interpolation: ≈ 79%).
/// Returns (i, nominal coverage).
pub fn coverage_rank(k: usize, level: f64) -> (usize, f64) {
    let nominal = |i: usize| (k + 1 - 2 * i) as f64 / (k + 1) as f64;
    let i = (1..=k.div_ceil(2))
        .filter(|&i| k + 1 > 2 * i)
        .min_by(|&a, &b| {
            (nominal(a) - level)
                .abs()
                .total_cmp(&(nominal(b) - level).abs())
        })
        .unwrap_or(1);
    (i, nominal(i))
}

/// The fraction of the truth's entries inside the per-entry interval [x₍ᵢ₎, x₍K+1−ᵢ₎] of the
/// `samples` `[K, ...]` (K ≥ 2; `truth` has one sample's elements), with i from
/// [`coverage_rank`]. Returns (coverage, nominal coverage).
pub fn coverage(samples: &Tensor, truth: &Tensor, level: f64) -> Result<(f64, f64)> {
    let k = samples.dim(0)?;
    let per = samples.elem_count() / k.max(1);
    if k < 2 || truth.elem_count() != per {
        return Err(Error::msg(format!(
            "coverage: need K ≥ 2 samples of the truth's {} entries, got {:?}",
            truth.elem_count(),
            samples.dims()
        )));
    }
    let (i, nominal) = coverage_rank(k, level);
    let s: Vec<f32> = samples.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let t: Vec<f32> = truth.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let mut column = vec![0f32; k];
    let inside = (0..per)
        .filter(|&j| {
            for (c, v) in column.iter_mut().enumerate() {
                *v = s[c * per + j];
            }
            column.sort_by(f32::total_cmp);
            column[i - 1] <= t[j] && t[j] <= column[k - i]
        })
        .count();
    Ok((inside as f64 / per as f64, nominal))
}
