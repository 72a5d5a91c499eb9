//! daps: Decoupled Annealing Posterior Sampling for inverse problems with diffusion priors.
//!
//! The crate is split by domain: [`prior`] (EDM denoisers), [`operator`] (forward maps and
//! noise), [`sampler`] (DAPS, DPS and their sub-steps), [`schedule`] (noise-level grids),
//! [`exact`] (closed-form Gaussian-mixture posteriors), [`metric`] and [`bench`].
//!
//! Speed on the CPU, for a program of your own: the `daps` binary, before any work, calls
//! [`nn::reuse_freed_memory`], sets `CANDLE_NUM_THREADS=1` (candle's second, spinning pool
//! otherwise competes with rayon's) and `RAYON_NUM_THREADS` (candle otherwise reads
//! `/proc/cpuinfo` on every matmul), and runs a lone batch of a few small images on one thread
//! ([`prior::too_small_to_share`]). Results are the same bits either way.

pub mod bench;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod exact;
pub mod io;
pub mod metric;
pub mod nn;
pub mod noise;
pub mod operator;
pub mod prior;
pub mod report;
pub mod sampler;
pub mod schedule;
pub mod task;
pub mod train;

pub use error::{Error, Result};
