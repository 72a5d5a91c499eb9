//! Samplers: DAPS (with its x0 steps) and the DPS baseline, over a prior, an operator and a
//! measurement, registered in [`method`]; and the unconditional EDM sampler ([`heun`]). A sampler reports each
//! outer step to an [`Observer`].

pub mod daps;
pub mod dps;
pub mod fps;
pub mod heun;
pub mod mcgdiff;
pub mod mcmc;
pub mod method;
pub mod ode;
pub mod pnp_dm;
pub mod score_ald;
pub(crate) mod particles;

use crate::error::{Error, Result};
use crate::operator::{Measurement, Operator};
use crate::prior::Denoiser;
use candle_core::{DType, Tensor};

pub use daps::{daps, DapsConfig, DataGradient, PriorTerm, X0Method};
pub use dps::{dps, DpsConfig};
pub use fps::{fps, FpsConfig};
pub use mcgdiff::{mcgdiff, McgdiffConfig};
pub use method::{method_info, Method, MethodInfo, Sampler, METHODS};
pub use pnp_dm::{pnp_dm, PnpDmConfig};
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

/// Mean over chains of ‖A(x) − y‖.
pub fn mean_misfit(op: &dyn Operator, m: &Measurement, x: &Tensor) -> Result<f64> {
    let r = m.residual(op, x)?;
    let n = crate::operator::per_chain_sq_norm(&r)?.sqrt()?;
    Ok(n.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}
