//! The DAPS paper's 2-D example: a two-component mixture prior and the nonlinear "trap"
//! measurement y = exp(−‖x‖²/0.05) + exp(−‖x − 0.5‖²/0.05) at x* = (0.5, 0.5), likelihood σ = 0.3.
//! Reference posterior: importance resampling of prior samples; metric: exact W1 (optimal assignment).

use super::mean_ci95;
use crate::error::Result;
use crate::metric::w1_exact;
use crate::noise::{stream, SeededNoise};
use crate::operator::{Measurement, Operator, TrapOperator};
use crate::prior::gmm::{categorical, rows_to_tensor, tensor_to_rows};
use crate::prior::{Covariance, GaussianMixture};
use crate::sampler::smc::DapsSmcConfig;
use crate::sampler::tweedie::DapsTweedieConfig;
use crate::sampler::{self, DapsConfig, DpsConfig, Problem, Silent};
use candle_core::Device;
use nalgebra::DVector;
use rand::Rng;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Toy2dConfig {
    pub samples: usize,
    /// Prior draws that the reference is resampled from.
    pub pool: usize,
    pub repeats: usize,
    pub daps: DapsConfig,
    pub dps: DpsConfig,
}

impl Default for Toy2dConfig {
    /// The settings of the official Customization notebook.
    fn default() -> Self {
        Self {
            samples: 1000,
            pool: 200_000,
            repeats: 5,
            daps: DapsConfig {
                annealing_steps: 50,
                sigma_max: 1.0,
                sigma_min: 0.03,
                ode_steps: 10,
                sigma_min_ode: 0.01,
                mcmc_steps: 100,
                lr: 1e-4,
                lr_min_ratio: 1.0,
                tau: 0.1,
                ..DapsConfig::default()
            },
            dps: DpsConfig {
                steps: 500,
                zeta: 0.1,
                clip: None,
            },
        }
    }
}

pub const SIGMA_Y: f64 = 0.3;

pub fn prior(device: &Device) -> Result<GaussianMixture> {
    GaussianMixture::new(
        vec![0.5, 0.5],
        vec![
            DVector::from_vec(vec![-0.3, -0.4]),
            DVector::from_vec(vec![0.6, 0.5]),
        ],
        vec![Covariance::Isotropic(0.01), Covariance::Isotropic(0.04)],
        device,
    )
}

/// `n` posterior draws by importance resampling `pool` prior draws (multinomial).
pub fn reference(gmm: &GaussianMixture, n: usize, pool: usize, seed: u64) -> Vec<f64> {
    let op = TrapOperator::default();
    let y = op.eval([0.5, 0.5]);
    let (xs, _) = gmm.sample(pool, seed);
    let w: Vec<f64> = xs
        .chunks(2)
        .map(|p| (-(op.eval([p[0], p[1]]) - y).powi(2) / (2.0 * SIGMA_Y * SIGMA_Y)).exp())
        .collect();
    let mut rng = stream(seed, 1, 99);
    (0..n)
        .flat_map(|_| {
            let k = categorical(&w, rng.random::<f64>());
            [xs[2 * k], xs[2 * k + 1]]
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Toy2dRow {
    pub method: &'static str,
    pub w1_mean: f64,
    pub w1_ci95: f64,
    pub seconds: f64,
    /// Why a sampler did not run (its `supports` error): the trap operator is nonlinear.
    pub skipped: Option<String>,
}

/// The samplers of the table: DAPS and DPS at the notebook's settings; daps-guided (DAPS's
/// settings with DPS's ζ as its guidance); daps-gaussian, DAPS-Tweedie and DAPS-SMC on DAPS's
/// annealing with τ = σ_y (these three need a linear operator, so they report why they cannot
/// run here).
fn samplers(cfg: &Toy2dConfig) -> Vec<sampler::Method> {
    let d = &cfg.daps;
    vec![
        sampler::Method::Daps(d.clone()),
        sampler::Method::Dps(cfg.dps.clone()),
        sampler::Method::Daps(DapsConfig {
            guidance: cfg.dps.zeta,
            ..d.clone()
        }),
        sampler::Method::Daps(DapsConfig {
            x0_method: sampler::X0Method::Gaussian,
            tau_rule: sampler::TauRule::Measurement,
            ..d.clone()
        }),
        sampler::Method::DapsTweedie(DapsTweedieConfig {
            annealing_steps: d.annealing_steps,
            sigma_max: d.sigma_max,
            sigma_min: d.sigma_min,
            tau: Some(SIGMA_Y),
            ..DapsTweedieConfig::default()
        }),
        sampler::Method::DapsSmc(DapsSmcConfig {
            annealing_steps: d.annealing_steps,
            sigma_max: d.sigma_max,
            sigma_min: d.sigma_min,
            ode_steps: d.ode_steps,
            sigma_min_ode: d.sigma_min_ode,
            tau: Some(SIGMA_Y),
            ..DapsSmcConfig::default()
        }),
    ]
}

/// Runs every method `cfg.repeats` times, calling `on_repeat(r)` as repeat `r` starts.
pub fn run(
    cfg: &Toy2dConfig,
    device: &Device,
    mut on_repeat: impl FnMut(usize),
) -> Result<Vec<Toy2dRow>> {
    let gmm = prior(device)?;
    let op = TrapOperator::default();
    let y = rows_to_tensor(&[op.eval([0.5, 0.5])], 1, 1, device)?;
    let meas = Measurement {
        y,
        sigma_y: SIGMA_Y,
    };
    let p = Problem {
        prior: &gmm,
        operator: &op as &dyn Operator,
        measurement: &meas,
    };
    let samplers = samplers(cfg);
    let mut rows: Vec<(&'static str, Vec<f64>, f64)> =
        vec![("oracle", vec![], 0.0), ("prior", vec![], 0.0)];
    rows.extend(samplers.iter().map(|m| (m.name(), vec![], 0.0)));
    let skipped: Vec<Option<String>> = [None, None]
        .into_iter()
        .chain(
            samplers
                .iter()
                .map(|m| m.supports(&p).err().map(|e| e.to_string())),
        )
        .collect();
    for r in 0..cfg.repeats as u64 {
        on_repeat(r as usize);
        let refs = reference(&gmm, cfg.samples, cfg.pool, 1000 + r);
        let other = reference(&gmm, cfg.samples, cfg.pool, 2000 + r);
        rows[0].1.push(w1_exact(&other, &refs, 2));
        rows[1]
            .1
            .push(w1_exact(&gmm.sample(cfg.samples, 3000 + r).0, &refs, 2));
        for ((row, m), skip) in rows[2..].iter_mut().zip(&samplers).zip(&skipped[2..]) {
            if skip.is_some() {
                continue;
            }
            let t = Instant::now();
            let x = m.run(&p, &[cfg.samples, 2], &mut SeededNoise::new(r), &mut Silent)?;
            row.2 += t.elapsed().as_secs_f64();
            row.1.push(w1_exact(&tensor_to_rows(&x)?.0, &refs, 2));
        }
    }
    Ok(rows
        .into_iter()
        .zip(skipped)
        .map(|((method, v, secs), skipped)| {
            let (w1_mean, w1_ci95) = mean_ci95(&v);
            Toy2dRow {
                method,
                w1_mean,
                w1_ci95,
                seconds: secs / cfg.repeats as f64,
                skipped,
            }
        })
        .collect())
}
