#![allow(dead_code)]
//! Helpers shared by the integration tests (and, through `#[path]`, by the benches).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---------------------------------------------------------------------------------------------
// Fixtures, temporary directories, the `daps` binary.

/// Path of `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// All tensors of the safetensors fixture `tests/fixtures/<rel>`, on the CPU.
pub fn load(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &Device::Cpu).expect("fixture loads")
}

/// The JSON fixture `tests/fixtures/<rel>`.
pub fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

/// A fresh (emptied, then created) directory `<temp>/daps-<prefix>-<pid>-<name>`.
pub fn tmp_dir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("daps-{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A path as `&str`, for command-line arguments.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs the `daps` binary with `args` and returns its output (whatever its exit status).
pub fn daps(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_daps"))
        .args(args)
        .output()
        .unwrap()
}

/// CPU seconds (user + system) this process has used so far (Linux `/proc/self/stat`).
pub fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// For the benches: runs the `(name, timing)` pairs whose name contains one of the command-line
/// arguments (all when there is none; flags such as cargo's `--bench` are ignored).
pub fn run_timings(timings: &[(&str, fn())]) {
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (name, f) in timings {
        if names.is_empty() || names.iter().any(|n| name.contains(n.as_str())) {
            eprintln!("== {name}");
            f();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tensors: values, random inputs, comparisons.

/// All values of `t`, flattened, as f64.
pub fn vec64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// All values of `t`, flattened, as f32.
pub fn vec32(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Standard normal f32 tensor on the CPU from `SeededNoise::new(seed)` (first draw).
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    use daps::noise::{NoiseSource, SeededNoise};
    SeededNoise::new(seed)
        .randn(&shape.into(), &Device::Cpu)
        .unwrap()
}

/// [`randn`] converted to f64.
pub fn randn64(shape: &[usize], seed: u64) -> Tensor {
    randn(shape, seed).to_dtype(DType::F64).unwrap()
}

/// [`randn`] converted to `dtype`.
pub fn randn_as(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    randn(shape, seed).to_dtype(dtype).unwrap()
}

/// ⟨a, b⟩ computed in f64 (shapes must match).
pub fn dot(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() * b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// max |a − b| in f64; asserts equal shapes.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// max |a − b| / max(1e-300, max |b|) over tensors (purely relative, unlike [`rel_err`]).
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (vec64(a), vec64(b));
    let scale = b.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Asserts |a − b| ≤ atol + rtol·|b| element-wise (as max(|a − b| − rtol·|b|) ≤ atol) and equal
/// shapes; prints and returns max |a − b|.
pub fn check_close(what: &str, a: &Tensor, b: &Tensor, atol: f64, rtol: f64) -> f64 {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (vec64(a), vec64(b));
    let mut worst = 0.0f64;
    let mut maxdiff = 0.0f64;
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).abs();
        maxdiff = maxdiff.max(d);
        worst = worst.max(d - rtol * y.abs());
    }
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    eprintln!("{what}: max |diff| = {maxdiff:.3e} (max |ref| = {scale:.3})");
    assert!(
        worst <= atol,
        "{what}: max |diff| {maxdiff:e} exceeds atol {atol} + rtol {rtol}"
    );
    maxdiff
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

// ---------------------------------------------------------------------------------------------
// Gaussian mixtures (gmm, reference, samplers).

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

/// `[n, d]` rows as a tensor.
pub fn row_tensor(rows: &[f64], d: usize) -> candle_core::Tensor {
    daps::prior::gmm::rows_to_tensor(rows, rows.len() / d, d, &candle_core::Device::Cpu).unwrap()
}

/// A tensor's rows, flattened.
pub fn rows(t: &candle_core::Tensor) -> Vec<f64> {
    daps::prior::gmm::tensor_to_rows(t).unwrap().0
}

/// Deterministic pseudo-random values in [-1, 1) of `shape` (an LCG; no noise stream needed).
pub fn rand(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Random weights for `cfg` (std 0.5/√fan-in, zero biases), by name.
pub fn random_weights(
    cfg: &daps::operator::nonlinear_blur::BkseConfig,
    seed: u64,
) -> HashMap<String, Tensor> {
    cfg.param_list()
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let t = if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap()
            } else {
                let fan_in: usize = shape[1..].iter().product();
                (randn_as(&shape, seed * 1000 + i as u64, DType::F32)
                    * (0.5 / (fan_in as f64).sqrt()))
                .unwrap()
            };
            (name, t)
        })
        .collect()
}

pub fn random_operator(
    cfg: &daps::operator::nonlinear_blur::BkseConfig,
    seed: u64,
    dtype: DType,
) -> daps::operator::nonlinear_blur::NonlinearBlur {
    let w: HashMap<String, Tensor> = random_weights(cfg, seed)
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
        .collect();
    let vb = candle_nn::VarBuilder::from_tensors(w, dtype, &Device::Cpu);
    let net = daps::operator::nonlinear_blur::KernelWizard::new(cfg, vb).unwrap();
    daps::operator::nonlinear_blur::NonlinearBlur::from_network(
        net,
        dtype,
        &Device::Cpu,
        "random weights".into(),
    )
}

/// Asserts that samples have the given mean and covariance within `k`·SE (+ `bias` on the
/// covariance, relative), SE from the Gaussian formulae Var(m̂) = C/n, Var(Ĉ_ij) = (C_ii C_jj + C_ij²)/n.
pub fn assert_moments(
    s: &[f64],
    d: usize,
    mean: &nalgebra::DVector<f64>,
    cov: &nalgebra::DMatrix<f64>,
    k: f64,
    bias: f64,
    what: &str,
) {
    let n = (s.len() / d) as f64;
    let (m, c) = moments(s, d);
    for i in 0..d {
        let se = (cov[(i, i)] / n).sqrt();
        assert!(
            (m[i] - mean[i]).abs() < k * se + bias * cov[(i, i)].sqrt(),
            "{what}: mean[{i}] {} vs {} (SE {se})",
            m[i],
            mean[i]
        );
        for j in 0..d {
            let se = ((cov[(i, i)] * cov[(j, j)] + cov[(i, j)].powi(2)) / n).sqrt();
            let tol = k * se + bias * (cov[(i, i)] * cov[(j, j)]).sqrt();
            assert!(
                (c[i * d + j] - cov[(i, j)]).abs() < tol,
                "{what}: cov[{i},{j}] {} vs {} (tol {tol})",
                c[i * d + j],
                cov[(i, j)]
            );
        }
    }
}

/// (b, r, SE(b), SE(r)) of samples `[n, d]` against the Gaussian N(m, C = LLᵀ), in the whitened
/// w = L⁻¹(x − m): the mean bias b = ‖mean w‖ and the spread ratio r = tr(C⁻¹Ĉ)/d;
/// SE(b) ≈ √(Σ_k var(w_k)/n), SE(r) = sd(‖w_j − w̄‖²/d)/√n.
pub fn whitened_bias(
    x: &[f64],
    mean: &nalgebra::DVector<f64>,
    chol: &nalgebra::DMatrix<f64>,
) -> (f64, f64, f64, f64) {
    use nalgebra::DVector;
    let d = mean.len();
    let w: Vec<DVector<f64>> = x
        .chunks(d)
        .map(|r| {
            chol.solve_lower_triangular(&(DVector::from_column_slice(r) - mean))
                .unwrap()
        })
        .collect();
    let nf = w.len() as f64;
    let wbar = w.iter().fold(DVector::zeros(d), |a, v| a + v) / nf;
    let var_sum: f64 = w.iter().map(|v| (v - &wbar).norm_squared()).sum::<f64>() / (nf - 1.0);
    let q: Vec<f64> = w
        .iter()
        .map(|v| (v - &wbar).norm_squared() / d as f64)
        .collect();
    let r = q.iter().sum::<f64>() / nf;
    let sd_q = (q.iter().map(|v| (v - r).powi(2)).sum::<f64>() / (nf - 1.0)).sqrt();
    (wbar.norm(), r, (var_sum / nf).sqrt(), sd_q / nf.sqrt())
}
