//! What the UNet is conditioned on: prompt embeddings from the text encoder(s) (SD 1.x / 2.x:
//! one, SDXL: two), the negative prompt for classifier-free guidance, SDXL's added
//! conditioning (pooled text embeddings and micro-conditioning time ids), and LCM's guidance
//! embedding.

use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

use super::UnetPipeline;
use crate::clip::ClipTextEncoder;
use crate::emphasis::{self, Chunk};
use crate::tokenizer::ClipTokenizer;
use crate::{Emphasis, GenerateParams};

#[derive(Clone)]
pub(super) struct TextEncoderSlot {
    pub tokenizer: Arc<ClipTokenizer>,
    pub encoder: Arc<ClipTextEncoder>,
}

/// Prompt conditioning for one prompt (batch 1).
struct Conditioning {
    /// `(1, tokens, cross_attention_dim)`
    embeds: Tensor,
    /// `(1, projection_dim)` (SDXL)
    pooled: Option<Tensor>,
}

/// A prompt's encoding before it is joined: each text encoder's chunks (`(1, 77, dim)`).
struct Encoded {
    chunks: Vec<Vec<Tensor>>,
    pooled: Option<Tensor>,
}

impl Encoded {
    /// Chunks per encoder.
    fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Appends `empty`'s first chunk until every encoder has `len`.
    fn fill_up(&mut self, empty: &Encoded, len: usize) {
        for (mine, theirs) in self.chunks.iter_mut().zip(&empty.chunks) {
            while mine.len() < len {
                mine.push(theirs[0].clone());
            }
        }
    }

    /// The chunks one after the other, the encoders side by side (SDXL's concatenation).
    fn joined(&self) -> Result<Conditioning> {
        let per_encoder = self
            .chunks
            .iter()
            .map(|c| Tensor::cat(c, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Conditioning {
            embeds: Tensor::cat(&per_encoder, candle_core::D::Minus1)?,
            pooled: self.pooled.clone(),
        })
    }
}

/// Everything the UNet takes besides the latents and the timestep, for the whole
/// batch: with CFG the unconditional half first, then the conditional half.
#[derive(Clone)]
pub(super) struct UnetConditioning {
    /// `(batch, tokens, cross_attention_dim)`
    pub context: Tensor,
    /// SDXL `text_embeds`, `(batch, projection_dim)`; SD 1.x / 2.x: `(batch, 0)`, unused
    /// (their UNet has no added conditioning and ignores it).
    pub text_embeds: Tensor,
    /// SDXL `time_ids`, `batch` rows of 6 (on the host, see [`crate::unet::AddedCond`]);
    /// SD 1.x / 2.x: empty, unused.
    pub time_ids: Vec<f32>,
    /// LCM's guidance embedding, `(batch, time_cond_proj_dim)`.
    pub timestep_cond: Option<Tensor>,
    /// Inpainting: the mask and the masked image's latents, `(batch, 1 + latent, h, w)`,
    /// put beside the latents at every step.
    pub latent_extra: Option<Tensor>,
}

impl UnetConditioning {
    /// The conditioning of several requests run as one batch (`counts[i]` images each):
    /// with CFG all unconditional rows first, then all conditional ones, as the
    /// denoising loop splits them.
    pub fn join(parts: &[UnetConditioning], counts: &[usize], do_cfg: bool) -> Result<Self> {
        if parts.len() == 1 {
            return Ok(parts[0].clone());
        }
        let total: usize = counts.iter().sum::<usize>() * if do_cfg { 2 } else { 1 };
        let rows = |pick: &dyn Fn(&UnetConditioning) -> &Tensor| -> Result<Tensor> {
            let first = pick(&parts[0]);
            if first.dim(1)? == 0 {
                // The unused placeholders of SD 1.x / 2.x.
                return Ok(Tensor::zeros((total, 0), first.dtype(), first.device())?);
            }
            let halves = if do_cfg { 2 } else { 1 };
            let mut pieces = Vec::new();
            for half in 0..halves {
                for (part, &n) in parts.iter().zip(counts) {
                    pieces.push(pick(part).narrow(0, half * n, n)?);
                }
            }
            Ok(Tensor::cat(&pieces, 0)?)
        };
        Ok(UnetConditioning {
            context: rows(&|c| &c.context)?,
            text_embeds: rows(&|c| &c.text_embeds)?,
            time_ids: {
                let halves = if do_cfg { 2 } else { 1 };
                let mut ids = Vec::new();
                for half in 0..halves {
                    for (part, &n) in parts.iter().zip(counts) {
                        let per_row = part.time_ids.len() / (n * halves).max(1);
                        ids.extend_from_slice(
                            &part.time_ids[half * n * per_row..(half + 1) * n * per_row],
                        );
                    }
                }
                ids
            },
            timestep_cond: match &parts[0].timestep_cond {
                Some(_) => Some(rows(&|c| {
                    c.timestep_cond
                        .as_ref()
                        .expect("every part of a batch has the same UNet")
                })?),
                None => None,
            },
            latent_extra: match &parts[0].latent_extra {
                Some(_) => Some(rows(&|c| {
                    c.latent_extra
                        .as_ref()
                        .expect("every part of a batch has the same UNet")
                })?),
                None => None,
            },
        })
    }
}

impl UnetPipeline {
    /// Encodes one prompt (`text_2` for SDXL's second encoder), in chunks of 77 tokens per
    /// text encoder (one, unless A1111 emphasis reads a longer prompt): SD 1.x / 2.x: the last
    /// hidden state (after the final layer norm) of the text encoder, with the attention mask
    /// when its config sets `use_attention_mask`, or with `clip_skip` the final layer norm of
    /// the output `clip_skip` layers before the last; SDXL: each encoder's penultimate hidden
    /// state (no mask, as diffusers; `clip_skip` more layers back), pooled from the last
    /// encoder's first chunk.
    fn encode_prompt(
        &self,
        texts: [&str; 2],
        clip_skip: Option<usize>,
        emphasis: Emphasis,
    ) -> Result<Encoded> {
        let mut chunks = Vec::with_capacity(self.encoders.len());
        let mut pooled = None;
        for (slot, text) in self.encoders.iter().zip(texts) {
            let tok = &slot.tokenizer;
            let rows: Vec<Chunk> = match emphasis {
                Emphasis::None => {
                    let (ids, len) = tok.encode_padded_with_len(&tok.convert_prompt(text)?)?;
                    let weights = vec![1.0; ids.len()];
                    vec![Chunk { ids, weights, len }]
                }
                Emphasis::A1111 => tok.a1111_chunks(text)?,
            };
            let ids: Vec<Vec<u32>> = rows.iter().map(|c| c.ids.clone()).collect();
            let lengths: Vec<usize> = rows.iter().map(|c| c.len).collect();
            // diffusers passes the attention mask only to SD 1.x / 2.x encoders that ask for it.
            let mask = (!self.arch.is_xl() && slot.encoder.config.use_attention_mask)
                .then_some(&lengths[..]);
            let out = slot.encoder.forward_masked(&ids, mask)?;
            let n = out.hidden_states.len();
            let z = match (self.arch.is_xl(), clip_skip) {
                (true, k) => out.hidden_states[n - 2 - k.unwrap_or(0)].clone(),
                (false, None) => out.last_hidden_state,
                (false, Some(k)) => slot.encoder.final_norm(&out.hidden_states[n - 1 - k])?,
            };
            let mut zs = Vec::with_capacity(rows.len());
            for (r, c) in rows.iter().enumerate() {
                zs.push(emphasis::reweight(&z.narrow(0, r, 1)?, &c.weights)?);
            }
            chunks.push(zs);
            if let Some(te) = out.text_embeds {
                pooled = Some(te.narrow(0, 0, 1)?);
            }
        }
        Ok(Encoded { chunks, pooled })
    }

    /// How many 77-token chunks the request's prompts take (the longer of the prompt and,
    /// with `do_cfg`, the negative prompt): requests share a batch only with the same count.
    pub(super) fn text_chunks(&self, params: &GenerateParams, do_cfg: bool) -> Result<usize> {
        if params.emphasis == Emphasis::None {
            return Ok(1);
        }
        let (prompts, negatives) = self.prompts(params);
        let zeroed = params.negative_prompt.is_none() && self.force_zeros_for_empty_prompt;
        let mut most = 1;
        for (slot, (p, n)) in self.encoders.iter().zip(prompts.into_iter().zip(negatives)) {
            let tok = &slot.tokenizer;
            let count = |text: &str| -> Result<usize> { Ok(tok.a1111_chunks(text)?.len()) };
            most = most.max(count(p)?);
            if do_cfg && !zeroed {
                most = most.max(count(n)?);
            }
        }
        Ok(most)
    }

    /// The prompts of each text encoder, as diffusers picks them: an empty or missing second
    /// prompt is the first, a missing negative prompt is "".
    fn prompts<'a>(&self, params: &'a GenerateParams) -> ([&'a str; 2], [&'a str; 2]) {
        let prompt_2 = params
            .prompt_2
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(&params.prompt);
        let negative = params.negative_prompt.as_deref().unwrap_or("");
        let negative_2 = params
            .negative_prompt_2
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(negative);
        ([&params.prompt, prompt_2], [negative, negative_2])
    }

    /// The largest `clip_skip` this model's text encoders allow.
    pub(super) fn max_clip_skip(&self) -> usize {
        let layers = self
            .encoders
            .iter()
            .map(|e| e.encoder.config.num_hidden_layers)
            .min()
            .unwrap_or(0);
        // SD: hidden_states[-(k + 1)] of layers + 1; SDXL: [-(k + 2)].
        if self.arch.is_xl() {
            layers.saturating_sub(1)
        } else {
            layers
        }
    }

    /// The conditioning of `n` images of one request; `do_cfg` adds the negative half.
    pub(super) fn condition(
        &self,
        params: &GenerateParams,
        n: usize,
        do_cfg: bool,
    ) -> Result<UnetConditioning> {
        let (w, h) = (params.width, params.height);
        let (prompts, negatives) = self.prompts(params);
        // The negative prompt is encoded without `clip_skip`, as diffusers does.
        let mut cond = self.encode_prompt(prompts, params.clip_skip, params.emphasis)?;
        let uncond = if !do_cfg {
            None
        } else if params.negative_prompt.is_none() && self.force_zeros_for_empty_prompt {
            let c = cond.joined()?;
            Some(Conditioning {
                embeds: c.embeds.zeros_like()?,
                pooled: match &c.pooled {
                    Some(p) => Some(p.zeros_like()?),
                    None => None,
                },
            })
        } else {
            let mut u = self.encode_prompt(negatives, None, params.emphasis)?;
            if cond.len() != u.len() {
                // A1111 makes them the same length with the empty prompt's encoding.
                let empty = self.encode_prompt(["", ""], None, params.emphasis)?;
                cond.fill_up(&empty, u.len());
                u.fill_up(&empty, cond.len());
            }
            Some(u.joined()?)
        };
        let cond = cond.joined()?;
        let repeat = |t: &Tensor| -> Result<Tensor> {
            let dims = t.dims().to_vec();
            let mut rep = vec![1usize; dims.len()];
            rep[0] = n;
            Ok(t.repeat(rep.as_slice())?)
        };
        if !self.arch.is_xl() {
            let context = match &uncond {
                Some(u) => Tensor::cat(&[repeat(&u.embeds)?, repeat(&cond.embeds)?], 0)?,
                None => repeat(&cond.embeds)?,
            };
            // Empty placeholders (kept on the CPU: a zero-sized GPU allocation is not portable).
            let batch = context.dim(0)?;
            let unused = Tensor::zeros((batch, 0), self.dtype, &Device::Cpu)?;
            return Ok(UnetConditioning {
                context,
                text_embeds: unused,
                time_ids: Vec::new(),
                timestep_cond: self.timestep_cond(params.guidance, n, do_cfg)?,
                latent_extra: None,
            });
        }
        let (context, text_embeds) = {
            let pooled = cond
                .pooled
                .as_ref()
                .context("SDXL needs pooled text embeddings")?;
            match &uncond {
                Some(u) => {
                    let up = u
                        .pooled
                        .as_ref()
                        .context("SDXL needs pooled text embeddings")?;
                    (
                        Tensor::cat(&[repeat(&u.embeds)?, repeat(&cond.embeds)?], 0)?,
                        Tensor::cat(&[repeat(up)?, repeat(pooled)?], 0)?,
                    )
                }
                None => (repeat(&cond.embeds)?, repeat(pooled)?),
            }
        };
        let batch = context.dim(0)?;
        let time_ids = if self.aesthetics {
            // diffusers' defaults: aesthetic_score 6, negative_aesthetic_score 2.5.
            let row = |score: f32| [h as f32, w as f32, 0.0, 0.0, score];
            let mut ids = Vec::with_capacity(batch * 5);
            if uncond.is_some() {
                ids.extend(row(2.5).repeat(n));
            }
            ids.extend(row(6.0).repeat(n));
            ids
        } else {
            crate::unet::sdxl_time_ids(w, h, batch)
        };
        Ok(UnetConditioning {
            context,
            text_embeds,
            time_ids,
            timestep_cond: self.timestep_cond(params.guidance, n, do_cfg)?,
            latent_extra: None,
        })
    }

    /// An LCM UNet's (`time_cond_proj_dim`) guidance embedding of `guidance - 1`, as all
    /// diffusers SD / SDXL / LCM pipelines compute it.
    fn timestep_cond(&self, guidance: f64, n: usize, do_cfg: bool) -> Result<Option<Tensor>> {
        Ok(match self.unet.config.time_cond_proj_dim {
            Some(dim) => {
                let c = guidance_embedding(guidance - 1.0, dim, n, &self.device)?
                    .to_dtype(self.dtype)?;
                Some(if do_cfg {
                    Tensor::cat(&[&c, &c], 0)?
                } else {
                    c
                })
            }
            None => None,
        })
    }
}

/// LCM's `get_guidance_scale_embedding(w, embedding_dim)` for `n` samples.
fn guidance_embedding(w: f64, dim: usize, n: usize, device: &Device) -> Result<Tensor> {
    let w = (w as f32) * 1000.0;
    let half = dim / 2;
    let base = (10000f32).ln() / (half as f32 - 1.0);
    let mut row = Vec::with_capacity(dim);
    let args: Vec<f32> = (0..half).map(|i| w * (i as f32 * -base).exp()).collect();
    row.extend(args.iter().map(|a| a.sin()));
    row.extend(args.iter().map(|a| a.cos()));
    if dim % 2 == 1 {
        row.push(0.0);
    }
    let data: Vec<f32> = (0..n).flat_map(|_| row.iter().copied()).collect();
    Ok(Tensor::from_vec(data, (n, dim), device)?)
}
