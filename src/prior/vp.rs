//! VP (DDPM) noise-prediction networks as EDM denoisers (DAPS `model/precond.py::VPPrecond`).
//!
//! σ ↦ t(σ) = (√(β_min² + 2β_d·ln(1+σ²)) − β_min)/β_d, c_in = 1/√(1+σ²), c_noise = 999·t(σ),
//! D(x, σ) = x − σ·ε_θ(c_in·x, c_noise)[:, :C] (learned-σ channels dropped).

use crate::error::{Error, Result};
use crate::prior::{autograd_vjp, Denoiser, Pullback};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// A network called as `net(x [B,C,H,W], timesteps [B] f32)`, e.g. an ε-prediction UNet.
pub trait TimestepNet: Send + Sync {
    /// The raw network output, `[B, C_out, H, W]`. `t` holds one (fractional) timestep per sample.
    fn forward_t(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;
    fn device(&self) -> &Device;
    /// The dtype of the parameters; inputs are cast to it.
    fn dtype(&self) -> DType {
        DType::F32
    }
    /// Channels of the data (the first `in_channels()` output channels are the prediction).
    fn in_channels(&self) -> usize;
    /// Square training resolution, when known.
    fn image_size(&self) -> Option<usize> {
        None
    }
    fn describe(&self) -> String;
    /// The output of [`TimestepNet::forward_t`] and its pullback with respect to `x` (`t` is a
    /// constant). The default records candle's autograd graph.
    fn forward_t_vjp(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Pullback<'_>)> {
        autograd_vjp(x, |x| self.forward_t(x, t))
    }
}

impl<N: TimestepNet + ?Sized> TimestepNet for Box<N> {
    fn forward_t(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        (**self).forward_t(x, t)
    }
    fn forward_t_vjp(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Pullback<'_>)> {
        (**self).forward_t_vjp(x, t)
    }
    fn device(&self) -> &Device {
        (**self).device()
    }
    fn dtype(&self) -> DType {
        (**self).dtype()
    }
    fn in_channels(&self) -> usize {
        (**self).in_channels()
    }
    fn image_size(&self) -> Option<usize> {
        (**self).image_size()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl<N: TimestepNet + ?Sized> TimestepNet for Arc<N> {
    fn forward_t(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        (**self).forward_t(x, t)
    }
    fn forward_t_vjp(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Pullback<'_>)> {
        (**self).forward_t_vjp(x, t)
    }
    fn device(&self) -> &Device {
        (**self).device()
    }
    fn dtype(&self) -> DType {
        (**self).dtype()
    }
    fn in_channels(&self) -> usize {
        (**self).in_channels()
    }
    fn image_size(&self) -> Option<usize> {
        (**self).image_size()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// The continuous VP noise schedule that maps σ to the network's timestep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum VpSchedule {
    /// β(t) = β_min + β_d·t (DDPM linear β ∈ [1e-4, 0.02] for β_min 0.1, β_d 19.9).
    Linear { beta_min: f64, beta_d: f64 },
    /// β(t) = (a·t + b)², b = √β_min, a = √β_max − √β_min (Stable Diffusion's scaled-linear).
    ScaledLinear { beta_min: f64, beta_max: f64 },
}

impl VpSchedule {
    /// DAPS / EDM `VPPrecond` defaults: β_min 0.1, β_d 19.9.
    pub fn ddpm() -> Self {
        VpSchedule::Linear {
            beta_min: 0.1,
            beta_d: 19.9,
        }
    }

    /// t(σ) ∈ [0, 1], computed in f32 with the same operation order as `VPPrecond.sigma_inv`.
    pub fn t_of_sigma(&self, sigma: f32) -> f32 {
        match *self {
            VpSchedule::Linear { beta_min, beta_d } => {
                let l = (1.0f32 + sigma * sigma).ln();
                let inner = (beta_min * beta_min) as f32 + (2.0 * beta_d) as f32 * l;
                (inner.sqrt() - beta_min as f32) / beta_d as f32
            }
            VpSchedule::ScaledLinear { beta_min, beta_max } => {
                let b = beta_min.sqrt();
                let a = beta_max.sqrt() - b;
                let l = (1.0 + (sigma as f64).powi(2)).ln();
                (((3.0 * a * l + b.powi(3)).cbrt() - b) / a) as f32
            }
        }
    }

    /// σ(t = 1), the largest noise level of the schedule.
    pub fn sigma_max(&self) -> f64 {
        let integral = match *self {
            VpSchedule::Linear { beta_min, beta_d } => 0.5 * beta_d + beta_min,
            VpSchedule::ScaledLinear { beta_min, beta_max } => {
                let b = beta_min.sqrt();
                let a = beta_max.sqrt() - b;
                ((a + b).powi(3) - b.powi(3)) / (3.0 * a)
            }
        };
        (integral.exp() - 1.0).sqrt()
    }
}

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// ε: D = x − σ·net(...)[:, :C].
    Epsilon,
    /// x0: D = net(...)[:, :C].
    Sample,
    /// v = √α·ε − √(1−α)·x0 on the VP input, α = 1/(1+σ²).
    VPrediction,
}

/// A VP network wrapped as an EDM denoiser.
pub struct VpDenoiser<N> {
    net: N,
    schedule: VpSchedule,
    /// c_noise = multiplier·t(σ): 999 for DDPM/ADM checkpoints, 1000 for DAPS's SD wrapper.
    noise_multiplier: f32,
    prediction: Prediction,
    /// Clamp D to [−c, c] (the data range): see [`VpDenoiser::with_clip`].
    clip: Option<f32>,
}

impl<N: TimestepNet> VpDenoiser<N> {
    /// DAPS's `VPPrecond` defaults: linear schedule (0.1, 19.9), c_noise = 999·t(σ), ε-prediction.
    pub fn new(net: N) -> Self {
        Self {
            net,
            schedule: VpSchedule::ddpm(),
            noise_multiplier: 999.0,
            prediction: Prediction::Epsilon,
            clip: None,
        }
    }
    /// Clamps D(x, σ) to [−c, c]. When the data lie in [−c, c], so does E[x0 | x], and projecting
    /// onto that box can only bring an estimate closer to it; this removes the large errors of
    /// ε-prediction at high σ (D = x − σ·ε̂ multiplies the error of ε̂ by σ). Pixels that are
    /// clamped pass no gradient.
    pub fn with_clip(mut self, c: f32) -> Self {
        self.clip = Some(c);
        self
    }
    pub fn with_schedule(mut self, schedule: VpSchedule) -> Self {
        self.schedule = schedule;
        self
    }
    pub fn with_noise_multiplier(mut self, m: f32) -> Self {
        self.noise_multiplier = m;
        self
    }
    pub fn with_prediction(mut self, p: Prediction) -> Self {
        self.prediction = p;
        self
    }
    pub fn net(&self) -> &N {
        &self.net
    }
    pub fn schedule(&self) -> VpSchedule {
        self.schedule
    }
    /// c_in(σ) = 1/√(1+σ²) in f32.
    pub fn c_in(&self, sigma: f32) -> f32 {
        1.0 / (sigma * sigma + 1.0).sqrt()
    }
    /// The network timestep for σ, in f32 as DAPS computes it.
    pub fn c_noise(&self, sigma: f32) -> f32 {
        self.noise_multiplier * self.schedule.t_of_sigma(sigma)
    }
}

impl<N: TimestepNet> VpDenoiser<N> {
    /// D(x, σ) for a valid σ, in one piece.
    fn denoise_one(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        let channels = self.net.in_channels();
        crate::error::expect_shape("VP denoiser input channels", &[c], &[channels])?;
        let out_dtype = x.dtype();
        // A half-precision network (mixed precision) gets f32 around it: the skip connection
        // x − σ·ε cancels at large σ, which half precision cannot carry.
        let net_dtype = self.net.dtype();
        let work = match net_dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let xin = x.to_dtype(work)?;
        let s = sigma as f32;
        let c_in = self.c_in(s);
        let t = Tensor::full(self.c_noise(s), b, xin.device())?;
        let x_scaled = xin.affine(c_in as f64, 0.0)?;
        let out = self
            .net
            .forward_t(&x_scaled.to_dtype(net_dtype)?, &t)?
            .to_dtype(work)?;
        let f = out.narrow(1, 0, channels)?;
        let d = match self.prediction {
            Prediction::Epsilon => (&xin - f.affine(s as f64, 0.0)?)?,
            Prediction::Sample => f,
            Prediction::VPrediction => {
                let alpha = 1.0 / (1.0 + sigma * sigma);
                let eps =
                    (f.affine(alpha.sqrt(), 0.0)? + x_scaled.affine((1.0 - alpha).sqrt(), 0.0)?)?;
                (&xin - eps.affine(sigma, 0.0)?)?
            }
        };
        let d = match self.clip {
            Some(c) => d.clamp(-c, c)?,
            None => d,
        };
        Ok(d.to_dtype(out_dtype)?)
    }
}

impl<N: TimestepNet> VpDenoiser<N> {
    /// D(x, σ) and its pullback through the network's own ([`TimestepNet::forward_t_vjp`]):
    /// for ε-prediction with the network's dtype, D = clamp(x − σ·ε(c_in·x)), so
    /// (∂D/∂x)ᵀ v = m·v − σ·c_in·J_εᵀ(m·v), m the mask of unclamped pixels.
    fn denoise_vjp_eps(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Pullback<'_>)> {
        let (b, c, h, w) = x.dims4()?;
        let channels = self.net.in_channels();
        crate::error::expect_shape("VP denoiser input channels", &[c], &[channels])?;
        let s = sigma as f32;
        let c_in = self.c_in(s);
        let t = Tensor::full(self.c_noise(s), b, x.device())?;
        let xin = x.detach();
        let x_scaled = xin.affine(c_in as f64, 0.0)?;
        let (out, net_pullback) = self.net.forward_t_vjp(&x_scaled, &t)?;
        let extra = out.dim(1)? - channels;
        let f = out.narrow(1, 0, channels)?;
        let d = (&xin - f.affine(s as f64, 0.0)?)?;
        let (d, mask) = match self.clip {
            Some(cl) => {
                let inside = (d.ge(-cl as f64)? * d.le(cl as f64)?)?.to_dtype(d.dtype())?;
                (d.clamp(-cl, cl)?, Some(inside))
            }
            None => (d, None),
        };
        let pullback = move |v: &Tensor| -> Result<Tensor> {
            let v = v.to_dtype(xin.dtype())?;
            let v = match &mask {
                Some(m) => (v * m)?,
                None => v,
            };
            let gf = v.affine(-(s as f64), 0.0)?;
            let gout = if extra > 0 {
                let z = Tensor::zeros((b, extra, h, w), gf.dtype(), gf.device())?;
                Tensor::cat(&[&gf, &z], 1)?
            } else {
                gf
            };
            let gx = net_pullback(&gout)?;
            Ok((v + gx.affine(c_in as f64, 0.0)?)?)
        };
        Ok((d, Box::new(pullback)))
    }
}

/// A VP denoiser takes any finite σ ≥ 0.
fn check_sigma(sigma: f64) -> Result<()> {
    if sigma.is_finite() && sigma >= 0.0 {
        Ok(())
    } else {
        Err(Error::config(format!("VP denoiser: invalid σ = {sigma}")))
    }
}

impl<N: TimestepNet> Denoiser for VpDenoiser<N> {
    fn denoise_vjp(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Pullback<'_>)> {
        check_sigma(sigma)?;
        if self.prediction == Prediction::Epsilon && x.dtype() == self.net.dtype() {
            self.denoise_vjp_eps(x, sigma)
        } else {
            autograd_vjp(x, |x| self.denoise(x, sigma))
        }
    }

    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        check_sigma(sigma)?;
        // Without a graph to keep, a CPU batch runs in fixed-size pieces in parallel (see
        // `par_batches`).
        let b = x.dim(0)?;
        if !x.track_op() && self.splits_batches() && super::batch_splits(b).len() > 1 {
            let parts = super::par_batches(b, |s, n| self.denoise_one(&x.narrow(0, s, n)?, sigma))?;
            return Ok(Tensor::cat(&parts, 0)?);
        }
        self.denoise_one(x, sigma)
    }

    fn device(&self) -> &Device {
        self.net.device()
    }

    fn name(&self) -> String {
        let pred = match self.prediction {
            Prediction::Epsilon => "ε",
            Prediction::Sample => "x0",
            Prediction::VPrediction => "v",
        };
        let clip = match self.clip {
            Some(c) => format!(", D clamped to ±{c}"),
            None => String::new(),
        };
        format!(
            "VP denoiser ({pred}-prediction, c_noise = {}·t(σ){clip}) on {}",
            self.noise_multiplier,
            self.net.describe()
        )
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.net
            .image_size()
            .map(|s| vec![self.net.in_channels(), s, s])
    }
}

/// Timesteps as a `[B]` f32 tensor: a 0-dim or one-element tensor is broadcast over the batch.
pub(crate) fn timesteps_for_batch(t: &Tensor, batch: usize) -> candle_core::Result<Tensor> {
    let t = t.to_dtype(DType::F32)?;
    match t.dims() {
        [] => t.reshape(1)?.broadcast_as(batch)?.contiguous(),
        [1] if batch != 1 => t.broadcast_as(batch)?.contiguous(),
        [n] if *n == batch => Ok(t),
        d => candle_core::bail!("timesteps of shape {d:?} do not fit a batch of {batch}"),
    }
}
