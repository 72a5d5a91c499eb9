//! PSNR and SSIM against piq 0.8 (fixture `tests/fixtures/metrics`).
//!
//! Tolerances (fixture README): PSNR 1e-4 dB, SSIM 1e-5. We compute in f64; piq's float32
//! values differ from float64 by at most 5e-7 dB (PSNR) and 3e-6 (SSIM).

use candle_core::{DType, Device, Tensor};
use daps::metric::image::{psnr, ssim, to_unit, to_unit_robust};
use daps::Error;

mod common;
use common::{json, load};

fn pairs() -> (Tensor, Tensor) {
    let t = load("metrics/pairs.safetensors");
    (t["clean"].clone(), t["distorted"].clone())
}

fn expected(key: &str) -> Vec<f64> {
    json("metrics/expected.json")[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn assert_all_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn psnr_matches_piq() {
    let (clean, distorted) = pairs();
    let got = psnr(&clean, &distorted, 1.0).unwrap();
    assert_all_close(&got, &expected("psnr"), 1e-4, "psnr");
    assert_all_close(
        &got,
        &expected("psnr_float64_from_definition"),
        1e-6,
        "psnr f64",
    );
}

#[test]
fn ssim_matches_piq() {
    let (clean, distorted) = pairs();
    let got = ssim(&clean, &distorted, 1.0).unwrap();
    assert_all_close(&got, &expected("ssim"), 1e-5, "ssim");
    assert_all_close(
        &got,
        &expected("ssim_float64_from_definition"),
        1e-7,
        "ssim f64",
    );
}

#[test]
fn identical_images() {
    let (clean, _) = pairs();
    for v in ssim(&clean, &clean, 1.0).unwrap() {
        assert!((v - 1.0).abs() < 1e-12);
    }
    for v in psnr(&clean, &clean, 1.0).unwrap() {
        assert!((v - 80.0).abs() < 1e-9);
    }
}

#[test]
fn ssim_downsamples_large_images() {
    // min side 384 ⇒ round(1.5) = 2: piq average-pools by 2 first.
    let (clean, distorted) = pairs();
    let up = |t: &Tensor| t.upsample_nearest2d(384, 384).unwrap();
    let pooled = |t: &Tensor| up(t).avg_pool2d(2).unwrap();
    let big = ssim(&up(&clean), &up(&distorted), 1.0).unwrap();
    let small = ssim(&pooled(&clean), &pooled(&distorted), 1.0).unwrap();
    assert_all_close(&big, &small, 1e-12, "pooled ssim");
    // 320 ⇒ round(1.25) = 1: no pooling (differs from the pooled value).
    let up = |t: &Tensor| t.upsample_nearest2d(320, 320).unwrap();
    let direct = ssim(&up(&clean), &up(&distorted), 1.0).unwrap();
    let pooled = ssim(
        &up(&clean).avg_pool2d(2).unwrap(),
        &up(&distorted).avg_pool2d(2).unwrap(),
        1.0,
    )
    .unwrap();
    assert!((direct[0] - pooled[0]).abs() > 1e-4);
}

#[test]
fn to_unit_maps_and_clips() {
    let x = Tensor::new(&[-1.5f32, -1.0, 0.0, 0.5, 1.0, 2.0], &Device::Cpu).unwrap();
    let y = to_unit(&x, (-1.0, 1.0)).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(y, vec![0.0, 0.0, 0.5, 0.75, 1.0, 1.0]);
    let y = to_unit(&x, (-0.5, 1.5)).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(y, vec![0.0, 0.0, 0.25, 0.5, 0.75, 1.0]);
    assert!(to_unit(&x, (1.0, 1.0)).is_err());
}

#[test]
fn metrics_follow_the_data_range() {
    // The same pair in units c times larger, scored with range c: the same PSNR and SSIM.
    let (clean, distorted) = pairs();
    let (p1, s1) = (
        psnr(&distorted, &clean, 1.0).unwrap(),
        ssim(&distorted, &clean, 1.0).unwrap(),
    );
    for c in [0.01, 250.0] {
        let (a, b) = (
            distorted.affine(c, 0.0).unwrap(),
            clean.affine(c, 0.0).unwrap(),
        );
        let (pc, sc) = (psnr(&a, &b, c).unwrap(), ssim(&a, &b, c).unwrap());
        for i in 0..p1.len() {
            assert!(
                (pc[i] - p1[i]).abs() < 1e-6 * p1[i].abs(),
                "{c}: {pc:?} {p1:?}"
            );
            // The scaled f32 inputs are rounded (relative 6e-8): SSIM moves by ~1e-7.
            assert!((sc[i] - s1[i]).abs() < 1e-6, "{c}: {sc:?} {s1:?}");
        }
    }
    // Values up to 8.4 are not wiped out by a [−1, 1] clamp: robust limits per image.
    let x = Tensor::new(&[[-0.25f32, 2.0, 5.0, 8.4]], &Device::Cpu).unwrap();
    let u = to_unit_robust(&x).unwrap().to_vec2::<f32>().unwrap();
    assert!(
        u[0][0] == 0.0 && u[0][3] == 1.0 && u[0][1] > 0.0 && u[0][2] < 1.0,
        "{u:?}"
    );
}

#[test]
fn metric_shape_errors() {
    let a = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((1, 3, 16, 15), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(psnr(&a, &b, 1.0), Err(Error::Shape { .. })));
    assert!(matches!(ssim(&a, &b, 1.0), Err(Error::Shape { .. })));
    let flat = Tensor::zeros((3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(psnr(&flat, &flat, 1.0), Err(Error::Shape { .. })));
    let tiny = Tensor::zeros((1, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(ssim(&tiny, &tiny, 1.0), Err(Error::Config(_))));
}

/// Coverage of K = 16 exchangeable draws: the truth is a 17th draw of the same law, so each
/// entry is inside [x₍₁₎, x₍₁₆₎] with probability 15/17 exactly. 20,000 independent entries:
/// SE = √(p(1−p)/20000) = 0.0023; tolerance 4 SE. Samples half as wide cover far less.
#[test]
fn coverage_of_calibrated_and_overconfident_samples() {
    use daps::metric::image::{coverage, coverage_rank};
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    assert_eq!(coverage_rank(16, 0.9), (1, 15.0 / 17.0));
    assert_eq!(coverage_rank(100, 0.9).0, 5);
    let (k, n) = (16usize, 20_000usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut draw = |len: usize, sd: f32| -> Vec<f32> {
        (0..len)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut rng);
                sd * z as f32
            })
            .collect()
    };
    let truth = Tensor::from_vec(draw(n, 1.0), (1, n), &Device::Cpu).unwrap();
    let wide = Tensor::from_vec(draw(k * n, 1.0), (k, n), &Device::Cpu).unwrap();
    let narrow = Tensor::from_vec(draw(k * n, 0.5), (k, n), &Device::Cpu).unwrap();
    let (c, nominal) = coverage(&wide, &truth, 0.9).unwrap();
    let se = (nominal * (1.0 - nominal) / n as f64).sqrt();
    assert!((c - nominal).abs() < 4.0 * se, "coverage {c} vs {nominal}");
    let (c, _) = coverage(&narrow, &truth, 0.9).unwrap();
    assert!(c < nominal - 0.2, "over-confident samples cover {c}");
    assert!(coverage(&wide.narrow(0, 0, 1).unwrap(), &truth, 0.9).is_err());
}
