//! Winograd F(4,3) for f32 3×3 convolutions with stride 1 and padding 1 (Lavin & Gray 2016).
//!
//! The output is cut into 4×4 tiles (partial ones at the right and bottom edges are computed
//! whole from zero-padded input and cropped). Each tile's 6×6 input patch d becomes V = Bᵀ d B,
//! each 3×3 kernel U = G g Gᵀ; the 36 entries of the tile's transformed output are 36
//! independent products M_k = U_k · V_k over channels ([O × C]·[C × tiles], with `gemm`), and
//! the tile is Aᵀ M A. That is 36 multiplies per 16 outputs and channel pair instead of 144.
//! Tiles of the whole batch are numbered in one sequence and taken in blocks that keep V and M
//! in cache (per-thread buffers kept between calls); blocks run in parallel. The transforms run
//! on 8 tiles at a time, one per SIMD lane. Rounding: their entries go up to 8 (Aᵀ) and 5 (Bᵀ);
//! the f32 error against f64 measures 5–10× im2col's (tests/fastops.rs).

use super::fastops::{gemm_parallelism, gemm_rows, SendPtr};
use rayon::prelude::*;

/// Tiles (or kernels) transformed together, one per SIMD lane.
const L: usize = 8;
type Lanes = [f32; L];
const ZERO: Lanes = [0.0; L];

/// Bᵀ applied to six values, lane-wise.
#[inline(always)]
fn bt(d: [Lanes; 6]) -> [Lanes; 6] {
    let mut o = [ZERO; 6];
    for l in 0..L {
        let (d0, d1, d2, d3, d4, d5) = (d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]);
        o[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        o[1][l] = -4.0 * (d1 + d2) + d3 + d4;
        o[2][l] = 4.0 * (d1 - d2) - d3 + d4;
        o[3][l] = 2.0 * (d3 - d1) - d2 + d4;
        o[4][l] = 2.0 * (d1 - d3) - d2 + d4;
        o[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    o
}

/// Aᵀ applied to six values, lane-wise.
#[inline(always)]
fn at(m: [Lanes; 6]) -> [Lanes; 4] {
    let mut o = [ZERO; 4];
    for l in 0..L {
        let (s12, d12) = (m[1][l] + m[2][l], m[1][l] - m[2][l]);
        let (s34, d34) = (m[3][l] + m[4][l], m[3][l] - m[4][l]);
        o[0][l] = m[0][l] + s12 + s34;
        o[1][l] = d12 + 2.0 * d34;
        o[2][l] = s12 + 4.0 * s34;
        o[3][l] = d12 + 8.0 * d34 + m[5][l];
    }
    o
}

/// G applied to three values, lane-wise.
#[inline(always)]
fn gt(g: [Lanes; 3]) -> [Lanes; 6] {
    const S: f32 = 1.0 / 6.0;
    const T: f32 = 1.0 / 24.0;
    let mut o = [ZERO; 6];
    for l in 0..L {
        let (g0, g1, g2) = (g[0][l], g[1][l], g[2][l]);
        o[0][l] = g0 * 0.25;
        o[1][l] = -(g0 + g1 + g2) * S;
        o[2][l] = -(g0 - g1 + g2) * S;
        o[3][l] = (g0 + 2.0 * g1 + 4.0 * g2) * T;
        o[4][l] = (g0 - 2.0 * g1 + 4.0 * g2) * T;
        o[5][l] = g2;
    }
    o
}

/// The stride between the 36 blocks of `len` values in U, V and M: padded by a cache line so
/// that the 36 streams written or read together do not all map to the same cache set (block
/// sizes are often multiples of 4 KiB).
fn stride36(len: usize) -> usize {
    len + 16
}

/// U `[36, O, C]` (block stride [`stride36`]) from `w` `[O, C, 3, 3]`, L kernels at a time:
/// what [`conv3x3`] takes as `u` (a layer with constant weights keeps it between calls).
pub(super) fn weights(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let n = o * c;
    let ks = stride36(n);
    let mut u = vec![0f32; 36 * ks];
    for k0 in (0..n).step_by(L) {
        let nl = L.min(n - k0);
        let mut g = [ZERO; 9];
        for l in 0..nl {
            for (q, gq) in g.iter_mut().enumerate() {
                gq[l] = w[(k0 + l) * 9 + q];
            }
        }
        // G g: 6×3 (as its three columns), then (G g) Gᵀ: 6×6.
        let c0 = gt([g[0], g[3], g[6]]);
        let c1 = gt([g[1], g[4], g[7]]);
        let c2 = gt([g[2], g[5], g[8]]);
        for i in 0..6 {
            for (j, v) in gt([c0[i], c1[i], c2[i]]).iter().enumerate() {
                u[(i * 6 + j) * ks + k0..][..nl].copy_from_slice(&v[..nl]);
            }
        }
    }
    u
}

/// Tile geometry: image `h × w`, tiles `th × tw` per image.
#[derive(Clone, Copy)]
struct Tiles {
    c: usize,
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

impl Tiles {
    /// (batch item, tile row, tile column) of global tile `t`.
    fn at(&self, t: usize) -> (usize, usize, usize) {
        let per = self.th * self.tw;
        (t / per, (t % per) / self.tw, t % self.tw)
    }
}

/// Whether this CPU runs the AVX2 + FMA builds of the transforms (x86-64; checked once).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Whether this CPU runs AVX-512 (F, VL, DQ) builds of the elementwise kernels, with AVX2 and
/// FMA (x86-64; checked once).
#[cfg(target_arch = "x86_64")]
pub(super) fn avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        avx2()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
    })
}

/// `fn NAME(args)` running `BODY::<true>(args)` built for AVX2 + FMA where the CPU has it (the
/// crate is built for baseline x86-64, whose SSE2 takes two instructions per 8-lane op), else
/// `BODY::<false>(args)`.
macro_rules! wide_dispatch {
    ($(#[$doc:meta])* $name:ident, $avx:ident, $body:ident, ($($a:ident: $t:ty),*)) => {
        $(#[$doc])*
        fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: the CPU has AVX2 and FMA (checked).
                return unsafe { $avx($($a),*) };
            }
            $body::<false>($($a),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx($($a: $t),*) {
            $body::<true>($($a),*)
        }
    };
}

wide_dispatch!(
    /// [`input_block_body`] (one 8-lane AVX2 register per [`Lanes`] where the CPU has it).
    input_block, input_block_avx2, input_block_body,
    (x: &[f32], g: Tiles, t0: usize, n: usize, v: &mut [f32])
);

/// Rows `0..6` of the eight 6×6 patches at `ptrs` (row stride `w`) into `d` (`d[r][s]` = lane
/// per patch): per row, eight 8-wide loads and an 8×8 transpose, instead of 48 scalar moves.
///
/// # Safety
/// The CPU has AVX2, and `ptrs[l] + r·w + 8` values are readable for every l and r < 6.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn patch_rows_avx2(ptrs: &[*const f32; L], w: usize, d: &mut [[Lanes; 6]; 6]) {
    use std::arch::x86_64::*;
    for (r, dr) in d.iter_mut().enumerate() {
        // SAFETY: readable as the caller guarantees.
        let (v0, v1, v2, v3, v4, v5, v6, v7) = unsafe {
            (
                _mm256_loadu_ps(ptrs[0].add(r * w)),
                _mm256_loadu_ps(ptrs[1].add(r * w)),
                _mm256_loadu_ps(ptrs[2].add(r * w)),
                _mm256_loadu_ps(ptrs[3].add(r * w)),
                _mm256_loadu_ps(ptrs[4].add(r * w)),
                _mm256_loadu_ps(ptrs[5].add(r * w)),
                _mm256_loadu_ps(ptrs[6].add(r * w)),
                _mm256_loadu_ps(ptrs[7].add(r * w)),
            )
        };
        let (t0, t1) = (_mm256_unpacklo_ps(v0, v1), _mm256_unpackhi_ps(v0, v1));
        let (t2, t3) = (_mm256_unpacklo_ps(v2, v3), _mm256_unpackhi_ps(v2, v3));
        let (t4, t5) = (_mm256_unpacklo_ps(v4, v5), _mm256_unpackhi_ps(v4, v5));
        let (t6, t7) = (_mm256_unpacklo_ps(v6, v7), _mm256_unpackhi_ps(v6, v7));
        let q0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let q1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let q2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let q3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let q4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let q5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let q6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let q7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let cols = [
            _mm256_permute2f128_ps::<0x20>(q0, q4),
            _mm256_permute2f128_ps::<0x20>(q1, q5),
            _mm256_permute2f128_ps::<0x20>(q2, q6),
            _mm256_permute2f128_ps::<0x20>(q3, q7),
            _mm256_permute2f128_ps::<0x31>(q0, q4),
            _mm256_permute2f128_ps::<0x31>(q1, q5),
        ];
        for (ds, c) in dr.iter_mut().zip(cols) {
            // SAFETY: a Lanes is 8 f32.
            unsafe { _mm256_storeu_ps(ds.as_mut_ptr(), c) };
        }
    }
}

/// V `[36, C, nn]` (block stride [`stride36`]) for tiles `t0..t0 + n`, `nn` = n rounded up
/// to a multiple of L (the extra columns are zero).
/// `WIDE`: the CPU has AVX2 (patches gathered by [`patch_rows_avx2`]).
#[inline(always)]
fn input_block_body<const WIDE: bool>(x: &[f32], g: Tiles, t0: usize, n: usize, v: &mut [f32]) {
    let (h, w) = (g.h, g.w);
    let nn = n.next_multiple_of(L);
    let cn = stride36(g.c * nn);
    for j0 in (0..n).step_by(L) {
        let nl = L.min(n - j0);
        // Per lane: the image offset of the patch's top-left corner and whether it is inside.
        let mut at = [(0usize, 0isize, 0isize, false); L];
        for (l, a) in at.iter_mut().enumerate().take(nl) {
            let (bi, ty, tx) = g.at(t0 + j0 + l);
            let (y0, x0) = (4 * ty as isize - 1, 4 * tx as isize - 1);
            let inside = y0 >= 0 && x0 >= 0 && y0 as usize + 6 <= h && x0 as usize + 6 <= w;
            *a = (bi * g.c * h * w, y0, x0, inside);
        }
        let all_inside = nl == L && at.iter().all(|a| a.3);
        // 8-wide row loads stay inside x (all but the last item's bottom-right tiles).
        let wide = WIDE
            && all_inside
            && at.iter().all(|&(base, y0, x0, _)| {
                base + (g.c - 1) * h * w + (y0 as usize + 5) * w + x0 as usize + 8 <= x.len()
            });
        let mut d = [[ZERO; 6]; 6];
        for ch in 0..g.c {
            #[cfg(target_arch = "x86_64")]
            if wide {
                let ptrs: [*const f32; L] = std::array::from_fn(|l| {
                    let (base, y0, x0, _) = at[l];
                    x[base + ch * h * w + y0 as usize * w + x0 as usize..].as_ptr()
                });
                // SAFETY: WIDE only where the CPU has AVX2 (input_block), and `wide` checked
                // that every row's 8 values lie inside x.
                unsafe { patch_rows_avx2(&ptrs, w, &mut d) };
            }
            if wide {
                // Gathered above.
            } else if all_inside {
                // No zero padding: gather the lanes directly.
                for (l, &(base, y0, x0, _)) in at.iter().enumerate() {
                    let p = &x[base + ch * h * w + y0 as usize * w + x0 as usize..];
                    for (r, dr) in d.iter_mut().enumerate() {
                        let row = &p[r * w..][..6];
                        for s in 0..6 {
                            dr[s][l] = row[s];
                        }
                    }
                }
            } else {
                patches(x, g, &at[..nl], ch, &mut d);
            }
            transform_into(&mut d, v, cn, ch * nn + j0);
        }
    }
}

/// Bᵀ d B of eight patches `d` into V at offset `at` of each of its 36 blocks (stride `cn`).
#[inline(always)]
fn transform_into(d: &mut [[Lanes; 6]; 6], v: &mut [f32], cn: usize, at: usize) {
    // Bᵀ d (columns, in place), then · B (rows) into V.
    for s in 0..6 {
        let col = bt([d[0][s], d[1][s], d[2][s], d[3][s], d[4][s], d[5][s]]);
        for (r, dr) in d.iter_mut().enumerate() {
            dr[s] = col[r];
        }
    }
    for (r, dr) in d.iter().enumerate() {
        for (s, val) in bt(*dr).iter().enumerate() {
            v[(r * 6 + s) * cn + at..][..L].copy_from_slice(val);
        }
    }
}

/// `x` `[B, C, H, W]` zero-padded to `[B, C, 4·th + 2, 4·tw + 4]` (one row and column of zeros
/// before, the rest after): every tile's 6×6 patch, and every 8-wide row load from its left
/// column, then lies inside, so the input transform needs no per-lane bounds checks.
fn padded(x: &[f32], g: Tiles, b: usize) -> (Vec<f32>, usize, usize) {
    let (hp, wp) = (4 * g.th + 2, 4 * g.tw + 4);
    // Written in order, each value once (no zero-fill of the whole buffer first).
    let mut xp = Vec::with_capacity(b * g.c * hp * wp);
    for plane in x.chunks_exact(g.h * g.w) {
        xp.resize(xp.len() + wp + 1, 0.0);
        for row in plane.chunks_exact(g.w) {
            xp.extend_from_slice(row);
            xp.resize(xp.len() + wp - g.w, 0.0);
        }
        xp.resize(xp.len() + (hp - 1 - g.h) * wp - 1, 0.0);
    }
    debug_assert_eq!(xp.len(), b * g.c * hp * wp);
    (xp, hp, wp)
}

wide_dispatch!(
    /// [`input_block`] from the [`padded`] input `xp` (`hp × wp` planes).
    input_block_padded, input_block_padded_avx2, input_block_padded_body,
    (xp: &[f32], g: Tiles, hp: usize, wp: usize, t0: usize, n: usize, v: &mut [f32])
);

/// [`input_block_body`] from the [`padded`] input: lanes gathered by [`patch_rows_avx2`]
/// (`WIDE`) or row slices, never bounds-checked per value.
#[inline(always)]
fn input_block_padded_body<const WIDE: bool>(
    xp: &[f32],
    g: Tiles,
    hp: usize,
    wp: usize,
    t0: usize,
    n: usize,
    v: &mut [f32],
) {
    let nn = n.next_multiple_of(L);
    let cn = stride36(g.c * nn);
    let plane = hp * wp;
    // Per group of L tiles: its first tile, lanes, and per lane the offset of the patch's
    // top-left corner in the item's channel 0.
    let groups: Vec<(usize, usize, [usize; L])> = (0..n)
        .step_by(L)
        .map(|j0| {
            let nl = L.min(n - j0);
            let mut at = [0usize; L];
            for (l, a) in at.iter_mut().enumerate().take(nl) {
                let (bi, ty, tx) = g.at(t0 + j0 + l);
                *a = bi * g.c * plane + 4 * ty * wp + 4 * tx;
            }
            (j0, nl, at)
        })
        .collect();
    // Channel by channel, then the groups in order: a channel's padded plane stays in L1 while
    // every group of the block reads its rows, and each of V's 36 blocks is written in order
    // (group by group, all channels of a group had read C planes, each jumping a page: the
    // digits network 2–6% faster at one thread, alternating in one process; same bits).
    let mut d = [[ZERO; 6]; 6];
    for ch in 0..g.c {
        for &(j0, nl, at) in &groups {
            #[cfg(target_arch = "x86_64")]
            if WIDE && nl == L {
                let ptrs: [*const f32; L] =
                    std::array::from_fn(|l| xp[at[l] + ch * plane..].as_ptr());
                // SAFETY: WIDE only where the CPU has AVX2; rows 4·ty + r (r < 6) and columns
                // 4·tx .. 4·tx + 8 lie inside the padded plane (`padded`).
                unsafe { patch_rows_avx2(&ptrs, wp, &mut d) };
                transform_into(&mut d, v, cn, ch * nn + j0);
                continue;
            }
            if nl < L {
                d = [[ZERO; 6]; 6];
            }
            for (l, &a) in at.iter().enumerate().take(nl) {
                let p = &xp[a + ch * plane..];
                for (r, dr) in d.iter_mut().enumerate() {
                    let row = &p[r * wp..][..6];
                    for s in 0..6 {
                        dr[s][l] = row[s];
                    }
                }
            }
            transform_into(&mut d, v, cn, ch * nn + j0);
        }
    }
}

/// The 6×6 input patches of channel `ch` for tiles at (item offset, top row, left column,
/// inside) into `d`, lane by lane, zero outside the image and for missing lanes.
#[inline(always)]
fn patches(
    x: &[f32],
    g: Tiles,
    at: &[(usize, isize, isize, bool)],
    ch: usize,
    d: &mut [[Lanes; 6]; 6],
) {
    let (h, w) = (g.h, g.w);
    *d = [[ZERO; 6]; 6];
    for (l, &(base, y0, x0, inside)) in at.iter().enumerate() {
        let xc = &x[base + ch * h * w..][..h * w];
        if inside {
            let p = &xc[y0 as usize * w + x0 as usize..];
            for (r, dr) in d.iter_mut().enumerate() {
                let row = &p[r * w..][..6];
                for s in 0..6 {
                    dr[s][l] = row[s];
                }
            }
            continue;
        }
        for (r, dr) in d.iter_mut().enumerate() {
            let iy = y0 + r as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            for (s, ds) in dr.iter_mut().enumerate() {
                let ix = x0 + s as isize;
                if ix >= 0 && ix < w as isize {
                    ds[l] = xc[iy as usize * w + ix as usize];
                }
            }
        }
    }
}

wide_dispatch!(
    /// [`output_block_body`] (AVX2 where the CPU has it, as [`input_block`]).
    output_block, output_block_avx2, output_block_body,
    (m: &[f32], g: Tiles, adds: (Option<&[f32]>, Option<&[f32]>), o: usize, t0: usize, n: usize, y: *mut f32)
);

/// Row `out` (4 values × 8 lanes) of eight whole output tiles, plus `bias`, then plus the
/// residual at `src[l]` (as `r + (out + bias)`), to `dst[l]`: a 4×8 transpose and one 4-wide
/// store per lane instead of 32 scalar stores.
///
/// # Safety
/// The CPU has AVX2; `dst[l] .. dst[l] + 4` are writable, `src[l] .. src[l] + 4` readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile_row_avx2(
    out: &[Lanes; 4],
    bias: f32,
    dst: &[*mut f32; L],
    src: Option<&[*const f32; L]>,
) {
    use std::arch::x86_64::*;
    let b = _mm256_set1_ps(bias);
    // SAFETY: a Lanes is 8 f32.
    let (o0, o1, o2, o3) = unsafe {
        (
            _mm256_add_ps(_mm256_loadu_ps(out[0].as_ptr()), b),
            _mm256_add_ps(_mm256_loadu_ps(out[1].as_ptr()), b),
            _mm256_add_ps(_mm256_loadu_ps(out[2].as_ptr()), b),
            _mm256_add_ps(_mm256_loadu_ps(out[3].as_ptr()), b),
        )
    };
    let (t0, t1) = (_mm256_unpacklo_ps(o0, o1), _mm256_unpackhi_ps(o0, o1));
    let (t2, t3) = (_mm256_unpacklo_ps(o2, o3), _mm256_unpackhi_ps(o2, o3));
    // Lanes (0, 4), (1, 5), (2, 6), (3, 7): low and high halves.
    let u = [
        _mm256_shuffle_ps::<0x44>(t0, t2),
        _mm256_shuffle_ps::<0xEE>(t0, t2),
        _mm256_shuffle_ps::<0x44>(t1, t3),
        _mm256_shuffle_ps::<0xEE>(t1, t3),
    ];
    for (k, uk) in u.into_iter().enumerate() {
        let (mut lo, mut hi) = (_mm256_castps256_ps128(uk), _mm256_extractf128_ps::<1>(uk));
        if let Some(src) = src {
            // SAFETY: readable as the caller guarantees.
            unsafe {
                lo = _mm_add_ps(_mm_loadu_ps(src[k]), lo);
                hi = _mm_add_ps(_mm_loadu_ps(src[k + 4]), hi);
            }
        }
        // SAFETY: writable as the caller guarantees.
        unsafe {
            _mm_storeu_ps(dst[k], lo);
            _mm_storeu_ps(dst[k + 4], hi);
        }
    }
}

/// Writes tiles `t0..t0 + n` of `y` `[B, O, H, W]` from M `[36, O, nn]` (block stride
/// [`stride36`], `nn` as in [`input_block`]), plus `bias`, plus `res` (`y`'s shape) if given.
/// `WIDE`: the CPU has AVX2 (whole tiles stored by [`tile_row_avx2`]).
#[inline(always)]
fn output_block_body<const WIDE: bool>(
    m: &[f32],
    g: Tiles,
    (bias, res): (Option<&[f32]>, Option<&[f32]>),
    o: usize,
    t0: usize,
    n: usize,
    y: *mut f32,
) {
    let (h, w) = (g.h, g.w);
    let nn = n.next_multiple_of(L);
    let on = stride36(o * nn);
    for j0 in (0..n).step_by(L) {
        let nl = L.min(n - j0);
        // Per lane: the offset of the tile's top-left pixel in output channel 0, rows, columns.
        let mut pos = [(0usize, 0usize, 0usize); L];
        for (l, p) in pos.iter_mut().enumerate().take(nl) {
            let (bi, ty, tx) = g.at(t0 + j0 + l);
            let (y0, x0) = (4 * ty, 4 * tx);
            *p = ((bi * o * h + y0) * w + x0, (h - y0).min(4), (w - x0).min(4));
        }
        let whole = WIDE && nl == L && pos.iter().all(|&(_, rows, cols)| rows == 4 && cols == 4);
        for oc in 0..o {
            let bv = bias.map_or(0.0, |b| b[oc]);
            let base = oc * nn + j0;
            // Aᵀ M (columns), then · A (rows).
            let mut t = [[ZERO; 6]; 4];
            for s in 0..6 {
                let mut col = [ZERO; 6];
                for (r, cr) in col.iter_mut().enumerate() {
                    cr.copy_from_slice(&m[(r * 6 + s) * on + base..][..L]);
                }
                for (r, v) in at(col).into_iter().enumerate() {
                    t[r][s] = v;
                }
            }
            for (r, tr) in t.iter().enumerate() {
                let out = at(*tr);
                #[cfg(target_arch = "x86_64")]
                if whole {
                    // SAFETY: WIDE only where the CPU has AVX2 (output_block); the eight tiles
                    // are whole, so their row r lies inside `y`, written by this tile only.
                    unsafe {
                        let at = |l: usize| pos[l].0 + (oc * h + r) * w;
                        let dst: [*mut f32; L] = std::array::from_fn(|l| y.add(at(l)));
                        let src = res.map(|r| std::array::from_fn(|l| r.as_ptr().add(at(l))));
                        tile_row_avx2(&out, bv, &dst, src.as_ref());
                    }
                    continue;
                }
                for (l, &(off, rows, cols)) in pos.iter().enumerate().take(nl) {
                    if r >= rows {
                        continue;
                    }
                    // SAFETY: the pixels of this lane's output tile, cropped to the image, lie
                    // inside `y` ([B, O, H, W]) and are written by this tile only.
                    let at = off + (oc * h + r) * w;
                    unsafe {
                        let dst = y.add(at);
                        for (q, v) in out.iter().enumerate().take(cols) {
                            let val = v[l] + bv;
                            dst.add(q).write(res.map_or(val, |r| r[at + q] + val));
                        }
                    }
                }
            }
        }
    }
}

/// Images at most this wide are zero-padded once per call ([`padded`]) before the input
/// transform; wider ones gather border tiles lane by lane.
const PAD_MAX_WIDTH: usize = 64;

/// Tiles per block: V and M of a block take about `budget` f32, at least 32 tiles, rounded to
/// whole register rows of `gemm`'s kernels, which run over 16 tiles per AVX-512 register and 64
/// per kernel (a block of 113 tiles had cost a 64-tile kernel plus a masked 49-tile one for
/// each 6 output channels). Same bits; the digits network at batch 10 is 6–9% faster on
/// average, alternating in one process.
fn block_tiles(c: usize, o: usize, budget: usize) -> usize {
    let t = (budget / (36 * (c + o))).max(32);
    if t >= 48 {
        (t + 32) / 64 * 64
    } else {
        t.next_multiple_of(16)
    }
}

thread_local! {
    /// Each thread's V and M buffers, kept between calls (zeroing fresh ones cost more than
    /// the transforms for small images).
    static BUFS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Makes `v` at least `n` long (new values zero; every value used is written before it is
/// read).
fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// `x` `[B, C, H, W]` * `w` `[O, C, 3, 3]` (+ `bias` `[O]`) with stride 1 and padding 1 →
/// `[B, O, H, W]`, plus `res` `[B, O, H, W]` if given (added as the output is written).
/// `dims` = [B, C, O, H, W]; blocks of tiles hold about `budget` f32 of V and M.
/// `u`, if given, is [`weights`] of `w` (made here otherwise).
pub(super) fn conv3x3(
    x: &[f32],
    w: &[f32],
    u: Option<&[f32]>,
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    dims: [usize; 5],
    budget: usize,
) -> Vec<f32> {
    let [b, c, o, h, wd] = dims;
    let len = b * o * h * wd;
    assert!(
        res.is_none_or(|r| r.len() == len),
        "winograd: residual of another shape"
    );
    let mut y: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return y;
    }
    let g = Tiles {
        c,
        h,
        w: wd,
        th: h.div_ceil(4),
        tw: wd.div_ceil(4),
    };
    let tiles = b * g.th * g.tw;
    let made;
    let u = match u {
        Some(u) if u.len() == 36 * stride36(o * c) => u,
        _ => {
            made = weights(w, o, c);
            &made[..]
        }
    };
    let threads = rayon::current_num_threads();
    let mut bt_n = block_tiles(c, o, budget).min(tiles);
    if threads > 1 && tiles.div_ceil(bt_n) < 2 * threads {
        // Small images: smaller blocks (of at least 32 tiles), so that the transforms run in
        // parallel too, not only each block's products.
        bt_n = bt_n.min(tiles.div_ceil(2 * threads).next_multiple_of(16).max(32));
    }
    let blocks = tiles.div_ceil(bt_n);
    let inner = if blocks >= threads {
        gemm::Parallelism::None
    } else {
        gemm_parallelism(blocks)
    };
    // Small images: most lane groups touch the border, so pad the input once.
    let pad = (wd <= PAD_MAX_WIDTH).then(|| padded(x, g, b));
    let yp = SendPtr(y.as_mut_ptr());
    let block = |i: usize| {
        let t0 = i * bt_n;
        let n = bt_n.min(tiles - t0);
        let nn = n.next_multiple_of(L);
        let (vs, ms, us) = (stride36(c * nn), stride36(o * nn), stride36(o * c));
        let mut bufs = BUFS.with_borrow_mut(std::mem::take);
        let (v, m) = &mut bufs;
        grow(v, 36 * vs);
        grow(m, 36 * ms);
        match &pad {
            Some((xp, hp, wp)) => input_block_padded(xp, g, *hp, *wp, t0, n, v),
            None => input_block(x, g, t0, n, v),
        }
        for k in 0..36 {
            // SAFETY: M_k [O, n], U_k [O, C] and V_k [C, n] are row-major blocks of
            // buffers of 36 such blocks each, alive for the call.
            unsafe {
                gemm_rows(
                    [o, n, c],
                    (m.as_mut_ptr().add(k * ms), nn),
                    (u.as_ptr().add(k * us), c),
                    (v.as_ptr().add(k * vs), nn),
                    inner,
                );
            }
        }
        output_block(m, g, (bias, res), o, t0, n, yp.get());
        BUFS.set(bufs);
    };
    if matches!(inner, gemm::Parallelism::None) {
        (0..blocks).into_par_iter().for_each(block);
    } else {
        (0..blocks).for_each(block);
    }
    // SAFETY: the tiles cover the image, so every one of the `len` values has been written.
    unsafe { y.set_len(len) };
    y
}
