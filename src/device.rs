//! `--device`: where a solve runs (prior, operators, noise and sampler together).

use crate::error::{Error, Result};
use candle_core::Device;

/// Parses `--device`: `cpu`, or `cuda` / `cuda:N` (needs a build with the `cuda` feature; without
/// it the error says so before anything is loaded).
pub fn parse(s: &str) -> Result<Device> {
    let s = s.trim();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(r) => r
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                Error::config(format!("bad device {s:?}: expected cpu, cuda or cuda:N"))
            })?,
        None => {
            return Err(Error::config(format!(
                "unknown device {s:?}: expected cpu, cuda or cuda:N"
            )))
        }
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::config(format!(
            "device {s:?}: this daps was built without CUDA (cargo build --release --features cuda)"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        // candle's message may carry a backtrace after its first line
        let e = e.to_string();
        let e = e.lines().next().unwrap_or("");
        Error::config(format!(
            "device {s:?}: cannot open CUDA device {ordinal}: {e}"
        ))
    })
}

/// A readable name: the GPU's own (from the CUDA driver) or `cuda:N`; `cpu` for the CPU.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => {
            gpu_name(device).unwrap_or_else(|| format!("cuda:{gpu_id}"))
        }
        other => format!("{other:?}"),
    }
}

#[cfg(feature = "cuda")]
fn gpu_name(device: &Device) -> Option<String> {
    let d = device.as_cuda_device().ok()?;
    d.cuda_stream().context().name().ok()
}

#[cfg(not(feature = "cuda"))]
fn gpu_name(_: &Device) -> Option<String> {
    None
}
