//! Priors. Every prior is an EDM denoiser D(x, σ) ≈ E[x0 | x0 + σε] on batched tensors.

pub mod adm;
pub mod default;
pub mod gmm;
pub mod latent;
pub mod ldm;
pub mod sd;
pub mod spec;
pub mod unet2d;
pub mod vp;
pub mod vq;

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

pub use gmm::{Covariance, GaussianMixture};

/// v ↦ (∂f/∂x)ᵀ v at the point where it was made ([`Denoiser::denoise_vjp`]): `v` has the
/// output's shape, the result the input's. It may be called more than once.
pub type Pullback<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'a>;

/// f(x) (detached) and its pullback by candle's autograd: `f` runs on a variable copy of `x`.
pub fn autograd_vjp<'a>(
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Pullback<'a>)> {
    let xv = candle_core::Var::from_tensor(x)?;
    let y = f(xv.as_tensor())?;
    let out = y.detach();
    let pullback = move |v: &Tensor| -> Result<Tensor> {
        let grads = (&y * v.to_dtype(y.dtype())?.detach())?
            .sum_all()?
            .backward()?;
        grads.get(xv.as_tensor()).cloned().ok_or_else(|| {
            Error::msg("no gradient reaches the input through candle's autograd".to_string())
        })
    };
    Ok((out, Box::new(pullback)))
}

/// An EDM denoiser. `x` is `[B, ...]`; one σ is shared by the whole batch.
pub trait Denoiser: Send + Sync {
    /// D(x, σ) = E[x0 | x_σ = x], same shape as `x`. Must be differentiable in `x` through candle
    /// autograd for gradient-through-denoiser methods such as DPS.
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor>;

    /// D(x, σ) (detached) and its pullback v ↦ (∂D/∂x)ᵀ v, for the samplers that guide through
    /// the denoiser (DPS, ΠGDM, twisted SMC, Tweedie covariances). The default records candle's
    /// autograd graph; a network with a hand-written reverse pass (the ADM UNet on the CPU)
    /// overrides it with the same values up to float rounding.
    fn denoise_vjp(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Pullback<'_>)> {
        autograd_vjp(x, |x| self.denoise(x, sigma))
    }

    /// The score ∇ log p_σ(x) = (D(x,σ) − x)/σ². Priors with a closed form may override it,
    /// and may then accept σ = 0 (the clean prior's score).
    fn score(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if sigma <= 0.0 {
            return Err(crate::Error::Unsupported(format!(
                "{}: score at σ = 0 needs a closed-form prior",
                self.name()
            )));
        }
        let d = self.denoise(x, sigma)?;
        Ok(((d - x)? / (sigma * sigma))?)
    }

    /// The device the prior's parameters live on.
    fn device(&self) -> &Device;

    /// Whether a sampler should evaluate a batch in pieces of [`CHAINS_PER_PIECE`] chains run in
    /// parallel ([`par_batches`]): true for priors computed on the CPU.
    fn splits_batches(&self) -> bool {
        self.device().is_cpu()
    }

    /// A short human-readable description.
    fn name(&self) -> String;

    /// The shape of one sample (without the batch dimension), when the prior fixes it.
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }

    /// EDM's σ_data: the standard deviation of the data the prior was trained on. The samplers'
    /// default σ's, step sizes and tolerances are relative to it ([`Scale`]); 0.5 (images in
    /// [−1, 1]) unless declared.
    fn sigma_data(&self) -> f64 {
        REFERENCE_SIGMA_DATA
    }

    /// The σ range (min, max) the network was trained on; EDM's (0.002, 80) unless declared.
    fn sigma_range(&self) -> (f64, f64) {
        (0.002, 80.0)
    }

    /// The range (lo, hi) of the data: clipping, divergence checks and metrics use it;
    /// [−1, 1] unless declared.
    fn data_range(&self) -> (f64, f64) {
        (-1.0, 1.0)
    }

    /// Closed-form access for exact steps; `None` for neural priors.
    fn as_gmm(&self) -> Option<&GaussianMixture> {
        None
    }

    /// The autoencoder of a latent diffusion prior (then `denoise` acts on latents); `None` for
    /// pixel-space priors.
    fn as_latent(&self) -> Option<&dyn latent::LatentPrior> {
        None
    }
}

/// The σ_data of images in [−1, 1]: the scale at which the samplers' settings are absolute.
pub const REFERENCE_SIGMA_DATA: f64 = 0.5;

/// A prior's scale s = σ_data / 0.5 ([`REFERENCE_SIGMA_DATA`]), and the data range: samplers
/// read every setting with a unit through it, so that scaling the data by c scales their output
/// by c. Lengths (σ, τ, x) scale like s, Langevin step sizes (η, units of x²) like s²; a
/// dimensionless setting (ρ, step counts, ratios) does not scale. At s = 1 (every prior that
/// declares nothing) the settings are used as given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub s: f64,
    /// The prior's declared data range (lo, hi).
    pub range: (f64, f64),
}

impl Scale {
    pub fn of(prior: &dyn Denoiser) -> Result<Self> {
        let s = prior.sigma_data() / REFERENCE_SIGMA_DATA;
        let (lo, hi) = prior.data_range();
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::config(format!(
                "{}: σ_data must be finite and > 0, got {}",
                prior.name(),
                prior.sigma_data()
            )));
        }
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::config(format!(
                "{}: data range must be finite with lo < hi, got ({lo}, {hi})",
                prior.name()
            )));
        }
        Ok(Self { s, range: (lo, hi) })
    }

    /// A length (σ, τ, a clip bound) given at scale 1.
    pub fn len(&self, v: f64) -> f64 {
        v * self.s
    }

    /// A σ grid (or any lengths) given at scale 1.
    pub fn lens(&self, v: Vec<f64>) -> Vec<f64> {
        v.into_iter().map(|x| self.len(x)).collect()
    }

    /// A squared length (a Langevin step η) given at scale 1.
    pub fn sq(&self, v: f64) -> f64 {
        v * self.s * self.s
    }

    /// Centre and half-width of the data range.
    pub fn centre_radius(&self) -> (f64, f64) {
        let (lo, hi) = self.range;
        (0.5 * (lo + hi), 0.5 * (hi - lo))
    }
}

/// Chains per piece of a CPU batch ([`batch_splits`]), at least. Fixed, so that each chain's
/// arithmetic (which depends on the size of the piece it is in: the matmuls' blocking) is the
/// same whatever the thread count: the same seed gives bit-identical output with any
/// `RAYON_NUM_THREADS`.
pub const CHAINS_PER_PIECE: usize = 8;

/// At most this many pieces: a large batch (thousands of mixture chains) is cut into
/// [`MAX_PIECES`] pieces rather than thousands of small ones (DPS takes one gradient per piece).
pub const MAX_PIECES: usize = 16;

/// Batch ranges `(start, len)` for [`par_batches`]: pieces of max([`CHAINS_PER_PIECE`],
/// ⌈b / [`MAX_PIECES`]⌉) chains in order, the last one shorter when `b` is not a multiple. They
/// depend on `b` only, never on the thread count.
pub fn batch_splits(b: usize) -> Vec<(usize, usize)> {
    let piece = CHAINS_PER_PIECE.max(b.div_ceil(MAX_PIECES));
    (0..b)
        .step_by(piece)
        .map(|s| (s, piece.min(b - s)))
        .collect()
}

/// At most this many values (chains × C·H·W) in a batch of one piece count as too small to
/// spread over threads op by op ([`too_small_to_share`]).
pub const SMALL_BATCH_VALUES: usize = CHAINS_PER_PIECE * 32 * 32;

/// Whether a CPU batch of shape `x_shape` ([chains, C, H, W]) is one piece of at most
/// [`SMALL_BATCH_VALUES`] values: then no piece can run beside another, and each op is too
/// small to gain from several threads (the digits prior, 2 cores: DPS on 1 digit 1.5× slower on
/// 2 threads than on one, on 2 and 4 digits 1.05–1.16× slower, on 8 level; 16 digits, two
/// pieces, 1.6× faster). Callers run such batches on one thread.
pub fn too_small_to_share(x_shape: &[usize]) -> bool {
    let chains = x_shape.first().copied().unwrap_or(0);
    chains <= CHAINS_PER_PIECE && x_shape.iter().product::<usize>() <= SMALL_BATCH_VALUES
}

/// Runs `f` on a one-thread pool when a CPU batch of `x_shape` is [`too_small_to_share`], else
/// here (the results are the same bits either way). Inside a pool's worker it runs here: the
/// caller already shares the cores out, and a worker waiting on another pool would take more of
/// its own jobs meanwhile. If the pool cannot be made, `f` runs here.
pub fn in_sized_pool<R: Send>(x_shape: &[usize], on_cpu: bool, f: impl FnOnce() -> R + Send) -> R {
    let nested = rayon::current_thread_index().is_some();
    if on_cpu && !nested && rayon::current_num_threads() > 1 && too_small_to_share(x_shape) {
        if let Ok(one) = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .stack_size(8 << 20)
            .build()
        {
            return one.install(f);
        }
    }
    f()
}

/// Runs `f(start, len)` on the batch ranges of [`batch_splits`] in parallel over rayon's pool;
/// the results come back in order.
///
/// A small network on the CPU keeps the cores busier this way than through the threading inside
/// each of its ops, whose pieces are small: on 2 cores, DAPS-50 with the built-in prior runs
/// 1.2× and DPS-50 1.13× faster (issue 3 note, one piece per thread then). The ops inside each
/// piece still use rayon's pool; their arithmetic does not depend on the thread count.
pub fn par_batches<T, F>(b: usize, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(usize, usize) -> Result<T> + Sync,
{
    let splits = batch_splits(b);
    if splits.len() <= 1 || rayon::current_num_threads() == 1 {
        return splits.into_iter().map(|(s, n)| f(s, n)).collect();
    }
    splits.into_par_iter().map(|(s, n)| f(s, n)).collect()
}

/// Loads a prior from a `--prior KIND:PATH[:CONFIG]` spec ([`spec::PriorSpec`]) onto `device`;
/// `None` is the built-in digits prior ([`default::digits`]).
pub fn load(spec: Option<&str>, device: &Device) -> Result<Box<dyn Denoiser>> {
    load_with(spec, device, None)
}

/// [`load`] with the text condition of a text-to-image prior (`sd:DIR`); a condition given
/// to any other prior is an error.
pub fn load_with(
    spec: Option<&str>,
    device: &Device,
    text: Option<&latent::TextCondition>,
) -> Result<Box<dyn Denoiser>> {
    let (base, precision) = match spec {
        Some(s) => {
            let (b, p) = Precision::split(s)?;
            (Some(b).filter(|b| *b != "default"), p)
        }
        None => (None, Precision::F32),
    };
    match base {
        None if text.is_some() => Err(Error::config(
            "the built-in digits prior is unconditional and takes no prompt",
        )),
        None => Ok(Box::new(default::digits_with_dtype(
            device,
            precision.dtype(),
        )?)),
        Some(b) => {
            let p: spec::PriorSpec = b.parse()?;
            p.load_precision(device, text, precision.dtype())
                .map_err(|e| Error::msg(format!("loading prior {}: {e}", spec.unwrap_or(b))))
        }
    }
}

/// The network's precision, a `@f32` / `@bf16` / `@f16` suffix of the `--prior` spec
/// (`default@bf16` is the built-in prior). Half precision keeps weights and activations in
/// bf16/f16 (on a GPU, cuBLAS accumulates in f32; on the CPU candle widens each product to f32
/// and rounds the result, the same numerics, slower); GroupNorm, softmax and the VP wrapper's
/// skip connection stay in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// Splits `SPEC@PRECISION` into the spec and the precision (f32 without a suffix).
    pub fn split(spec: &str) -> Result<(&str, Precision)> {
        match spec.rsplit_once('@') {
            // An '@' inside a path is not a precision.
            None => Ok((spec, Precision::F32)),
            Some((_, p)) if p.contains(['/', '.']) => Ok((spec, Precision::F32)),
            Some((base, p)) => Ok((
                base,
                match p {
                    "f32" => Precision::F32,
                    "bf16" => Precision::Bf16,
                    "f16" => Precision::F16,
                    _ => {
                        return Err(Error::config(format!(
                        "prior '{spec}': unknown precision '@{p}' (expected @f32, @bf16 or @f16)"
                    )))
                    }
                },
            )),
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

/// [`load_with`] for a sampler that runs on `device` too (`--device`, [`crate::device::parse`]):
/// latent priors are refused off the CPU.
pub fn load_on(
    spec: Option<&str>,
    device: &Device,
    text: Option<&latent::TextCondition>,
) -> Result<Box<dyn Denoiser>> {
    let prior = load_with(spec, device, text)?;
    if prior.as_latent().is_some() && !device.is_cpu() {
        return Err(Error::Unsupported(format!(
            "{} on {}: latent priors run on the CPU only for now (drop --device)",
            prior.name(),
            crate::device::name(device)
        )));
    }
    Ok(prior)
}

#[cfg(test)]
mod tests {
    use super::Precision;

    #[test]
    fn precision_suffix_parses_and_refuses_unknown_names() {
        assert_eq!(
            Precision::split("default").unwrap(),
            ("default", Precision::F32)
        );
        assert_eq!(
            Precision::split("default@bf16").unwrap(),
            ("default", Precision::Bf16)
        );
        assert_eq!(
            Precision::split("adm:m.pt:ffhq256@f16").unwrap(),
            ("adm:m.pt:ffhq256", Precision::F16)
        );
        // An '@' inside a path is part of the path.
        assert_eq!(
            Precision::split("adm:/data/run@2/model.pt").unwrap(),
            ("adm:/data/run@2/model.pt", Precision::F32)
        );
        let e = Precision::split("default@x16").unwrap_err().to_string();
        assert!(e.contains("unknown precision '@x16'"), "{e}");
    }
}
