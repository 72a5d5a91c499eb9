//! Multi-coil CS-MRI operator: birdcage maps, Cartesian masks, forward against fft2c, adjoint,
//! finite differences, AᴴA = I with a full mask.
//!
//! Tolerances: the operator is linear and evaluated in f64, so identities hold to 1e-12
//! (relative); f32 agrees with f64 to 1e-5.

use candle_core::{DType, Device, Tensor, Var, D};
use daps::operator::fft::{complex, complex_parts, fft2c};
use daps::operator::mri::{
    birdcage_maps, cartesian_mask, column_mask, default_center_fraction, read_maps, Mri,
    BIRDCAGE_RADIUS,
};
use daps::operator::Operator;
use std::collections::HashMap;

mod common;
use common::{dot, randn64, rel_diff, vec64};

/// 8 coils on a non-square 24×20 grid, ×4.
fn small_op() -> Mri {
    Mri::simulated(8, 24, 20, 4.0, 3).unwrap()
}

#[test]
fn birdcage_maps_follow_sigpy_and_are_normalised() {
    let (nc, h, w) = (8, 24, 20);
    let maps = birdcage_maps(nc, h, w).unwrap();
    assert_eq!(maps.dims(), &[nc, h, w, 2]);
    let v = vec64(&maps);
    let at = |c: usize, y: usize, x: usize| {
        let i = 2 * ((c * h + y) * w + x);
        (v[i], v[i + 1])
    };
    for y in 0..h {
        for x in 0..w {
            let ss: f64 = (0..nc)
                .map(|c| {
                    let (re, im) = at(c, y, x);
                    re * re + im * im
                })
                .sum();
            assert!((ss - 1.0).abs() < 1e-12, "Σ|S|² = {ss} at ({y}, {x})");
        }
    }
    // sigpy's formula, written out at a few pixels (before the RSS normalisation).
    let raw = |c: usize, y: usize, x: usize| {
        let a = 2.0 * std::f64::consts::PI * c as f64 / nc as f64;
        let xc = (x as f64 - w as f64 / 2.0) / (w as f64 / 2.0) - BIRDCAGE_RADIUS * a.cos();
        let yc = (y as f64 - h as f64 / 2.0) / (h as f64 / 2.0) - BIRDCAGE_RADIUS * a.sin();
        let r = (xc * xc + yc * yc).sqrt();
        let phi = xc.atan2(-yc) - a;
        (phi.cos() / r, phi.sin() / r)
    };
    for (y, x) in [(0, 0), (5, 17), (23, 19), (12, 10)] {
        let rss: f64 = (0..nc)
            .map(|c| {
                let (a, b) = raw(c, y, x);
                a * a + b * b
            })
            .sum::<f64>()
            .sqrt();
        for c in 0..nc {
            let (a, b) = raw(c, y, x);
            let (re, im) = at(c, y, x);
            assert!((re - a / rss).abs() < 1e-12 && (im - b / rss).abs() < 1e-12);
        }
    }
    // Coil 0 sits at +x: it is stronger at the right edge than at the left.
    let mag = |c, y, x| {
        let (re, im) = at(c, y, x);
        (re * re + im * im).sqrt()
    };
    assert!(mag(0, h / 2, w - 1) > 2.0 * mag(0, h / 2, 0));
    assert!(birdcage_maps(0, 4, 4).is_err());
}

#[test]
fn cartesian_mask_statistics() {
    assert_eq!(default_center_fraction(4.0), 0.08);
    assert_eq!(default_center_fraction(8.0), 0.04);
    for (w, r) in [
        (256, 4.0),
        (256, 8.0),
        (320, 4.0),
        (368, 8.0),
        (100, 4.0),
        (33, 8.0),
    ] {
        let cf = default_center_fraction(r);
        let low = (w as f64 * cf).round() as usize;
        let total = ((w as f64 / r).round() as usize).max(low);
        let pad = (w - low + 1) / 2;
        let mut hits = vec![0usize; w];
        let seeds = 400;
        for seed in 0..seeds {
            let m = column_mask(w, r, cf, seed).unwrap();
            assert_eq!(m.iter().filter(|&&s| s).count(), total, "w {w}, ×{r}");
            assert!(m[pad..pad + low].iter().all(|&s| s), "centre, w {w}");
            assert!(m[w / 2], "DC column, w {w}");
            for (h, s) in hits.iter_mut().zip(&m) {
                *h += *s as usize;
            }
        }
        // The other columns are drawn uniformly: each with probability p.
        let p = (total - low) as f64 / (w - low) as f64;
        let sd = (seeds as f64 * p * (1.0 - p)).sqrt();
        for (j, &h) in hits.iter().enumerate() {
            if (pad..pad + low).contains(&j) {
                assert_eq!(h, seeds as usize);
            } else {
                let z = (h as f64 - seeds as f64 * p) / sd;
                assert!(z.abs() < 5.0, "column {j} of {w}: {h} hits, z {z:.1}");
            }
        }
    }
    // fastMRI sizes: 20 centre + 44 random lines at ×4, 10 + 22 at ×8 for 256 columns.
    let op = Mri::simulated(2, 64, 256, 4.0, 0).unwrap();
    assert_eq!(op.acceleration(), 4.0);
    let op = Mri::simulated(2, 64, 256, 8.0, 0).unwrap();
    assert_eq!(op.acceleration(), 8.0);
    // Whole columns, the same in every row; seeds differ.
    let m = vec64(&cartesian_mask(16, 256, 4.0, 0.08, 1).unwrap());
    assert!(m.chunks(256).all(|row| row == &m[..256]));
    let other = vec64(&cartesian_mask(16, 256, 4.0, 0.08, 2).unwrap());
    assert_ne!(m, other);
    assert!(column_mask(16, 0.5, 0.08, 0).is_err());
    assert!(column_mask(16, 4.0, 1.5, 0).is_err());
}

/// M ⊙ fft2c(S_c ⊙ x) built from tensor ops and the tested fft2c.
fn composed(op: &Mri, x: &Tensor) -> Tensor {
    let maps = op.maps().unwrap().unsqueeze(0).unwrap(); // [1, C, H, W, 2]
    let (xr, xi) = (x.narrow(1, 0, 1).unwrap(), x.narrow(1, 1, 1).unwrap()); // [B, 1, H, W]
    let (sr, si) = complex_parts(&maps).unwrap(); // [1, C, H, W]
    let re = (sr.broadcast_mul(&xr).unwrap() - si.broadcast_mul(&xi).unwrap()).unwrap();
    let im = (sr.broadcast_mul(&xi).unwrap() + si.broadcast_mul(&xr).unwrap()).unwrap();
    let z = complex(&re, &im).unwrap();
    let k = fft2c(&z).unwrap();
    let m = op
        .mask()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .unsqueeze(D::Minus1)
        .unwrap();
    k.broadcast_mul(&m).unwrap()
}

#[test]
fn forward_matches_composed_fft() {
    let op = small_op();
    let x = randn64(&[3, 2, 24, 20], 1);
    let y = op.forward(&x).unwrap();
    assert_eq!(y.dims(), &[3, 8, 24, 20, 2]);
    let e = rel_diff(&y, &composed(&op, &x));
    assert!(e < 1e-12, "forward vs composed: {e}");
    // Unsampled k-space is exactly zero.
    let m = vec64(&op.mask().unwrap());
    let v = vec64(&y);
    for (i, z) in v.chunks(2).enumerate() {
        if m[i % m.len()] == 0.0 {
            assert_eq!(z, [0.0, 0.0]);
        }
    }
    // f32 agrees with f64; a single image equals its row of the batch.
    let y32 = op.forward(&x.to_dtype(DType::F32).unwrap()).unwrap();
    assert_eq!(y32.dtype(), DType::F32);
    let e = rel_diff(&y32, &y);
    assert!(e < 1e-5, "f32 vs f64: {e}");
    let y1 = op.forward(&x.narrow(0, 1, 1).unwrap()).unwrap();
    assert_eq!(rel_diff(&y1, &y.narrow(0, 1, 1).unwrap()), 0.0);
}

#[test]
fn adjoint_identity() {
    let op = small_op();
    for b in [1, 3] {
        let x = randn64(&[b, 2, 24, 20], 2);
        let v = randn64(&[b, 8, 24, 20, 2], 3);
        let lhs = dot(&op.forward(&x).unwrap(), &v);
        for g in [op.vjp(&x, &v).unwrap(), op.adjoint(&v).unwrap()] {
            assert_eq!(g.dims(), x.dims());
            let rhs = dot(&x, &g);
            assert!(
                (lhs - rhs).abs() < 1e-12 * lhs.abs().max(1.0),
                "⟨Ax, v⟩ {lhs} vs ⟨x, Aᴴv⟩ {rhs}"
            );
        }
    }
}

#[test]
fn vjp_finite_differences_and_autograd() {
    let op = small_op();
    let x = randn64(&[2, 2, 24, 20], 4);
    let v = randn64(&[2, 8, 24, 20, 2], 5);
    let d = randn64(&[2, 2, 24, 20], 6);
    let eps = 1e-3;
    let plus = op.forward(&(&x + (&d * eps).unwrap()).unwrap()).unwrap();
    let minus = op.forward(&(&x - (&d * eps).unwrap()).unwrap()).unwrap();
    let fd = dot(&v, &((plus - minus).unwrap() / (2.0 * eps)).unwrap());
    let g = op.vjp(&x, &v).unwrap();
    let an = dot(&g, &d);
    assert!(
        (fd - an).abs() < 1e-9 * an.abs().max(1.0),
        "fd {fd} vs vjp {an}"
    );

    // Autograd through forward (the custom op's backward) gives the same VJP...
    let xv = Var::from_tensor(&x).unwrap();
    let s = (op.forward(xv.as_tensor()).unwrap() * &v)
        .unwrap()
        .sum_all()
        .unwrap();
    let auto = s.backward().unwrap().get(xv.as_tensor()).unwrap().clone();
    assert!(rel_diff(&auto, &g) < 1e-14);
    // ...and through the adjoint, the forward.
    let vv = Var::from_tensor(&v).unwrap();
    let s = (op.adjoint(vv.as_tensor()).unwrap() * &d)
        .unwrap()
        .sum_all()
        .unwrap();
    let auto = s.backward().unwrap().get(vv.as_tensor()).unwrap().clone();
    assert!(rel_diff(&auto, &op.forward(&d).unwrap()) < 1e-14);
}

#[test]
fn full_mask_with_unit_maps_is_an_isometry() {
    let (h, w) = (16, 12);
    let maps = birdcage_maps(5, h, w).unwrap();
    let full = Tensor::ones((h, w), DType::F32, &Device::Cpu).unwrap();
    let op = Mri::new(&maps, &full).unwrap();
    assert_eq!(op.acceleration(), 1.0);
    let x = randn64(&[2, 2, h, w], 7);
    let y = op.forward(&x).unwrap();
    let back = op.adjoint(&y).unwrap();
    let e = rel_diff(&back, &x);
    assert!(e < 1e-12, "AᴴA x vs x: {e}");
    let (nx, ny) = (dot(&x, &x), dot(&y, &y));
    assert!((nx - ny).abs() < 1e-12 * nx, "‖x‖² {nx} vs ‖Ax‖² {ny}");
}

#[test]
fn maps_from_file() {
    let dir = std::env::temp_dir().join(format!("daps-mri-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("maps.safetensors");
    let maps = birdcage_maps(4, 8, 8)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let t = HashMap::from([("maps".to_string(), maps.clone())]);
    candle_core::safetensors::save(&t, &path).unwrap();
    let read = read_maps(&path).unwrap();
    assert_eq!(rel_diff(&read, &maps), 0.0);
    let op = Mri::new(&read, &cartesian_mask(8, 8, 2.0, 0.25, 0).unwrap()).unwrap();
    assert_eq!(op.num_coils(), 4);
    assert_eq!(op.size(), (8, 8));

    let t = HashMap::from([("sens".to_string(), maps)]);
    candle_core::safetensors::save(&t, &path).unwrap();
    let e = read_maps(&path).unwrap_err().to_string();
    assert!(e.contains("'maps'"), "{e}");
    let e = read_maps(dir.join("absent.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shape_and_value_errors() {
    let op = small_op();
    let err = |r: daps::Result<Tensor>| r.unwrap_err().to_string();
    let e = err(op.forward(&randn64(&[1, 3, 24, 20], 0)));
    assert!(
        e.contains("MRI image") && e.contains("[1, 3, 24, 20]"),
        "{e}"
    );
    let e = err(op.forward(&randn64(&[1, 2, 20, 24], 0)));
    assert!(e.contains("MRI image"), "{e}");
    let x = randn64(&[1, 2, 24, 20], 0);
    let e = err(op.vjp(&x, &randn64(&[1, 4, 24, 20, 2], 0)));
    assert!(e.contains("cotangent"), "{e}");
    let e = err(op.adjoint(&randn64(&[1, 8, 24, 20], 0)));
    assert!(e.contains("k-space"), "{e}");

    let maps = birdcage_maps(2, 8, 8).unwrap();
    let mask = cartesian_mask(8, 8, 2.0, 0.25, 0).unwrap();
    let e = Mri::new(&maps, &cartesian_mask(8, 6, 2.0, 0.25, 0).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("MRI mask"), "{e}");
    let e = Mri::new(&maps, &(&mask * 0.5).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("0 or 1"), "{e}");
    let e = Mri::new(&maps.narrow(3, 0, 1).unwrap(), &mask)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("coil maps"), "{e}");
    let nan = (maps * f64::NAN).unwrap();
    let e = Mri::new(&nan, &mask).err().unwrap().to_string();
    assert!(e.contains("NaN"), "{e}");
}
