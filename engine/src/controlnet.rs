//! diffusers' `ControlNetModel`, built from a ControlNet folder's `config.json`: the UNet's
//! first half (the same blocks, [`Encoder`]), a conditioning embedding that turns the
//! control image into a latent-sized feature added after `conv_in`, and a 1x1 "zero"
//! convolution per skip and for the mid block, whose outputs the UNet adds to its own
//! ([`Residuals`]).

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::config::{UNET_KEEP_NULL, UNetConfig, read_config};
use crate::nn::Conv2d;
use crate::unet::{AddedCond, Encoder, Layout, Residuals};
use crate::weights::{Weights, find_weight_files};

/// The keys of a ControlNet's config that a UNet's has not.
#[derive(Clone, Debug, Deserialize)]
struct ControlConfig {
    #[serde(default = "default_conditioning_channels")]
    conditioning_channels: usize,
    #[serde(default = "default_embedding_channels")]
    conditioning_embedding_out_channels: Vec<usize>,
    #[serde(default = "default_order")]
    controlnet_conditioning_channel_order: String,
    #[serde(default)]
    global_pool_conditions: bool,
}

fn default_conditioning_channels() -> usize {
    3
}
fn default_embedding_channels() -> Vec<usize> {
    vec![16, 32, 96, 256]
}
fn default_order() -> String {
    "rgb".into()
}

/// `ControlNetConditioningEmbedding`: conv_in, then pairs of a 3x3 conv and a strided
/// one, each followed by SiLU, then conv_out (no activation).
struct CondEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl CondEmbedding {
    fn load(w: &Weights, in_ch: usize, channels: &[usize], out_ch: usize) -> Result<Self> {
        let Some((&first, _)) = channels.split_first() else {
            bail!("controlnet config: conditioning_embedding_out_channels is empty");
        };
        let mut blocks = Vec::new();
        for (j, pair) in channels.windows(2).enumerate() {
            let (a, b) = (pair[0], pair[1]);
            blocks.push(Conv2d::load(
                &w.pp(format!("blocks.{}", 2 * j)),
                a,
                a,
                3,
                1,
                1,
            )?);
            blocks.push(Conv2d::load(
                &w.pp(format!("blocks.{}", 2 * j + 1)),
                a,
                b,
                3,
                2,
                1,
            )?);
        }
        let last = *channels.last().expect("not empty");
        Ok(CondEmbedding {
            conv_in: Conv2d::load(&w.pp("conv_in"), in_ch, first, 3, 1, 1)?,
            blocks,
            conv_out: Conv2d::load(&w.pp("conv_out"), last, out_ch, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?.silu()?;
        for conv in &self.blocks {
            h = conv.forward(&h)?.silu()?;
        }
        self.conv_out.forward(&h)
    }
}

/// A loaded ControlNet.
pub struct ControlNet {
    encoder: Encoder,
    cond_embedding: CondEmbedding,
    /// `controlnet_down_blocks`: one 1x1 conv per skip, `conv_in`'s first.
    down_projs: Vec<Conv2d>,
    mid_proj: Conv2d,
    config: UNetConfig,
    /// The control image's channels arrive in BGR order.
    bgr: bool,
    /// Its residuals are averaged over the image (and the pipelines force guess mode).
    pub global_pool_conditions: bool,
    /// Down-sampling of the conditioning embedding: the control image is this many
    /// times the latents' size.
    pub image_factor: usize,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for ControlNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlNet")
            .field("cross_attention_dim", &self.config.cross_attention_dim)
            .field("addition_embed_type", &self.config.addition_embed_type)
            .finish_non_exhaustive()
    }
}

impl ControlNet {
    /// Loads a diffusers ControlNet folder (`config.json` and
    /// `diffusion_pytorch_model[.fp16].safetensors`, single or sharded).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let path = dir.join("config.json");
        let mut cfg: UNetConfig = read_config(&path, UNET_KEEP_NULL)?;
        let extra: ControlConfig = read_config(&path, &[])?;
        let n = cfg.block_out_channels.len();
        // A ControlNet has no up blocks: fill what the UNet's checks ask for.
        cfg.up_block_types = vec!["UpBlock2D".into(); n];
        if cfg.reverse_transformer_layers_per_block.is_none() {
            let mut rev = cfg
                .transformer_layers_per_block
                .per_block(n, "transformer_layers_per_block")?;
            rev.reverse();
            cfg.reverse_transformer_layers_per_block = Some(rev);
        }
        cfg.validate()
            .with_context(|| format!("{}", path.display()))?;
        match cfg.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => bail!(
                "{}: mid_block_type {other:?} is not supported (UNetMidBlock2DCrossAttn)",
                path.display()
            ),
        }
        let bgr = match extra.controlnet_conditioning_channel_order.as_str() {
            "rgb" => false,
            "bgr" => true,
            other => bail!(
                "{}: controlnet_conditioning_channel_order {other:?} (rgb or bgr)",
                path.display()
            ),
        };
        let files = find_weight_files(dir, "diffusion_pytorch_model")?;
        let w = Weights::open(&files, device, dtype)?;
        Self::build(&w, cfg, &extra, bgr)
            .with_context(|| format!("building the ControlNet from {}", dir.display()))
    }

    fn build(w: &Weights, cfg: UNetConfig, extra: &ControlConfig, bgr: bool) -> Result<Self> {
        let lay = Layout::of(&cfg)?;
        let encoder = Encoder::build(w, &cfg, &lay)?;
        let boc = &cfg.block_out_channels;
        let cond_embedding = CondEmbedding::load(
            &w.pp("controlnet_cond_embedding"),
            extra.conditioning_channels,
            &extra.conditioning_embedding_out_channels,
            boc[0],
        )?;
        // One projection per skip, in the order the encoder makes them.
        let mut channels = vec![boc[0]];
        for (i, (&c, &layers)) in boc.iter().zip(&lay.layers).enumerate() {
            channels.extend(std::iter::repeat_n(c, layers));
            if i + 1 < lay.n {
                channels.push(c);
            }
        }
        let down_projs = channels
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                Conv2d::load(&w.pp(format!("controlnet_down_blocks.{k}")), c, c, 1, 1, 0)
            })
            .collect::<Result<Vec<_>>>()?;
        let last = boc[lay.n - 1];
        let mid_proj = Conv2d::load(&w.pp("controlnet_mid_block"), last, last, 1, 1, 0)?;
        Ok(ControlNet {
            encoder,
            cond_embedding,
            down_projs,
            mid_proj,
            bgr,
            global_pool_conditions: extra.global_pool_conditions,
            image_factor: 1 << (extra.conditioning_embedding_out_channels.len() - 1),
            device: w.device().clone(),
            dtype: w.dtype(),
            config: cfg,
        })
    }

    /// Whether it takes SDXL's added conditioning.
    pub fn needs_added_cond(&self) -> bool {
        self.config.addition_embed_type.as_deref() == Some("text_time")
    }

    /// The cross-attention width it expects (the text encoders' output).
    pub fn cross_attention_dim(&self) -> Option<usize> {
        self.config
            .cross_attention_dim
            .per_block(1, "cross_attention_dim")
            .ok()
            .and_then(|v| v.first().copied())
    }

    /// The latent channels it takes.
    pub fn in_channels(&self) -> usize {
        self.config.in_channels
    }

    /// diffusers' `ControlNetModel.forward`: the residuals for `sample` (the UNet's scaled
    /// input) at `timesteps`, conditioned on `context` and the control image `cond`
    /// (`(b, 3, h * f, w * f)` in [0, 1]), multiplied by `scale`; in `guess_mode` by
    /// `scale` times 0.1 at the shallowest skip rising log-evenly to 1 at the mid block.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
        added: Option<&AddedCond>,
        cond: &Tensor,
        scale: f32,
        guess_mode: bool,
    ) -> Result<Residuals> {
        let out_dtype = sample.dtype();
        let sample = &sample.to_dtype(self.dtype)?;
        let context = &context.to_dtype(self.dtype)?;
        let mut cond = cond.to_dtype(self.dtype)?;
        if self.bgr {
            cond = Tensor::cat(
                &[
                    cond.narrow(1, 2, 1)?,
                    cond.narrow(1, 1, 1)?,
                    cond.narrow(1, 0, 1)?,
                ],
                1,
            )?;
        }
        let temb = self.encoder.embed(
            &self.config,
            timesteps,
            added,
            None,
            &self.device,
            self.dtype,
        )?;
        let embedded = self.cond_embedding.forward(&cond)?;
        let (h, skips) = self
            .encoder
            .forward(sample, Some(&embedded), &temb, context)?;
        if skips.len() != self.down_projs.len() {
            bail!(
                "controlnet: {} skips for {} projections",
                skips.len(),
                self.down_projs.len()
            );
        }
        let n = skips.len();
        // torch.logspace(-1, 0, n + 1) in f32, times the scale.
        let scales: Vec<f32> = (0..=n)
            .map(|k| {
                if guess_mode && !self.global_pool_conditions {
                    10f32.powf(-1.0 + k as f32 / n as f32) * scale
                } else {
                    scale
                }
            })
            .collect();
        let finish = |x: Tensor, s: f32| -> Result<Tensor> {
            let x = crate::scheduler::mul_scalar(&x, s)?;
            let x = if self.global_pool_conditions {
                x.mean_keepdim(2)?.mean_keepdim(3)?
            } else {
                x
            };
            Ok(x.to_dtype(out_dtype)?)
        };
        let down = skips
            .iter()
            .zip(&self.down_projs)
            .zip(&scales)
            .map(|((s, proj), &k)| finish(proj.forward(s)?, k))
            .collect::<Result<Vec<_>>>()?;
        let mid = finish(self.mid_proj.forward(&h)?, scales[n])?;
        Ok(Residuals { down, mid })
    }
}

impl Residuals {
    /// The sum of several ControlNets' residuals (diffusers' `MultiControlNetModel`).
    pub fn sum(self, other: Residuals) -> Result<Residuals> {
        Ok(Residuals {
            down: self
                .down
                .iter()
                .zip(&other.down)
                .map(|(a, b)| a.broadcast_add(b))
                .collect::<candle_core::Result<Vec<_>>>()?,
            mid: self.mid.broadcast_add(&other.mid)?,
        })
    }
}
