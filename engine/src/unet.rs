//! diffusers' `UNet2DConditionModel`, built from `unet/config.json`.
//!
//! Supports the SD 1.x / 2.x / SDXL family: `DownBlock2D`, `CrossAttnDownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `UpBlock2D`, `CrossAttnUpBlock2D`; per-block heads and
//! cross-attention dims; per-block or per-layer transformer depths (with SSD-1B's
//! `reverse_transformer_layers_per_block`); linear or conv projections; `upcast_attention`;
//! SDXL's `text_time` added conditioning; LCM's `time_cond_proj_dim`. Timesteps are per
//! sample (a tensor of batch size).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};

use super::config::{PerLayer, UNET_KEEP_NULL, UNetConfig, read_config};
use super::nn::{Conv2d, GroupNorm, Linear};
use super::unet_blocks::{
    AttnSpec, BlockCommon, DownBlock, DownSpec, MidBlockCrossAttn, UpBlock, UpSpec,
};
use super::weights::{Weights, find_weight_files};

/// `get_timestep_embedding` (diffusers), in f32 as torch computes it.
pub fn timestep_embedding(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let neg_log = (-(10000f64).ln()) as f32;
    let denom = (half as f64 - shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((neg_log * i as f32) / denom).exp())
        .collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = freqs.iter().map(|f| t * f).collect();
        let sin = args.iter().map(|a| a.sin());
        let cos = args.iter().map(|a| a.cos());
        if flip_sin_to_cos {
            out.extend(cos.clone());
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Ok(Tensor::from_vec(out, (timesteps.len(), dim), device)?)
}

/// `TimestepEmbedding`: linear_1, SiLU, linear_2 (optionally `cond_proj` for LCM).
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    cond_proj: Option<Linear>,
}

impl TimestepEmbedding {
    fn load(w: &Weights, in_dim: usize, dim: usize, cond_dim: Option<usize>) -> Result<Self> {
        Ok(TimestepEmbedding {
            linear_1: Linear::load(&w.pp("linear_1"), in_dim, dim, true)?,
            linear_2: Linear::load(&w.pp("linear_2"), dim, dim, true)?,
            cond_proj: match cond_dim {
                Some(c) => Some(Linear::load(&w.pp("cond_proj"), c, in_dim, false)?),
                None => None,
            },
        })
    }

    fn forward(&self, x: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let x = match (&self.cond_proj, cond) {
            (Some(p), Some(c)) => (x + p.forward(c)?)?,
            _ => x.clone(),
        };
        let h = self.linear_1.forward(&x)?.silu()?;
        self.linear_2.forward(&h)
    }
}

/// SDXL's added conditioning (`addition_embed_type="text_time"`).
pub struct AddedCond<'a> {
    /// Pooled text embeddings, `(batch, projection_dim)`.
    pub text_embeds: &'a Tensor,
    /// `batch` rows of 6: original size, crop top-left, target size (the refiner: 5, an
    /// aesthetic score for the target size). On the host: the UNet
    /// embeds them with sin/cos tables it builds there, so reading them back from a GPU
    /// would stall every step.
    pub time_ids: &'a [f32],
}

/// SDXL's `add_time_ids` for `rows` images generated at `width` x `height`: original size,
/// crop top-left (0, 0), target size, as diffusers' SDXL pipelines build them.
pub fn sdxl_time_ids(width: usize, height: usize, rows: usize) -> Vec<f32> {
    [height, width, 0, 0, height, width]
        .map(|v| v as f32)
        .repeat(rows)
}

/// What the UNet's blocks are, per block, read from its config once.
pub(crate) struct Layout {
    pub n: usize,
    pub layers: Vec<usize>,
    pub cross_dims: Vec<usize>,
    pub only_cross: Vec<bool>,
    pub tlpb: Vec<PerLayer>,
    pub heads: Vec<usize>,
    pub common: BlockCommon,
}

impl Layout {
    pub fn of(cfg: &UNetConfig) -> Result<Layout> {
        let n = cfg.block_out_channels.len();
        if n == 0 {
            bail!("unet config: block_out_channels is empty");
        }
        // diffusers quirk: `num_attention_heads` defaults to `attention_head_dim`, which is
        // then used as the number of heads.
        let heads = match &cfg.num_attention_heads {
            Some(h) => h.per_block(n, "num_attention_heads")?,
            None => cfg.attention_head_dim.per_block(n, "attention_head_dim")?,
        };
        Ok(Layout {
            n,
            layers: cfg.layers_per_block.per_block(n, "layers_per_block")?,
            cross_dims: cfg
                .cross_attention_dim
                .per_block(n, "cross_attention_dim")?,
            only_cross: cfg
                .only_cross_attention
                .per_block(n, "only_cross_attention")?,
            tlpb: cfg
                .transformer_layers_per_block
                .per_block(n, "transformer_layers_per_block")?,
            heads,
            common: BlockCommon {
                temb_ch: cfg
                    .time_embedding_dim
                    .unwrap_or(cfg.block_out_channels[0] * 4),
                groups: cfg.norm_num_groups.unwrap_or(32),
                eps: cfg.norm_eps,
                resnet_scale: cfg.resnet_out_scale_factor,
                use_linear_projection: cfg.use_linear_projection,
                upcast_attention: cfg.upcast_attention,
            },
        })
    }
}

/// The UNet's first half, which a ControlNet has too: the time (and SDXL's added)
/// embedding, `conv_in`, the down blocks and the mid block.
pub(crate) struct Encoder {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TimestepEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlockCrossAttn>,
}

impl Encoder {
    pub fn build(w: &Weights, cfg: &UNetConfig, lay: &Layout) -> Result<Encoder> {
        let boc = &cfg.block_out_channels;
        let n = lay.n;
        let time_embed_dim = lay.common.temb_ch;
        let k_in = cfg.conv_in_kernel;
        let conv_in = Conv2d::load(
            &w.pp("conv_in"),
            cfg.in_channels,
            boc[0],
            k_in,
            1,
            (k_in - 1) / 2,
        )?;
        let time_embedding = TimestepEmbedding::load(
            &w.pp("time_embedding"),
            boc[0],
            time_embed_dim,
            cfg.time_cond_proj_dim,
        )?;
        let add_embedding = if cfg.addition_embed_type.as_deref() == Some("text_time") {
            let in_dim = cfg.projection_class_embeddings_input_dim.unwrap_or(0);
            Some(TimestepEmbedding::load(
                &w.pp("add_embedding"),
                in_dim,
                time_embed_dim,
                None,
            )?)
        } else {
            None
        };
        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = boc[0];
        for (i, ty) in cfg.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = boc[i];
            down_blocks.push(DownBlock::load(
                &w.pp(format!("down_blocks.{i}")),
                &DownSpec {
                    in_ch,
                    out_ch,
                    layers: lay.layers[i],
                    attn: if ty == "CrossAttnDownBlock2D" {
                        Some(AttnSpec {
                            heads: lay.heads[i],
                            transformer_layers: lay.tlpb[i]
                                .per_layer(lay.layers[i], "transformer_layers_per_block")?,
                            cross_dim: lay.cross_dims[i],
                            only_cross_attention: lay.only_cross[i],
                        })
                    } else {
                        None
                    },
                    add_downsample: i + 1 < n,
                    downsample_padding: cfg.downsample_padding,
                },
                &lay.common,
            )?);
        }
        let mid_block = match cfg.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => Some(MidBlockCrossAttn::load(
                &w.pp("mid_block"),
                boc[n - 1],
                &AttnSpec {
                    heads: lay.heads[n - 1],
                    // diffusers: the last block's entry; a per-layer list gives its first depth.
                    transformer_layers: lay.tlpb[n - 1]
                        .per_layer(1, "transformer_layers_per_block")?,
                    cross_dim: lay.cross_dims[n - 1],
                    only_cross_attention: false,
                },
                cfg.mid_block_scale_factor,
                &lay.common,
            )?),
            _ => None,
        };
        Ok(Encoder {
            conv_in,
            time_embedding,
            add_embedding,
            down_blocks,
            mid_block,
        })
    }

    /// The time embedding (and SDXL's added one), after SiLU, as every block takes it.
    pub fn embed(
        &self,
        cfg: &UNetConfig,
        timesteps: &[f32],
        added: Option<&AddedCond>,
        timestep_cond: Option<&Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        let b = timesteps.len();
        let boc0 = cfg.block_out_channels[0];
        let t_emb =
            timestep_embedding(timesteps, boc0, cfg.flip_sin_to_cos, cfg.freq_shift, device)?
                .to_dtype(dtype)?;
        let timestep_cond = match timestep_cond {
            Some(c) => Some(c.to_dtype(dtype)?),
            None => None,
        };
        let mut emb = self
            .time_embedding
            .forward(&t_emb, timestep_cond.as_ref())?;
        if let Some(add) = &self.add_embedding {
            let a = added.context("unet: SDXL conditioning (text_embeds, time_ids) is required")?;
            let dim = cfg.addition_time_embed_dim.unwrap_or(0);
            // 6 per image (SDXL), 5 (its refiner: an aesthetic score for the target size).
            if a.time_ids.is_empty() || a.time_ids.len() % b != 0 {
                bail!("unet: {} time ids for a batch of {b}", a.time_ids.len());
            }
            let time_embeds =
                timestep_embedding(a.time_ids, dim, cfg.flip_sin_to_cos, cfg.freq_shift, device)?
                    .reshape((b, ()))?
                    .to_dtype(dtype)?;
            let add_embeds = Tensor::cat(&[&a.text_embeds.to_dtype(dtype)?, &time_embeds], 1)?;
            emb = (emb + add.forward(&add_embeds, None)?)?;
        }
        Ok(emb.silu()?)
    }

    /// `conv_in` (plus `extra`, a ControlNet's conditioning embedding, added after it),
    /// the down blocks and the mid block: the mid block's output and the skips (`conv_in`'s
    /// output first, the deepest last).
    pub fn forward(
        &self,
        sample: &Tensor,
        extra: Option<&Tensor>,
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = self.conv_in.forward(sample)?;
        if let Some(extra) = extra {
            h = (h + extra)?;
        }
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, s) = block.forward(&h, temb, context)?;
            h = out;
            skips.extend(s);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, temb, context)?;
        }
        Ok((h, skips))
    }
}

/// What ControlNets add to a UNet's skips and mid-block output (their sum).
#[derive(Clone, Debug)]
pub struct Residuals {
    /// One per skip, `conv_in`'s first.
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

pub struct UNet {
    encoder: Encoder,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    pub config: UNetConfig,
    /// What it was built from, to build a patched copy ([`UNet::patched`]).
    weights: Weights,
    device: Device,
    dtype: DType,
}

impl UNet {
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg: UNetConfig = read_config(&cfg_path, UNET_KEEP_NULL)?;
        cfg.validate()
            .with_context(|| format!("{}", cfg_path.display()))?;
        let files = find_weight_files(dir, "diffusion_pytorch_model")?;
        let w = Weights::open(&files, device, dtype)?;
        Self::build(&w, cfg).with_context(|| format!("building the unet from {}", dir.display()))
    }

    /// Builds the UNet from `cfg` and weights `w` (named as in diffusers' checkpoints).
    pub fn build(w: &Weights, cfg: UNetConfig) -> Result<Self> {
        cfg.validate()?;
        let lay = Layout::of(&cfg)?;
        let encoder = Encoder::build(w, &cfg, &lay)?;
        let boc = &cfg.block_out_channels;
        let n = lay.n;
        let rev_boc: Vec<usize> = boc.iter().rev().copied().collect();
        let rev_heads: Vec<usize> = lay.heads.iter().rev().copied().collect();
        let rev_layers: Vec<usize> = lay.layers.iter().rev().copied().collect();
        let rev_cross: Vec<usize> = lay.cross_dims.iter().rev().copied().collect();
        let rev_only: Vec<bool> = lay.only_cross.iter().rev().copied().collect();
        let rev_tlpb: Vec<PerLayer> = match &cfg.reverse_transformer_layers_per_block {
            Some(v) if v.len() == n => v.clone(),
            Some(v) => bail!(
                "unet config: reverse_transformer_layers_per_block has {} entries, expected {n}",
                v.len()
            ),
            None => lay.tlpb.iter().rev().cloned().collect(),
        };
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_ch = rev_boc[0];
        for (i, ty) in cfg.up_block_types.iter().enumerate() {
            let prev_out_ch = out_ch;
            out_ch = rev_boc[i];
            let in_ch = rev_boc[(i + 1).min(n - 1)];
            up_blocks.push(UpBlock::load(
                &w.pp(format!("up_blocks.{i}")),
                &UpSpec {
                    in_ch,
                    prev_out_ch,
                    out_ch,
                    layers: rev_layers[i] + 1,
                    attn: if ty == "CrossAttnUpBlock2D" {
                        Some(AttnSpec {
                            heads: rev_heads[i],
                            transformer_layers: rev_tlpb[i].per_layer(
                                rev_layers[i] + 1,
                                "reverse_transformer_layers_per_block",
                            )?,
                            cross_dim: rev_cross[i],
                            only_cross_attention: rev_only[i],
                        })
                    } else {
                        None
                    },
                    add_upsample: i + 1 < n,
                },
                &lay.common,
            )?);
        }
        let groups = lay.common.groups;
        let conv_norm_out =
            GroupNorm::load(&w.pp("conv_norm_out"), groups, boc[0], lay.common.eps)?;
        let k_out = cfg.conv_out_kernel;
        let conv_out = Conv2d::load(
            &w.pp("conv_out"),
            boc[0],
            cfg.out_channels,
            k_out,
            1,
            (k_out - 1) / 2,
        )?;
        Ok(UNet {
            encoder,
            up_blocks,
            conv_norm_out,
            conv_out,
            device: w.device().clone(),
            dtype: w.dtype(),
            config: cfg,
            weights: w.detached(),
        })
    }

    /// This UNet with `patches` added to the weights they name ([`Weights::patched`]);
    /// the unchanged weights are shared with this one.
    pub fn patched(&self, patches: HashMap<String, Tensor>) -> Result<UNet> {
        UNet::build(&self.weights.patched(patches), self.config.clone())
    }

    /// The weights it was built from (names and shapes of what a patch may target).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether the model needs [`AddedCond`] (SDXL).
    pub fn needs_added_cond(&self) -> bool {
        self.encoder.add_embedding.is_some()
    }

    /// Predicts the model output for `sample` `(b, c, h, w)` at per-sample `timesteps` (`b`
    /// values), conditioned on `context` `(b, tokens, cross_dim)`. The inputs are cast to the
    /// UNet's dtype (bf16 on a GPU) and the output back to the dtype of `sample`, so the
    /// pipeline can keep its latents in f32. `added` is ignored by a UNet without
    /// `addition_embed_type` (SD 1.x / 2.x).
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
        added: Option<&AddedCond>,
        timestep_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_with(sample, timesteps, context, added, timestep_cond, None)
    }

    /// [`UNet::forward`] with ControlNets' `residuals` added to the skips (after the down
    /// blocks, so the down path is unchanged) and to the mid block's output, as diffusers'
    /// `down_block_additional_residuals` / `mid_block_additional_residual`.
    pub fn forward_with(
        &self,
        sample: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
        added: Option<&AddedCond>,
        timestep_cond: Option<&Tensor>,
        residuals: Option<&Residuals>,
    ) -> Result<Tensor> {
        let b = sample.dim(0)?;
        if timesteps.len() != b {
            bail!("unet: {} timesteps for a batch of {b}", timesteps.len());
        }
        let out_dtype = sample.dtype();
        let sample = &sample.to_dtype(self.dtype)?;
        let context = &context.to_dtype(self.dtype)?;
        let temb_act = self.encoder.embed(
            &self.config,
            timesteps,
            added,
            timestep_cond,
            &self.device,
            self.dtype,
        )?;
        let (mut h, mut skips) = self.encoder.forward(sample, None, &temb_act, context)?;
        if let Some(r) = residuals {
            if r.down.len() != skips.len() {
                bail!(
                    "unet: {} ControlNet residuals for {} skips",
                    r.down.len(),
                    skips.len()
                );
            }
            for (skip, add) in skips.iter_mut().zip(&r.down) {
                *skip = skip.broadcast_add(&add.to_dtype(self.dtype)?)?;
            }
            h = h.broadcast_add(&r.mid.to_dtype(self.dtype)?)?;
        }
        for block in &self.up_blocks {
            let keep = skips.len() - block.num_resnets();
            let upsample_size = if keep > 0 {
                let (_, _, sh, sw) = skips[keep - 1].dims4()?;
                Some((sh, sw))
            } else {
                None
            };
            let mut mine = skips.split_off(keep);
            h = block.forward(&h, &mut mine, &temb_act, context, upsample_size)?;
        }
        let h = self.conv_norm_out.forward_silu(&h)?;
        Ok(self.conv_out.forward(&h)?.to_dtype(out_dtype)?)
    }
}
