//! Metrics: distances between sample sets ([`distribution`]) and image quality ([`image`],
//! [`lpips`]).

pub mod distribution;
pub mod image;
pub mod lpips;

pub use distribution::{mode_weight_tv, sliced_wasserstein, w1_1d, w1_exact};
