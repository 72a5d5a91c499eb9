//! A prior that runs on an accelerator while the sampler stays on the CPU.
//!
//! The operators (FFT, closed-form VJPs) are CPU custom ops; the network is what is worth moving
//! to a GPU. [`Offloaded`] wraps a denoiser whose weights live on another device and presents it
//! as a CPU denoiser: each call copies `x` over, runs D there and copies D(x) back. It is a candle
//! custom op, so autograd (DPS) still works: the backward pass re-runs D on the device with `x`
//! tracked and returns the vector–Jacobian product gᵀ ∂D/∂x to the CPU.

use super::Denoiser;
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor, Var};
use std::sync::Arc;

/// `inner` on its own device, seen from the CPU.
pub struct Offloaded {
    inner: Arc<dyn Denoiser>,
    host: Device,
}

impl Offloaded {
    pub fn new(inner: Box<dyn Denoiser>) -> Self {
        Self {
            inner: Arc::from(inner),
            host: Device::Cpu,
        }
    }
}

struct DenoiseOp {
    inner: Arc<dyn Denoiser>,
    sigma: f64,
}

fn to_candle(e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl CustomOp1 for DenoiseOp {
    fn name(&self) -> &'static str {
        "offloaded-denoiser"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = match s {
            CpuStorage::F32(_) => Tensor::from_slice(
                crate::nn::cpu_slice::<f32>(s, l)?,
                l.shape(),
                self.inner.device(),
            )?,
            _ => candle_core::bail!("offload: only f32 inputs"),
        };
        let d = self.inner.denoise(&x, self.sigma).map_err(to_candle)?;
        let v = d.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(v), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dev = self.inner.device();
        let x = Var::from_tensor(&arg.to_device(dev)?)?;
        let d = self
            .inner
            .denoise(x.as_tensor(), self.sigma)
            .map_err(to_candle)?;
        let loss = (d * g.to_device(dev)?)?.sum_all()?;
        let grads = loss.backward()?;
        let gx = grads
            .get(x.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("offload: no gradient reached x".into()))?;
        Ok(Some(gx.to_device(&Device::Cpu)?))
    }
}

impl Denoiser for Offloaded {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let op = DenoiseOp {
            inner: self.inner.clone(),
            sigma,
        };
        Ok(x.contiguous()?.apply_op1(op)?)
    }

    fn device(&self) -> &Device {
        &self.host
    }

    fn splits_batches(&self) -> bool {
        // The network runs on the other device, in one call per batch.
        false
    }

    fn name(&self) -> String {
        format!("{} (on {:?})", self.inner.name(), self.inner.device())
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.inner.sample_shape()
    }

    fn sigma_data(&self) -> f64 {
        self.inner.sigma_data()
    }

    fn sigma_range(&self) -> (f64, f64) {
        self.inner.sigma_range()
    }

    fn data_range(&self) -> (f64, f64) {
        self.inner.data_range()
    }
}

/// Parses `--device`: `cpu`, or `cuda` / `cuda:N` (needs a build with the `cuda` feature).
pub fn parse_device(s: &str) -> Result<Device> {
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
                crate::Error::config(format!("bad device {s:?}: expected cpu, cuda or cuda:N"))
            })?,
        None => {
            return Err(crate::Error::config(format!(
                "unknown device {s:?}: expected cpu, cuda or cuda:N"
            )))
        }
    };
    if !cfg!(feature = "cuda") {
        return Err(crate::Error::config(format!(
            "device {s:?}: this daps was built without CUDA (cargo build --release --features cuda)"
        )));
    }
    Ok(Device::new_cuda(ordinal)?)
}

/// A prior as a CPU sampler sees it: itself if it is on the CPU, else behind [`Offloaded`].
pub fn host_view(prior_on_device: Box<dyn Denoiser>) -> Box<dyn Denoiser> {
    if prior_on_device.device().is_cpu() {
        prior_on_device
    } else {
        Box::new(Offloaded::new(prior_on_device))
    }
}
