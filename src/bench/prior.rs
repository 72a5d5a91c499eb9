//! How good and how fast a neural prior is: its denoising error per σ on images it was not
//! trained on (and on training images, to see over-fitting), and the wall time of one network
//! evaluation, forward only (DAPS's ODE) and forward + backward (DPS's guidance).

use crate::error::Result;
use crate::metric::image::{psnr, to_unit};
use crate::nn::checkpoint;
use crate::noise::{NoiseSource, SeededNoise};
use crate::prior::adm::{AdmConfig, AdmUnet};
use crate::prior::ldm::{LdmConfig, LdmPrior};
use crate::prior::vp::VpDenoiser;
use crate::prior::Denoiser;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::time::Instant;

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
    pass: Pass,
) -> Result<f64> {
    nfe_seconds_with(prior, shape, batch, 1, reps, pass)
}

/// What one timed denoiser call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// D(x, σ) alone.
    Forward,
    /// D(x, σ) and one pullback through [`Denoiser::denoise_vjp`] (what DPS pays per step).
    Vjp,
    /// D(x, σ) with candle's autograd graph and one `backward()` (the default pullback, for
    /// comparison with a hand-written one).
    Autograd,
}

/// [`nfe_seconds`] with `warmup` untimed calls.
pub fn nfe_seconds_with(
    prior: &dyn Denoiser,
    shape: &[usize],
    batch: usize,
    warmup: usize,
    reps: usize,
    pass: Pass,
) -> Result<f64> {
    let mut dims = vec![batch];
    dims.extend_from_slice(shape);
    let x = Tensor::randn(0f32, 1f32, dims, prior.device())?;
    let mut once = || -> Result<()> {
        match pass {
            Pass::Forward => {
                prior.denoise(&x, 1.0)?;
            }
            Pass::Vjp => {
                let (d, pullback) = prior.denoise_vjp(&x, 1.0)?;
                pullback(&d)?;
            }
            Pass::Autograd => {
                let xv = Var::from_tensor(&x)?;
                let d = prior.denoise(xv.as_tensor(), 1.0)?;
                d.sqr()?.sum_all()?.backward()?;
            }
        }
        prior.device().synchronize()?;
        Ok(())
    };
    crate::bench::speed::best_seconds(warmup, reps, &mut once)
}

/// Random N(0, std²) tensors of the given names and shapes, on the CPU.
fn random_tensors(shapes: &checkpoint::ParamList, std: f32) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for (name, shape) in shapes {
        tensors.insert(
            name.clone(),
            Tensor::randn(0f32, std, shape.as_slice(), &Device::Cpu)?,
        );
    }
    Ok(tensors)
}

/// An ADM network of architecture `cfg` with random N(0, std²) weights (for timing only).
pub fn random_adm(cfg: &AdmConfig, std: f32, device: &Device) -> Result<VpDenoiser<AdmUnet>> {
    let shapes = cfg.param_shapes()?;
    let tensors = random_tensors(&shapes, std)?;
    let vb = checkpoint::var_builder(tensors, &shapes, DType::F32, device, "random weights")?;
    Ok(VpDenoiser::new(AdmUnet::new(cfg, vb)?))
}

/// An LDM-VQ of architecture `cfg` with random N(0, std²) weights (for timing only).
pub fn random_ldm(cfg: &LdmConfig, std: f32, device: &Device) -> Result<LdmPrior> {
    let tensors = random_tensors(&cfg.param_shapes()?, std)?;
    LdmPrior::from_tensors(cfg, tensors, "random weights", device)
}

/// Seconds of the pieces of a LatentDAPS run on images of `shape` (batch 1, one timed call
/// each after one warm-up denoiser call): one denoiser call on the latent, one decode, and one
/// decode with its VJP (one decoder pass with its graph, and the backward pass: what each HMC
/// step costs besides the operator).
#[derive(Debug, Clone, Copy)]
pub struct LatentTimes {
    pub nfe: f64,
    pub decode: f64,
    pub decode_vjp: f64,
}

impl LatentTimes {
    /// One LatentDAPS run: N·M denoiser calls and, per level, K data gradients (a decode with
    /// its VJP each) plus the two decodes an observer is shown.
    pub fn run_seconds(&self, levels: usize, ode_steps: usize, hmc_steps: usize) -> f64 {
        let per_level =
            ode_steps as f64 * self.nfe + hmc_steps as f64 * self.decode_vjp + 2.0 * self.decode;
        levels as f64 * per_level
    }
}

pub fn latent_times(prior: &LdmPrior, shape: &[usize]) -> Result<LatentTimes> {
    let lat: &dyn crate::prior::latent::LatentPrior = prior;
    let mut zs = vec![1];
    zs.extend(lat.latent_shape(shape)?);
    let dev = prior.device();
    let z = Tensor::randn(0f32, 1f32, zs, dev)?;
    let timed = |f: &dyn Fn() -> Result<Tensor>| -> Result<f64> {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    timed(&|| prior.denoise(&z, 1.0))?;
    let nfe = timed(&|| prior.denoise(&z, 1.0))?;
    let decode = timed(&|| lat.decode(&z))?;
    let g = Tensor::randn(0f32, 1f32, lat.decode(&z)?.shape(), dev)?;
    let decode_vjp = timed(&|| {
        let (_, pullback) = lat.decode_with_pullback(&z)?;
        pullback(&g)
    })?;
    Ok(LatentTimes {
        nfe,
        decode,
        decode_vjp,
    })
}
