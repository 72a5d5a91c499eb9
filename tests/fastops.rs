//! `nn::fastops`: conv2d and GroupNorm with fast CPU backward passes, checked against
//! candle's own autograd (f32, ~1e-5 relative) and finite differences (f64).
//! Timings: `cargo bench --bench network -- fastops` (benches/network.rs).

use candle_core::{DType, Device, Module, Tensor, Var};
use daps::nn::fastops;

mod common;
use common::{rand, rel_diff, vec64};

/// (k, padding, stride, input H, W)
const CONVS: &[(usize, usize, usize, usize, usize)] = &[
    (3, 1, 1, 8, 8),
    (3, 1, 2, 8, 8),
    (3, 1, 2, 7, 9),
    (1, 0, 1, 6, 5),
    (3, 0, 1, 6, 7),
    (3, 1, 1, 5, 3),
    (3, 3, 1, 2, 3),
    (5, 2, 2, 7, 5),
    (5, 2, 1, 6, 7),
    (3, 1, 1, 1, 2),
];

/// Loss Σ r·conv(x, w) + bias-free; returns (y, dx, dw) for the fast or the candle conv.
fn conv_grads(
    x: &Tensor,
    w: &Tensor,
    r: &Tensor,
    p: usize,
    s: usize,
    fast: bool,
) -> (Tensor, Tensor, Tensor) {
    let xv = Var::from_tensor(x).unwrap();
    let wv = Var::from_tensor(w).unwrap();
    let y = if fast {
        fastops::conv2d(xv.as_tensor(), wv.as_tensor(), p, s).unwrap()
    } else {
        xv.as_tensor().conv2d(wv.as_tensor(), p, s, 1, 1).unwrap()
    };
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (
        y,
        g.get(xv.as_tensor()).unwrap().clone(),
        g.get(wv.as_tensor()).unwrap().clone(),
    )
}

#[test]
fn conv_matches_candle_autograd_f32() {
    for (i, &(k, p, s, h, wd)) in CONVS.iter().enumerate() {
        let x = rand(&[3, 4, h, wd], 10 + i as u64, DType::F32);
        let w = rand(&[5, 4, k, k], 20 + i as u64, DType::F32);
        let y0 = x.conv2d(&w, p, s, 1, 1).unwrap();
        let r = rand(y0.dims(), 30 + i as u64, DType::F32);
        let (yf, dxf, dwf) = conv_grads(&x, &w, &r, p, s, true);
        let (yc, dxc, dwc) = conv_grads(&x, &w, &r, p, s, false);
        let (ey, ex, ew) = (
            rel_diff(&yf, &yc),
            rel_diff(&dxf, &dxc),
            rel_diff(&dwf, &dwc),
        );
        assert!(
            ey < 1e-6 && ex < 1e-5 && ew < 1e-5,
            "conv k{k} p{p} s{s} {h}x{wd}: y {ey:e} dx {ex:e} dw {ew:e}"
        );
    }
}

/// Large enough for several column tiles per image (the last one ragged) and for the tiles
/// to run in parallel: the f32 tiled path against candle.
#[test]
fn conv_matches_candle_autograd_f32_over_many_tiles() {
    for (i, &(p, s)) in [(1, 1), (1, 2), (0, 1)].iter().enumerate() {
        let x = rand(&[2, 64, 40, 40], 200 + i as u64, DType::F32);
        let w = rand(&[8, 64, 3, 3], 210 + i as u64, DType::F32);
        let r = rand(x.conv2d(&w, p, s, 1, 1).unwrap().dims(), 220, DType::F32);
        let (yf, dxf, _) = conv_grads(&x, &w, &r, p, s, true);
        let (yc, dxc, _) = conv_grads(&x, &w, &r, p, s, false);
        let (ey, ex) = (rel_diff(&yf, &yc), rel_diff(&dxf, &dxc));
        assert!(ey < 1e-6 && ex < 1e-5, "p{p} s{s}: y {ey:e} dx {ex:e}");
    }
}

#[test]
fn conv_matches_finite_differences_f64() {
    let eps = 1e-6;
    for (i, &(k, p, s, h, wd)) in CONVS.iter().enumerate() {
        let x = rand(&[2, 3, h, wd], 40 + i as u64, DType::F64);
        let w = rand(&[2, 3, k, k], 50 + i as u64, DType::F64);
        let r = rand(x.conv2d(&w, p, s, 1, 1).unwrap().dims(), 60, DType::F64);
        let loss = |x: &Tensor, w: &Tensor| -> f64 {
            (x.conv2d(w, p, s, 1, 1).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let (_, dx, dw) = conv_grads(&x, &w, &r, p, s, true);
        for (t, grad, is_x) in [(&x, &dx, true), (&w, &dw, false)] {
            let base = vec64(t);
            let an = vec64(grad);
            for j in 0..base.len() {
                let bump = |d: f64| {
                    let mut v = base.clone();
                    v[j] += d;
                    let t2 = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
                    if is_x {
                        loss(&t2, &w)
                    } else {
                        loss(&x, &t2)
                    }
                };
                let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
                assert!(
                    (fd - an[j]).abs() < 1e-7 * (1.0 + fd.abs()),
                    "conv k{k} p{p} s{s}: {} grad [{j}] fd {fd} analytic {}",
                    if is_x { "x" } else { "w" },
                    an[j]
                );
            }
        }
    }
}

/// Conv layer cases (input, weight, padding, stride, dtype): the direct kernel for few (1–4)
/// outputs (whole runs of 64 outputs and a tail); im2col 3×3, 1×1 and stride 2; Winograd on
/// whole 4×4 tiles (16 channels, 32 tiles) and with cropped border tiles (18×14); f64.
type LayerCase = ([usize; 4], [usize; 4], usize, usize, DType);
const LAYER_CASES: &[LayerCase] = &[
    ([3, 5, 7, 9], [1, 5, 3, 3], 1, 1, DType::F32),
    ([2, 3, 11, 13], [3, 3, 3, 3], 1, 1, DType::F32),
    ([1, 6, 16, 16], [4, 6, 3, 3], 1, 1, DType::F32),
    ([2, 6, 16, 16], [5, 6, 3, 3], 1, 1, DType::F32),
    ([2, 5, 7, 6], [6, 5, 1, 1], 0, 1, DType::F32),
    ([1, 4, 9, 8], [5, 4, 3, 3], 1, 2, DType::F32),
    ([2, 16, 16, 16], [17, 16, 3, 3], 1, 1, DType::F32),
    ([2, 16, 18, 14], [16, 16, 3, 3], 1, 1, DType::F32),
    ([2, 4, 6, 6], [3, 4, 3, 3], 1, 1, DType::F64),
];

/// A layer with a bias and no graph adds the bias as the convolution writes its output: equal
/// to candle's layer, and bit for bit to the convolution followed by the separate bias pass, on
/// every [`LAYER_CASES`] path; later calls through the layer's kept Winograd weights give the same bits as fresh ones, and
/// weights that are a variable are not kept (a change counts).
#[test]
fn conv_layer_with_bias_and_no_grad_path() {
    for (i, &(xs, ws, padding, stride, dt)) in LAYER_CASES.iter().enumerate() {
        let x = rand(&xs, 10 + i as u64, dt);
        let w = rand(&ws, 20 + i as u64, dt);
        let b = rand(&[ws[0]], 30 + i as u64, dt);
        let layer = fastops::Conv2d::new(w.clone(), Some(b.clone()), padding, stride);
        let y = layer.forward(&x).unwrap();
        let cfg = candle_nn::Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let reference = candle_nn::Conv2d::new(w.clone(), Some(b.clone()), cfg)
            .forward(&x)
            .unwrap();
        let tol = if dt == DType::F32 { 1e-5 } else { 1e-12 };
        assert!(rel_diff(&y, &reference) < tol, "case {i}");
        let two_pass = fastops::add_channel_bias(
            &fastops::conv2d_forward(&x, &w, padding, stride, fastops::ConvPath::Auto).unwrap(),
            &b,
        )
        .unwrap();
        assert_eq!(vec64(&y), vec64(&two_pass), "case {i}");
        // A second input: the layer's kept Winograd weights give what fresh ones give.
        let x2 = rand(&xs, 40 + i as u64, dt);
        let again = fastops::conv2d_forward_bias(
            &x2,
            &w,
            Some(&b),
            padding,
            stride,
            fastops::ConvPath::Auto,
        )
        .unwrap();
        assert_eq!(
            vec64(&layer.forward(&x2).unwrap()),
            vec64(&again),
            "case {i}"
        );
    }
    // Weights that are a variable are never kept: after a change, the new weights count.
    let (xs, ws) = ([2, 16, 16, 16], [17, 16, 3, 3]);
    let x = rand(&xs, 50, DType::F32);
    let wv = Var::from_tensor(&rand(&ws, 51, DType::F32)).unwrap();
    let b = rand(&[ws[0]], 52, DType::F32);
    let layer = fastops::Conv2d::new(wv.as_tensor().clone(), Some(b.clone()), 1, 1);
    layer.forward(&x).unwrap();
    let w2 = rand(&ws, 53, DType::F32);
    wv.set(&w2).unwrap();
    let fresh = fastops::Conv2d::new(w2, Some(b), 1, 1).forward(&x).unwrap();
    assert!(rel_diff(&layer.forward(&x).unwrap(), &fresh) < 1e-6);
}

/// A residual added as the convolution writes its output (`Conv2d::forward_add`) has the bits
/// of the layer's output plus the residual, on every [`LAYER_CASES`] path; with an input in a
/// graph it is differentiable (the gradient of Σ(r + conv(x)) reaches x and r).
#[test]
fn conv_forward_add_has_the_bits_of_the_sum() {
    for (i, &(xs, ws, padding, stride, dt)) in LAYER_CASES.iter().enumerate() {
        let x = rand(&xs, 60 + i as u64, dt);
        let w = rand(&ws, 70 + i as u64, dt);
        let b = rand(&[ws[0]], 80 + i as u64, dt);
        let layer = fastops::Conv2d::new(w, Some(b), padding, stride);
        let y = layer.forward(&x).unwrap();
        let r = rand(y.dims(), 90 + i as u64, dt);
        let sum = (&r + &y).unwrap();
        assert_eq!(
            vec64(&layer.forward_add(&x, &r).unwrap()),
            vec64(&sum),
            "case {i}"
        );
        let xv = Var::from_tensor(&x).unwrap();
        let rv = Var::from_tensor(&r).unwrap();
        let z = layer.forward_add(xv.as_tensor(), rv.as_tensor()).unwrap();
        assert_eq!(vec64(&z), vec64(&sum), "case {i}, tracked");
        let g = z.sum_all().unwrap().backward().unwrap();
        assert!(g.get(xv.as_tensor()).is_some() && g.get(rv.as_tensor()).is_some());
    }
}

/// Loss Σ r·GN(x); returns (y, dx, dγ, dβ).
fn gn_grads(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    r: &Tensor,
    groups: usize,
    fast: bool,
) -> (Tensor, Tensor, Tensor, Tensor) {
    let xv = Var::from_tensor(x).unwrap();
    let gv = Var::from_tensor(gamma).unwrap();
    let bv = Var::from_tensor(beta).unwrap();
    let c = x.dim(1).unwrap();
    let y = if fast {
        fastops::group_norm(xv.as_tensor(), gv.as_tensor(), bv.as_tensor(), groups, 1e-5).unwrap()
    } else {
        candle_nn::GroupNorm::new(
            gv.as_tensor().clone(),
            bv.as_tensor().clone(),
            c,
            groups,
            1e-5,
        )
        .unwrap()
        .forward(xv.as_tensor())
        .unwrap()
    };
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (
        y,
        g.get(xv.as_tensor()).unwrap().clone(),
        g.get(gv.as_tensor()).unwrap().clone(),
        g.get(bv.as_tensor()).unwrap().clone(),
    )
}

/// (input shape, groups)
const NORMS: &[(&[usize], usize)] = &[
    (&[3, 8, 5, 4], 4),
    (&[2, 6, 7], 3),
    (&[2, 4, 3, 3], 1),
    (&[1, 4, 2, 2], 4),
];

#[test]
fn group_norm_matches_candle_autograd_f32() {
    for (i, &(shape, groups)) in NORMS.iter().enumerate() {
        let c = shape[1];
        // Offset and scale so that the statistics matter.
        let x = ((rand(shape, 70 + i as u64, DType::F32) * 3.0).unwrap() + 0.7).unwrap();
        let gamma = (rand(&[c], 80 + i as u64, DType::F32) + 1.0).unwrap();
        let beta = rand(&[c], 90 + i as u64, DType::F32);
        let r = rand(shape, 100 + i as u64, DType::F32);
        let f = gn_grads(&x, &gamma, &beta, &r, groups, true);
        let cd = gn_grads(&x, &gamma, &beta, &r, groups, false);
        let e = [
            rel_diff(&f.0, &cd.0),
            rel_diff(&f.1, &cd.1),
            rel_diff(&f.2, &cd.2),
            rel_diff(&f.3, &cd.3),
        ];
        assert!(
            e[0] < 1e-6 && e[1] < 1e-5 && e[2] < 1e-5 && e[3] < 1e-5,
            "group norm {shape:?}/{groups}: y, dx, dγ, dβ rel errors {e:?}"
        );
    }
}

#[test]
fn group_norm_matches_finite_differences_f64() {
    let eps = 1e-6;
    for (i, &(shape, groups)) in NORMS.iter().enumerate() {
        let c = shape[1];
        let x = ((rand(shape, 110 + i as u64, DType::F64) * 2.0).unwrap() - 0.3).unwrap();
        let gamma = (rand(&[c], 120 + i as u64, DType::F64) + 1.0).unwrap();
        let beta = rand(&[c], 130 + i as u64, DType::F64);
        let r = rand(shape, 140 + i as u64, DType::F64);
        let loss = |x: &Tensor, gm: &Tensor, bt: &Tensor| -> f64 {
            (fastops::group_norm(x, gm, bt, groups, 1e-5).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let (_, dx, dg, db) = gn_grads(&x, &gamma, &beta, &r, groups, true);
        for (which, t, grad) in [(0, &x, &dx), (1, &gamma, &dg), (2, &beta, &db)] {
            let base = vec64(t);
            let an = vec64(grad);
            for j in 0..base.len() {
                let bump = |d: f64| {
                    let mut v = base.clone();
                    v[j] += d;
                    let t2 = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
                    match which {
                        0 => loss(&t2, &gamma, &beta),
                        1 => loss(&x, &t2, &beta),
                        _ => loss(&x, &gamma, &t2),
                    }
                };
                let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
                assert!(
                    (fd - an[j]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "group norm {shape:?}: arg {which} grad [{j}] fd {fd} analytic {}",
                    an[j]
                );
            }
        }
    }
}

/// The fused forward-only SiLU(GroupNorm(x)) against candle's GroupNorm then SiLU; with an
/// input in a graph it takes the differentiable path (a gradient comes back).
#[test]
fn group_norm_silu_matches_candle() {
    for dtype in [DType::F32, DType::F64] {
        for (i, &(shape, groups)) in NORMS.iter().enumerate() {
            let c = shape[1];
            let x = ((rand(shape, 150 + i as u64, dtype) * 3.0).unwrap() + 0.7).unwrap();
            let gamma = (rand(&[c], 160 + i as u64, dtype) + 1.0).unwrap();
            let beta = rand(&[c], 170 + i as u64, dtype);
            let fused = fastops::group_norm_silu(&x, &gamma, &beta, groups, 1e-5).unwrap();
            let gn =
                candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, groups, 1e-5).unwrap();
            let want = gn.forward(&x).unwrap().silu().unwrap();
            let e = rel_diff(&fused, &want);
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
            assert!(e < tol, "{dtype:?} {shape:?}/{groups}: rel error {e}");
            let xv = Var::from_tensor(&x).unwrap();
            let y = fastops::group_norm_silu(xv.as_tensor(), &gamma, &beta, groups, 1e-5).unwrap();
            assert!(rel_diff(&y, &want) < tol);
            let g = y.sum_all().unwrap().backward().unwrap();
            assert!(
                g.get(xv.as_tensor()).is_some(),
                "no gradient through the tracked path"
            );
        }
    }
}

/// ADM's out-norm in one pass, SiLU(GroupNorm(x)·(1 + scale) + shift), has the bits of the
/// three ops run one after another (f32: the fused pass; f64 and a tracked input: the three
/// ops themselves, differentiable).
#[test]
fn group_norm_scale_shift_silu_has_the_bits_of_the_three_ops() {
    for dtype in [DType::F32, DType::F64] {
        for (i, &(shape, groups)) in NORMS.iter().enumerate() {
            let c = shape[1];
            let x = ((rand(shape, 180 + i as u64, dtype) * 3.0).unwrap() + 0.7).unwrap();
            let gamma = (rand(&[c], 190 + i as u64, dtype) + 1.0).unwrap();
            let beta = rand(&[c], 200 + i as u64, dtype);
            let scale = rand(&shape[..2], 210 + i as u64, dtype);
            let shift = rand(&shape[..2], 220 + i as u64, dtype);
            let three = |x: &Tensor| {
                let n = fastops::group_norm(x, &gamma, &beta, groups, 1e-5).unwrap();
                fastops::silu(&fastops::scale_shift(&n, &scale, &shift).unwrap()).unwrap()
            };
            let one = |x: &Tensor| {
                let (affine, mods) = ((&gamma, &beta), (&scale, &shift));
                fastops::group_norm_scale_shift_silu(x, affine, mods, groups, 1e-5).unwrap()
            };
            assert_eq!(vec64(&one(&x)), vec64(&three(&x)), "{dtype:?} {shape:?}");
            let xv = Var::from_tensor(&x).unwrap();
            let y = one(xv.as_tensor());
            assert_eq!(vec64(&y), vec64(&three(&x)));
            let g = y.sum_all().unwrap().backward().unwrap();
            assert!(
                g.get(xv.as_tensor()).is_some(),
                "no gradient through the tracked path"
            );
        }
    }
}

#[test]
fn silu_matches_candle_and_finite_differences() {
    let x = (rand(&[3, 4, 5, 6], 7, DType::F32) * 6.0).unwrap();
    let r = rand(&[3, 4, 5, 6], 8, DType::F32);
    let grads = |fast: bool| {
        let xv = Var::from_tensor(&x).unwrap();
        let y = if fast {
            fastops::silu(xv.as_tensor()).unwrap()
        } else {
            xv.as_tensor().silu().unwrap()
        };
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        (y, g.get(xv.as_tensor()).unwrap().clone())
    };
    let (yf, df) = grads(true);
    let (yc, dc) = grads(false);
    assert!(rel_diff(&yf, &yc) < 1e-7 && rel_diff(&df, &dc) < 1e-5);
    // f64: the gradient of Σ r·silu(x) element by element.
    let x = x.to_dtype(DType::F64).unwrap();
    let r = r.to_dtype(DType::F64).unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let g = (fastops::silu(xv.as_tensor()).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let an = vec64(g.get(xv.as_tensor()).unwrap());
    let eps = 1e-6;
    let f = |v: f64| v / (1.0 + (-v).exp());
    for ((&xi, &ri), &a) in vec64(&x).iter().zip(&vec64(&r)).zip(&an) {
        let fd = ri * (f(xi + eps) - f(xi - eps)) / (2.0 * eps);
        assert!(
            (fd - a).abs() < 1e-8 * (1.0 + fd.abs()),
            "silu'({xi}): {fd} vs {a}"
        );
    }
}

#[test]
fn channel_bias_and_upsample_match_candle_autograd() {
    for dtype in [DType::F32, DType::F64] {
        let x = rand(&[3, 4, 5, 6], 11, dtype);
        let b = rand(&[4], 12, dtype);
        let r = rand(&[3, 4, 10, 12], 13, dtype);
        let grads = |fast: bool| {
            let xv = Var::from_tensor(&x).unwrap();
            let bv = Var::from_tensor(&b).unwrap();
            let (xt, bt) = (xv.as_tensor(), bv.as_tensor());
            let (h, up) = if fast {
                let h = fastops::add_channel_bias(xt, bt).unwrap();
                let up = fastops::upsample2x(&h).unwrap();
                (h, up)
            } else {
                let h = xt
                    .broadcast_add(&bt.reshape((1, 4, 1, 1)).unwrap())
                    .unwrap();
                let up = h
                    .reshape((3, 4, 5, 1, 6, 1))
                    .unwrap()
                    .broadcast_as((3, 4, 5, 2, 6, 2))
                    .unwrap()
                    .reshape((3, 4, 10, 12))
                    .unwrap();
                (h, up)
            };
            // h has two consumers: the upsampling and the loss itself.
            let loss = ((&up * &r).unwrap().sum_all().unwrap()
                + (&h * &h).unwrap().sum_all().unwrap())
            .unwrap();
            let g = loss.backward().unwrap();
            (up, g.get(xt).unwrap().clone(), g.get(bt).unwrap().clone())
        };
        let f = grads(true);
        let c = grads(false);
        let e = [
            rel_diff(&f.0, &c.0),
            rel_diff(&f.1, &c.1),
            rel_diff(&f.2, &c.2),
        ];
        assert!(
            e[0] == 0.0 && e[1] < 1e-6 && e[2] < 1e-6,
            "{dtype:?}: up, dx, db rel errors {e:?}"
        );
    }
}

#[test]
fn scale_shift_matches_candle_autograd() {
    for dtype in [DType::F32, DType::F64] {
        let h = rand(&[3, 4, 5, 6], 21, dtype);
        let sc = rand(&[3, 8], 22, dtype);
        let r = rand(&[3, 4, 5, 6], 23, dtype);
        let grads = |fast: bool| {
            let hv = Var::from_tensor(&h).unwrap();
            let ev = Var::from_tensor(&sc).unwrap();
            let (scale, shift) = (
                ev.as_tensor().narrow(1, 0, 4).unwrap(),
                ev.as_tensor().narrow(1, 4, 4).unwrap(),
            );
            let y = if fast {
                fastops::scale_shift(hv.as_tensor(), &scale, &shift).unwrap()
            } else {
                let s4 = (scale + 1.0).unwrap().reshape((3, 4, 1, 1)).unwrap();
                let t4 = shift.reshape((3, 4, 1, 1)).unwrap();
                hv.as_tensor()
                    .broadcast_mul(&s4)
                    .unwrap()
                    .broadcast_add(&t4)
                    .unwrap()
            };
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (
                y,
                g.get(hv.as_tensor()).unwrap().clone(),
                g.get(ev.as_tensor()).unwrap().clone(),
            )
        };
        let f = grads(true);
        let c = grads(false);
        let e = [
            rel_diff(&f.0, &c.0),
            rel_diff(&f.1, &c.1),
            rel_diff(&f.2, &c.2),
        ];
        assert!(
            e[0] == 0.0 && e[1] < 1e-6 && e[2] < 1e-6,
            "{dtype:?}: y, dh, d(scale, shift) rel errors {e:?}"
        );
    }
}

#[test]
fn conv_gradient_only_for_tracked_arguments() {
    let x = rand(&[2, 3, 6, 6], 31, DType::F32);
    let w = rand(&[4, 3, 3, 3], 32, DType::F32);
    let r = rand(&[2, 4, 6, 6], 33, DType::F32);
    let (_, dx_ref, dw_ref) = conv_grads(&x, &w, &r, 1, 1, false);
    // Frozen weights: only dx.
    let xv = Var::from_tensor(&x).unwrap();
    let g = (fastops::conv2d(xv.as_tensor(), &w, 1, 1).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&w).is_none());
    assert!(rel_diff(g.get(xv.as_tensor()).unwrap(), &dx_ref) < 1e-5);
    // Constant input: only dw.
    let wv = Var::from_tensor(&w).unwrap();
    let g = (fastops::conv2d(&x, wv.as_tensor(), 1, 1).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&x).is_none());
    assert!(rel_diff(g.get(wv.as_tensor()).unwrap(), &dw_ref) < 1e-5);
}

/// Big enough that the column buffers are built one batch item at a time.
#[test]
fn conv_chunked_batch_matches_candle_autograd() {
    for (s, h) in [(1usize, 128usize), (2, 130)] {
        let x = rand(&[3, 32, h, h], 41, DType::F32);
        let w = rand(&[8, 32, 3, 3], 42, DType::F32);
        let r = rand(x.conv2d(&w, 1, s, 1, 1).unwrap().dims(), 43, DType::F32);
        let (yf, dxf, dwf) = conv_grads(&x, &w, &r, 1, s, true);
        let (yc, dxc, dwc) = conv_grads(&x, &w, &r, 1, s, false);
        let e = [
            rel_diff(&yf, &yc),
            rel_diff(&dxf, &dxc),
            rel_diff(&dwf, &dwc),
        ];
        assert!(
            e.iter().all(|&v| v < 1e-5),
            "stride {s}, {h}x{h}: y, dx, dw rel errors {e:?}"
        );
    }
}

/// (batch, C, O, H, W) for the Winograd checks: odd sizes (partial 4×4 tiles, 1×1 images,
/// fewer rows than a tile) and channel counts below and above the `Auto` threshold.
const WINO: &[(usize, usize, usize, usize, usize)] = &[
    (2, 3, 5, 7, 9),
    (3, 17, 4, 1, 1),
    (2, 8, 16, 13, 5),
    (1, 33, 31, 12, 16),
    (2, 20, 24, 4, 4),
    (4, 16, 16, 3, 2),
    (1, 70, 9, 6, 11),
    (2, 9, 10, 32, 30),
];

/// Winograd F(4,3) and im2col, both f32, against the f64 conv. Tolerance: a 4×4 output tile is
/// Aᵀ[Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)]A; the largest row sums of |Bᵀ|, |G|, |Aᵀ| are 10, 1/2 and 18,
/// so rounding errors of the transformed values are amplified by at most 10²·(1/2)²·18² = 8100
/// over those of a direct sum, whose random-walk error is about ε·√(9C)·max|x|·max|w|. A wrong
/// transform gives errors of the size of y itself, ~√(9C)·|x|·|w|, 1/(8100 ε) ≈ 2000× larger.
#[test]
fn winograd_matches_im2col_and_f64() {
    use fastops::ConvPath;
    for (i, &(b, c, o, h, wd)) in WINO.iter().enumerate() {
        let x = rand(&[b, c, h, wd], 300 + i as u64, DType::F32);
        let w = rand(&[o, c, 3, 3], 310 + i as u64, DType::F32);
        let exact = vec64(
            &x.to_dtype(DType::F64)
                .unwrap()
                .conv2d(&w.to_dtype(DType::F64).unwrap(), 1, 1, 1, 1)
                .unwrap(),
        );
        let max = |t: &Tensor| vec64(t).iter().fold(0f64, |m, v| m.max(v.abs()));
        let tol = 8100.0 * f32::EPSILON as f64 * ((9 * c) as f64).sqrt() * max(&x) * max(&w);
        let err = |p: ConvPath| {
            let y = fastops::conv2d_forward(&x, &w, 1, 1, p).unwrap();
            assert_eq!(y.dims(), &[b, o, h, wd]);
            vec64(&y)
                .iter()
                .zip(&exact)
                .fold(0f64, |m, (a, e)| m.max((a - e).abs()))
        };
        let (ew, ei) = (err(ConvPath::Winograd), err(ConvPath::Im2col));
        eprintln!("{b}x{c}->{o} {h}x{wd}: winograd {ew:.2e} im2col {ei:.2e} tol {tol:.2e}");
        assert!(
            ew < tol && ei < tol,
            "{b}x{c}->{o} {h}x{wd}: winograd {ew:e} im2col {ei:e} tol {tol:e}"
        );
    }
    // The Winograd path refuses other geometries by name.
    let x = rand(&[1, 2, 5, 5], 1, DType::F32);
    let w = rand(&[2, 2, 3, 3], 2, DType::F32);
    let e = fastops::conv2d_forward(&x, &w, 1, 2, ConvPath::Winograd).unwrap_err();
    assert!(e.to_string().contains("stride 2"), "{e}");
}

/// 64 channels and ≥ 32 4×4 tiles (`winograd_pays` in src/nn/fastops.rs), so that the forward and
/// the input gradient (the same conv with the flipped kernel) take the Winograd path by
/// default: both match candle's autograd.
/// y and dx are sums of 9C and 9O products; with the 8100 growth of
/// [`winograd_matches_im2col_and_f64`] the bound relative to max|y| is ≲ 8100 ε ≈ 1e-3 in the
/// worst case; typical errors are ~1e-6, so 1e-4 still catches any wrong tile or border.
#[test]
fn winograd_conv_gradient_matches_candle_autograd() {
    for (i, &(h, wd)) in [(17, 13), (16, 16), (9, 30)].iter().enumerate() {
        let x = rand(&[2, 64, h, wd], 400 + i as u64, DType::F32);
        let w = rand(&[64, 64, 3, 3], 410 + i as u64, DType::F32);
        let r = rand(&[2, 64, h, wd], 420 + i as u64, DType::F32);
        let (yf, dxf, dwf) = conv_grads(&x, &w, &r, 1, 1, true);
        let (yc, dxc, dwc) = conv_grads(&x, &w, &r, 1, 1, false);
        let (ey, ex, ew) = (
            rel_diff(&yf, &yc),
            rel_diff(&dxf, &dxc),
            rel_diff(&dwf, &dwc),
        );
        eprintln!("{h}x{wd}: y {ey:.2e} dx {ex:.2e} dw {ew:.2e}");
        assert!(
            ey < 1e-4 && ex < 1e-4 && ew < 1e-5,
            "{h}x{wd}: y {ey:e} dx {ex:e} dw {ew:e}"
        );
    }
}

/// A layer's graph-less input gradient equals candle's autograd through its convolution, on the
/// im2col and the Winograd paths, and a second call (the flipped kernel and its Winograd
/// transform kept) gives the same bits as the first.
#[test]
fn conv_layer_input_grad_matches_autograd_and_repeats() {
    for (i, (xs, ws)) in [
        ([2, 16, 16, 16], [17, 16, 3, 3]),
        ([2, 4, 6, 6], [3, 4, 3, 3]),
        ([2, 5, 7, 6], [6, 5, 1, 1]),
    ]
    .into_iter()
    .enumerate()
    {
        let x = rand(&xs, 60 + i as u64, DType::F32);
        let w = rand(&ws, 70 + i as u64, DType::F32);
        let pad = ws[2] / 2;
        let layer = fastops::Conv2d::new(w.clone(), None, pad, 1);
        let gy = rand(&[xs[0], ws[0], xs[2], xs[3]], 80 + i as u64, DType::F32);
        let xv = Var::from_tensor(&x).unwrap();
        let y = xv.as_tensor().conv2d(&w, pad, 1, 1, 1).unwrap();
        let grads = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let reference = grads.get(xv.as_tensor()).unwrap();
        let dims = x.dims4().unwrap();
        let first = layer.input_grad(&gy, dims).unwrap();
        assert!(rel_diff(&first, reference) < 1e-5, "case {i}");
        let second = layer.input_grad(&gy, dims).unwrap();
        assert_eq!(vec64(&first), vec64(&second), "case {i}");
    }
}
