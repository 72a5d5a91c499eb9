//! Stable Diffusion parts (diffusers AutoencoderKL, UNet2DConditionModel, transformers
//! CLIPTextModel, the CLIP BPE tokenizer) and DAPS's `StableDiffusionModel` against the PyTorch
//! fixtures of `tests/fixtures/latent/{sd_vae,sd_unet,clip_text}` (copied from
//! ../shared/fixtures/latent, whose README gives the tolerances used here: outputs atol 1e-4,
//! VJPs 1e-3, D at σ = 10 with CFG 5e-3; token ids exact).

use candle_core::{DType, Device, Tensor, Var};
use daps::nn::checkpoint;
use daps::noise::ReplayNoise;
use daps::prior::latent::{LatentPrior, TextCondition};
use daps::prior::sd::clip::{ClipConfig, ClipTextModel};
use daps::prior::sd::tokenizer::ClipTokenizer;
use daps::prior::sd::unet::{UNet2DConditionModel, UnetConfig};
use daps::prior::sd::vae::{AutoencoderKl, VaeConfig};
use daps::prior::sd::{resize_bilinear, GuidedUnet, StableDiffusion};
use daps::prior::vp::TimestepNet;
use daps::prior::Denoiser;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;
use common::{check_close, fixture, load, tmp_dir};

const CPU: Device = Device::Cpu;

fn io(part: &str) -> HashMap<String, Tensor> {
    load(&format!("latent/{part}/io.safetensors"))
}

fn ids(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::U32).unwrap().to_vec2().unwrap()
}

/// A pipeline folder assembled from the fixture parts, with `prediction_type`.
fn pipeline(name: &str, prediction_type: &str) -> PathBuf {
    let root = tmp_dir("latent_sd", name);
    let lat = fixture("latent");
    let copy = |from: &Path, to: &str| {
        let to = root.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    for (part, dir, weights) in [
        ("sd_vae", "vae", "diffusion_pytorch_model.safetensors"),
        ("sd_unet", "unet", "diffusion_pytorch_model.safetensors"),
        ("clip_text", "text_encoder", "model.safetensors"),
    ] {
        copy(
            &lat.join(part).join("config.json"),
            &format!("{dir}/config.json"),
        );
        copy(&lat.join(part).join(weights), &format!("{dir}/{weights}"));
    }
    for f in ["vocab.json", "merges.txt"] {
        copy(
            &lat.join("clip_text/tiny_tokenizer").join(f),
            &format!("tokenizer/{f}"),
        );
    }
    copy(
        &lat.join("sd_pipeline/tokenizer_config.json"),
        "tokenizer/tokenizer_config.json",
    );
    let sched = std::fs::read_to_string(lat.join("sd_pipeline/scheduler_config.json"))
        .unwrap()
        .replace("\"epsilon\"", &format!("\"{prediction_type}\""));
    std::fs::create_dir_all(root.join("scheduler")).unwrap();
    std::fs::write(root.join("scheduler/scheduler_config.json"), sched).unwrap();
    root
}

/// DAPS's SD model on the tiny pipeline: prompt "a natural looking image", CFG 7.5, inner
/// resolution 32 → target 16 (the defaults).
fn daps_sd(prediction_type: &str) -> StableDiffusion {
    let dir = pipeline(&format!("pipe_{prediction_type}"), prediction_type);
    StableDiffusion::from_pretrained(&dir, &CPU, None, None).unwrap()
}

#[test]
fn real_architectures_parameter_counts() {
    // Published parameter counts of SD 1.5's three networks.
    let n = |p: checkpoint::ParamList| checkpoint::num_params(&p);
    assert_eq!(n(UnetConfig::sd15().param_shapes().unwrap()), 859_520_964);
    assert_eq!(n(VaeConfig::sd15().param_shapes().unwrap()), 83_653_863);
    assert_eq!(n(ClipConfig::sd15().param_shapes().unwrap()), 123_060_480);
}

#[test]
fn vae_encode_decode_and_vjp() {
    let io = io("sd_vae");
    let vae = AutoencoderKl::from_pretrained(fixture("latent/sd_vae"), &CPU).unwrap();
    let post = vae.encode(&io["x"]).unwrap();
    check_close(
        "posterior_mean",
        &post.mean,
        &io["posterior_mean"],
        1e-4,
        0.0,
    );
    check_close(
        "posterior_logvar",
        &post.logvar,
        &io["posterior_logvar"],
        1e-4,
        0.0,
    );
    check_close("posterior_std", &post.std, &io["posterior_std"], 1e-4, 0.0);
    let dec = vae.decode(&io["decode_input"]).unwrap();
    check_close("decoded", &dec, &io["decoded"], 1e-4, 0.0);
    let z = Var::from_tensor(&io["z"]).unwrap();
    let out = vae.decode(&(z.as_tensor() / 0.18215).unwrap()).unwrap();
    let grads = (out * &io["cotangent"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    check_close(
        "vjp_z",
        grads.get(z.as_tensor()).unwrap(),
        &io["vjp_z"],
        1e-3,
        0.0,
    );
    let vjp = vae
        .decode_vjp(&io["decode_input"], &io["cotangent"])
        .unwrap();
    let vjp = (vjp / 0.18215).unwrap();
    check_close("vjp_z (checkpointed)", &vjp, &io["vjp_z"], 1e-3, 0.0);
}

#[test]
fn daps_encode_decode_with_resize() {
    let io = io("sd_vae");
    let sd = daps_sd("epsilon");
    assert_eq!(sd.resolutions(), (32, 16));
    check_close(
        "daps_x16_up32",
        &resize_bilinear(&io["daps_x16"], 32).unwrap(),
        &io["daps_x16_up32"],
        1e-6,
        0.0,
    );
    let mut noise = ReplayNoise::new(vec![io["daps_encode_noise"].clone()]);
    let z = sd.encode(&io["daps_x16"], &mut noise).unwrap();
    check_close("daps_encode_z", &z, &io["daps_encode_z"], 1e-4, 0.0);
    assert_eq!(sd.latent_shape(&[3, 16, 16]).unwrap(), vec![4, 16, 16]);
    let e = sd.latent_shape(&[3, 32, 32]).unwrap_err().to_string();
    assert!(e.contains("16×16") && e.contains("sd:DIR:SIZE"), "{e}");
    let out = sd.decode(&io["z"]).unwrap();
    check_close("daps_decode_out", &out, &io["daps_decode_out"], 1e-4, 0.0);
    let vjp = sd
        .decode_vjp(&io["z"], &io["daps_decode_cotangent"])
        .unwrap();
    check_close("daps_decode_vjp", &vjp, &io["daps_decode_vjp"], 1e-3, 0.0);
}

#[test]
fn unet_eps_time_embedding_and_cfg_pair() {
    let io = io("sd_unet");
    let unet = UNet2DConditionModel::from_pretrained(fixture("latent/sd_unet"), &CPU).unwrap();
    assert_eq!(unet.config().heads(), vec![2, 2]);
    let tp = unet.time_proj(&io["timestep_int"]).unwrap();
    check_close("time_proj_t_int", &tp, &io["time_proj_t_int"], 1e-5, 0.0);
    let te = unet.time_embedding(&tp).unwrap();
    check_close(
        "time_embedding_t_int",
        &te,
        &io["time_embedding_t_int"],
        1e-4,
        0.0,
    );
    let ehs = &io["encoder_hidden_states"];
    for t in ["int", "float"] {
        let eps = unet
            .forward(&io["sample"], &io[&format!("timestep_{t}")], ehs)
            .unwrap();
        check_close(
            &format!("eps_t_{t}"),
            &eps,
            &io[&format!("eps_t_{t}")],
            1e-4,
            0.0,
        );
    }
    let pair = Tensor::cat(&[&io["cfg_sample"], &io["cfg_sample"]], 0).unwrap();
    let ctx = &io["cfg_encoder_hidden_states"];
    let out = unet.forward(&pair, &io["cfg_timestep"], ctx).unwrap();
    check_close("cfg_unet_out", &out, &io["cfg_unet_out"], 1e-4, 0.0);
    let guided = GuidedUnet::new(unet, ctx.clone(), 7.5);
    let eps = guided
        .forward_t(&io["cfg_sample"], &io["cfg_timestep"])
        .unwrap();
    // Guidance multiplies ε errors by up to 2w + 1 = 16.
    check_close("cfg_eps_guided", &eps, &io["cfg_eps_guided"], 16e-4, 0.0);
}

#[test]
fn daps_tweedie_epsilon_and_v_prediction() {
    let io = io("sd_unet");
    let sd = daps_sd("epsilon");
    let den = sd.denoiser();
    let sig: Vec<f32> = io["daps_sigma"].to_vec1().unwrap();
    let c_in: Vec<f32> = io["daps_c_in"].to_vec1().unwrap();
    let c_noise: Vec<f32> = io["daps_c_noise"].to_vec1().unwrap();
    let unet = den.net().unet();
    let ctx = Tensor::cat(
        &[
            &io["daps_negative_prompt_embeds"],
            &io["daps_prompt_embeds"],
        ],
        0,
    )
    .unwrap();
    let z = &io["daps_z"];
    for (i, &s) in sig.iter().enumerate() {
        assert!((den.c_in(s) - c_in[i]).abs() <= 1e-7, "c_in at σ = {s}");
        let cn = den.c_noise(s);
        assert!(
            (cn - c_noise[i]).abs() <= 1e-6 * c_noise[i] + 1e-5,
            "c_noise {cn} vs {}",
            c_noise[i]
        );
        let unet_in = Tensor::cat(&[z, z], 0)
            .unwrap()
            .affine(c_in[i] as f64, 0.0)
            .unwrap();
        check_close(
            &format!("daps_unet_in_s{i}"),
            &unet_in,
            &io[&format!("daps_unet_in_s{i}")],
            1e-6,
            0.0,
        );
        let t = Tensor::new(&[c_noise[i]], &CPU).unwrap();
        let out = unet
            .forward(&io[&format!("daps_unet_in_s{i}")], &t, &ctx)
            .unwrap();
        check_close(
            &format!("daps_unet_out_s{i}"),
            &out,
            &io[&format!("daps_unet_out_s{i}")],
            1e-4,
            0.0,
        );
        // D = z − σ·ε_guided: ε errors (×16 by CFG) times σ; 5e-3 at σ = 10 as the README says.
        let tol = 1e-4 + 5e-4 * s as f64;
        let d = sd.denoise(z, s as f64).unwrap();
        check_close(
            &format!("daps_D_s{i}"),
            &d,
            &io[&format!("daps_D_s{i}")],
            tol,
            0.0,
        );
        let eps = ((z - &d).unwrap() / s as f64).unwrap();
        check_close(
            &format!("daps_eps_guided_s{i}"),
            &eps,
            &io[&format!("daps_eps_guided_s{i}")],
            16e-4,
            0.0,
        );
    }
    let v = daps_sd("v_prediction");
    for (i, &s) in sig.iter().enumerate() {
        let tol = 1e-4 + 5e-4 * s as f64;
        let d = v.denoise(z, s as f64).unwrap();
        check_close(
            &format!("daps_D_vpred_s{i}"),
            &d,
            &io[&format!("daps_D_vpred_s{i}")],
            tol,
            0.0,
        );
    }
}

#[test]
fn daps_prompt_ids_and_embeddings() {
    let io = io("sd_unet");
    let tok = ClipTokenizer::from_dir(fixture("latent/clip_text/tiny_tokenizer")).unwrap();
    assert_eq!(
        vec![tok.encode("a natural looking image")],
        ids(&io["daps_prompt_ids"])
    );
    assert_eq!(vec![tok.encode("")], ids(&io["daps_uncond_ids"]));
    let clip = ClipTextModel::from_pretrained(fixture("latent/clip_text"), &CPU).unwrap();
    let (h, _) = clip.forward(&io["daps_prompt_ids"]).unwrap();
    check_close(
        "daps_prompt_embeds",
        &h,
        &io["daps_prompt_embeds"],
        1e-4,
        0.0,
    );
    let (h, _) = clip.forward(&io["daps_uncond_ids"]).unwrap();
    check_close(
        "daps_negative_prompt_embeds",
        &h,
        &io["daps_negative_prompt_embeds"],
        1e-4,
        0.0,
    );
}

#[test]
fn clip_text_model_hidden_states_and_pooler() {
    let io = io("clip_text");
    let clip = ClipTextModel::from_pretrained(fixture("latent/clip_text"), &CPU).unwrap();
    for set in ["random", "prompts_tiny"] {
        let key = if set == "random" {
            "input_ids_random"
        } else {
            "input_ids_prompts_tiny"
        };
        let (h, p) = clip.forward(&io[key]).unwrap();
        check_close(
            &format!("last_hidden_state_{set}"),
            &h,
            &io[&format!("last_hidden_state_{set}")],
            1e-4,
            0.0,
        );
        check_close(
            &format!("pooler_output_{set}"),
            &p,
            &io[&format!("pooler_output_{set}")],
            1e-4,
            0.0,
        );
    }
}

const PROMPTS: [&str; 4] = [
    "a photo of a face",
    "",
    "A HIGH-resolution photo, 4k!",
    "a natural looking image",
];

#[test]
fn tiny_tokenizer_ids() {
    let io = io("clip_text");
    let tok = ClipTokenizer::from_dir(fixture("latent/clip_text/tiny_tokenizer")).unwrap();
    let got: Vec<Vec<u32>> = PROMPTS.iter().map(|p| tok.encode(p)).collect();
    assert_eq!(got, ids(&io["input_ids_prompts_tiny"]));
    // Merge ranks: "resolution" → re s o l u tion</w> (`r e` outranks `e s`).
    let res = tok.tokens("resolution");
    assert_eq!(res, vec![539, 82, 78, 75, 84, 543]);
    // Truncation keeps bos … eos at length 77.
    let long = tok.encode(&"a ".repeat(100));
    assert_eq!((long.len(), long[0], long[76]), (77, 544, 545));
}

/// SD 2.x's pad token "!": padding with id 0, and a literal "!" also becomes 0 (not `!</w>` =
/// 256), the reference tokenizer's quirk. The real-vocabulary fixture rows show the same
/// relation between the SD 1.5 and SD 2.x configurations.
#[test]
fn sd2_bang_padding_quirk() {
    let io = io("clip_text");
    let dir = fixture("latent/clip_text/tiny_tokenizer");
    let vocab: HashMap<String, u32> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("vocab.json")).unwrap()).unwrap();
    let merges: Vec<(String, String)> = std::fs::read_to_string(dir.join("merges.txt"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    let sd2 = ClipTokenizer::new(vocab, merges, "!", 77).unwrap();
    let sd15 = ids(&io["input_ids_prompts_tiny"]);
    let eos = 545;
    let expect = |row: &Vec<u32>| -> Vec<u32> {
        let end = row.iter().position(|&v| v == eos).unwrap();
        row.iter()
            .enumerate()
            .map(|(i, &v)| match v {
                256 => 0,
                545 if i > end => 0,
                v => v,
            })
            .collect()
    };
    for (p, row) in PROMPTS.iter().zip(&sd15) {
        assert_eq!(sd2.encode(p), expect(row), "{p:?}");
    }
    let (real15, real2) = (
        ids(&io["real_ids_hf_pad_eot_sd15"]),
        ids(&io["real_ids_hf_pad_bang_sd2"]),
    );
    for (a, b) in real15.iter().zip(&real2) {
        let end = a.iter().position(|&v| v == 49407).unwrap();
        let mapped: Vec<u32> = a
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if v == 256 || (v == 49407 && i > end) {
                    0
                } else {
                    v
                }
            })
            .collect();
        assert_eq!(&mapped, b);
    }
}

#[test]
fn pipeline_errors_are_named() {
    let dir = pipeline("missing_unet", "epsilon");
    std::fs::remove_dir_all(dir.join("unet")).unwrap();
    let spec = format!("sd:{}", dir.display());
    let e = daps::prior::load(Some(&spec), &CPU)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no unet/ component"), "{e}");
    let text = TextCondition {
        prompt: "a face".into(),
        negative_prompt: String::new(),
        guidance: 3.0,
    };
    let gmm = format!("gmm:{}", fixture("nope.safetensors").display());
    let e = daps::prior::load_with(Some(&gmm), &CPU, Some(&text))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unconditional prior takes no prompt"), "{e}");
    let e = daps::prior::load_with(None, &CPU, Some(&text))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("takes no prompt"), "{e}");
}

#[test]
fn loads_through_the_prior_spec_with_a_prompt() {
    let dir = pipeline("spec", "epsilon");
    let text = TextCondition {
        prompt: "a photo of a face".into(),
        negative_prompt: "high".into(),
        guidance: 3.0,
    };
    let spec = format!("sd:{}:8", dir.display());
    let p = daps::prior::load_with(Some(&spec), &CPU, Some(&text)).unwrap();
    assert!(p.name().contains("a photo of a face"), "{}", p.name());
    assert_eq!(p.sample_shape(), Some(vec![4, 16, 16]));
    let lat = p.as_latent().expect("a latent prior");
    assert_eq!(lat.latent_shape(&[3, 8, 8]).unwrap(), vec![4, 16, 16]);
    let z = Tensor::zeros((2, 4, 16, 16), DType::F32, &CPU).unwrap();
    assert_eq!(lat.decode(&z).unwrap().dims(), &[2, 3, 8, 8]);
    let d = p.denoise(&z, 1.0).unwrap();
    assert_eq!(d.dims(), z.dims());
}

/// The real CLIP vocabulary is not in the repository. With `DAPS_CLIP_BPE` naming openai/CLIP's
/// `bpe_simple_vocab_16e6.txt` (e.g. from the `instant-clip-tokenizer` or `open_clip_torch`
/// packages, MIT), the vocabulary is built as transformers does and the recorded ids of the SD
/// 1.5 (pad `<|endoftext|>`) and SD 2.x (pad `!`) tokenizers are checked:
/// `DAPS_CLIP_BPE=… cargo test --release --test latent_sd -- --ignored`.
#[test]
#[ignore = "needs DAPS_CLIP_BPE (the real CLIP vocabulary)"]
fn real_vocabulary_ids() {
    let path = std::env::var("DAPS_CLIP_BPE").expect("DAPS_CLIP_BPE");
    let text = std::fs::read_to_string(path).unwrap();
    let merges: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .take(49152 - 256 - 2)
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    // Ids 0–511 (bytes, then bytes with </w>) are the same in the tiny vocabulary.
    let tiny: HashMap<String, u32> = serde_json::from_str(
        &std::fs::read_to_string(fixture("latent/clip_text/tiny_tokenizer/vocab.json")).unwrap(),
    )
    .unwrap();
    let mut vocab: HashMap<String, u32> = tiny.into_iter().filter(|(_, i)| *i < 512).collect();
    for (a, b) in &merges {
        let n = vocab.len() as u32;
        vocab.insert(format!("{a}{b}"), n);
    }
    for s in ["<|startoftext|>", "<|endoftext|>"] {
        let n = vocab.len() as u32;
        vocab.insert(s.to_string(), n);
    }
    assert_eq!(vocab.len(), 49408);
    let io = io("clip_text");
    for (pad, key) in [
        ("<|endoftext|>", "real_ids_hf_pad_eot_sd15"),
        ("!", "real_ids_hf_pad_bang_sd2"),
    ] {
        let tok = ClipTokenizer::new(vocab.clone(), merges.clone(), pad, 77).unwrap();
        let got: Vec<Vec<u32>> = PROMPTS[..3].iter().map(|p| tok.encode(p)).collect();
        assert_eq!(got, ids(&io[key]), "{key}");
    }
}

#[test]
fn cli_sample_decodes_latents_with_a_prompt() {
    let dir = pipeline("cli", "epsilon");
    let out = dir.join("grid.png");
    let prior = format!("sd:{}", dir.display());
    let o = common::daps(&[
        "sample",
        "--prior",
        &prior,
        "--prompt",
        "a photo of a face",
        "--guidance",
        "3",
        "--n",
        "2",
        "--steps",
        "3",
        "--out",
        common::s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let img = image::open(&out).unwrap();
    assert!(
        img.width() >= 16 && img.height() >= 16,
        "{}×{}",
        img.width(),
        img.height()
    );
    let o = common::daps(&[
        "sample",
        "--prompt",
        "a face",
        "--n",
        "1",
        "--out",
        common::s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("takes no prompt"),
        "{err}"
    );
}

/// f16 weights (a `diffusion_pytorch_model.fp16.safetensors` variant) load and run in f32.
/// Rounding every weight to f16 changes it by ≤ 2⁻¹¹ relative; through the decoder's ~20
/// layers that bounds the output change by about 20·2⁻¹¹ ≈ 1% of its scale (max |ref| 3.5), so
/// atol 0.035.
#[test]
fn f16_weights_load_in_f32() {
    let dir = tmp_dir("latent_sd", "vae_f16");
    let src = fixture("latent/sd_vae");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let w = candle_core::safetensors::load(src.join("diffusion_pytorch_model.safetensors"), &CPU)
        .unwrap();
    let half: HashMap<String, Tensor> = w
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
        .collect();
    candle_core::safetensors::save(&half, dir.join("diffusion_pytorch_model.fp16.safetensors"))
        .unwrap();
    let vae = AutoencoderKl::from_pretrained(&dir, &CPU).unwrap();
    let io = io("sd_vae");
    let dec = vae.decode(&io["decode_input"]).unwrap();
    assert_eq!(dec.dtype(), DType::F32);
    check_close("decoded (f16 weights)", &dec, &io["decoded"], 0.035, 0.0);
}

/// SD 2.x's layout on the tiny UNet: `use_linear_projection` (proj_in/proj_out as Linear, the
/// 1×1 conv weights reshaped) and `attention_head_dim` as a per-block list compute the same ε
/// as the SD 1.5 layout (there is no SD 2.x fixture; the README says so).
#[test]
fn sd2_linear_projection_and_head_list() {
    let src = fixture("latent/sd_unet");
    let dir = tmp_dir("latent_sd", "unet_sd2");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["use_linear_projection"] = serde_json::json!(true);
    cfg["attention_head_dim"] = serde_json::json!([2, 2]);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let w = candle_core::safetensors::load(src.join("diffusion_pytorch_model.safetensors"), &CPU)
        .unwrap();
    let w: HashMap<String, Tensor> = w
        .into_iter()
        .map(|(k, v)| {
            match (k.contains(".proj_in.") || k.contains(".proj_out.")) && v.rank() == 4 {
                true => {
                    let (o, i) = (v.dim(0).unwrap(), v.dim(1).unwrap());
                    (k, v.reshape((o, i)).unwrap())
                }
                false => (k, v),
            }
        })
        .collect();
    candle_core::safetensors::save(&w, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let unet = UNet2DConditionModel::from_pretrained(&dir, &CPU).unwrap();
    assert!(unet.config().use_linear_projection);
    let io = io("sd_unet");
    let eps = unet
        .forward(
            &io["sample"],
            &io["timestep_int"],
            &io["encoder_hidden_states"],
        )
        .unwrap();
    check_close(
        "eps_t_int (linear projection)",
        &eps,
        &io["eps_t_int"],
        1e-4,
        0.0,
    );
}

/// PSLD runs on a Stable Diffusion prior (its gradient goes through the UNet with CFG, the VAE
/// decoder and the sampling VAE encoder by autograd): 16×16 box inpainting, 3 steps, finite.
#[test]
fn psld_runs_on_the_tiny_sd_pipeline() {
    use daps::noise::SeededNoise;
    use daps::operator::inpaint::Inpaint;
    use daps::operator::{Measurement, Operator};
    use daps::sampler::{Method, Problem, Silent};
    let sd = daps_sd("epsilon");
    let op = Inpaint::boxed(16, 16, 0, &CPU).unwrap();
    let x = common::randn(&[1, 3, 16, 16], 3)
        .clamp(-1f32, 1f32)
        .unwrap();
    let meas = Measurement {
        y: op.forward(&x).unwrap(),
        sigma_y: 0.05,
    };
    let p = Problem {
        prior: &sd,
        operator: &op,
        measurement: &meas,
    };
    let m = Method::from_name("psld")
        .unwrap()
        .set("steps", "3")
        .unwrap();
    m.supports(&p).unwrap();
    let out = m
        .run(&p, &[2, 3, 16, 16], &mut SeededNoise::new(1), &mut Silent)
        .unwrap();
    assert_eq!(out.dims(), &[2, 3, 16, 16]);
    let v = common::vec64(&out);
    assert!(v.iter().all(|x| x.is_finite()), "{v:?}");
}
