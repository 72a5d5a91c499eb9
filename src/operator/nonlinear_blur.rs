//! The nonlinear blur of DAPS (`nonlinear_blur`): the blur-kernel-space network of Tran et al.
//! (bkse, "Explore Image Deblurring via Encoded Blur Kernel Space", CVPR 2021), used as a
//! fixed, differentiable forward map.
//!
//! DAPS loads bkse's `KernelWizard` with the weights `GOPRO_wVAE.pth` and its
//! `options/generate_blur/default.yml` (nf 64, front_RBs 10, back_RBs 20, kernel_dim 512,
//! use_vae, no normalisation layers), and measures
//!
//! ```text
//! A(x) = clamp(2·adaptKernel((x + 1)/2, k) − 1, −1, 1),   k = 1.2·randn(1, 512, 2, 2)
//! ```
//!
//! with `k` drawn once after `np.random.seed(0)` and repeated over the batch. `adaptKernel` is
//! only part of the KernelWizard (the kernel *extractor* is not used); it is, with
//! `lrelu_s(v) = max(v, s·v)`:
//!
//! 1. `feature_extractor`: conv3×3 (3→nf) · lrelu₀.₁ · conv3×3 stride 2 · lrelu₀.₁ · conv3×3
//!    stride 2 · lrelu₀.₁ · `front_RBs` residual blocks `v + conv(relu(conv(v)))` (H/4 × W/4).
//! 2. `adapter`: a five-level U-Net (pix2pix `UnetSkipConnectionBlock`, channels nf, 2nf, 4nf,
//!    8nf, 8nf) whose bottleneck (H/128 × W/128) is concatenated with the kernel latent `k`.
//!    Down-convolutions are 4×4 stride 2 (no bias), up-convolutions 4×4 stride-2 transposed
//!    convolutions (no bias except the outermost), the outermost ends in tanh. The inner
//!    levels start their down path with a LeakyReLU(0.2) that PyTorch applies *in place*, so
//!    their skip connection carries `lrelu₀.₂(v)`; that is what this module concatenates too
//!    (it makes no difference to the output: the parent level's ReLU follows, and
//!    `relu(lrelu(v)) = relu(v)`).
//! 3. `recon_trunk`: `back_RBs` residual blocks, conv3×3 (nf→4nf) · pixel shuffle ×2 · lrelu₀.₁ ·
//!    conv3×3 (nf→256) · pixel shuffle ×2 · lrelu₀.₁ · conv3×3 (64→64) · lrelu₀.₁ · conv3×3
//!    (64→3), plus the input image.
//!
//! Parameter names are PyTorch's (`feature_extractor.6.conv1.weight`,
//! `adapter.model.submodule.down.1.weight`, `recon_trunk.28.bias`, …), so the original
//! `GOPRO_wVAE.pth` (read with candle's pickle reader, no code executed) or a `.safetensors`
//! conversion of it load as they are; the kernel-extractor tensors the file also holds are
//! ignored. The weights are not distributed with this crate: see [`WEIGHTS_HELP`].
//!
//! Images must be 3×H×W with H and W multiples of 128 (the U-Net bottleneck is H/128 × W/128).
//! At 256×256 the latent is exactly DAPS's; at other sizes it is `1.2·randn(1, 512, H/128,
//! W/128)` drawn the same way (numpy's legacy generator, reproduced bit for bit by
//! [`NumpyRandomState`]).
//!
//! Convolutions use [`crate::nn::fastops::conv2d`] (im2col + matmul with a fast backward);
//! each transposed convolution runs as one 2×2 convolution holding its four output phases,
//! followed by a pixel shuffle ([`ConvTranspose4x4`]), which keeps both passes on that fast
//! path (candle's own `conv_transpose2d` has no fast CPU path). The VJP is
//! candle autograd through [`Operator::forward`]; every op used (conv, relu, maximum, tanh,
//! clamp, reshape/permute, cat) passes gradients.

use super::Operator;
use crate::error::{Error, Result};
use crate::nn::checkpoint::{self, ParamList};
use crate::nn::fastops::{self, add_channel_bias};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;

/// Where to get the weights, and how to pass them (used in the error for a missing file).
pub const WEIGHTS_HELP: &str = "the nonlinear-blur operator needs the bkse KernelWizard weights \
GOPRO_wVAE.pth (from the bkse project, VinAIResearch/blur-kernel-space-exploring on GitHub, \
experiments/pretrained/GOPRO_wVAE.pth; Google Drive file id 1vRoDpIsrTRYZKsOMPNbPcMtFDpCT6Foy, \
as linked by the DAPS README); pass the .pth (or a .safetensors conversion) with \
`daps measure --blur-weights FILE` (and `daps solve --blur-weights FILE` to override the path \
stored in a measurement file)";

/// Slope of the LeakyReLU of the feature extractor and the reconstruction trunk.
const TRUNK_SLOPE: f64 = 0.1;
/// Slope of the LeakyReLU on the U-Net's down path.
const UNET_SLOPE: f64 = 0.2;

/// The KernelWizard options that shape the `adaptKernel` network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BkseConfig {
    /// Image channels (`input_nc`).
    pub input_nc: usize,
    /// Feature width (`nf`); the U-Net runs at nf, 2nf, 4nf, 8nf channels.
    pub nf: usize,
    /// Residual blocks of the feature extractor (`front_RBs`).
    pub front_rbs: usize,
    /// Residual blocks of the reconstruction trunk (`back_RBs`).
    pub back_rbs: usize,
    /// Channels of the kernel latent (`kernel_dim`); the U-Net needs `8·nf`.
    pub kernel_dim: usize,
}

impl BkseConfig {
    /// `options/generate_blur/default.yml`, the configuration of `GOPRO_wVAE.pth` that DAPS uses.
    pub const fn gopro() -> Self {
        Self {
            input_nc: 3,
            nf: 64,
            front_rbs: 10,
            back_rbs: 20,
            kernel_dim: 512,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.input_nc == 0 || self.nf == 0 {
            return Err(Error::config(format!("bkse config {self:?}: empty layer")));
        }
        if self.kernel_dim != 8 * self.nf {
            return Err(Error::config(format!(
                "bkse config: kernel_dim must be 8·nf = {} (the U-Net bottleneck width), got {}",
                8 * self.nf,
                self.kernel_dim
            )));
        }
        Ok(())
    }

    /// The parameters `adaptKernel` reads, `(name, shape)` in PyTorch `state_dict` order.
    pub fn param_list(&self) -> Result<ParamList> {
        self.validate()?;
        let cfg = *self;
        checkpoint::record_params(move |vb| {
            KernelWizard::new(&cfg, vb).map_err(|e| candle_core::Error::Msg(e.to_string()))
        })
    }
}

impl Default for BkseConfig {
    fn default() -> Self {
        Self::gopro()
    }
}

// ---------------------------------------------------------------------------------------------
// numpy's legacy normal generator

/// numpy's legacy `RandomState` (MT19937) as far as `seed(int)` and `randn` go: 53-bit
/// doubles from two 32-bit draws, `(a >> 5, b >> 6)`, and Marsaglia's polar method, whose
/// second normal is kept for the next call.
#[derive(Clone)]
pub struct NumpyRandomState {
    mt: [u32; 624],
    pos: usize,
    spare: Option<f64>,
}

impl NumpyRandomState {
    const N: usize = 624;
    const M: usize = 397;

    /// `np.random.seed(seed)` for an integer seed (Knuth's linear initialisation).
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..Self::N {
            let prev = mt[i - 1];
            mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self {
            mt,
            pos: Self::N,
            spare: None,
        }
    }

    fn refill(&mut self) {
        for i in 0..Self::N {
            let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % Self::N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.mt[i] = self.mt[(i + Self::M) % Self::N] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    /// The next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= Self::N {
            self.refill();
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random_sample()`: uniform on [0, 1) with 53 random bits.
    pub fn random_sample(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// One standard normal, as `np.random.randn()` / legacy `standard_normal` draws it.
    pub fn randn(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        loop {
            let x1 = 2.0 * self.random_sample() - 1.0;
            let x2 = 2.0 * self.random_sample() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.spare = Some(f * x1);
                return f * x2;
            }
        }
    }
}

/// `np.random.seed(seed); np.random.randn(1, channels, h, w) * scale`, flattened in C order.
pub fn kernel_latent_values(
    seed: u32,
    scale: f64,
    channels: usize,
    h: usize,
    w: usize,
) -> Vec<f64> {
    let mut rng = NumpyRandomState::new(seed);
    (0..channels * h * w).map(|_| rng.randn() * scale).collect()
}

// ---------------------------------------------------------------------------------------------
// Layers

fn lrelu(x: &Tensor, slope: f64) -> Result<Tensor> {
    Ok(x.maximum(&(x * slope)?)?)
}

/// PyTorch `PixelShuffle(2)`: `[B, 4C, H, W]` → `[B, C, 2H, 2W]`, channel `4c + 2i + j` going
/// to pixel `(2h + i, 2w + j)` of channel `c`.
pub fn pixel_shuffle2(x: &Tensor) -> Result<Tensor> {
    let (b, c4, h, w) = x.dims4()?;
    if c4 % 4 != 0 {
        return Err(Error::msg(format!(
            "pixel shuffle ×2 needs a multiple of 4 channels, got {c4}"
        )));
    }
    let c = c4 / 4;
    Ok(x.reshape((b, c, 2, 2, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, c, 2 * h, 2 * w))?
        .contiguous()?)
}

/// `nn.Conv2d(i, o, k, stride, padding, bias)`: weight `[o, i, k, k]`, optional bias `[o]`.
fn conv(
    vb: &VarBuilder,
    name: &str,
    io: (usize, usize),
    k: usize,
    stride: usize,
    padding: usize,
    bias: bool,
) -> candle_core::Result<fastops::Conv2d> {
    let vb = vb.pp(name);
    let (i, o) = io;
    let weight = vb.get((o, i, k, k), "weight")?;
    let bias = if bias { Some(vb.get(o, "bias")?) } else { None };
    Ok(fastops::Conv2d::new(weight, bias, padding, stride))
}

/// `nn.ConvTranspose2d(i, o, 4, stride 2, padding 1)` (weight `[i, o, 4, 4]`) by its four
/// output phases: pixel `(2m + a, 2n + b)` of the output only sees the 2×2 input pixels
/// `m − 1 + a .. m + a`, `n − 1 + b .. n + b`, with kernel taps `3 − a − 2t`, `3 − b − 2s`
/// (t, s ∈ {0, 1}). The four 2×2 sub-kernels run as one convolution (padding 1, `4·o` output
/// channels, output (H+1)×(W+1)); phase (a, b) is its window at offset (a, b), and a pixel
/// shuffle interleaves the phases.
#[derive(Clone, Debug)]
pub struct ConvTranspose4x4 {
    /// `[4·o, i, 2, 2]`, phase `2a + b` in channel block `(2a + b)·o ..`.
    phases: Tensor,
    bias: Option<Tensor>,
}

impl ConvTranspose4x4 {
    /// From PyTorch's weight `[i, o, 4, 4]` and optional bias `[o]`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (_, _, kh, kw) = weight.dims4()?;
        if (kh, kw) != (4, 4) {
            return Err(Error::msg(format!(
                "ConvTranspose4x4 needs a 4×4 kernel, got {kh}×{kw}"
            )));
        }
        let wt = weight.transpose(0, 1)?.contiguous()?;
        let device = weight.device();
        let taps = |a: u32| Tensor::new(&[3 - a, 1 - a], device);
        let mut parts = Vec::with_capacity(4);
        for a in 0..2 {
            for b in 0..2 {
                parts.push(wt.index_select(&taps(a)?, 2)?.index_select(&taps(b)?, 3)?);
            }
        }
        Ok(Self {
            phases: Tensor::cat(&parts, 0)?.contiguous()?,
            bias: bias.cloned(),
        })
    }

    fn load(
        vb: &VarBuilder,
        name: &str,
        io: (usize, usize),
        bias: bool,
    ) -> candle_core::Result<Self> {
        let vb = vb.pp(name);
        let (i, o) = io;
        let weight = vb.get((i, o, 4, 4), "weight")?;
        let bias = if bias { Some(vb.get(o, "bias")?) } else { None };
        Self::new(&weight, bias.as_ref()).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// `[B, i, H, W]` → `[B, o, 2H, 2W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let o = self.phases.dim(0)? / 4;
        let full = fastops::conv2d(x, &self.phases, 1, 1)?;
        let mut parts = Vec::with_capacity(4);
        for a in 0..2 {
            for c in 0..2 {
                let p = 2 * a + c;
                parts.push(full.narrow(1, p * o, o)?.narrow(2, a, h)?.narrow(3, c, w)?);
            }
        }
        let y = Tensor::stack(&parts, 2)?.reshape((b, 4 * o, h, w))?;
        let y = pixel_shuffle2(&y)?;
        Ok(match &self.bias {
            Some(bias) => add_channel_bias(&y, bias)?,
            None => y,
        })
    }
}

/// bkse `ResidualBlock_noBN`: `x + conv2(relu(conv1(x)))`, 3×3 convolutions with bias.
#[derive(Clone, Debug)]
struct ResidualBlock {
    conv1: fastops::Conv2d,
    conv2: fastops::Conv2d,
}

impl ResidualBlock {
    fn new(vb: &VarBuilder, name: &str, nf: usize) -> candle_core::Result<Self> {
        let vb = vb.pp(name);
        Ok(Self {
            conv1: conv(&vb, "conv1", (nf, nf), 3, 1, 1, true)?,
            conv2: conv(&vb, "conv2", (nf, nf), 3, 1, 1, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(x)?.relu()?;
        Ok((x + self.conv2.forward(&h)?)?)
    }
}

/// `feature_extractor`: three convolutions (the last two stride 2) and `front_RBs` blocks.
#[derive(Clone, Debug)]
struct FeatureExtractor {
    convs: [fastops::Conv2d; 3],
    blocks: Vec<ResidualBlock>,
}

impl FeatureExtractor {
    fn new(cfg: &BkseConfig, vb: &VarBuilder) -> candle_core::Result<Self> {
        let vb = vb.pp("feature_extractor");
        let nf = cfg.nf;
        // Sequential indices: 0 conv, 1 lrelu, 2 conv, 3 lrelu, 4 conv, 5 lrelu, 6.. blocks.
        let convs = [
            conv(&vb, "0", (cfg.input_nc, nf), 3, 1, 1, true)?,
            conv(&vb, "2", (nf, nf), 3, 2, 1, true)?,
            conv(&vb, "4", (nf, nf), 3, 2, 1, true)?,
        ];
        let blocks = (0..cfg.front_rbs)
            .map(|i| ResidualBlock::new(&vb, &(6 + i).to_string(), nf))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { convs, blocks })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for c in &self.convs {
            h = lrelu(&c.forward(&h)?, TRUNK_SLOPE)?;
        }
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        Ok(h)
    }
}

/// Position of a U-Net level (pix2pix `UnetSkipConnectionBlock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// down = [conv]; up = [relu, convT (bias), tanh]; no skip connection.
    Outermost,
    /// down = [lrelu, conv, norm]; up = [relu, convT, norm]; output cat(up, lrelu(x)).
    Middle,
    /// down = [lrelu, conv]; the kernel latent is concatenated after it.
    Innermost,
}

/// One U-Net level: `down` (4×4 stride-2 convolution), the nested level, `up` (4×4 stride-2
/// transposed convolution). The norm layers are identities (`norm: none`).
#[derive(Clone, Debug)]
struct UnetBlock {
    level: Level,
    down: fastops::Conv2d,
    submodule: Option<Box<UnetBlock>>,
    up: ConvTranspose4x4,
}

impl UnetBlock {
    /// `outer`, `inner` channel counts and the input channels (PyTorch's `outer_nc`,
    /// `inner_nc`, `input_nc`); `widths` lists the inner counts of the deeper levels.
    fn new(
        vb: &VarBuilder,
        level: Level,
        input: usize,
        outer: usize,
        inner: usize,
        deeper: &[usize],
    ) -> candle_core::Result<Self> {
        let down_index = if level == Level::Outermost { "0" } else { "1" };
        let down = conv(&vb.pp("down"), down_index, (input, inner), 4, 2, 1, false)?;
        let submodule = match deeper.split_first() {
            None => None,
            Some((&next, rest)) => {
                let level = if rest.is_empty() {
                    Level::Innermost
                } else {
                    Level::Middle
                };
                Some(Box::new(UnetBlock::new(
                    &vb.pp("submodule"),
                    level,
                    inner,
                    inner,
                    next,
                    rest,
                )?))
            }
        };
        let up = ConvTranspose4x4::load(
            &vb.pp("up"),
            "1",
            (2 * inner, outer),
            level == Level::Outermost,
        )?;
        Ok(Self {
            level,
            down,
            submodule,
            up,
        })
    }

    fn forward(&self, x: &Tensor, latent: &Tensor) -> Result<Tensor> {
        // PyTorch's in-place LeakyReLU turns x itself into lrelu(x) before the skip uses it
        // (equivalent for the output: the parent applies a ReLU to the concatenation).
        let x = match self.level {
            Level::Outermost => x.clone(),
            Level::Middle | Level::Innermost => lrelu(x, UNET_SLOPE)?,
        };
        let d = self.down.forward(&x)?;
        let inner = match &self.submodule {
            Some(s) => s.forward(&d, latent)?,
            None => Tensor::cat(&[&d, latent], 1)?,
        };
        let u = self.up.forward(&inner.relu()?)?;
        Ok(match self.level {
            Level::Outermost => u.tanh()?,
            Level::Middle | Level::Innermost => Tensor::cat(&[&u, &x], 1)?,
        })
    }
}

/// `recon_trunk`: `back_RBs` blocks, two ×2 pixel-shuffle upsamplings, two convolutions.
#[derive(Clone, Debug)]
struct ReconTrunk {
    blocks: Vec<ResidualBlock>,
    up1: fastops::Conv2d,
    up2: fastops::Conv2d,
    hr: fastops::Conv2d,
    last: fastops::Conv2d,
}

impl ReconTrunk {
    fn new(cfg: &BkseConfig, vb: &VarBuilder) -> candle_core::Result<Self> {
        let vb = vb.pp("recon_trunk");
        let (nf, n) = (cfg.nf, cfg.back_rbs);
        let blocks = (0..n)
            .map(|i| ResidualBlock::new(&vb, &i.to_string(), nf))
            .collect::<candle_core::Result<_>>()?;
        // After the blocks: n conv, n+1 shuffle, n+2 lrelu, n+3 conv, n+4 shuffle, n+5 lrelu,
        // n+6 conv, n+7 lrelu, n+8 conv (bkse hard-codes 64 channels after the second shuffle).
        let idx = |k: usize| (n + k).to_string();
        Ok(Self {
            blocks,
            up1: conv(&vb, &idx(0), (nf, 4 * nf), 3, 1, 1, true)?,
            up2: conv(&vb, &idx(3), (nf, 64 * 4), 3, 1, 1, true)?,
            hr: conv(&vb, &idx(6), (64, 64), 3, 1, 1, true)?,
            last: conv(&vb, &idx(8), (64, cfg.input_nc), 3, 1, 1, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        h = lrelu(&pixel_shuffle2(&self.up1.forward(&h)?)?, TRUNK_SLOPE)?;
        h = lrelu(&pixel_shuffle2(&self.up2.forward(&h)?)?, TRUNK_SLOPE)?;
        h = lrelu(&self.hr.forward(&h)?, TRUNK_SLOPE)?;
        Ok(self.last.forward(&h)?)
    }
}

/// The part of bkse's `KernelWizard` that `adaptKernel` runs.
#[derive(Clone, Debug)]
pub struct KernelWizard {
    config: BkseConfig,
    feature_extractor: FeatureExtractor,
    adapter: UnetBlock,
    recon_trunk: ReconTrunk,
}

impl KernelWizard {
    /// Builds the network from `vb` (PyTorch names; see the module docs).
    pub fn new(cfg: &BkseConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let nf = cfg.nf;
        let feature_extractor = FeatureExtractor::new(cfg, &vb)?;
        // KernelAdapter: outermost (nf → nf), then inner widths 2nf, 4nf, 8nf, 8nf.
        let adapter = UnetBlock::new(
            &vb.pp("adapter").pp("model"),
            Level::Outermost,
            nf,
            nf,
            nf,
            &[2 * nf, 4 * nf, 8 * nf, 8 * nf],
        )?;
        let recon_trunk = ReconTrunk::new(cfg, &vb)?;
        Ok(Self {
            config: *cfg,
            feature_extractor,
            adapter,
            recon_trunk,
        })
    }

    pub fn config(&self) -> &BkseConfig {
        &self.config
    }

    /// `adaptKernel(x, k)`: `x` `[B, C, H, W]` (images in [0, 1]), `k` `[B, kernel_dim, H/128,
    /// W/128]`.
    pub fn adapt_kernel(&self, x: &Tensor, kernel: &Tensor) -> Result<Tensor> {
        let f = self.feature_extractor.forward(x)?;
        let out = self.adapter.forward(&f, kernel)?;
        let out = self.recon_trunk.forward(&out)?;
        Ok((out + x)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Weights

/// Keys a PyTorch checkpoint may nest its state dict under.
const NESTING_KEYS: [&str; 6] = [
    "state_dict",
    "model",
    "params",
    "params_ema",
    "net",
    "network",
];

/// Reads every tensor of a `.safetensors` or PyTorch (`.pth`, `.pt`, `.bin`, `.ckpt`) file
/// onto the CPU, unwraps a nested state dict and removes any prefix in front of the
/// KernelWizard's names (`module.`, `model.`, …); the kernel-extractor tensors are dropped.
pub fn read_weights(path: impl AsRef<Path>) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(Error::msg(format!(
            "bkse weights file {shown} not found: {WEIGHTS_HELP}"
        )));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let tensors: HashMap<String, Tensor> = match ext.as_str() {
        "safetensors" => candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::msg(format!("cannot read safetensors file {shown}: {e}")))?,
        "pth" | "pt" | "bin" | "ckpt" => {
            let read = |key: Option<&str>| candle_core::pickle::read_all_with_key(path, key);
            let mut all = read(None).unwrap_or_default();
            for key in NESTING_KEYS {
                if !all.is_empty() {
                    break;
                }
                all = read(Some(key)).unwrap_or_default();
            }
            if all.is_empty() {
                // Report the reader's own error for the plain layout.
                read(None).map_err(|e| {
                    Error::msg(format!(
                        "cannot read PyTorch file {shown}: {e} (a zip-format torch.save file \
                         is needed; re-save it with a recent PyTorch or convert it to \
                         .safetensors)"
                    ))
                })?;
            }
            all.into_iter().collect()
        }
        _ => {
            return Err(Error::Unsupported(format!(
                "bkse weights file {shown}: unknown extension {ext:?} (expected .pth, .pt, \
                 .bin, .ckpt or .safetensors)"
            )))
        }
    };
    if tensors.is_empty() {
        return Err(Error::msg(format!("no tensors found in {shown}")));
    }
    // The prefix in front of the first feature-extractor weight, if any, is stripped.
    let anchor = "feature_extractor.0.weight";
    let prefix = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(anchor))
        .min_by_key(|p| p.len())
        .unwrap_or("")
        .to_string();
    Ok(tensors
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v)))
        .filter(|(k, _)| !k.starts_with("kernel_extractor."))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The operator

/// Size step of the images: the U-Net bottleneck is H/128 × W/128.
pub const SIZE_MULTIPLE: usize = 128;

/// DAPS's nonlinear blur `A(x) = clamp(2·adaptKernel((x + 1)/2, k) − 1, −1, 1)` on `[B, 3, H,
/// W]` images in [−1, 1] (see the module docs).
pub struct NonlinearBlur {
    net: KernelWizard,
    dtype: DType,
    device: Device,
    seed: u32,
    scale: f64,
    source: String,
}

impl NonlinearBlur {
    /// Loads `GOPRO_wVAE.pth` (or its `.safetensors` conversion) as f32, with DAPS's latent
    /// (numpy seed 0, scale 1.2).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_with(path, &BkseConfig::gopro(), DType::F32, device)
    }

    /// Loads weights for any configuration, in `dtype`; names and shapes are checked strictly
    /// (the first missing or mis-shaped tensor is named).
    pub fn load_with(
        path: impl AsRef<Path>,
        config: &BkseConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        let expected = config.param_list()?;
        let tensors = read_weights(path)?;
        let source = path.display().to_string();
        let vb = checkpoint::var_builder(tensors, &expected, dtype, device, &source)?;
        let net = KernelWizard::new(config, vb)?;
        Ok(Self::from_network(net, dtype, device, source))
    }

    /// Wraps a built network (e.g. from a `VarBuilder` of random weights).
    pub fn from_network(net: KernelWizard, dtype: DType, device: &Device, source: String) -> Self {
        Self {
            net,
            dtype,
            device: device.clone(),
            seed: 0,
            scale: 1.2,
            source,
        }
    }

    /// Uses `scale·randn` after `np.random.seed(seed)` as the kernel latent (DAPS: 0, 1.2).
    pub fn with_latent(mut self, seed: u32, scale: f64) -> Self {
        self.seed = seed;
        self.scale = scale;
        self
    }

    pub fn network(&self) -> &KernelWizard {
        &self.net
    }

    /// Checks that `[C, H, W]` images fit the network.
    pub fn check_shape(&self, c: usize, h: usize, w: usize) -> Result<()> {
        let need_c = self.net.config.input_nc;
        if c != need_c
            || h == 0
            || w == 0
            || !h.is_multiple_of(SIZE_MULTIPLE)
            || !w.is_multiple_of(SIZE_MULTIPLE)
        {
            return Err(Error::config(format!(
                "the nonlinear blur takes {need_c}×H×W images with H and W positive multiples \
                 of {SIZE_MULTIPLE} (DAPS: 3×256×256), got {c}×{h}×{w}"
            )));
        }
        Ok(())
    }

    /// The kernel latent `[1, kernel_dim, H/128, W/128]` for H×W images.
    pub fn latent(&self, h: usize, w: usize) -> Result<Tensor> {
        let (lh, lw) = (h / SIZE_MULTIPLE, w / SIZE_MULTIPLE);
        let kd = self.net.config.kernel_dim;
        let v = kernel_latent_values(self.seed, self.scale, kd, lh, lw);
        // DAPS draws it in float64 and casts it to float32 (`.float()`), also before f64 use.
        Ok(Tensor::from_vec(v, (1, kd, lh, lw), &self.device)?
            .to_dtype(DType::F32)?
            .to_dtype(self.dtype)?)
    }
}

impl Operator for NonlinearBlur {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        self.check_shape(c, h, w)?;
        let in_dtype = x.dtype();
        let x01 = ((x.to_device(&self.device)?.to_dtype(self.dtype)? + 1.0)? * 0.5)?;
        let latent = self.latent(h, w)?;
        let (_, kd, lh, lw) = latent.dims4()?;
        let latent = latent.broadcast_as((b, kd, lh, lw))?.contiguous()?;
        let out = self.net.adapt_kernel(&x01, &latent)?;
        let y = ((out * 2.0)? - 1.0)?.clamp(-1.0, 1.0)?;
        Ok(y.to_dtype(in_dtype)?.to_device(x.device())?)
    }

    /// One network pass for the residual and its VJP (autograd), not a second forward first.
    fn residual_vjp(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        super::autograd_residual_vjp(self, x, y)
    }

    fn name(&self) -> String {
        format!(
            "nonlinear blur (bkse KernelWizard.adaptKernel, weights {}, latent seed {} × {})",
            self.source, self.seed, self.scale
        )
    }
}
