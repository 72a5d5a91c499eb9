//! Image forward operators against the DAPS golden fixtures, plus finite-difference checks.
//!
//! Tolerances: the fixtures are float32 PyTorch results, so exact equality is not expected
//! (different summation orders; FFT instead of direct convolution). Blur and SR use atol 1e-5,
//! phase retrieval rtol 1e-5 + atol 1e-4 on magnitudes (up to ~47) and atol 1e-4 on the VJP, as
//! the fixture README suggests. The SR matrices are compared at 1e-7 (f64 weights cast to f32).

use candle_core::{DType, Device, Tensor};
use daps::operator::blur::{motion_kernel, Blur};
use daps::operator::fft::{
    complex, complex_abs, complex_parts, fft2c, ifft2c, real_to_complex, PhaseRetrieval,
};
use daps::operator::inpaint::{box_mask, random_mask, Inpaint};
use daps::operator::resize::{AvgPool, SuperResolution};
use daps::operator::Operator;
use daps::Error;
use std::collections::HashMap;

mod common;
use common::{dot, max_abs_diff, randn, randn64};

fn fixture(name: &str) -> HashMap<String, Tensor> {
    common::load(&format!("operators/{name}.safetensors"))
}

fn input() -> (Tensor, Tensor) {
    let f = fixture("input");
    (f["x"].clone(), f["v"].clone())
}

/// |a − b| ≤ atol + rtol·|b| elementwise.
fn assert_close(a: &Tensor, b: &Tensor, atol: f64, rtol: f64, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let (a, b) = (a.to_vec1::<f64>().unwrap(), b.to_vec1::<f64>().unwrap());
    let mut worst = (0.0, 0);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let excess = (x - y).abs() - (atol + rtol * y.abs());
        assert!(x.is_finite(), "{what}: non-finite value at {i}");
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{what}: element {i}: {} vs {} (atol {atol}, rtol {rtol})",
        a[i],
        b[i]
    );
}

/// Uses the trait's default (autograd) VJP through the operator's forward.
struct Autograd<'a>(&'a dyn Operator);

impl Operator for Autograd<'_> {
    fn forward(&self, x: &Tensor) -> daps::Result<Tensor> {
        self.0.forward(x)
    }
    fn name(&self) -> String {
        format!("autograd({})", self.0.name())
    }
}

/// Phase retrieval built from the differentiable building blocks (fft2c, complex_abs).
struct ComposedPr(usize);

impl Operator for ComposedPr {
    fn forward(&self, x: &Tensor) -> daps::Result<Tensor> {
        let p = self.0;
        let x01 = x
            .affine(0.5, 0.5)?
            .pad_with_zeros(2, p, p)?
            .pad_with_zeros(3, p, p)?;
        complex_abs(&fft2c(&real_to_complex(&x01)?)?)
    }
    fn name(&self) -> String {
        "composed phase retrieval".into()
    }
}

/// Central differences ⟨v, (A(x+εd) − A(x−εd))/2ε⟩ against ⟨Jᵀv, d⟩, in f64.
fn check_vjp_fd(op: &dyn Operator, x: &Tensor, eps: f64, rtol: f64) {
    let x = x.to_dtype(DType::F64).unwrap();
    let y = op.forward(&x).unwrap();
    assert_eq!(y.dtype(), DType::F64, "{}", op.name());
    let v = randn64(y.dims(), 11);
    let d = randn64(x.dims(), 12);
    let plus = op.forward(&(&x + (&d * eps).unwrap()).unwrap()).unwrap();
    let minus = op.forward(&(&x - (&d * eps).unwrap()).unwrap()).unwrap();
    let fd = dot(&v, &((plus - minus).unwrap() / (2.0 * eps)).unwrap());
    let g = op.vjp(&x, &v).unwrap();
    assert_eq!(g.dims(), x.dims(), "{}", op.name());
    let an = dot(&g, &d);
    assert!(
        (fd - an).abs() <= rtol * an.abs().max(1.0),
        "{}: finite difference {fd} vs vjp {an}",
        op.name()
    );
    // Per-sample structure: the VJP of sample 0 alone equals row 0 of the batched VJP.
    if x.dim(0).unwrap() > 1 {
        let g0 = op
            .vjp(&x.narrow(0, 0, 1).unwrap(), &v.narrow(0, 0, 1).unwrap())
            .unwrap();
        let diff = max_abs_diff(&g0, &g.narrow(0, 0, 1).unwrap());
        assert!(diff < 1e-12, "{}: batched vjp differs by {diff}", op.name());
        let y0 = op.forward(&x.narrow(0, 0, 1).unwrap()).unwrap();
        let diff = max_abs_diff(&y0, &y.narrow(0, 0, 1).unwrap());
        assert!(
            diff < 1e-12,
            "{}: batched forward differs by {diff}",
            op.name()
        );
    }
}

/// The closed-form VJP agrees with autograd through `forward` (custom-op backward).
fn check_vjp_autograd(op: &dyn Operator, x: &Tensor, tol: f64) {
    let y = op.forward(x).unwrap();
    let v = randn(y.dims(), 21).to_dtype(x.dtype()).unwrap();
    let fast = op.vjp(x, &v).unwrap();
    let auto = Autograd(op).vjp(x, &v).unwrap();
    let diff = max_abs_diff(&fast, &auto);
    assert!(
        diff <= tol,
        "{}: vjp vs autograd differ by {diff}",
        op.name()
    );
}

fn small_ops() -> Vec<Box<dyn Operator>> {
    let k: Vec<f32> = randn(&[25], 5)
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|v| v.abs())
        .collect();
    vec![
        Box::new(Blur::from_vec(k, 5).unwrap()),
        Box::new(Blur::gaussian(7, 1.0).unwrap()),
        Box::new(Blur::motion(9, 0.5, 3).unwrap()),
        Box::new(PhaseRetrieval { oversample: 2.0 }),
        Box::new(PhaseRetrieval { oversample: 1.0 }),
        Box::new(SuperResolution::new(4, 16, 16, &Device::Cpu).unwrap()),
        Box::new(SuperResolution::new(2, 16, 16, &Device::Cpu).unwrap()),
        Box::new(SuperResolution::new(3, 16, 16, &Device::Cpu).unwrap()),
        Box::new(AvgPool { factor: 2 }),
        Box::new(Inpaint::random(16, 16, 0.7, 1, &Device::Cpu).unwrap()),
        Box::new(Inpaint::boxed(16, 16, 1, &Device::Cpu).unwrap()),
    ]
}

#[test]
fn gaussian_kernel_matches_scipy() {
    let f = fixture("gaussian_blur");
    let blur = Blur::gaussian(61, 3.0).unwrap();
    assert!(blur.is_separable());
    let k = blur.kernel_tensor(&Device::Cpu).unwrap();
    let diff = max_abs_diff(&k, &f["kernel"]);
    assert!(diff <= 1e-9, "kernel differs by {diff}");
    let support: Vec<usize> = (0..61)
        .filter(|&i| blur.kernel()[30 * 61 + i] > 0.0)
        .collect();
    assert_eq!((support[0], support[support.len() - 1]), (18, 42));
}

#[test]
fn gaussian_blur_matches_fixture() {
    let (x, v) = input();
    let f = fixture("gaussian_blur");
    for blur in [
        Blur::gaussian(61, 3.0).unwrap(),
        Blur::from_kernel(&f["kernel"]).unwrap(),
    ] {
        assert!(blur.is_separable());
        assert_close(&blur.forward(&x).unwrap(), &f["y"], 1e-5, 0.0, "gaussian y");
        assert_close(
            &blur.vjp(&x, &v).unwrap(),
            &f["vjp"],
            1e-5,
            0.0,
            "gaussian vjp",
        );
    }
}

#[test]
fn motion_blur_matches_fixture() {
    let (x, v) = input();
    let f = fixture("motion_blur");
    let path = format!(
        "{}/tests/fixtures/operators/motion_blur.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let blur = Blur::from_safetensors(path).unwrap();
    assert!(!blur.is_separable());
    assert_close(&blur.forward(&x).unwrap(), &f["y"], 1e-5, 0.0, "motion y");
    assert_close(
        &blur.vjp(&x, &v).unwrap(),
        &f["vjp"],
        1e-5,
        0.0,
        "motion vjp",
    );
}

#[test]
fn super_resolution_matches_fixture() {
    let (x, _) = input();
    let f = fixture("sr_x4");
    let sr = SuperResolution::new(4, 128, 128, &Device::Cpu).unwrap();
    let (mh, mw) = sr.matrices();
    assert!(max_abs_diff(mh, &f["resize_matrix_h"]) <= 1e-7);
    assert!(max_abs_diff(mw, &f["resize_matrix_w"]) <= 1e-7);
    assert_close(&sr.forward(&x).unwrap(), &f["y"], 1e-5, 0.0, "sr y");
    assert_close(
        &sr.vjp(&x, &f["v"]).unwrap(),
        &f["vjp"],
        1e-5,
        0.0,
        "sr vjp",
    );
}

#[test]
fn phase_retrieval_matches_fixture() {
    let (x, _) = input();
    let f = fixture("phase_retrieval");
    let pr = PhaseRetrieval { oversample: 2.0 };
    assert_eq!(pr.padding(128, 128), (32, 32));
    assert_eq!(pr.padding(256, 256), (64, 64));
    assert_close(&pr.forward(&x).unwrap(), &f["y"], 1e-4, 1e-5, "pr y");
    let g = pr.vjp(&x, &f["v"]).unwrap();
    assert_close(&g, &f["vjp"], 1e-4, 0.0, "pr vjp");
    let auto = Autograd(&pr).vjp(&x, &f["v"]).unwrap();
    assert_close(&auto, &f["vjp"], 1e-4, 0.0, "pr autograd vjp");
    // The same through fft2c / complex_abs and candle autograd.
    let composed = ComposedPr(32);
    assert_close(
        &composed.forward(&x).unwrap(),
        &f["y"],
        1e-4,
        1e-5,
        "composed y",
    );
    let auto = composed.vjp(&x, &f["v"]).unwrap();
    assert_close(&auto, &f["vjp"], 1e-4, 0.0, "composed autograd vjp");
}

#[test]
fn phase_retrieval_vjp_is_finite_at_zero_coefficients() {
    let pr = PhaseRetrieval { oversample: 2.0 };
    // x = −1 ⇒ x/2 + 1/2 = 0: every Fourier coefficient is exactly zero.
    let x = Tensor::full(-1f32, (2, 3, 16, 16), &Device::Cpu).unwrap();
    // A ±1 checkerboard (x ∈ {1, −3}) has a DC coefficient of exactly zero.
    let sign = Tensor::from_vec(
        (0..256)
            .map(|i| {
                if (i / 16 + i % 16) % 2 == 0 {
                    1f32
                } else {
                    -1.0
                }
            })
            .collect(),
        (1, 1, 16, 16),
        &Device::Cpu,
    )
    .unwrap();
    let checker = sign
        .affine(2.0, -1.0)
        .unwrap()
        .repeat((2, 3, 1, 1))
        .unwrap();
    for x in [x, checker] {
        let y = pr.forward(&x).unwrap();
        let zero = y
            .eq(0f32)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .sum_all()
            .unwrap();
        assert!(
            zero.to_scalar::<f32>().unwrap() > 0.0,
            "test needs a zero coefficient"
        );
        let v = randn(y.dims(), 3);
        let composed = ComposedPr(4).vjp(&x, &v).unwrap();
        for g in [pr.vjp(&x, &v).unwrap(), composed] {
            let values = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                values.iter().all(|v| v.is_finite()),
                "non-finite vjp entries"
            );
        }
    }
}

/// The fused `residual_vjp` (each mirrored frequency pair visited once) equals `vjp` of
/// `forward(x) − y` bit for bit on odd and even padded sizes (a padded side of 21 has no
/// Nyquist row; 16 and 24 have one), f32 and f64, for two planes packed as one transform and a
/// plane alone (3 planes), and at zero coefficients (the checkerboard's DC).
#[test]
fn phase_retrieval_residual_vjp_equals_vjp_of_the_residual_at_any_size() {
    let pr = PhaseRetrieval { oversample: 2.0 };
    for (h, w) in [(15, 13), (13, 16), (16, 15), (7, 7)] {
        for dtype in [DType::F32, DType::F64] {
            let x = randn(&[3, 1, h, w], 5).to_dtype(dtype).unwrap();
            let checker = Tensor::from_vec(
                (0..3 * h * w)
                    .map(|i| if (i / w + i % w) % 2 == 0 { 1.0 } else { -3.0 })
                    .collect::<Vec<f64>>(),
                (3, 1, h, w),
                &Device::Cpu,
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
            for x in [x, checker] {
                let ax = pr.forward(&x).unwrap();
                let y = (&ax + randn(ax.dims(), 9).to_dtype(dtype).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap();
                let want = pr.vjp(&x, &(&ax - &y).unwrap()).unwrap();
                let got = pr.residual_vjp(&x, &y).unwrap();
                assert_eq!(
                    max_abs_diff(&got, &want),
                    0.0,
                    "{h}×{w}, {dtype:?}: residual_vjp vs vjp of the residual"
                );
            }
        }
    }
}

#[test]
fn fft2c_matches_naive_dft() {
    let (h, w) = (5, 6);
    let re = randn64(&[2, h, w], 1);
    let im = randn64(&[2, h, w], 2);
    let z = complex(&re, &im).unwrap();
    let (fr, fi) = complex_parts(&fft2c(&z).unwrap()).unwrap();
    let (fr, fi) = (fr.to_vec3::<f64>().unwrap(), fi.to_vec3::<f64>().unwrap());
    let (re, im) = (re.to_vec3::<f64>().unwrap(), im.to_vec3::<f64>().unwrap());
    // Centred frequencies: output index i is frequency i − ⌊h/2⌋, input index j is position
    // j − ⌊h/2⌋ (fftshift/ifftshift).
    let norm = 1.0 / ((h * w) as f64).sqrt();
    for b in 0..2 {
        for ki in 0..h {
            for kj in 0..w {
                let (mut sr, mut si) = (0.0, 0.0);
                for pi in 0..h {
                    for pj in 0..w {
                        let fa = (ki as f64 - (h / 2) as f64) * (pi as f64 - (h / 2) as f64)
                            / h as f64
                            + (kj as f64 - (w / 2) as f64) * (pj as f64 - (w / 2) as f64)
                                / w as f64;
                        let (s, c) = (-2.0 * std::f64::consts::PI * fa).sin_cos();
                        sr += re[b][pi][pj] * c - im[b][pi][pj] * s;
                        si += re[b][pi][pj] * s + im[b][pi][pj] * c;
                    }
                }
                assert!((fr[b][ki][kj] - sr * norm).abs() < 1e-12);
                assert!((fi[b][ki][kj] - si * norm).abs() < 1e-12);
            }
        }
    }
    let back = ifft2c(&fft2c(&z).unwrap()).unwrap();
    assert!(max_abs_diff(&back, &z) < 1e-12);
}

#[test]
fn fft2c_backward_is_its_adjoint() {
    let z = randn64(&[3, 7, 4, 2], 4);
    let v = randn64(&[3, 7, 4, 2], 5);
    let var = candle_core::Var::from_tensor(&z).unwrap();
    let s = (fft2c(var.as_tensor()).unwrap() * &v)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = s.backward().unwrap().get(var.as_tensor()).unwrap().clone();
    // The real adjoint of a unitary complex map is its inverse.
    assert!(max_abs_diff(&g, &ifft2c(&v).unwrap()) < 1e-12);
    // ⟨F z, v⟩ = ⟨z, Fᴴ v⟩ in the real inner product.
    let lhs = dot(&fft2c(&z).unwrap(), &v);
    assert!((lhs - dot(&z, &g)).abs() < 1e-10);
}

#[test]
fn vjp_finite_differences() {
    let x = randn64(&[2, 3, 16, 16], 7).affine(0.5, 0.0).unwrap();
    for op in &small_ops() {
        check_vjp_fd(op.as_ref(), &x, 1e-6, 1e-7);
    }
    // Single channel, odd number of planes (FFT path packs planes in pairs).
    let x1 = randn64(&[3, 1, 16, 16], 8);
    for op in &small_ops()[..3] {
        check_vjp_fd(op.as_ref(), &x1, 1e-6, 1e-7);
    }
    // f32: linear operators are exact up to rounding at any step.
    let x32 = randn(&[2, 3, 16, 16], 9);
    for op in &small_ops() {
        let y = op.forward(&x32).unwrap();
        let v = randn(y.dims(), 10);
        let g32 = op.vjp(&x32, &v).unwrap();
        let g64 = op
            .vjp(
                &x32.to_dtype(DType::F64).unwrap(),
                &v.to_dtype(DType::F64).unwrap(),
            )
            .unwrap();
        assert!(max_abs_diff(&g32, &g64) < 1e-4, "{}: f32 vs f64", op.name());
    }
}

#[test]
fn vjp_matches_autograd() {
    let x = randn(&[2, 3, 16, 16], 13);
    for op in &small_ops() {
        check_vjp_autograd(op.as_ref(), &x, 1e-5);
    }
    let (x, _) = input();
    check_vjp_autograd(&Blur::gaussian(61, 3.0).unwrap(), &x, 1e-5);
    let f = fixture("motion_blur");
    check_vjp_autograd(&Blur::from_kernel(&f["kernel"]).unwrap(), &x, 1e-5);
}

#[test]
fn blur_paths_agree() {
    // The same Gaussian through the separable and the FFT path (kernel perturbed off rank 1).
    let x = randn(&[2, 3, 40, 33], 14);
    let sep = Blur::gaussian(15, 2.0).unwrap();
    let mut k: Vec<f32> = sep.kernel().iter().map(|&v| v as f32).collect();
    k[0] = 1e-30;
    let fft = Blur::from_vec(k, 15).unwrap();
    assert!(sep.is_separable() && !fft.is_separable());
    let diff = max_abs_diff(&sep.forward(&x).unwrap(), &fft.forward(&x).unwrap());
    assert!(diff < 1e-5, "forward paths differ by {diff}");
    let diff = max_abs_diff(&sep.vjp(&x, &x).unwrap(), &fft.vjp(&x, &x).unwrap());
    assert!(diff < 1e-5, "adjoint paths differ by {diff}");
}

#[test]
fn blur_reflect_padding_semantics() {
    // A 3×3 kernel picking the upper-left neighbour: y[i][j] = x[refl(i−1)][refl(j−1)].
    let mut k = vec![0f32; 9];
    k[0] = 1.0;
    let blur = Blur::from_vec(k, 3).unwrap();
    let x = randn(&[1, 1, 4, 5], 15);
    let (xs, ys) = (
        x.squeeze(0).unwrap().to_vec3::<f32>().unwrap(),
        blur.forward(&x)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap(),
    );
    let refl = |t: i64| t.unsigned_abs() as usize;
    for i in 0..4 {
        for j in 0..5 {
            assert_eq!(ys[0][i][j], xs[0][refl(i as i64 - 1)][refl(j as i64 - 1)]);
        }
    }
}

#[test]
fn motion_kernel_generator() {
    let k = motion_kernel(61, 0.5, 42).unwrap();
    assert_eq!(k.len(), 61 * 61);
    assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!(k.iter().all(|&v| v >= 0.0));
    assert_eq!(k, motion_kernel(61, 0.5, 42).unwrap());
    assert_ne!(k, motion_kernel(61, 0.5, 43).unwrap());
    // Centred (the path's centre of mass is the canvas centre).
    let (mut ci, mut cj) = (0f64, 0f64);
    for (n, v) in k.iter().enumerate() {
        ci += v * (n / 61) as f64;
        cj += v * (n % 61) as f64;
    }
    assert!(
        (ci - 30.0).abs() < 3.0 && (cj - 30.0).abs() < 3.0,
        "centre {ci}, {cj}"
    );
    assert!(!Blur::motion(61, 0.5, 42).unwrap().is_separable());
    assert!(matches!(motion_kernel(60, 0.5, 0), Err(Error::Config(_))));
}

#[test]
fn kernel_from_png() {
    let dir = std::env::temp_dir().join(format!("daps-kernel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("k.png");
    let img = image::GrayImage::from_fn(5, 5, |i, j| image::Luma([(10 * (i + j)) as u8]));
    img.save(&path).unwrap();
    let blur = Blur::from_png(&path).unwrap();
    let total: f64 = (0..5)
        .flat_map(|j| (0..5).map(move |i| (10 * (i + j)) as f64))
        .sum();
    assert!((blur.kernel().iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // Row 1, column 2 holds 10·(2 + 1).
    assert!((blur.kernel()[5 + 2] - 30.0 / total).abs() < 1e-9);
    image::GrayImage::new(4, 4).save(&path).unwrap();
    assert!(Blur::from_png(&path).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inpaint_fixture_masks() {
    let x = randn(&[2, 3, 256, 256], 16);
    let v = randn(&[2, 3, 256, 256], 17);
    for (name, zeros) in [
        ("inpainting_box_mask", 16384.0),
        ("inpainting_random_mask", 46120.0),
    ] {
        let mask = fixture(name)["mask"].clone();
        let op = Inpaint::new(mask.clone()).unwrap();
        let expected = x.broadcast_mul(&mask).unwrap();
        assert_eq!(max_abs_diff(&op.forward(&x).unwrap(), &expected), 0.0);
        let expected = v.broadcast_mul(&mask).unwrap();
        assert_eq!(max_abs_diff(&op.vjp(&x, &v).unwrap(), &expected), 0.0);
        let frac = op.observed_fraction().unwrap();
        assert!((frac - (1.0 - zeros / 65536.0)).abs() < 1e-12, "{name}");
    }
}

#[test]
fn inpaint_from_png() {
    let dir = std::env::temp_dir().join(format!("daps-mask-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.png");
    let img = image::GrayImage::from_fn(8, 6, |i, j| image::Luma([((i + j) % 3 * 100) as u8]));
    img.save(&path).unwrap();
    let op = Inpaint::from_png(&path, 6, 8, &Device::Cpu).unwrap();
    let m = op.mask.squeeze(0).unwrap().squeeze(0).unwrap();
    let m = m.to_vec2::<f32>().unwrap();
    for (r, row) in m.iter().enumerate() {
        for (c, &val) in row.iter().enumerate() {
            assert_eq!(val, ((r + c) % 3 != 0) as u8 as f32);
        }
    }
    assert!(matches!(
        Inpaint::from_png(&path, 8, 6, &Device::Cpu),
        Err(Error::Shape { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// (top, left, bottom, right) of the zeros, asserting they form one filled rectangle.
fn hole(mask: &[f32], h: usize, w: usize) -> (usize, usize, usize, usize) {
    let zeros: Vec<(usize, usize)> = (0..h * w)
        .filter(|&i| mask[i] == 0.0)
        .map(|i| (i / w, i % w))
        .collect();
    let top = zeros.iter().map(|p| p.0).min().unwrap();
    let bottom = zeros.iter().map(|p| p.0).max().unwrap() + 1;
    let left = zeros.iter().map(|p| p.1).min().unwrap();
    let right = zeros.iter().map(|p| p.1).max().unwrap() + 1;
    assert_eq!(
        zeros.len(),
        (bottom - top) * (right - left),
        "hole is a filled box"
    );
    (top, left, bottom, right)
}

#[test]
fn box_mask_statistics() {
    for (n, hole_len, margin) in [(256, 128, 32), (128, 64, 16)] {
        let mut tops = Vec::new();
        for seed in 0..200 {
            let m = box_mask(n, n, seed).unwrap();
            let (t, l, b, r) = hole(&m, n, n);
            assert_eq!((b - t, r - l), (hole_len, hole_len));
            for p in [t, l] {
                assert!(p >= margin && p < n - margin - hole_len, "offset {p}");
            }
            tops.push(t);
            tops.push(l);
        }
        let (lo, hi) = (*tops.iter().min().unwrap(), *tops.iter().max().unwrap());
        let span = n - 2 * margin - hole_len;
        assert!(lo < margin + span / 8 && hi >= n - margin - hole_len - span / 8);
        let mean = tops.iter().sum::<usize>() as f64 / tops.len() as f64;
        let centre = margin as f64 + (span as f64 - 1.0) / 2.0;
        assert!(
            (mean - centre).abs() < span as f64 / 10.0,
            "mean offset {mean}"
        );
    }
    assert_eq!(
        box_mask(256, 256, 5).unwrap(),
        box_mask(256, 256, 5).unwrap()
    );
    assert!(box_mask(1, 1, 0).is_err());
}

#[test]
fn random_mask_statistics() {
    let (h, w) = (256, 256);
    let m = random_mask(h, w, 0.7, 1).unwrap();
    let zeros = m.iter().filter(|&&v| v == 0.0).count();
    assert_eq!(zeros, (65536.0 * 0.7f64).floor() as usize);
    assert!(m.iter().all(|&v| v == 0.0 || v == 1.0));
    assert_eq!(m, random_mask(h, w, 0.7, 1).unwrap());
    assert_ne!(m, random_mask(h, w, 0.7, 2).unwrap());
    // Spatially uniform: each 64×64 block drops 70% ± 3%.
    for bi in 0..4 {
        for bj in 0..4 {
            let dropped = (0..64)
                .flat_map(|i| (0..64).map(move |j| (bi * 64 + i) * w + bj * 64 + j))
                .filter(|&k| m[k] == 0.0)
                .count();
            let frac = dropped as f64 / 4096.0;
            assert!((frac - 0.7).abs() < 0.03, "block ({bi}, {bj}): {frac}");
        }
    }
    // Same mask for every channel.
    let op = Inpaint::random(8, 8, 0.5, 3, &Device::Cpu).unwrap();
    let y = op.forward(&Tensor::ones((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap());
    let y = y.unwrap().squeeze(0).unwrap().to_vec3::<f32>().unwrap();
    assert!(y[0] == y[1] && y[1] == y[2]);
    assert!(random_mask(4, 4, 1.5, 0).is_err());
}

#[test]
fn shape_errors() {
    let dev = Device::Cpu;
    let x3 = randn(&[3, 16, 16], 1);
    let x = randn(&[1, 3, 16, 16], 1);
    let is_shape = |r: daps::Result<Tensor>| matches!(r, Err(Error::Shape { .. }));
    let is_config = |r: daps::Result<Tensor>| matches!(r, Err(Error::Config(_)));

    let blur = Blur::gaussian(7, 1.0).unwrap();
    assert!(is_shape(blur.forward(&x3)));
    assert!(is_shape(blur.vjp(&x, &randn(&[1, 3, 16, 15], 2))));
    // ReflectionPad2d(30) needs H, W > 30.
    assert!(is_config(Blur::gaussian(61, 3.0).unwrap().forward(&x)));
    assert!(matches!(Blur::gaussian(6, 1.0), Err(Error::Config(_))));
    assert!(Blur::from_vec(vec![0.0; 9], 3).is_err());
    assert!(matches!(
        Blur::from_kernel(&randn(&[3, 5], 1)),
        Err(Error::Shape { .. })
    ));

    let pr = PhaseRetrieval::default();
    assert!(is_shape(pr.forward(&x3)));
    assert!(is_shape(pr.vjp(&x, &x)));
    assert!(is_shape(fft2c(&x)));

    let sr = SuperResolution::new(4, 16, 16, &dev).unwrap();
    assert!(is_shape(sr.forward(&randn(&[1, 3, 32, 32], 1))));
    assert!(is_shape(sr.vjp(&x, &x)));
    assert!(is_config(AvgPool { factor: 3 }.forward(&x)));

    let inp = Inpaint::random(16, 16, 0.5, 0, &dev).unwrap();
    assert!(is_shape(inp.forward(&randn(&[1, 3, 16, 8], 1))));
    assert!(matches!(
        Inpaint::new(randn(&[2, 1, 4, 4], 1)),
        Err(Error::Shape { .. })
    ));
}
