//! Training an ADM (guided-diffusion `UNetModel`) ε-prediction prior, and the EDM Heun sampler.
//!
//! The network is always used through [`VpDenoiser`]'s preconditioning (x_in = c_in(σ)·x,
//! timestep c_noise(σ) = 999·t(σ), D = x − σ·ε), so a trained model is a standard ε-prediction
//! ADM that loads with `--prior adm:DIR/model.safetensors` (architecture in `DIR/model.json`).
//!
//! Objectives ([`Objective`]), with n ~ N(0, I) and x = x0 + σ·n:
//! - `ddpm` (default): t ~ U(t_min, 1), σ = σ_VP(t), loss ‖ε_θ − n‖² (EDM's "VP" training, the
//!   continuous-time DDPM ε objective). It covers every σ up to σ_VP(1) ≈ 152, which DAPS needs
//!   (its annealing starts at σ = 100).
//! - `edm`: ln σ ~ N(P_mean, P_std²), loss λ(σ)·‖D − x0‖² with λ = (σ² + σ_d²)/(σ·σ_d)²,
//!   i.e. (1 + σ²/σ_d²)·‖ε_θ − n‖². It rarely sees σ > 10, where an ε-network's error is
//!   multiplied by σ in D: prefer `ddpm` for DAPS.
//!
//! Optimiser: AdamW with candle-nn's update formula (our own implementation, because candle's
//! `AdamW` keeps its moments private and they must be saved for an exact resume), linear
//! warm-up, gradient clipping by global norm. EMA of the weights as in EDM (half-life in images,
//! ramped up as a fraction of the images seen); the EMA is the saved prior.
//!
//! Every random draw is a function of (seed, step), so a resumed run is bit-identical to an
//! uninterrupted one.

use crate::data::{DataSpec, ImageSet};
use crate::error::{Error, Result};
use crate::io::{atomic_write, io_err};
use crate::nn::checkpoint;
use crate::noise::{fill_normal, mix, stream};
use crate::prior::adm::{AdmConfig, AdmUnet};
use crate::prior::vp::{TimestepNet, VpDenoiser, VpSchedule};
use crate::sampler::heun::{heun_sample, EdmGrid};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// The EMA weights (the prior), PyTorch names.
pub const MODEL_FILE: &str = "model.safetensors";
/// The architecture, as guided-diffusion `create_model` arguments.
pub const CONFIG_FILE: &str = "model.json";
/// Raw weights, Adam moments, EMA, step and settings.
pub const STATE_FILE: &str = "train-state.safetensors";
/// Mean loss per window of steps.
pub const LOG_FILE: &str = "log.csv";

const STATE_VERSION: u64 = 1;
const TAG_INIT: u64 = 0x1417;
const TAG_NOISE: u64 = 0x4015e;
const TAG_SIGMA: u64 = 0x5167a;
const TAG_PERM: u64 = 0x9e41;
const TAG_SAMPLES: u64 = 0x5a3b;

/// Architecture presets for `daps train --preset`.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "digits32",
        "1×32×32, 32 channels, mult 1,2,2, 1 res block, attention at 8×8 (the default digits prior)",
    ),
    (
        "small64",
        "3×64×64, 64 channels, mult 1,2,2,2, 2 res blocks, attention at 16×16 and 8×8",
    ),
    (
        "tiny",
        "1×8×8, 32 channels, mult 1,1, 1 res block (tests)",
    ),
];

/// An architecture preset by name (see [`PRESETS`]). All are unconditional ε-prediction UNets
/// without learned σ, with scale-shift norm and conv resampling.
pub fn preset(name: &str) -> Result<AdmConfig> {
    let base = AdmConfig {
        image_size: 32,
        in_channels: 1,
        model_channels: 32,
        out_channels: 1,
        num_res_blocks: 1,
        attention_ds: vec![4],
        channel_mult: vec![1.0, 2.0, 2.0],
        num_heads: 1,
        num_head_channels: Some(32),
        num_heads_upsample: None,
        use_scale_shift_norm: true,
        resblock_updown: false,
        conv_resample: true,
        use_new_attention_order: false,
    };
    let cfg = match name {
        "digits32" => base,
        "small64" => AdmConfig {
            image_size: 64,
            in_channels: 3,
            out_channels: 3,
            model_channels: 64,
            num_res_blocks: 2,
            attention_ds: vec![4, 8],
            channel_mult: vec![1.0, 2.0, 2.0, 2.0],
            ..base
        },
        "tiny" => AdmConfig {
            image_size: 8,
            attention_ds: vec![],
            channel_mult: vec![1.0, 1.0],
            ..base
        },
        other => {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            return Err(Error::config(format!(
                "unknown preset '{other}' (expected one of {})",
                names.join(", ")
            )));
        }
    };
    cfg.validate()?;
    Ok(cfg)
}

/// `cfg` with another image size and channel count (the output follows the input).
pub fn with_shape(cfg: &AdmConfig, image_size: usize, channels: usize) -> Result<AdmConfig> {
    let cfg = AdmConfig {
        image_size,
        in_channels: channels,
        out_channels: if cfg.learn_sigma() {
            2 * channels
        } else {
            channels
        },
        // attention stays at the same downsampling rates
        ..cfg.clone()
    };
    if image_size == 0 || !image_size.is_multiple_of(cfg.spatial_divisor()) {
        return Err(Error::config(format!(
            "image size {image_size} is not a multiple of {} for this architecture",
            cfg.spatial_divisor()
        )));
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The guided-diffusion `create_model` arguments for `cfg`, as [`AdmConfig::from_json_file`]
/// reads them.
pub fn adm_config_json(cfg: &AdmConfig) -> Value {
    let list = |v: Vec<String>| v.join(",");
    json!({
        "image_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "num_channels": cfg.model_channels,
        "num_res_blocks": cfg.num_res_blocks,
        "channel_mult": list(cfg.channel_mult.iter().map(|m| m.to_string()).collect()),
        "learn_sigma": cfg.learn_sigma(),
        "class_cond": false,
        "attention_resolutions": list(cfg.attention_ds.iter().map(|d| (cfg.image_size / d).to_string()).collect()),
        "num_heads": cfg.num_heads,
        "num_head_channels": cfg.num_head_channels.map_or(-1, |h| h as i64),
        "num_heads_upsample": cfg.num_heads_upsample.map_or(-1, |h| h as i64),
        "use_scale_shift_norm": cfg.use_scale_shift_norm,
        "resblock_updown": cfg.resblock_updown,
        "use_new_attention_order": cfg.use_new_attention_order,
        "dropout": 0.0,
        "use_checkpoint": false,
        "use_fp16": false,
        "prediction": "epsilon",
        "noise_schedule": "VP linear beta 0.1..20, timestep = 999·t(sigma)",
        // The training images lie in [−1, 1]: loaders clamp D there (`VpDenoiser::with_clip`).
        "clip_denoised": true,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Continuous-time DDPM ε loss, t ~ U(t_min, 1) (the default).
    #[default]
    Ddpm,
    /// EDM: log-normal σ, EDM loss weighting.
    Edm,
}

impl std::str::FromStr for Objective {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ddpm" => Ok(Objective::Ddpm),
            "edm" => Ok(Objective::Edm),
            o => Err(Error::config(format!(
                "unknown objective '{o}' (expected ddpm or edm)"
            ))),
        }
    }
}

/// Everything that defines a training run; saved with the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// `digits` or a folder (see [`DataSpec`]).
    pub data: String,
    /// The architecture as `create_model` arguments ([`adm_config_json`]).
    pub arch: Value,
    pub objective: Objective,
    /// EDM: ln σ ~ N(p_mean, p_std²).
    pub p_mean: f64,
    pub p_std: f64,
    /// EDM: σ_data of the loss weighting.
    pub sigma_data: f64,
    /// DDPM: smallest t.
    pub t_min: f64,
    pub batch_size: usize,
    /// Total optimisation steps.
    pub steps: u64,
    pub lr: f64,
    /// Linear learning-rate warm-up over this many steps.
    pub warmup_steps: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f64,
    /// EMA half-life in thousands of images.
    pub ema_halflife_kimg: f64,
    /// The half-life is at most this fraction of the images seen (EDM's ramp-up).
    pub ema_rampup: Option<f64>,
    pub seed: u64,
    pub checkpoint_every: u64,
    /// Samples in the grid saved at each checkpoint (0: none) and their Heun steps.
    pub sample_count: usize,
    pub sample_steps: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: "digits".into(),
            // Invariant: digits32 is a built-in preset.
            arch: adm_config_json(&preset("digits32").expect("preset")),
            objective: Objective::Ddpm,
            p_mean: -1.2,
            p_std: 1.2,
            sigma_data: 0.5,
            t_min: 1e-5,
            batch_size: 32,
            steps: 10_000,
            lr: 5e-4,
            warmup_steps: 200,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            grad_clip: 1.0,
            ema_halflife_kimg: 500.0,
            ema_rampup: Some(0.05),
            seed: 0,
            checkpoint_every: 200,
            sample_count: 16,
            sample_steps: 10,
        }
    }
}

impl TrainConfig {
    pub fn adm(&self) -> Result<AdmConfig> {
        AdmConfig::from_create_model_args(&self.arch)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::config(format!("training: {m}")));
        let arch = self.adm()?;
        if arch.learn_sigma() {
            return bad("learn_sigma models are not trained here (ε output only)");
        }
        if self.batch_size == 0 {
            return bad("batch size 0");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("learning rate must be > 0");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("Adam betas must be in [0, 1)");
        }
        if self.grad_clip < 0.0 || self.weight_decay < 0.0 || self.eps <= 0.0 {
            return bad("negative grad clip or weight decay, or eps ≤ 0");
        }
        if !(self.t_min > 0.0 && self.t_min < 1.0) || self.p_std <= 0.0 || self.sigma_data <= 0.0 {
            return bad("need 0 < t_min < 1, p_std > 0, sigma_data > 0");
        }
        if self.ema_halflife_kimg < 0.0 || self.ema_rampup.is_some_and(|r| r < 0.0) {
            return bad("negative EMA half-life or ramp-up");
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint interval 0");
        }
        if self.sample_count > 0 && self.sample_steps == 0 {
            return bad("sample steps 0");
        }
        Ok(())
    }
}

/// Learning rate at (0-based) step `step`: linear warm-up from lr/warmup to lr.
pub(crate) fn lr_at(cfg: &TrainConfig, step: u64) -> f64 {
    if cfg.warmup_steps == 0 {
        cfg.lr
    } else {
        cfg.lr * ((step + 1) as f64 / cfg.warmup_steps as f64).min(1.0)
    }
}

/// EDM's EMA decay for one step of `batch` images after `nimg` images:
/// h = halflife_kimg·1000, h ← min(h, rampup·nimg), β = 0.5^(batch / max(h, 1e-8)).
pub fn ema_beta(batch: usize, nimg: u64, halflife_kimg: f64, rampup: Option<f64>) -> f64 {
    let mut h = halflife_kimg * 1000.0;
    if let Some(r) = rampup {
        h = h.min(nimg as f64 * r);
    }
    0.5f64.powf(batch as f64 / h.max(1e-8))
}

/// ema ← β·ema + (1 − β)·θ.
pub fn ema_update(ema: &Tensor, theta: &Tensor, beta: f64) -> Result<Tensor> {
    Ok(((ema * beta)? + (theta * (1.0 - beta))?)?)
}

/// σ_VP(t) = √(exp(β_d·t²/2 + β_min·t) − 1) for the linear schedule.
pub fn vp_sigma(schedule: VpSchedule, t: f64) -> f64 {
    match schedule {
        VpSchedule::Linear { beta_min, beta_d } => {
            ((0.5 * beta_d * t * t + beta_min * t).exp() - 1.0).sqrt()
        }
        VpSchedule::ScaledLinear { beta_min, beta_max } => {
            let b = beta_min.sqrt();
            let a = beta_max.sqrt() - b;
            let integral = ((a * t + b).powi(3) - b.powi(3)) / (3.0 * a);
            (integral.exp() - 1.0).sqrt()
        }
    }
}

/// Initial weights, like PyTorch's defaults for `create_model`: conv/linear weights and biases
/// U(±1/√fan_in), GroupNorm weight 1 and bias 0, and guided-diffusion's `zero_module` layers
/// (ResBlock `out_layers.3`, attention `proj_out`, final `out.2`) zero. Seeded per parameter.
pub(crate) fn init_weights(
    params: &checkpoint::ParamList,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let shapes: HashMap<&str, &Vec<usize>> = params.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let mut out = HashMap::with_capacity(params.len());
    for (i, (name, shape)) in params.iter().enumerate() {
        let numel: usize = shape.iter().product();
        let zero = name.contains(".out_layers.3.")
            || name.contains(".proj_out.")
            || name.starts_with("out.2.");
        let (prefix, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let weight_shape = shapes
            .get(format!("{prefix}.weight").as_str())
            .copied()
            .unwrap_or(shape);
        let vals: Vec<f32> = if weight_shape.len() == 1 {
            // GroupNorm
            vec![if leaf == "weight" { 1.0 } else { 0.0 }; numel]
        } else if zero {
            vec![0.0; numel]
        } else {
            let fan_in: usize = weight_shape[1..].iter().product();
            let bound = 1.0 / (fan_in as f64).sqrt();
            let mut rng = stream(seed, TAG_INIT, i as u64);
            (0..numel)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        };
        out.insert(
            name.clone(),
            Tensor::from_vec(vals, shape.as_slice(), device)?,
        );
    }
    Ok(out)
}

struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    ema: Tensor,
}

/// Statistics of one optimisation step.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Steps done after this one.
    pub step: u64,
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    version: u64,
    step: u64,
    config: TrainConfig,
    data_len: usize,
    data_fingerprint: String,
    seconds: f64,
}

/// An ADM prior being trained.
pub struct Trainer {
    cfg: TrainConfig,
    arch: AdmConfig,
    data: ImageSet,
    den: VpDenoiser<AdmUnet>,
    params: Vec<Param>,
    step: u64,
    /// Loss and gradient norm of every step done.
    history: Vec<[f32; 2]>,
    /// Training wall time over all sessions.
    seconds: f64,
    device: Device,
    perm: Option<(u64, Vec<usize>)>,
    fingerprint: u64,
}

impl Trainer {
    /// A fresh run on `data` (whose channels and size must fit the architecture).
    pub fn new(cfg: TrainConfig, data: ImageSet, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let arch = cfg.adm()?;
        let init = init_weights(&arch.param_shapes()?, cfg.seed, device)?;
        let zeros: HashMap<String, Tensor> = init
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.zeros_like()?)))
            .collect::<Result<_>>()?;
        let ema = init.clone();
        Self::build(
            cfg,
            arch,
            data,
            device,
            [init, zeros.clone(), zeros, ema],
            0,
            vec![],
            0.0,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        cfg: TrainConfig,
        arch: AdmConfig,
        data: ImageSet,
        device: &Device,
        [theta, m, v, ema]: [HashMap<String, Tensor>; 4],
        step: u64,
        history: Vec<[f32; 2]>,
        seconds: f64,
    ) -> Result<Self> {
        let (n, c, h, w) = data.images().dims4()?;
        if n == 0 {
            return Err(Error::config("training data: no images"));
        }
        if c != arch.in_channels || h != arch.image_size || w != arch.image_size {
            return Err(Error::config(format!(
                "training data {} is {c}×{h}×{w}; the model takes {}×{}×{}",
                data.name(),
                arch.in_channels,
                arch.image_size,
                arch.image_size
            )));
        }
        let varmap = VarMap::new();
        let net = AdmUnet::new(&arch, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        // Invariant: the fresh VarMap's lock cannot be poisoned (no other user).
        let vars = varmap.data().lock().unwrap().clone();
        let mut params = Vec::new();
        for (name, _) in arch.param_shapes()? {
            let var = vars
                .get(&name)
                .cloned()
                .ok_or_else(|| Error::msg(format!("parameter {name} not created")))?;
            let get = |map: &HashMap<String, Tensor>, what: &str| {
                map.get(&name)
                    .ok_or_else(|| Error::msg(format!("training state: no {what} for {name}")))
                    .and_then(|t| {
                        crate::error::expect_shape(&name, t.dims(), var.dims())?;
                        Ok(t.to_device(device)?.to_dtype(DType::F32)?)
                    })
            };
            var.set(&get(&theta, "weights")?)?;
            params.push(Param {
                m: get(&m, "Adam first moment")?,
                v: get(&v, "Adam second moment")?,
                ema: get(&ema, "EMA")?,
                name,
                var,
            });
        }
        let fingerprint = data.fingerprint()?;
        Ok(Self {
            den: VpDenoiser::new(net),
            cfg,
            arch,
            data,
            params,
            step,
            history,
            seconds,
            device: device.clone(),
            perm: None,
            fingerprint,
        })
    }

    /// Reads the settings saved in `dir` (for loading the data before [`Trainer::resume`]).
    pub fn saved_config(dir: &Path) -> Result<TrainConfig> {
        Ok(read_state(dir)?.0.config)
    }

    /// Continues the run saved in `dir`, loading its data from the saved data spec.
    pub fn resume(dir: &Path, device: &Device) -> Result<Self> {
        let cfg = Self::saved_config(dir)?;
        let arch = cfg.adm()?;
        let spec: DataSpec = cfg.data.parse()?;
        let data = spec.load(arch.image_size, Some(arch.in_channels))?;
        Self::resume_with_data(dir, data, device)
    }

    /// Continues the run saved in `dir` on `data`, which must be the data it was trained on.
    pub fn resume_with_data(dir: &Path, data: ImageSet, device: &Device) -> Result<Self> {
        let (meta, mut t) = read_state(dir)?;
        let fp = format!("{:016x}", data.fingerprint()?);
        if data.len() != meta.data_len || fp != meta.data_fingerprint {
            return Err(Error::config(format!(
                "the training data ({}, {} images) differ from those of the saved run ({} images)",
                data.name(),
                data.len(),
                meta.data_len
            )));
        }
        let mut part = |prefix: &str| -> HashMap<String, Tensor> {
            let keys: Vec<String> = t
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect();
            keys.into_iter()
                .map(|k| {
                    // Invariant: k was taken from t's keys just above.
                    let v = t.remove(&k).unwrap();
                    (k[prefix.len()..].to_string(), v)
                })
                .collect()
        };
        let maps = [
            part("param."),
            part("adam_m."),
            part("adam_v."),
            part("ema."),
        ];
        let hist = part("history.");
        let history = match hist.get("loss_gradnorm") {
            Some(h) => h
                .to_vec2::<f32>()?
                .into_iter()
                .map(|r| [r[0], r[1]])
                .collect(),
            None => vec![],
        };
        if history.len() as u64 != meta.step {
            return Err(Error::msg(format!(
                "{}: history has {} steps, state says {}",
                dir.join(STATE_FILE).display(),
                history.len(),
                meta.step
            )));
        }
        let arch = meta.config.adm()?;
        Self::build(
            meta.config,
            arch,
            data,
            device,
            maps,
            meta.step,
            history,
            meta.seconds,
        )
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Changes the total number of steps (e.g. to extend a resumed run).
    pub fn set_total_steps(&mut self, steps: u64) {
        self.cfg.steps = steps;
    }

    /// Changes the checkpoint interval and sample grid (they do not affect the weights).
    pub fn set_checkpointing(&mut self, every: u64, sample_count: usize, sample_steps: usize) {
        self.cfg.checkpoint_every = every.max(1);
        self.cfg.sample_count = sample_count;
        self.cfg.sample_steps = sample_steps.max(1);
    }

    pub fn arch(&self) -> &AdmConfig {
        &self.arch
    }

    pub fn steps_done(&self) -> u64 {
        self.step
    }

    pub fn history(&self) -> &[[f32; 2]] {
        &self.history
    }

    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    pub fn add_seconds(&mut self, s: f64) {
        self.seconds += s;
    }

    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    pub fn data(&self) -> &ImageSet {
        &self.data
    }

    /// The data indices of step `step`: consecutive slices of one seeded permutation per epoch.
    pub(crate) fn batch_indices(&mut self, step: u64) -> Vec<usize> {
        let n = self.data.len() as u64;
        let b = self.cfg.batch_size as u64;
        (0..b)
            .map(|i| {
                let k = step * b + i;
                let (epoch, pos) = (k / n, (k % n) as usize);
                if self.perm.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    self.perm = Some((epoch, permutation(n as usize, self.cfg.seed, epoch)));
                }
                // Invariant: set just above; pos < n, the permutation's length.
                self.perm.as_ref().unwrap().1[pos]
            })
            .collect()
    }

    /// Per-sample noise levels for step `step` (a fixed function of seed and step).
    pub fn sigmas_at(&self, step: u64, n: usize) -> Vec<f64> {
        self.draw_sigmas(self.cfg.seed, step, n)
    }

    fn draw_sigmas(&self, seed: u64, counter: u64, n: usize) -> Vec<f64> {
        let mut rng = stream(seed, TAG_SIGMA, counter);
        (0..n)
            .map(|_| match self.cfg.objective {
                Objective::Ddpm => {
                    let t = rng.random_range(self.cfg.t_min..1.0);
                    vp_sigma(self.den.schedule(), t)
                }
                Objective::Edm => {
                    let z: f64 = rng.sample(StandardNormal);
                    (self.cfg.p_mean + self.cfg.p_std * z).exp()
                }
            })
            .collect()
    }

    fn noise_at(&self, step: u64, shape: &[usize]) -> Result<Tensor> {
        let mut buf = vec![0f32; shape.iter().product()];
        fill_normal(&mut buf, mix(self.cfg.seed ^ TAG_NOISE), step);
        Ok(Tensor::from_vec(buf, shape, &self.device)?)
    }

    /// The weighted loss of the current weights on clean images `x0` with noise `n` at `sigmas`.
    pub fn loss(&self, x0: &Tensor, n: &Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let b = x0.dim(0)?;
        let col = |v: Vec<f32>| Tensor::from_vec(v, (b, 1, 1, 1), &self.device);
        let s32: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        let c_in: Vec<f32> = s32.iter().map(|&s| self.den.c_in(s)).collect();
        let c_in_sigma: Vec<f32> = c_in.iter().zip(&s32).map(|(c, s)| c * s).collect();
        let t: Vec<f32> = s32.iter().map(|&s| self.den.c_noise(s)).collect();
        let weights: Vec<f32> = sigmas
            .iter()
            .map(|&s| match self.cfg.objective {
                Objective::Ddpm => 1.0,
                Objective::Edm => {
                    let sd2 = self.cfg.sigma_data * self.cfg.sigma_data;
                    ((s * s + sd2) / sd2) as f32
                }
            })
            .collect();
        let x0 = x0.to_device(&self.device)?;
        let x_in = (x0.broadcast_mul(&col(c_in)?)? + n.broadcast_mul(&col(c_in_sigma)?)?)?;
        let t = Tensor::from_vec(t, b, &self.device)?;
        let eps = self
            .den
            .net()
            .forward_t(&x_in, &t)?
            .narrow(1, 0, self.arch.in_channels)?;
        let per = (eps - n)?.sqr()?.flatten_from(1)?.mean(1)?;
        let w = Tensor::from_vec(weights, b, &self.device)?;
        Ok((per * w)?.mean(0)?)
    }

    /// The loss on a fixed batch with noise and σ drawn from `seed` (no update).
    pub fn eval_loss(&self, x0: &Tensor, seed: u64) -> Result<f64> {
        let dims = x0.dims().to_vec();
        let mut buf = vec![0f32; dims.iter().product()];
        fill_normal(&mut buf, mix(seed ^ TAG_NOISE), u64::MAX);
        let n = Tensor::from_vec(buf, dims.as_slice(), &self.device)?;
        let sig = self.draw_sigmas(seed, u64::MAX, dims[0]);
        Ok(self.loss(x0, &n, &sig)?.to_scalar::<f32>()? as f64)
    }

    /// One optimisation step: loss, backward, global-norm clipping, AdamW, EMA.
    pub fn step(&mut self) -> Result<StepStats> {
        let step = self.step;
        let idx = self.batch_indices(step);
        let x0 = self.data.batch(&idx)?;
        let n = self.noise_at(step, x0.dims())?;
        let sig = self.sigmas_at(step, idx.len());
        let loss = self.loss(&x0, &n, &sig)?;
        let loss_v = loss.to_scalar::<f32>()? as f64;
        if !loss_v.is_finite() {
            return Err(Error::msg(format!(
                "training step {}: the loss is not finite ({loss_v}); nothing was updated",
                step + 1
            )));
        }
        let grads = loss.backward()?;
        let mut gs = Vec::with_capacity(self.params.len());
        let mut sq = 0f64;
        for p in &self.params {
            // Gradients and variables enter the update detached: the moments and the EMA made
            // from them would otherwise keep the step's autograd graph alive, a leak per step.
            let g = match grads.get(p.var.as_tensor()) {
                Some(g) => g.detach(),
                None => p.var.zeros_like()?,
            };
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            gs.push(g);
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Err(Error::msg(format!(
                "training step {}: non-finite gradient; nothing was updated",
                step + 1
            )));
        }
        let clip = self.cfg.grad_clip;
        let scale = if clip > 0.0 && norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        let lr = lr_at(&self.cfg, step);
        let beta = ema_beta(
            self.cfg.batch_size,
            step * self.cfg.batch_size as u64,
            self.cfg.ema_halflife_kimg,
            self.cfg.ema_rampup,
        );
        let hp = AdamHyper {
            lr,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: self.cfg.weight_decay,
            t: step + 1,
        };
        for (p, g) in self.params.iter_mut().zip(gs) {
            let g = if scale != 1.0 { (g * scale)? } else { g };
            let theta_now = p.var.as_tensor().detach();
            let (theta, m, v) = adamw_update(&theta_now, &p.m, &p.v, &g, &hp)?;
            p.var.set(&theta)?;
            p.m = m;
            p.v = v;
            p.ema = ema_update(&p.ema, &p.var.as_tensor().detach(), beta)?;
        }
        self.step += 1;
        self.history.push([loss_v as f32, norm as f32]);
        Ok(StepStats {
            step: self.step,
            loss: loss_v,
            grad_norm: norm,
            lr,
        })
    }

    /// The current raw weights (PyTorch names).
    pub fn weights(&self) -> Result<HashMap<String, Tensor>> {
        self.params
            .iter()
            .map(|p| Ok((p.name.clone(), p.var.as_tensor().copy()?)))
            .collect()
    }

    /// The EMA weights (PyTorch names).
    pub fn ema_weights(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.ema.clone()))
            .collect()
    }

    /// The EMA network as an EDM denoiser (what `model.safetensors` holds).
    pub fn ema_denoiser(&self) -> Result<VpDenoiser<AdmUnet>> {
        let vb = VarBuilder::from_tensors(self.ema_weights(), DType::F32, &self.device);
        Ok(VpDenoiser::new(AdmUnet::new(&self.arch, vb)?))
    }

    /// Writes `model.safetensors` (EMA), `model.json`, `train-state.safetensors` and `log.csv`
    /// into `dir`, each through a temporary file and a rename.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let cpu = |t: &Tensor| t.to_device(&Device::Cpu);
        let ema: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|p| Ok((p.name.clone(), cpu(&p.ema)?)))
            .collect::<Result<_>>()?;
        atomic_safetensors(&ema, &dir.join(MODEL_FILE))?;
        let cfg_text = serde_json::to_string_pretty(&adm_config_json(&self.arch))
            .map_err(|e| Error::msg(e.to_string()))?;
        atomic_write(&dir.join(CONFIG_FILE), cfg_text.as_bytes())?;

        let mut state = HashMap::new();
        for p in &self.params {
            state.insert(format!("param.{}", p.name), cpu(p.var.as_tensor())?);
            state.insert(format!("adam_m.{}", p.name), cpu(&p.m)?);
            state.insert(format!("adam_v.{}", p.name), cpu(&p.v)?);
            state.insert(format!("ema.{}", p.name), cpu(&p.ema)?);
        }
        if !self.history.is_empty() {
            let flat: Vec<f32> = self.history.iter().flatten().copied().collect();
            state.insert(
                "history.loss_gradnorm".into(),
                Tensor::from_vec(flat, (self.history.len(), 2), &Device::Cpu)?,
            );
        }
        let meta = Meta {
            version: STATE_VERSION,
            step: self.step,
            config: self.cfg.clone(),
            data_len: self.data.len(),
            data_fingerprint: format!("{:016x}", self.fingerprint),
            seconds: self.seconds,
        };
        let meta = serde_json::to_vec(&meta).map_err(|e| Error::msg(e.to_string()))?;
        let len = meta.len();
        state.insert("meta".into(), Tensor::from_vec(meta, len, &Device::Cpu)?);
        atomic_safetensors(&state, &dir.join(STATE_FILE))?;
        atomic_write(&dir.join(LOG_FILE), self.log_csv(100).as_bytes())
    }

    /// Mean loss and gradient norm per window of `window` steps, as CSV.
    pub(crate) fn log_csv(&self, window: usize) -> String {
        let mut s = String::from("step,loss,grad_norm\n");
        for (i, w) in self.history.chunks(window.max(1)).enumerate() {
            let n = w.len() as f64;
            let loss = w.iter().map(|r| r[0] as f64).sum::<f64>() / n;
            let g = w.iter().map(|r| r[1] as f64).sum::<f64>() / n;
            s += &format!("{},{loss:.6},{g:.4}\n", i * window.max(1) + w.len());
        }
        s
    }

    /// Unconditional samples of the EMA network (`sample_count` of them, Heun with
    /// `sample_steps` steps, fixed noise so grids of successive checkpoints are comparable),
    /// with D clamped to the data range [−1, 1] as the built-in prior uses it.
    pub fn ema_samples(&self) -> Result<Tensor> {
        let den = self.ema_denoiser()?.with_clip(1.0);
        let s = self.arch.image_size;
        let shape = [self.cfg.sample_count, self.arch.in_channels, s, s];
        let mut noise = crate::noise::SeededNoise::new(mix(self.cfg.seed ^ TAG_SAMPLES));
        heun_sample(
            &den,
            &shape,
            &EdmGrid::new(self.cfg.sample_steps),
            &mut noise,
            &self.device,
        )
    }
}

fn atomic_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    crate::io::atomic_with(path, |tmp| {
        Ok(candle_core::safetensors::save(tensors, tmp)?)
    })
}

fn read_state(dir: &Path) -> Result<(Meta, HashMap<String, Tensor>)> {
    let path = dir.join(STATE_FILE);
    if !path.is_file() {
        return Err(Error::config(format!(
            "no training state to resume from: {} does not exist (is {} a `daps train --out` folder?)",
            path.display(),
            dir.display()
        )));
    }
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| Error::msg(format!("cannot read {}: {e}", path.display())))?;
    let meta = t
        .remove("meta")
        .ok_or_else(|| Error::msg(format!("{}: no `meta` entry", path.display())))?;
    let meta: Meta = serde_json::from_slice(&meta.to_vec1::<u8>()?)
        .map_err(|e| Error::msg(format!("{}: bad metadata: {e}", path.display())))?;
    if meta.version != STATE_VERSION {
        return Err(Error::Unsupported(format!(
            "{}: training state version {} (this build reads {STATE_VERSION})",
            path.display(),
            meta.version
        )));
    }
    Ok((meta, t))
}

/// A permutation of 0..n for `epoch` (Fisher–Yates on a seeded stream).
fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = stream(seed, TAG_PERM, epoch);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        p.swap(i, j);
    }
    p
}

/// AdamW hyper-parameters for one step `t` (1-based).
#[derive(Clone, Copy, Debug)]
pub struct AdamHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub t: u64,
}

/// One AdamW update, the same operations as `candle_nn::AdamW::step`; returns (θ, m, v).
pub fn adamw_update(
    theta: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    h: &AdamHyper,
) -> Result<(Tensor, Tensor, Tensor)> {
    let scale_m = 1f64 / (1f64 - h.beta1.powi(h.t as i32));
    let scale_v = 1f64 / (1f64 - h.beta2.powi(h.t as i32));
    let next_m = ((m * h.beta1)? + (g * (1.0 - h.beta1))?)?;
    let next_v = ((v * h.beta2)? + (g.sqr()? * (1.0 - h.beta2))?)?;
    let m_hat = (&next_m * scale_m)?;
    let v_hat = (&next_v * scale_v)?;
    let next_theta = (theta * (1f64 - h.lr * h.weight_decay))?;
    let adjusted = (m_hat / (v_hat.sqrt()? + h.eps)?)?;
    let next_theta = (next_theta - (adjusted * h.lr)?)?;
    Ok((next_theta, next_m, next_v))
}
