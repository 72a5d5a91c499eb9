//! The CompVis LDM-VQ prior (`--prior ldm:…`) against every tensor of the reference fixture
//! `tests/fixtures/latent/ldm_vq4/io.safetensors` (copied from ../shared/fixtures/latent; DAPS
//! at 098df6b, PyTorch f32, 1 thread), at its README's tolerances: encoder / decoder / UNet ε
//! 1e-4, VJPs 1e-3, D at σ = 10 1e-3, VQ indices exact.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{check_close, fixture, load};
use daps::noise::SeededNoise;
use daps::prior::latent::LatentPrior;
use daps::prior::ldm::{LdmConfig, LdmPrior};
use daps::prior::Denoiser;
use std::collections::HashMap;
use std::sync::OnceLock;

fn prior() -> &'static LdmPrior {
    static P: OnceLock<LdmPrior> = OnceLock::new();
    P.get_or_init(|| {
        LdmPrior::from_files(
            &fixture("latent/ldm_vq4/model.safetensors"),
            &fixture("latent/ldm_vq4/daps_model_config.yaml"),
            &Device::Cpu,
        )
        .unwrap()
    })
}

fn io() -> &'static HashMap<String, Tensor> {
    static IO: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    IO.get_or_init(|| load("latent/ldm_vq4/io.safetensors"))
}

fn t(name: &str) -> &'static Tensor {
    io().get(name)
        .unwrap_or_else(|| panic!("fixture tensor {name}"))
}

#[test]
fn parameter_counts_match_the_reference() {
    let cfg = LdmConfig::from_yaml_file(&fixture("latent/ldm_vq4/daps_model_config.yaml")).unwrap();
    let n = |l: &daps::nn::checkpoint::ParamList| daps::nn::checkpoint::num_params(l);
    assert_eq!(n(&cfg.unet.param_shapes().unwrap()), 702_499);
    assert_eq!(n(&cfg.first_stage.param_shapes().unwrap()), 655_038);
    let p = prior();
    assert!(!p.uses_ema());
    assert!(p.name().contains("raw"), "{}", p.name());
    assert_eq!(p.latent_shape(&[3, 16, 16]).unwrap(), vec![3, 8, 8]);
    let e = p.latent_shape(&[3, 18, 18]).unwrap_err().to_string();
    assert!(
        e.contains("[3, 18, 18]") && e.contains("multiples of 4"),
        "{e}"
    );
}

#[test]
fn encoder_quantiser_and_decoder() {
    let p = prior();
    let vq = p.first_stage();
    let h = p.encode(t("x"), &mut SeededNoise::new(0)).unwrap();
    check_close("encode_h", &h, t("encode_h"), 1e-4, 0.0);
    // Quantise the reference's h so the indices are checked on their own.
    let idx = vq.indices(t("encode_h")).unwrap();
    let want: Vec<i64> = t("quant_indices").to_vec1().unwrap();
    assert_eq!(idx.iter().map(|&i| i as i64).collect::<Vec<_>>(), want);
    assert_eq!(vq.indices(&h).unwrap(), idx);
    let q = vq.quantize(t("encode_h")).unwrap();
    check_close("quant_z", &q, t("quant_z"), 1e-6, 0.0);
    check_close(
        "decode_daps",
        &p.decode(t("encode_h")).unwrap(),
        t("decode_daps"),
        1e-4,
        0.0,
    );
    check_close(
        "decode_of_quant_z",
        &p.decode(t("quant_z")).unwrap(),
        t("decode_of_quant_z"),
        1e-4,
        0.0,
    );
    check_close(
        "decode_noquant",
        &vq.decode_unquantized(t("encode_h")).unwrap(),
        t("decode_noquant"),
        1e-4,
        0.0,
    );
}

#[test]
fn decoder_vjps() {
    let p = prior();
    let g = p.decode_vjp(t("encode_h"), t("cotangent")).unwrap();
    check_close("vjp_decode_daps", &g, t("vjp_decode_daps"), 1e-3, 0.0);
    // Straight through: the VJP at the quantised point is the same.
    let gq = p.decode_vjp(t("quant_z"), t("cotangent")).unwrap();
    check_close("vjp at quant_z", &gq, t("vjp_decode_daps"), 1e-3, 0.0);
    // decode_with_pullback over 9 chains (two pieces of the CPU batch): the same image and VJP.
    let z9 = Tensor::cat(&[t("encode_h"); 9], 0).unwrap();
    let g9 = Tensor::cat(&[t("cotangent"); 9], 0).unwrap();
    let (x9, pullback) = p.decode_with_pullback(&z9).unwrap();
    let v9 = pullback(&g9).unwrap();
    for i in [0, 8] {
        let xi = x9.narrow(0, i, 1).unwrap();
        check_close("pullback image", &xi, t("decode_daps"), 1e-4, 0.0);
        let vi = v9.narrow(0, i, 1).unwrap();
        check_close("pullback VJP", &vi, t("vjp_decode_daps"), 1e-3, 0.0);
    }
    // Without the quantiser (through autograd on the plain decoder).
    let zv = candle_core::Var::from_tensor(t("encode_h")).unwrap();
    let x = p.first_stage().decode_unquantized(zv.as_tensor()).unwrap();
    let grads = (x * t("cotangent"))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gn = grads.get(zv.as_tensor()).unwrap();
    check_close("vjp_decode_noquant", gn, t("vjp_decode_noquant"), 1e-3, 0.0);
}

#[test]
fn unet_eps_for_integer_float_and_broadcast_timesteps() {
    let net = prior().denoiser().net();
    let z = t("unet_z");
    let ti = t("unet_t_int").to_dtype(DType::F32).unwrap();
    check_close(
        "unet_eps_t_int",
        &net.forward(z, &ti).unwrap(),
        t("unet_eps_t_int"),
        1e-4,
        0.0,
    );
    check_close(
        "unet_eps_t_float",
        &net.forward(z, t("unet_t_float")).unwrap(),
        t("unet_eps_t_float"),
        1e-4,
        0.0,
    );
    check_close(
        "unet_eps_t_bcast",
        &net.forward(z, t("unet_t_bcast")).unwrap(),
        t("unet_eps_t_bcast"),
        1e-4,
        0.0,
    );
}

#[test]
fn denoiser_is_daps_vpprecond_with_default_constants() {
    let p = prior();
    let sig: Vec<f32> = t("den_sigma").to_vec1().unwrap();
    let c_in: Vec<f32> = t("den_c_in").to_vec1().unwrap();
    let c_noise: Vec<f32> = t("den_c_noise_vpprecond").to_vec1().unwrap();
    for (i, &s) in sig.iter().enumerate() {
        let den = p.denoiser();
        assert!((den.c_in(s) - c_in[i]).abs() <= 1e-6, "c_in at σ = {s}");
        assert!(
            (den.c_noise(s) - c_noise[i]).abs() <= 1e-3,
            "c_noise at σ = {s}"
        );
        let z = t(&format!("den_z_s{i}"));
        let d = p.denoise(z, s as f64).unwrap();
        let tol = if s >= 10.0 { 1e-3 } else { 1e-4 };
        check_close(
            &format!("den_D_daps_s{i}"),
            &d,
            t(&format!("den_D_daps_s{i}")),
            tol,
            0.0,
        );
        let score = p.score(z, s as f64).unwrap();
        // score = (D − x)/σ²: D's error over σ².
        let stol = tol / (s as f64 * s as f64);
        check_close(
            &format!("den_score_daps_s{i}"),
            &score,
            t(&format!("den_score_daps_s{i}")),
            stol.max(1e-4),
            0.0,
        );
    }
    // One batch-3 call with one σ per sample (the Denoiser trait shares σ, so through the UNet).
    let z = Tensor::cat(&[t("den_z_s0"), t("den_z_s1"), t("den_z_s2")], 0).unwrap();
    let den = p.denoiser();
    let cin = Tensor::new(c_in.as_slice(), &Device::Cpu)
        .unwrap()
        .reshape((3, 1, 1, 1))
        .unwrap();
    let tt = Tensor::new(
        sig.iter()
            .map(|&s| den.c_noise(s))
            .collect::<Vec<f32>>()
            .as_slice(),
        &Device::Cpu,
    )
    .unwrap();
    let eps = den
        .net()
        .forward(&z.broadcast_mul(&cin).unwrap(), &tt)
        .unwrap();
    let sv = Tensor::new(sig.as_slice(), &Device::Cpu)
        .unwrap()
        .reshape((3, 1, 1, 1))
        .unwrap();
    let d = (&z - eps.broadcast_mul(&sv).unwrap()).unwrap();
    check_close("den_D_daps_batched", &d, t("den_D_daps_batched"), 1e-3, 0.0);
    // And the shared-σ batched path of the denoiser agrees with single calls.
    let zb = Tensor::cat(&[t("den_z_s1"), t("den_z_s1")], 0).unwrap();
    let db = p.denoise(&zb, sig[1] as f64).unwrap();
    check_close(
        "batched σ = 1",
        &db.narrow(0, 1, 1).unwrap(),
        t("den_D_daps_s1"),
        1e-4,
        0.0,
    );
}

#[test]
fn mismatched_checkpoint_names_the_first_tensor_and_both_shapes() {
    let dir = common::tmp_dir("ldm", "mismatch");
    let yaml = std::fs::read_to_string(fixture("latent/ldm_vq4/daps_model_config.yaml")).unwrap();
    let cfg = dir.join("wide.yaml");
    std::fs::write(
        &cfg,
        yaml.replace("model_channels: 32", "model_channels: 64"),
    )
    .unwrap();
    let e = LdmPrior::from_files(
        &fixture("latent/ldm_vq4/model.safetensors"),
        &cfg,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("time_embed.0.weight") && e.contains("[256, 64]") && e.contains("[128, 32]"),
        "{e}"
    );
    // EMA weights are used when present: a checkpoint whose model_ema copy is the UNet × 0.
    let mut all = load("latent/ldm_vq4/model.safetensors");
    let names: Vec<String> = all
        .keys()
        .filter(|k| k.starts_with("model.diffusion_model."))
        .cloned()
        .collect();
    for k in names {
        let ema = format!("model_ema.{}", k["model.".len()..].replace('.', ""));
        let v = all[&k].zeros_like().unwrap();
        all.insert(ema, v);
    }
    all.insert(
        "model_ema.decay".into(),
        Tensor::new(0.9999f32, &Device::Cpu).unwrap(),
    );
    let ckpt = dir.join("ema.safetensors");
    candle_core::safetensors::save(&all, &ckpt).unwrap();
    let p = LdmPrior::from_files(
        &ckpt,
        &fixture("latent/ldm_vq4/daps_model_config.yaml"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(p.uses_ema() && p.name().contains("EMA"), "{}", p.name());
    // Zero weights: ε = 0, so D(x) = x.
    let z = t("den_z_s1");
    check_close(
        "EMA weights in use",
        &p.denoise(z, 1.0).unwrap(),
        z,
        0.0,
        0.0,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_compvis_yaml_loads_too() {
    let dir = common::tmp_dir("ldm", "compvis");
    let yaml = std::fs::read_to_string(fixture("latent/ldm_vq4/daps_model_config.yaml")).unwrap();
    // The CompVis layout is the `ldm_config` block on its own.
    let inner: String = yaml
        .lines()
        .skip_while(|l| !l.starts_with("ldm_config:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| format!("{}\n", &l[2..]))
        .collect();
    let path = dir.join("compvis.yaml");
    std::fs::write(&path, inner).unwrap();
    let a = LdmConfig::from_yaml_file(&path).unwrap();
    let b = LdmConfig::from_yaml_file(&fixture("latent/ldm_vq4/daps_model_config.yaml")).unwrap();
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The FFHQ-256 LDM-VQ4 built from `LdmConfig::ffhq256()` has exactly the names and shapes of the
/// real checkpoint (`ffhq256ldm_state_dict_keys.txt`, built by the reference from DAPS's
/// ffhq256ldm.yaml on the meta device): every `first_stage_model.*` and `model.diffusion_model.*`
/// tensor, and a `model_ema.*` copy of every UNet one; the rest are the 12 schedule buffers and
/// two EMA counters, which the loader ignores.
#[test]
fn ffhq256_architecture_matches_the_real_key_list() {
    let text =
        std::fs::read_to_string(fixture("latent/ldm_vq4/ffhq256ldm_state_dict_keys.txt")).unwrap();
    let real = daps::nn::checkpoint::parse_param_list(&text).unwrap();
    assert_eq!(real.len(), 955);
    let real: HashMap<String, Vec<usize>> = real.into_iter().collect();
    let cfg = LdmConfig::ffhq256();
    let ours = cfg.param_shapes().unwrap();
    let n = |pre: &str| {
        ours.iter()
            .filter(|(k, _)| k.starts_with(pre))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum::<usize>()
    };
    assert_eq!(n("model.diffusion_model."), 274_056_163);
    assert_eq!(n("first_stage_model."), 55_322_782);
    let mut matched = 0;
    for (name, shape) in &ours {
        assert_eq!(real.get(name), Some(shape), "{name}");
        if let Some(rest) = name.strip_prefix("model.") {
            let ema = format!("model_ema.{}", rest.replace('.', ""));
            assert_eq!(real.get(&ema), Some(shape), "{ema}");
            matched += 1;
        }
        matched += 1;
    }
    let ignored = real
        .keys()
        .filter(|k| !k.starts_with("model.") && !k.starts_with("first_stage_model."))
        .filter(|k| !k.starts_with("model_ema.diffusion_model"))
        .count();
    assert_eq!((matched, ignored), (955 - 14, 14));
}

/// The same architecture read from a CompVis-layout yaml with the FFHQ model's values.
#[test]
fn ffhq256_yaml_gives_the_builtin_architecture() {
    let yaml = "model:
  params:
    unet_config:
      params: {image_size: 64, in_channels: 3, out_channels: 3, model_channels: 224,
               attention_resolutions: [8, 4, 2], num_res_blocks: 2, channel_mult: [1, 2, 3, 4],
               num_head_channels: 32}
    first_stage_config:
      target: ldm.models.autoencoder.VQModelInterface
      params:
        embed_dim: 3
        n_embed: 8192
        ddconfig: {double_z: false, z_channels: 3, resolution: 256, in_channels: 3, out_ch: 3,
                   ch: 128, ch_mult: [1, 2, 4], num_res_blocks: 2, attn_resolutions: [],
                   dropout: 0.0}
    cond_stage_config: __is_unconditional__
";
    let v: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
    assert_eq!(LdmConfig::from_value(&v).unwrap(), LdmConfig::ffhq256());
}
