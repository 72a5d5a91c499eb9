//! CPU custom ops with fast backward passes for the ADM UNet's training step.
//!
//! candle 0.11.1's conv2d forward uses small gemm tiles and its input gradient is a naive
//! `conv_transpose2d` loop; GroupNorm, SiLU and broadcast ops go through long chains of
//! full-size passes, and its sum over leading dimensions (bias gradients, broadcast upsampling)
//! is a scalar loop. Here:
//! - [`conv2d`] / [`Conv2d`]: y = W·col. In f32, col is built for cache-sized tiles of output
//!   rows only (none for 1×1), each multiplied with `gemm` straight into the output, in
//!   parallel; 3×3 stride-1 padding-1 convs where it pays ([`ConvPath`]) by Winograd F(4,3)
//!   (`nn::winograd`, off by [`set_winograd`]); in f64, one im2col + a batched candle
//!   matmul. Backward (only for tracked
//!   arguments): dx for stride 1 in f32 is the same conv with the flipped, transposed kernel,
//!   otherwise col2im(Wᵀ·g); dW = Σ_b g·colᵀ (col recomputed). Any stride and padding.
//! - [`group_norm`] / [`GroupNorm`]: forward and closed-form backward as loops over the
//!   (batch, group) blocks, in parallel, accumulating in f64:
//!   dx = (γ g − mean(γ g) − x̂ mean(γ g x̂)) / σ per group, dγ = Σ g x̂, dβ = Σ g.
//! - [`group_norm_silu`]: SiLU(GroupNorm(x)) in one pass when nothing is tracked (the denoiser
//!   calls of DAPS's ODE), else the two ops above.
//! - [`silu`], [`add_channel_bias`], [`scale_shift`] (h·(1 + s) + t), [`upsample2x`]: one pass
//!   each way; f32 SiLU with a polynomial exp that vectorises ([`exp_f32`]).
//!
//! All fall back to candle's ops off the CPU or for dtypes other than f32/f64, and give candle's
//! values up to float rounding (tests/fastops.rs).

use super::cpu_slice as slice;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor, WithDType};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

fn cpu_fast(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// Copies a contiguous storage slice.
fn copy_storage(s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fastops: non-contiguous result".into()))?;
    let s = match s {
        CpuStorage::F32(v) => CpuStorage::F32(v[a..b].to_vec()),
        CpuStorage::F64(v) => CpuStorage::F64(v[a..b].to_vec()),
        _ => candle_core::bail!("fastops: unsupported dtype"),
    };
    Ok((s, l.shape().clone()))
}

/// Convolution geometry (square stride and padding, no dilation, one group).
#[derive(Clone, Copy, Debug)]
struct Geom {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    pad: usize,
    stride: usize,
}

impl Geom {
    /// 1×1, stride 1, no padding: the columns are the input itself.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    fn out(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.kh) / self.stride + 1,
            (self.w + 2 * self.pad - self.kw) / self.stride + 1,
        )
    }
}

/// `x` `[B, C, H, W]` → columns `[B, C·kh·kw, Ho·Wo]` (zero padding).
fn im2col<T: WithDType>(x: &[T], g: Geom) -> Vec<T> {
    let (ho, wo) = g.out();
    let hw = g.h * g.w;
    let kk = g.kh * g.kw;
    let mut col = vec![T::zero(); x.len() / hw * kk * ho * wo];
    col.par_chunks_mut(kk * ho * wo)
        .zip(x.par_chunks(hw))
        .for_each(|(cb, xb)| {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let rows = &mut cb[(ky * g.kw + kx) * ho * wo..][..ho * wo];
                    for oy in 0..ho {
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let xr = &xb[iy as usize * g.w..][..g.w];
                        let out = &mut rows[oy * wo..][..wo];
                        if g.stride == 1 {
                            // ix = ox + kx − pad, valid for ox in [lo, hi).
                            let lo = g.pad.saturating_sub(kx);
                            let hi = (g.w + g.pad).saturating_sub(kx).min(wo);
                            if lo < hi {
                                let i0 = lo + kx - g.pad;
                                out[lo..hi].copy_from_slice(&xr[i0..i0 + hi - lo]);
                            }
                        } else {
                            for (ox, o) in out.iter_mut().enumerate() {
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if ix >= 0 && ix < g.w as isize {
                                    *o = xr[ix as usize];
                                }
                            }
                        }
                    }
                }
            }
        });
    col
}

/// Adjoint of [`im2col`]: columns `[B, C·kh·kw, Ho·Wo]` → `[B, C, H, W]`, summing overlaps.
fn col2im<T: WithDType>(col: &[T], g: Geom) -> Vec<T> {
    let (ho, wo) = g.out();
    let hw = g.h * g.w;
    let kk = g.kh * g.kw;
    let mut x = vec![T::zero(); col.len() / (kk * ho * wo) * hw];
    x.par_chunks_mut(hw)
        .zip(col.par_chunks(kk * ho * wo))
        .for_each(|(xb, cb)| {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let rows = &cb[(ky * g.kw + kx) * ho * wo..][..ho * wo];
                    for oy in 0..ho {
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let xr = &mut xb[iy as usize * g.w..][..g.w];
                        let inp = &rows[oy * wo..][..wo];
                        if g.stride == 1 {
                            let lo = g.pad.saturating_sub(kx);
                            let hi = (g.w + g.pad).saturating_sub(kx).min(wo);
                            if lo < hi {
                                let i0 = lo + kx - g.pad;
                                for (o, v) in xr[i0..i0 + hi - lo].iter_mut().zip(&inp[lo..hi]) {
                                    *o += *v;
                                }
                            }
                        } else {
                            for (ox, v) in inp.iter().enumerate() {
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if ix >= 0 && ix < g.w as isize {
                                    xr[ix as usize] += *v;
                                }
                            }
                        }
                    }
                }
            }
        });
    x
}

/// im2col (`adjoint = false`) or col2im (`adjoint = true`) as a graph-less custom op.
struct Cols {
    g: Geom,
    adjoint: bool,
}

impl candle_core::CustomOp1 for Cols {
    fn name(&self) -> &'static str {
        if self.adjoint {
            "col2im"
        } else {
            "im2col"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let b = l.dims()[0];
        let (ho, wo) = self.g.out();
        let kk = self.g.kh * self.g.kw;
        let shape: Shape = if self.adjoint {
            (b, self.g.c, self.g.h, self.g.w).into()
        } else {
            (b, self.g.c * kk, ho * wo).into()
        };
        let run = |adj: bool| -> Result<CpuStorage> {
            Ok(match s {
                CpuStorage::F32(_) => {
                    let v = slice::<f32>(s, l)?;
                    CpuStorage::F32(if adj {
                        col2im(v, self.g)
                    } else {
                        im2col(v, self.g)
                    })
                }
                CpuStorage::F64(_) => {
                    let v = slice::<f64>(s, l)?;
                    CpuStorage::F64(if adj {
                        col2im(v, self.g)
                    } else {
                        im2col(v, self.g)
                    })
                }
                _ => candle_core::bail!("im2col: unsupported dtype"),
            })
        };
        Ok((run(self.adjoint)?, shape))
    }
}

fn geom(
    x_dims: (usize, usize, usize, usize),
    w: &Tensor,
    pad: usize,
    stride: usize,
) -> Result<Geom> {
    let (_, c, h, wd) = x_dims;
    let (_, ci, kh, kw) = w.dims4()?;
    if ci != c || h + 2 * pad < kh || wd + 2 * pad < kw || stride == 0 {
        candle_core::bail!(
            "conv2d: input {x_dims:?} does not fit kernel {:?}",
            w.dims()
        );
    }
    Ok(Geom {
        c,
        h,
        w: wd,
        kh,
        kw,
        pad,
        stride,
    })
}

/// im2col of `x` `[B, C, H, W]` as `[B, C·kh·kw, Ho·Wo]` (a reshape for pointwise convs).
fn cols(x: &Tensor, g: Geom) -> Result<Tensor> {
    let x = x.contiguous()?;
    if g.pointwise() {
        let (b, c, h, w) = x.dims4()?;
        x.reshape((b, c, h * w))
    } else {
        x.apply_op1_no_bwd(&Cols { g, adjoint: false })
    }
}

/// Column tiles hold about this many f32 (1 MiB): they stay in cache between im2col and gemm.
const TILE: usize = 1 << 18;

/// A pointer to the output that the parallel tiles write to, each its own block.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: the tiles write disjoint blocks of one buffer that outlives the parallel loop.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// A method, so that closures capture the whole (Send + Sync) wrapper, not its field.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// How `jobs` independent products share the threads: the jobs in parallel, each gemm on one
/// thread, when there are enough of them; else one job at a time, gemm splitting each.
pub(super) fn gemm_parallelism(jobs: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if jobs >= 4 * threads || threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    }
}

/// dst `[m, n]` = lhs `[m, k]` · rhs `[k, n]`, row-major f32 blocks given as (pointer, row
/// stride) with unit column stride; dst is written without being read.
///
/// # Safety
/// Each pointer addresses a block of that shape and row stride, alive for the call, and no one
/// else touches dst's block meanwhile.
pub(super) unsafe fn gemm_rows(
    [m, n, k]: [usize; 3],
    (dst, dst_rs): (*mut f32, usize),
    (lhs, lhs_rs): (*const f32, usize),
    (rhs, rhs_rs): (*const f32, usize),
    par: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            1,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// [`im2col_rows`] for a stride-1 convolution with Wo = W (a "same" padding): each column row
/// is the input plane shifted by (ky − pad, kx − pad), so it is one contiguous copy, then zeros
/// for the rows outside the image and for the |kx − pad| columns that wrapped around.
fn im2col_rows_same(xb: &[f32], g: Geom, oy0: usize, oy1: usize, col: &mut [f32]) {
    let (w, hw) = (g.w, g.h * g.w);
    let tn = (oy1 - oy0) * w;
    for c in 0..g.c {
        let xc = &xb[c * hw..][..hw];
        for ky in 0..g.kh {
            // Output rows whose input row oy + ky − pad lies inside the image.
            let lo = oy0.max(g.pad.saturating_sub(ky)).min(oy1);
            let hi = oy1.min((g.h + g.pad).saturating_sub(ky)).max(lo);
            for kx in 0..g.kw {
                let r = (c * g.kh + ky) * g.kw + kx;
                let dst = &mut col[r * tn..][..tn];
                dst[..(lo - oy0) * w].fill(0.0);
                dst[(hi - oy0) * w..].fill(0.0);
                if lo == hi {
                    continue;
                }
                let out = &mut dst[(lo - oy0) * w..(hi - oy0) * w];
                let d = kx as isize - g.pad as isize;
                // out[j] = xc[s0 + j] wherever that index is inside the plane.
                let s0 = ((lo + ky - g.pad) * w) as isize + d;
                let n = out.len() as isize;
                let j0 = (-s0).clamp(0, n) as usize;
                let j1 = (hw as isize - s0).clamp(j0 as isize, n) as usize;
                out[..j0].fill(0.0);
                out[j1..].fill(0.0);
                let src = (s0 + j0 as isize) as usize;
                out[j0..j1].copy_from_slice(&xc[src..src + (j1 - j0)]);
                // Columns ox with ox + d outside 0..W took a neighbouring row's pixel.
                let bad = if d < 0 {
                    0..((-d) as usize).min(w)
                } else {
                    w - (d as usize).min(w)..w
                };
                for ox in bad {
                    for v in out.iter_mut().skip(ox).step_by(w) {
                        *v = 0.0;
                    }
                }
            }
        }
    }
}

/// im2col of output rows `oy0..oy1` of one image `xb` `[C, H, W]` into `col`
/// `[C·kh·kw, (oy1 − oy0)·Wo]` (every entry written, zeros for the padding).
fn im2col_rows(xb: &[f32], g: Geom, oy0: usize, oy1: usize, col: &mut [f32]) {
    let (_, wo) = g.out();
    if g.stride == 1 && wo == g.w && g.pad < g.kw && g.pad < g.kh {
        return im2col_rows_same(xb, g, oy0, oy1, col);
    }
    let tn = (oy1 - oy0) * wo;
    for c in 0..g.c {
        let xc = &xb[c * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (c * g.kh + ky) * g.kw + kx;
                let dst = &mut col[r * tn..][..tn];
                for (oy, out) in (oy0..oy1).zip(dst.chunks_exact_mut(wo)) {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let xr = &xc[iy as usize * g.w..][..g.w];
                    if g.stride == 1 {
                        // ix = ox + kx − pad, valid for ox in [lo, hi).
                        let lo = g.pad.saturating_sub(kx).min(wo);
                        let hi = (g.w + g.pad).saturating_sub(kx).clamp(lo, wo);
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        let i0 = lo + kx - g.pad;
                        out[lo..hi].copy_from_slice(&xr[i0..i0 + hi - lo]);
                    } else {
                        for (ox, o) in out.iter_mut().enumerate() {
                            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                            *o = if ix >= 0 && ix < g.w as isize {
                                xr[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        }
    }
}

/// f32 conv2d `x` `[B, C, H, W]` * `w` `[O, C·kh·kw]` → `[B, O, Ho·Wo]`: each tile of whole
/// output rows is im2col'ed into a small per-thread buffer (none for a pointwise conv) and
/// multiplied by `w` with `gemm` straight into its block of the output, so no full-size
/// column buffer is built. Tiles run in parallel; when there are too few of them, gemm
/// splits each product over the threads instead.
fn conv2d_tiled(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    b: usize,
    o: usize,
    g: Geom,
) -> Vec<f32> {
    let (ho, wo) = g.out();
    let (hw_in, hw_out) = (g.h * g.w, ho * wo);
    let ck = g.c * g.kh * g.kw;
    // Not zeroed: gemm writes every value without reading it (see `set_len` below).
    let len = b * o * hw_out;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return y;
    }
    let rows = (TILE / (ck * wo).max(1)).clamp(1, ho);
    let per_item = ho.div_ceil(rows);
    let inner = gemm_parallelism(b * per_item);
    let yp = SendPtr(y.as_mut_ptr());
    let tile = |col: &mut Vec<f32>, t: usize| {
        let (bi, ti) = (t / per_item, t % per_item);
        let (oy0, oy1) = (ti * rows, ((ti + 1) * rows).min(ho));
        let tn = (oy1 - oy0) * wo;
        let xb = &x[bi * g.c * hw_in..][..g.c * hw_in];
        let (rhs, rhs_rs) = if g.pointwise() {
            (xb[oy0 * wo..].as_ptr(), hw_in)
        } else {
            col.resize(ck * tn, 0.0);
            im2col_rows(xb, g, oy0, oy1, col);
            (col.as_ptr(), tn)
        };
        // SAFETY: `dst` is the [O, tn] block (row stride Ho·Wo) of item `bi` at column
        // oy0·Wo, inside `y` and written by this tile only; `w` is [O, ck] row-major and
        // `rhs` [ck, tn] with row stride `rhs_rs`, both alive for the call.
        unsafe {
            gemm_rows(
                [o, tn, ck],
                (yp.get().add(bi * o * hw_out + oy0 * wo), hw_out),
                (w.as_ptr(), ck),
                (rhs, rhs_rs),
                inner,
            );
            if let Some(bias) = bias {
                // While the block is in cache.
                let dst = yp.get().add(bi * o * hw_out + oy0 * wo);
                for (oc, &bv) in bias.iter().enumerate() {
                    for v in std::slice::from_raw_parts_mut(dst.add(oc * hw_out), tn) {
                        *v += bv;
                    }
                }
            }
        }
    };
    if matches!(inner, gemm::Parallelism::None) {
        (0..b * per_item)
            .into_par_iter()
            .for_each_init(Vec::new, |col, t| tile(col, t));
    } else {
        let mut col = Vec::new();
        (0..b * per_item).for_each(|t| tile(&mut col, t));
    }
    // SAFETY: the tiles cover all Ho rows of every item and gemm wrote each [O, tn] block.
    unsafe { y.set_len(len) };
    y
}

/// At most this many output channels take [`conv3x3_few`] (3×3 "same" convs) instead of an
/// im2col product, whose GEMM is then a row or a few wide: the digits prior's 32 → 1 output
/// conv, batch 8, 0.10 ms instead of 0.37–0.44 (one thread, one process); 2–4 outputs
/// 1.2–1.8× faster.
const FEW_OUTPUTS: usize = 4;

/// ... for an item's zero-bordered input planes of at most this many values (1 MiB): every run
/// of outputs reads all C·9 taps, which must stay in cache (at 256×256 the im2col product is
/// as fast or faster).
const FEW_MAX_INPUT: usize = 1 << 18;

/// 3×3 conv, stride 1, padding 1, of `x` `[B, C, H, W]` to `o` ≤ [`FEW_OUTPUTS`] channels,
/// directly: each item's channels are zero-bordered to (H + 2) × (W + 2) planes, so every tap
/// is one shifted contiguous run, and runs of [`FEW_RUN`] outputs keep their sums in registers
/// over the C·9 taps (c, then ky, then kx), plus the bias at the end.
fn conv3x3_few(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    b: usize,
    o: usize,
    g: Geom,
) -> Vec<f32> {
    let (h, wd, c) = (g.h, g.w, g.c);
    let (hp, wp) = (h + 2, wd + 2);
    let mut y = unwritten::<f32>(b * o * h * wd);
    y.par_chunks_mut(o * h * wd)
        .zip(x.par_chunks(c * h * wd))
        .for_each(|(yb, xb)| {
            // Spare zeros at the end: the last run of the last plane reads past it.
            let mut xp = vec![0f32; c * hp * wp + FEW_RUN];
            for (plane, dst) in xb.chunks_exact(h * wd).zip(xp.chunks_exact_mut(hp * wp)) {
                for (row, d) in plane.chunks_exact(wd).zip(dst[wp..].chunks_exact_mut(wp)) {
                    d[1..=wd].copy_from_slice(row);
                }
            }
            // Outputs in the padded width: row r of the plane at r·(W + 2), two spare columns.
            let mut acc = vec![0f32; h * wp];
            for (oc, yo) in yb.chunks_exact_mut(h * wd).enumerate() {
                let wo = &w[oc * c * 9..][..c * 9];
                few_plane(&mut acc, &xp, wo, (c, hp, wp));
                let bv = bias.map_or(0.0, |b| b[oc]);
                for (yr, ar) in yo.chunks_exact_mut(wd).zip(acc.chunks_exact(wp)) {
                    for (d, &v) in yr.iter_mut().zip(ar) {
                        d.write(v + bv);
                    }
                }
            }
        });
    // SAFETY: every (item, output channel) plane was written whole above.
    unsafe { written(y) }
}

/// Outputs per register-held run of [`few_plane`] (four AVX-512 or eight AVX2 registers).
const FEW_RUN: usize = 64;

/// `acc[i]` = Σ over channels and taps of w · xp[i + tap offset] (fused multiply-adds in
/// tap order, the same bits on every path), for the padded-width outputs `acc` `[H, W + 2]`
/// of one output channel (`wo` `[C, 3, 3]`).
fn few_plane(acc: &mut [f32], xp: &[f32], wo: &[f32], (c, hp, wp): (usize, usize, usize)) {
    let taps: Vec<(usize, f32)> = (0..c * 9)
        .map(|t| {
            let (ci, k) = (t / 9, t % 9);
            (ci * hp * wp + (k / 3) * wp + k % 3, wo[t])
        })
        .collect();
    let full = acc.len() / FEW_RUN * FEW_RUN;
    // The whole runs read xp[off .. off + full] for every tap offset.
    assert!(taps.iter().all(|&(off, _)| off + full <= xp.len()));
    #[cfg(target_arch = "x86_64")]
    if super::winograd::avx512() {
        // SAFETY: AVX-512F checked; the runs read inside xp (asserted) and write inside acc.
        unsafe { few_runs_avx512(&mut acc[..full], xp, &taps) };
        return few_tail(acc, xp, &taps, full);
    }
    #[cfg(target_arch = "x86_64")]
    if super::winograd::avx2() {
        // SAFETY: AVX2 and FMA checked; bounds as above.
        unsafe { few_runs_avx2(&mut acc[..full], xp, &taps) };
        return few_tail(acc, xp, &taps, full);
    }
    few_tail(acc, xp, &taps, 0)
}

/// [`few_plane`] from output `s0` on, one value at a time.
fn few_tail(acc: &mut [f32], xp: &[f32], taps: &[(usize, f32)], s0: usize) {
    for (i, a) in acc.iter_mut().enumerate().skip(s0) {
        *a = taps
            .iter()
            .fold(0f32, |sum, &(off, wv)| wv.mul_add(xp[off + i], sum));
    }
}

/// `unsafe fn NAME(acc, xp, taps)`: [`few_plane`]'s whole runs of [`FEW_RUN`] outputs, each held
/// in FEW_RUN / LANES registers of `$v` over all taps (one broadcast weight, one load and one FMA
/// per register and tap), for the target features `$feat`.
///
/// # Safety (of the functions made)
/// The CPU has `$feat`; `xp[off + s .. off + s + FEW_RUN]` is readable for every tap offset and
/// run start s < `acc.len()`.
macro_rules! few_runs {
    ($name:ident, $feat:literal, $v:ident, $lanes:literal,
     $zero:ident, $set1:ident, $fmadd:ident, $load:ident, $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $name(acc: &mut [f32], xp: &[f32], taps: &[(usize, f32)]) {
            use std::arch::x86_64::*;
            for (r, out) in acc.chunks_exact_mut(FEW_RUN).enumerate() {
                let base = xp.as_ptr().add(r * FEW_RUN);
                let mut a: [$v; FEW_RUN / $lanes] = [$zero(); FEW_RUN / $lanes];
                for &(off, wv) in taps {
                    let (p, w) = (base.add(off), $set1(wv));
                    for (q, aq) in a.iter_mut().enumerate() {
                        *aq = $fmadd(w, $load(p.add($lanes * q)), *aq);
                    }
                }
                for (q, aq) in a.iter().enumerate() {
                    $store(out.as_mut_ptr().add($lanes * q), *aq);
                }
            }
        }
    };
}

few_runs!(
    few_runs_avx512,
    "avx512f",
    __m512,
    16,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps
);
few_runs!(
    few_runs_avx2,
    "avx2,fma",
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps
);

/// The f32 forward conv as a graph-less custom op on (x, w): [`conv2d_tiled`], or
/// [`super::winograd::conv3x3`] (3×3, stride 1, padding 1 only); a bias `[O]`, if any, is added
/// as the output is written (no separate pass).
struct ForwardConv {
    g: Geom,
    winograd: bool,
    bias: Option<Vec<f32>>,
    /// The Winograd transform of the weights, when the layer keeps it.
    u: Option<std::sync::Arc<Vec<f32>>>,
}

impl ForwardConv {
    fn name(&self) -> &'static str {
        if self.winograd {
            "winograd-conv2d"
        } else {
            "tiled-conv2d"
        }
    }

    /// The convolution (+ bias) of `x` by `w`, plus `res` (the output's shape) if given.
    fn run(
        &self,
        (sx, lx): (&CpuStorage, &Layout),
        (sw, lw): (&CpuStorage, &Layout),
        res: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, o, g) = (lx.dims()[0], lw.dims()[0], self.g);
        let (ho, wo) = g.out();
        let (x, w) = (slice(sx, lx)?, slice(sw, lw)?);
        let bias = self.bias.as_deref();
        if bias.is_some_and(|v| v.len() != o) {
            candle_core::bail!(
                "conv2d: bias of {} values for {o} output channels",
                bias.map_or(0, |v| v.len())
            );
        }
        if res.is_some_and(|r| r.len() != b * o * ho * wo) {
            candle_core::bail!("conv2d: residual of another shape than the output");
        }
        let y = if self.winograd {
            let u = self.u.as_deref().map(Vec::as_slice);
            super::winograd::conv3x3(x, w, u, bias, res, [b, g.c, o, g.h, g.w], TILE)
        } else {
            let few = o <= FEW_OUTPUTS
                && (g.kh, g.kw, g.pad, g.stride) == (3, 3, 1, 1)
                && g.c * (g.h + 2) * (g.w + 2) <= FEW_MAX_INPUT
                && DIRECT_FEW.load(Ordering::Relaxed);
            let mut y = if few {
                conv3x3_few(x, w, bias, b, o, g)
            } else {
                conv2d_tiled(x, w, bias, b, o, g)
            };
            if let Some(r) = res {
                y.par_chunks_mut(1 << 14)
                    .zip(r.par_chunks(1 << 14))
                    .for_each(|(yc, rc)| yc.iter_mut().zip(rc).for_each(|(v, r)| *v += r));
            }
            y
        };
        Ok((CpuStorage::F32(y), (b, o, ho, wo).into()))
    }
}

impl candle_core::CustomOp2 for ForwardConv {
    fn name(&self) -> &'static str {
        ForwardConv::name(self)
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((sx, lx), (sw, lw), None)
    }
}

/// With a residual `r` as the third argument: `r + conv(x, w)`.
impl CustomOp3 for ForwardConv {
    fn name(&self) -> &'static str {
        ForwardConv::name(self)
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sr: &CpuStorage,
        lr: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((sx, lx), (sw, lw), Some(slice(sr, lr)?))
    }
}

static WINOGRAD: AtomicBool = AtomicBool::new(true);
static DIRECT_FEW: AtomicBool = AtomicBool::new(true);

/// Turns the direct kernel for 3×3 convs to ≤ 4 channels (`conv3x3_few`) on or off,
/// process-wide (on by default; off, they take im2col + gemm). For timing the two in one run.
pub fn set_direct_few(on: bool) {
    DIRECT_FEW.store(on, Ordering::Relaxed);
}

/// Turns the Winograd path of f32 3×3 convolutions on or off, process-wide (on by default;
/// off, they take the im2col path like every other conv). For timing the two in one run.
pub fn set_winograd(on: bool) {
    WINOGRAD.store(on, Ordering::Relaxed);
}

/// Whether [`set_winograd`] last turned the Winograd path on.
pub fn winograd() -> bool {
    WINOGRAD.load(Ordering::Relaxed)
}

/// Whether Winograd beats im2col for a 3×3 "same" conv of `[B, C, H, W]` to O channels, as
/// timed on one thread: 1.1–1.7× faster from 16 input and output channels (up to 256×256
/// images and 512 channels) given at least 32 4×4 tiles in the batch; slower with fewer tiles
/// (the weight transform, O·C·36 values, and 36 narrow GEMMs dominate: 0.2–0.8× at 4–16
/// tiles) or with a few channels on one side (the RGB in and out convs: 0.3–0.9×).
fn winograd_pays(b: usize, c: usize, o: usize, h: usize, w: usize) -> bool {
    c.min(o) >= 16 && b * h.div_ceil(4) * w.div_ceil(4) >= 32
}

/// Which f32 algorithm [`conv2d_forward`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    /// Winograd where it applies and pays (16+ channels each side, 32+ tiles of 4×4 pixels in
    /// the batch; unless turned off by [`set_winograd`]), else im2col.
    Auto,
    /// im2col tiles + gemm.
    Im2col,
    /// Winograd F(4,3); an error unless the conv is 3×3, stride 1, padding 1, f32.
    Winograd,
}

/// Graph-less conv2d `x` `[B, C, H, W]` * `w` `[O, C, kh, kw]` (no dilation, one group) on
/// the CPU, the forward of [`conv2d`]: f32 by Winograd ([`super::winograd`]) or by
/// [`conv2d_tiled`] as `path` says; f64 by im2col + batched matmul. Public to compare the two
/// f32 algorithms.
pub fn conv2d_forward(
    x: &Tensor,
    w: &Tensor,
    pad: usize,
    stride: usize,
    path: ConvPath,
) -> Result<Tensor> {
    conv2d_forward_bias(x, w, None, pad, stride, path)
}

/// [`conv2d_forward`] plus a per-channel `bias` `[O]`: for f32, added as the output is written.
pub fn conv2d_forward_bias(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    pad: usize,
    stride: usize,
    path: ConvPath,
) -> Result<Tensor> {
    conv2d_forward_kept(x, w, bias, pad, stride, path, None, None)
}

/// The Winograd transform of a layer's weights, made by its first Winograd forward and kept
/// (only for weights that are not variables: a variable can change between calls).
type KeptU = std::sync::OnceLock<std::sync::Arc<Vec<f32>>>;

/// [`conv2d_forward_bias`] with the layer's [`KeptU`], plus `res` (the output's shape) if given:
/// `res + conv` (for f32, added as the output is written).
#[allow(clippy::too_many_arguments)]
fn conv2d_forward_kept(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    pad: usize,
    stride: usize,
    path: ConvPath,
    kept: Option<&KeptU>,
    res: Option<&Tensor>,
) -> Result<Tensor> {
    let g = geom(x.dims4()?, w, pad, stride)?;
    let f32s = x.dtype() == DType::F32 && w.dtype() == DType::F32 && x.device().is_cpu();
    let fused_res = f32s
        && bias.is_none_or(|b| b.dtype() == DType::F32)
        && res.is_none_or(|r| r.dtype() == DType::F32 && r.device().is_cpu());
    if let (Some(r), false) = (res, fused_res) {
        // Only the f32 CPU op adds a residual as it writes; elsewhere, afterwards.
        return r + conv2d_forward_kept(x, w, bias, pad, stride, path, kept, None)?;
    }
    let fits = f32s && g.kh == 3 && g.kw == 3 && pad == 1 && stride == 1;
    let o = w.dim(0)?;
    let wino = match path {
        ConvPath::Winograd if !fits => candle_core::bail!(
            "winograd conv2d needs an f32 CPU 3×3 conv with stride 1 and padding 1, got {}×{} \
             stride {stride} padding {pad} {:?}",
            g.kh,
            g.kw,
            x.dtype()
        ),
        ConvPath::Winograd => true,
        ConvPath::Im2col => false,
        ConvPath::Auto => fits && winograd() && winograd_pays(x.dim(0)?, g.c, o, g.h, g.w),
    };
    if f32s && bias.is_none_or(|b| b.dtype() == DType::F32) {
        let bias = bias
            .map(|b| b.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        let u = match kept {
            Some(k) if wino && !w.is_variable() => {
                if k.get().is_none() {
                    let wv = w.flatten_all()?.to_vec1::<f32>()?;
                    let _ = k.set(std::sync::Arc::new(super::winograd::weights(&wv, o, g.c)));
                }
                k.get().cloned()
            }
            _ => None,
        };
        let op = ForwardConv {
            g,
            winograd: wino,
            bias,
            u,
        };
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        return match res {
            Some(r) => x.apply_op3_no_bwd(&w, &r.contiguous()?, &op),
            None => x.apply_op2_no_bwd(&w, &op),
        };
    }
    if let Some(b) = bias {
        let y = conv2d_forward_bias(x, w, None, pad, stride, path)?;
        return add_channel_bias(&y, b);
    }
    let (b, o) = (x.dim(0)?, w.dim(0)?);
    let (ho, wo) = g.out();
    let w2 = w.reshape((o, g.c * g.kh * g.kw))?;
    let x = x.contiguous()?;
    let ys = batch_chunks(b, g)
        .into_iter()
        .map(|(s, n)| w2.broadcast_left(n)?.matmul(&cols(&x.narrow(0, s, n)?, g)?))
        .collect::<Result<Vec<_>>>()?;
    cat0(ys)?.reshape((b, o, ho, wo))
}

/// Column buffers are built for at most this many elements at a time (16 MiB of f32): large
/// fresh allocations are mmapped and page-faulted in on every call, smaller ones are reused
/// by the allocator.
const COL_CHUNK: usize = 1 << 22;

/// Batch ranges (start, len) whose column buffers stay under [`COL_CHUNK`] (one item at least).
fn batch_chunks(b: usize, g: Geom) -> Vec<(usize, usize)> {
    let (ho, wo) = g.out();
    let per_item = if g.pointwise() {
        0
    } else {
        g.c * g.kh * g.kw * ho * wo
    };
    let n = (COL_CHUNK / per_item.max(1)).clamp(1, b.max(1));
    (0..b).step_by(n).map(|s| (s, n.min(b - s))).collect()
}

fn cat0(mut ts: Vec<Tensor>) -> Result<Tensor> {
    if ts.len() == 1 {
        // Invariant: len() == 1 was just checked.
        Ok(ts.pop().expect("one tensor"))
    } else {
        Tensor::cat(&ts, 0)
    }
}

/// Carries the forward result `y = conv2d(x, w)` (computed without a graph) and gives it the
/// fast backward pass with respect to `x` and `w`.
struct ConvGrad {
    padding: usize,
    stride: usize,
}

impl CustomOp3 for ConvGrad {
    fn name(&self) -> &'static str {
        "fast-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy_storage(y, ly)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // No gradient for an argument outside the graph (the input image, frozen weights).
        let (want_x, want_w) = (x.track_op(), w.track_op());
        let x = x.detach();
        let w = w.detach();
        let g = geom(x.dims4()?, &w, self.padding, self.stride)?;
        let (b, o) = (x.dim(0)?, w.dim(0)?);
        let (ho, wo) = g.out();
        let ck = g.c * g.kh * g.kw;
        let g3 = gy
            .detach()
            .to_dtype(x.dtype())?
            .reshape((b, o, ho * wo))?
            .contiguous()?;
        let chunks = batch_chunks(b, g);
        let dx = if want_x {
            Some(conv_input_grad(
                &g3,
                &w,
                g,
                self.padding,
                self.stride,
                None,
                None,
            )?)
        } else {
            None
        };
        let dw = if want_w {
            // dw = Σ_b g colᵀ, the batch sum as a matmul with ones (candle's sum over a leading
            // dim is a scalar loop).
            let x = x.contiguous()?;
            let mut acc: Option<Tensor> = None;
            for &(s, n) in &chunks {
                let col = cols(&x.narrow(0, s, n)?, g)?;
                let dwb = g3
                    .narrow(0, s, n)?
                    .matmul(&col.t()?)?
                    .reshape((n, o * ck))?;
                let ones = Tensor::ones((1, n), dwb.dtype(), dwb.device())?;
                let part = ones.matmul(&dwb)?;
                acc = Some(match acc {
                    None => part,
                    Some(a) => (a + part)?,
                });
            }
            match acc {
                Some(a) => Some(a.reshape(w.shape())?),
                // An empty batch: no chunk, a zero weight gradient.
                None => Some(w.zeros_like()?),
            }
        } else {
            None
        };
        Ok((dx, dw, None))
    }
}

/// The kernel of a stride-1 input gradient: `w` `[O, C, k, k]` with O and C swapped and the
/// kernel flipped, `[C, O, k, k]`.
fn flipped_kernel(w: &Tensor) -> Result<Tensor> {
    let k = w.dim(2)?;
    let rev = Tensor::from_vec((0..k as u32).rev().collect::<Vec<_>>(), k, w.device())?;
    w.transpose(0, 1)?
        .contiguous()?
        .index_select(&rev, 2)?
        .index_select(&rev, 3)
}

/// dx of `y = conv2d(x, w)` for `g3` = dy as `[B, O, Ho·Wo]` (`flipped`: [`flipped_kernel`]
/// of `w` when the caller keeps it).
fn conv_input_grad(
    g3: &Tensor,
    w: &Tensor,
    g: Geom,
    padding: usize,
    stride: usize,
    flipped: Option<&Tensor>,
    kept: Option<&KeptU>,
) -> Result<Tensor> {
    let (b, o, _) = g3.dims3()?;
    let (ho, wo) = g.out();
    if stride == 1 && w.dtype() == DType::F32 && g.kh == g.kw && padding < g.kh {
        // Stride 1: dx = conv2d(g, w with O and C swapped and the kernel flipped), padded
        // by k − 1 − pad: the tiled forward conv, no full-size column buffer.
        let k = g.kh;
        let wf = match flipped {
            Some(f) => f.clone(),
            None => flipped_kernel(w)?,
        };
        let g4 = g3.reshape((b, o, ho, wo))?;
        let kept = kept.filter(|_| !w.is_variable());
        let pad = k - 1 - padding;
        return conv2d_forward_kept(&g4, &wf, None, pad, 1, ConvPath::Auto, kept, None);
    }
    // dx = col2im(wᵀ g)
    let w2t = w.reshape((o, g.c * g.kh * g.kw))?.t()?;
    let parts = batch_chunks(b, g)
        .iter()
        .map(|&(s, n)| {
            let dcol = w2t.broadcast_left(n)?.matmul(&g3.narrow(0, s, n)?)?;
            if g.pointwise() {
                dcol.reshape((n, g.c, g.h, g.w))
            } else {
                dcol.apply_op1_no_bwd(&Cols { g, adjoint: true })
            }
        })
        .collect::<Result<Vec<_>>>()?;
    cat0(parts)
}

/// `conv2d(x, w, padding, stride)` (no dilation, one group) with the fast backward pass on the
/// CPU; candle's conv2d elsewhere.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    // candle has no half-precision convolution on the CPU: widen the (already rounded) operands,
    // accumulate in f32 and round the result, the numerics of a GPU's half GEMM.
    let half = matches!(x.dtype(), DType::BF16 | DType::F16);
    if half && x.device().is_cpu() && w.dtype() == x.dtype() {
        let y = conv2d(
            &x.to_dtype(DType::F32)?,
            &w.to_dtype(DType::F32)?,
            padding,
            stride,
        )?;
        return y.to_dtype(x.dtype());
    }
    if !cpu_fast(x) || w.dtype() != x.dtype() {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    let y = conv2d_forward(&x.detach(), &w.detach(), padding, stride, ConvPath::Auto)?;
    if !x.track_op() && !w.track_op() {
        return Ok(y);
    }
    x.apply_op3(w, &y, ConvGrad { padding, stride })
}

/// A `Conv2d` layer (`weight` `[O, I, k, k]`, optional `bias` `[O]`) using [`conv2d`]; the
/// parameters are those of `candle_nn::conv2d`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
    /// [`flipped_kernel`] of `weight`, made by the first [`Conv2d::input_grad`].
    flipped: std::sync::OnceLock<Tensor>,
    /// The Winograd transform of `weight`, made by the first graph-less Winograd forward.
    winograd_u: KeptU,
    /// That of the flipped kernel, made by the first [`Conv2d::input_grad`] that takes Winograd.
    flipped_u: KeptU,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, padding: usize, stride: usize) -> Self {
        Self {
            weight,
            bias,
            padding,
            stride,
            flipped: std::sync::OnceLock::new(),
            winograd_u: KeptU::new(),
            flipped_u: KeptU::new(),
        }
    }

    /// As `candle_nn::conv2d(i, o, k, {padding, stride}, vb)` (same names and initialisation).
    pub fn load(
        i: usize,
        o: usize,
        k: usize,
        padding: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cfg = candle_nn::Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let c = candle_nn::conv2d(i, o, k, cfg, vb)?;
        Ok(Self::new(
            c.weight().clone(),
            c.bias().cloned(),
            padding,
            stride,
        ))
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The gradient with respect to the input of [`Module::forward`] on an input of shape
    /// `x_dims`, for the output gradient `gy` (graph-less; the weights are constants). Stride-1
    /// convolutions keep their flipped kernel for the next call.
    pub fn input_grad(&self, gy: &Tensor, x_dims: (usize, usize, usize, usize)) -> Result<Tensor> {
        let w = &self.weight;
        let g = geom(x_dims, w, self.padding, self.stride)?;
        let (ho, wo) = g.out();
        let (b, o) = (x_dims.0, w.dim(0)?);
        if gy.dims() != [b, o, ho, wo] {
            candle_core::bail!(
                "conv input_grad: output gradient {:?} for an input {x_dims:?} (expected {:?})",
                gy.dims(),
                [b, o, ho, wo]
            );
        }
        if !cpu_fast(gy) || gy.dtype() != w.dtype() {
            // Elsewhere: candle's autograd through its own convolution.
            let xv = candle_core::Var::zeros(x_dims, gy.dtype(), gy.device())?;
            let y = xv.as_tensor().conv2d(w, self.padding, self.stride, 1, 1)?;
            let grads = (y * gy.detach())?.sum_all()?.backward()?;
            return grads
                .get(xv.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("conv input_grad: no gradient".into()));
        }
        let g3 = gy.reshape((b, o, ho * wo))?.contiguous()?;
        let flipped = if self.stride == 1 && g.kh == g.kw && self.padding < g.kh {
            Some(match self.flipped.get() {
                Some(f) => f.clone(),
                None => {
                    let f = flipped_kernel(w)?;
                    let _ = self.flipped.set(f.clone());
                    f
                }
            })
        } else {
            None
        };
        conv_input_grad(
            &g3,
            w,
            g,
            self.padding,
            self.stride,
            flipped.as_ref(),
            Some(&self.flipped_u),
        )
    }
}

impl Conv2d {
    /// `r + self.forward(x)` (a residual connection): without a graph on the CPU in f32, `r`
    /// is added as the output is written (same bits as the sum of the two).
    pub fn forward_add(&self, x: &Tensor, r: &Tensor) -> Result<Tensor> {
        self.forward_res(x, Some(r))
    }

    fn forward_res(&self, x: &Tensor, res: Option<&Tensor>) -> Result<Tensor> {
        if let Some(b) = &self.bias {
            // No graph to keep: the bias goes in as the convolution writes its output.
            let w = &self.weight;
            let all = [Some(x), Some(w), Some(b), res];
            let f32s = all.iter().flatten().all(|t| t.dtype() == DType::F32);
            let tracked = all.iter().flatten().any(|t| t.track_op());
            if f32s && x.device().is_cpu() && !tracked {
                return conv2d_forward_kept(
                    &x.detach(),
                    w,
                    Some(b),
                    self.padding,
                    self.stride,
                    ConvPath::Auto,
                    Some(&self.winograd_u),
                    res,
                );
            }
        }
        let y = conv2d(x, &self.weight, self.padding, self.stride)?;
        let y = match &self.bias {
            None => y,
            Some(b) => add_channel_bias(&y, b)?,
        };
        match res {
            Some(r) => r + y,
            None => Ok(y),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_res(x, None)
    }
}

/// GroupNorm over `x` `[B, C, ...]` with affine `gamma`, `beta` `[C]`: the custom op.
struct GroupNormOp {
    groups: usize,
    eps: f64,
}

/// GroupNorm followed by SiLU in one pass, forward only ([`group_norm_silu`]).
struct GroupNormSilu {
    groups: usize,
    eps: f64,
}

/// Σ f(v) over `x` in f64, in 8 independent lanes (so that the loop vectorises).
#[inline(always)]
fn sum_lanes(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] += f(c[k]);
        }
    }
    chunks.remainder().iter().map(|&v| f(v)).sum::<f64>() + acc.iter().sum::<f64>()
}

/// `fn NAME(args) -> R` running `BODY(args)` built for AVX-512 (F, VL, DQ) or else AVX2 + FMA
/// where the CPU has it (the crate targets baseline x86-64, whose SSE2 does a quarter / half as
/// many lanes per instruction; the same operations in the same order, so the same bits). For the
/// per-chunk kernels of parallel loops: a closure that rayon calls is not built with the
/// features of the function that made it.
macro_rules! avx2_dispatch {
    ($name:ident, $avx:ident, $avx512:ident, $body:ident, ($($a:ident: $t:ty),*) -> $r:ty) => {
        fn $name($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            if super::winograd::avx512() {
                // SAFETY: the CPU has AVX-512F/VL/DQ, AVX2 and FMA (checked).
                return unsafe { $avx512($($a),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if super::winograd::avx2() {
                // SAFETY: the CPU has AVX2 and FMA (checked).
                return unsafe { $avx($($a),*) };
            }
            $body($($a),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx($($a: $t),*) -> $r {
            $body($($a),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
        unsafe fn $avx512($($a: $t),*) -> $r {
            $body($($a),*)
        }
    };
}

avx2_dispatch!(gn_fwd_chunk, gn_fwd_chunk_avx2, gn_fwd_chunk_avx512, gn_fwd_chunk_body,
    (yb: &mut [MaybeUninit<f32>], xb: &[f32], affine: (&[f32], &[f32]), then: GnThen<'_>, s: usize, eps: f64) -> ());
avx2_dispatch!(gn_bwd_chunk, gn_bwd_chunk_avx2, gn_bwd_chunk_avx512, gn_bwd_chunk_body,
    (db: &mut [MaybeUninit<f32>], xb: &[f32], gyb: &[f32], pb: &mut [(f64, f64)], gb: &[f32], s: usize, eps: f64) -> ());
avx2_dispatch!(silu_chunk, silu_chunk_avx2, silu_chunk_avx512, silu_chunk_body, (yb: &mut [MaybeUninit<f32>], xb: &[f32]) -> ());
avx2_dispatch!(silu_grad_chunk, silu_grad_chunk_avx2, silu_grad_chunk_avx512, silu_grad_chunk_body,
    (db: &mut [MaybeUninit<f32>], xb: &[f32], gb: &[f32]) -> ());

/// `n` values not yet written: for outputs that a pass writes whole, without zeroing them first
/// (a memset per GroupNorm/SiLU output was ≈ 3% of a DPS step on digits).
fn unwritten<T>(n: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: MaybeUninit values need no initialisation.
    unsafe { v.set_len(n) };
    v
}

/// The values of `v` once every one has been written.
///
/// # Safety
/// Every element of `v` must have been written.
unsafe fn written<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: MaybeUninit<T> has T's layout, and the caller guarantees initialisation.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity()) }
}

/// What [`gn_fwd_f32`] applies after GroupNorm's affine map, in the same pass.
#[derive(Clone, Copy)]
enum GnThen<'a> {
    Nothing,
    Silu,
    /// ADM's scale-shift norm, ·(1 + scale) + shift with `scale`, `shift` `[B, C]` (in a
    /// chunk: its channels'), then SiLU.
    ScaleShiftSilu(&'a [f32], &'a [f32]),
}

/// f32 GroupNorm forward (statistics in f64), then `then`: all in one pass.
fn gn_fwd_f32(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    then: GnThen<'_>,
    (s, groups, eps): (usize, usize, f64),
) -> Vec<f32> {
    let c = gamma.len();
    let cpg = c / groups;
    let mut y = unwritten::<f32>(x.len());
    y.par_chunks_mut(cpg * s)
        .zip(x.par_chunks(cpg * s))
        .enumerate()
        .for_each(|(i, (yb, xb))| {
            let ch = (i % groups) * cpg..(i % groups + 1) * cpg;
            let at = (i / groups) * c + ch.start..(i / groups) * c + ch.end;
            let then = match then {
                GnThen::ScaleShiftSilu(sc, sh) => GnThen::ScaleShiftSilu(&sc[at.clone()], &sh[at]),
                t => t,
            };
            gn_fwd_chunk(yb, xb, (&gamma[ch.clone()], &beta[ch]), then, s, eps);
        });
    // SAFETY: each chunk is one (item, group): its cpg channels × s values are all written.
    unsafe { written(y) }
}

/// One (item, group) of [`gn_fwd_f32`]: `affine` its channels' γ and β. The same operations
/// in the same order as GroupNorm, [`scale_shift`] and [`silu`] one after another, so the same
/// bits.
#[inline(always)]
fn gn_fwd_chunk_body(
    yb: &mut [MaybeUninit<f32>],
    xb: &[f32],
    (gb, bb): (&[f32], &[f32]),
    then: GnThen<'_>,
    s: usize,
    eps: f64,
) {
    let n = xb.len() as f64;
    let mean = sum_lanes(xb, |v| v as f64) / n;
    let var = sum_lanes(xb, |v| {
        let d = v as f64 - mean;
        d * d
    }) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    let m = mean as f32;
    for cc in 0..gb.len() {
        let (a, b) = ((gb[cc] as f64 * rstd) as f32, bb[cc]);
        let (yo, xi) = (&mut yb[cc * s..(cc + 1) * s], &xb[cc * s..(cc + 1) * s]);
        match then {
            GnThen::ScaleShiftSilu(sc, sh) => {
                let (k, t) = (sc[cc] + 1.0, sh[cc]);
                for (o, &v) in yo.iter_mut().zip(xi) {
                    o.write(silu1(((v - m) * a + b) * k + t));
                }
            }
            GnThen::Silu => {
                for (o, &v) in yo.iter_mut().zip(xi) {
                    o.write(silu1((v - m) * a + b));
                }
            }
            GnThen::Nothing => {
                for (o, &v) in yo.iter_mut().zip(xi) {
                    o.write((v - m) * a + b);
                }
            }
        }
    }
}

/// Forward of GroupNorm (then SiLU when `act`) on CPU storages.
fn gn_cpu(
    (sx, lx): (&CpuStorage, &Layout),
    (sg, lg): (&CpuStorage, &Layout),
    (sb, lb): (&CpuStorage, &Layout),
    groups: usize,
    eps: f64,
    act: bool,
) -> Result<(CpuStorage, Shape)> {
    let s = lx.dims()[2..].iter().product::<usize>();
    let y = match sx {
        CpuStorage::F32(_) => CpuStorage::F32(gn_fwd_f32(
            slice(sx, lx)?,
            slice(sg, lg)?,
            slice(sb, lb)?,
            if act { GnThen::Silu } else { GnThen::Nothing },
            (s, groups, eps),
        )),
        CpuStorage::F64(_) => {
            let y = gn_fwd::<f64>(
                slice(sx, lx)?,
                slice(sg, lg)?,
                slice(sb, lb)?,
                s,
                groups,
                eps,
            );
            CpuStorage::F64(if act { silu_map(&y) } else { y })
        }
        _ => candle_core::bail!("group-norm: unsupported dtype"),
    };
    Ok((y, lx.shape().clone()))
}

impl CustomOp3 for GroupNormSilu {
    fn name(&self) -> &'static str {
        "fast-group-norm-silu"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        gn_cpu((sx, lx), (sg, lg), (sb, lb), self.groups, self.eps, true)
    }
}

/// Mean and 1/σ of one block (two passes, f64).
fn stats<T: WithDType>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|v| {
            let d = v.to_f64() - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `x` is `[B, C, S]` flattened; a block is the `[C/groups, S]` slab of one (b, group).
fn gn_fwd<T: WithDType>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    s: usize,
    groups: usize,
    eps: f64,
) -> Vec<T> {
    let cpg = gamma.len() / groups;
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(cpg * s)
        .zip(x.par_chunks(cpg * s))
        .enumerate()
        .for_each(|(i, (yb, xb))| {
            let g = i % groups;
            let (mean, rstd) = stats(xb, eps);
            for cc in 0..cpg {
                let ch = g * cpg + cc;
                let a = gamma[ch].to_f64() * rstd;
                let b = beta[ch].to_f64() - mean * a;
                for (o, v) in yb[cc * s..(cc + 1) * s]
                    .iter_mut()
                    .zip(&xb[cc * s..(cc + 1) * s])
                {
                    *o = T::from_f64(v.to_f64() * a + b);
                }
            }
        });
    y
}

/// Σ a·b in eight f64 lanes (each product exact in f64).
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..8 {
            acc[k] += x[k] as f64 * y[k] as f64;
        }
    }
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum();
    tail + acc.iter().sum::<f64>()
}

/// [`gn_bwd`] for f32: the block sums in f64 lanes (Σ g·x̂ = rstd·(Σ g·x − mean·Σ g)), the
/// per-value pass in f32 as the forward's, dx = rstd·γ·g − rstd·m1 − x̂·rstd·m2.
fn gn_bwd_f32(
    x: &[f32],
    gamma: &[f32],
    gy: &[f32],
    s: usize,
    groups: usize,
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    gn_bwd_with(x, gamma, gy, s, groups, |db, xb, gyb, pb, gb| {
        gn_bwd_chunk(db, xb, gyb, pb, gb, s, eps)
    })
}

/// The GroupNorm backward over (item, group) chunks, `chunk(dx, x, gy, partial sums, γ)` per
/// chunk (dx whole; per channel (Σ g·x̂, Σ g)); then dγ, dβ as the sums over items.
fn gn_bwd_with<T: WithDType>(
    x: &[T],
    gamma: &[T],
    gy: &[T],
    s: usize,
    groups: usize,
    chunk: impl Fn(&mut [MaybeUninit<T>], &[T], &[T], &mut [(f64, f64)], &[T]) + Sync + Send,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let c = gamma.len();
    let cpg = c / groups;
    let nb = x.len() / (c * s).max(1);
    let mut dx = unwritten::<T>(x.len());
    let mut part = vec![(0f64, 0f64); nb * c];
    dx.par_chunks_mut(cpg * s)
        .zip(x.par_chunks(cpg * s))
        .zip(gy.par_chunks(cpg * s))
        .zip(part.par_chunks_mut(cpg))
        .enumerate()
        .for_each(|(i, (((db, xb), gyb), pb))| {
            let g = i % groups;
            chunk(db, xb, gyb, pb, &gamma[g * cpg..(g + 1) * cpg]);
        });
    let mut dgamma = vec![0f64; c];
    let mut dbeta = vec![0f64; c];
    for b in 0..nb {
        for ch in 0..c {
            dgamma[ch] += part[b * c + ch].0;
            dbeta[ch] += part[b * c + ch].1;
        }
    }
    (
        // SAFETY: every chunk kernel writes its whole chunk of dx.
        unsafe { written(dx) },
        dgamma.into_iter().map(T::from_f64).collect(),
        dbeta.into_iter().map(T::from_f64).collect(),
    )
}

/// One (item, group) of [`gn_bwd_f32`]: dx into `db`, per channel (Σ g·x̂, Σ g) into `pb`;
/// `gb` its channels' γ.
#[inline(always)]
fn gn_bwd_chunk_body(
    db: &mut [MaybeUninit<f32>],
    xb: &[f32],
    gyb: &[f32],
    pb: &mut [(f64, f64)],
    gb: &[f32],
    s: usize,
    eps: f64,
) {
    let n = xb.len() as f64;
    let mean = sum_lanes(xb, |v| v as f64) / n;
    let var = sum_lanes(xb, |v| {
        let d = v as f64 - mean;
        d * d
    }) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    let (mut m1, mut m2) = (0f64, 0f64);
    for cc in 0..gb.len() {
        let ga = gb[cc] as f64;
        let (xc, gc) = (&xb[cc * s..(cc + 1) * s], &gyb[cc * s..(cc + 1) * s]);
        let sg = sum_lanes(gc, |v| v as f64);
        let sgx = rstd * (dot_lanes(gc, xc) - mean * sg);
        pb[cc] = (sgx, sg);
        m1 += ga * sg;
        m2 += ga * sgx;
    }
    m1 /= n;
    m2 /= n;
    let (m, r) = (mean as f32, rstd as f32);
    let (k1, k2) = ((rstd * m1) as f32, (rstd * m2) as f32);
    for cc in 0..gb.len() {
        let a = (rstd * gb[cc] as f64) as f32;
        for ((o, &xv), &gv) in db[cc * s..(cc + 1) * s]
            .iter_mut()
            .zip(&xb[cc * s..(cc + 1) * s])
            .zip(&gyb[cc * s..(cc + 1) * s])
        {
            o.write(a * gv - k1 - (xv - m) * r * k2);
        }
    }
}

/// Returns (dx, dγ, dβ) for the output gradient `gy` (any float type, per value in f64).
fn gn_bwd<T: WithDType>(
    x: &[T],
    gamma: &[T],
    gy: &[T],
    s: usize,
    groups: usize,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    gn_bwd_with(x, gamma, gy, s, groups, |db, xb, gb, pb, gam| {
        let (mean, rstd) = stats(xb, eps);
        let n = xb.len() as f64;
        // mean(γ g) and mean(γ g x̂) over the block.
        let (mut m1, mut m2) = (0f64, 0f64);
        for (cc, ga) in gam.iter().enumerate() {
            let ga = ga.to_f64();
            let (mut sg, mut sgx) = (0f64, 0f64);
            for (xv, gv) in xb[cc * s..(cc + 1) * s]
                .iter()
                .zip(&gb[cc * s..(cc + 1) * s])
            {
                let xh = (xv.to_f64() - mean) * rstd;
                let gv = gv.to_f64();
                sg += gv;
                sgx += gv * xh;
            }
            pb[cc] = (sgx, sg);
            m1 += ga * sg;
            m2 += ga * sgx;
        }
        m1 /= n;
        m2 /= n;
        for (cc, ga) in gam.iter().enumerate() {
            let ga = ga.to_f64();
            for ((o, xv), gv) in db[cc * s..(cc + 1) * s]
                .iter_mut()
                .zip(&xb[cc * s..(cc + 1) * s])
                .zip(&gb[cc * s..(cc + 1) * s])
            {
                let xh = (xv.to_f64() - mean) * rstd;
                o.write(T::from_f64(rstd * (ga * gv.to_f64() - m1 - xh * m2)));
            }
        }
    })
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "fast-group-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        gn_cpu((sx, lx), (sg, lg), (sb, lb), self.groups, self.eps, false)
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = x.dims();
        let s = dims[2..].iter().product::<usize>();
        let gy = gy.to_dtype(x.dtype())?;
        fn run<T: WithDType>(
            x: &Tensor,
            gamma: &Tensor,
            gy: &Tensor,
            s: usize,
            op: &GroupNormOp,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let xv = x.flatten_all()?.to_vec1::<T>()?;
            let gv = gamma.flatten_all()?.to_vec1::<T>()?;
            let gyv = gy.flatten_all()?.to_vec1::<T>()?;
            let (dx, dg, db) = gn_bwd(&xv, &gv, &gyv, s, op.groups, op.eps);
            let dev = x.device();
            Ok((
                Tensor::from_vec(dx, x.shape(), dev)?,
                Tensor::from_vec(dg, gamma.shape(), dev)?,
                Tensor::from_vec(db, gamma.shape(), dev)?,
            ))
        }
        let (dx, dg, db) = match x.dtype() {
            DType::F32 => {
                let xv = x.flatten_all()?.to_vec1::<f32>()?;
                let gv = gamma.flatten_all()?.to_vec1::<f32>()?;
                let gyv = gy.flatten_all()?.to_vec1::<f32>()?;
                let (dx, dg, db) = gn_bwd_f32(&xv, &gv, &gyv, s, self.groups, self.eps);
                let dev = x.device();
                (
                    Tensor::from_vec(dx, x.shape(), dev)?,
                    Tensor::from_vec(dg, gamma.shape(), dev)?,
                    Tensor::from_vec(db, gamma.shape(), dev)?,
                )
            }
            DType::F64 => run::<f64>(x, gamma, &gy, s, self)?,
            d => candle_core::bail!("group-norm: unsupported dtype {d:?}"),
        };
        let _ = beta;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

/// dx of GroupNorm for the output gradient, graph-less: (x, γ, dy) ↦ dx.
struct GroupNormInputGrad {
    groups: usize,
    eps: f64,
}

impl CustomOp3 for GroupNormInputGrad {
    fn name(&self) -> &'static str {
        "fast-group-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
        sy: &CpuStorage,
        ly: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = lx.dims()[2..].iter().product::<usize>();
        let (g, e) = (self.groups, self.eps);
        let dx = match sx {
            CpuStorage::F32(_) => CpuStorage::F32(
                gn_bwd_f32(slice(sx, lx)?, slice(sg, lg)?, slice(sy, ly)?, s, g, e).0,
            ),
            CpuStorage::F64(_) => CpuStorage::F64(
                gn_bwd::<f64>(slice(sx, lx)?, slice(sg, lg)?, slice(sy, ly)?, s, g, e).0,
            ),
            _ => candle_core::bail!("group-norm: unsupported dtype"),
        };
        Ok((dx, lx.shape().clone()))
    }
}

/// The input gradient of [`group_norm`] (`silu`: of [`group_norm_silu`]) at `x` for the output
/// gradient `gy`, without a graph (γ and β are constants). CPU f32/f64.
pub fn group_norm_input_grad(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    gy: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    if !cpu_fast(x) || gy.dims() != x.dims() || gy.dtype() != x.dtype() {
        candle_core::bail!(
            "group_norm_input_grad: CPU f32/f64 input and gradient of one shape, got {:?} {:?} \
             and {:?} {:?}",
            x.dims(),
            x.dtype(),
            gy.dims(),
            gy.dtype()
        );
    }
    let x = x.detach().contiguous()?;
    let gy = if silu {
        let pre = group_norm(&x, gamma, beta, groups, eps)?;
        silu_grad(&pre, gy)?
    } else {
        gy.detach().contiguous()?
    };
    x.apply_op3_no_bwd(
        &gamma.contiguous()?,
        &gy,
        &GroupNormInputGrad { groups, eps },
    )
}

/// GroupNorm of `x` `[B, C, ...]` (`groups` groups, affine `gamma`, `beta` `[C]`), as
/// `candle_nn::GroupNorm` computes it, with the closed-form backward on the CPU.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 3 || dims[1] != gamma.elem_count() || !dims[1].is_multiple_of(groups) {
        candle_core::bail!(
            "group_norm: bad input {:?} for {} channels",
            dims,
            gamma.elem_count()
        );
    }
    let same = gamma.dtype() == x.dtype() && beta.dtype() == x.dtype();
    if !cpu_fast(x) || !same {
        let gn = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), dims[1], groups, eps)?;
        return gn.forward(x);
    }
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        GroupNormOp { groups, eps },
    )
}

/// SiLU(GroupNorm(x)): one pass on the CPU when no argument is in a graph (the denoiser calls
/// of DAPS's ODE), else [`silu`] of [`group_norm`] (same values up to float rounding).
pub fn group_norm_silu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<Tensor> {
    let tracked = x.track_op() || gamma.track_op() || beta.track_op();
    let same = gamma.dtype() == x.dtype() && beta.dtype() == x.dtype();
    let dims = x.dims();
    if tracked || !cpu_fast(x) || !same || dims.len() < 3 || dims[1] != gamma.elem_count() {
        return silu(&group_norm(x, gamma, beta, groups, eps)?);
    }
    if !dims[1].is_multiple_of(groups) {
        candle_core::bail!(
            "group_norm: {groups} groups do not divide {} channels",
            dims[1]
        );
    }
    x.contiguous()?.apply_op3_no_bwd(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        &GroupNormSilu { groups, eps },
    )
}

/// SiLU(GroupNorm(x)·(1 + scale) + shift) with `scale`, `shift` `[B, C]` (ADM's scale-shift
/// norm): one pass on the CPU in f32 when no argument is in a graph, with the bits of
/// [`silu`] ∘ [`scale_shift`] ∘ [`group_norm`], which it runs otherwise.
pub fn group_norm_scale_shift_silu(
    x: &Tensor,
    (gamma, beta): (&Tensor, &Tensor),
    (scale, shift): (&Tensor, &Tensor),
    groups: usize,
    eps: f64,
) -> Result<Tensor> {
    let all = [x, gamma, beta, scale, shift];
    let dims = x.dims();
    let fused = all.iter().all(|t| !t.track_op() && t.dtype() == DType::F32)
        && x.device().is_cpu()
        && dims.len() >= 3
        && dims[1] == gamma.elem_count()
        && dims[1] == beta.elem_count()
        && dims[1].is_multiple_of(groups)
        && scale.dims() == &dims[..2]
        && shift.dims() == &dims[..2];
    if !fused {
        let n = group_norm(x, gamma, beta, groups, eps)?;
        return silu(&scale_shift(&n, scale, shift)?);
    }
    let op = GroupNormScaleShiftSilu {
        gamma: gamma.flatten_all()?.to_vec1()?,
        beta: beta.flatten_all()?.to_vec1()?,
        groups,
        eps,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&scale.contiguous()?, &shift.contiguous()?, &op)
}

/// [`group_norm_scale_shift_silu`]'s one pass, forward only (f32, CPU).
struct GroupNormScaleShiftSilu {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    groups: usize,
    eps: f64,
}

impl CustomOp3 for GroupNormScaleShiftSilu {
    fn name(&self) -> &'static str {
        "fast-group-norm-scale-shift-silu"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        ssc: &CpuStorage,
        lsc: &Layout,
        ssh: &CpuStorage,
        lsh: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = lx.dims()[2..].iter().product::<usize>();
        let then = GnThen::ScaleShiftSilu(slice(ssc, lsc)?, slice(ssh, lsh)?);
        let y = gn_fwd_f32(
            slice(sx, lx)?,
            &self.gamma,
            &self.beta,
            then,
            (s, self.groups, self.eps),
        );
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }
}

/// A GroupNorm layer with the parameters of `candle_nn::group_norm` (`weight`, `bias`).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Self {
        Self {
            weight,
            bias,
            groups,
            eps,
        }
    }

    /// As `candle_nn::group_norm(groups, channels, eps, vb)` (same names and initialisation).
    pub fn load(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
        if !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {groups} groups do not divide {channels} channels");
        }
        Ok(Self::new(weight, bias, groups, eps))
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        group_norm(x, &self.weight, &self.bias, self.groups, self.eps)
    }
}

impl GroupNorm {
    /// SiLU of the layer's output ([`group_norm_silu`]).
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        group_norm_silu(x, &self.weight, &self.bias, self.groups, self.eps)
    }

    /// SiLU of the layer's output · (1 + `scale`) + `shift` ([`group_norm_scale_shift_silu`]).
    pub fn forward_scale_shift_silu(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
    ) -> Result<Tensor> {
        let affine = (&self.weight, &self.bias);
        group_norm_scale_shift_silu(x, affine, (scale, shift), self.groups, self.eps)
    }

    /// The input gradient of [`Module::forward`] (`silu`: of [`GroupNorm::forward_silu`]) at
    /// `x` for the output gradient `gy`, graph-less.
    pub fn input_grad(&self, x: &Tensor, gy: &Tensor, silu: bool) -> Result<Tensor> {
        group_norm_input_grad(x, &self.weight, &self.bias, gy, self.groups, self.eps, silu)
    }
}

/// SiLU x·σ(x) with a one-pass backward dx = g·σ(x)·(1 + x·(1 − σ(x))).
struct Silu;

fn silu_map<T: WithDType>(x: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(yb, xb)| {
            for (o, v) in yb.iter_mut().zip(xb) {
                let v = v.to_f64();
                *o = T::from_f64(v / (1.0 + (-v).exp()));
            }
        });
    y
}

fn silu_grad_map<T: WithDType>(x: &[T], g: &[T]) -> Vec<T> {
    let mut d = vec![T::zero(); x.len()];
    d.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14).zip(g.par_chunks(1 << 14)))
        .for_each(|(db, (xb, gb))| {
            for ((o, v), gv) in db.iter_mut().zip(xb).zip(gb) {
                let v = v.to_f64();
                let s = 1.0 / (1.0 + (-v).exp());
                *o = T::from_f64(gv.to_f64() * s * (1.0 + v * (1.0 - s)));
            }
        });
    d
}

/// eˣ in f32 without a libm call, so that loops over it vectorise: Cephes' `expf` (range
/// reduction by ln 2 in two parts, degree-5 polynomial, about 2 ulp), n = round(x·log₂e) by the
/// 1.5·2²³ trick, 2ⁿ built in the exponent bits. x is clamped to [−87.3, 88.3] (no Inf or
/// subnormals: e⁸⁸·³ ≈ 2.1e38).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³
    let x = x.clamp(-87.3, 88.3);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001e-1, the same f32
    let e = p * z + r + 1.0;
    let k = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    e * f32::from_bits(((k + 127) << 23) as u32)
}

#[inline(always)]
fn silu1(v: f32) -> f32 {
    v / (1.0 + exp_f32(-v))
}

/// f32 specialisations (no round trip through f64).
fn silu_f32(x: &[f32]) -> Vec<f32> {
    let mut y = unwritten::<f32>(x.len());
    y.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(yb, xb)| silu_chunk(yb, xb));
    // SAFETY: the chunks of y and x match one to one and every value is written.
    unsafe { written(y) }
}

#[inline(always)]
fn silu_chunk_body(yb: &mut [MaybeUninit<f32>], xb: &[f32]) {
    for (o, &v) in yb.iter_mut().zip(xb) {
        o.write(silu1(v));
    }
}

fn silu_grad_f32(x: &[f32], g: &[f32]) -> Vec<f32> {
    let mut d = unwritten::<f32>(x.len());
    d.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14).zip(g.par_chunks(1 << 14)))
        .for_each(|(db, (xb, gb))| silu_grad_chunk(db, xb, gb));
    // SAFETY: as in silu_f32 (x and g have the same length).
    unsafe { written(d) }
}

#[inline(always)]
fn silu_grad_chunk_body(db: &mut [MaybeUninit<f32>], xb: &[f32], gb: &[f32]) {
    for ((o, &v), &gv) in db.iter_mut().zip(xb).zip(gb) {
        let s = 1.0 / (1.0 + exp_f32(-v));
        o.write(gv * s * (1.0 + v * (1.0 - s)));
    }
}

impl candle_core::CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "fast-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = match s {
            CpuStorage::F32(_) => CpuStorage::F32(silu_f32(slice::<f32>(s, l)?)),
            CpuStorage::F64(_) => CpuStorage::F64(silu_map(slice::<f64>(s, l)?)),
            _ => candle_core::bail!("silu: unsupported dtype"),
        };
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.detach().to_dtype(x.dtype())?.contiguous()?;
        Ok(Some(x.detach().apply_op2_no_bwd(&g, &SiluGrad)?))
    }
}

struct SiluGrad;

impl candle_core::CustomOp2 for SiluGrad {
    fn name(&self) -> &'static str {
        "fast-silu-grad"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = match sx {
            CpuStorage::F32(_) => CpuStorage::F32(silu_grad_f32(slice(sx, lx)?, slice(sg, lg)?)),
            CpuStorage::F64(_) => {
                CpuStorage::F64(silu_grad_map::<f64>(slice(sx, lx)?, slice(sg, lg)?))
            }
            _ => candle_core::bail!("silu: unsupported dtype"),
        };
        Ok((d, lx.shape().clone()))
    }
}

/// SiLU with a one-pass backward on the CPU (candle's `silu` elsewhere).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if !cpu_fast(x) {
        return x.silu();
    }
    x.contiguous()?.apply_op1(Silu)
}

/// dx of SiLU at `x` for the output gradient `g`, graph-less (CPU f32/f64).
pub fn silu_grad(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    if !cpu_fast(x) || g.dims() != x.dims() || g.dtype() != x.dtype() {
        candle_core::bail!("silu_grad: CPU f32/f64 input and gradient of one shape");
    }
    x.detach()
        .contiguous()?
        .apply_op2_no_bwd(&g.detach().contiguous()?, &SiluGrad)
}

/// `y` `[B, C, ...]` + `b` `[C]`, with db = Σ g over batch and space in one pass.
struct ChannelBias;

fn bias_fwd<T: WithDType>(y: &[T], b: &[T], s: usize) -> Vec<T> {
    let c = b.len();
    let mut out = vec![T::zero(); y.len()];
    out.par_chunks_mut(s)
        .zip(y.par_chunks(s))
        .enumerate()
        .for_each(|(i, (o, yb))| {
            let bv = b[i % c];
            for (o, v) in o.iter_mut().zip(yb) {
                *o = *v + bv;
            }
        });
    out
}

fn bias_grad<T: WithDType>(g: &[T], c: usize, s: usize) -> Vec<T> {
    let sums: Vec<f64> = g
        .par_chunks(s)
        .map(|gb| gb.iter().map(|v| v.to_f64()).sum::<f64>())
        .collect();
    let mut db = vec![0f64; c];
    for (i, v) in sums.iter().enumerate() {
        db[i % c] += v;
    }
    db.into_iter().map(T::from_f64).collect()
}

impl candle_core::CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "fast-channel-bias"
    }

    fn cpu_fwd(
        &self,
        sy: &CpuStorage,
        ly: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = ly.dims()[2..].iter().product::<usize>();
        let out = match sy {
            CpuStorage::F32(_) => {
                CpuStorage::F32(bias_fwd::<f32>(slice(sy, ly)?, slice(sb, lb)?, s))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(bias_fwd::<f64>(slice(sy, ly)?, slice(sb, lb)?, s))
            }
            _ => candle_core::bail!("channel bias: unsupported dtype"),
        };
        Ok((out, ly.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let s = y.dims()[2..].iter().product::<usize>();
        let c = b.elem_count();
        let gc = g.detach().to_dtype(y.dtype())?.contiguous()?;
        let db = match y.dtype() {
            DType::F32 => Tensor::from_vec(
                bias_grad(&gc.flatten_all()?.to_vec1::<f32>()?, c, s),
                b.shape(),
                b.device(),
            )?,
            DType::F64 => Tensor::from_vec(
                bias_grad(&gc.flatten_all()?.to_vec1::<f64>()?, c, s),
                b.shape(),
                b.device(),
            )?,
            d => candle_core::bail!("channel bias: unsupported dtype {d:?}"),
        };
        Ok((Some(g.clone()), Some(db)))
    }
}

/// `y` `[B, C, ...]` + `bias` `[C]` broadcast over batch and space, with a one-pass bias
/// gradient on the CPU (candle's broadcast_add elsewhere).
pub fn add_channel_bias(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let dims = y.dims();
    if dims.len() < 2 || dims[1] != bias.elem_count() {
        candle_core::bail!("add_channel_bias: {dims:?} + bias {:?}", bias.dims());
    }
    if !cpu_fast(y) || bias.dtype() != y.dtype() {
        let mut shape = vec![1; dims.len()];
        shape[1] = dims[1];
        return y.broadcast_add(&bias.reshape(shape)?);
    }
    y.contiguous()?
        .apply_op2(&bias.flatten_all()?.contiguous()?, ChannelBias)
}

/// Nearest-neighbour ×2 upsampling of `[B, C, H, W]`; backward sums each 2×2 block.
struct Upsample2x;

fn up2_fwd<T: WithDType>(x: &[T], h: usize, w: usize) -> Vec<T> {
    let mut y = vec![T::zero(); 4 * x.len()];
    y.par_chunks_mut(4 * h * w)
        .zip(x.par_chunks(h * w))
        .for_each(|(yb, xb)| {
            for i in 0..h {
                for j in 0..w {
                    let v = xb[i * w + j];
                    let r0 = 2 * i * 2 * w + 2 * j;
                    yb[r0] = v;
                    yb[r0 + 1] = v;
                    yb[r0 + 2 * w] = v;
                    yb[r0 + 2 * w + 1] = v;
                }
            }
        });
    y
}

fn up2_bwd<T: WithDType>(g: &[T], h: usize, w: usize) -> Vec<T> {
    let mut d = vec![T::zero(); g.len() / 4];
    d.par_chunks_mut(h * w)
        .zip(g.par_chunks(4 * h * w))
        .for_each(|(db, gb)| {
            for i in 0..h {
                for j in 0..w {
                    let r0 = 2 * i * 2 * w + 2 * j;
                    db[i * w + j] = gb[r0] + gb[r0 + 1] + gb[r0 + 2 * w] + gb[r0 + 2 * w + 1];
                }
            }
        });
    d
}

impl candle_core::CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "fast-upsample2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let y = match s {
            CpuStorage::F32(_) => CpuStorage::F32(up2_fwd::<f32>(slice(s, l)?, h, w)),
            CpuStorage::F64(_) => CpuStorage::F64(up2_fwd::<f64>(slice(s, l)?, h, w)),
            _ => candle_core::bail!("upsample2x: unsupported dtype"),
        };
        Ok((y, (b, c, 2 * h, 2 * w).into()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.detach().to_dtype(x.dtype())?.contiguous()?;
        Ok(Some(g.apply_op1_no_bwd(&Upsample2xGrad)?))
    }
}

struct Upsample2xGrad;

impl candle_core::CustomOp1 for Upsample2xGrad {
    fn name(&self) -> &'static str {
        "fast-upsample2x-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h2, w2) = l.shape().dims4()?;
        let (h, w) = (h2 / 2, w2 / 2);
        let d = match s {
            CpuStorage::F32(_) => CpuStorage::F32(up2_bwd::<f32>(slice(s, l)?, h, w)),
            CpuStorage::F64(_) => CpuStorage::F64(up2_bwd::<f64>(slice(s, l)?, h, w)),
            _ => candle_core::bail!("upsample2x: unsupported dtype"),
        };
        Ok((d, (b, c, h, w).into()))
    }
}

/// The input gradient of [`upsample2x`]: each 2×2 block of `g` summed, graph-less (CPU f32/f64).
pub fn upsample2x_grad(g: &Tensor) -> Result<Tensor> {
    if !cpu_fast(g) {
        candle_core::bail!("upsample2x_grad: CPU f32/f64 only");
    }
    g.detach().contiguous()?.apply_op1_no_bwd(&Upsample2xGrad)
}

/// Nearest ×2 upsampling of `[B, C, H, W]`. On the CPU a custom op whose backward sums the 2×2
/// blocks (and accumulates correctly, unlike candle 0.11.1's `upsample_nearest2d`); elsewhere
/// a broadcast.
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if !cpu_fast(x) {
        return x
            .reshape((b, c, h, 1, w, 1))?
            .broadcast_as((b, c, h, 2, w, 2))?
            .reshape((b, c, 2 * h, 2 * w));
    }
    x.contiguous()?.apply_op1(Upsample2x)
}

/// `h` `[B, C, ...]` · (1 + `scale` `[B, C]`) + `shift` `[B, C]` in one pass each way.
struct ScaleShift;

fn ss_fwd<T: WithDType>(h: &[T], sc: &[T], sh: &[T], s: usize) -> Vec<T> {
    let mut y = vec![T::zero(); h.len()];
    y.par_chunks_mut(s)
        .zip(h.par_chunks(s))
        .enumerate()
        .for_each(|(i, (yb, hb))| {
            let a = sc[i] + T::one();
            let t = sh[i];
            for (o, v) in yb.iter_mut().zip(hb) {
                *o = *v * a + t;
            }
        });
    y
}

/// (dh, dscale, dshift)
fn ss_bwd<T: WithDType>(h: &[T], sc: &[T], g: &[T], s: usize) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dh = vec![T::zero(); h.len()];
    let sums: Vec<(f64, f64)> = dh
        .par_chunks_mut(s)
        .zip(h.par_chunks(s).zip(g.par_chunks(s)))
        .enumerate()
        .map(|(i, (db, (hb, gb)))| {
            let a = sc[i] + T::one();
            let (mut sgh, mut sg) = (0f64, 0f64);
            for ((o, hv), gv) in db.iter_mut().zip(hb).zip(gb) {
                *o = *gv * a;
                sgh += gv.to_f64() * hv.to_f64();
                sg += gv.to_f64();
            }
            (sgh, sg)
        })
        .collect();
    (
        dh,
        sums.iter().map(|v| T::from_f64(v.0)).collect(),
        sums.iter().map(|v| T::from_f64(v.1)).collect(),
    )
}

impl CustomOp3 for ScaleShift {
    fn name(&self) -> &'static str {
        "fast-scale-shift"
    }

    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        ssc: &CpuStorage,
        lsc: &Layout,
        ssh: &CpuStorage,
        lsh: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = lh.dims()[2..].iter().product::<usize>();
        let y = match sh {
            CpuStorage::F32(_) => CpuStorage::F32(ss_fwd::<f32>(
                slice(sh, lh)?,
                slice(ssc, lsc)?,
                slice(ssh, lsh)?,
                s,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(ss_fwd::<f64>(
                slice(sh, lh)?,
                slice(ssc, lsc)?,
                slice(ssh, lsh)?,
                s,
            )),
            _ => candle_core::bail!("scale-shift: unsupported dtype"),
        };
        Ok((y, lh.shape().clone()))
    }

    fn bwd(
        &self,
        h: &Tensor,
        scale: &Tensor,
        _shift: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let s = h.dims()[2..].iter().product::<usize>();
        let g = g.detach().to_dtype(h.dtype())?;
        fn run<T: WithDType>(
            h: &Tensor,
            scale: &Tensor,
            g: &Tensor,
            s: usize,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let hv = h.flatten_all()?.to_vec1::<T>()?;
            let sv = scale.flatten_all()?.to_vec1::<T>()?;
            let gv = g.flatten_all()?.to_vec1::<T>()?;
            let (dh, ds, dt) = ss_bwd(&hv, &sv, &gv, s);
            let dev = h.device();
            Ok((
                Tensor::from_vec(dh, h.shape(), dev)?,
                Tensor::from_vec(ds, scale.shape(), dev)?,
                Tensor::from_vec(dt, scale.shape(), dev)?,
            ))
        }
        let (dh, ds, dt) = match h.dtype() {
            DType::F32 => run::<f32>(h, scale, &g, s)?,
            DType::F64 => run::<f64>(h, scale, &g, s)?,
            d => candle_core::bail!("scale-shift: unsupported dtype {d:?}"),
        };
        Ok((Some(dh), Some(ds), Some(dt)))
    }
}

/// `h` `[B, C, ...]` · (1 + `scale`) + `shift`, with `scale` and `shift` `[B, C]` (ADM's
/// scale-shift norm), fused on the CPU (candle broadcast ops elsewhere).
pub fn scale_shift(h: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let dims = h.dims();
    if dims.len() < 2 || scale.dims() != &dims[..2] || shift.dims() != &dims[..2] {
        candle_core::bail!(
            "scale_shift: {dims:?} with scale {:?} and shift {:?}",
            scale.dims(),
            shift.dims()
        );
    }
    let same = scale.dtype() == h.dtype() && shift.dtype() == h.dtype();
    if !cpu_fast(h) || !same {
        let mut bshape = dims[..2].to_vec();
        bshape.resize(dims.len(), 1);
        return h
            .broadcast_mul(&(scale + 1.0)?.reshape(bshape.clone())?)?
            .broadcast_add(&shift.reshape(bshape)?);
    }
    h.contiguous()?
        .apply_op3(&scale.contiguous()?, &shift.contiguous()?, ScaleShift)
}
