//! Full-reference image metrics as DAPS evaluates them (piq 0.8, data range 1).
//!
//! Inputs are `[B, C, H, W]` tensors in [0, 1]; each metric returns one value per image,
//! computed in f64.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// Maps DAPS images in [−1, 1] to [0, 1], clipped.
pub fn to_unit(x: &Tensor) -> Result<Tensor> {
    Ok(x.affine(0.5, 0.5)?.clamp(0.0, 1.0)?)
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

/// PSNR in dB per image: −10·log10(MSE + 1e-8), MSE over C·H·W (piq `psnr`).
pub fn psnr(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    let (x, y, [n, ..]) = pair(a, b, "psnr")?;
    let per = x.len() / n.max(1);
    Ok(x.chunks(per)
        .zip(y.chunks(per))
        .map(|(x, y)| {
            let mse = x.iter().zip(y).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / per as f64;
            -10.0 * (mse + 1e-8).log10()
        })
        .collect())
}

const WINDOW: usize = 11;
const SIGMA: f64 = 1.5;
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;

/// SSIM per image (piq `ssim` defaults): 11×11 Gaussian window (σ 1.5), valid region only,
/// K1 0.01, K2 0.03, mean over the map and then over channels. Images whose smaller side gives
/// f = round(min(H, W)/256) > 1 are first average-pooled by f, as piq does.
pub fn ssim(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
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
                    let cs = (2.0 * (exy[i] - mxy) + C2) / ((exx[i] - mx2) + (eyy[i] - my2) + C2);
                    (2.0 * mxy + C1) / (mx2 + my2 + C1) * cs
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
