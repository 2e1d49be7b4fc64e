//! CLIP text encoder: transformers' `CLIPTextModel` and `CLIPTextModelWithProjection`.
//!
//! Weight names are those of the Hugging Face checkpoints (`text_model.embeddings...`,
//! `text_model.encoder.layers.N...`, `text_model.final_layer_norm`, `text_projection`);
//! transformers 5 writes a bare `CLIPTextModel` without the `text_model.` prefix, which is
//! accepted too.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};

use super::config::{ClipTextConfig, read_config};
use super::nn::{LayerNorm, Linear, gelu, merge_heads, quick_gelu, split_heads};
use super::weights::{Weights, find_weight_files};

#[derive(Clone, Copy, Debug)]
pub(crate) enum Activation {
    QuickGelu,
    Gelu,
}

/// The sizes of a CLIP encoder layer (text or vision).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerDims {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub eps: f64,
}

/// One CLIP transformer layer: the text encoder's (with its causal mask) and the vision
/// tower's (no mask).
pub(crate) struct EncoderLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln1: LayerNorm,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: Activation,
}

impl EncoderLayer {
    fn load(w: &Weights, cfg: &ClipTextConfig, act: Activation) -> Result<Self> {
        let dims = LayerDims {
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            intermediate: cfg.intermediate_size,
            eps: cfg.layer_norm_eps,
        };
        Self::load_dims(w, dims, act)
    }

    pub(crate) fn load_dims(w: &Weights, d: LayerDims, act: Activation) -> Result<Self> {
        let h = d.hidden;
        let a = w.pp("self_attn");
        let m = w.pp("mlp");
        Ok(EncoderLayer {
            q: Linear::load(&a.pp("q_proj"), h, h, true)?,
            k: Linear::load(&a.pp("k_proj"), h, h, true)?,
            v: Linear::load(&a.pp("v_proj"), h, h, true)?,
            out: Linear::load(&a.pp("out_proj"), h, h, true)?,
            ln1: LayerNorm::load(&w.pp("layer_norm1"), h, d.eps)?,
            ln2: LayerNorm::load(&w.pp("layer_norm2"), h, d.eps)?,
            fc1: Linear::load(&m.pp("fc1"), h, d.intermediate, true)?,
            fc2: Linear::load(&m.pp("fc2"), d.intermediate, h, true)?,
            heads: d.heads,
            act,
        })
    }

    /// `mask` is added to the attention scores (the text encoder's causal mask).
    pub(crate) fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let residual = x;
        let h = self.ln1.forward(x)?;
        let (_, _, c) = h.dims3()?;
        let head_dim = c / self.heads;
        let scale = (head_dim as f64).powf(-0.5);
        let q = split_heads(&self.q.forward(&h)?, self.heads)?;
        let k = split_heads(&self.k.forward(&h)?, self.heads)?;
        let v = split_heads(&self.v.forward(&h)?, self.heads)?;
        // 77 tokens: no need for the chunked attention; apply the causal mask to the scores.
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let attn = merge_heads(&probs.matmul(&v)?, self.heads)?;
        let x = (residual + self.out.forward(&attn)?)?;
        let residual = &x;
        let h = self.ln2.forward(&x)?;
        let h = self.fc1.forward(&h)?;
        let h = match self.act {
            Activation::QuickGelu => quick_gelu(&h)?,
            Activation::Gelu => gelu(&h)?,
        };
        let h = self.fc2.forward(&h)?;
        Ok((residual + h)?)
    }
}

/// What the encoder returns for a batch of token ids.
pub struct ClipOutput {
    /// Output of every layer's input and output: `hidden_states[0]` is the embeddings,
    /// `hidden_states[i]` the output of layer `i` (before the final layer norm), as
    /// transformers' `output_hidden_states=True`.
    pub hidden_states: Vec<Tensor>,
    /// `final_layer_norm(hidden_states[-1])`.
    pub last_hidden_state: Tensor,
    /// The final-normed state at the EOS position (transformers' `pooler_output`).
    pub pooled: Tensor,
    /// `text_projection(pooled)` for `CLIPTextModelWithProjection`.
    pub text_embeds: Option<Tensor>,
}

pub struct ClipTextEncoder {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    projection: Option<Linear>,
    pub config: ClipTextConfig,
    /// The class named in config.json `architectures` / model_index.json.
    pub with_projection: bool,
    /// The checkpoint's root weights, to build a patched copy ([`Self::patched`]).
    weights: Weights,
    /// Textual-inversion rows for token ids from the first on (`(first, (n, hidden))`).
    extra: Option<(u32, Tensor)>,
    device: Device,
}

impl ClipTextEncoder {
    /// Loads `dir` (a `text_encoder*` folder). `with_projection` is true for
    /// `CLIPTextModelWithProjection`.
    pub fn load(dir: &Path, with_projection: bool, device: &Device, dtype: DType) -> Result<Self> {
        let cfg: ClipTextConfig = read_config(&dir.join("config.json"), &[])?;
        cfg.validate()
            .with_context(|| format!("{}", dir.join("config.json").display()))?;
        let files = find_weight_files(dir, "model")?;
        let root = Weights::open(&files, device, dtype)?;
        Self::build(&root, cfg, with_projection)
    }

    /// Builds the encoder from `cfg` and the checkpoint's root weights.
    pub fn build(root: &Weights, cfg: ClipTextConfig, with_projection: bool) -> Result<Self> {
        cfg.validate()?;
        let prefixed = root.contains("text_model.embeddings.token_embedding.weight");
        let w = if prefixed {
            root.pp("text_model")
        } else {
            root.clone()
        };
        let act = if cfg.hidden_act == "gelu" {
            Activation::Gelu
        } else {
            Activation::QuickGelu
        };
        let h = cfg.hidden_size;
        let emb = w.pp("embeddings");
        let token_embedding = emb.get((cfg.vocab_size, h), "token_embedding.weight")?;
        let position_embedding = emb.get(
            (cfg.max_position_embeddings, h),
            "position_embedding.weight",
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(&w.pp(format!("encoder.layers.{i}")), &cfg, act))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::load(&w.pp("final_layer_norm"), h, cfg.layer_norm_eps)?;
        let projection = if with_projection {
            Some(Linear::load(
                &root.pp("text_projection"),
                h,
                cfg.projection_dim,
                false,
            )?)
        } else {
            None
        };
        Ok(ClipTextEncoder {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            projection,
            config: cfg,
            with_projection,
            weights: root.detached(),
            extra: None,
            device: root.device().clone(),
        })
    }

    /// This encoder with `rows` (`(n, hidden)`) as the embeddings of token ids `first`,
    /// `first + 1`, ... (after any it has already), as transformers'
    /// `resize_token_embeddings` and diffusers' textual inversion set them.
    pub fn with_extra_tokens(&self, first: u32, rows: &Tensor) -> Result<Self> {
        let hidden = self.config.hidden_size;
        anyhow::ensure!(
            rows.rank() == 2 && rows.dim(1)? == hidden,
            "token embeddings of shape {:?} for an encoder of hidden size {hidden}",
            rows.dims()
        );
        let mut e = Self::build(&self.weights, self.config.clone(), self.with_projection)?;
        let rows = rows
            .to_dtype(self.token_embedding.dtype())?
            .to_device(&self.device)?;
        e.extra = Some(match &self.extra {
            Some((f, old)) => {
                anyhow::ensure!(
                    first == f + old.dim(0)? as u32,
                    "new token ids must follow the last ({} rows from {f}, new from {first})",
                    old.dim(0)?
                );
                (*f, Tensor::cat(&[old, &rows], 0)?)
            }
            None => (first, rows),
        });
        Ok(e)
    }

    /// The token embeddings of `flat` ids (with the textual-inversion rows).
    fn embed_tokens(&self, flat: &[u32]) -> Result<Tensor> {
        let index = |v: Vec<u32>| Tensor::from_vec(v, (flat.len(),), &self.device);
        let Some((first, rows)) = &self.extra else {
            return Ok(self
                .token_embedding
                .index_select(&index(flat.to_vec())?, 0)?);
        };
        let last = rows.dim(0)? as u32 - 1;
        let base: Vec<u32> = flat
            .iter()
            .map(|&i| if i < *first { i } else { 0 })
            .collect();
        let extra: Vec<u32> = flat
            .iter()
            .map(|&i| i.saturating_sub(*first).min(last))
            .collect();
        let mask: Vec<u8> = flat.iter().map(|&i| u8::from(i >= *first)).collect();
        let a = self.token_embedding.index_select(&index(base)?, 0)?;
        let b = rows.index_select(&index(extra)?, 0)?;
        let m = Tensor::from_vec(mask, (flat.len(), 1), &self.device)?.broadcast_as(a.shape())?;
        Ok(m.where_cond(&b, &a)?)
    }

    /// This encoder with `patches` added to the weights they name (full checkpoint names);
    /// the unchanged weights are shared with this one.
    pub fn patched(&self, patches: HashMap<String, Tensor>) -> Result<Self> {
        Self::build(
            &self.weights.patched(patches),
            self.config.clone(),
            self.with_projection,
        )
    }

    /// The checkpoint's root weights.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The final layer norm, for a hidden state other than the last (`clip_skip`).
    pub fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        self.final_layer_norm.forward(hidden)
    }

    /// Runs the encoder on `ids` (one row of token ids per prompt, all the same length), with
    /// the causal mask only (no attention mask), as diffusers calls it by default.
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<ClipOutput> {
        self.forward_masked(ids, None)
    }

    /// [`Self::forward`] with transformers' `attention_mask` given as the number of real
    /// (non-padding) tokens of each row: padding positions are then not attended to, on top of
    /// the causal mask. Only the padding positions' outputs change.
    pub fn forward_masked(
        &self,
        ids: &[Vec<u32>],
        lengths: Option<&[usize]>,
    ) -> Result<ClipOutput> {
        let b = ids.len();
        let n = ids.first().map(|r| r.len()).unwrap_or(0);
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let tok = self.embed_tokens(&flat)?.reshape((b, n, ()))?;
        let pos = self.position_embedding.i(0..n)?.unsqueeze(0)?;
        let mut x = tok.broadcast_add(&pos)?;
        let causal = |i: usize, j: usize, len: usize| {
            if j > i || j >= len {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        };
        let mask = match lengths {
            None => {
                let m: Vec<f32> = (0..n)
                    .flat_map(|i| (0..n).map(move |j| causal(i, j, n)))
                    .collect();
                Tensor::from_vec(m, (n, n), &self.device)?
            }
            Some(lengths) => {
                anyhow::ensure!(
                    lengths.len() == b,
                    "clip: {} lengths for {b} rows",
                    lengths.len()
                );
                // One (n, n) mask per row, repeated for each head: scores are (b * heads, n, n).
                let heads = self.config.num_attention_heads;
                let mut m = Vec::with_capacity(b * heads * n * n);
                for &len in lengths {
                    let row: Vec<f32> = (0..n)
                        .flat_map(|i| (0..n).map(move |j| causal(i, j, len.max(1))))
                        .collect();
                    for _ in 0..heads {
                        m.extend_from_slice(&row);
                    }
                }
                Tensor::from_vec(m, (b * heads, n, n), &self.device)?
            }
        }
        .to_dtype(x.dtype())?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(x.clone());
        for layer in &self.layers {
            x = layer.forward(&x, Some(&mask))?;
            hidden_states.push(x.clone());
        }
        let last = self.final_layer_norm.forward(&x)?;
        // transformers: with the legacy eos_token_id == 2, the EOS position is the argmax of
        // the ids (EOS has the largest id); otherwise the first position equal to eos_token_id.
        let eos_pos: Vec<usize> = ids
            .iter()
            .map(|row| {
                if self.config.eos_token_id == 2 {
                    argmax_first(row)
                } else {
                    row.iter()
                        .position(|&t| t as i64 == self.config.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect();
        let pooled = eos_pos
            .iter()
            .enumerate()
            .map(|(i, &p)| last.i((i, p)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = Tensor::stack(&pooled, 0)?;
        let text_embeds = match &self.projection {
            Some(p) => Some(p.forward(&pooled)?),
            None => None,
        };
        Ok(ClipOutput {
            hidden_states,
            last_hidden_state: last,
            pooled,
            text_embeds,
        })
    }
}

/// Index of the first maximum (torch's `argmax` on CPU).
fn argmax_first(row: &[u32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
