//! The built-in default prior: an ADM UNet trained with `daps train` on the MNIST training split
//! (digits 0..9000 of `data/mnist-10k.png`, 1×32×32 grayscale in [−1, 1]), ε-prediction with the
//! VP→EDM wrapper. Its weights (`assets/digits32/`) are compiled into the binary, so the CLI
//! works with no download. `scripts/train-default-prior.sh` reproduces them from scratch.

use super::adm::{AdmConfig, AdmUnet};
use super::vp::VpDenoiser;
use crate::error::{Error, Result};
use crate::nn::checkpoint;
use candle_core::{DType, Device};

static WEIGHTS: &[u8] = include_bytes!("../../assets/digits32/model.safetensors");
static CONFIG: &str = include_str!("../../assets/digits32/model.json");

/// Digits 9000..10000 of the built-in set: never seen in training.
pub const HELD_OUT: std::ops::Range<usize> = 9000..10000;

/// The architecture of the default prior.
pub fn config() -> Result<AdmConfig> {
    let v: serde_json::Value = serde_json::from_str(CONFIG)
        .map_err(|e| Error::config(format!("built-in prior: assets/digits32/model.json: {e}")))?;
    AdmConfig::from_create_model_args(&v)
}

/// The default prior on `device`.
pub fn digits(device: &Device) -> Result<VpDenoiser<AdmUnet>> {
    digits_with_dtype(device, DType::F32)
}

/// The default prior with its network in `dtype` (f32, or bf16/f16 for mixed precision: see
/// [`super::Precision`]).
pub fn digits_with_dtype(device: &Device, dtype: DType) -> Result<VpDenoiser<AdmUnet>> {
    let cfg = config()?;
    let tensors = candle_core::safetensors::load_buffer(WEIGHTS, &Device::Cpu)
        .map_err(|e| Error::msg(format!("built-in prior: cannot read its weights: {e}")))?;
    let vb = checkpoint::var_builder(
        tensors,
        &cfg.param_shapes()?,
        dtype,
        device,
        "of the built-in prior",
    )?;
    // Digits lie in [−1, 1], so clamping D there can only help (see `with_clip`).
    Ok(VpDenoiser::new(AdmUnet::new(&cfg, vb)?).with_clip(1.0))
}
