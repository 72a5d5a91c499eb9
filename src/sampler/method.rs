//! The sampler registry: every posterior sampler as a [`Method`] (its settings) with one way to
//! run it, and [`METHODS`] (name, summary, reference, default settings) for `daps methods`,
//! `--method`, presets and the benchmarks.
//!
//! To add a sampler: in its own file under `sampler/`, a config struct (serde, `default`,
//! `deny_unknown_fields`), its function `fn(problem, config, shape, noise, observer) ->
//! Result<Tensor>` and `impl Sampler` for the config; here, a `Method` variant, its line in
//! [`dispatch!`] and a [`METHODS`] entry.
//!
//! Scale: a sampler reads every setting with a unit through [`crate::prior::Scale::of`] the
//! prior (σ's, τ, clip bounds and ζ × s, Langevin steps × s², tolerances from the declared data
//! range), so that a prior and measurement scaled by c give c × the output; `tests/scale.rs`
//! checks this for every entry of [`METHODS`] with its default settings.

use super::latent_daps::{latent_daps, LatentDapsConfig};
use super::psld::{psld, PsldConfig};
use super::resample::{resample, ResampleConfig};
use super::smc::{daps_smc, DapsSmcConfig};
use super::tweedie::{daps_tweedie, DapsTweedieConfig};
use super::twisted::{twisted_smc, TwistedSmcConfig};
use super::{
    daps, ddnm, ddrm, diffpir, dps, fps, mcgdiff, pigdm, pnp_dm, red_diff, score_ald, Observer,
    Problem, X0Method,
};
use super::{
    DapsConfig, DdnmConfig, DdrmConfig, DiffpirConfig, DpsConfig, FpsConfig, McgdiffConfig,
    PigdmConfig, PnpDmConfig, RedDiffConfig, ScoreAldConfig,
};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::operator::Measurement;
use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What every sampler's settings provide.
pub trait Sampler: Serialize + DeserializeOwned {
    /// The registry name of these settings.
    fn name(&self) -> &'static str;
    /// Network evaluations per chain.
    fn nfe(&self) -> usize;
    /// Outer steps (what an [`Observer`] is told).
    fn steps(&self) -> usize;
    /// Checks every field against its valid range.
    fn validate(&self) -> Result<()>;
    /// Draws `x_shape[0]` chains from the posterior of `p`.
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor>;
    /// One line of the main settings.
    fn describe(&self) -> String;
    /// Settings that may be absent from the serialised form (unset options).
    fn optional_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether this sampler can solve `p` (say, it needs a linear operator or a closed-form
    /// prior): an error naming what is missing, raised before any work. `--methods all` keeps
    /// the samplers for which this is `Ok`.
    fn supports(&self, _p: &Problem) -> Result<()> {
        Ok(())
    }
}

/// A sampler with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Method {
    Daps(DapsConfig),
    Dps(DpsConfig),
    DapsTweedie(DapsTweedieConfig),
    DapsSmc(DapsSmcConfig),
    TwistedSmc(TwistedSmcConfig),
    Mcgdiff(McgdiffConfig),
    Fps(FpsConfig),
    ScoreAld(ScoreAldConfig),
    PnpDm(PnpDmConfig),
    Ddrm(DdrmConfig),
    Ddnm(DdnmConfig),
    Pigdm(PigdmConfig),
    Diffpir(DiffpirConfig),
    RedDiff(RedDiffConfig),
    LatentDaps(LatentDapsConfig),
    Psld(PsldConfig),
    Resample(ResampleConfig),
}

/// Applies `$e` to the settings `$c` of whichever sampler `$m` is; `$wrap` rebuilds a `Method`
/// of the same kind from a value of the config's type.
macro_rules! dispatch {
    ($m:expr, $c:ident => $e:expr) => {
        match $m {
            Method::Daps($c) => $e,
            Method::Dps($c) => $e,
            Method::DapsTweedie($c) => $e,
            Method::DapsSmc($c) => $e,
            Method::TwistedSmc($c) => $e,
            Method::Mcgdiff($c) => $e,
            Method::Fps($c) => $e,
            Method::ScoreAld($c) => $e,
            Method::PnpDm($c) => $e,
            Method::Ddrm($c) => $e,
            Method::Ddnm($c) => $e,
            Method::Pigdm($c) => $e,
            Method::Diffpir($c) => $e,
            Method::RedDiff($c) => $e,
            Method::LatentDaps($c) => $e,
            Method::Psld($c) => $e,
            Method::Resample($c) => $e,
        }
    };
    ($m:expr, $c:ident, $wrap:ident => $e:expr) => {
        match $m {
            Method::Daps($c) => {
                let $wrap = Method::Daps;
                $e
            }
            Method::Dps($c) => {
                let $wrap = Method::Dps;
                $e
            }
            Method::DapsTweedie($c) => {
                let $wrap = Method::DapsTweedie;
                $e
            }
            Method::DapsSmc($c) => {
                let $wrap = Method::DapsSmc;
                $e
            }
            Method::TwistedSmc($c) => {
                let $wrap = Method::TwistedSmc;
                $e
            }
            Method::Mcgdiff($c) => {
                let $wrap = Method::Mcgdiff;
                $e
            }
            Method::Fps($c) => {
                let $wrap = Method::Fps;
                $e
            }
            Method::ScoreAld($c) => {
                let $wrap = Method::ScoreAld;
                $e
            }
            Method::PnpDm($c) => {
                let $wrap = Method::PnpDm;
                $e
            }
            Method::Ddrm($c) => {
                let $wrap = Method::Ddrm;
                $e
            }
            Method::Ddnm($c) => {
                let $wrap = Method::Ddnm;
                $e
            }
            Method::Pigdm($c) => {
                let $wrap = Method::Pigdm;
                $e
            }
            Method::Diffpir($c) => {
                let $wrap = Method::Diffpir;
                $e
            }
            Method::RedDiff($c) => {
                let $wrap = Method::RedDiff;
                $e
            }
            Method::LatentDaps($c) => {
                let $wrap = Method::LatentDaps;
                $e
            }
            Method::Psld($c) => {
                let $wrap = Method::Psld;
                $e
            }
            Method::Resample($c) => {
                let $wrap = Method::Resample;
                $e
            }
        }
    };
}

/// One registered sampler.
#[derive(Clone, Copy)]
pub struct MethodInfo {
    /// The registry name (`--method`, presets' `method = …`).
    pub name: &'static str,
    pub summary: &'static str,
    pub reference: &'static str,
    /// The default settings.
    pub default: fn() -> Method,
}

/// Every sampler, in the order `daps methods` lists them.
pub const METHODS: [MethodInfo; 20] = [
    MethodInfo {
        name: "daps",
        summary:
            "Decoupled Annealing Posterior Sampling: PF-ODE estimate x̂0, MCMC x0 step, re-noise",
        reference: "Zhang et al., CVPR 2025 (arXiv 2407.01521), Eq. 9",
        default: || Method::Daps(DapsConfig::measured()),
    },
    MethodInfo {
        name: "daps-exact",
        summary: "DAPS with the closed-form x0 step (Gaussian-mixture prior, linear operator)",
        reference: "Zhang et al., CVPR 2025, Proposition 1",
        default: || {
            Method::Daps(DapsConfig {
                x0_method: X0Method::Exact,
                ..DapsConfig::default()
            })
        },
    },
    MethodInfo {
        name: "daps-gaussian",
        summary: "DAPS with its Gaussian x0 target drawn exactly (linear operators; no MCMC steps)",
        reference:
            "Zhang et al., CVPR 2025, Eq. 9 target; perturb-and-solve (Papandreou & Yuille 2010)",
        default: || {
            Method::Daps(DapsConfig {
                x0_method: X0Method::Gaussian,
                ..DapsConfig::measured()
            })
        },
    },
    MethodInfo {
        name: "daps-guided",
        summary: "DAPS whose PF-ODE estimate x̂0 takes DPS's measurement step at every Euler step \
                  (gradient through the denoiser; one VJP per network evaluation)",
        reference: "Zhang et al., CVPR 2025, Eq. 9, with the guidance of Chung et al., ICLR 2023",
        default: || {
            Method::Daps(DapsConfig {
                guidance: 1.0,
                ..DapsConfig::default()
            })
        },
    },
    MethodInfo {
        name: "daps-tweedie",
        summary: "DAPS with the Tweedie moments D(x_t), σ_t²·∂D/∂x as the x0 prior (Lanczos + CG \
                  through denoiser VJPs; linear operators)",
        reference:
            "Zhang et al., CVPR 2025, Eq. 9; Tweedie covariance as in Boys et al. 2023 (TMPD)",
        default: || Method::DapsTweedie(DapsTweedieConfig::default()),
    },
    MethodInfo {
        name: "daps-smc",
        summary: "K DAPS particles per measurement with importance weights and ESS resampling \
                  (linear operators)",
        reference: "DAPS decoupled chain; SMC as in DDSMC (2025), FPS (2024), MCGdiff (2024)",
        default: || Method::DapsSmc(DapsSmcConfig::default()),
    },
    MethodInfo {
        name: "twisted-smc",
        summary: "K particles per measurement on the prior's reverse chain, twisted by the Tweedie \
                  likelihood N(y; A D(x_t), τ² + σ_t² A J Aᵀ) (linear operators, small y)",
        reference: "TDS (Wu et al., NeurIPS 2023) with the Tweedie covariance of TMPD (Boys et al. 2023)",
        default: || Method::TwistedSmc(TwistedSmcConfig::default()),
    },
    MethodInfo {
        name: "dps",
        summary: "Diffusion Posterior Sampling: DDPM steps with the gradient of ‖y − A(x̂0(x))‖",
        reference: "Chung et al., ICLR 2023 (arXiv 2209.14687)",
        default: || Method::Dps(DpsConfig::default()),
    },
    MethodInfo {
        name: "mcgdiff",
        summary: "Particle filter on the prior's reverse chain, twisted per SVD coordinate (linear-Gaussian y)",
        reference: "Cardoso et al., ICLR 2024 (arXiv 2308.07983)",
        default: || Method::Mcgdiff(McgdiffConfig::default()),
    },
    MethodInfo {
        name: "fps",
        summary: "FPS-SMC: particles follow a noised y-bridge; Gaussian proposals by the prox; resampling",
        reference: "Dou & Song, ICLR 2024",
        default: || Method::Fps(FpsConfig::default()),
    },
    MethodInfo {
        name: "score-ald",
        summary: "Annealed Langevin on the prior score and the likelihood score weighted 1/(σ_y² + σ²)",
        reference: "Jalal et al., NeurIPS 2021 (arXiv 2108.01368)",
        default: || Method::ScoreAld(ScoreAldConfig::default()),
    },
    MethodInfo {
        name: "pnp-dm",
        summary: "Split Gibbs: likelihood step (prox or Langevin), EDM posterior denoising, annealed ρ",
        reference: "Wu et al., NeurIPS 2024 (arXiv 2405.18782)",
        default: || Method::PnpDm(PnpDmConfig::default()),
    },
    MethodInfo {
        name: "ddrm",
        summary: "Denoising Diffusion Restoration Models: DDIM steps in the SVD basis of A \
                  (inpainting, pooling, bicubic SR, separable blur, matrices)",
        reference: "Kawar et al., NeurIPS 2022 (arXiv 2201.11793)",
        default: || Method::Ddrm(DdrmConfig::default()),
    },
    MethodInfo {
        name: "ddnm",
        summary: "Denoising Diffusion Null-space Model (DDNM+): x̂0 − λA⁺(A x̂0 − y), re-noise \
                  (inpainting, pooling, bicubic SR, separable blur, matrices)",
        reference: "Wang et al., ICLR 2023 (arXiv 2212.00490), README's simplified DDNM+",
        default: || Method::Ddnm(DdnmConfig::default()),
    },
    MethodInfo {
        name: "pigdm",
        summary:
            "Pseudo-inverse guided diffusion (ΠGDM): DDIM plus J_Dᵀ(AᵀA + σ_y²/r²)⁻¹Aᵀ(y − A x̂0)",
        reference: "Song et al., ICLR 2023 (openreview 9_gsMA8MRKQ)",
        default: || Method::Pigdm(PigdmConfig::default()),
    },
    MethodInfo {
        name: "diffpir",
        summary: "DiffPIR: denoiser, data proximal step around x̂0 (ρ = λσ_y²/4σ²), re-noise with ζ",
        reference: "Zhu et al., CVPR Workshops 2023 (arXiv 2305.08995)",
        default: || Method::Diffpir(DiffpirConfig::default()),
    },
    MethodInfo {
        name: "red-diff",
        summary: "RED-diff: Adam on a point estimate μ with the denoiser's regulariser \
                  λ(μ − D(μ + σε)) and the data term",
        reference: "Mardani et al., ICLR 2024 (arXiv 2305.04391)",
        default: || Method::RedDiff(RedDiffConfig::default()),
    },
    MethodInfo {
        name: "latent-daps",
        summary: "LatentDAPS: the DAPS loop on a latent diffusion prior's z with A∘decode, HMC x0 \
                  step, data gradient clamped to [−1, 1] (latent priors only)",
        reference: "Zhang et al., CVPR 2025, §4.3; official sampler.py LatentDAPS (main branch)",
        default: || Method::LatentDaps(LatentDapsConfig::default()),
    },
    MethodInfo {
        name: "psld",
        summary: "PSLD: latent DDIM with the gradient of ω‖y − A(Dec ẑ0)‖ + γ‖Enc(Aᵀy + \
                  (I − AᵀA)Dec ẑ0) − ẑ0‖ through D, decoder and encoder (latent priors, linear A)",
        reference: "Rout et al., NeurIPS 2023 (arXiv 2307.00619); official psld.py",
        default: || Method::Psld(PsldConfig::default()),
    },
    MethodInfo {
        name: "resample",
        summary: "ReSample: latent DDIM with DPS-style guidance; every 10 steps a look-ahead ẑ0 \
                  made consistent with y (pixel, then latent AdamW) and z resampled around it \
                  (latent priors only)",
        reference: "Song et al., ICLR 2024 (openreview j8hdRqOUhN); official ldm/models/diffusion/ddim.py",
        default: || Method::Resample(ResampleConfig::default()),
    },
];

fn method_names() -> String {
    METHODS.map(|m| m.name).join(", ")
}

/// The registry entry of `name`, or an error listing the valid names.
pub fn method_info(name: &str) -> Result<&'static MethodInfo> {
    METHODS.iter().find(|m| m.name == name).ok_or_else(|| {
        Error::config(format!(
            "unknown method '{name}' (valid: {})",
            method_names()
        ))
    })
}

impl Sampler for DapsConfig {
    fn name(&self) -> &'static str {
        match self.x0_method {
            X0Method::Exact => "daps-exact",
            X0Method::Gaussian => "daps-gaussian",
            _ if self.guidance > 0.0 => "daps-guided",
            _ => "daps",
        }
    }
    fn nfe(&self) -> usize {
        DapsConfig::nfe(self)
    }
    fn steps(&self) -> usize {
        self.annealing_steps
    }
    fn validate(&self) -> Result<()> {
        DapsConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        daps(p, self, x_shape, noise, obs)
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        match self.x0_method {
            super::X0Method::Gaussian => super::linear_of(p, "daps-gaussian").map(|_| ()),
            super::X0Method::Exact => super::daps::exact_supported(p),
            _ => Ok(()),
        }
    }
    fn describe(&self) -> String {
        format!(
            "{} × {} NFE, {:?} {} steps, lr {:e} ({:?}), lr_min_ratio {}, τ {}, σ {} → {}",
            self.annealing_steps,
            self.ode_steps,
            self.x0_method,
            self.mcmc_steps,
            self.lr,
            self.lr_rule,
            self.lr_min_ratio,
            match self.tau_rule {
                super::TauRule::Fixed => self.tau.to_string(),
                super::TauRule::Measurement => format!("σ_y (else {})", self.tau),
            },
            self.sigma_max,
            self.sigma_min
        ) + &if self.guidance > 0.0 {
            format!(", ODE guidance ζ {}", self.guidance)
        } else {
            String::new()
        }
    }
}

impl Sampler for DpsConfig {
    fn name(&self) -> &'static str {
        "dps"
    }
    fn nfe(&self) -> usize {
        self.steps
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn validate(&self) -> Result<()> {
        DpsConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        dps(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} steps, ζ {}, x̂0 clip {}",
            self.steps,
            self.zeta,
            self.clip.map_or("none".to_string(), |v| format!("±{v}"))
        )
    }
    fn optional_keys(&self) -> &'static [&'static str] {
        &["clip"]
    }
}

impl Sampler for DapsTweedieConfig {
    fn name(&self) -> &'static str {
        "daps-tweedie"
    }
    fn nfe(&self) -> usize {
        DapsTweedieConfig::nfe(self)
    }
    fn steps(&self) -> usize {
        self.annealing_steps
    }
    fn validate(&self) -> Result<()> {
        DapsTweedieConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        daps_tweedie(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} levels × (1 + {} Lanczos + ≤{} CG + 1) NFE, τ {}, σ {} → {}",
            self.annealing_steps,
            self.lanczos_steps,
            self.cg_steps,
            self.tau.map_or("σ_y".to_string(), |t| t.to_string()),
            self.sigma_max,
            self.sigma_min
        )
    }
    fn optional_keys(&self) -> &'static [&'static str] {
        &["tau"]
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        super::linear_of(p, "daps-tweedie").map(|_| ())
    }
}

impl Sampler for TwistedSmcConfig {
    fn name(&self) -> &'static str {
        "twisted-smc"
    }
    fn nfe(&self) -> usize {
        TwistedSmcConfig::nfe(self)
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn validate(&self) -> Result<()> {
        TwistedSmcConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        twisted_smc(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} particles{} × {} levels × (1 + d_y ≤ {}) NFE, order {} (+{} NFE per step), + {} Lanczos, resample at ESS < {}·K, τ {}, σ {} → {}",
            self.particles,
            if self.pool { " per output, pooled" } else { "" },
            self.steps,
            self.max_dim_y,
            self.order,
            self.order - 1,
            self.lanczos_steps,
            self.ess_threshold,
            self.tau.map_or("σ_y".to_string(), |t| t.to_string()),
            self.sigma_max,
            self.sigma_min
        )
    }
    fn optional_keys(&self) -> &'static [&'static str] {
        &["tau"]
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        let m = p.measurement.y.elem_count() / p.measurement.y.dim(0)?;
        if m > self.max_dim_y {
            return Err(Error::config(format!(
                "twisted-smc: the measurement has {m} values per chain, more than max_dim_y = {}",
                self.max_dim_y
            )));
        }
        super::linear_of(p, "twisted-smc").map(|_| ())
    }
}

impl Sampler for DapsSmcConfig {
    fn name(&self) -> &'static str {
        "daps-smc"
    }
    fn nfe(&self) -> usize {
        DapsSmcConfig::nfe(self)
    }
    fn steps(&self) -> usize {
        self.annealing_steps
    }
    fn validate(&self) -> Result<()> {
        DapsSmcConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        daps_smc(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} particles × {} × {} NFE, resample at ESS < {}·K, τ {}, σ {} → {}",
            self.particles,
            self.annealing_steps,
            self.ode_steps,
            self.ess_threshold,
            self.tau.map_or("σ_y".to_string(), |t| t.to_string()),
            self.sigma_max,
            self.sigma_min
        )
    }
    fn optional_keys(&self) -> &'static [&'static str] {
        &["tau"]
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        super::linear_of(p, "daps-smc").map(|_| ())
    }
}

impl Sampler for McgdiffConfig {
    fn name(&self) -> &'static str {
        "mcgdiff"
    }
    fn nfe(&self) -> usize {
        self.steps * self.particles
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn validate(&self) -> Result<()> {
        McgdiffConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        mcgdiff(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} steps × {} particles, η {}, κ {}, σ {} → {}",
            self.steps, self.particles, self.eta, self.kappa, self.sigma_max, self.sigma_min
        )
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        super::particles::supports(p, "mcgdiff")
    }
}

impl Sampler for FpsConfig {
    fn name(&self) -> &'static str {
        "fps"
    }
    fn nfe(&self) -> usize {
        self.steps * self.particles
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn validate(&self) -> Result<()> {
        FpsConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        fps(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} steps × {} particles, c_rate {}, σ {} → {}",
            self.steps, self.particles, self.c_rate, self.sigma_max, self.sigma_min
        )
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        super::particles::supports(p, "fps")
    }
}

impl Sampler for ScoreAldConfig {
    fn name(&self) -> &'static str {
        "score-ald"
    }
    fn nfe(&self) -> usize {
        self.levels * self.steps_each
    }
    fn steps(&self) -> usize {
        self.levels
    }
    fn validate(&self) -> Result<()> {
        ScoreAldConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        score_ald(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} levels × {} steps, lr {}·σ², σ {} → {}",
            self.levels, self.steps_each, self.lr, self.sigma_max, self.sigma_min
        )
    }
}

impl Sampler for PnpDmConfig {
    fn name(&self) -> &'static str {
        "pnp-dm"
    }
    fn nfe(&self) -> usize {
        PnpDmConfig::nfe(self)
    }
    fn steps(&self) -> usize {
        self.iterations
    }
    fn validate(&self) -> Result<()> {
        PnpDmConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        pnp_dm(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} iterations, ρ {} × {}^k ≥ {}, EDM grid {} points {} → {}",
            self.iterations,
            self.rho0,
            self.rho_decay,
            self.rho_min,
            self.grid_steps,
            self.grid_sigma_max,
            self.grid_sigma_min
        )
    }
}

impl Sampler for DdrmConfig {
    fn name(&self) -> &'static str {
        "ddrm"
    }
    fn nfe(&self) -> usize {
        self.steps
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn validate(&self) -> Result<()> {
        DdrmConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        ddrm(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} steps, η {}, η_b {}, σ {} → {}",
            self.steps, self.eta, self.eta_b, self.sigma_max, self.sigma_min
        )
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        super::svd_of(p, "ddrm").map(|_| ())
    }
}

impl Sampler for DdnmConfig {
    fn name(&self) -> &'static str {
        "ddnm"
    }
    fn nfe(&self) -> usize {
        DdnmConfig::nfe(self)
    }
    fn steps(&self) -> usize {
        DdnmConfig::nfe(self)
    }
    fn validate(&self) -> Result<()> {
        DdnmConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        ddnm(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        let travel = if self.travel_repeat > 1 {
            format!(
                ", time travel l {} × r {}",
                self.travel_length, self.travel_repeat
            )
        } else {
            String::new()
        };
        format!(
            "{} steps, η {}, σ {} → {}{travel}",
            self.steps, self.eta, self.sigma_max, self.sigma_min
        )
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        super::svd_of(p, "ddnm").map(|_| ())
    }
}

impl Sampler for PigdmConfig {
    fn name(&self) -> &'static str {
        "pigdm"
    }
    fn nfe(&self) -> usize {
        self.steps
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn validate(&self) -> Result<()> {
        PigdmConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        pigdm(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} steps (+VJP), η {}, weight {}, σ {} → {}",
            self.steps, self.eta, self.weight, self.sigma_max, self.sigma_min
        )
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        super::linear_of(p, "pigdm").map(|_| ())
    }
}

impl Sampler for DiffpirConfig {
    fn name(&self) -> &'static str {
        "diffpir"
    }
    fn nfe(&self) -> usize {
        self.steps
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn validate(&self) -> Result<()> {
        DiffpirConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        diffpir(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!("{} steps, λ {}, ζ {}", self.steps, self.lambda, self.zeta)
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        super::linear_of(p, "diffpir").map(|_| ())
    }
}

impl Sampler for RedDiffConfig {
    fn name(&self) -> &'static str {
        "red-diff"
    }
    fn nfe(&self) -> usize {
        self.steps
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn validate(&self) -> Result<()> {
        RedDiffConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        red_diff(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} steps, Adam lr {}, λ {}, data weight {}",
            self.steps, self.lr, self.lambda, self.obs_weight
        )
    }
}

impl Sampler for LatentDapsConfig {
    fn name(&self) -> &'static str {
        "latent-daps"
    }
    fn nfe(&self) -> usize {
        LatentDapsConfig::nfe(self)
    }
    fn steps(&self) -> usize {
        self.annealing_steps
    }
    fn validate(&self) -> Result<()> {
        LatentDapsConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        latent_daps(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} × {} NFE, HMC {} steps, lr {:e}, lr_min_ratio {}, momentum {}, τ {}, clamp ±{}, σ {} → {}",
            self.annealing_steps,
            self.ode_steps,
            self.mcmc_steps,
            self.lr,
            self.lr_min_ratio,
            self.momentum,
            self.tau,
            self.grad_clamp,
            self.sigma_max,
            self.sigma_min
        )
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        super::latent_daps::latent_of(p).map(|_| ())
    }
}

impl Sampler for PsldConfig {
    fn name(&self) -> &'static str {
        "psld"
    }
    fn nfe(&self) -> usize {
        self.steps
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn validate(&self) -> Result<()> {
        PsldConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        psld(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        format!(
            "{} DDIM steps (+VJP through D, decoder, encoder), η {}, ω {}, γ {}",
            self.steps, self.eta, self.omega, self.gamma
        )
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        super::psld::psld_parts(p).map(|_| ())
    }
}

impl Sampler for ResampleConfig {
    fn name(&self) -> &'static str {
        "resample"
    }
    fn nfe(&self) -> usize {
        ResampleConfig::nfe(self)
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn validate(&self) -> Result<()> {
        ResampleConfig::validate(self)
    }
    fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        resample(p, self, x_shape, noise, obs)
    }
    fn describe(&self) -> String {
        ResampleConfig::describe(self)
    }
    fn optional_keys(&self) -> &'static [&'static str] {
        &["tol"]
    }
    fn supports(&self, p: &Problem) -> Result<()> {
        super::resample::resample_prior(p).map(|_| ())
    }
}

impl Method {
    /// A latent prior is solved by the latent samplers only; the error names the mismatch.
    fn fits_prior(&self, p: &Problem) -> Result<()> {
        let latent = matches!(
            self,
            Method::LatentDaps(_) | Method::Psld(_) | Method::Resample(_)
        );
        if p.prior.as_latent().is_some() && !latent {
            return Err(Error::config(format!(
                "{} works in pixel space; {} is a latent diffusion prior: use --method latent-daps, \
                 psld or resample",
                self.name(),
                p.prior.name()
            )));
        }
        Ok(())
    }

    /// The default settings of the sampler registered as `name`.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok((method_info(name)?.default)())
    }

    /// Settings from a TOML table (a preset section): `method = NAME` (default `daps`) and that
    /// sampler's fields, the rest taking the registered defaults.
    pub fn from_table(table: &toml::Table) -> Result<Self> {
        let mut t = table.clone();
        let name = match t.remove("method") {
            None => "daps".to_string(),
            Some(toml::Value::String(s)) => s,
            Some(v) => return Err(Error::config(format!("method must be a name, got {v}"))),
        };
        let mut m = Self::from_name(&name)?;
        for (k, v) in t {
            let shown = v.to_string();
            m = m.assign(&k, v, &shown)?;
        }
        Ok(m)
    }

    /// The registry name.
    pub fn name(&self) -> &'static str {
        dispatch!(self, c => c.name())
    }

    /// Name and budget, as tables print it: `DAPS-50`, `DPS-1000`.
    pub fn label(&self) -> String {
        format!("{}-{}", self.name().to_uppercase(), self.nfe())
    }

    /// Network evaluations per chain.
    pub fn nfe(&self) -> usize {
        dispatch!(self, c => c.nfe())
    }

    /// Outer steps (what an [`Observer`] is told).
    pub fn steps(&self) -> usize {
        dispatch!(self, c => c.steps())
    }

    pub fn validate(&self) -> Result<()> {
        dispatch!(self, c => c.validate())
    }

    /// Whether this sampler can solve `p`; the error says what it lacks.
    pub fn supports(&self, p: &Problem) -> Result<()> {
        self.fits_prior(p)?;
        dispatch!(self, c => c.supports(p))
    }

    /// One line of the main settings.
    pub fn describe(&self) -> String {
        dispatch!(self, c => c.describe())
    }

    /// Draws `x_shape[0]` chains from the posterior of `p`.
    pub fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        self.fits_prior(p)?;
        dispatch!(self, c => c.run(p, x_shape, noise, obs))
    }

    /// [`Method::run`] where the prior is: the measurement is moved to its device, the noise is
    /// [`crate::noise::for_device`]`(device, seed)` and the samples come back to the CPU. On the
    /// CPU this is `run` with `SeededNoise::new(seed)`.
    pub fn run_on_device(
        &self,
        p: &Problem,
        x_shape: &[usize],
        seed: u64,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        let dev = p.prior.device();
        let m = Measurement {
            y: p.measurement.y.to_device(dev)?,
            sigma_y: p.measurement.sigma_y,
        };
        let on_device = Problem {
            measurement: &m,
            ..*p
        };
        let mut noise = crate::noise::for_device(dev, seed)?;
        let x = self.run(&on_device, x_shape, &mut *noise, obs)?;
        Ok(x.to_device(&candle_core::Device::Cpu)?)
    }

    /// The settings as a TOML table (without `method`).
    pub fn settings(&self) -> toml::Table {
        // Invariant: the configs are plain structs of numbers, strings and enums.
        dispatch!(self, c => toml::Table::try_from(c).expect("configs serialise to TOML"))
    }

    /// Sets one field; `value` is read as TOML (or else as a string).
    pub fn set(&self, key: &str, value: &str) -> Result<Self> {
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        self.assign(key, parsed, value)
    }

    /// The names of the settings, including optional ones that are unset.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.settings().keys().cloned().collect();
        for k in dispatch!(self, c => c.optional_keys()) {
            if !keys.iter().any(|have| have == k) {
                keys.push(k.to_string());
            }
        }
        keys
    }

    fn assign(&self, key: &str, value: toml::Value, shown: &str) -> Result<Self> {
        let mut table = self.settings();
        let known = self.keys();
        if !known.iter().any(|k| k == key) {
            let keys: Vec<&str> = known.iter().map(|k| k.as_str()).collect();
            return Err(Error::config(format!(
                "unknown sampler setting '{key}' for {} (settings: {})",
                self.name(),
                keys.join(", ")
            )));
        }
        table.insert(key.to_string(), value);
        let bad = |e: toml::de::Error| Error::config(format!("bad value '{shown}' for {key}: {e}"));
        dispatch!(self, c, wrap => Ok(wrap(retyped(c, table).map_err(bad)?)))
    }
}

/// `table` read as the same config type as `_like`.
fn retyped<T: DeserializeOwned>(
    _like: &T,
    table: toml::Table,
) -> std::result::Result<T, toml::de::Error> {
    table.try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_method_round_trips_its_name() {
        for info in METHODS {
            let m = Method::from_name(info.name).unwrap();
            assert_eq!(m.name(), info.name);
            m.validate().unwrap();
            assert_eq!(m.nfe() == 0, info.name == "daps-exact", "{}", info.name);
        }
        let e = Method::from_name("ddrn").unwrap_err().to_string();
        assert!(
            e.contains("unknown method 'ddrn'") && e.contains("ddrm"),
            "{e}"
        );
    }

    #[test]
    fn tables_name_their_method_and_fields() {
        let t: toml::Table = toml::from_str("method = \"dps\"\nsteps = 50\nzeta = 2.0").unwrap();
        let m = Method::from_table(&t).unwrap();
        assert_eq!(
            m,
            Method::Dps(DpsConfig {
                steps: 50,
                zeta: 2.0,
                clip: None
            })
        );
        // An optional setting that is unset by default can still be given.
        let Method::Dps(c) = m.set("clip", "1.0").unwrap() else {
            panic!()
        };
        assert_eq!(c.clip, Some(1.0));
        assert_eq!((m.label(), m.nfe()), ("DPS-50".to_string(), 50));
        let t: toml::Table = toml::from_str("annealing_steps = 7\node_steps = 2").unwrap();
        let m = Method::from_table(&t).unwrap();
        assert_eq!(
            (m.name(), m.nfe(), m.label()),
            ("daps", 14, "DAPS-14".into())
        );
        let t: toml::Table = toml::from_str("method = \"dps\"\nlr = 1.0").unwrap();
        let e = Method::from_table(&t).unwrap_err().to_string();
        assert!(
            e.contains("unknown sampler setting 'lr' for dps") && e.contains("zeta"),
            "{e}"
        );
    }

    #[test]
    fn set_reads_toml_values_field_by_field() {
        let m = Method::from_name("daps").unwrap();
        let m = m
            .set("x0_method", "hmc")
            .unwrap()
            .set("lr", "3e-5")
            .unwrap();
        let Method::Daps(c) = &m else { panic!() };
        assert_eq!((c.x0_method, c.lr), (X0Method::Hmc, 3e-5));
        let e = m.set("mcmc_steps", "many").unwrap_err().to_string();
        assert!(e.contains("bad value 'many' for mcmc_steps"), "{e}");
        let d = DpsConfig {
            steps: 1000,
            zeta: 0.4,
            clip: Some(1.0),
        }
        .with_steps(50);
        assert_eq!(
            (d.steps, d.zeta, d.clip),
            (50, 0.4 * 1000.0 / 50.0, Some(1.0))
        );
    }
}
