//! guided-diffusion ADM UNet and the VP→EDM denoiser against the PyTorch fixtures.
//! Tolerance: |ours − ref| ≤ 1e-4 + 1e-4·|ref| element-wise for UNet outputs (fixture README);
//! 1e-3 absolute for D at σ = 10.

use candle_core::{DType, Device, Tensor, Var};
use daps::nn::checkpoint;
use daps::prior::adm::{AdmConfig, AdmUnet};
use daps::prior::vp::VpDenoiser;
use daps::prior::Denoiser;
use std::collections::HashMap;
use std::path::PathBuf;

mod common;
use common::{check_close, fixture, vec64};

fn fx(name: &str) -> PathBuf {
    fixture("adm_unet").join(name)
}

fn load(name: &str) -> HashMap<String, Tensor> {
    common::load(&format!("adm_unet/{name}"))
}

fn tiny_cfg() -> AdmConfig {
    AdmConfig::from_json_file(fx("tiny_config.json")).unwrap()
}

fn tiny(ext: &str) -> AdmUnet {
    AdmUnet::load(
        &tiny_cfg(),
        fx(&format!("tiny_weights.{ext}")),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn tiny_config_from_json() {
    let cfg = tiny_cfg();
    assert_eq!(cfg.model_channels, 32);
    assert_eq!(cfg.out_channels, 6);
    assert_eq!(cfg.attention_ds, vec![2, 4]);
    assert_eq!(cfg.channel_mult, vec![1.0, 2.0, 2.0]);
    assert_eq!(cfg.num_head_channels, Some(16));
    assert!(cfg.learn_sigma() && cfg.use_scale_shift_norm && cfg.resblock_updown);
    let params = cfg.param_shapes().unwrap();
    assert_eq!(params.len(), 216);
    assert_eq!(checkpoint::num_params(&params), 1_422_278);
}

fn tiny_io(model: &AdmUnet, what: &str) {
    let io = load("tiny_io.safetensors");
    let out = model.forward(&io["x"], &io["timesteps"]).unwrap();
    check_close(what, &out, &io["eps"], 1e-4, 1e-4);
}

#[test]
fn tiny_forward_from_safetensors() {
    tiny_io(&tiny("safetensors"), "eps (safetensors weights)");
}

#[test]
fn tiny_forward_from_pt() {
    tiny_io(&tiny("pt"), "eps (.pt weights)");
}

#[test]
fn pt_and_safetensors_weights_identical() {
    let a = checkpoint::load_state_dict(fx("tiny_weights.pt")).unwrap();
    let b = checkpoint::load_state_dict(fx("tiny_weights.safetensors")).unwrap();
    assert_eq!(a.len(), 216);
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        assert_eq!(vec64(t), vec64(&b[k]), "{k}");
    }
}

#[test]
fn tiny_intermediates() {
    let model = tiny("safetensors");
    let fix = load("tiny_intermediates.safetensors");
    let mut got: Vec<(String, Tensor)> = Vec::new();
    model
        .forward_traced(&fix["x"], &fix["timesteps"], &mut |n, t| {
            got.push((n.to_string(), t.clone()))
        })
        .unwrap();
    assert_eq!(got.len(), 16);
    for (name, t) in &got {
        check_close(name, t, &fix[name.as_str()], 1e-4, 1e-4);
    }
}

#[test]
fn tiny_denoiser_per_sample_sigma() {
    let den = VpDenoiser::new(tiny("safetensors"));
    let io = load("tiny_denoiser_io.safetensors");
    let sig = vec64(&io["sigma"]);
    let c_noise = vec64(&io["c_noise"]);
    let c_in = vec64(&io["c_in"]);
    for i in 0..2 {
        let s = sig[i] as f32;
        assert!(
            (den.c_noise(s) as f64 - c_noise[i]).abs() <= 1e-4,
            "c_noise {i}"
        );
        assert!((den.c_in(s) as f64 - c_in[i]).abs() <= 1e-7, "c_in {i}");
        let x = io["x"].narrow(0, i, 1).unwrap();
        // raw network output on the preconditioned input
        let t = Tensor::new(&[den.c_noise(s)], &Device::Cpu).unwrap();
        let eps = den
            .net()
            .forward(&x.affine(den.c_in(s) as f64, 0.0).unwrap(), &t)
            .unwrap();
        check_close(
            &format!("eps_full[{i}]"),
            &eps,
            &io["eps_full"].narrow(0, i, 1).unwrap(),
            1e-4,
            1e-4,
        );
        let d = den.denoise(&x, sig[i]).unwrap();
        let atol = if sig[i] > 5.0 { 1e-3 } else { 1e-4 };
        check_close(
            &format!("D[{i}] (σ = {})", sig[i]),
            &d,
            &io["D"].narrow(0, i, 1).unwrap(),
            atol,
            1e-4,
        );
    }
}

#[test]
fn tiny_denoiser_scalar_sigma() {
    let den = VpDenoiser::new(tiny("pt"));
    let io = load("tiny_denoiser_io.safetensors");
    let s = vec64(&io["sigma_scalar"])[0];
    let d = den.denoise(&io["x"], s).unwrap();
    check_close("D_scalar_sigma", &d, &io["D_scalar_sigma"], 1e-4, 1e-4);
    assert_eq!(den.sample_shape(), Some(vec![3, 32, 32]));
}

fn param_list_matches(cfg: &AdmConfig, file: &str, tensors: usize, total: usize) {
    let want = checkpoint::parse_param_list(&std::fs::read_to_string(fx(file)).unwrap()).unwrap();
    let got = cfg.param_shapes().unwrap();
    assert_eq!(want.len(), tensors);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{file}: entry {i}");
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(checkpoint::num_params(&got), total);
    assert_eq!(cfg.num_params().unwrap(), total);
}

#[test]
fn ffhq256_param_list() {
    param_list_matches(&AdmConfig::ffhq256(), "ffhq256_params.txt", 362, 93_563_910);
}

#[test]
fn imagenet256_param_list() {
    param_list_matches(
        &AdmConfig::imagenet256(),
        "imagenet256_params.txt",
        566,
        552_814_086,
    );
}

#[test]
fn presets_match_fixture_yaml_args() {
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx("real_param_counts.json")).unwrap())
            .unwrap();
    let ffhq = AdmConfig::from_create_model_args(&counts["ffhq256"]["config"]).unwrap();
    assert_eq!(ffhq, AdmConfig::ffhq256());
    let inet = AdmConfig::from_create_model_args(&counts["imagenet256"]["config"]).unwrap();
    assert_eq!(inet, AdmConfig::imagenet256());
}

fn tmp(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("adm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn error_missing_file_names_path() {
    let p = fx("no_such_weights.pt");
    let e = AdmUnet::load(&tiny_cfg(), &p, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no_such_weights.pt"), "{e}");
}

#[test]
fn error_wrong_shape_names_tensor_and_shapes() {
    let mut w = load("tiny_weights.safetensors");
    let bad = Tensor::zeros((64, 64, 1), DType::F32, &Device::Cpu).unwrap();
    w.insert("input_blocks.3.1.qkv.weight".into(), bad);
    let p = tmp("bad_shape.safetensors");
    candle_core::safetensors::save(&w, &p).unwrap();
    let e = AdmUnet::load(&tiny_cfg(), &p, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("input_blocks.3.1.qkv.weight"), "{e}");
    assert!(
        e.contains("[192, 64, 1]") && e.contains("[64, 64, 1]"),
        "{e}"
    );
}

#[test]
fn error_missing_and_unexpected_tensor() {
    let mut w = load("tiny_weights.safetensors");
    w.remove("out.2.bias");
    let p = tmp("missing.safetensors");
    candle_core::safetensors::save(&w, &p).unwrap();
    let e = AdmUnet::load(&tiny_cfg(), &p, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing tensor `out.2.bias`"), "{e}");

    let mut w = load("tiny_weights.safetensors");
    w.insert(
        "label_emb.weight".into(),
        Tensor::zeros((10, 128), DType::F32, &Device::Cpu).unwrap(),
    );
    let p = tmp("extra.safetensors");
    candle_core::safetensors::save(&w, &p).unwrap();
    let e = AdmUnet::load(&tiny_cfg(), &p, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unexpected tensor `label_emb.weight`"), "{e}");

    // the tiny weights do not fit the FFHQ architecture: first tensor in state_dict order
    let e = AdmUnet::load(
        &AdmConfig::ffhq256(),
        fx("tiny_weights.safetensors"),
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("time_embed.0.weight") && e.contains("[512, 128]"),
        "{e}"
    );
}

#[test]
fn error_unknown_extension() {
    let p = tmp("weights.onnx");
    std::fs::write(&p, b"not a checkpoint").unwrap();
    let e = AdmUnet::load(&tiny_cfg(), &p, &Device::Cpu).unwrap_err();
    assert!(matches!(e, daps::Error::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("weights.onnx"), "{e}");
}

/// d(Σ D(x, σ))/dx through the whole network, against a central difference in one
/// coordinate (f64 model), plus a gradient check in f32.
#[test]
fn denoiser_gradient_matches_finite_difference() {
    let den = VpDenoiser::new(
        AdmUnet::load_with_dtype(
            &tiny_cfg(),
            fx("tiny_weights.safetensors"),
            &Device::Cpu,
            DType::F64,
        )
        .unwrap(),
    );
    let io = load("tiny_intermediates.safetensors");
    let x0 = io["x"].to_dtype(DType::F64).unwrap();
    let sigma = 2.0;
    let x = Var::from_tensor(&x0).unwrap();
    let loss = den
        .denoise(x.as_tensor(), sigma)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let g = vec64(grads.get(x.as_tensor()).expect("gradient reaches x"));
    let f = |delta: f64, idx: usize| -> f64 {
        let mut v = vec64(&x0);
        v[idx] += delta;
        let xt = Tensor::from_vec(v, x0.dims(), &Device::Cpu).unwrap();
        den.denoise(&xt, sigma)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for idx in [0usize, 3 * 16 * 16 / 2 + 37, 3 * 16 * 16 - 1] {
        let h = 1e-5;
        let fd = (f(h, idx) - f(-h, idx)) / (2.0 * h);
        eprintln!("coord {idx}: autograd {} vs finite difference {fd}", g[idx]);
        assert!(
            (g[idx] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
            "coord {idx}: {} vs {fd}",
            g[idx]
        );
    }

    // f32: the gradient exists, is finite and close to the f64 one.
    let den32 = VpDenoiser::new(tiny("safetensors"));
    let x = Var::from_tensor(&io["x"]).unwrap();
    let loss = den32
        .denoise(x.as_tensor(), sigma)
        .unwrap()
        .sum_all()
        .unwrap();
    let g32 = vec64(loss.backward().unwrap().get(x.as_tensor()).unwrap());
    let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = g32
        .iter()
        .zip(&g)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err <= 1e-4 * scale.max(1.0), "f32 vs f64 gradient: {err}");
}

/// The network's hand-written pullback ([`Denoiser::denoise_vjp`]) against candle's autograd
/// through the same forward, for the tiny fixture network (attention, learned σ, clamped D)
/// and random variants covering scale-shift norm, up/down ResBlocks, pooling, nearest
/// upsampling and the new attention order. Same f32 ops up to the order of sums: relative
/// error ≤ 1e-4 of the gradient's largest entry.
#[test]
fn pullback_matches_autograd() {
    use daps::bench::prior::random_adm;
    let io = load("tiny_intermediates.safetensors");
    let x = io["x"].to_dtype(DType::F32).unwrap();
    let mut nets: Vec<(String, VpDenoiser<AdmUnet>)> = vec![(
        "tiny fixture, clamped".into(),
        VpDenoiser::new(tiny("safetensors")).with_clip(1.0),
    )];
    for (ss, updown, resample, new_order) in [
        (true, true, true, true),
        (false, false, false, false),
        (true, false, true, false),
    ] {
        let mut cfg = tiny_cfg();
        cfg.use_scale_shift_norm = ss;
        cfg.resblock_updown = updown;
        cfg.conv_resample = resample;
        cfg.use_new_attention_order = new_order;
        let name =
            format!("random ss={ss} updown={updown} conv_resample={resample} new={new_order}");
        nets.push((name, random_adm(&cfg, 0.15, &Device::Cpu).unwrap()));
    }
    for (name, den) in &nets {
        for sigma in [0.3, 5.0] {
            let (d, pullback) = den.denoise_vjp(&x, sigma).unwrap();
            let v = Tensor::randn(0f32, 1f32, d.dims(), &Device::Cpu).unwrap();
            let ours = vec64(&pullback(&v).unwrap());
            let xv = Var::from_tensor(&x).unwrap();
            let dref = den.denoise(xv.as_tensor(), sigma).unwrap();
            check_close("D", &d, &dref, 1e-6, 0.0);
            let grads = (dref * &v).unwrap().sum_all().unwrap().backward().unwrap();
            let r = vec64(grads.get(xv.as_tensor()).unwrap());
            let scale = r.iter().fold(0f64, |m, v| m.max(v.abs()));
            let err = ours
                .iter()
                .zip(&r)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            eprintln!("{name}, σ {sigma}: max |Jᵀv| {scale:.3e}, max error {err:.3e}");
            assert!(scale > 0.0, "{name}: zero gradient");
            assert!(err <= 1e-4 * scale, "{name}, σ {sigma}: {err} vs {scale}");
        }
    }
}
