//! The nonlinear blur operator (bkse KernelWizard.adaptKernel, DAPS `nonlinear_blur`).
//!
//! Fixtures (tests/fixtures/bkse_params.txt, tests/fixtures/bkse/) were written by PyTorch from
//! the bkse Python source: the GOPRO configuration's parameter listing, and a tiny KernelWizard
//! (nf 4, front_RBs 1, back_RBs 2, kernel_dim 32) with random weights saved as a nested
//! `{"state_dict": {"module.…": …}}` checkpoint (kernel-extractor tensors zeroed), together with
//! a 1×3×128×256 input, the float64 `adaptKernel` output for the numpy seed-0 latent
//! `1.2·randn(1, 32, 1, 2)`, and the float64 autograd VJP of the DAPS operator for a fixed `v`.

use candle_core::{DType, Device, Tensor};
use daps::nn::checkpoint::{num_params, parse_param_list};
use daps::operator::nonlinear_blur::{
    kernel_latent_values, pixel_shuffle2, read_weights, BkseConfig, ConvTranspose4x4,
    NonlinearBlur, NumpyRandomState,
};
use daps::operator::Operator;
use daps::task::{MeasurementFile, Task, TaskFiles, TaskSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;
use common::{dot, max_abs_diff, randn_as, random_operator, random_weights, tmp_dir};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn tiny_config() -> BkseConfig {
    BkseConfig {
        input_nc: 3,
        nf: 4,
        front_rbs: 1,
        back_rbs: 2,
        kernel_dim: 32,
    }
}

fn tiny_weights() -> PathBuf {
    Path::new(FIXTURES).join("bkse/tiny_weights.pth")
}

/// `x` (f32), `out` (f64), `v` (f32), `vjp` (f64) of the PyTorch reference.
fn tiny_io() -> HashMap<String, Tensor> {
    let p = Path::new(FIXTURES).join("bkse/tiny_io.pth");
    candle_core::pickle::read_all(p)
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs(a: &Tensor) -> f64 {
    a.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn parameter_list_is_the_gopro_kernel_wizard() {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("bkse_params.txt")).unwrap();
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let expected = parse_param_list(&body).unwrap();
    let ours = BkseConfig::gopro().param_list().unwrap();
    assert_eq!(ours.len(), 145);
    for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
        assert_eq!(a, b, "parameter {i}");
    }
    assert_eq!(ours, expected);
    assert_eq!(num_params(&ours), 23_662_531);
}

#[test]
fn numpy_legacy_randn_is_reproduced() {
    let mut rng = NumpyRandomState::new(0);
    // np.random.seed(0); np.random.randn(3)
    let known = [1.764052345967664, 0.4001572083672233, 0.9787379841057392];
    for k in known {
        let v = rng.randn();
        assert!((v - k).abs() <= 1e-15 * k.abs(), "{v} vs {k}");
    }
    // np.random.seed(0); k = np.random.randn(1, 512, 2, 2) * 1.2 (numpy 2.4.6):
    // k.ravel()[[0, 1, -2, -1]] and k.sum().
    let k = kernel_latent_values(0, 1.2, 512, 2, 2);
    assert_eq!(k.len(), 2048);
    let expected = [
        (0, 2.1168628151611966),
        (1, 0.4801886500406679),
        (2046, -0.5702101269950982),
        (2047, 1.5275444987038929),
    ];
    for (i, e) in expected {
        assert!(
            (k[i] - e).abs() <= 1e-15 * e.abs(),
            "k[{i}] = {} vs {e}",
            k[i]
        );
    }
    let sum: f64 = k.iter().sum();
    assert!((sum - -36.92637845568878).abs() < 1e-10, "{sum}");
    // Another seed gives other values; the generator's raw output matches MT19937's
    // reference (init_genrand(5489): first output 3499211612).
    assert_ne!(kernel_latent_values(1, 1.2, 1, 1, 1)[0], k[0]);
    assert_eq!(NumpyRandomState::new(5489).next_u32(), 3_499_211_612);
}

#[test]
fn pixel_shuffle_matches_its_definition() {
    let x = Tensor::arange(0f32, 2.0 * 8.0 * 3.0 * 5.0, &Device::Cpu)
        .unwrap()
        .reshape((2, 8, 3, 5))
        .unwrap();
    let y = pixel_shuffle2(&x).unwrap();
    assert_eq!(y.dims(), &[2, 2, 6, 10]);
    let x4: Vec<Vec<Vec<Vec<f32>>>> = (0..2)
        .map(|b| x.get(b).unwrap().to_vec3().unwrap())
        .collect();
    let y4: Vec<Vec<Vec<Vec<f32>>>> = (0..2)
        .map(|b| y.get(b).unwrap().to_vec3().unwrap())
        .collect();
    for b in 0..2 {
        for c in 0..2 {
            for h in 0..3 {
                for w in 0..5 {
                    for i in 0..2 {
                        for j in 0..2 {
                            assert_eq!(
                                y4[b][c][2 * h + i][2 * w + j],
                                x4[b][4 * c + 2 * i + j][h][w]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn transposed_convolution_matches_candle() {
    for (i, o, h, w, bias) in [(6, 5, 5, 7, true), (3, 4, 2, 2, false), (2, 1, 1, 3, true)] {
        let x = randn_as(&[2, i, h, w], 1, DType::F64);
        let wt = randn_as(&[i, o, 4, 4], 2, DType::F64);
        let b = randn_as(&[o], 3, DType::F64);
        let ours = ConvTranspose4x4::new(&wt, bias.then_some(&b))
            .unwrap()
            .forward(&x)
            .unwrap();
        let mut reference = x.conv_transpose2d(&wt, 1, 0, 2, 1).unwrap();
        if bias {
            reference = reference
                .broadcast_add(&b.reshape((1, o, 1, 1)).unwrap())
                .unwrap();
        }
        assert_eq!(ours.dims(), &[2, o, 2 * h, 2 * w]);
        let err = max_abs_diff(&ours, &reference);
        assert!(err < 1e-12, "{i}→{o} on {h}×{w}: {err}");
    }
}

#[test]
fn matches_pytorch_reference_in_f64() {
    let io = tiny_io();
    let op =
        NonlinearBlur::load_with(tiny_weights(), &tiny_config(), DType::F64, &Device::Cpu).unwrap();
    let x = io["x"].to_dtype(DType::F64).unwrap();
    assert_eq!(x.dims(), &[1, 3, 128, 256]);
    // The network itself, against PyTorch's adaptKernel (latent numpy seed 0, [1, 32, 1, 2]).
    let latent = op.latent(128, 256).unwrap();
    assert_eq!(latent.dims(), &[1, 32, 1, 2]);
    let x01 = ((&x + 1.0).unwrap() * 0.5).unwrap();
    let out = op.network().adapt_kernel(&x01, &latent).unwrap();
    let err = max_abs_diff(&out, &io["out"]);
    assert!(err < 1e-10, "adaptKernel differs from PyTorch by {err}");
    // The operator: clamp(2·out − 1, −1, 1).
    let y = op.forward(&x).unwrap();
    let y_ref = ((&io["out"] * 2.0).unwrap() - 1.0)
        .unwrap()
        .clamp(-1.0, 1.0)
        .unwrap();
    assert!(max_abs_diff(&y, &y_ref) < 1e-10);
    // The VJP, against PyTorch autograd.
    let v = io["v"].to_dtype(DType::F64).unwrap();
    let g = op.vjp(&x, &v).unwrap();
    let rel = max_abs_diff(&g, &io["vjp"]) / max_abs(&io["vjp"]);
    assert!(rel < 1e-9, "VJP differs from PyTorch's by {rel} (relative)");
}

#[test]
fn matches_pytorch_reference_in_f32_from_safetensors() {
    // Convert the nested .pth to a .safetensors with another prefix ("model."), as a user might.
    let dir = tmp_dir("nlblur", "f32");
    let st = dir.join("tiny.safetensors");
    let tensors: HashMap<String, Tensor> = read_weights(tiny_weights())
        .unwrap()
        .into_iter()
        .map(|(k, v)| (format!("model.{k}"), v))
        .collect();
    candle_core::safetensors::save(&tensors, &st).unwrap();
    let op = NonlinearBlur::load_with(&st, &tiny_config(), DType::F32, &Device::Cpu).unwrap();
    let io = tiny_io();
    let y = op.forward(&io["x"]).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    let y_ref = ((&io["out"] * 2.0).unwrap() - 1.0)
        .unwrap()
        .clamp(-1.0, 1.0)
        .unwrap();
    let err = max_abs_diff(&y, &y_ref);
    assert!(err < 1e-4, "f32 forward differs by {err}");
    let g = op.vjp(&io["x"], &io["v"]).unwrap();
    let rel = max_abs_diff(&g, &io["vjp"]) / max_abs(&io["vjp"]);
    assert!(rel < 1e-3, "f32 VJP differs by {rel} (relative)");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn output_shape_and_range() {
    let op =
        NonlinearBlur::load_with(tiny_weights(), &tiny_config(), DType::F32, &Device::Cpu).unwrap();
    // Large inputs drive the output into the clamp; batch of 2, 128×128.
    let x = (randn_as(&[2, 3, 128, 128], 5, DType::F32) * 3.0).unwrap();
    let y = op.forward(&x).unwrap();
    assert_eq!(y.dims(), &[2, 3, 128, 128]);
    let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|t| t.is_finite() && (-1.0..=1.0).contains(t)));
    assert!(v.iter().any(|t| t.abs() == 1.0), "some outputs clamp");
    assert!(v.iter().any(|t| t.abs() < 1.0));
    // The batch items are independent (same latent for each).
    let y1 = op.forward(&x.narrow(0, 1, 1).unwrap()).unwrap();
    assert!(max_abs_diff(&y1, &y.narrow(0, 1, 1).unwrap()) < 1e-5);
    // Sizes that are not multiples of 128, or other channel counts, are refused.
    for shape in [[1, 3, 96, 128], [1, 1, 128, 128]] {
        let e = op
            .forward(&Tensor::zeros(&shape[..], DType::F32, &Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiples of 128") && e.contains("3×H×W"), "{e}");
    }
}

#[test]
fn vjp_matches_finite_differences() {
    let op = random_operator(&tiny_config(), 11, DType::F64);
    let x = (randn_as(&[1, 3, 128, 128], 20, DType::F64) * 0.5).unwrap();
    let v = randn_as(&[1, 3, 128, 128], 21, DType::F64);
    let g = op.vjp(&x, &v).unwrap();
    let eps = 1e-6;
    for k in 0..3 {
        let d = randn_as(&[1, 3, 128, 128], 30 + k, DType::F64);
        let f = |s: f64| dot(&op.forward(&(&x + (&d * s).unwrap()).unwrap()).unwrap(), &v);
        let fd = (f(eps) - f(-eps)) / (2.0 * eps);
        let an = dot(&g, &d);
        assert!(
            (fd - an).abs() <= 1e-6 * an.abs().max(1.0),
            "direction {k}: finite difference {fd} vs VJP {an}"
        );
    }
}

#[test]
fn loading_errors_name_the_problem() {
    let dir = tmp_dir("nlblur", "errors");
    // Missing file: where to get it and which flag to pass.
    let e = NonlinearBlur::load(dir.join("GOPRO_wVAE.pth"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("not found") && e.contains("GOPRO_wVAE.pth") && e.contains("--blur-weights"),
        "{e}"
    );
    assert!(e.contains("blur-kernel-space-exploring"), "{e}");
    // Unsupported extension.
    let npz = dir.join("weights.npz");
    std::fs::write(&npz, b"not weights").unwrap();
    let e = NonlinearBlur::load(&npz, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("unknown extension") && e.contains(".safetensors"),
        "{e}"
    );
    // A tensor of the wrong shape: named, with both shapes.
    let mut w = read_weights(tiny_weights()).unwrap();
    w.insert(
        "recon_trunk.5.weight".into(),
        Tensor::zeros((256, 5, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let bad = dir.join("bad_shape.safetensors");
    candle_core::safetensors::save(&w, &bad).unwrap();
    let e = NonlinearBlur::load_with(&bad, &tiny_config(), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("recon_trunk.5.weight")
            && e.contains("[256, 4, 3, 3]")
            && e.contains("[256, 5, 3, 3]"),
        "{e}"
    );
    // A missing tensor: named.
    let mut w = read_weights(tiny_weights()).unwrap();
    w.remove("adapter.model.submodule.submodule.up.1.weight");
    let missing = dir.join("missing.safetensors");
    candle_core::safetensors::save(&w, &missing).unwrap();
    let e = NonlinearBlur::load_with(&missing, &tiny_config(), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("missing tensor") && e.contains("adapter.model.submodule.submodule.up.1.weight"),
        "{e}"
    );
    // The tiny weights are not the GOPRO network: the first mismatch is named.
    let e = NonlinearBlur::load(tiny_weights(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("feature_extractor.0.weight")
            && e.contains("[64, 3, 3, 3]")
            && e.contains("[4, 3, 3, 3]"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn task_needs_weights_and_records_their_path() {
    // Without weights: the flag is named.
    let e = TaskSpec::defaults("nonlinear-blur", 256, 256, &TaskFiles::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--blur-weights"), "{e}");
    let e = TaskSpec::defaults(
        "hdr",
        256,
        256,
        &TaskFiles {
            weights: Some("w.pth".into()),
            ..TaskFiles::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--blur-weights only applies to nonlinear-blur"),
        "{e}"
    );
    let info = daps::task::info("nonlinear-blur").unwrap();
    assert!(!info.linear);
    assert_eq!(info.official, "nonlinear_blur");
    // A measure → load round trip with random GOPRO-shaped weights at 3×128×128.
    let dir = tmp_dir("nlblur", "task");
    let wpath = dir.join("random_gopro.safetensors");
    candle_core::safetensors::save(&random_weights(&BkseConfig::gopro(), 3), &wpath).unwrap();
    let files = TaskFiles {
        weights: Some(wpath.clone()),
        ..TaskFiles::default()
    };
    let spec = TaskSpec::defaults("nonlinear-blur", 128, 128, &files).unwrap();
    let mut params = spec.params();
    params.sort();
    assert_eq!(
        params,
        vec![
            ("scale".to_string(), "1.2".to_string()),
            ("seed".to_string(), "0".to_string()),
            ("weights".to_string(), wpath.display().to_string()),
        ]
    );
    let e = Task::build(spec.clone(), [3, 100, 100])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("multiples of 128"), "{e}");
    let task = Task::build(spec, [3, 128, 128]).unwrap();
    assert!(!task.is_linear() && task.explicit().is_err());
    assert_eq!(task.output_shape(), &[3, 128, 128]);
    let x = (randn_as(&[1, 3, 128, 128], 40, DType::F32) * 0.5).unwrap();
    let mf = MeasurementFile::simulate(task, &x, 0.05, 1).unwrap();
    let mpath = dir.join("m.safetensors");
    mf.save(&mpath).unwrap();
    let back = MeasurementFile::load(&mpath).unwrap();
    assert_eq!(back.task.spec(), mf.task.spec());
    assert!(max_abs_diff(&back.y, &mf.y) == 0.0);
    let r = back.measurement().residual(&back.task, &x).unwrap();
    let rms = (dot(&r, &r) / r.elem_count() as f64).sqrt();
    assert!((rms - 0.05).abs() < 0.005, "residual rms {rms}");
    // The weights moved: the recorded path fails with the flag named, the override works.
    let moved = dir.join("moved.safetensors");
    std::fs::rename(&wpath, &moved).unwrap();
    let e = MeasurementFile::load(&mpath).err().unwrap().to_string();
    assert!(
        e.contains("not found") && e.contains("--blur-weights"),
        "{e}"
    );
    let files = TaskFiles {
        weights: Some(moved.clone()),
        ..TaskFiles::default()
    };
    let again = MeasurementFile::load_with(&mpath, &files).unwrap();
    assert!(
        max_abs_diff(
            &again.task.forward(&x).unwrap(),
            &back.task.forward(&x).unwrap()
        ) == 0.0
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Its fused `residual_vjp` (one network pass with the graph kept) gives what `forward`, the
/// residual and `vjp` give, bit for bit.
#[test]
fn residual_vjp_equals_vjp_of_the_residual() {
    let op = random_operator(&tiny_config(), 11, DType::F32);
    let x = (randn_as(&[2, 3, 128, 128], 40, DType::F32) * 0.5).unwrap();
    let y = randn_as(&[1, 3, 128, 128], 41, DType::F32);
    let r = op.forward(&x).unwrap().broadcast_sub(&y).unwrap();
    let want = op.vjp(&x, &r).unwrap();
    let got = op.residual_vjp(&x, &y).unwrap();
    assert_eq!(max_abs_diff(&got, &want), 0.0);
}
