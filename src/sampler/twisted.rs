//! Twisted SMC: K particles per measurement on the prior's reverse chain (DDIM-η steps
//! x_s ~ N(μ, v I), v = η² σ_s² (1 − σ_s²/σ_t²), μ = D̃ + (σ_d/σ_t)(x_t − D̃), σ_d = √(σ_s² − v);
//! order 1: D̃ = D(x_t), the ancestral step at η = 1; order 2 (DPM-Solver++(2S)): D̃ = D at the
//! DDIM point of σ_m = √(σ_t σ_d)), each level twisted by the Tweedie likelihood
//! p̃(y | x_t) = N(y; A D(x_t), τ² I + σ_t² A J Aᵀ), J = ∂D/∂x applied by d_y VJPs (J Aᵀ column
//! by column; J symmetric for an exact denoiser). The proposal is the kernel times the twist
//! linearised around μ (A D(x_s) ≈ A D(x_t) + A J (x_s − μ)), drawn by Matheron's rule; the
//! incremental weight p̃(y | x_s)·Z / (ℓ(x_s)·p̃(y | x_t)) (ℓ the linearised twist, Z its
//! normaliser) makes the target of the last level the reverse chain's law times p̃(y | x_N).
//! One particle per output is drawn by the final weights (from its own K, or with `pool` from
//! the one population of a shared measurement) and its x0 from N(D, σ_N² J)·N(y; A x0, τ² I)
//! (`daps-tweedie`'s step, whose normaliser is that twist, so no weight changes). As K → ∞ the
//! output is the posterior of the reverse chain's prior: exact up to the chain's own error (its
//! N steps, x_T ~ N(0, σ_max² I), the Tweedie x0 law at σ_min). Linear operators, small y only.

use super::particles::first_of_groups;
use super::smc::resample;
use super::tweedie::lanczos_sqrt;
use super::{check_finite, likelihood_tau, linear_of, mean_misfit, repeat_rows, Observer};
use super::{Problem, StepInfo};
use crate::error::{Error, Result};
use crate::noise::{stream, NoiseSource};
use crate::operator::structure::{chain_dots, chain_scalars};
use crate::operator::{Linear, Measurement};
use crate::prior::gmm::{categorical, softmax};
use crate::schedule::poly_grid;
use candle_core::{DType, Tensor};
use nalgebra::{DMatrix, DVector};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwistedSmcConfig {
    /// K, particles per measurement (one output sample per measurement).
    pub particles: usize,
    /// N, levels of the reverse chain from sigma_max to sigma_min.
    pub steps: usize,
    pub sigma_max: f64,
    pub sigma_min: f64,
    pub rho: f64,
    /// DDIM η of the reverse kernel: 1 is the ancestral step, 0 the deterministic DDIM step.
    pub eta: f64,
    /// Order of the kernel's mean: 1 the DDIM step with D(x_t); 2 DPM-Solver++(2S), the same
    /// step with D at its log-σ midpoint (one more network call per particle and level).
    pub order: usize,
    /// Resample when the effective sample size is below this fraction of K.
    pub ess_threshold: f64,
    /// With one measurement shared by all outputs: one population of K × outputs particles
    /// (resampled as one group), the outputs drawn from it by weight (dependent through their
    /// common ancestors); else K per output, independent outputs.
    pub pool: bool,
    /// The most measurement values per chain (each costs one VJP per particle and level
    /// where J Aᵀ is computed).
    pub max_dim_y: usize,
    /// J Aᵀ is computed at every `jacobian_every`-th level and the last; in between, each
    /// particle keeps its parent's (the twist may be any function of the path).
    pub jacobian_every: usize,
    /// Lanczos iterations for the final x0 draw (J^{1/2}ξ).
    pub lanczos_steps: usize,
    /// Likelihood σ; unset: the measurement's σ_y.
    pub tau: Option<f64>,
}

impl Default for TwistedSmcConfig {
    /// 8 particles × (20 levels × (1 + 4) + 19 midpoints) + 1 + 8 = 961 NFE for d_y ≤ 4,
    /// under DAPS-1K's 1000.
    fn default() -> Self {
        Self {
            particles: 8,
            steps: 20,
            sigma_max: 100.0,
            sigma_min: 0.05,
            rho: 7.0,
            eta: 1.0,
            order: 2,
            ess_threshold: 0.5,
            pool: false,
            max_dim_y: 4,
            jacobian_every: 1,
            lanczos_steps: 8,
            tau: None,
        }
    }
}

/// The largest `max_dim_y` (J Aᵀ is kept as that many d-vectors per particle).
pub const MAX_DIM_Y: usize = 64;

impl TwistedSmcConfig {
    pub fn validate(&self) -> Result<()> {
        let pos = |x: f64| x.is_finite() && x > 0.0;
        let checks: [(bool, &str, String); 11] = [
            (
                self.eta > 0.0 && self.eta <= 1.0,
                "eta",
                format!("in (0, 1], got {}", self.eta),
            ),
            (
                (1..=2).contains(&self.order),
                "order",
                format!("1 or 2, got {}", self.order),
            ),
            (
                (1..=super::smc::MAX_PARTICLES).contains(&self.particles),
                "particles",
                format!(
                    "in 1..={}, got {}",
                    super::smc::MAX_PARTICLES,
                    self.particles
                ),
            ),
            (
                (2..=super::daps::MAX_STEPS).contains(&self.steps),
                "steps",
                format!("in 2..={}, got {}", super::daps::MAX_STEPS, self.steps),
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
                (0.0..=1.0).contains(&self.ess_threshold),
                "ess_threshold",
                format!("in [0, 1], got {}", self.ess_threshold),
            ),
            (
                (1..=MAX_DIM_Y).contains(&self.max_dim_y)
                    && (1..=super::tweedie::MAX_KRYLOV).contains(&self.lanczos_steps),
                "max_dim_y and lanczos_steps",
                format!(
                    "in 1..={MAX_DIM_Y} and 1..={}, got {} and {}",
                    super::tweedie::MAX_KRYLOV,
                    self.max_dim_y,
                    self.lanczos_steps
                ),
            ),
            (
                (1..=self.steps).contains(&self.jacobian_every),
                "jacobian_every",
                format!("in 1..=steps, got {}", self.jacobian_every),
            ),
            (
                self.tau.is_none_or(pos),
                "tau",
                format!("finite and > 0 when set, got {:?}", self.tau),
            ),
        ];
        super::first_failed(&checks)
    }

    /// Network evaluations per output sample, at most (d_y = `max_dim_y`): [`Self::nfe_at`].
    pub fn nfe(&self) -> usize {
        self.nfe_at(self.max_dim_y)
    }

    /// Network evaluations per output sample for d_y measurement values: K × (N forward
    /// passes + d_y VJPs at each level that computes J Aᵀ + (order − 1) midpoint passes at each
    /// of the N − 1 steps), then 1 + `lanczos_steps` for the final x0 draw.
    pub fn nfe_at(&self, dim_y: usize) -> usize {
        let jac = (0..self.steps).filter(|&i| self.fresh_jacobian(i)).count();
        let mid = (self.order - 1) * (self.steps - 1);
        self.particles * (self.steps + jac * dim_y + mid) + 1 + self.lanczos_steps
    }

    /// These settings with `max_dim_y` = `dim_y` and the most particles whose
    /// [`Self::nfe_at`] fits in `budget` NFE per output.
    pub fn for_budget(&self, budget: usize, dim_y: usize) -> Result<Self> {
        let one = Self {
            particles: 1,
            max_dim_y: dim_y,
            ..self.clone()
        };
        let (fixed, each) = (
            1 + self.lanczos_steps,
            one.nfe_at(dim_y) - 1 - self.lanczos_steps,
        );
        let particles = budget.saturating_sub(fixed) / each;
        if particles == 0 {
            return Err(Error::config(format!(
                "twisted-smc: a budget of {budget} NFE is below one particle's {} at d_y = {dim_y}",
                fixed + each
            )));
        }
        Ok(Self { particles, ..one })
    }

    /// Whether level `i` computes J Aᵀ.
    fn fresh_jacobian(&self, i: usize) -> bool {
        i.is_multiple_of(self.jacobian_every) || i + 1 == self.steps
    }
}

/// Per particle at one level: D(x_t), the columns J Aᵀ e_j, A D, and
/// S = τ² I + σ² A J Aᵀ (row-major m×m) as f64.
struct Moments {
    d: Tensor,
    g: Vec<Tensor>,
    ad: Vec<f64>,
    ajat: Vec<f64>,
}

/// Without `jac`, only D and A D (`g`, `ajat` empty).
fn moments(
    p: &Problem,
    lin: &dyn Linear,
    x: &Tensor,
    s: f64,
    y: &Tensor,
    jac: bool,
) -> Result<Moments> {
    let n = x.dim(0)?;
    let m = if jac { y.elem_count() / n } else { 0 };
    let (d, pullback) = p.prior.denoise_vjp(&x.detach(), s)?;
    let mut g = Vec::with_capacity(m);
    let mut ajat = vec![0.0; n * m * m];
    for j in 0..m {
        let e: Vec<f32> = (0..n * m).map(|i| (i % m == j) as u8 as f32).collect();
        let e = Tensor::from_vec(e, y.shape(), y.device())?.to_dtype(y.dtype())?;
        let gj = pullback(&lin.adjoint(&e)?)
            .map_err(|e| Error::msg(format!("{}: no gradient reached x_t: {e}", p.prior.name())))?;
        let col = rows(&lin.forward(&gj)?)?;
        for c in 0..n {
            for r in 0..m {
                ajat[c * m * m + r * m + j] = col[c * m + r];
            }
        }
        g.push(gj);
    }
    let ad = rows(&lin.forward(&d.detach())?)?;
    Ok(Moments {
        d: d.detach(),
        g,
        ad,
        ajat,
    })
}

/// A tensor's values as f64, row-major.
fn rows(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?)
}

/// Per chain, the m×m matrix at `c` of a row-major stack.
fn mat(v: &[f64], c: usize, m: usize) -> DMatrix<f64> {
    let a = DMatrix::from_row_slice(m, m, &v[c * m * m..(c + 1) * m * m]);
    (&a + a.transpose()) * 0.5
}

/// log N(r; 0, S) up to the constant −(m/2) log 2π, and S⁻¹ r.
fn log_normal(r: &DVector<f64>, s: DMatrix<f64>) -> Result<(f64, DVector<f64>)> {
    let ch = s.cholesky().ok_or_else(|| {
        Error::msg("twisted-smc: the twist covariance τ² I + σ² A J Aᵀ is not positive definite")
    })?;
    let sr = ch.solve(r);
    let logdet: f64 = ch.l().diagonal().iter().map(|v| 2.0 * v.ln()).sum();
    Ok((-0.5 * (r.dot(&sr) + logdet), sr))
}

/// Σ_j c[·, j] g_j, per chain.
fn combine(g: &[Tensor], c: &[f64], m: usize) -> Result<Tensor> {
    let mut out = g[0].zeros_like()?;
    for (j, gj) in g.iter().enumerate() {
        let cj: Vec<f64> = c.chunks(m).map(|r| r[j]).collect();
        out = (out + gj.broadcast_mul(&chain_scalars(&cj, gj)?)?)?;
    }
    Ok(out)
}

/// `b` independent draws of an index by weights `w` (multinomial, so the outputs are i.i.d.
/// given the population, with no stratification below the exact sampler's spread).
fn multinomial(w: &[f64], b: usize, rng: &mut impl Rng) -> Vec<u32> {
    let cum: Vec<f64> = w
        .iter()
        .scan(0.0, |a, v| {
            *a += v;
            Some(*a)
        })
        .collect();
    let last = cum.len() - 1;
    (0..b)
        .map(|_| {
            let u = rng.random::<f64>() * cum[last];
            cum.partition_point(|&c| c <= u).min(last) as u32
        })
        .collect()
}

/// Runs twisted SMC: `x_shape[0]` output samples, each from its own K particles (or, with
/// `pool` and one shared measurement, all from one population of `x_shape[0]`·K).
pub fn twisted_smc(
    p: &Problem,
    cfg: &TwistedSmcConfig,
    x_shape: &[usize],
    noise: &mut dyn NoiseSource,
    obs: &mut dyn Observer,
) -> Result<Tensor> {
    cfg.validate()?;
    let lin = linear_of(p, "twisted-smc")?;
    let sc = crate::prior::Scale::of(p.prior)?;
    let tau = likelihood_tau(cfg.tau.map(|t| sc.len(t)), p.measurement, "twisted-smc")?;
    let (b, k) = (x_shape[0], cfg.particles);
    let n = b * k;
    let y1 = &p.measurement.y;
    let m = y1.elem_count() / y1.dim(0)?;
    if m > cfg.max_dim_y {
        return Err(Error::config(format!(
            "twisted-smc: the measurement has {m} values per chain, more than max_dim_y = {} \
             (each costs one VJP per particle and level)",
            cfg.max_dim_y
        )));
    }
    // Particles per resampling group: K, or all of them when pooled.
    let group = if cfg.pool && y1.dim(0)? == 1 { n } else { k };
    let mut shape = x_shape.to_vec();
    shape[0] = n;
    let device = p.prior.device().clone();
    let meas = Measurement {
        y: repeat_rows(y1, b, k)?,
        sigma_y: p.measurement.sigma_y,
    };
    let y = &meas.y;
    let yv = rows(y)?;
    let sig = sc.lens(poly_grid(cfg.sigma_max, cfg.sigma_min, cfg.steps, cfg.rho));
    let mut rng = stream(noise.fork(), 0, 0x7157);
    let t2 = tau * tau;
    let mut x = (noise.randn(&shape.as_slice().into(), &device)? * sig[0])?;
    let mut logw = vec![0.0; n];
    // log ℓ(x_s) − log Z + log p̃(y | x_t) of each particle's last proposal.
    let mut prev = vec![0.0; n];
    let last = cfg.steps - 1;
    let mut mo = moments(p, lin, &x, sig[0], y, true)?;
    for (i, &s) in sig.iter().enumerate() {
        if i > 0 {
            let fresh = cfg.fresh_jacobian(i);
            let new = moments(p, lin, &x, s, y, fresh)?;
            if fresh {
                mo = new;
            } else {
                (mo.d, mo.ad) = (new.d, new.ad);
            }
        }
        check_finite(&mo.d, i, "denoiser D(x_t)")?;
        // r = y − A D, S = τ² I + σ² A J Aᵀ; log p̃(y | x_t).
        let mut logp = vec![0.0; n];
        for c in 0..n {
            let r = DVector::from_fn(m, |j, _| yv[c * m + j] - mo.ad[c * m + j]);
            let sm = mat(&mo.ajat, c, m) * (s * s) + DMatrix::identity(m, m) * t2;
            logp[c] = log_normal(&r, sm)?.0;
            logw[c] += logp[c] - prev[c];
        }
        if let Some(a) = resample(&mut logw, group, cfg.ess_threshold, &mut rng) {
            let idx = Tensor::from_vec(a.clone(), n, &device)?;
            x = x.index_select(&idx, 0)?;
            mo.d = mo.d.index_select(&idx, 0)?;
            for gj in mo.g.iter_mut() {
                *gj = gj.index_select(&idx, 0)?;
            }
            let pick = |v: &[f64], w: usize| -> Vec<f64> {
                a.iter()
                    .flat_map(|&c| v[c as usize * w..(c as usize + 1) * w].to_vec())
                    .collect()
            };
            (mo.ad, mo.ajat, logp) = (pick(&mo.ad, m), pick(&mo.ajat, m * m), pick(&logp, 1));
        }
        if i == last {
            break;
        }
        // The DDIM kernel N(μ, v I) from σ_t = s to σ_s = s1: v = η² σ_s² (1 − σ_s²/σ_t²),
        // μ = D + √(σ_s² − v) (x_t − D)/σ_t (η = 1: the ancestral step).
        let s1 = sig[i + 1];
        let v = cfg.eta * cfg.eta * s1 * s1 * (1.0 - (s1 * s1) / (s * s));
        let down = (s1 * s1 - v).sqrt();
        let ddim = |d: &Tensor, to: f64| d + ((&x - d)? * (to / s))?;
        // Order 2: D at the DDIM point of σ_mid = √(σ_t σ_down) replaces D(x_t) in the step.
        let dm = if cfg.order == 2 {
            let mid = (s * down).sqrt();
            p.prior.denoise(&ddim(&mo.d, mid)?, mid)?
        } else {
            mo.d.clone()
        };
        let mu = ddim(&dm, down)?;
        let xp = (&mu + (noise.randn(x.shape(), &device)? * v.sqrt())?)?;
        let eta = rows(&noise.randn(&(n, m).into(), &device)?)?;
        // H u = (⟨g_j, u⟩)_j; HHᵀ; H(x' − μ).
        let mut hh = vec![0.0; n * m * m];
        for j in 0..m {
            for l in 0..=j {
                for (c, v) in chain_dots(&mo.g[j], &mo.g[l])?.into_iter().enumerate() {
                    hh[c * m * m + j * m + l] = v;
                    hh[c * m * m + l * m + j] = v;
                }
            }
        }
        let dxp = (&xp - &mu)?;
        let hdx: Vec<Vec<f64>> = (0..m)
            .map(|j| chain_dots(&mo.g[j], &dxp))
            .collect::<Result<_>>()?;
        let mut coef = vec![0.0; n * m];
        let mut lz = vec![0.0; n];
        for c in 0..n {
            let sp = mat(&mo.ajat, c, m) * (s1 * s1) + DMatrix::identity(m, m) * t2;
            let big = &sp + mat(&hh, c, m) * v;
            let r0 = DVector::from_fn(m, |j, _| yv[c * m + j] - mo.ad[c * m + j]);
            let (lzc, _) = log_normal(&r0, big.clone())?;
            lz[c] = lzc;
            let lsp = sp.clone().cholesky().map(|ch| ch.l()).ok_or_else(|| {
                Error::msg("twisted-smc: the twist covariance is not positive definite")
            })?;
            let e = lsp * DVector::from_fn(m, |j, _| eta[c * m + j]);
            let rr = DVector::from_fn(m, |j, _| r0[j] - e[j] - hdx[j][c]);
            let sol = big.cholesky().map(|ch| ch.solve(&rr)).ok_or_else(|| {
                Error::msg("twisted-smc: the proposal's covariance is not positive definite")
            })?;
            coef[c * m..(c + 1) * m].copy_from_slice(sol.as_slice());
            // Residual of the new point under the linearised twist: r0 − H(x_s − μ).
            let hxs = DVector::from_fn(m, |j, _| hdx[j][c]) + mat(&hh, c, m) * (&sol * v);
            let (ll, _) = log_normal(&(&r0 - hxs), sp)?;
            prev[c] = ll - lz[c] + logp[c];
        }
        x = (&xp + (combine(&mo.g, &coef, m)? * v)?)?;
        check_finite(&x, i, "twisted proposal")?;
        obs.on_step(&StepInfo {
            step: i,
            steps: cfg.steps,
            sigma: s,
            x0hat: None,
            x0: &first_of_groups(&mo.d, k)?,
            misfit: mean_misfit(p.operator, &meas, &mo.d)?,
        })?;
    }
    // One particle per output by the final weights; its x0 by the Tweedie x0 step.
    let pick: Vec<u32> = if group == k {
        (0..b)
            .map(|g| {
                let w = softmax(&logw[g * k..(g + 1) * k]);
                (g * k + categorical(&w, rng.random())) as u32
            })
            .collect()
    } else {
        multinomial(&softmax(&logw), b, &mut rng)
    };
    let s = sig[last];
    let idx = Tensor::from_vec(pick.clone(), b, &device)?;
    let xs = x.index_select(&idx, 0)?;
    let g: Vec<Tensor> =
        mo.g.iter()
            .map(|gj| gj.index_select(&idx, 0))
            .collect::<candle_core::Result<_>>()?;
    let yb = repeat_rows(y1, b, 1)?;
    let (d, pullback) = p.prior.denoise_vjp(&xs.detach(), s)?;
    let jac = |u: &Tensor| -> Result<Tensor> {
        pullback(u)
            .map_err(|e| Error::msg(format!("{}: no gradient reached x_t: {e}", p.prior.name())))
    };
    let xi = noise.randn(xs.shape(), &device)?;
    let xpp = (d.clone() + (lanczos_sqrt(&jac, &xi, cfg.lanczos_steps)? * s)?)?;
    let r = rows(&((&yb + (noise.randn(yb.shape(), &device)? * tau)?)? - lin.forward(&xpp)?)?)?;
    let mut coef = vec![0.0; b * m];
    for (c, &pc) in pick.iter().enumerate() {
        let sm = mat(&mo.ajat, pc as usize, m) * (s * s) + DMatrix::identity(m, m) * t2;
        let (_, sr) = log_normal(&DVector::from_row_slice(&r[c * m..(c + 1) * m]), sm)?;
        coef[c * m..(c + 1) * m].copy_from_slice(sr.as_slice());
    }
    let x0 = (xpp + (combine(&g, &coef, m)? * (s * s))?)?;
    check_finite(&x0, last, "Tweedie x0 step")?;
    obs.on_step(&StepInfo {
        step: last,
        steps: cfg.steps,
        sigma: s,
        x0hat: None,
        x0: &x0,
        misfit: mean_misfit(p.operator, p.measurement, &x0)?,
    })?;
    Ok(x0)
}
