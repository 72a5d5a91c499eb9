//! Metrics: distances between sample sets ([`distribution`]) and image quality ([`image`]).

pub mod distribution;
pub mod image;

pub use distribution::{mode_weight_tv, sliced_wasserstein, w1_1d, w1_exact};
