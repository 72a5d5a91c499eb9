//! MCMC kernels for DAPS's x0 step: sample p(x0 | x_t, y) ∝ prior-term(x0) · N(y; A(x0), τ²).
//!
//! Started at x̂0. The prior term is DAPS's Gaussian approximation N(x̂0, σ² I), or the prior's own
//! score at a small noise level times N(x_t; x0, σ² I) (the official "exact" prior solver).

use super::Problem;
use crate::error::Result;
use crate::noise::CHUNK;
use crate::noise::{stream, NoiseSource};
use crate::operator::per_chain_sq_norm;
use crate::operator::Operator;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Weight of the data term in the x0 step's gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataGradient {
    /// Paper Eq. 9: ∇‖A(x0) − y‖²/(2τ²) = Jᵀr/τ².
    Paper,
    /// Official `main` branch: ∇Σ(A(x0) − y)²/τ² = 2Jᵀr/τ².
    Doubled,
}

/// The prior factor of the x0 target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum PriorTerm {
    /// N(x0; x̂0, σ_t² I) (DAPS default, r_t = σ_t).
    Gaussian,
    /// ∇log p_s(x0) + (x_t − x0)/σ_t²: the prior's own score at noise level `sigma`.
    Score { sigma: f64 },
}

/// Everything the kernels need at one outer step.
pub struct Target<'a> {
    pub problem: Problem<'a>,
    /// Annealing noise level σ_t (= r_t).
    pub sigma: f64,
    pub x0hat: &'a Tensor,
    pub xt: &'a Tensor,
    pub tau: f64,
    pub data_gradient: DataGradient,
    pub prior_term: PriorTerm,
}

impl DataGradient {
    /// c in the data term's gradient c·Jᵀr/τ².
    pub fn factor(self) -> f64 {
        match self {
            DataGradient::Paper => 1.0,
            DataGradient::Doubled => 2.0,
        }
    }
}

impl Target<'_> {
    pub(crate) fn data_factor(&self) -> f64 {
        self.data_gradient.factor()
    }

    /// ∇ log target at x.
    pub fn score(&self, x: &Tensor) -> Result<Tensor> {
        let p = &self.problem;
        let g = p.measurement.residual_vjp(p.operator, x)?;
        let data = g.affine(-self.data_factor() / (self.tau * self.tau), 0.0)?;
        let inv_s2 = 1.0 / (self.sigma * self.sigma);
        let prior = match self.prior_term {
            PriorTerm::Gaussian => (self.x0hat - x)?.affine(inv_s2, 0.0)?,
            PriorTerm::Score { sigma } => {
                (p.prior.score(x, sigma)? + (self.xt - x)?.affine(inv_s2, 0.0)?)?
            }
        };
        Ok((data + prior)?)
    }

    /// Per-chain energy −log target (up to a constant) for the Gaussian prior term, `[B]` f64.
    pub(crate) fn energy(&self, x: &Tensor) -> Result<Vec<f64>> {
        let p = &self.problem;
        let r = p.measurement.residual(p.operator, x)?;
        let e_data = per_chain_sq_norm(&r)?.affine(0.5 / (self.tau * self.tau), 0.0)?;
        let e_prior =
            per_chain_sq_norm(&(x - self.x0hat)?)?.affine(0.5 / (self.sigma * self.sigma), 0.0)?;
        Ok((e_data + e_prior)?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
    }
}

/// The Gaussian target N(x0; x̂0, σ² I)·exp(−c‖A x0 − y‖²/(2τ²)) (c = 1, or 2 for the doubled
/// gradient) drawn exactly for a linear A by perturb-and-solve: with z = x̂0 + σ·ε₁ and
/// y' = y + (τ/√c)·ε₂, x0 = argmin ‖A x − y'‖²·c/(2τ²) + ‖x − z‖²/(2σ²) = prox_γ(z; y'),
/// γ = σ²·c/τ² (Papandreou & Yuille 2010). Exact where the operator's prox is a closed form
/// (inpainting, average pooling, matrices); to conjugate-gradient precision otherwise.
pub fn gaussian(t: &Target, noise: &mut dyn NoiseSource) -> Result<Tensor> {
    let p = &t.problem;
    let lin = p.operator.as_linear().ok_or_else(|| {
        crate::Error::Unsupported(format!(
            "the gaussian x0 step needs a linear operator; {} is not",
            p.operator.name()
        ))
    })?;
    if t.prior_term != PriorTerm::Gaussian {
        return Err(crate::Error::config(
            "the gaussian x0 step needs the Gaussian prior term",
        ));
    }
    let c = t.data_factor();
    let tau = t.tau / c.sqrt();
    let b = t.x0hat.dim(0)?;
    let z = (t.x0hat + (noise.randn(t.x0hat.shape(), t.x0hat.device())? * t.sigma)?)?;
    let y = &p.measurement.y;
    let mut shape = y.dims().to_vec();
    shape[0] = b;
    let y = y.broadcast_as(shape)?.contiguous()?;
    let y = (&y + (noise.randn(y.shape(), y.device())? * tau)?)?;
    lin.prox(&z, &y, t.sigma * t.sigma / (tau * tau))
}

/// λ_max(AᵀA) = ‖A‖² of a linear operator on inputs of `shape` (one chain) by 30 power
/// iterations from a fixed random start; 1 for a nonlinear operator (the image operators'
/// Jacobians have norm ≤ 1).
pub fn op_norm_sq(op: &dyn Operator, shape: &[usize], device: &Device) -> Result<f64> {
    if op.as_linear().is_none() {
        return Ok(1.0);
    }
    let n: usize = shape.iter().product();
    let mut rng = stream(0x6f70_6e6f, 0, 0);
    let v: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    let mut v = Tensor::from_vec(v, shape, device)?;
    let mut lambda = 0.0;
    for _ in 0..30 {
        let nv = v
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            .sqrt();
        if nv.is_nan() || nv <= 0.0 {
            break;
        }
        v = (v / nv)?;
        let av = op.forward(&v)?;
        lambda = av
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        v = op.vjp(&v, &av)?;
    }
    Ok(lambda)
}

/// Unadjusted Langevin: x ← x + η·∇log π(x) + √(2η)·ε.
pub fn langevin(t: &Target, steps: usize, lr: f64, noise: &mut dyn NoiseSource) -> Result<Tensor> {
    let mut x = t.x0hat.clone();
    let sd = (2.0 * lr).sqrt();
    if t.prior_term == PriorTerm::Gaussian && x.device().is_cpu() {
        // x ← (1 − η/σ²)·x + (η/σ²)·x̂0 − (η·c/τ²)·Jᵀr + √(2η)·ε in one pass per step.
        let p = &t.problem;
        let h = t.x0hat.contiguous()?;
        let k = lr / (t.sigma * t.sigma);
        for _ in 0..steps {
            let Some((seed, draw)) = noise.claim_draw() else {
                return langevin_steps(t, x, steps, lr, noise);
            };
            let g = p.measurement.residual_vjp(p.operator, &x)?.contiguous()?;
            let op = FusedLangevin {
                a: (1.0 - k) as f32,
                b: k as f32,
                c: (-lr * t.data_factor() / (t.tau * t.tau)) as f32,
                sd: sd as f32,
                seed,
                draw,
            };
            x = x.contiguous()?.apply_op3_no_bwd(&h, &g, &op)?;
        }
        return Ok(x);
    }
    langevin_steps(t, x, steps, lr, noise)
}

fn langevin_steps(
    t: &Target,
    mut x: Tensor,
    steps: usize,
    lr: f64,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let sd = (2.0 * lr).sqrt();
    for _ in 0..steps {
        let s = t.score(&x)?;
        let eps = noise.randn(x.shape(), x.device())?;
        x = ((x + s.affine(lr, 0.0)?)? + eps.affine(sd, 0.0)?)?;
    }
    Ok(x)
}

/// The official code's HMC (underdamped Langevin): v₀ ~ N(0, I) at each outer step, h = √η,
/// v ← m·v + h·∇log π(x) + √(2(1−m))·ε, x ← x + h·v.
pub fn hmc(
    t: &Target,
    steps: usize,
    lr: f64,
    momentum: f64,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let mut x = t.x0hat.clone();
    let h = lr.sqrt();
    let sd = (2.0 * (1.0 - momentum)).max(0.0).sqrt();
    let mut v = noise.randn(x.shape(), x.device())?;
    for _ in 0..steps {
        let s = t.score(&x)?;
        let eps = noise.randn(x.shape(), x.device())?;
        v = ((v.affine(momentum, 0.0)? + s.affine(h, 0.0)?)? + eps.affine(sd, 0.0)?)?;
        x = (x + v.affine(h, 0.0)?)?;
    }
    Ok(x)
}

/// Random-walk Metropolis–Hastings with proposal x' = x + √η·ε on the Gaussian-prior target.
/// Returns the final state and the acceptance rate.
pub fn metropolis(
    t: &Target,
    steps: usize,
    lr: f64,
    noise: &mut dyn NoiseSource,
) -> Result<(Tensor, f64)> {
    let mut x = t.x0hat.clone();
    let b = x.dim(0)?;
    let mut e = t.energy(&x)?;
    let mut rng = stream(noise.fork(), 0, 13);
    let sd = lr.sqrt();
    let mut accepted = 0usize;
    let mut mask_shape = vec![b];
    mask_shape.extend(std::iter::repeat_n(1, x.rank() - 1));
    for _ in 0..steps {
        let prop = (&x + noise.randn(x.shape(), x.device())?.affine(sd, 0.0)?)?;
        let e_new = t.energy(&prop)?;
        let mut keep = vec![0u8; b];
        for i in 0..b {
            let log_a = e[i] - e_new[i];
            if log_a >= 0.0 || rng.random::<f64>().ln() < log_a {
                keep[i] = 1;
                e[i] = e_new[i];
                accepted += 1;
            }
        }
        let m = Tensor::from_vec(keep, mask_shape.as_slice(), x.device())?;
        x = m.broadcast_as(x.shape())?.where_cond(&prop, &x)?;
    }
    Ok((x, accepted as f64 / (b * steps.max(1)) as f64))
}

/// a·x + b·x̂0 + c·g + sd·ε on the CPU, with ε generated in place exactly as
/// [`crate::noise::SeededNoise`] would for the same (seed, draw).
struct FusedLangevin {
    a: f32,
    b: f32,
    c: f32,
    sd: f32,
    seed: u64,
    draw: u64,
}

impl CustomOp3 for FusedLangevin {
    fn name(&self) -> &'static str {
        "fused-langevin"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let slice = crate::nn::cpu_slice::<f32>;
        let (x, h, g) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        if x.len() != h.len() || x.len() != g.len() {
            candle_core::bail!("fused-langevin: mismatched sizes");
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, o)| {
            let mut rng = stream(self.seed, self.draw, ci as u64);
            let base = ci * CHUNK;
            for (i, v) in o.iter_mut().enumerate() {
                let e: f32 = rng.sample(StandardNormal);
                let j = base + i;
                *v = self.a * x[j] + self.b * h[j] + self.c * g[j] + self.sd * e;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
