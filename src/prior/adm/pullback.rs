//! The ADM UNet's reverse pass by hand, for the samplers that guide through the denoiser (DPS,
//! ΠGDM, …). The forward keeps what each layer's input gradient needs (a [`Tape`]: layer
//! inputs and pre-activations, no copies), and the pullback runs the layers backwards with the
//! graph-less kernels of [`crate::nn::fastops`]. Only the input gets a gradient: the weights and
//! the time embedding are constants. Against candle's autograd this saves its per-node
//! zero-fill and addition of every gradient, the copies of its custom ops' outputs, and the
//! weight gradients of GroupNorm and the biases. f32 on the CPU; elsewhere autograd.

use super::{AdmUnet, AttentionBlock, Block, Layer, ResBlock, Resample};
use crate::nn::fastops;
use crate::prior::{autograd_vjp, Pullback};
use candle_core::{DType, Tensor, D};

type Dims4 = (usize, usize, usize, usize);

/// What one layer's input gradient needs.
pub(super) enum Saved {
    /// A layer whose gradient needs only its input's shape (convolutions, resampling).
    Shape(Dims4),
    Res(ResSaved),
    Attn(AttnSaved),
}

pub(super) struct ResSaved {
    /// The block's input.
    pub x: Tensor,
    /// The input shape of `in_conv` (after resampling).
    pub conv_in: Dims4,
    /// The input of `out_norm` (with the embedding added, without scale-shift).
    pub normed: Tensor,
    /// The input of the last SiLU.
    pub pre: Tensor,
    /// The scale of scale-shift norm, `[B, C]`.
    pub scale: Option<Tensor>,
    /// The shape of the (resampled) input on the skip path.
    pub skip_in: Dims4,
}

pub(super) struct AttnSaved {
    /// The block's input as `[B, C, T]`.
    pub x: Tensor,
    /// Scaled queries and keys and the values, `[B·heads, ch, T]`.
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// The attention weights, `[B·heads, T, T]`.
    pub w: Tensor,
    /// The scale applied to q and k.
    pub scale: f64,
}

/// The saved values of one forward pass: per block (input blocks, middle, output blocks), the
/// channels of the upsampling path at each skip concatenation, and the input of the head.
#[derive(Default)]
pub(super) struct Tape {
    blocks: Vec<Vec<Saved>>,
    pub splits: Vec<usize>,
    pub head: Option<Tensor>,
}

impl Tape {
    /// A new block's list.
    pub fn push(&mut self) -> &mut Vec<Saved> {
        self.blocks.push(Vec::new());
        // Invariant: just pushed.
        self.blocks.last_mut().expect("a block")
    }
}

fn shape(s: &Saved) -> candle_core::Result<Dims4> {
    match s {
        Saved::Shape(d) => Ok(*d),
        _ => candle_core::bail!("ADM pullback: tape out of step with the layers"),
    }
}

/// The input gradient of 2×2 average pooling.
fn avg_pool_grad(g: &Tensor) -> candle_core::Result<Tensor> {
    fastops::upsample2x(g)?.affine(0.25, 0.0)
}

impl ResBlock {
    fn pullback(&self, s: &ResSaved, g: &Tensor) -> candle_core::Result<Tensor> {
        let g_skip = match &self.skip {
            Some(c) => c.input_grad(g, s.skip_in)?,
            None => g.clone(),
        };
        let g_act = self.out_conv.input_grad(g, s.pre.dims4()?)?;
        let g_pre = fastops::silu_grad(&s.pre, &g_act)?;
        let g_norm = match &s.scale {
            Some(sc) => {
                let (b, c) = sc.dims2()?;
                g_pre.broadcast_mul(&(sc + 1.0)?.reshape((b, c, 1, 1))?)?
            }
            None => g_pre,
        };
        let g_h = self.out_norm.input_grad(&s.normed, &g_norm, false)?;
        let g_h = self.in_conv.input_grad(&g_h, s.conv_in)?;
        let (g_h, g_x) = match self.resample {
            Resample::None => (g_h, g_skip),
            Resample::Up => (
                fastops::upsample2x_grad(&g_h)?,
                fastops::upsample2x_grad(&g_skip)?,
            ),
            Resample::Down => (avg_pool_grad(&g_h)?, avg_pool_grad(&g_skip)?),
        };
        self.in_norm.input_grad(&s.x, &g_h, true)? + g_x
    }
}

impl AttentionBlock {
    fn pullback(&self, s: &AttnSaved, g: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, hh, ww) = g.dims4()?;
        let t = hh * ww;
        let (bh, ch) = (b * self.heads, c / self.heads);
        let g = g.reshape((b, c, t))?;
        let ga = self.proj_out.input_grad(&g)?.reshape((bh, ch, t))?;
        // a = v·wᵀ: dv = da·w, dw = daᵀ·v.
        let gv = ga.matmul(&s.w)?;
        let gw = ga.transpose(1, 2)?.matmul(&s.v)?;
        // Row softmax: dl = w ⊙ (dw − Σ_s dw·w).
        let dot = (&gw * &s.w)?.sum_keepdim(D::Minus1)?;
        let gl = (&s.w * gw.broadcast_sub(&dot)?)?;
        // l = qᵀk with q, k scaled: dq = k·dlᵀ, dk = q·dl, then the scale.
        let gq = (s.k.matmul(&gl.transpose(1, 2)?.contiguous()?)? * s.scale)?;
        let gk = (s.q.matmul(&gl)? * s.scale)?;
        let gqkv = if self.new_order {
            let r = |t3: &Tensor| t3.reshape((b, c, t));
            Tensor::cat(&[r(&gq)?, r(&gk)?, r(&gv)?], 1)?
        } else {
            Tensor::cat(&[&gq, &gk, &gv], 1)?.reshape((b, 3 * c, t))?
        };
        let gn = self.qkv.input_grad(&gqkv)?;
        (self.norm.input_grad(&s.x, &gn, false)? + g)?.reshape((b, c, hh, ww))
    }
}

impl Layer {
    fn pullback(&self, s: &Saved, g: &Tensor) -> candle_core::Result<Tensor> {
        match (self, s) {
            (Layer::Res(r), Saved::Res(rs)) => r.pullback(rs, g),
            (Layer::Attn(a), Saved::Attn(at)) => a.pullback(at, g),
            (Layer::Conv(c) | Layer::Down(Some(c)), s) => c.input_grad(g, shape(s)?),
            (Layer::Down(None), _) => avg_pool_grad(g),
            (Layer::Up(c), s) => {
                let g = match c {
                    Some(c) => {
                        let (b, ch, h, w) = shape(s)?;
                        c.input_grad(g, (b, ch, 2 * h, 2 * w))?
                    }
                    None => g.clone(),
                };
                fastops::upsample2x_grad(&g)
            }
            _ => candle_core::bail!("ADM pullback: tape out of step with the layers"),
        }
    }
}

impl Block {
    fn pullback(&self, saved: &[Saved], g: &Tensor) -> candle_core::Result<Tensor> {
        if saved.len() != self.0.len() {
            candle_core::bail!("ADM pullback: tape out of step with the layers");
        }
        let mut g = g.clone();
        for (l, s) in self.0.iter().zip(saved).rev() {
            g = l.pullback(s, &g)?;
        }
        Ok(g)
    }
}

impl AdmUnet {
    /// `model(x, t)` and its pullback g ↦ (∂model/∂x)ᵀ g by the hand-written reverse pass (f32
    /// parameters and input on the CPU; candle's autograd otherwise). Same output values as
    /// [`AdmUnet::forward`].
    pub fn forward_pullback(
        &self,
        x: &Tensor,
        t: &Tensor,
    ) -> crate::error::Result<(Tensor, Pullback<'_>)> {
        let by_hand = self.dtype == DType::F32 && x.dtype() == DType::F32 && self.device.is_cpu();
        if !by_hand {
            return autograd_vjp(x, |x| Ok(self.forward(x, t)?));
        }
        let x = x.detach();
        let (_, emb) = self.embedding(&x, t)?;
        let emb_act = emb.silu()?;
        let mut tape = Tape::default();
        let out = self.body(&x, &emb_act, &mut |_, _| {}, Some(&mut tape))?;
        let out_dims = out.dims().to_vec();
        let pullback = move |g: &Tensor| -> crate::error::Result<Tensor> {
            if g.dims() != out_dims.as_slice() {
                return Err(crate::error::Error::msg(format!(
                    "ADM pullback: gradient {:?} for an output {out_dims:?}",
                    g.dims()
                )));
            }
            Ok(self.backward(&tape, &g.to_dtype(DType::F32)?)?)
        };
        Ok((out, Box::new(pullback)))
    }

    fn backward(&self, tape: &Tape, g: &Tensor) -> candle_core::Result<Tensor> {
        let n_in = self.input_blocks.len();
        let n_out = self.output_blocks.len();
        let head = match &tape.head {
            Some(h) if tape.blocks.len() == n_in + 1 + n_out && tape.splits.len() == n_out => h,
            _ => candle_core::bail!("ADM pullback: incomplete tape"),
        };
        let g = self.out_conv.input_grad(g, head.dims4()?)?;
        let mut g = self.out_norm.input_grad(head, &g, true)?;
        // Output block j took the skip of input block n_in − 1 − j.
        let mut skips: Vec<Option<Tensor>> = vec![None; n_in];
        for (j, blk) in self.output_blocks.iter().enumerate().rev() {
            let gcat = blk.pullback(&tape.blocks[n_in + 1 + j], &g)?;
            let (up, total) = (tape.splits[j], gcat.dim(1)?);
            g = gcat.narrow(1, 0, up)?;
            skips[n_in - 1 - j] = Some(gcat.narrow(1, up, total - up)?);
        }
        g = self.middle_block.pullback(&tape.blocks[n_in], &g)?;
        for (i, blk) in self.input_blocks.iter().enumerate().rev() {
            if let Some(s) = skips[i].take() {
                g = (g + s)?;
            }
            g = blk.pullback(&tape.blocks[i], &g)?;
        }
        Ok(g)
    }
}
