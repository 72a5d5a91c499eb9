//! DAPS-SMC: K DAPS chains per measurement as the particles of a sequential Monte Carlo sampler,
//! so that the mode weights DAPS's N(x̂0, σ_t² I) cannot fix are corrected by importance weights.
//!
//! The path target is DAPS's decoupled *prior* chain (x̂0 = PF-ODE(x_i), x0_i ~ N(x̂0, σ_i² I),
//! x_{i+1} = x0_i + σ_{i+1}ε) times the twist L_i(x0_i) = N(y; A x0_i, τ² I). The proposal draws
//! x0_i from the Gaussian x0 target N(x̂0, σ_i² I)·N(y; A x0, τ² I) (daps-gaussian's step), so the
//! incremental weight does not depend on the draw: w_i = Z_i(x̂0_i)/L_{i−1}(x0_{i−1}), with
//! Z_i = N(y; A x̂0_i, τ² I + σ_i² AAᵀ), whose quadratic is the prox objective at its minimum
//! (its log-determinant is shared by the particles and cancels). Particles are resampled
//! (systematic, per measurement) before the draw when the effective sample size falls below
//! `ess_threshold`·K. The last level's target is prior chain × exact likelihood (τ = σ_y): the
//! posterior as K → ∞, up to the chain's own prior error (Euler ODE, σ_min blur). K = 1 is
//! daps-gaussian with τ = σ_y.

use super::{
    check_finite, likelihood_tau, linear_of, mean_misfit, ode, repeat_rows, Observer, Problem,
    StepInfo,
};
use crate::error::Result;
use crate::noise::{stream, NoiseSource};
use crate::operator::{per_chain_sq_norm, Measurement};
use crate::prior::gmm::softmax;
use crate::schedule::{annealing_sigmas, ode_sigmas, Discretization};
use candle_core::{DType, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DapsSmcConfig {
    /// K, particles per measurement (one output sample per measurement).
    pub particles: usize,
    /// Resample when the effective sample size is below this fraction of K.
    pub ess_threshold: f64,
    pub annealing_steps: usize,
    pub sigma_max: f64,
    pub sigma_min: f64,
    pub rho: f64,
    /// Euler steps of the PF-ODE per level (network evaluations per particle and level).
    pub ode_steps: usize,
    pub sigma_min_ode: f64,
    pub discretization: Discretization,
    /// Likelihood σ; unset: the measurement's σ_y.
    pub tau: Option<f64>,
}

impl Default for DapsSmcConfig {
    /// 4 particles × 50 levels × 5 NFE: DAPS-1K's 1000 NFE per sample.
    fn default() -> Self {
        Self {
            particles: 4,
            ess_threshold: 0.5,
            annealing_steps: 50,
            sigma_max: 100.0,
            sigma_min: 0.1,
            rho: 7.0,
            ode_steps: 5,
            sigma_min_ode: 0.01,
            discretization: Discretization::Main,
            tau: None,
        }
    }
}

/// The largest number of particles per measurement.
pub const MAX_PARTICLES: usize = 65_536;

impl DapsSmcConfig {
    pub fn validate(&self) -> Result<()> {
        let steps = 1..=super::daps::MAX_STEPS;
        let pos = |x: f64| x.is_finite() && x > 0.0;
        let checks: [(bool, &str, String); 9] = [
            (
                (1..=MAX_PARTICLES).contains(&self.particles),
                "particles",
                format!("in 1..={MAX_PARTICLES}, got {}", self.particles),
            ),
            (
                (0.0..=1.0).contains(&self.ess_threshold),
                "ess_threshold",
                format!("in [0, 1], got {}", self.ess_threshold),
            ),
            (
                steps.contains(&self.annealing_steps),
                "annealing_steps",
                format!("in {steps:?}, got {}", self.annealing_steps),
            ),
            (
                steps.contains(&self.ode_steps),
                "ode_steps",
                format!("in {steps:?}, got {}", self.ode_steps),
            ),
            (
                pos(self.sigma_min),
                "sigma_min",
                format!("finite and > 0, got {}", self.sigma_min),
            ),
            (
                self.sigma_max.is_finite() && self.sigma_max > self.sigma_min,
                "sigma_max",
                format!("finite and > sigma_min, got {}", self.sigma_max),
            ),
            (
                pos(self.rho),
                "rho",
                format!("finite and > 0, got {}", self.rho),
            ),
            (
                pos(self.sigma_min_ode) && self.sigma_min_ode < self.sigma_max,
                "sigma_min_ode",
                format!("finite, > 0 and < sigma_max, got {}", self.sigma_min_ode),
            ),
            (
                self.tau.is_none_or(pos),
                "tau",
                format!("finite and > 0 when set, got {:?}", self.tau),
            ),
        ];
        super::first_failed(&checks)
    }

    /// Network evaluations per output sample (K particles × N levels × M).
    pub fn nfe(&self) -> usize {
        self.particles * self.annealing_steps * self.ode_steps
    }
}

/// Per-chain ‖t‖² as f64.
fn sq_norms(t: &Tensor) -> Result<Vec<f64>> {
    Ok(per_chain_sq_norm(t)?.to_dtype(DType::F64)?.to_vec1()?)
}

/// Runs DAPS-SMC: `x_shape[0]` output samples, each from its own K particles.
pub fn daps_smc(
    p: &Problem,
    cfg: &DapsSmcConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let lin = linear_of(p, "daps-smc")?;
    // σ's and a given τ are in units of the prior's scale (`prior::Scale`).
    let sc = crate::prior::Scale::of(p.prior)?;
    let tau = likelihood_tau(cfg.tau.map(|t| sc.len(t)), p.measurement, "daps-smc")?;
    let (b, k) = (x_shape[0], cfg.particles);
    let n = b * k;
    let mut shape = x_shape.to_vec();
    shape[0] = n;
    let device = p.prior.device().clone();
    let meas = Measurement {
        y: repeat_rows(&p.measurement.y, b, k)?,
        sigma_y: p.measurement.sigma_y,
    };
    let y = &meas.y;
    let sig: Vec<f64> = sc.lens(annealing_sigmas(
        cfg.annealing_steps,
        cfg.sigma_max,
        cfg.sigma_min,
        cfg.rho,
        cfg.discretization,
    ));
    let mut rng = stream(noise.fork(), 0, 0x5EC);
    let firsts = Tensor::from_vec((0..b as u32).map(|i| i * k as u32).collect(), b, &device)?;
    let mut logw = vec![0.0; n];
    // ‖A x0_{i−1} − y‖² per particle (L_{i−1}); none before the first level.
    let mut prev_sq: Option<Vec<f64>> = None;
    let mut x = (noise.randn(&shape.as_slice().into(), &device)? * sc.len(cfg.sigma_max))?;
    let mut x0 = x.clone();
    let inv_t2 = 1.0 / (tau * tau);
    for i in 0..cfg.annealing_steps {
        let s = sig[i];
        let grid = ode_sigmas(
            cfg.ode_steps,
            s,
            sc.len(cfg.sigma_min_ode),
            cfg.rho,
            cfg.discretization,
        );
        let mut h = ode::euler(p.prior, &x, &grid)?;
        check_finite(&h, i, "PF-ODE estimate x̂0")?;
        // log Z_i = −½ min_x ‖A x − y‖²/τ² + ‖x − x̂0‖²/σ² (+ a constant shared by the particles).
        let gamma = s * s * inv_t2;
        let m = lin.prox(&h, y, gamma)?;
        let q_data = sq_norms(&meas.residual(p.operator, &m)?)?;
        let q_prior = sq_norms(&(&m - &h)?)?;
        for j in 0..n {
            logw[j] -= 0.5 * (q_data[j] * inv_t2 + q_prior[j] / (s * s));
            if let Some(prev) = &prev_sq {
                logw[j] += 0.5 * prev[j] * inv_t2;
            }
        }
        let ancestors = resample(&mut logw, k, cfg.ess_threshold, &mut rng);
        if let Some(a) = ancestors {
            h = h.index_select(&Tensor::from_vec(a, n, &device)?, 0)?;
        }
        // The proposal: the Gaussian x0 target drawn by perturb-and-solve.
        let z = (&h + (noise.randn(h.shape(), &device)? * s)?)?;
        let yp = (y + (noise.randn(y.shape(), &device)? * tau)?)?;
        x0 = lin.prox(&z, &yp, gamma)?;
        check_finite(&x0, i, "x0 step")?;
        prev_sq = Some(sq_norms(&meas.residual(p.operator, &x0)?)?);
        let shown = x0.index_select(&firsts, 0)?;
        obs.on_step(&StepInfo {
            step: i,
            steps: cfg.annealing_steps,
            sigma: s,
            x0hat: None,
            x0: &shown,
            misfit: mean_misfit(p.operator, &meas, &x0)?,
        })?;
        x = (&x0 + (noise.randn(x0.shape(), &device)? * sig[i + 1])?)?;
    }
    // One particle per measurement, drawn by the final weights.
    let pick: Vec<u32> = (0..b)
        .map(|g| {
            let w = softmax(&logw[g * k..(g + 1) * k]);
            (g * k + crate::prior::gmm::categorical(&w, rng.random())) as u32
        })
        .collect();
    Ok(x0.index_select(&Tensor::from_vec(pick, b, &device)?, 0)?)
}

/// Systematic resampling of each group of `k` particles whose effective sample size is below
/// `threshold`·k; resampled groups get equal weights. Returns the ancestor of every particle
/// (identity outside resampled groups), or `None` when no group was resampled.
pub(crate) fn resample(
    logw: &mut [f64],
    k: usize,
    threshold: f64,
    rng: &mut impl Rng,
) -> Option<Vec<u32>> {
    let mut ancestors: Vec<u32> = (0..logw.len() as u32).collect();
    let mut any = false;
    for (g, lw) in logw.chunks_mut(k).enumerate() {
        let w = softmax(lw);
        let ess = 1.0 / w.iter().map(|v| v * v).sum::<f64>();
        if ess >= threshold * k as f64 {
            continue;
        }
        any = true;
        let u: f64 = rng.random();
        let (mut acc, mut src) = (w[0], 0);
        for j in 0..k {
            let t = (j as f64 + u) / k as f64;
            while acc < t && src + 1 < k {
                src += 1;
                acc += w[src];
            }
            ancestors[g * k + j] = (g * k + src) as u32;
        }
        lw.fill(0.0);
    }
    any.then_some(ancestors)
}
