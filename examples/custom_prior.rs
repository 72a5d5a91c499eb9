//! Bring your own prior: a user-defined denoiser in physical units (a Gaussian mixture of 4×4
//! fields with values around ±100, σ_data 50), a compressed-sensing measurement (10 of 16
//! random projections, σ_y = 5 in the same units), and every registered sampler run on it with
//! the library's defaults: the prior declares its scale, the samplers adapt. Prints each
//! method's error against the truth next to the exact posterior mean's.
//!
//!   cargo run --release --example custom_prior
//!
//! Step counts are capped at 100 (`--set`-style, through each method's own settings) so that
//! the whole run takes seconds.

use anyhow::Result;
use candle_core::{Device, Tensor};
use daps::exact::Conditioner;
use daps::noise::{NoiseSource, SeededNoise};
use daps::operator::{MatrixOperator, Measurement};
use daps::prior::{Denoiser, GaussianMixture};
use daps::sampler::{Problem, Silent, METHODS};
use nalgebra::{DMatrix, DVector};

/// The user's model: here an analytic mixture, in practice a network. Only `denoise`,
/// `device` and `name` are required; the rest declares what the model knows.
struct FieldPrior {
    mixture: GaussianMixture,
}

impl Denoiser for FieldPrior {
    /// D(x, σ) = E[x0 | x0 + σε = x], in the data's own units.
    fn denoise(&self, x: &Tensor, sigma: f64) -> daps::Result<Tensor> {
        self.mixture.denoise(x, sigma)
    }
    fn device(&self) -> &Device {
        self.mixture.device()
    }
    fn name(&self) -> String {
        "field prior (4×4, physical units)".into()
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![1, 4, 4])
    }
    /// The data's standard deviation: every default σ, τ and step size follows it.
    fn sigma_data(&self) -> f64 {
        50.0
    }
    /// An analytic model is exact at every noise level.
    fn sigma_range(&self) -> (f64, f64) {
        (0.0, f64::INFINITY)
    }
    /// Where the data lie: clipping, divergence checks and metrics use it.
    fn data_range(&self) -> (f64, f64) {
        (-150.0, 150.0)
    }
    /// Lets `daps-exact` use the closed form.
    fn as_gmm(&self) -> Option<&GaussianMixture> {
        Some(&self.mixture)
    }
}

const D: usize = 16;
const CHAINS: usize = 16;

fn main() -> Result<()> {
    let dev = Device::Cpu;
    // Three patterns of ±100 (a gradient, a checkerboard, a blob), spread 20.
    let pattern = |f: &dyn Fn(usize, usize) -> f64| {
        DVector::from_iterator(D, (0..D).map(|i| 100.0 * f(i / 4, i % 4)))
    };
    let means = vec![
        pattern(&|r, c| (r as f64 + c as f64) / 3.0 - 1.0),
        pattern(&|r, c| if (r + c) % 2 == 0 { 0.8 } else { -0.8 }),
        pattern(&|r, c| {
            if (1..3).contains(&r) && (1..3).contains(&c) {
                1.0
            } else {
                -0.3
            }
        }),
    ];
    let mixture = GaussianMixture::isotropic(vec![0.3, 0.3, 0.4], means, 400.0, &dev)?
        .with_sample_shape(&[1, 4, 4])?
        .with_sigma_data(50.0)?;
    let (truth, _) = mixture.sample(1, 11);
    let prior = FieldPrior { mixture };

    let mut rng = SeededNoise::new(5);
    let a: Vec<f64> = rng
        .randn(&(10, D).into(), &dev)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|v| *v as f64 / (D as f64).sqrt())
        .collect();
    let a = DMatrix::from_row_slice(10, D, &a);
    let op = MatrixOperator::new(a.clone(), &[1, 4, 4], &dev)?;
    let sigma_y = 5.0;
    let x_true = Tensor::from_vec(
        truth.iter().map(|v| *v as f32).collect::<Vec<_>>(),
        (1, 1, 4, 4),
        &dev,
    )?;
    let measurement = Measurement::simulate(&op, &x_true, sigma_y, &mut SeededNoise::new(9))?;

    let rmse = |x: &[f64]| {
        (x.iter()
            .zip(&truth)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            / D as f64)
            .sqrt()
    };
    let y: Vec<f64> = measurement
        .y
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|v| *v as f64)
        .collect();
    let (w, m, _) =
        Conditioner::new(&prior.mixture, &a, sigma_y, None)?.mixture(None, &DVector::from_vec(y));
    let post_mean: DVector<f64> = w.iter().zip(&m).map(|(w, m)| m * *w).sum();
    println!(
        "{}; y = A x + noise: {} × {D} matrix, σ_y {sigma_y}; {CHAINS} chains per method",
        prior.name(),
        a.nrows()
    );
    println!(
        "RMSE of the posterior mean against the truth (data spread 50): exact {:.2}",
        rmse(post_mean.as_slice())
    );

    let scale = daps::prior::Scale::of(&prior)?;
    println!(
        "settings below are in units of the prior's scale s = σ_data/0.5 = {} (σ's, τ × s; η × s²)",
        scale.s
    );
    let problem = Problem {
        prior: &prior,
        operator: &op,
        measurement: &measurement,
    };
    for info in METHODS {
        let mut method = (info.default)();
        for key in method.keys() {
            let steps = method.settings().get(&key).and_then(|v| v.as_integer());
            if let (true, Some(n)) = (key.ends_with("steps"), steps) {
                method = method.set(&key, &n.min(100).to_string())?;
            }
        }
        if let Err(e) = method.supports(&problem) {
            println!("  {:<14} skipped: {e}", info.name);
            continue;
        }
        let t0 = std::time::Instant::now();
        let x = match method.run(
            &problem,
            &[CHAINS, 1, 4, 4],
            &mut SeededNoise::new(3),
            &mut Silent,
        ) {
            Ok(x) => x,
            Err(e) => {
                println!("  {:<14} failed: {e}", info.name);
                continue;
            }
        };
        let mean: Vec<f64> = x
            .reshape((CHAINS, D))?
            .mean(0)?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| *v as f64)
            .collect();
        println!(
            "  {:<14} RMSE {:7.2}  ({}; {:.1} s)",
            info.name,
            rmse(&mean),
            method.describe(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
