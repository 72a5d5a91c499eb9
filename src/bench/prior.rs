//! How good and how fast a neural prior is: its denoising error per σ on images it was not
//! trained on (and on training images, to see over-fitting), and the wall time of one network
//! evaluation, forward only (DAPS's ODE) and forward + backward (DPS's guidance).

use crate::error::Result;
use crate::metric::image::{psnr, to_unit};
use crate::nn::checkpoint;
use crate::noise::{NoiseSource, SeededNoise};
use crate::prior::adm::{AdmConfig, AdmUnet};
use crate::prior::vp::VpDenoiser;
use crate::prior::Denoiser;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;

/// Noise levels of the denoising report.
pub const SIGMAS: [f64; 12] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 80.0,
];

/// The denoising error at one σ over a set of images `[N, C, H, W]` in [−1, 1].
#[derive(Debug, Clone, serde::Serialize)]
pub struct DenoiseRow {
    pub sigma: f64,
    /// √(mean (D(x + σε, σ) − x)²) over all pixels, in [−1, 1] units.
    pub rmse: f64,
    /// Mean PSNR (dB) of the denoised images, clipped to the prior's data range.
    pub psnr: f64,
    /// The same RMSE for the best constant guess (the mean image): D must beat it at large σ.
    pub rmse_mean_image: f64,
}

/// D(x + σε, σ) against x for each σ, in batches of `batch` images (seeded noise, drawn on x's
/// device; the prior may live on another).
pub fn denoising_error(
    prior: &dyn Denoiser,
    x: &Tensor,
    sigmas: &[f64],
    batch: usize,
    seed: u64,
) -> Result<Vec<DenoiseRow>> {
    let n = x.dim(0)?;
    let range = prior.data_range();
    let mean_img = x.mean_keepdim(0)?;
    let rmse_mean = x
        .broadcast_sub(&mean_img)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f32>()?
        .sqrt() as f64;
    let mut rows = Vec::new();
    for (k, &sigma) in sigmas.iter().enumerate() {
        let mut noise = SeededNoise::new(seed.wrapping_add(k as u64));
        let (mut sq, mut ps) = (0f64, 0f64);
        for start in (0..n).step_by(batch.max(1)) {
            let len = batch.min(n - start);
            let xb = x.narrow(0, start, len)?;
            let e = noise.randn(xb.shape(), xb.device())?;
            let noisy = (&xb + (e * sigma)?)?.to_device(prior.device())?;
            let d = prior.denoise(&noisy, sigma)?.to_device(xb.device())?;
            sq += (&d - &xb)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            ps += psnr(&to_unit(&d, range)?, &to_unit(&xb, range)?, 1.0)?
                .iter()
                .sum::<f64>();
        }
        rows.push(DenoiseRow {
            sigma,
            rmse: (sq / x.elem_count() as f64).sqrt(),
            psnr: ps / n as f64,
            rmse_mean_image: rmse_mean,
        });
    }
    Ok(rows)
}

/// Seconds per network evaluation at `batch` images of `shape`: the best of `reps` timed calls
/// after one warm-up, forward only and forward + backward to the input (the device is
/// synchronized before the clock stops).
pub fn nfe_seconds(
    prior: &dyn Denoiser,
    shape: &[usize],
    batch: usize,
    reps: usize,
    backward: bool,
) -> Result<f64> {
    nfe_seconds_with(prior, shape, batch, 1, reps, backward)
}

/// [`nfe_seconds`] with `warmup` untimed calls.
pub fn nfe_seconds_with(
    prior: &dyn Denoiser,
    shape: &[usize],
    batch: usize,
    warmup: usize,
    reps: usize,
    backward: bool,
) -> Result<f64> {
    let mut dims = vec![batch];
    dims.extend_from_slice(shape);
    let x = Tensor::randn(0f32, 1f32, dims, prior.device())?;
    let mut once = || -> Result<()> {
        if backward {
            let xv = Var::from_tensor(&x)?;
            let d = prior.denoise(xv.as_tensor(), 1.0)?;
            d.sqr()?.sum_all()?.backward()?;
        } else {
            prior.denoise(&x, 1.0)?;
        }
        prior.device().synchronize()?;
        Ok(())
    };
    crate::bench::speed::best_seconds(warmup, reps, &mut once)
}

/// An ADM network of architecture `cfg` with random N(0, std²) weights (for timing only).
pub fn random_adm(cfg: &AdmConfig, std: f32, device: &Device) -> Result<VpDenoiser<AdmUnet>> {
    let shapes = cfg.param_shapes()?;
    let mut tensors = HashMap::new();
    for (name, shape) in &shapes {
        tensors.insert(
            name.clone(),
            Tensor::randn(0f32, std, shape.as_slice(), &Device::Cpu)?,
        );
    }
    let vb = checkpoint::var_builder(tensors, &shapes, DType::F32, device, "random weights")?;
    Ok(VpDenoiser::new(AdmUnet::new(cfg, vb)?))
}
