//! Sources of Gaussian noise for the samplers.
//!
//! [`SeededNoise`] is counter-based: draw `n` of a run is split into fixed chunks, each with its
//! own ChaCha8 stream derived from (seed, n, chunk). Output is therefore identical for a given seed
//! whatever the thread count or device (noise is generated on the CPU and moved to the device).
//! [`DeviceNoise`] draws on a GPU itself (cuRAND through candle), with no host→device copy per
//! draw; [`for_device`] picks it off the CPU and [`SeededNoise`] on it.
//! [`ReplayNoise`] plays back recorded draws, so a run can be compared step by step with a
//! reference implementation.

use crate::error::{Error, Result};
use candle_core::{Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Elements per independent random stream within one draw.
pub(crate) const CHUNK: usize = 1 << 14;

/// A source of standard normal tensors (and of seeds for code that draws on its own).
pub trait NoiseSource {
    /// A tensor of i.i.d. N(0, 1) f32 values.
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor>;
    /// A fresh 64-bit seed for a sub-computation that needs its own random stream.
    fn fork(&mut self) -> u64;
    /// For counter-based sources: claims the next draw and returns (seed, draw), so that a fused
    /// kernel can generate exactly the values [`NoiseSource::randn`] would have returned.
    fn claim_draw(&mut self) -> Option<(u64, u64)> {
        None
    }
}

/// SplitMix64 finaliser: decorrelates structured seeds.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A ChaCha8 generator for stream `(seed, a, b)`.
pub fn stream(seed: u64, a: u64, b: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(
        mix(mix(seed) ^ a) ^ b.wrapping_mul(0xD1B5_4A32_D192_ED03)
    ))
}

/// Fills `out` with N(0,1) values, in parallel, deterministically for `(seed, draw)`.
pub(crate) fn fill_normal(out: &mut [f32], seed: u64, draw: u64) {
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = stream(seed, draw, c as u64);
            for v in chunk.iter_mut() {
                *v = rng.sample(StandardNormal);
            }
        });
}

/// Counter-based seeded noise; see the module docs.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    seed: u64,
    draws: u64,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self { seed, draws: 0 }
    }
}

impl NoiseSource for SeededNoise {
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        let mut buf = vec![0f32; shape.elem_count()];
        fill_normal(&mut buf, self.seed, self.draws);
        self.draws += 1;
        Ok(Tensor::from_vec(buf, shape.clone(), device)?)
    }
    fn fork(&mut self) -> u64 {
        self.draws += 1;
        mix(self.seed ^ mix(self.draws.wrapping_add(0x5EED)))
    }
    fn claim_draw(&mut self) -> Option<(u64, u64)> {
        self.draws += 1;
        Some((self.seed, self.draws - 1))
    }
}

/// Gaussian draws made on the device itself by its own generator (cuRAND on CUDA), seeded at
/// creation: the same seed gives the same draws on the same device and candle build, as long as
/// nothing else draws from that device's generator in between (it is one per device, so two
/// sources on one device interleave one stream). The values differ from [`SeededNoise`]'s.
pub struct DeviceNoise {
    device: Device,
    seed: u64,
    draws: u64,
}

impl DeviceNoise {
    /// Reseeds `device`'s generator with `seed`; the CPU has none (use [`SeededNoise`]).
    pub fn new(device: &Device, seed: u64) -> Result<Self> {
        if device.is_cpu() {
            return Err(Error::config(
                "DeviceNoise draws on a GPU; on the CPU use SeededNoise (noise::for_device)",
            ));
        }
        device.set_seed(mix(seed))?;
        Ok(Self {
            device: device.clone(),
            seed,
            draws: 0,
        })
    }
}

impl NoiseSource for DeviceNoise {
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        self.draws += 1;
        let t = Tensor::randn(0f32, 1f32, shape.clone(), &self.device)?;
        Ok(t.to_device(device)?)
    }
    fn fork(&mut self) -> u64 {
        self.draws += 1;
        mix(self.seed ^ mix(self.draws.wrapping_add(0x5EED)))
    }
}

/// The noise source for a sampler on `device`: [`SeededNoise`] on the CPU (bit-identical to
/// earlier runs), [`DeviceNoise`] elsewhere.
pub fn for_device(device: &Device, seed: u64) -> Result<Box<dyn NoiseSource>> {
    Ok(if device.is_cpu() {
        Box::new(SeededNoise::new(seed))
    } else {
        Box::new(DeviceNoise::new(device, seed)?)
    })
}

/// Plays back a fixed list of draws, in order; a draw of the wrong shape or past the end is an error.
pub struct ReplayNoise {
    draws: Vec<Tensor>,
    next: usize,
}

impl ReplayNoise {
    pub fn new(draws: Vec<Tensor>) -> Self {
        Self { draws, next: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.draws.len() - self.next
    }
}

impl NoiseSource for ReplayNoise {
    fn randn(&mut self, shape: &Shape, device: &Device) -> Result<Tensor> {
        let t = self.draws.get(self.next).ok_or_else(|| {
            Error::msg(format!("replay noise exhausted after {} draws", self.next))
        })?;
        if t.shape() != shape {
            return Err(Error::msg(format!(
                "replay draw {} has shape {:?}, sampler asked for {:?}",
                self.next,
                t.dims(),
                shape.dims()
            )));
        }
        self.next += 1;
        Ok(t.to_device(device)?)
    }
    fn fork(&mut self) -> u64 {
        self.next as u64
    }
}
