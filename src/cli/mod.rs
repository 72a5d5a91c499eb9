//! The `daps` subcommands: argument structs (clap), progress and printing over the library.
//! Everything a user of the library needs lives in the library; this is the binary's own code.

pub mod bench;
pub mod demo;
pub mod eval;
pub mod grid;
pub mod outputs;
pub mod report;
pub mod solve;
pub mod train;

/// The measurement noise σ_y a command accepts: finite, in [0, 10] (image units, [−1, 1]); above 1
/// is allowed with a warning (noise larger than the image's range).
pub fn check_sigma_y(sigma_y: f64) -> anyhow::Result<()> {
    if !(sigma_y.is_finite() && (0.0..=10.0).contains(&sigma_y)) {
        anyhow::bail!(
            "--sigma-y must be finite and in [0, 10] (image units, [−1, 1]), got {sigma_y}"
        );
    }
    if sigma_y > 1.0 {
        eprintln!("warning: --sigma-y {sigma_y} exceeds the image's range [−1, 1]");
    }
    Ok(())
}
