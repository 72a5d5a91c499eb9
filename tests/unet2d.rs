//! diffusers UNet2DModel against the PyTorch fixtures.
//! Tolerance: |ours − ref| ≤ 1e-4 + 1e-4·|ref| element-wise (fixture README).

use candle_core::{DType, Device, Tensor, Var};
use daps::nn::checkpoint;
use daps::prior::unet2d::{rename_legacy_attention, Unet2dConfig, Unet2dModel};
use daps::prior::vp::VpDenoiser;
use daps::prior::Denoiser;
use std::collections::HashMap;
use std::path::PathBuf;

mod common;
use common::{check_close, fixture, load, vec64};

fn dir() -> PathBuf {
    fixture("diffusers_unet2d")
}

fn io() -> HashMap<String, Tensor> {
    load("diffusers_unet2d/tiny_io.safetensors")
}

fn tiny() -> Unet2dModel {
    Unet2dModel::from_pretrained(dir(), &Device::Cpu).unwrap()
}

/// |ours − ref| ≤ 1e-4 + 1e-4·|ref| element-wise.
fn check(what: &str, a: &Tensor, b: &Tensor) {
    check_close(what, a, b, 1e-4, 1e-4);
}

#[test]
fn tiny_config_and_param_count() {
    let m = tiny();
    let cfg = m.config();
    assert_eq!(cfg.block_out_channels, vec![32, 64]);
    assert_eq!(cfg.attention_head_dim, None);
    assert!(!cfg.flip_sin_to_cos);
    let p = cfg.param_shapes().unwrap();
    assert_eq!(p.len(), 144);
    assert_eq!(checkpoint::num_params(&p), 702_499);
}

#[test]
fn tiny_time_proj_and_embedding() {
    let m = tiny();
    let io = io();
    let tp = m.time_proj(&io["timesteps_int"]).unwrap();
    check("time_proj_int", &tp, &io["time_proj_int"]);
    let te = m.time_embedding(&tp).unwrap();
    check("time_embedding_int", &te, &io["time_embedding_int"]);
}

#[test]
fn tiny_forward_int_float_scalar_timesteps() {
    let m = tiny();
    let io = io();
    check(
        "out_int",
        &m.forward(&io["x"], &io["timesteps_int"]).unwrap(),
        &io["out_int"],
    );
    check(
        "out_float",
        &m.forward(&io["x"], &io["timesteps_float"]).unwrap(),
        &io["out_float"],
    );
    check(
        "out_scalar",
        &m.forward(&io["x"], &io["timestep_scalar_int"]).unwrap(),
        &io["out_scalar"],
    );
}

#[test]
fn legacy_attention_names_load() {
    let w = candle_core::safetensors::load(
        dir().join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let legacy: HashMap<String, Tensor> = w
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, v)
        })
        .collect();
    assert!(legacy.contains_key("down_blocks.1.attentions.0.proj_attn.weight"));
    assert!(rename_legacy_attention(legacy.clone())
        .contains_key("mid_block.attentions.0.to_out.0.bias"));
    let tmp =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("unet2d-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let p = tmp.join("legacy.safetensors");
    candle_core::safetensors::save(&legacy, &p).unwrap();
    let cfg = Unet2dConfig::from_json_file(dir().join("config.json")).unwrap();
    let m = Unet2dModel::load(&cfg, &p, &Device::Cpu, DType::F32).unwrap();
    let io = io();
    check(
        "out_int (legacy names)",
        &m.forward(&io["x"], &io["timesteps_int"]).unwrap(),
        &io["out_int"],
    );
}

#[test]
fn celebahq256_param_list() {
    let text = std::fs::read_to_string(dir().join("celebahq256_params.txt")).unwrap();
    let want = checkpoint::parse_param_list(&text).unwrap();
    let got = Unet2dConfig::ddpm_celebahq256().param_shapes().unwrap();
    assert_eq!(want.len(), 450);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "entry {i}");
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(checkpoint::num_params(&got), 113_673_219);
    // the preset equals the Hub config recorded in param_counts.json
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("param_counts.json")).unwrap())
            .unwrap();
    let hub: Unet2dConfig =
        serde_json::from_value(counts["celebahq256"]["config"].clone()).unwrap();
    assert_eq!(hub, Unet2dConfig::ddpm_celebahq256());
}

#[test]
fn errors_name_the_problem() {
    let e = Unet2dModel::from_pretrained(dir().join("nope"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    let e = Unet2dModel::load(
        &Unet2dConfig::ddpm_celebahq256(),
        dir().join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("conv_in.weight") && e.contains("[128, 3, 3, 3]") && e.contains("[32, 3, 3, 3]"),
        "{e}"
    );
}

/// The diffusers UNet as a VP denoiser (DDPM schedule): gradient reaches x and matches a
/// central difference in one coordinate (f64 weights).
#[test]
fn denoiser_gradient() {
    let cfg = Unet2dConfig::from_json_file(dir().join("config.json")).unwrap();
    let m = Unet2dModel::load(
        &cfg,
        dir().join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
        DType::F64,
    )
    .unwrap();
    let den = VpDenoiser::new(m);
    let x0 = io()["x"]
        .narrow(0, 0, 1)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let x = Var::from_tensor(&x0).unwrap();
    let l = den.denoise(x.as_tensor(), 3.0).unwrap().sum_all().unwrap();
    let g = vec64(l.backward().unwrap().get(x.as_tensor()).expect("gradient"));
    let idx = 1234;
    let f = |d: f64| {
        let mut v = vec64(&x0);
        v[idx] += d;
        let xt = Tensor::from_vec(v, x0.dims(), &Device::Cpu).unwrap();
        den.denoise(&xt, 3.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let fd = (f(1e-5) - f(-1e-5)) / 2e-5;
    assert!(
        (g[idx] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
        "{} vs {fd}",
        g[idx]
    );
}
