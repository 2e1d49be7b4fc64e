//! Variants of a loaded model that share what they do not change: another VAE, or LoRAs
//! merged into the UNet and text encoders. The base model is never reloaded.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Tensor;

use super::UnetPipeline;
use super::load::load_vae;
use crate::config::OneOrMany;
use crate::embeddings::Embedding;
use crate::error::EngineError;
use crate::lora::{Component, Lora, Targets};

impl UnetPipeline {
    /// This model with the VAE in `dir` (a diffusers `AutoencoderKL` folder: config.json
    /// and weights) in place of its own, as diffusers' `vae=AutoencoderKL.from_pretrained(dir)`.
    /// The VAE must have the model's latent channels.
    pub fn with_vae(&self, dir: &Path) -> Result<UnetPipeline> {
        let vae = load_vae(dir, self.arch.is_xl(), &self.device, self.unet.dtype())
            .with_context(|| format!("loading the VAE in {}", dir.display()))?;
        let (theirs, ours) = (vae.config.latent_channels, self.vae.config.latent_channels);
        if theirs != ours {
            return Err(EngineError::invalid(
                "vae",
                format!(
                    "the VAE in {} has {theirs} latent channels; this model's has {ours}",
                    dir.display()
                ),
            ));
        }
        let mut p = self.clone();
        p.vae = Arc::new(vae);
        Ok(p)
    }

    /// This model with `loras` merged in, each at its weight (diffusers'
    /// `load_lora_weights` of each, then `set_adapters(names, adapter_weights=weights)`: the
    /// same weight for the UNet and the text encoders). A LoRA none of whose layers this
    /// model has, or one whose layers have other shapes, is an invalid `loras`; layers the
    /// model lacks are skipped with a log line, as diffusers does.
    pub fn with_loras(&self, loras: &[(&Lora, f64)]) -> Result<UnetPipeline> {
        if loras.is_empty() {
            return Ok(self.clone());
        }
        let sgm_layers = match &self.unet.config.layers_per_block {
            OneOrMany::One(n) => *n,
            OneOrMany::Many(v) => v.first().copied().unwrap_or(2),
        };
        let unet_targets = Targets::new(self.unet.weights(), "");
        let encoder_targets: Vec<Targets> = self
            .encoders
            .iter()
            .map(|e| Targets::new(e.encoder.weights(), "text_model."))
            .collect();
        let mut unet = HashMap::new();
        let mut encoders: Vec<HashMap<String, Tensor>> = vec![HashMap::new(); self.encoders.len()];
        for &(lora, weight) in loras {
            if !weight.is_finite() {
                return Err(EngineError::invalid(
                    "loras",
                    format!(
                        "{}: the strength {weight} is not a number",
                        lora.path.display()
                    ),
                ));
            }
            let mut matched = 0;
            let mut skipped = 0;
            let (m, s) = lora.add_deltas(
                Component::Unet,
                &unet_targets,
                self.arch.is_xl().then_some(sgm_layers),
                weight,
                &self.device,
                &mut unet,
            )?;
            (matched, skipped) = (matched + m, skipped + s);
            for (i, targets) in encoder_targets.iter().enumerate() {
                let (m, s) = lora.add_deltas(
                    Component::TextEncoder(i),
                    targets,
                    None,
                    weight,
                    &self.device,
                    &mut encoders[i],
                )?;
                (matched, skipped) = (matched + m, skipped + s);
            }
            // Layers for a text encoder this model does not have (an SDXL LoRA's te2 on SD 1.x).
            skipped += lora.len().saturating_sub(matched + skipped);
            if matched == 0 {
                return Err(EngineError::invalid(
                    "loras",
                    format!(
                        "{} does not fit this model ({}): none of its {} layers is in it",
                        lora.path.display(),
                        self.arch.name(),
                        lora.len()
                    ),
                ));
            }
            if skipped > 0 {
                tracing::warn!(lora = %lora.path.display(), matched, skipped, "LoRA layers this model does not have were skipped");
            }
        }
        self.with_patches(unet, encoders)
            .context("merging LoRA weights")
    }

    /// This model with textual-inversion `embeddings` in its tokenizers and text encoders
    /// (diffusers' `load_textual_inversion` of each; SDXL `clip_l` / `clip_g` files into
    /// each encoder under one token, as diffusers' documentation loads them). Vectors of a
    /// size no text encoder has, or a token already in the vocabulary, are an invalid
    /// `embeddings`.
    pub fn with_embeddings(&self, embeddings: &[&Embedding]) -> Result<UnetPipeline> {
        let invalid = |e: &Embedding, why: String| {
            EngineError::invalid("embeddings", format!("{}: {why}", e.path.display()))
        };
        let hidden: Vec<usize> = self
            .encoders
            .iter()
            .map(|s| s.encoder.config.hidden_size)
            .collect();
        for e in embeddings {
            if let Some(h) = e.any_hidden()
                && !hidden.contains(&h)
            {
                return Err(invalid(
                    e,
                    format!(
                        "vectors of size {h} fit none of this model's text encoders (sizes {hidden:?})"
                    ),
                ));
            }
        }
        let mut p = self.clone();
        for (i, slot) in p.encoders.iter_mut().enumerate() {
            let mut tokens = Vec::new();
            let mut rows = Vec::new();
            let mut multi = Vec::new();
            for e in embeddings {
                let first_fit = e
                    .any_hidden()
                    .and_then(|h| hidden.iter().position(|&x| x == h))
                    == Some(i);
                let Some(v) = e.for_encoder(i, first_fit) else {
                    continue;
                };
                if v.dim(1)? != hidden[i] {
                    return Err(invalid(
                        e,
                        format!(
                            "vectors of size {} for a text encoder of size {}",
                            v.dim(1)?,
                            hidden[i]
                        ),
                    ));
                }
                let names = e.tokens(v.dim(0)?);
                if names.len() > 1 {
                    multi.push((e.token.clone(), names.join(" ")));
                }
                tokens.extend(names);
                rows.push(v.clone());
            }
            if tokens.is_empty() {
                continue;
            }
            let (mut tokenizer, ids) = slot
                .tokenizer
                .with_added_tokens(&tokens)
                .map_err(|e| EngineError::invalid("embeddings", format!("{e:#}")))?;
            if ids.windows(2).any(|w| w[1] != w[0] + 1) {
                anyhow::bail!("textual inversion: the new token ids are not consecutive ({ids:?})");
            }
            for (token, replacement) in multi {
                let id = ids[tokens.iter().position(|t| *t == token).expect("listed")];
                tokenizer.expand(token, replacement, id);
            }
            slot.tokenizer = Arc::new(tokenizer);
            slot.encoder = Arc::new(
                slot.encoder
                    .with_extra_tokens(ids[0], &Tensor::cat(&rows, 0)?)?,
            );
        }
        Ok(p)
    }

    /// This model with `unet` added to its UNet's weights and `encoders[i]` to text encoder
    /// `i`'s (full weight names; see [`crate::weights::Weights::patched`]). Components with
    /// no patch are shared.
    fn with_patches(
        &self,
        unet: HashMap<String, Tensor>,
        mut encoders: Vec<HashMap<String, Tensor>>,
    ) -> Result<UnetPipeline> {
        let mut p = self.clone();
        if !unet.is_empty() {
            p.unet = Arc::new(self.unet.patched(unet)?);
        }
        encoders.resize_with(p.encoders.len(), HashMap::new);
        for (slot, patches) in p.encoders.iter_mut().zip(encoders) {
            if !patches.is_empty() {
                slot.encoder = Arc::new(slot.encoder.patched(patches)?);
            }
        }
        Ok(p)
    }
}
