//! The neural-network layer under the priors and the nonlinear-blur operator: CPU custom ops
//! with fast backward passes ([`fastops`]) and checkpoint reading ([`checkpoint`]).

pub mod checkpoint;
pub mod fastops;
mod winograd;

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

/// Makes glibc serve large allocations from its heap and keep freed memory for reuse. By
/// default every buffer above 32 MiB (a 128-channel 256×256 activation is 33 MiB) is mmapped
/// afresh and page-faulted in on first touch, and unmapped when freed: about a tenth of an
/// FFHQ-256 forward pass on the CPU, more of its backward pass. The cost: the process keeps
/// its peak memory. Process-wide, so the `daps` binary calls it at start-up (a library user
/// may too); a no-op off glibc.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
