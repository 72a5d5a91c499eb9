#![allow(dead_code)]
//! Helpers shared by the integration tests.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn load(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &Device::Cpu).expect("fixture loads")
}

pub fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

pub fn vec64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |a − b| / max(1, max |b|)
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Sample mean and covariance of rows of an `[n, d]` buffer.
pub fn moments(x: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / d;
    let mut m = vec![0.0; d];
    for r in x.chunks(d) {
        for j in 0..d {
            m[j] += r[j] / n as f64;
        }
    }
    let mut c = vec![0.0; d * d];
    for r in x.chunks(d) {
        for i in 0..d {
            for j in 0..d {
                c[i * d + j] += (r[i] - m[i]) * (r[j] - m[j]) / (n - 1) as f64;
            }
        }
    }
    (m, c)
}

use daps::prior::{Covariance, GaussianMixture};
use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::StandardNormal;

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Iso,
    Diag,
    Full,
}

/// A random K-component mixture in R^d with well-conditioned covariances.
pub fn random_mixture(kind: Kind, d: usize, k: usize, spread: f64, seed: u64) -> GaussianMixture {
    let mut rng = daps::noise::stream(seed, 1, 2);
    let mut normal = |s: f64| -> f64 { s * rng.sample::<f64, _>(StandardNormal) };
    let weights: Vec<f64> = (0..k).map(|i| 1.0 + i as f64).collect();
    let means: Vec<DVector<f64>> = (0..k)
        .map(|_| DVector::from_fn(d, |_, _| normal(spread)))
        .collect();
    let covs = (0..k)
        .map(|i| match kind {
            Kind::Iso => Covariance::Isotropic(0.2 + 0.15 * i as f64),
            Kind::Diag => {
                Covariance::Diagonal((0..d).map(|j| 0.15 + 0.1 * ((i + j) % 4) as f64).collect())
            }
            Kind::Full => {
                let b = DMatrix::from_fn(d, d, |_, _| normal(0.3));
                Covariance::Full(&b * b.transpose() + DMatrix::identity(d, d) * 0.15)
            }
        })
        .collect();
    GaussianMixture::new(weights, means, covs, &candle_core::Device::Cpu).unwrap()
}

pub fn row_tensor(rows: &[f64], d: usize) -> candle_core::Tensor {
    daps::prior::gmm::rows_to_tensor(rows, rows.len() / d, d, &candle_core::Device::Cpu).unwrap()
}

pub fn rows(t: &candle_core::Tensor) -> Vec<f64> {
    daps::prior::gmm::tensor_to_rows(t).unwrap().0
}
