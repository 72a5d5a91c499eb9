//! Timings of the real Stable Diffusion 1.5 architectures with random weights (issue 15's
//! full-size path): one NFE of the guided denoiser (the UNet on a batch of 2: [uncond, cond]) and
//! one decode VJP (VAE decoder forward + backward). Plain program: prints, asserts nothing.
//!
//! `cargo bench --bench latent_sd` runs the SD 1.5 sizes (64×64 latents, 512×512 images); on a
//! small CPU `DAPS_SD_LATENT=32` (UNet) and `DAPS_SD_VAE_LATENT=32` (VAE) run 32×32 latents
//! (256×256 images) instead (0 skips that part). Each line gives wall and process CPU seconds.

use candle_core::{DType, Device, Tensor};
use daps::prior::sd::unet::{UNet2DConditionModel, UnetConfig};
use daps::prior::sd::vae::{AutoencoderKl, VaeConfig};
use daps::prior::sd::GuidedUnet;
use daps::prior::vp::TimestepNet;
use std::collections::HashMap;
use std::time::Instant;

#[path = "../tests/common/mod.rs"]
mod common;
use common::cpu_seconds;

fn latent_side(var: &str) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

/// Runs `f`, printing its wall and CPU seconds after `what`.
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let (c, t) = (cpu_seconds(), Instant::now());
    let r = f();
    eprintln!(
        "{what}: {:.2} s wall, {:.2} s CPU",
        t.elapsed().as_secs_f64(),
        cpu_seconds() - c
    );
    r
}

fn main() {
    let dev = Device::Cpu;
    let l = latent_side("DAPS_SD_LATENT");
    if l > 0 {
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let unet = timed("SD 1.5 UNet random init", || {
            UNet2DConditionModel::new(&UnetConfig::sd15(), vb).unwrap()
        });
        let ctx = Tensor::randn(0f32, 1.0, (2, 77, 768), &dev).unwrap();
        let guided = GuidedUnet::new(unet, ctx, 7.5);
        let x = Tensor::randn(0f32, 1.0, (1, 4, l, l), &dev).unwrap();
        let t = Tensor::new(&[500f32], &dev).unwrap();
        timed(
            &format!("SD 1.5 guided NFE (UNet batch 2, {l}×{l} latents)"),
            || {
                let eps = guided.forward_t(&x, &t).unwrap();
                eps.sum_all().unwrap().to_scalar::<f32>().unwrap()
            },
        );
    }
    let l = latent_side("DAPS_SD_VAE_LATENT");
    let vae = {
        // Random weights as plain tensors, as a loaded model has them (no weight gradients).
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
        AutoencoderKl::new(&VaeConfig::sd15(), vb).unwrap();
        let w: HashMap<String, Tensor> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let vb = candle_nn::VarBuilder::from_tensors(w, DType::F32, &dev);
        AutoencoderKl::new(&VaeConfig::sd15(), vb).unwrap()
    };
    let z = Tensor::randn(0f32, 1.0, (1, 4, l, l), &dev).unwrap();
    let s = 8 * l;
    let img = timed(&format!("SD 1.5 VAE decode to {s}×{s}"), || {
        vae.decode(&z).unwrap()
    });
    let g = Tensor::randn(0f32, 1.0, img.dims(), &dev).unwrap();
    timed(
        &format!("SD 1.5 VAE decode VJP (checkpointed) at {s}×{s}"),
        || vae.decode_vjp(&z, &g).unwrap().sum_all().unwrap(),
    );
}
