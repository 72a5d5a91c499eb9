//! DAPS: Decoupled Annealing Posterior Sampling (Zhang et al., CVPR 2025).
//!
//! For σ_0 > … > σ_{N−1} > σ_N = 0: x̂0 = PF-ODE(x, σ_i → σ_min_ode); x0 ~ p(x0 | x, y) by an
//! x0 step started at x̂0; x ← x0 + σ_{i+1}·ε. The result is the last x0.

use super::mcmc::{self, Target};
pub use super::mcmc::{DataGradient, PriorTerm};
use super::{check_finite, ode, Divergence, Observer, Problem, StepInfo};
use crate::error::{Error, Result};
use crate::exact::Conditioner;
use crate::noise::NoiseSource;
use crate::prior::gmm::{rows_to_tensor, tensor_to_rows};
use crate::prior::Scale;
use crate::schedule::{annealing_sigmas, lr_multiplier, ode_sigmas, Discretization};
use candle_core::Tensor;
use nalgebra::DVector;
use serde::{Deserialize, Serialize};

/// How x0 is drawn from p(x0 | x_t, y).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum X0Method {
    Langevin,
    Hmc,
    Mh,
    /// Closed form: Gaussian-mixture prior, matrix operator, Gaussian noise (σ_y of the measurement).
    Exact,
    /// The Gaussian target N(x̂0, σ_t² I)·N(y; A x0, τ² I) drawn exactly for a linear operator
    /// (perturb-and-solve with the operator's proximal step): no MCMC steps.
    Gaussian,
}

/// Where the likelihood's τ comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TauRule {
    /// τ = `tau`·s (the official configs and the presets: τ = 0.01 whatever σ_y).
    Fixed,
    /// τ = σ_y of the measurement, the true likelihood (`tau`·s when σ_y = 0).
    Measurement,
}

/// How `lr` sets the x0 step's step size η.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrRule {
    /// η = `lr`·s² (the official configs and the presets).
    Absolute,
    /// η = `lr`/(1/r_t² + c‖A‖²/τ²): a fraction of the inverse stiffness of the Gaussian x0
    /// target, so the Langevin step is stable for `lr` < 2 whatever τ, r_t, ‖A‖ and the
    /// scale. ‖A‖ by power iteration for a linear operator; taken as 1 otherwise.
    Stable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DapsConfig {
    /// N, the number of annealing levels.
    pub annealing_steps: usize,
    pub sigma_max: f64,
    pub sigma_min: f64,
    pub rho: f64,
    /// M, Euler steps of the inner PF-ODE (network evaluations per outer step).
    pub ode_steps: usize,
    pub sigma_min_ode: f64,
    pub discretization: Discretization,
    pub x0_method: X0Method,
    pub mcmc_steps: usize,
    pub lr: f64,
    pub lr_min_ratio: f64,
    pub tau: f64,
    /// HMC momentum m.
    pub momentum: f64,
    pub data_gradient: DataGradient,
    pub prior_term: PriorTerm,
    pub tau_rule: TauRule,
    pub lr_rule: LrRule,
    /// ζ of a DPS-guided PF-ODE (`daps-guided`; 0 = the paper's DAPS): every Euler step of
    /// the x̂0 estimate also moves x by −ζ·s·(1 + σ²/s²)·∇_x‖y − A(D(x, σ))‖, DPS's step
    /// (Chung et al. 2023) in EDM coordinates, the gradient through the denoiser (one VJP per
    /// network evaluation).
    pub guidance: f64,
}

/// The largest number of annealing, ODE or MCMC steps a configuration may ask for.
pub const MAX_STEPS: usize = 1_000_000;

impl Default for DapsConfig {
    /// Pixel-space DAPS-1K of the official code (200 × 5 NFE, 100 Langevin steps).
    fn default() -> Self {
        Self {
            annealing_steps: 200,
            sigma_max: 100.0,
            sigma_min: 0.1,
            rho: 7.0,
            ode_steps: 5,
            sigma_min_ode: 0.01,
            discretization: Discretization::Main,
            x0_method: X0Method::Langevin,
            mcmc_steps: 100,
            lr: 1e-4,
            lr_min_ratio: 0.01,
            tau: 0.01,
            momentum: 0.0,
            data_gradient: DataGradient::Paper,
            prior_term: PriorTerm::Gaussian,
            tau_rule: TauRule::Fixed,
            lr_rule: LrRule::Absolute,
            guidance: 0.0,
        }
    }
}

impl DapsConfig {
    /// The library's default (`daps` in the registry): the official schedule, with τ = σ_y of
    /// the measurement and η at half the x0 target's stability bound, decaying.
    pub fn measured() -> Self {
        Self {
            tau_rule: TauRule::Measurement,
            lr_rule: LrRule::Stable,
            lr: 1.0,
            ..Self::default()
        }
    }

    /// Checks every field against its valid range; the error names the field and the range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, range: &str, v: &dyn std::fmt::Display| {
            Err(Error::config(format!("{field} must be {range}, got {v}")))
        };
        let finite_pos = |x: f64| x.is_finite() && x > 0.0;
        if !(1..=MAX_STEPS).contains(&self.annealing_steps) {
            return bad(
                "annealing_steps",
                &format!("in 1..={MAX_STEPS}"),
                &self.annealing_steps,
            );
        }
        if !finite_pos(self.sigma_min) {
            return bad("sigma_min", "finite and > 0", &self.sigma_min);
        }
        if !(self.sigma_max.is_finite() && self.sigma_max > self.sigma_min) {
            return bad("sigma_max", "finite and > sigma_min", &self.sigma_max);
        }
        if !finite_pos(self.rho) {
            return bad("rho", "finite and > 0", &self.rho);
        }
        if self.x0_method != X0Method::Exact {
            if !(1..=MAX_STEPS).contains(&self.ode_steps) {
                return bad("ode_steps", &format!("in 1..={MAX_STEPS}"), &self.ode_steps);
            }
            if !(finite_pos(self.sigma_min_ode) && self.sigma_min_ode < self.sigma_max) {
                return bad(
                    "sigma_min_ode",
                    "finite, > 0 and < sigma_max",
                    &self.sigma_min_ode,
                );
            }
            if !(1..=MAX_STEPS).contains(&self.mcmc_steps) {
                return bad(
                    "mcmc_steps",
                    &format!("in 1..={MAX_STEPS}"),
                    &self.mcmc_steps,
                );
            }
            if !finite_pos(self.lr) {
                return bad("lr", "finite and > 0", &self.lr);
            }
            if !(0.0..=1.0).contains(&self.lr_min_ratio) {
                return bad("lr_min_ratio", "in [0, 1]", &self.lr_min_ratio);
            }
            if !finite_pos(self.tau) {
                return bad("tau", "finite and > 0", &self.tau);
            }
            if !(0.0..=1.0).contains(&self.momentum) {
                return bad("momentum", "in [0, 1]", &self.momentum);
            }
            if let PriorTerm::Score { sigma } = self.prior_term {
                if !(sigma.is_finite() && sigma >= 0.0) {
                    return bad("prior_term.sigma", "finite and ≥ 0", &sigma);
                }
            }
        }
        if !(self.guidance.is_finite() && self.guidance >= 0.0) {
            return bad("guidance", "finite and ≥ 0", &self.guidance);
        }
        if self.guidance > 0.0 && self.x0_method == X0Method::Exact {
            return Err(Error::config(
                "guidance acts on the PF-ODE, which the exact x0 step does not run",
            ));
        }
        if matches!(self.x0_method, X0Method::Mh | X0Method::Gaussian)
            && self.prior_term != PriorTerm::Gaussian
        {
            return Err(Error::config(
                "the mh and gaussian x0 steps need the Gaussian prior term",
            ));
        }
        Ok(())
    }

    /// Network evaluations per chain.
    pub fn nfe(&self) -> usize {
        if self.x0_method == X0Method::Exact {
            0
        } else {
            self.annealing_steps * self.ode_steps
        }
    }

    pub fn sigmas(&self) -> Vec<f64> {
        annealing_sigmas(
            self.annealing_steps,
            self.sigma_max,
            self.sigma_min,
            self.rho,
            self.discretization,
        )
    }
}

/// Runs DAPS for a batch of independent chains of shape `x_shape` (`[chains, ...]`).
pub fn daps(
    p: &Problem,
    cfg: &DapsConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let device = p.prior.device().clone();
    let sc = Scale::of(p.prior)?;
    let sig: Vec<f64> = sc.lens(cfg.sigmas());
    let n = cfg.annealing_steps;
    let exact = match cfg.x0_method {
        X0Method::Exact => Some(ExactStep::new(p)?),
        _ => None,
    };
    let sy = p.measurement.sigma_y;
    let tau = match cfg.tau_rule {
        TauRule::Measurement if sy > 0.0 => sy,
        _ => sc.len(cfg.tau),
    };
    let stiffness = match (cfg.lr_rule, cfg.x0_method) {
        (LrRule::Stable, X0Method::Langevin | X0Method::Hmc | X0Method::Mh) => {
            let mut one = x_shape.to_vec();
            one[0] = 1;
            cfg.data_gradient.factor() * mcmc::op_norm_sq(p.operator, &one, &device)? / (tau * tau)
        }
        _ => 0.0,
    };
    let prior_term = match cfg.prior_term {
        PriorTerm::Score { sigma } => PriorTerm::Score {
            sigma: sc.len(sigma),
        },
        t => t,
    };
    let mut guard = Divergence::new(p, sc);
    let mut x = (noise.randn(&x_shape.into(), &device)? * sc.len(cfg.sigma_max))?;
    let mut x0 = x.clone();
    for i in 0..n {
        let sigma = sig[i];
        let x0hat = match cfg.x0_method {
            X0Method::Exact => None,
            _ => {
                let grid = ode_sigmas(
                    cfg.ode_steps,
                    sigma,
                    sc.len(cfg.sigma_min_ode),
                    cfg.rho,
                    cfg.discretization,
                );
                let h = if cfg.guidance > 0.0 {
                    ode::guided_euler(p, &x, &grid, cfg.guidance, sc.len(1.0))?
                } else {
                    ode::euler(p.prior, &x, &grid)?
                };
                check_finite(&h, i, "PF-ODE estimate x̂0")?;
                Some(h)
            }
        };
        let decay = lr_multiplier(i, n, cfg.lr_min_ratio, cfg.discretization);
        let lr = match cfg.lr_rule {
            LrRule::Absolute => sc.sq(cfg.lr) * decay,
            LrRule::Stable => cfg.lr * decay / (1.0 / (sigma * sigma) + stiffness),
        };
        x0 = match (&exact, &x0hat) {
            (Some(e), _) => e.step(&x, sigma, noise.fork())?,
            (None, Some(h)) => {
                let t = Target {
                    problem: *p,
                    sigma,
                    x0hat: h,
                    xt: &x,
                    tau,
                    data_gradient: cfg.data_gradient,
                    prior_term,
                };
                match cfg.x0_method {
                    X0Method::Langevin => mcmc::langevin(&t, cfg.mcmc_steps, lr, noise)?,
                    X0Method::Hmc => mcmc::hmc(&t, cfg.mcmc_steps, lr, cfg.momentum, noise)?,
                    X0Method::Mh => mcmc::metropolis(&t, cfg.mcmc_steps, lr, noise)?.0,
                    X0Method::Gaussian => mcmc::gaussian(&t, noise)?,
                    // Invariant: an exact x0 method has built `exact` (first arm).
                    X0Method::Exact => unreachable!(),
                }
            }
            // Invariant: x̂0 is None only for the exact method, which built `exact`.
            (None, None) => unreachable!(),
        };
        check_finite(&x0, i, "x0 step")?;
        let misfit = guard.check(&x0, sigma, i, "x0 step")?;
        obs.on_step(&StepInfo {
            step: i,
            steps: n,
            sigma,
            x0hat: x0hat.as_ref(),
            x0: &x0,
            misfit,
        })?;
        let eps = noise.randn(x0.shape(), &device)?;
        x = (&x0 + (eps * sig[i + 1])?)?;
    }
    Ok(x0)
}

/// The closed-form x0 step for a Gaussian-mixture prior and a matrix operator.
struct ExactStep<'a> {
    p: Problem<'a>,
    ys: Vec<DVector<f64>>,
}

/// Whether the exact x0 step (`daps-exact`) can solve `p`: a Gaussian-mixture prior and a
/// matrix operator, else an error naming both.
pub(crate) fn exact_supported(p: &Problem) -> Result<()> {
    if p.prior.as_gmm().is_some() && p.operator.matrix().is_some() {
        return Ok(());
    }
    Err(Error::Unsupported(format!(
        "daps-exact (the exact x0 step) needs a Gaussian-mixture prior and a matrix operator; \
         {} with this prior is not one",
        p.operator.name()
    )))
}

impl<'a> ExactStep<'a> {
    fn new(p: &Problem<'a>) -> Result<Self> {
        exact_supported(p)?;
        // Invariant: `exact_supported` checked that the operator has a matrix.
        let a = p.operator.matrix().expect("checked");
        let (yv, b, dy) = tensor_to_rows(&p.measurement.y)?;
        if dy != a.nrows() {
            return Err(Error::Shape {
                what: "measurement of the exact x0 step (one row per chain)".into(),
                expected: vec![b, a.nrows()],
                got: vec![b, dy],
            });
        }
        let ys = (0..b)
            .map(|i| DVector::from_column_slice(&yv[i * dy..(i + 1) * dy]))
            .collect();
        Ok(Self { p: *p, ys })
    }

    fn step(&self, xt: &Tensor, sigma: f64, seed: u64) -> Result<Tensor> {
        // Invariant: `new` checked that both exist (and neither changes during a run).
        let gmm = self.p.prior.as_gmm().expect("checked");
        let a = self.p.operator.matrix().expect("checked");
        let (xv, b, d) = tensor_to_rows(xt)?;
        if d != a.ncols() {
            return Err(Error::Shape {
                what: "x_t of the exact x0 step (one row per chain)".into(),
                expected: vec![b, a.ncols()],
                got: vec![b, d],
            });
        }
        if self.ys.len() != 1 && self.ys.len() != b {
            return Err(Error::config(format!(
                "measurement has {} rows for {b} chains",
                self.ys.len()
            )));
        }
        let c = Conditioner::new(gmm, a, self.p.measurement.sigma_y, Some(sigma))?;
        let out = c.draw_batch(Some(&xv), b, &self.ys, seed);
        Ok(rows_to_tensor(&out, b, d, xt.device())?.reshape(xt.shape())?)
    }
}
