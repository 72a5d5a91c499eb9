//! Metrics.

pub mod image;
