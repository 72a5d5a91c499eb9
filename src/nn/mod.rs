//! The neural-network layer under the priors and the nonlinear-blur operator: CPU custom ops
//! with fast backward passes ([`fastops`]) and checkpoint reading ([`checkpoint`]).

pub mod checkpoint;
pub mod fastops;

use candle_core::{CpuStorage, Layout, WithDType};

/// The contiguous CPU data of a custom-op argument (every CPU custom op of the crate reads its
/// inputs through this).
pub(crate) fn cpu_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("custom op expects a contiguous input"),
    }
}
