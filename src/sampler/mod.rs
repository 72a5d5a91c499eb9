//! Samplers: DAPS (with its x0 steps) and the DPS baseline, over a prior, an operator and a
//! measurement, registered in [`method`]; and the unconditional EDM sampler ([`heun`]). A sampler reports each
//! outer step to an [`Observer`].

pub mod daps;
pub mod ddnm;
pub mod ddrm;
pub mod diffpir;
pub mod dps;
pub mod fps;
pub mod heun;
pub mod latent_daps;
pub mod mcgdiff;
pub mod mcmc;
pub mod method;
pub mod ode;
pub(crate) mod particles;
pub mod pigdm;
pub mod pnp_dm;
pub mod psld;
pub mod red_diff;
pub mod resample;
pub mod score_ald;
pub mod smc;
pub mod tweedie;
pub mod twisted;

use crate::error::{Error, Result};
use crate::operator::{Linear, Measurement, Operator, Svd};
use crate::prior::{Denoiser, Scale};
use candle_core::{DType, Tensor};

pub use daps::{
    daps, daps as run_daps, DapsConfig, DataGradient, LrRule, PriorTerm, TauRule, X0Method,
};
pub use ddnm::{ddnm, DdnmConfig};
pub use ddrm::{ddrm, DdrmConfig};
pub use diffpir::{diffpir, DiffpirConfig};
pub use dps::{dps, DpsConfig};
pub use fps::{fps, FpsConfig};
pub use heun::{heun_sample as heun, EdmGrid};
pub use latent_daps::{latent_daps, LatentDapsConfig};
pub use mcgdiff::{mcgdiff, McgdiffConfig};
pub use method::{method_info, Method, MethodInfo, Sampler, METHODS};
pub use pigdm::{pigdm, PigdmConfig};
pub use pnp_dm::{pnp_dm, PnpDmConfig};
pub use psld::{psld, PsldConfig};
pub use red_diff::{red_diff, RedDiffConfig};
pub use resample::{resample, ResampleConfig};
pub use score_ald::{score_ald, ScoreAldConfig};

/// What a sampler works on.
#[derive(Clone, Copy)]
pub struct Problem<'a> {
    pub prior: &'a dyn Denoiser,
    pub operator: &'a dyn Operator,
    pub measurement: &'a Measurement,
}

/// The state after one outer step.
pub struct StepInfo<'a> {
    /// 0-based outer step and the total.
    pub step: usize,
    pub steps: usize,
    /// Noise level of this step.
    pub sigma: f64,
    /// The ODE estimate x̂0 (DAPS) or the Tweedie estimate (DPS), when computed.
    pub x0hat: Option<&'a Tensor>,
    /// DAPS: the x0 sample; DPS: the next state.
    pub x0: &'a Tensor,
    /// Mean over chains of ‖A(x0) − y‖.
    pub misfit: f64,
}

/// Receives progress; the CLI draws a progress bar and saves frames from it.
pub trait Observer {
    fn on_step(&mut self, _info: &StepInfo) -> Result<()> {
        Ok(())
    }
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// Errors with the first chain that holds a NaN or Inf.
pub fn check_finite(t: &Tensor, step: usize, stage: &'static str) -> Result<()> {
    let b = t.dim(0)?;
    let s = t
        .reshape((b, ()))?
        .to_dtype(DType::F32)?
        .sum(1)?
        .to_vec1::<f32>()?;
    if let Some(chain) = s.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { step, chain, stage });
    }
    Ok(())
}

/// Catches a run that diverges with finite numbers. A chain has diverged when its misfit
/// ‖A(x) − y‖ exceeds [`Divergence::FACTOR`] × max(its misfit at the first check, ‖y‖,
/// σ_y·√dim y), or
/// when some entry of x lies further than [`Divergence::FACTOR`] × (half-width + `spread`)
/// from the centre of the prior's declared data range, `spread` being the noise the sample may
/// legitimately carry (DAPS: r_t, the x0 target's width where A sees nothing): two orders of
/// magnitude, which a sampler that works never reaches, while a diverging one passes it within
/// a few steps (DPS with too large a ζ reaches ±200 on [−1, 1] images).
pub struct Divergence<'a> {
    p: Problem<'a>,
    scale: Scale,
    /// Each chain's misfit limit, set at the first check.
    limits: Option<Vec<f64>>,
}

impl<'a> Divergence<'a> {
    pub const FACTOR: f64 = 100.0;

    pub fn new(p: &Problem<'a>, scale: Scale) -> Self {
        Self {
            p: *p,
            scale,
            limits: None,
        }
    }

    /// Checks the chains of `x` (a sample in data units, with noise of scale `spread`) at
    /// `step`; returns the mean misfit.
    pub fn check(
        &mut self,
        x: &Tensor,
        spread: f64,
        step: usize,
        stage: &'static str,
    ) -> Result<f64> {
        let (op, m) = (self.p.operator, self.p.measurement);
        let r = m.residual(op, x)?;
        let norms = crate::operator::per_chain_sq_norm(&r)?.sqrt()?;
        // The same mean as [`mean_misfit`].
        let mean = norms.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let misfit = norms.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if self.limits.is_none() {
            let rows = m.y.dim(0)? as f64;
            let y_sq =
                m.y.sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?
                    / rows;
            // The misfit of the truth: σ_y·√(entries of one y).
            let noise_floor = m.sigma_y * (m.y.elem_count() as f64 / rows).sqrt();
            let floor = y_sq.sqrt().max(noise_floor);
            let limits = misfit.iter().map(|f| Self::FACTOR * f.max(floor));
            self.limits = Some(limits.collect());
        }
        let limits = self.limits.as_deref().unwrap_or_default();
        for (chain, (&now, &limit)) in misfit.iter().zip(limits).enumerate() {
            if now > limit {
                return Err(Error::Diverged {
                    step,
                    chain,
                    stage,
                    what: format!("misfit ‖A(x) − y‖ = {now:.4e} > {limit:.4e}"),
                });
            }
        }
        let (c, radius) = self.scale.centre_radius();
        let b = x.dim(0)?;
        let far = (x - c)?
            .abs()?
            .reshape((b, ()))?
            .max(1)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let limit = Self::FACTOR * (radius + spread);
        if let Some(chain) = far.iter().position(|&v| v > limit) {
            let (lo, hi) = self.scale.range;
            return Err(Error::Diverged {
                step,
                chain,
                stage,
                what: format!(
                    "|x − {c}| = {:.4e} > {limit:.4e} = {} × (half-width of the prior's data \
                     range [{lo}, {hi}] + noise level {spread:.4e})",
                    far[chain],
                    Self::FACTOR
                ),
            });
        }
        Ok(mean)
    }
}

/// `f(problem, x)` → (x̂0, gradient) over the chains of `x`; for a prior that splits batches,
/// per piece in parallel (chains are independent: each piece takes its own gradient through
/// the prior), with that piece's rows of a per-chain y.
pub(crate) fn per_piece(
    p: &Problem,
    x: &Tensor,
    f: impl Fn(&Problem, &Tensor) -> Result<(Tensor, Tensor)> + Sync,
) -> Result<(Tensor, Tensor)> {
    if !p.prior.splits_batches() {
        return f(p, x);
    }
    let shared_y = p.measurement.y.dim(0)? == 1;
    let parts = crate::prior::par_batches(x.dim(0)?, |s, len| {
        let m = Measurement {
            y: if shared_y {
                p.measurement.y.clone()
            } else {
                p.measurement.y.narrow(0, s, len)?
            },
            sigma_y: p.measurement.sigma_y,
        };
        let part = Problem {
            measurement: &m,
            ..*p
        };
        f(&part, &x.narrow(0, s, len)?)
    })?;
    let (x0s, gs): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
    Ok((Tensor::cat(&x0s, 0)?, Tensor::cat(&gs, 0)?))
}

/// The operator's SVD, or an error naming `method` and what it needs.
pub(crate) fn svd_of<'a>(p: &Problem<'a>, method: &str) -> Result<&'a dyn Svd> {
    p.operator.as_linear().and_then(|l| l.svd()).ok_or_else(|| {
        Error::config(format!(
            "{method} needs an operator with a singular value decomposition (inpainting, \
                 average pooling, explicit matrices); {} has none",
            p.operator.name()
        ))
    })
}

/// The operator's linear structure, or an error naming `method` and what it needs.
pub(crate) fn linear_of<'a>(p: &Problem<'a>, method: &str) -> Result<&'a dyn Linear> {
    p.operator.as_linear().ok_or_else(|| {
        Error::config(format!(
            "{method} needs a linear operator (its adjoint and proximal map); {} is not linear",
            p.operator.name()
        ))
    })
}

/// Checks a σ grid of `steps` levels from `sigma_max` down to `sigma_min` (then 0).
pub(crate) fn check_grid(steps: usize, sigma_max: f64, sigma_min: f64) -> Result<()> {
    let max = daps::MAX_STEPS;
    if !(1..=max).contains(&steps) {
        return Err(Error::config(format!(
            "steps must be in 1..={max}, got {steps}"
        )));
    }
    if !(sigma_min.is_finite() && sigma_min > 0.0 && sigma_max.is_finite() && sigma_max > sigma_min)
    {
        return Err(Error::config(format!(
            "need 0 < sigma_min < sigma_max (finite), got sigma_min {sigma_min}, sigma_max {sigma_max}"
        )));
    }
    Ok(())
}

/// Errors unless `v` is finite and in `lo..=hi`, naming the field.
pub(crate) fn check_range(name: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{name} must be in [{lo}, {hi}], got {v}"
        )))
    }
}

/// Mean over chains of ‖A(x) − y‖.
pub fn mean_misfit(op: &dyn Operator, m: &Measurement, x: &Tensor) -> Result<f64> {
    let r = m.residual(op, x)?;
    let n = crate::operator::per_chain_sq_norm(&r)?.sqrt()?;
    Ok(n.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The likelihood's σ of a sampler whose `tau` setting is optional: the setting, else the
/// measurement's σ_y (the posterior it targets); an error naming `who` when that is not > 0.
pub(crate) fn likelihood_tau(tau: Option<f64>, m: &Measurement, who: &str) -> Result<f64> {
    let t = tau.unwrap_or(m.sigma_y);
    if t.is_finite() && t > 0.0 {
        Ok(t)
    } else {
        Err(Error::config(format!(
            "{who} needs a likelihood σ > 0: the measurement's σ_y is {}; set tau",
            m.sigma_y
        )))
    }
}

/// `y` (`[1, ...]` shared, or `[B, ...]` one per measurement) with each row repeated `k` times:
/// `[B·k, ...]` for `b` measurements of `k` particles each, particle j of measurement i at i·k + j.
pub(crate) fn repeat_rows(y: &Tensor, b: usize, k: usize) -> Result<Tensor> {
    let rows = y.dim(0)?;
    if rows != 1 && rows != b {
        return Err(Error::config(format!(
            "measurement has {rows} rows for {b} chains"
        )));
    }
    let mut shape = y.dims().to_vec();
    shape[0] = 1;
    let inner = shape.clone();
    shape[0] = b * k;
    let y = if rows == 1 {
        y.broadcast_as(shape)?
    } else {
        let mut grouped = vec![b, k];
        grouped.extend_from_slice(&inner[1..]);
        y.unsqueeze(1)?.broadcast_as(grouped)?.reshape(shape)?
    };
    Ok(y.contiguous()?)
}

/// A config's checks `(ok, field, "must be …" text)`: the first that fails as a config error.
pub(crate) fn first_failed(checks: &[(bool, &str, String)]) -> Result<()> {
    match checks.iter().find(|c| !c.0) {
        Some((_, field, msg)) => Err(Error::config(format!("{field} must be {msg}"))),
        None => Ok(()),
    }
}
