//! LPIPS (Zhang et al. 2018) as DAPS evaluates it: piq 0.8 `LPIPS(replace_pooling=True)`.
//!
//! Inputs are `[B, C, H, W]` in [0, 1] with C = 3 (C = 1 broadcasts against the RGB statistics,
//! as in piq). The network: x ← (x − mean)/std with the ImageNet mean (0.485, 0.456, 0.406) and
//! std (0.229, 0.224, 0.225); the VGG16 `features` convolutions (3×3, padding 1, ReLU), every 2×2
//! max-pool replaced by a 2×2 average pool; the outputs of relu1_2, relu2_2, relu3_3, relu4_3 and
//! relu5_3, each divided by its norm over channels (f / (‖f‖₂ + 1e-10)); then
//! LPIPS(a, b) = Σ_layers mean_{h,w} Σ_c w_c (â_c − b̂_c)², with the learned non-negative w.
//!
//! Nothing is downloaded: the weights come from a safetensors file given by the user
//! ([`WEIGHTS_FLAG`] on the command line), holding f32/f16 tensors named
//! - `features.{i}.weight` `[O, I, 3, 3]` and `features.{i}.bias` `[O]` for the convolutions
//!   i ∈ {0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28} (torchvision `vgg16().features`), or
//!   `net.slice{s}.{i}.weight` / `.bias` (the `lpips` package's module, s = 1…5 by block);
//! - `lin{k}.model.1.weight` `[1, C_k, 1, 1]` (the `lpips` package's `vgg.pth`) or `lin{k}.weight`
//!   (`[1, C_k, 1, 1]` or `[C_k]`, e.g. element k of piq's `lpips_weights.pt`), k = 0…4,
//!   C = 64, 128, 256, 512, 512.
//!
//! For example, in Python with `lpips` installed:
//! `safetensors.torch.save_file(lpips.LPIPS(net="vgg").state_dict(), "lpips_vgg.safetensors")`.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The command-line flag naming the weights file.
pub const WEIGHTS_FLAG: &str = "--lpips-weights";
/// The smallest image side: relu5_3 comes after four 2×2 pools.
pub const MIN_SIZE: usize = 16;

/// torchvision indices of the VGG16 convolutions, by block; a 2×2 pool precedes blocks 2–5.
const BLOCKS: [&[usize]; 5] = [
    &[0, 2],
    &[5, 7],
    &[10, 12, 14],
    &[17, 19, 21],
    &[24, 26, 28],
];
const CHANNELS: [usize; 5] = [64, 128, 256, 512, 512];
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];
const EPS: f64 = 1e-10;

/// The LPIPS network with its weights.
pub struct Lpips {
    /// (weight, bias `[1, O, 1, 1]`) of each convolution, by block.
    blocks: Vec<Vec<(Tensor, Tensor)>>,
    /// The head weights `[1, C, 1, 1]` of each tap.
    heads: Vec<Tensor>,
    mean: Tensor,
    std: Tensor,
    device: Device,
}

impl Lpips {
    /// Reads the weights file (see the module docs); a missing file names [`WEIGHTS_FLAG`].
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::config(format!(
                "LPIPS weights file {} not found: pass VGG16 LPIPS weights (safetensors) with \
                 {WEIGHTS_FLAG} FILE",
                path.display()
            )));
        }
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            Error::msg(format!(
                "LPIPS weights {} ({WEIGHTS_FLAG}): not a readable safetensors file: {e}",
                path.display()
            ))
        })?;
        Self::from_tensors(&tensors, device)
            .map_err(|e| Error::msg(format!("LPIPS weights {}: {e}", path.display())))
    }

    /// From named tensors (the names and shapes of the module docs).
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let get = |names: &[String], shape: &[usize]| -> Result<Tensor> {
            let (name, t) = names
                .iter()
                .find_map(|n| tensors.get(n).map(|t| (n, t)))
                .ok_or_else(|| {
                    Error::msg(format!(
                        "missing tensor '{}' (or '{}')",
                        names[0],
                        names[1..].join("', '")
                    ))
                })?;
            // Head weights may come as a plain vector.
            let t = if shape.len() == 4 && shape[0] == 1 && t.dims() == [shape[1]] {
                t.reshape(shape)?
            } else {
                t.clone()
            };
            if t.dims() != shape {
                return Err(Error::Shape {
                    what: format!("LPIPS tensor '{name}'"),
                    expected: shape.to_vec(),
                    got: t.dims().to_vec(),
                });
            }
            let t = t.to_dtype(DType::F32)?;
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::msg(format!(
                    "tensor '{name}' has NaN or Inf entries"
                )));
            }
            Ok(t.to_device(device)?)
        };
        let mut blocks = Vec::with_capacity(BLOCKS.len());
        let mut cin = 3;
        for (s, (convs, &c)) in BLOCKS.iter().zip(&CHANNELS).enumerate() {
            let mut block = Vec::with_capacity(convs.len());
            for &i in convs.iter() {
                let names = |p: &str| {
                    [
                        format!("features.{i}.{p}"),
                        format!("net.slice{}.{i}.{p}", s + 1),
                    ]
                };
                let w = get(&names("weight"), &[c, cin, 3, 3])?;
                let b = get(&names("bias"), &[c])?.reshape((1, c, 1, 1))?;
                block.push((w, b));
                cin = c;
            }
            blocks.push(block);
        }
        let mut heads = Vec::with_capacity(CHANNELS.len());
        for (k, &c) in CHANNELS.iter().enumerate() {
            let names = [format!("lin{k}.model.1.weight"), format!("lin{k}.weight")];
            let h = get(&names, &[1, c, 1, 1])?;
            if h.min_all()?.to_scalar::<f32>()? < 0.0 {
                return Err(Error::msg(format!(
                    "LPIPS head weights '{}' must be non-negative",
                    names[0]
                )));
            }
            heads.push(h);
        }
        let stat = |v: [f32; 3]| Tensor::from_vec(v.to_vec(), (1, 3, 1, 1), device);
        Ok(Self {
            blocks,
            heads,
            mean: stat(MEAN)?,
            std: stat(STD)?,
            device: device.clone(),
        })
    }

    /// The five channel-normalised feature maps of a `[B, C, H, W]` batch in [0, 1].
    fn features(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let x = x.to_device(&self.device)?.to_dtype(DType::F32)?;
        let mut h = x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
        let mut taps = Vec::with_capacity(self.blocks.len());
        for (k, block) in self.blocks.iter().enumerate() {
            if k > 0 {
                h = h.avg_pool2d(2)?;
            }
            for (w, b) in block {
                h = h.conv2d(w, 1, 1, 1, 1)?.broadcast_add(b)?.relu()?;
            }
            let norm = (h.sqr()?.sum_keepdim(1)?.sqrt()? + EPS)?;
            taps.push(h.broadcast_div(&norm)?);
        }
        Ok(taps)
    }

    /// LPIPS per image of `a` `[B, C, H, W]` against `b` of the same shape, or against a single
    /// `b` `[1, C, H, W]` shared by every image of `a`. Inputs in [0, 1]; C = 1 or 3; H, W ≥ 16.
    pub fn distance(&self, a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
        let (n, c, h, w) = a.dims4().map_err(|_| Error::Shape {
            what: "LPIPS input [B, C, H, W]".into(),
            expected: vec![1, 3, 256, 256],
            got: a.dims().to_vec(),
        })?;
        let nb = b.dims().first().copied().unwrap_or(0);
        let nb = if nb == 1 { 1 } else { n };
        crate::error::expect_shape("LPIPS second input", b.dims(), &[nb, c, h, w])?;
        if c != 1 && c != 3 {
            return Err(Error::config(format!(
                "LPIPS takes RGB or grayscale images, got {c} channels"
            )));
        }
        if h < MIN_SIZE || w < MIN_SIZE {
            return Err(Error::config(format!(
                "LPIPS needs images of at least {MIN_SIZE}×{MIN_SIZE}, got {h}×{w}"
            )));
        }
        // About one 256×256 image per pass bounds the memory of the convolutions.
        let chunk = (65536 / (h * w)).clamp(1, n.max(1));
        let shared = if nb == 1 && n > 1 {
            Some(self.features(b)?)
        } else {
            None
        };
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let fa = self.features(&a.narrow(0, start, len)?)?;
            let own;
            let fb = match &shared {
                Some(f) => f,
                None => {
                    own = self.features(&b.narrow(0, start, len)?)?;
                    &own
                }
            };
            let mut d = vec![0.0; len];
            for ((fa, fb), head) in fa.iter().zip(fb).zip(&self.heads) {
                let layer = fa
                    .broadcast_sub(fb)?
                    .sqr()?
                    .broadcast_mul(head)?
                    .sum(1)?
                    .mean((1, 2))?
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?;
                for (d, l) in d.iter_mut().zip(layer) {
                    *d += l;
                }
            }
            out.extend(d);
        }
        Ok(out)
    }
}
