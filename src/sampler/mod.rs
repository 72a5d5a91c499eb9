//! Samplers: DAPS (with its x0 steps) and the DPS baseline, over a prior, an operator and a
//! measurement, registered in [`method`]; and the unconditional EDM sampler ([`heun`]). A sampler reports each
//! outer step to an [`Observer`].

pub mod daps;
pub mod ddnm;
pub mod ddrm;
pub mod diffpir;
pub mod dps;
pub mod heun;
pub mod mcmc;
pub mod method;
pub mod ode;
pub mod pigdm;
pub mod red_diff;

use crate::error::{Error, Result};
use crate::operator::{Linear, Measurement, Operator, Svd};
use crate::prior::Denoiser;
use candle_core::{DType, Tensor};

pub use daps::{daps, DapsConfig, DataGradient, PriorTerm, X0Method};
pub use ddnm::{ddnm, DdnmConfig};
pub use ddrm::{ddrm, DdrmConfig};
pub use diffpir::{diffpir, DiffpirConfig};
pub use dps::{dps, DpsConfig};
pub use method::{method_info, Method, MethodInfo, Sampler, METHODS};
pub use pigdm::{pigdm, PigdmConfig};
pub use red_diff::{red_diff, RedDiffConfig};

/// The data scale that unit-free settings refer to (ΠGDM's r², RED-diff's Adam step): 1 for
/// data in [−1, 1]; the prior's σ_data once priors declare one.
pub const SIGMA_DATA: f64 = 1.0;

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
            "{method} needs a linear operator (its proximal map); {} is not linear",
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
