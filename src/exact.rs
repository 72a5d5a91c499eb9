//! Closed forms for Gaussian-mixture priors with a linear-Gaussian measurement y = A x + σ_y n:
//! the exact posterior, and the exact DAPS x0 step p(x0 | x_t, y).
//!
//! Both are "condition a mixture of Gaussians on a linear-Gaussian observation". Each component
//! is written in the eigenbasis of its prior covariance, Σ_k = Q diag(λ) Qᵀ, and sampled with
//! Matheron's rule: draw x' from the component's prior, then x = x' + K (y − A x' − σ_y ε_y) with
//! the Kalman gain K = C Aᵀ S⁻¹, S = A C Aᵀ + σ_y² I. Only d_y × d_y systems are solved.

use crate::error::{Error, Result};
use crate::noise::stream;
use crate::prior::gmm::{categorical, softmax, Eigen, GaussianMixture};
use nalgebra::{Cholesky, DMatrix, DVector, Dyn};
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Per-component quantities of a conditioning step.
struct Gain {
    a_mu: DVector<f64>,         // A μ_k
    aq: Option<DMatrix<f64>>,   // A Q_k (None when Q = I)
    k: DMatrix<f64>,            // d × d_y Kalman gain
    s_chol: Cholesky<f64, Dyn>, // S_k
    logdet_s: f64,
    sqrt_cov: DVector<f64>, // √λ' in the eigenbasis
}

/// Conditioner for p(x0 | x_σ, y) (σ > 0) or p(x0 | y) (σ = None).
pub struct Conditioner<'a> {
    gmm: &'a GaussianMixture,
    a: &'a DMatrix<f64>,
    sigma_y: f64,
    sigma: Option<f64>,
    gains: Vec<Gain>,
}

fn quad_s(ch: &Cholesky<f64, Dyn>, r: &DVector<f64>) -> f64 {
    // Invariant: a Cholesky factor has a positive diagonal, so the triangular solve succeeds
    // (the callers check that r has d_y entries).
    let z = ch.l().solve_lower_triangular(r).expect("triangular solve");
    z.norm_squared()
}

impl<'a> Conditioner<'a> {
    /// The per-component gains. Fails when A's columns do not match the mixture's dimension, or when S = A C Aᵀ + σ_y² I
    /// is not positive definite (σ_y = 0 with a rank-deficient A, or a degenerate component).
    pub fn new(
        gmm: &'a GaussianMixture,
        a: &'a DMatrix<f64>,
        sigma_y: f64,
        sigma: Option<f64>,
    ) -> Result<Self> {
        let dy = a.nrows();
        if a.ncols() != gmm.dim() {
            return Err(Error::Shape {
                what: "operator matrix A of the exact posterior".into(),
                expected: vec![dy, gmm.dim()],
                got: vec![dy, a.ncols()],
            });
        }
        let gains = gmm
            .eigen()
            .par_iter()
            .zip(gmm.means().par_iter())
            .map(|(e, mu)| {
                // covariance of the component before seeing y, in the eigenbasis
                let lam_c: DVector<f64> = match sigma {
                    None => e.lambda.clone(),
                    Some(s) => e.lambda.map(|l| l * s * s / (l + s * s)),
                };
                let w = e.apply_fn(&lam_c, &a.transpose()); // C Aᵀ, d × d_y
                let mut s = a * &w;
                for i in 0..dy {
                    s[(i, i)] += sigma_y * sigma_y;
                }
                let s = (&s + s.transpose()) * 0.5;
                let s_chol = Cholesky::new(s).ok_or_else(|| {
                    Error::msg(format!(
                        "the exact posterior needs S = A C Aᵀ + σ_y² I positive definite, but it is \
                         not (σ_y = {sigma_y}{}): use σ_y > 0 or a full-row-rank operator",
                        if sigma_y == 0.0 {
                            " with a rank-deficient A"
                        } else {
                            ""
                        }
                    ))
                })?;
                let logdet_s = 2.0 * s_chol.l().diagonal().iter().map(|v| v.ln()).sum::<f64>();
                let k = &w * s_chol.inverse();
                Ok(Gain {
                    a_mu: a * mu,
                    aq: e.q.as_ref().map(|q| a * q),
                    k,
                    s_chol,
                    logdet_s,
                    sqrt_cov: lam_c.map(f64::sqrt),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            gmm,
            a,
            sigma_y,
            sigma,
            gains,
        })
    }

    /// For component k and (optional) x_σ with A x_σ: (log prior weight, A·mean of the component
    /// before seeing y). Allocation-free for isotropic components, the benchmark's hot path.
    fn component(
        &self,
        k: usize,
        xt: Option<(&DVector<f64>, &DVector<f64>)>,
    ) -> (f64, DVector<f64>) {
        let e: &Eigen = &self.gmm.eigen()[k];
        let lw = self.gmm.weights()[k].ln();
        let g = &self.gains[k];
        let (Some(s), Some((x, ax))) = (self.sigma, xt) else {
            return (lw, g.a_mu.clone());
        };
        let s2 = s * s;
        let mu = &self.gmm.means()[k];
        let iso = e.q.is_none() && e.lambda.iter().all(|l| *l == e.lambda[0]);
        if iso {
            let lv = e.lambda[0] + s2;
            let dist2: f64 = x
                .iter()
                .zip(mu.iter())
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            let lp = lw - 0.5 * dist2 / lv - 0.5 * x.len() as f64 * lv.ln();
            // A·(μ + f (x − μ)) = Aμ + f (Ax − Aμ)
            let f = e.lambda[0] / lv;
            return (lp, &g.a_mu + (ax - &g.a_mu) * f);
        }
        let shift = self.shift(k, x);
        let z = e.to_eig(&(x - mu));
        let lp = lw
            - 0.5
                * z.iter()
                    .zip(e.lambda.iter())
                    .map(|(z, l)| z * z / (l + s2))
                    .sum::<f64>()
            - 0.5 * e.lambda.iter().map(|l| (l + s2).ln()).sum::<f64>();
        let a_mean = match &g.aq {
            Some(aq) => &g.a_mu + aq * &shift,
            None => &g.a_mu + self.a * &shift,
        };
        (lp, a_mean)
    }

    /// The eigen-coordinates offset of component k's mean given x_σ: (λ/(λ+σ²)) ⊙ Qᵀ(x − μ).
    fn shift(&self, k: usize, x: &DVector<f64>) -> DVector<f64> {
        let e = &self.gmm.eigen()[k];
        let s2 = self.sigma.map_or(0.0, |s| s * s);
        let mut z = e.to_eig(&(x - &self.gmm.means()[k]));
        for (zj, l) in z.iter_mut().zip(e.lambda.iter()) {
            *zj *= l / (l + s2);
        }
        z
    }

    /// One exact draw for one chain; `xt` is x_σ when conditioning on it.
    pub fn draw(
        &self,
        xt: Option<&DVector<f64>>,
        y: &DVector<f64>,
        rng: &mut impl Rng,
    ) -> (DVector<f64>, usize) {
        let kk = self.gmm.n_components();
        let ax = xt.map(|x| self.a * x);
        let logits: Vec<f64> = (0..kk)
            .map(|k| {
                let (lw, a_mean) = self.component(k, xt.zip(ax.as_ref()));
                let g = &self.gains[k];
                lw - 0.5 * quad_s(&g.s_chol, &(y - a_mean)) - 0.5 * g.logdet_s
            })
            .collect();
        let k = categorical(&softmax(&logits), rng.random::<f64>());
        let e = &self.gmm.eigen()[k];
        let g = &self.gains[k];
        let d = self.gmm.dim();
        let mut z = DVector::from_fn(d, |j, _| {
            g.sqrt_cov[j] * rng.sample::<f64, _>(StandardNormal)
        });
        if self.sigma.is_some() {
            if let Some(x) = xt {
                z += self.shift(k, x);
            }
        }
        let xprime = &self.gmm.means()[k] + e.from_eig(&z);
        let ey = DVector::from_fn(y.len(), |_, _| {
            self.sigma_y * rng.sample::<f64, _>(StandardNormal)
        });
        let innov = y - self.a * &xprime - ey;
        (xprime + &g.k * innov, k)
    }

    /// The conditional as an explicit mixture for one chain: (weights, means, covariances).
    pub fn mixture(
        &self,
        xt: Option<&DVector<f64>>,
        y: &DVector<f64>,
    ) -> (Vec<f64>, Vec<DVector<f64>>, Vec<DMatrix<f64>>) {
        let ax = xt.map(|x| self.a * x);
        let d = self.gmm.dim();
        let (mut logits, mut means, mut covs) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..self.gmm.n_components() {
            let (lw, a_mean) = self.component(k, xt.zip(ax.as_ref()));
            let e = &self.gmm.eigen()[k];
            let g = &self.gains[k];
            let r = y - &a_mean;
            logits.push(lw - 0.5 * quad_s(&g.s_chol, &r) - 0.5 * g.logdet_s);
            let prior_mean = match (self.sigma, xt) {
                (Some(_), Some(x)) => &self.gmm.means()[k] + e.from_eig(&self.shift(k, x)),
                _ => self.gmm.means()[k].clone(),
            };
            means.push(prior_mean + &g.k * r);
            let lam_c = g.sqrt_cov.map(|v| v * v);
            let c = e.apply_fn(&lam_c, &DMatrix::identity(d, d));
            let kac = &g.k * (self.a * &c);
            covs.push(&c - kac);
        }
        (softmax(&logits), means, covs)
    }

    /// Draws for a batch: `xt` row-major `[B, d]` (ignored when σ is None), `ys` one row or B rows.
    /// Chain b uses stream (seed, b), so results do not depend on the thread count.
    ///
    /// The sizes are the caller's to check (as `ExactStep` does): `xt` of `B·d` entries and y of
    /// `d_y` = A's rows, else nalgebra panics on the dimension mismatch.
    pub fn draw_batch(
        &self,
        xt: Option<&[f64]>,
        b: usize,
        ys: &[DVector<f64>],
        seed: u64,
    ) -> Vec<f64> {
        let d = self.gmm.dim();
        let mut out = vec![0.0; b * d];
        out.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
            let mut rng = stream(seed, i as u64, 11);
            let x = xt.map(|v| DVector::from_column_slice(&v[i * d..(i + 1) * d]));
            let y = if ys.len() == 1 { &ys[0] } else { &ys[i] };
            let (s, _) = self.draw(x.as_ref(), y, &mut rng);
            row.copy_from_slice(s.as_slice());
        });
        out
    }
}

/// The exact posterior p(x | y) of a mixture prior, as a mixture.
pub struct Posterior<'a> {
    cond: Conditioner<'a>,
    y: DVector<f64>,
    pub weights: Vec<f64>,
    pub means: Vec<DVector<f64>>,
}

impl<'a> Posterior<'a> {
    pub fn new(
        gmm: &'a GaussianMixture,
        a: &'a DMatrix<f64>,
        sigma_y: f64,
        y: DVector<f64>,
    ) -> Result<Self> {
        if y.len() != a.nrows() {
            return Err(Error::Shape {
                what: "measurement y of the exact posterior".into(),
                expected: vec![a.nrows()],
                got: vec![y.len()],
            });
        }
        let cond = Conditioner::new(gmm, a, sigma_y, None)?;
        let mut logits = Vec::new();
        let mut means = Vec::new();
        for k in 0..gmm.n_components() {
            let g = &cond.gains[k];
            let r = &y - &g.a_mu;
            logits.push(gmm.weights()[k].ln() - 0.5 * quad_s(&g.s_chol, &r) - 0.5 * g.logdet_s);
            means.push(&gmm.means()[k] + &g.k * r);
        }
        Ok(Self {
            weights: softmax(&logits),
            means,
            cond,
            y,
        })
    }

    /// `n` exact posterior samples, row-major `[n, d]`.
    pub fn sample(&self, n: usize, seed: u64) -> Vec<f64> {
        self.cond
            .draw_batch(None, n, std::slice::from_ref(&self.y), seed)
    }

    /// The component with the largest posterior responsibility for each row of `x` (`[n, d]`).
    pub fn assign(&self, x: &[f64]) -> Vec<usize> {
        let gmm = self.cond.gmm;
        let d = gmm.dim();
        let s2y = self.cond.sigma_y * self.cond.sigma_y;
        let dy = self.cond.a.nrows() as f64;
        // log N(x; m_k, C_k) with C_k⁻¹ = Σ_k⁻¹ + AᵀA/σ_y², log det C_k = log det Σ_k + d_y log σ_y² − log det S_k
        let consts: Vec<f64> = (0..gmm.n_components())
            .map(|k| {
                let logdet_sigma: f64 = gmm.eigen()[k].lambda.iter().map(|l| l.ln()).sum();
                self.weights[k].ln()
                    - 0.5 * (logdet_sigma + dy * s2y.ln() - self.cond.gains[k].logdet_s)
            })
            .collect();
        x.par_chunks(d)
            .map(|row| {
                let xv = DVector::from_column_slice(row);
                let mut best = (f64::NEG_INFINITY, 0);
                for k in 0..gmm.n_components() {
                    let diff = &xv - &self.means[k];
                    let e = &gmm.eigen()[k];
                    let z = e.to_eig(&diff);
                    let q1: f64 = z.iter().zip(e.lambda.iter()).map(|(z, l)| z * z / l).sum();
                    let q2 = (self.cond.a * &diff).norm_squared() / s2y;
                    let lp = consts[k] - 0.5 * (q1 + q2);
                    if lp > best.0 {
                        best = (lp, k);
                    }
                }
                best.1
            })
            .collect()
    }
}
