//! The offloaded prior (network on another device, sampler on the CPU), checked with the CPU as
//! the "other" device: the same D(x) and the same gradient through D as the prior itself.

use candle_core::{Device, Tensor, Var};
use daps::prior::offload::{host_view, parse_device, Offloaded};
use daps::prior::{default, Denoiser};

mod common;
use common::vec32;

#[test]
fn offloaded_prior_gives_the_same_values_and_gradients() {
    let dev = Device::Cpu;
    let inner = default::digits(&dev).unwrap();
    let off = Offloaded::new(Box::new(default::digits(&dev).unwrap()));
    let x = Tensor::randn(0f32, 1.0, (2, 1, 32, 32), &dev).unwrap();
    let g = Tensor::randn(0f32, 1.0, (2, 1, 32, 32), &dev).unwrap();
    for sigma in [0.3, 2.0] {
        assert_eq!(
            vec32(&off.denoise(&x, sigma).unwrap()),
            vec32(&inner.denoise(&x, sigma).unwrap())
        );
        // gᵀ ∂D/∂x through candle autograd, directly and through the custom op's backward
        let grad = |p: &dyn Denoiser| {
            let xv = Var::from_tensor(&x).unwrap();
            let d = p.denoise(xv.as_tensor(), sigma).unwrap();
            let gr = (d * &g).unwrap().sum_all().unwrap().backward().unwrap();
            vec32(gr.get(xv.as_tensor()).unwrap())
        };
        let (a, b) = (grad(&off), grad(&inner));
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(
            scale > 0.0 && err <= 1e-5 * scale,
            "σ {sigma}: {err} vs {scale}"
        );
    }
    assert_eq!(off.sample_shape(), Some(vec![1, 32, 32]));
    assert!(off.device().is_cpu());
}

#[test]
fn device_argument() {
    assert!(parse_device("cpu").unwrap().is_cpu());
    // a CPU prior is used as it is
    let p = host_view(Box::new(default::digits(&Device::Cpu).unwrap()));
    assert!(!p.name().contains("(on "));
    for bad in ["tpu", "cuda:x", "cuda1"] {
        let e = parse_device(bad).err().unwrap().to_string();
        assert!(e.contains(bad) && e.contains("cpu, cuda or cuda:N"), "{e}");
    }
    if !cfg!(feature = "cuda") {
        let e = parse_device("cuda").err().unwrap().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
