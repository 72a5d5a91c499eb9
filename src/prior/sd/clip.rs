//! transformers `CLIPTextModel` (the Stable Diffusion text encoder): token + position embeddings,
//! pre-LN transformer layers with a causal mask (no padding mask, as the SD pipeline calls it),
//! final LayerNorm. `quick_gelu` (SD 1.x) or exact `gelu` (SD 2.x).

use super::unet::{attention, LayerNorm};
use crate::error::{Error, Result};
use crate::nn::checkpoint;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// The `CLIPTextConfig` fields this port reads (defaults as in transformers).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub eos_token_id: u32,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

impl ClipConfig {
    /// Stable Diffusion 1.5's text encoder (openai/clip-vit-large-patch14): 123,060,480
    /// parameters.
    pub fn sd15() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            eos_token_id: 2,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(Error::Unsupported(format!(
                "CLIPTextModel: hidden_act {:?}",
                self.hidden_act
            )));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(Error::config(format!(
                "CLIPTextModel: {} heads do not divide hidden_size {}",
                self.num_attention_heads, self.hidden_size
            )));
        }
        Ok(())
    }

    pub fn param_shapes(&self) -> Result<checkpoint::ParamList> {
        self.validate()?;
        checkpoint::record_params(|vb| ClipTextModel::new(self, vb))
    }
}

#[derive(Debug)]
struct Layer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// transformers `CLIPTextModel` (f32).
#[derive(Debug)]
pub struct ClipTextModel {
    cfg: ClipConfig,
    token: Embedding,
    position: Tensor,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
}

impl ClipTextModel {
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let token = candle_nn::embedding(cfg.vocab_size, h, vb.pp("embeddings.token_embedding"))?;
        let position = vb.get(
            (cfg.max_position_embeddings, h),
            "embeddings.position_embedding.weight",
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("encoder.layers.{i}"));
                let a = vb.pp("self_attn");
                Ok(Layer {
                    k: candle_nn::linear(h, h, a.pp("k_proj"))?,
                    v: candle_nn::linear(h, h, a.pp("v_proj"))?,
                    q: candle_nn::linear(h, h, a.pp("q_proj"))?,
                    out: candle_nn::linear(h, h, a.pp("out_proj"))?,
                    ln1: LayerNorm::new(h, eps, vb.pp("layer_norm1"))?,
                    fc1: candle_nn::linear(h, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
                    fc2: candle_nn::linear(cfg.intermediate_size, h, vb.pp("mlp.fc2"))?,
                    ln2: LayerNorm::new(h, eps, vb.pp("layer_norm2"))?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            token,
            position,
            layers,
            final_ln: LayerNorm::new(h, eps, vb.pp("final_layer_norm"))?,
        })
    }

    /// Loads a transformers `text_encoder/` folder (`config.json` + `model.safetensors` or
    /// `pytorch_model.bin`); the `text_model.` prefix and the `position_ids` buffer are dropped.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg: ClipConfig = super::read_config(&dir.join("config.json"))?;
        cfg.validate()?;
        let weights = match super::weights_file(dir, "model") {
            Ok(w) => w,
            Err(_) => super::weights_file(dir, "pytorch_model")?,
        };
        let tensors: HashMap<String, Tensor> = checkpoint::load_state_dict(&weights)?
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(&k).to_string(), v))
            .filter(|(k, _)| k != "embeddings.position_ids")
            .collect();
        let vb = checkpoint::var_builder(
            tensors,
            &cfg.param_shapes()?,
            DType::F32,
            device,
            &weights.display().to_string(),
        )?;
        Ok(Self::new(&cfg, vb)?)
    }

    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    /// `(last_hidden_state [B, T, hidden], pooler_output [B, hidden])` for token ids `[B, T]`.
    /// The pooled state is taken at the first end-of-text token (at the largest id for
    /// `eos_token_id` 2, transformers' legacy rule).
    pub fn forward(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = ids.dims2()?;
        if t > self.cfg.max_position_embeddings {
            return Err(Error::Shape {
                what: "CLIP token ids [B, T]".into(),
                expected: vec![b, self.cfg.max_position_embeddings],
                got: ids.dims().to_vec(),
            });
        }
        let ids_u32 = ids
            .to_dtype(DType::U32)?
            .to_device(self.position.device())?;
        let mut h = self
            .token
            .forward(&ids_u32)?
            .broadcast_add(&self.position.narrow(0, 0, t)?)?;
        let mask: Vec<f32> = (0..t * t)
            .map(|i| match i % t > i / t {
                true => f32::NEG_INFINITY,
                false => 0.0,
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), h.device())?;
        let heads = self.cfg.num_attention_heads;
        for l in &self.layers {
            let x = l.ln1.forward(&h)?;
            let a = attention(
                &l.q.forward(&x)?,
                &l.k.forward(&x)?,
                &l.v.forward(&x)?,
                heads,
                Some(&mask),
            )?;
            h = (l.out.forward(&a)? + h)?;
            let x = l.fc1.forward(&l.ln2.forward(&h)?)?;
            let x = match self.cfg.hidden_act.as_str() {
                "quick_gelu" => (&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?,
                _ => x.gelu_erf()?,
            };
            h = (l.fc2.forward(&x)? + h)?;
        }
        let last = self.final_ln.forward(&h)?;
        let ids_v: Vec<Vec<u32>> = ids_u32.to_vec2()?;
        let eos = self.cfg.eos_token_id;
        let pos: Vec<u32> = ids_v
            .iter()
            .map(|row| {
                let p = if eos == 2 {
                    // argmax, first on ties
                    let m = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&v| v == m)
                } else {
                    row.iter().position(|&v| v == eos)
                };
                p.unwrap_or(0) as u32
            })
            .collect();
        let pooled = (0..b)
            .map(|i| last.get(i)?.get(pos[i] as usize))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = Tensor::stack(&pooled, 0)?;
        Ok((last, pooled))
    }
}
