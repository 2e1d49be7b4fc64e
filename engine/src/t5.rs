//! transformers' `T5EncoderModel` (SD 3's third text encoder, T5-XXL v1.1) and its tokenizer,
//! as `StableDiffusion3Pipeline` calls them: ids padded to `max_sequence_length`, no attention
//! mask, the last hidden state after the final layer norm.
//!
//! Owned rather than candle-transformers' T5: its config and weight names are the same, but
//! parity needs transformers' exact arithmetic (RMS statistics in f32, the bucketed relative
//! position bias in f32, `gelu_new`) on any dtype, and the engine's own attention kernel.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::config::read_config;
use crate::nn::{Linear, RmsNorm, merge_heads, split_heads};
use crate::weights::{Weights, find_weight_files};

fn default_eps6() -> f64 {
    1e-6
}
fn default_buckets() -> usize {
    32
}
fn default_distance() -> usize {
    128
}
fn default_ff() -> String {
    "relu".into()
}

/// `text_encoder_3/config.json` (transformers' `T5Config`, the keys the encoder uses).
#[derive(Clone, Debug, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_eps6")]
    pub layer_norm_epsilon: f64,
    /// `"relu"`, `"gated-gelu"` (v1.1, T5-XXL) or `"gated-<act>"`.
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Relu,
    /// transformers' `gelu_new` (the tanh approximation), which `gated-gelu` means.
    GeluNew,
    Gelu,
    Silu,
}

impl T5Config {
    fn feed_forward(&self) -> Result<(bool, Act)> {
        let (gated, act) = match self.feed_forward_proj.strip_prefix("gated-") {
            Some(act) => (true, act),
            None => (false, self.feed_forward_proj.as_str()),
        };
        let act = match (gated, act) {
            (true, "gelu") | (_, "gelu_new") => Act::GeluNew,
            (false, "gelu") => Act::Gelu,
            (_, "relu") => Act::Relu,
            (_, "silu") => Act::Silu,
            (_, other) => bail!(
                "T5 `feed_forward_proj` = {other:?} is not supported (relu, gelu, gelu_new, silu, gated-*)"
            ),
        };
        Ok((gated, act))
    }
}

struct Block {
    norm_attn: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm_ff: RmsNorm,
    wi: Linear,
    /// The gate's input projection (`wi_1`) of a gated feed-forward.
    wi_gate: Option<Linear>,
    wo: Linear,
}

/// The T5 encoder stack.
pub struct T5Encoder {
    embed: Tensor,
    relative_bias: Tensor,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    act: Act,
    pub config: T5Config,
    device: Device,
}

impl T5Encoder {
    /// Loads a `text_encoder_3` folder (`T5EncoderModel`, safetensors).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg: T5Config = read_config(&cfg_path, &[])?;
        let (gated, act) = cfg
            .feed_forward()
            .with_context(|| cfg_path.display().to_string())?;
        let w = Weights::open(&find_weight_files(dir, "model")?, device, dtype)?;
        let (d, inner) = (cfg.d_model, cfg.num_heads * cfg.d_kv);
        // The embedding is tied: checkpoints store it as `shared` or under the encoder.
        let embed = if w.contains("shared.weight") {
            w.get((cfg.vocab_size, d), "shared.weight")?
        } else {
            w.get((cfg.vocab_size, d), "encoder.embed_tokens.weight")?
        };
        let enc = w.pp("encoder");
        let relative_bias = enc.get(
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        )?;
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let b = enc.pp(format!("block.{i}.layer"));
                let a = b.pp("0.SelfAttention");
                let f = b.pp("1.DenseReluDense");
                let (wi, wi_gate) = if gated {
                    (
                        Linear::load(&f.pp("wi_0"), d, cfg.d_ff, false)?,
                        Some(Linear::load(&f.pp("wi_1"), d, cfg.d_ff, false)?),
                    )
                } else {
                    (Linear::load(&f.pp("wi"), d, cfg.d_ff, false)?, None)
                };
                Ok(Block {
                    norm_attn: RmsNorm::load(&b.pp("0.layer_norm"), d, cfg.layer_norm_epsilon)?,
                    q: Linear::load(&a.pp("q"), d, inner, false)?,
                    k: Linear::load(&a.pp("k"), d, inner, false)?,
                    v: Linear::load(&a.pp("v"), d, inner, false)?,
                    o: Linear::load(&a.pp("o"), inner, d, false)?,
                    norm_ff: RmsNorm::load(&b.pp("1.layer_norm"), d, cfg.layer_norm_epsilon)?,
                    wi,
                    wi_gate,
                    wo: Linear::load(&f.pp("wo"), cfg.d_ff, d, false)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = RmsNorm::load(&enc.pp("final_layer_norm"), d, cfg.layer_norm_epsilon)?;
        Ok(T5Encoder {
            embed,
            relative_bias,
            blocks,
            final_norm,
            act,
            config: cfg,
            device: device.clone(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// The position bias `(heads, n, n)` every layer adds to its attention scores.
    fn position_bias(&self, n: usize) -> Result<Tensor> {
        let ids: Vec<u32> = (0..n as i64)
            .flat_map(|i| (0..n as i64).map(move |j| (i, j)))
            .map(|(i, j)| {
                relative_bucket(
                    j - i,
                    self.config.relative_attention_num_buckets,
                    self.config.relative_attention_max_distance,
                )
            })
            .collect();
        let ids = Tensor::from_vec(ids, n * n, &self.device)?;
        let bias = self.relative_bias.index_select(&ids, 0)?; // (n*n, heads)
        Ok(bias.reshape((n, n, ()))?.permute((2, 0, 1))?.contiguous()?)
    }

    /// The last hidden state `(batch, n, d_model)` for rows of ids (all of length n), with
    /// every position attending to every other (no attention mask, as SD 3 calls it).
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let b = ids.len();
        let n = ids.first().map(Vec::len).unwrap_or(0);
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let flat = Tensor::from_vec(flat, b * n, &self.device)?;
        let mut x = self.embed.index_select(&flat, 0)?.reshape((b, n, ()))?;
        let heads = self.config.num_heads;
        // The bias goes in as an additive mask per (batch*head) row, in the scores' dtype.
        let bias = self
            .position_bias(n)?
            .unsqueeze(0)?
            .broadcast_as((b, heads, n, n))?
            .reshape((b * heads, n, n))?
            .to_dtype(x.dtype())?;
        for block in &self.blocks {
            let h = block.norm_attn.forward(&x)?;
            let q = split_heads(&block.q.forward(&h)?, heads)?;
            let k = split_heads(&block.k.forward(&h)?, heads)?;
            let v = split_heads(&block.v.forward(&h)?, heads)?;
            let a = attention_with_bias(&q, &k, &v, &bias)?;
            x = (x + block.o.forward(&merge_heads(&a, heads)?)?)?;
            let h = block.norm_ff.forward(&x)?;
            let up = self.activate(&block.wi.forward(&h)?)?;
            let up = match &block.wi_gate {
                Some(g) => (up * g.forward(&h)?)?,
                None => up,
            };
            x = (x + block.wo.forward(&up)?)?;
        }
        self.final_norm.forward(&x)
    }

    fn activate(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.act {
            Act::Relu => x.relu()?,
            Act::GeluNew => x.gelu()?,
            Act::Gelu => x.gelu_erf()?,
            Act::Silu => x.silu()?,
        })
    }
}

/// transformers' `_relative_position_bucket` (bidirectional) of key offset `rel` = key
/// position - query position; the large-distance branch in f32 as torch computes it.
fn relative_bucket(rel: i64, buckets: usize, max_distance: usize) -> u32 {
    let half = (buckets / 2) as i64;
    let base = if rel > 0 { half } else { 0 };
    let n = rel.abs();
    let max_exact = half / 2;
    if n < max_exact {
        return (base + n) as u32;
    }
    let log_ratio = (max_distance as f64 / max_exact as f64).ln() as f32;
    let scaled = (n as f32 / max_exact as f32).ln() / log_ratio * (half - max_exact) as f32;
    (base + (max_exact + scaled as i64).min(half - 1)) as u32
}

/// Unscaled attention (T5 folds the scale into its weights) with an additive bias; not the
/// engine's fused kernel, which has no bias input (T5's 256 tokens make small score matrices).
fn attention_with_bias(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?;
    Ok(probs.to_dtype(v.dtype())?.matmul(v)?)
}

/// The T5 tokenizer from `tokenizer_3/tokenizer.json`, as transformers' `T5TokenizerFast`
/// called with `padding="max_length", truncation=True, add_special_tokens=True`.
pub struct T5Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
    eos_id: Option<u32>,
}

impl T5Tokenizer {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let pad_id = inner
            .token_to_id("<pad>")
            .with_context(|| format!("{}: no <pad> token", path.display()))?;
        let eos_id = inner.token_to_id("</s>");
        Ok(T5Tokenizer {
            inner,
            pad_id,
            eos_id,
        })
    }

    /// Ids of `text` with the closing `</s>`, truncated to `len` (keeping `</s>` last) and
    /// padded with `<pad>` to `len`.
    pub fn encode_padded(&self, text: &str, len: usize) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("T5 tokenizer: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > len {
            let ends_with_eos = self.eos_id.is_some() && ids.last().copied() == self.eos_id;
            ids.truncate(len);
            if ends_with_eos && let (Some(eos), Some(last)) = (self.eos_id, ids.last_mut()) {
                *last = eos;
            }
        }
        ids.resize(len, self.pad_id);
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_transformers() {
        let got: Vec<u32> = [0, -1, -7, -8, -12, -16, -100, -300, 1, 7, 8, 20, 500]
            .iter()
            .map(|&r| relative_bucket(r, 32, 128))
            .collect();
        // transformers 5.23's T5Attention._relative_position_bucket(bidirectional=True,
        // num_buckets=32, max_distance=128) on the same offsets.
        assert_eq!(got, vec![0, 1, 7, 8, 9, 10, 15, 15, 17, 23, 24, 26, 31]);
    }
}
