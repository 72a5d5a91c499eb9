//! Timings of the forward operators at DAPS's image size: forward and VJP of the blurs, phase
//! retrieval, super-resolution, inpainting, multi-coil MRI and the nonlinear (bkse) blur.
//! Plain programs, not tests: they print and assert nothing.
//!
//! Run all: `cargo bench --bench operators`; run some: `cargo bench --bench operators -- NAME...`
//! (each NAME selects the timings whose `group/function` name contains it, e.g. `mri`). Names:
//! operators/bench_operators_256, mri/bench_mri_256, nonlinear_blur/bench_forward_and_vjp_256.

use candle_core::{DType, Device};
use daps::operator::blur::Blur;
use daps::operator::fft::PhaseRetrieval;
use daps::operator::inpaint::Inpaint;
use daps::operator::mri::Mri;
use daps::operator::nonlinear_blur::BkseConfig;
use daps::operator::resize::{AvgPool, SuperResolution};
use daps::operator::Operator;
use std::time::Instant;

#[path = "../tests/common/mod.rs"]
mod common;
use common::{load, randn, randn64, randn_as, random_operator};

fn main() {
    let timings: &[(&str, fn())] = &[
        ("operators/bench_operators_256", bench_operators_256),
        ("mri/bench_mri_256", bench_mri_256),
        (
            "nonlinear_blur/bench_forward_and_vjp_256",
            bench_forward_and_vjp_256,
        ),
    ];
    common::run_timings(timings);
}

/// Forward + VJP timings at 1×3×256×256 (blurs 61×61, PR oversample 2).
fn bench_operators_256() {
    let dev = Device::Cpu;
    let x = randn(&[1, 3, 256, 256], 1).affine(0.3, 0.0).unwrap();
    let ops: Vec<Box<dyn Operator>> = vec![
        Box::new(Blur::gaussian(61, 3.0).unwrap()),
        Box::new(Blur::motion(61, 0.5, 42).unwrap()),
        Box::new(Blur::from_kernel(&load("operators/motion_blur.safetensors")["kernel"]).unwrap()),
        Box::new(PhaseRetrieval { oversample: 2.0 }),
        Box::new(SuperResolution::new(4, 256, 256, &dev).unwrap()),
        Box::new(AvgPool { factor: 4 }),
        Box::new(Inpaint::boxed(256, 256, 42, &dev).unwrap()),
    ];
    for op in &ops {
        let y = op.forward(&x).unwrap();
        let v = randn(y.dims(), 2);
        op.vjp(&x, &v).unwrap();
        let (mut fwd, mut bwd) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..50 {
            let t = Instant::now();
            op.forward(&x).unwrap();
            fwd = fwd.min(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            op.vjp(&x, &v).unwrap();
            bwd = bwd.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("{:<50} forward {fwd:7.2} ms   vjp {bwd:7.2} ms", op.name());
    }
}

/// Forward + VJP time at 2×2×256×256 with 8 coils, ×4.
fn bench_mri_256() {
    let op = Mri::simulated(8, 256, 256, 4.0, 0).unwrap();
    for dt in [DType::F32, DType::F64] {
        let x = randn64(&[2, 2, 256, 256], 1).to_dtype(dt).unwrap();
        let v = randn64(&[2, 8, 256, 256, 2], 2).to_dtype(dt).unwrap();
        op.vjp(&x, &v).unwrap();
        let (mut fwd, mut bwd) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..20 {
            let t = Instant::now();
            op.forward(&x).unwrap();
            fwd = fwd.min(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            op.vjp(&x, &v).unwrap();
            bwd = bwd.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "{} {dt:?}: forward {fwd:.2} ms, vjp {bwd:.2} ms, total {:.2} ms",
            op.name(),
            fwd + bwd
        );
    }
}

/// Forward and forward+VJP at DAPS's size (3×256×256, batch 1) with random GOPRO-shaped
/// weights.
fn bench_forward_and_vjp_256() {
    let op = random_operator(&BkseConfig::gopro(), 1, DType::F32);
    let x = (randn_as(&[1, 3, 256, 256], 50, DType::F32) * 0.5).unwrap();
    let v = randn_as(&[1, 3, 256, 256], 51, DType::F32);
    let _ = op.forward(&x).unwrap();
    let mut fwd = f64::INFINITY;
    let mut both = f64::INFINITY;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let _ = op.forward(&x).unwrap();
        fwd = fwd.min(t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        let g = op.vjp(&x, &v).unwrap();
        both = both.min(t.elapsed().as_secs_f64());
        assert_eq!(g.dims(), x.dims());
    }
    println!(
        "nonlinear blur 1×3×256×256 ({} threads): forward {fwd:.3} s, forward+VJP {both:.3} s",
        rayon::current_num_threads()
    );
}
