//! Exact Gaussian-mixture prior p(x) = Σ_k w_k N(x; μ_k, Σ_k) and its closed-form denoiser.
//!
//! Covariances may be full, diagonal or isotropic; a mixture whose components are all isotropic
//! takes a fast path (two `[B,K]×[K,d]` matrix products per call). All denoiser arithmetic is
//! done with candle ops, so gradients flow through it (DPS needs that).

use super::Denoiser;
use crate::error::{Error, Result};
use crate::noise::stream;
use candle_core::{DType, Device, Tensor};
use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Covariance of one mixture component.
#[derive(Debug, Clone)]
pub enum Covariance {
    /// s²·I, given as the variance s².
    Isotropic(f64),
    /// diag(v), given as the variances.
    Diagonal(Vec<f64>),
    /// A full symmetric positive-definite matrix.
    Full(DMatrix<f64>),
}

/// Σ = Q diag(λ) Qᵀ; `q == None` means Q = I.
#[derive(Debug, Clone)]
pub struct Eigen {
    pub q: Option<DMatrix<f64>>,
    pub lambda: DVector<f64>,
}

impl Eigen {
    /// Qᵀ v.
    pub fn to_eig(&self, v: &DVector<f64>) -> DVector<f64> {
        match &self.q {
            None => v.clone(),
            Some(q) => q.tr_mul(v),
        }
    }
    /// Q z.
    pub fn from_eig(&self, z: &DVector<f64>) -> DVector<f64> {
        match &self.q {
            None => z.clone(),
            Some(q) => q * z,
        }
    }
    /// Q diag(f) Qᵀ M for a matrix M with d rows.
    pub fn apply_fn(&self, f: &DVector<f64>, m: &DMatrix<f64>) -> DMatrix<f64> {
        match &self.q {
            None => {
                let mut out = m.clone();
                for (i, mut row) in out.row_iter_mut().enumerate() {
                    row *= f[i];
                }
                out
            }
            Some(q) => {
                let mut t = q.tr_mul(m);
                for (i, mut row) in t.row_iter_mut().enumerate() {
                    row *= f[i];
                }
                q * t
            }
        }
    }
}

enum Path {
    Iso {
        var: Vec<f64>,
    },
    Diag {
        var: Tensor,
    },
    Full {
        q: Vec<Tensor>,
        lambda: Vec<Vec<f64>>,
    },
}

/// A Gaussian mixture in R^d.
pub struct GaussianMixture {
    d: usize,
    weights: Vec<f64>,
    means: Vec<DVector<f64>>,
    covs: Vec<Covariance>,
    eig: Vec<Eigen>,
    // candle caches
    device: Device,
    means_t: Tensor,  // [K, d]
    means_tt: Tensor, // [d, K]
    mu_sq: Vec<f64>,
    path: Path,
    shape: Vec<usize>,
    sigma_data: f64,
}

impl GaussianMixture {
    /// Weights are normalised; they must be positive. Means must all have length d.
    pub fn new(
        weights: Vec<f64>,
        means: Vec<DVector<f64>>,
        covs: Vec<Covariance>,
        device: &Device,
    ) -> Result<Self> {
        let k = weights.len();
        if k == 0 || means.len() != k || covs.len() != k {
            return Err(Error::config(format!(
                "mixture needs as many weights, means and covariances (got {}, {}, {})",
                k,
                means.len(),
                covs.len()
            )));
        }
        let d = means[0].len();
        if d == 0 {
            return Err(Error::config("mixture means must have at least one entry"));
        }
        if means.iter().any(|m| m.iter().any(|v| !v.is_finite())) {
            return Err(Error::config("mixture means must be finite"));
        }
        let total: f64 = weights.iter().sum();
        if weights.iter().any(|w| !(*w > 0.0) || !w.is_finite()) || !(total > 0.0) {
            return Err(Error::config("mixture weights must be positive and finite"));
        }
        let weights: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let mut eig = Vec::with_capacity(k);
        for (i, (m, c)) in means.iter().zip(&covs).enumerate() {
            if m.len() != d {
                return Err(Error::config(format!(
                    "component {i}: mean has length {}, expected {d}",
                    m.len()
                )));
            }
            let e = match c {
                Covariance::Isotropic(v) => Eigen {
                    q: None,
                    lambda: DVector::from_element(d, *v),
                },
                Covariance::Diagonal(v) => {
                    if v.len() != d {
                        return Err(Error::config(format!(
                            "component {i}: diagonal covariance has length {}, expected {d}",
                            v.len()
                        )));
                    }
                    Eigen {
                        q: None,
                        lambda: DVector::from_vec(v.clone()),
                    }
                }
                Covariance::Full(s) => {
                    if s.shape() != (d, d) {
                        return Err(Error::config(format!(
                            "component {i}: covariance is {:?}, expected ({d}, {d})",
                            s.shape()
                        )));
                    }
                    let se = nalgebra::SymmetricEigen::new((s + s.transpose()) * 0.5);
                    Eigen {
                        q: Some(se.eigenvectors),
                        lambda: se.eigenvalues,
                    }
                }
            };
            if e.lambda.iter().any(|l| !(*l > 0.0) || !l.is_finite()) {
                return Err(Error::config(format!(
                    "component {i}: covariance is not positive definite"
                )));
            }
            eig.push(e);
        }
        let flat: Vec<f32> = means
            .iter()
            .flat_map(|m| m.iter().map(|v| *v as f32))
            .collect();
        let means_t = Tensor::from_vec(flat, (k, d), device)?;
        let means_tt = means_t.t()?.contiguous()?;
        let mu_sq = means.iter().map(|m| m.norm_squared()).collect();
        let path = if covs.iter().all(|c| matches!(c, Covariance::Isotropic(_))) {
            Path::Iso {
                var: eig.iter().map(|e| e.lambda[0]).collect(),
            }
        } else if covs.iter().all(|c| !matches!(c, Covariance::Full(_))) {
            let flat: Vec<f32> = eig
                .iter()
                .flat_map(|e| e.lambda.iter().map(|v| *v as f32))
                .collect();
            Path::Diag {
                var: Tensor::from_vec(flat, (k, d), device)?,
            }
        } else {
            let mut q = Vec::with_capacity(k);
            for e in &eig {
                let m = e.q.clone().unwrap_or_else(|| DMatrix::identity(d, d));
                q.push(mat_to_tensor(&m, device)?);
            }
            Path::Full {
                q,
                lambda: eig
                    .iter()
                    .map(|e| e.lambda.iter().copied().collect())
                    .collect(),
            }
        };
        Ok(Self {
            d,
            weights,
            means,
            covs,
            eig,
            device: device.clone(),
            means_t,
            means_tt,
            mu_sq,
            path,
            shape: vec![d],
            sigma_data: super::REFERENCE_SIGMA_DATA,
        })
    }

    /// Isotropic components sharing the variance `var`.
    pub fn isotropic(
        weights: Vec<f64>,
        means: Vec<DVector<f64>>,
        var: f64,
        device: &Device,
    ) -> Result<Self> {
        let k = means.len();
        Self::new(weights, means, vec![Covariance::Isotropic(var); k], device)
    }

    /// Declares the shape of one sample (e.g. `[1, 8, 8]` for images); its size must be d.
    pub fn with_sample_shape(mut self, shape: &[usize]) -> Result<Self> {
        if shape.iter().product::<usize>() != self.d {
            return Err(Error::config(format!(
                "sample shape {shape:?} does not have {} entries",
                self.d
            )));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Declares the data scale σ_data the samplers' defaults are relative to (default 0.5, that
    /// of images in [−1, 1]; see [`Denoiser::sigma_data`]).
    pub fn with_sigma_data(mut self, sigma_data: f64) -> Result<Self> {
        if !(sigma_data.is_finite() && sigma_data > 0.0) {
            return Err(Error::config(format!(
                "sigma_data must be finite and > 0, got {sigma_data}"
            )));
        }
        self.sigma_data = sigma_data;
        Ok(self)
    }

    /// The mixture of c·x for x from this one (means × c, covariances × c², σ_data × c).
    pub fn scaled(&self, c: f64) -> Result<Self> {
        if !(c.is_finite() && c > 0.0) {
            return Err(Error::config(format!(
                "scale must be finite and > 0, got {c}"
            )));
        }
        let covs = self
            .covs
            .iter()
            .map(|v| match v {
                Covariance::Isotropic(s) => Covariance::Isotropic(s * c * c),
                Covariance::Diagonal(d) => {
                    Covariance::Diagonal(d.iter().map(|s| s * c * c).collect())
                }
                Covariance::Full(m) => Covariance::Full(m * (c * c)),
            })
            .collect();
        let means = self.means.iter().map(|m| m * c).collect();
        Self::new(self.weights.clone(), means, covs, &self.device)?
            .with_sample_shape(&self.shape)?
            .with_sigma_data(self.sigma_data * c)
    }

    pub fn dim(&self) -> usize {
        self.d
    }
    pub fn n_components(&self) -> usize {
        self.weights.len()
    }
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
    pub fn means(&self) -> &[DVector<f64>] {
        &self.means
    }
    pub fn covariances(&self) -> &[Covariance] {
        &self.covs
    }
    pub fn eigen(&self) -> &[Eigen] {
        &self.eig
    }

    /// `n` exact samples as a row-major `n × d` buffer, with their component labels.
    pub fn sample(&self, n: usize, seed: u64) -> (Vec<f64>, Vec<usize>) {
        let d = self.d;
        let mut out = vec![0.0; n * d];
        let mut labels = vec![0usize; n];
        out.par_chunks_mut(d)
            .zip(labels.par_iter_mut())
            .enumerate()
            .for_each(|(i, (row, lab))| {
                let mut rng = stream(seed, i as u64, 7);
                let k = categorical(&self.weights, rng.random::<f64>());
                *lab = k;
                let e = &self.eig[k];
                let z = DVector::from_fn(d, |j, _| {
                    e.lambda[j].sqrt() * rng.sample::<f64, _>(StandardNormal)
                });
                let x = &self.means[k] + e.from_eig(&z);
                row.copy_from_slice(x.as_slice());
            });
        (out, labels)
    }

    /// The smoothed mixture p_σ = Σ w_k N(μ_k, Σ_k + σ²I), exact, evaluated in f64:
    /// returns (responsibilities, D(x,σ)) for one point. Used as a reference in tests.
    pub fn denoise_point(&self, x: &DVector<f64>, sigma: f64) -> (Vec<f64>, DVector<f64>) {
        let s2 = sigma * sigma;
        let mut logits = Vec::with_capacity(self.weights.len());
        let mut outs = Vec::with_capacity(self.weights.len());
        for k in 0..self.weights.len() {
            let e = &self.eig[k];
            let z = e.to_eig(&(x - &self.means[k]));
            let mut quad = 0.0;
            let mut logdet = 0.0;
            let mut zz = z.clone();
            for j in 0..self.d {
                let lv = e.lambda[j] + s2;
                quad += z[j] * z[j] / lv;
                logdet += lv.ln();
                zz[j] = z[j] * e.lambda[j] / lv;
            }
            logits.push(self.weights[k].ln() - 0.5 * quad - 0.5 * logdet);
            outs.push(&self.means[k] + e.from_eig(&zz));
        }
        let g = softmax(&logits);
        let mut dx = DVector::zeros(self.d);
        for (gk, o) in g.iter().zip(&outs) {
            dx += o * *gk;
        }
        (g, dx)
    }

    fn flat(&self, x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
        let dims = x.dims().to_vec();
        let b = *dims.first().ok_or_else(|| Error::msg("empty shape"))?;
        let d: usize = dims[1..].iter().product();
        if d != self.d {
            return Err(Error::Shape {
                what: "Gaussian-mixture prior input (per sample)".into(),
                expected: vec![self.d],
                got: dims[1..].to_vec(),
            });
        }
        Ok((x.reshape((b, d))?.to_dtype(DType::F32)?, dims))
    }

    fn row(&self, v: &[f64]) -> Result<Tensor> {
        let f: Vec<f32> = v.iter().map(|x| *x as f32).collect();
        Ok(Tensor::from_vec(f, (1, v.len()), &self.device)?)
    }

    /// Returns (γ [B,K], D [B,d], score [B,d]) as requested.
    fn eval(&self, x: &Tensor, sigma: f64, want_d: bool) -> Result<Tensor> {
        let s2 = sigma * sigma;
        let k = self.weights.len();
        let logw: Vec<f64> = self.weights.iter().map(|w| w.ln()).collect();
        match &self.path {
            Path::Iso { var } => {
                let lv: Vec<f64> = var.iter().map(|v| v + s2).collect();
                let d = self.d as f64;
                let bias: Vec<f64> = (0..k)
                    .map(|i| logw[i] - 0.5 * self.mu_sq[i] / lv[i] - 0.5 * d * lv[i].ln())
                    .collect();
                let inv: Vec<f64> = lv.iter().map(|l| 1.0 / l).collect();
                let xm = x.matmul(&self.means_tt)?; // [B,K]
                let inv_t = self.row(&inv)?;
                // logits = bias − ½‖x‖²/lv + x·μ/lv; with one shared variance the ‖x‖² term is
                // the same for every component and cancels in the softmax.
                let shared = var.iter().all(|v| *v == var[0]);
                let logits = if shared {
                    xm.affine(inv[0], 0.0)?.broadcast_add(&self.row(&bias)?)?
                } else {
                    let xsq = x.sqr()?.sum_keepdim(1)?; // [B,1]
                    (xm.broadcast_mul(&inv_t)? - xsq.broadcast_mul(&inv_t)?.affine(0.5, 0.0)?)?
                        .broadcast_add(&self.row(&bias)?)?
                };
                let g = candle_nn::ops::softmax(&logits, 1)?;
                if want_d && shared {
                    let a = var[0] / lv[0];
                    let mean_part = g.affine(1.0 - a, 0.0)?.matmul(&self.means_t)?;
                    Ok((x.affine(a, 0.0)? + mean_part)?)
                } else if want_d {
                    let a: Vec<f64> = (0..k).map(|i| var[i] / lv[i]).collect();
                    let one_m_a: Vec<f64> = a.iter().map(|a| 1.0 - a).collect();
                    let ga = g.broadcast_mul(&self.row(&a)?)?.sum_keepdim(1)?;
                    let mean_part = g
                        .broadcast_mul(&self.row(&one_m_a)?)?
                        .matmul(&self.means_t)?;
                    Ok((x.broadcast_mul(&ga)? + mean_part)?)
                } else {
                    let gi = g.broadcast_mul(&inv_t)?;
                    let toward = gi.matmul(&self.means_t)?;
                    Ok((toward - x.broadcast_mul(&gi.sum_keepdim(1)?)?)?)
                }
            }
            Path::Diag { var } => {
                let p = var.affine(1.0, s2)?.recip()?; // [K,d]
                let mup = (&self.means_t * &p)?;
                let c: Vec<f64> = {
                    let musq_p = (self.means_t.sqr()? * &p)?
                        .sum(1)?
                        .to_dtype(DType::F64)?
                        .to_vec1::<f64>()?;
                    let logdet = var
                        .affine(1.0, s2)?
                        .to_dtype(DType::F64)?
                        .log()?
                        .sum(1)?
                        .to_vec1::<f64>()?;
                    (0..k)
                        .map(|i| logw[i] - 0.5 * musq_p[i] - 0.5 * logdet[i])
                        .collect()
                };
                let quad = (x.sqr()?.matmul(&p.t()?)? - x.matmul(&mup.t()?)?.affine(2.0, 0.0)?)?;
                let logits = quad.affine(-0.5, 0.0)?.broadcast_add(&self.row(&c)?)?;
                let g = candle_nn::ops::softmax(&logits, 1)?;
                if want_d {
                    let vp = (var * &p)?;
                    let shrink = g.matmul(&vp)?;
                    let mean_part = g.matmul(&mup.affine(s2, 0.0)?)?;
                    Ok(((x * shrink)? + mean_part)?)
                } else {
                    Ok((g.matmul(&mup)? - (x * g.matmul(&p)?)?)?)
                }
            }
            Path::Full { q, lambda } => {
                let mut logits = Vec::with_capacity(k);
                let mut outs = Vec::with_capacity(k);
                for i in 0..k {
                    let lv: Vec<f64> = lambda[i].iter().map(|l| l + s2).collect();
                    let logdet: f64 = lv.iter().map(|l| l.ln()).sum();
                    let mu = self.means_t.narrow(0, i, 1)?;
                    let z = x.broadcast_sub(&mu)?.matmul(&q[i])?; // [B,d]
                    let inv = self.row(&lv.iter().map(|l| 1.0 / l).collect::<Vec<_>>())?;
                    let quad = z.sqr()?.broadcast_mul(&inv)?.sum_keepdim(1)?;
                    logits.push(quad.affine(-0.5, logw[i] - 0.5 * logdet)?);
                    let out = if want_d {
                        let f: Vec<f64> = (0..self.d).map(|j| lambda[i][j] / lv[j]).collect();
                        z.broadcast_mul(&self.row(&f)?)?
                            .matmul(&q[i].t()?)?
                            .broadcast_add(&mu)?
                    } else {
                        z.broadcast_mul(&inv)?.matmul(&q[i].t()?)?.neg()?
                    };
                    outs.push(out.unsqueeze(1)?);
                }
                let g = candle_nn::ops::softmax(&Tensor::cat(&logits, 1)?, 1)?; // [B,K]
                let outs = Tensor::cat(&outs, 1)?; // [B,K,d]
                Ok(outs.broadcast_mul(&g.unsqueeze(2)?)?.sum(1)?)
            }
        }
    }
}

impl Denoiser for GaussianMixture {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let (xf, dims) = self.flat(x)?;
        Ok(self.eval(&xf, sigma, true)?.reshape(dims)?)
    }

    /// Exact, valid at σ = 0 (the clean mixture's score).
    fn score(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let (xf, dims) = self.flat(x)?;
        Ok(self.eval(&xf, sigma, false)?.reshape(dims)?)
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn name(&self) -> String {
        let kind = match self.path {
            Path::Iso { .. } => "isotropic",
            Path::Diag { .. } => "diagonal",
            Path::Full { .. } => "full",
        };
        format!(
            "Gaussian mixture ({} components, d = {}, {kind} covariances)",
            self.weights.len(),
            self.d
        )
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(self.shape.clone())
    }

    fn sigma_data(&self) -> f64 {
        self.sigma_data
    }

    /// An analytic prior is exact at every σ.
    fn sigma_range(&self) -> (f64, f64) {
        (0.0, f64::INFINITY)
    }

    /// ±max_k (‖μ_k‖_∞ + 5·√λ_max(Σ_k)): where nearly all of the mass lies.
    fn data_range(&self) -> (f64, f64) {
        let r = self
            .means
            .iter()
            .zip(&self.eig)
            .map(|(m, e)| m.amax() + 5.0 * e.lambda.max().max(0.0).sqrt())
            .fold(0.0, f64::max);
        (-r, r)
    }

    fn as_gmm(&self) -> Option<&GaussianMixture> {
        Some(self)
    }
}

/// Index of the category that the uniform `u` falls in.
pub(crate) fn categorical(p: &[f64], u: f64) -> usize {
    let total: f64 = p.iter().sum();
    let mut acc = 0.0;
    for (i, pi) in p.iter().enumerate() {
        acc += pi / total;
        if u < acc {
            return i;
        }
    }
    p.len() - 1
}

/// Numerically stable softmax of log-weights.
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

pub(crate) fn mat_to_tensor(m: &DMatrix<f64>, device: &Device) -> Result<Tensor> {
    let (r, c) = m.shape();
    let v: Vec<f32> = (0..r)
        .flat_map(|i| (0..c).map(move |j| (i, j)))
        .map(|(i, j)| m[(i, j)] as f32)
        .collect();
    Ok(Tensor::from_vec(v, (r, c), device)?)
}

pub fn rows_to_tensor(v: &[f64], n: usize, d: usize, device: &Device) -> Result<Tensor> {
    let f: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    Ok(Tensor::from_vec(f, (n, d), device)?)
}

/// A `[B, ...]` tensor as row-major f64 rows of length d.
pub fn tensor_to_rows(t: &Tensor) -> Result<(Vec<f64>, usize, usize)> {
    let b = t.dim(0)?;
    let d = t.elem_count() / b.max(1);
    let v = t
        .reshape((b, d))?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    Ok((v, b, d))
}
