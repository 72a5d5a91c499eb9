//! LPIPS with stored random VGG16 weights against an independent plain-loop implementation.
//!
//! The weights file (seeded He-initialised convolutions, |N(0, 1)|/10 heads; torchvision and
//! `lpips` tensor names) is written once per run under CARGO_TARGET_TMPDIR. The reference does
//! everything in f64 with explicit loops; candle runs in f32, so values agree to 1e-4 relative.

use candle_core::{Device, Tensor};
use daps::metric::lpips::{Lpips, WEIGHTS_FLAG};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

mod common;
use common::{randn, vec64};

const CONVS: [(usize, usize, usize); 13] = [
    // (torchvision index, in, out)
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
];
/// The last convolution of each block (the LPIPS taps).
const TAPS: [usize; 5] = [2, 7, 14, 21, 28];
const HEADS: [usize; 5] = [64, 128, 256, 512, 512];

fn uniform(shape: &[usize], seed: u64) -> Tensor {
    // Gaussian noise squashed into (0, 1).
    let z = randn(shape, seed);
    (z.tanh().unwrap() * 0.5).unwrap().affine(1.0, 0.5).unwrap()
}

/// Random weights with the lpips package's head names.
fn random_weights() -> HashMap<String, Tensor> {
    let mut t = HashMap::new();
    for (k, &(i, cin, cout)) in CONVS.iter().enumerate() {
        let std = (2.0 / (9.0 * cin as f64)).sqrt();
        let w = (randn(&[cout, cin, 3, 3], 100 + k as u64) * std).unwrap();
        let b = (randn(&[cout], 200 + k as u64) * 0.1).unwrap();
        t.insert(format!("features.{i}.weight"), w);
        t.insert(format!("features.{i}.bias"), b);
    }
    for (k, &c) in HEADS.iter().enumerate() {
        let h = (randn(&[1, c, 1, 1], 300 + k as u64).abs().unwrap() * 0.1).unwrap();
        t.insert(format!("lin{k}.model.1.weight"), h);
    }
    t
}

/// The weights file, written once per test run.
fn weights_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lpips_random_vgg16.safetensors");
        candle_core::safetensors::save(&random_weights(), &p).unwrap();
        p
    })
}

fn model() -> &'static Lpips {
    static MODEL: OnceLock<Lpips> = OnceLock::new();
    MODEL.get_or_init(|| Lpips::load(weights_file(), &Device::Cpu).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Independent reference: plain loops in f64.

struct Map {
    c: usize,
    h: usize,
    w: usize,
    v: Vec<f64>,
}

fn conv3_relu(x: &Map, w: &[f64], b: &[f64], cout: usize) -> Map {
    let (cin, h, wd) = (x.c, x.h, x.w);
    let mut y = vec![0.0; cout * h * wd];
    for o in 0..cout {
        let yo = &mut y[o * h * wd..(o + 1) * h * wd];
        yo.fill(b[o]);
        for i in 0..cin {
            let xi = &x.v[i * h * wd..(i + 1) * h * wd];
            for ky in 0..3 {
                for kx in 0..3 {
                    let k = w[((o * cin + i) * 3 + ky) * 3 + kx];
                    for r in 0..h {
                        let rr = r as isize + ky as isize - 1;
                        if rr < 0 || rr >= h as isize {
                            continue;
                        }
                        for c in 0..wd {
                            let cc = c as isize + kx as isize - 1;
                            if cc >= 0 && cc < wd as isize {
                                yo[r * wd + c] += k * xi[rr as usize * wd + cc as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    for v in &mut y {
        *v = v.max(0.0);
    }
    Map {
        c: cout,
        h,
        w: wd,
        v: y,
    }
}

fn avg_pool2(x: &Map) -> Map {
    let (h, w) = (x.h / 2, x.w / 2);
    let mut v = vec![0.0; x.c * h * w];
    for c in 0..x.c {
        for r in 0..h {
            for j in 0..w {
                let at = |dr: usize, dj: usize| x.v[(c * x.h + 2 * r + dr) * x.w + 2 * j + dj];
                v[(c * h + r) * w + j] = (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0;
            }
        }
    }
    Map { c: x.c, h, w, v }
}

fn unit_normalise(x: &Map) -> Map {
    let n = x.h * x.w;
    let mut v = x.v.clone();
    for p in 0..n {
        let norm = (0..x.c).map(|c| x.v[c * n + p].powi(2)).sum::<f64>().sqrt();
        for c in 0..x.c {
            v[c * n + p] = x.v[c * n + p] / (norm + 1e-10);
        }
    }
    Map { v, ..*x }
}

fn reference_features(t: &HashMap<String, Tensor>, img: &[f64], h: usize, w: usize) -> Vec<Map> {
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let n = h * w;
    let v = (0..3 * n)
        .map(|i| (img[i] - mean[i / n]) / std[i / n])
        .collect();
    let mut x = Map { c: 3, h, w, v };
    let mut taps = Vec::new();
    for &(i, _, cout) in &CONVS {
        if [5, 10, 17, 24].contains(&i) {
            x = avg_pool2(&x);
        }
        let wt = vec64(&t[&format!("features.{i}.weight")]);
        let b = vec64(&t[&format!("features.{i}.bias")]);
        x = conv3_relu(&x, &wt, &b, cout);
        if TAPS.contains(&i) {
            taps.push(unit_normalise(&x));
        }
    }
    taps
}

fn reference_lpips(t: &HashMap<String, Tensor>, fa: &[Map], fb: &[Map]) -> f64 {
    let mut total = 0.0;
    for (k, (fa, fb)) in fa.iter().zip(fb).enumerate() {
        let head = vec64(&t[&format!("lin{k}.model.1.weight")]);
        let n = fa.h * fa.w;
        let mut s = 0.0;
        for c in 0..fa.c {
            for p in 0..n {
                s += head[c] * (fa.v[c * n + p] - fb.v[c * n + p]).powi(2);
            }
        }
        total += s / n as f64;
    }
    total
}

// ---------------------------------------------------------------------------------------------

#[test]
fn matches_independent_implementation() {
    let (h, w) = (32, 32);
    let a = uniform(&[2, 3, h, w], 1);
    let b = uniform(&[2, 3, h, w], 2);
    // A second pair close to each other (a small distance).
    let near = (&a + (randn(&[2, 3, h, w], 3) * 0.02).unwrap())
        .unwrap()
        .clamp(0.0, 1.0)
        .unwrap();
    let got_far = model().distance(&a, &b).unwrap();
    let got_near = model().distance(&a, &near).unwrap();
    let t = candle_core::safetensors::load(weights_file(), &Device::Cpu).unwrap();
    let (va, vb, vn) = (vec64(&a), vec64(&b), vec64(&near));
    let per = 3 * h * w;
    for i in 0..2 {
        let features = |v: &[f64]| reference_features(&t, &v[i * per..(i + 1) * per], h, w);
        let fa = features(&va);
        for (got, other) in [(got_far[i], &vb), (got_near[i], &vn)] {
            let want = reference_lpips(&t, &fa, &features(other));
            let rel = (got - want).abs() / want;
            println!("image {i}: LPIPS {got:.6} vs reference {want:.6} (rel {rel:.1e})");
            assert!(
                want > 0.0 && rel < 1e-4,
                "image {i}: {got} vs reference {want} (rel {rel:.2e})"
            );
        }
    }
    assert!(got_near[0] < got_far[0] && got_near[1] < got_far[1]);
}

#[test]
fn identity_symmetry_and_batches() {
    let m = model();
    let a = uniform(&[3, 3, 32, 40], 4);
    let b = uniform(&[3, 3, 32, 40], 5);
    assert_eq!(m.distance(&a, &a).unwrap(), vec![0.0; 3]);
    let ab = m.distance(&a, &b).unwrap();
    assert_eq!(ab, m.distance(&b, &a).unwrap());
    // Each image of the batch alone, and a single reference shared by the batch.
    for i in 0..3 {
        let one = m
            .distance(&a.narrow(0, i, 1).unwrap(), &b.narrow(0, i, 1).unwrap())
            .unwrap()[0];
        assert!((one - ab[i]).abs() <= 1e-6 * ab[i], "{one} vs {}", ab[i]);
    }
    let b0 = b.narrow(0, 0, 1).unwrap();
    let shared = m.distance(&a, &b0).unwrap();
    assert!((shared[0] - ab[0]).abs() <= 1e-6 * ab[0]);
    assert!(shared.iter().all(|v| *v > 0.0));
    // Grayscale broadcasts against the RGB statistics, as a gray RGB image.
    let g = a.narrow(1, 0, 1).unwrap();
    let g3 = Tensor::cat(&[&g, &g, &g], 1).unwrap();
    let gray = m.distance(&g, &b0.narrow(1, 0, 1).unwrap()).unwrap();
    let b03 = Tensor::cat(&[&b0.narrow(1, 0, 1).unwrap(); 3], 1).unwrap();
    let rgb = m.distance(&g3, &b03).unwrap();
    for (x, y) in gray.iter().zip(&rgb) {
        assert!((x - y).abs() <= 1e-6 * y);
    }
}

#[test]
fn weight_names_and_errors() {
    let t = candle_core::safetensors::load(weights_file(), &Device::Cpu).unwrap();
    let a = uniform(&[1, 3, 16, 16], 6);
    let b = uniform(&[1, 3, 16, 16], 7);
    let base = model().distance(&a, &b).unwrap()[0];

    // lpips-module names (net.sliceK.i) and piq-style vector heads give the same network.
    let mut alt = HashMap::new();
    for (name, v) in &t {
        let name = match name.strip_prefix("features.") {
            Some(rest) => {
                let i: usize = rest.split('.').next().unwrap().parse().unwrap();
                let s = [4, 9, 16, 23, 30].iter().position(|&e| i < e).unwrap() + 1;
                format!("net.slice{s}.{rest}")
            }
            None => name.replace(".model.1", ""),
        };
        let v = if name.starts_with("lin") {
            v.flatten_all().unwrap()
        } else {
            v.clone()
        };
        alt.insert(name, v);
    }
    let alt_model = Lpips::from_tensors(&alt, &Device::Cpu).unwrap();
    assert_eq!(alt_model.distance(&a, &b).unwrap()[0], base);

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let e = Lpips::load(dir.join("no_such_lpips.safetensors"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(WEIGHTS_FLAG) && e.contains("no_such_lpips"),
        "{e}"
    );

    // A missing or mis-shaped tensor is named.
    let mut broken = t.clone();
    broken.remove("features.28.bias");
    let e = Lpips::from_tensors(&broken, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("'features.28.bias'"), "{e}");
    let mut broken = t.clone();
    broken.insert("lin3.model.1.weight".into(), randn(&[1, 256, 1, 1], 0));
    let e = Lpips::from_tensors(&broken, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("'lin3.model.1.weight'") && e.contains("[1, 512, 1, 1]"),
        "{e}"
    );
    let mut broken = t.clone();
    broken.insert("features.5.weight".into(), randn(&[128, 32, 3, 3], 0));
    let e = Lpips::from_tensors(&broken, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("'features.5.weight'") && e.contains("[128, 64, 3, 3]"),
        "{e}"
    );
    let mut broken = t.clone();
    broken.insert("lin0.model.1.weight".into(), randn(&[1, 64, 1, 1], 0));
    let e = Lpips::from_tensors(&broken, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("non-negative"), "{e}");

    // Inputs the network cannot take.
    let m = model();
    let small = uniform(&[1, 3, 15, 32], 0);
    let e = m.distance(&small, &small).unwrap_err().to_string();
    assert!(e.contains("at least 16×16"), "{e}");
    let four = uniform(&[1, 4, 16, 16], 0);
    let e = m.distance(&four, &four).unwrap_err().to_string();
    assert!(e.contains("4 channels"), "{e}");
    let e = m
        .distance(&uniform(&[2, 3, 16, 16], 0), &uniform(&[3, 3, 16, 16], 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("second input"), "{e}");
}
