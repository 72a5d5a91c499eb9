//! The Gaussian-mixture benchmark of MCGdiff (Cardoso et al., ICLR 2024), with the exact
//! posterior as reference: 25 components on a grid, Σ = I, a random operator with U(0,1)
//! singular values, random noise level; sliced Wasserstein and mode-weight TV to the truth.

use super::mean_ci95;
use crate::error::{Error, Result};
use crate::exact::Posterior;
use crate::metric::{mode_weight_tv, sliced_wasserstein};
use crate::noise::{stream, SeededNoise};
use crate::operator::{MatrixOperator, Measurement};
use crate::prior::gmm::{rows_to_tensor, tensor_to_rows};
use crate::prior::GaussianMixture;
use crate::sampler::smc::DapsSmcConfig;
use crate::sampler::tweedie::DapsTweedieConfig;
use crate::sampler::twisted::TwistedSmcConfig;
use crate::sampler::{
    self, DapsConfig, DdnmConfig, DdrmConfig, DiffpirConfig, DpsConfig, FpsConfig, McgdiffConfig,
    PigdmConfig, Problem, RedDiffConfig, ScoreAldConfig, Silent,
};
use candle_core::Device;
use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// A row of the benchmark: one of the two references, or a sampler of the registry
/// ([`sampler::METHODS`]) with the benchmark's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Exact posterior samples against another exact draw: the noise floor of the metrics.
    Oracle,
    /// Prior samples that ignore y.
    Prior,
    /// A registered sampler, by name (`daps-exact`, `daps`, `dps`, …).
    Sampler(&'static str),
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Oracle => "oracle",
            Method::Prior => "prior",
            Method::Sampler(n) => n,
        }
    }

    /// `oracle`, `prior` or a registered sampler's name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "oracle" => Ok(Method::Oracle),
            "prior" => Ok(Method::Prior),
            _ => sampler::method_info(s)
                .map(|m| Method::Sampler(m.name))
                .map_err(|e| Error::config(format!("{e}, or oracle, prior"))),
        }
    }

    /// `oracle`, `prior` and every registered sampler that can solve the benchmark's problems
    /// (its `supports` accepts the first cell's first problem), for `--methods all`.
    pub fn all(cfg: &GmmBenchConfig, device: &Device) -> Result<Vec<Method>> {
        let (d, dy) = (cfg.dims[0], cfg.dys[0]);
        let p = make_problem(d, dy, 1, device)?;
        let op = MatrixOperator::new(p.a.clone(), &[d], device)?;
        let meas = Measurement {
            y: rows_to_tensor(p.y.as_slice(), 1, dy, device)?,
            sigma_y: p.sigma_y,
        };
        let prob = Problem {
            prior: &p.prior,
            operator: &op,
            measurement: &meas,
        };
        let mut out = vec![Method::Oracle, Method::Prior];
        for info in sampler::METHODS {
            if bench_sampler(info.name, cfg, p.sigma_y, dy)?
                .supports(&prob)
                .is_ok()
            {
                out.push(Method::Sampler(info.name));
            }
        }
        Ok(out)
    }

    pub const ALL: [Method; 5] = [
        Method::Oracle,
        Method::Prior,
        Method::Sampler("daps-exact"),
        Method::Sampler("daps"),
        Method::Sampler("dps"),
    ];
}

/// twisted-smc's σ_max and σ_min here. From 100, x_T ~ N(0, σ_max² I) misses the means (‖μ‖ up
/// to 143 at d = 80, 453 at d = 800): with a flat likelihood the chain's own mode weights were
/// off by TV 0.13 (d = 80, N = 24), 0.09 from 300. At σ = 2 every component (Σ = I, means ≥ 16
/// apart) is resolved, so the final Tweedie x0 step is exact per component and the chain skips
/// the low levels where its ancestral steps shrink the within-mode variance (d = 80, d_y = 4:
/// SW 1.56× the oracle's at σ_min = 0.05, 0.95× at 2).
pub const TWISTED_SIGMA: (f64, f64) = (1000.0, 2.0);

/// The registered sampler `name` at the benchmark's budget for a problem with noise `tau` and
/// `dim_y` measurement values:
/// DAPS with N × M NFE, its Langevin step in units of τ²; DPS with N·M steps and ζ; DAPS-SMC
/// with the first of `cfg.particles` particles of N × M NFE each; DAPS-Tweedie with N levels,
/// its default Lanczos steps and 4 CG steps (exact for d_y ≤ 4); Score-ALD with N·M levels of
/// one step; MCGdiff and FPS with N steps × the first of `cfg.particles` (else
/// `cfg.filter_particles`); twisted-smc pooled (one population for the problem's samples), with
/// [`TWISTED_SIGMA`] and the first of `cfg.particles` per sample, else the most that fit DAPS's
/// N × M NFE at `dim_y` (`TwistedSmcConfig::for_budget`). Every likelihood σ of the DAPS variants is τ; DDRM,
/// DDNM, ΠGDM, DiffPIR and RED-diff with N·M steps (at most 1000 for the last two) and their
/// registered settings.
pub fn bench_sampler(
    name: &str,
    cfg: &GmmBenchConfig,
    tau: f64,
    dim_y: usize,
) -> Result<sampler::Method> {
    Ok(match sampler::Method::from_name(name)? {
        sampler::Method::Daps(c) => sampler::Method::Daps(DapsConfig {
            annealing_steps: cfg.annealing_steps,
            ode_steps: cfg.ode_steps,
            mcmc_steps: cfg.mcmc_steps,
            lr: cfg.lr * tau * tau,
            lr_min_ratio: cfg.lr_min_ratio,
            sigma_max: cfg.sigma_max,
            tau,
            tau_rule: sampler::TauRule::Fixed,
            lr_rule: sampler::LrRule::Absolute,
            ..c
        }),
        sampler::Method::Dps(_) => sampler::Method::Dps(DpsConfig {
            steps: cfg.annealing_steps * cfg.ode_steps,
            zeta: cfg.dps_zeta,
            clip: None,
        }),
        sampler::Method::DapsSmc(c) => sampler::Method::DapsSmc(DapsSmcConfig {
            particles: cfg.particles.first().copied().unwrap_or(c.particles),
            annealing_steps: cfg.annealing_steps,
            ode_steps: cfg.ode_steps,
            sigma_max: cfg.sigma_max,
            tau: Some(tau),
            ..c
        }),
        sampler::Method::DapsTweedie(c) => sampler::Method::DapsTweedie(DapsTweedieConfig {
            annealing_steps: cfg.annealing_steps,
            sigma_max: cfg.sigma_max,
            cg_steps: 4,
            tau: Some(tau),
            ..c
        }),
        sampler::Method::TwistedSmc(c) => {
            let c = TwistedSmcConfig {
                sigma_max: TWISTED_SIGMA.0,
                sigma_min: TWISTED_SIGMA.1,
                tau: Some(tau),
                pool: true,
                max_dim_y: dim_y,
                ..c
            };
            sampler::Method::TwistedSmc(match cfg.particles.first() {
                Some(&particles) => TwistedSmcConfig { particles, ..c },
                None => c.for_budget(cfg.annealing_steps * cfg.ode_steps, dim_y)?,
            })
        }
        sampler::Method::ScoreAld(c) => sampler::Method::ScoreAld(ScoreAldConfig {
            levels: cfg.annealing_steps * cfg.ode_steps,
            steps_each: 1,
            sigma_max: cfg.sigma_max,
            ..c
        }),
        sampler::Method::Mcgdiff(c) => sampler::Method::Mcgdiff(McgdiffConfig {
            steps: cfg.annealing_steps,
            particles: cfg
                .particles
                .first()
                .copied()
                .unwrap_or(cfg.filter_particles),
            sigma_max: cfg.sigma_max,
            ..c
        }),
        sampler::Method::Fps(c) => sampler::Method::Fps(FpsConfig {
            steps: cfg.annealing_steps,
            particles: cfg
                .particles
                .first()
                .copied()
                .unwrap_or(cfg.filter_particles),
            sigma_max: cfg.sigma_max,
            ..c
        }),
        sampler::Method::Ddrm(c) => sampler::Method::Ddrm(DdrmConfig {
            steps: cfg.annealing_steps * cfg.ode_steps,
            ..c
        }),
        sampler::Method::Ddnm(c) => sampler::Method::Ddnm(DdnmConfig {
            steps: cfg.annealing_steps * cfg.ode_steps,
            ..c
        }),
        sampler::Method::Pigdm(c) => sampler::Method::Pigdm(PigdmConfig {
            steps: cfg.annealing_steps * cfg.ode_steps,
            ..c
        }),
        sampler::Method::Diffpir(c) => sampler::Method::Diffpir(DiffpirConfig {
            steps: (cfg.annealing_steps * cfg.ode_steps).min(1000),
            ..c
        }),
        sampler::Method::RedDiff(c) => sampler::Method::RedDiff(RedDiffConfig {
            steps: (cfg.annealing_steps * cfg.ode_steps).min(1000),
            ..c
        }),
        // A sampler without a budget rule here runs with its registered defaults.
        #[allow(unreachable_patterns)]
        other => other,
    })
}

#[derive(Debug, Clone)]
pub struct GmmBenchConfig {
    pub dims: Vec<usize>,
    pub dys: Vec<usize>,
    pub problems: usize,
    pub samples: usize,
    pub annealing_steps: usize,
    pub ode_steps: usize,
    pub mcmc_steps: usize,
    /// Langevin step size in units of τ² (τ = σ_y of each problem).
    pub lr: f64,
    pub lr_min_ratio: f64,
    /// Start and top of the annealing: x_T ~ N(0, σ_max² I).
    pub sigma_max: f64,
    pub dps_zeta: f64,
    pub methods: Vec<Method>,
    /// Particle counts K of `daps-smc`, `mcgdiff` and `fps`: one row per K (empty: daps-smc's
    /// default, `filter_particles` for the filters).
    pub particles: Vec<usize>,
    /// Particles per sample of MCGdiff and FPS when `particles` is empty.
    pub filter_particles: usize,
    pub directions: usize,
}

impl Default for GmmBenchConfig {
    fn default() -> Self {
        Self {
            dims: vec![8, 80, 800],
            dys: vec![1, 2, 4],
            problems: 20,
            samples: 2000,
            annealing_steps: 200,
            ode_steps: 5,
            mcmc_steps: 100,
            lr: 0.5,
            lr_min_ratio: 0.01,
            sigma_max: 100.0,
            dps_zeta: 0.3,
            methods: Method::ALL.to_vec(),
            particles: Vec::new(),
            filter_particles: 64,
            directions: 100,
        }
    }
}

impl GmmBenchConfig {
    /// A small size for CI.
    pub fn quick() -> Self {
        Self {
            dims: vec![8],
            dys: vec![1, 2],
            problems: 3,
            samples: 300,
            annealing_steps: 40,
            mcmc_steps: 20,
            filter_particles: 32,
            ..Self::default()
        }
    }
}

/// One row of the table (and of the JSON output).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub d: usize,
    pub d_y: usize,
    pub method: String,
    pub sw_mean: f64,
    pub sw_ci95: f64,
    pub tv_mean: f64,
    #[serde(default)]
    pub tv_ci95: f64,
    /// Network evaluations per sample (0 for oracle and prior).
    #[serde(default)]
    pub nfe: usize,
    pub seconds_per_problem: f64,
    pub problems: usize,
    pub samples: usize,
}

/// One benchmark problem.
pub struct GmmProblem {
    pub prior: GaussianMixture,
    pub a: DMatrix<f64>,
    pub sigma_y: f64,
    pub y: DVector<f64>,
}

/// The 25-component prior in dimension d (even): means (−8i, −8j, −8i, −8j, …), i, j ∈ {−2..2},
/// Σ = I, weights z²/Σz² with z ~ N(0, I) fixed per d.
pub fn mixture_prior(d: usize, device: &Device) -> Result<GaussianMixture> {
    if d < 2 || d % 2 != 0 {
        return Err(Error::config(format!(
            "the mixture benchmark needs an even dimension, got {d}"
        )));
    }
    let mut rng = stream(0x6D6978, d as u64, 0);
    let z: Vec<f64> = (0..25)
        .map(|_| rng.sample::<f64, _>(StandardNormal).powi(2))
        .collect();
    let mut means = Vec::with_capacity(25);
    for i in -2i32..=2 {
        for j in -2i32..=2 {
            means.push(DVector::from_fn(d, |k, _| {
                if k % 2 == 0 {
                    -8.0 * i as f64
                } else {
                    -8.0 * j as f64
                }
            }));
        }
    }
    GaussianMixture::isotropic(z, means, 1.0, device)
}

/// Problem `i` of cell (d, d_y); `seed` follows the MCGdiff script: 2^{ind_d}·3^{ind_dy} + i.
pub fn make_problem(d: usize, dy: usize, seed: u64, device: &Device) -> Result<GmmProblem> {
    let prior = mixture_prior(d, device)?;
    let mut rng = stream(seed, d as u64, dy as u64);
    let a0 = DMatrix::from_fn(dy, d, |_, _| rng.sample::<f64, _>(StandardNormal));
    let svd = a0.svd(true, true);
    // Invariant: the SVD was asked for U and Vᵀ (`svd(true, true)`).
    let (u, vt) = (svd.u.unwrap(), svd.v_t.unwrap()); // dy×dy, dy×d
    let mut s: Vec<f64> = (0..dy).map(|_| rng.random::<f64>()).collect();
    s.sort_by(|a, b| b.total_cmp(a));
    let a = u * DMatrix::from_diagonal(&DVector::from_vec(s.clone())) * vt;
    let sigma_y = rng.random::<f64>() * s[0];
    let (x, _) = prior.sample(1, rng.random());
    let y = &a * DVector::from_vec(x)
        + DVector::from_fn(dy, |_, _| sigma_y * rng.sample::<f64, _>(StandardNormal));
    Ok(GmmProblem {
        prior,
        a,
        sigma_y,
        y,
    })
}

/// Samples from one method, row-major `[n, d]`.
pub fn run_method(
    m: Method,
    p: &GmmProblem,
    cfg: &GmmBenchConfig,
    seed: u64,
    device: &Device,
) -> Result<Vec<f64>> {
    let d = p.prior.dim();
    let n = cfg.samples;
    let op = MatrixOperator::new(p.a.clone(), &[d], device)?;
    let y = rows_to_tensor(p.y.as_slice(), 1, p.y.len(), device)?;
    let meas = Measurement {
        y,
        sigma_y: p.sigma_y,
    };
    let prob = Problem {
        prior: &p.prior,
        operator: &op,
        measurement: &meas,
    };
    let out = match m {
        Method::Oracle => {
            return Ok(Posterior::new(&p.prior, &p.a, p.sigma_y, p.y.clone())?.sample(n, seed))
        }
        Method::Prior => return Ok(p.prior.sample(n, seed).0),
        Method::Sampler(name) => bench_sampler(name, cfg, p.sigma_y, p.y.len())?.run(
            &prob,
            &[n, d],
            &mut SeededNoise::new(seed),
            &mut Silent,
        )?,
    };
    Ok(tensor_to_rows(&out)?.0)
}

/// Per-problem scores of one method: (SW, TV, seconds).
pub fn score(
    m: Method,
    p: &GmmProblem,
    post: &Posterior,
    reference: &[f64],
    cfg: &GmmBenchConfig,
    seed: u64,
    device: &Device,
) -> Result<(f64, f64, f64)> {
    let t = Instant::now();
    let s = run_method(m, p, cfg, seed, device)?;
    let secs = t.elapsed().as_secs_f64();
    let d = p.prior.dim();
    let sw = sliced_wasserstein(&s, reference, d, cfg.directions, seed ^ 0x5157);
    let tv = mode_weight_tv(&post.weights, &post.assign(&s));
    Ok((sw, tv, secs))
}

/// One row of the table: a method, the settings it runs with and its label.
struct Row {
    method: Method,
    cfg: GmmBenchConfig,
    label: String,
}

impl Row {
    /// NFE per sample at `dim_y` (0 for oracle and prior).
    fn nfe(&self, dim_y: usize) -> Result<usize> {
        Ok(match self.method {
            Method::Sampler(name) => bench_sampler(name, &self.cfg, 1.0, dim_y)?.nfe(),
            _ => 0,
        })
    }
}

/// Each method once; `daps-smc` once per particle count K (labelled `daps-smc-K`).
fn table_rows(cfg: &GmmBenchConfig) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &m in &cfg.methods {
        let ks = match m {
            Method::Sampler("daps-smc" | "twisted-smc" | "mcgdiff" | "fps")
                if !cfg.particles.is_empty() =>
            {
                cfg.particles.clone()
            }
            _ => vec![0],
        };
        for k in ks {
            let mut c = cfg.clone();
            c.particles = if k > 0 { vec![k] } else { Vec::new() };
            let label = match m {
                Method::Sampler(name) => {
                    for &dy in &cfg.dys {
                        bench_sampler(name, &c, 1.0, dy)?.validate()?;
                    }
                    if k > 0 {
                        format!("{name}-{k}")
                    } else {
                        name.to_string()
                    }
                }
                _ => m.name().to_string(),
            };
            rows.push(Row {
                method: m,
                cfg: c,
                label,
            });
        }
    }
    Ok(rows)
}

/// One row of one cell, as [`run`] offers it to its `select`: `index` counts the rows of every
/// cell in order (d, then d_y, then method), for `--shard k/n`.
pub struct RowKey<'a> {
    pub d: usize,
    pub d_y: usize,
    pub method: &'a str,
    /// Network evaluations per sample.
    pub nfe: usize,
    pub index: usize,
}

/// The rows of every cell that `select` takes, calling `on_problem(d, d_y, i)` as each problem
/// is built and `on_record` as each (d, d_y, method) row completes. A row's numbers depend only on
/// the problem seeds (from the positions of d and d_y in their lists) and the method's label,
/// so rows can be run separately (resumed, sharded) and give the same records.
pub fn run(
    cfg: &GmmBenchConfig,
    device: &Device,
    select: impl Fn(&RowKey) -> bool,
    mut on_problem: impl FnMut(usize, usize, usize),
    mut on_record: impl FnMut(&Record) -> Result<()>,
) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let rows = table_rows(cfg)?;
    let mut index = 0;
    for (id, &d) in cfg.dims.iter().enumerate() {
        for (iy, &dy) in cfg.dys.iter().enumerate() {
            if dy > d {
                return Err(Error::config(format!("d_y = {dy} exceeds d = {d}")));
            }
            let chosen: Vec<(&Row, usize)> = rows
                .iter()
                .enumerate()
                .map(|(k, row)| Ok((k, row, row.nfe(dy)?)))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|&(k, row, nfe)| {
                    select(&RowKey {
                        d,
                        d_y: dy,
                        method: &row.label,
                        nfe,
                        index: index + k,
                    })
                })
                .map(|(_, row, nfe)| (row, nfe))
                .collect();
            index += rows.len();
            if chosen.is_empty() {
                continue;
            }
            let mut problems = Vec::with_capacity(cfg.problems);
            for i in 0..cfg.problems {
                on_problem(d, dy, i);
                let seed = 2u64.pow(id as u32) * 3u64.pow(iy as u32) + i as u64;
                problems.push((seed, make_problem(d, dy, seed, device)?));
            }
            let posteriors = problems
                .iter()
                .map(|(seed, p)| {
                    let post = Posterior::new(&p.prior, &p.a, p.sigma_y, p.y.clone())?;
                    let reference = post.sample(cfg.samples, seed ^ 0xAAAA);
                    Ok((post, reference))
                })
                .collect::<Result<Vec<_>>>()?;
            for (row, nfe) in chosen {
                let (mut sws, mut tvs, mut secs) = (Vec::new(), Vec::new(), 0.0);
                for ((seed, p), (post, reference)) in problems.iter().zip(&posteriors) {
                    let (sw, tv, s) = score(
                        row.method,
                        p,
                        post,
                        reference,
                        &row.cfg,
                        seed.wrapping_mul(31)
                            .wrapping_add(crate::eval::name_hash(&row.label)),
                        device,
                    )?;
                    sws.push(sw);
                    tvs.push(tv);
                    secs += s;
                }
                let (sw_mean, sw_ci95) = mean_ci95(&sws);
                let (tv_mean, tv_ci95) = mean_ci95(&tvs);
                let r = Record {
                    d,
                    d_y: dy,
                    method: row.label.clone(),
                    sw_mean,
                    sw_ci95,
                    tv_mean,
                    tv_ci95,
                    seconds_per_problem: secs / cfg.problems as f64,
                    nfe,
                    problems: cfg.problems,
                    samples: cfg.samples,
                };
                on_record(&r)?;
                records.push(r);
            }
        }
    }
    Ok(records)
}
