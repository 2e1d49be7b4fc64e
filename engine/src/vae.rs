//! diffusers' `AutoencoderKL` (encoder, decoder, quant convs), built from `vae/config.json`.
//!
//! The encoder returns the latent distribution's mean and std (not a sample), so the
//! pipeline draws the sample with its own torch-compatible generator.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use super::config::{VaeConfig, read_config};
use super::nn::{Conv2d, GroupNorm, Linear, attention};
use super::unet_blocks::{Downsample2D, ResnetBlock2D, ResnetSpec, Upsample2D};
use super::weights::{Weights, find_weight_files};

const VAE_EPS: f64 = 1e-6;

/// The VAE's resnets: no time embedding, eps 1e-6, no output scaling.
fn resnet_spec(in_ch: usize, out_ch: usize, groups: usize) -> ResnetSpec {
    ResnetSpec {
        in_ch,
        out_ch,
        temb_ch: None,
        groups,
        eps: VAE_EPS,
        output_scale_factor: 1.0,
    }
}

/// The `n` resnets of an encoder / decoder block; the first takes `in_ch` channels.
fn load_resnets(
    w: &Weights,
    n: usize,
    in_ch: usize,
    out_ch: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock2D>> {
    (0..n)
        .map(|j| {
            let res_in = if j == 0 { in_ch } else { out_ch };
            ResnetBlock2D::load(
                &w.pp(format!("resnets.{j}")),
                &resnet_spec(res_in, out_ch, groups),
            )
        })
        .collect()
}

/// The single-head self-attention of the VAE mid block (diffusers' `Attention` with a group
/// norm, residual connection and biased projections).
struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl VaeAttention {
    fn load(w: &Weights, channels: usize, groups: usize) -> Result<Self> {
        // heads = in_channels // attention_head_dim with attention_head_dim = in_channels.
        Ok(VaeAttention {
            group_norm: GroupNorm::load(&w.pp("group_norm"), groups, channels, VAE_EPS)?,
            to_q: Linear::load(&w.pp("to_q"), channels, channels, true)?,
            to_k: Linear::load(&w.pp("to_k"), channels, channels, true)?,
            to_v: Linear::load(&w.pp("to_v"), channels, channels, true)?,
            to_out: Linear::load(&w.pp("to_out.0"), channels, channels, true)?,
            heads: 1,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let residual = x;
        let t = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.to_q.forward(&t)?;
        let k = self.to_k.forward(&t)?;
        let v = self.to_v.forward(&t)?;
        let head_dim = c / self.heads;
        let o = attention(&q, &k, &v, (head_dim as f64).powf(-0.5))?;
        let o = self.to_out.forward(&o)?;
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        Ok((o + residual)?)
    }
}

/// `UNetMidBlock2D` as the VAE uses it: resnet, (attention), resnet.
struct VaeMidBlock {
    resnet0: ResnetBlock2D,
    attention: Option<VaeAttention>,
    resnet1: ResnetBlock2D,
}

impl VaeMidBlock {
    fn load(w: &Weights, channels: usize, groups: usize, add_attention: bool) -> Result<Self> {
        let spec = resnet_spec(channels, channels, groups);
        Ok(VaeMidBlock {
            resnet0: ResnetBlock2D::load(&w.pp("resnets.0"), &spec)?,
            attention: if add_attention {
                Some(VaeAttention::load(&w.pp("attentions.0"), channels, groups)?)
            } else {
                None
            },
            resnet1: ResnetBlock2D::load(&w.pp("resnets.1"), &spec)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.resnet0.forward(x, None)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnet1.forward(&h, None)
    }
}

struct Encoder {
    conv_in: Conv2d,
    down: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid: VaeMidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn load(w: &Weights, cfg: &VaeConfig) -> Result<Self> {
        let boc = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let conv_in = Conv2d::load(&w.pp("conv_in"), cfg.in_channels, boc[0], 3, 1, 1)?;
        let mut down = Vec::new();
        let mut out_ch = boc[0];
        for i in 0..boc.len() {
            let in_ch = out_ch;
            out_ch = boc[i];
            let bw = w.pp(format!("down_blocks.{i}"));
            let resnets = load_resnets(&bw, cfg.layers_per_block, in_ch, out_ch, g)?;
            let ds = if i + 1 < boc.len() {
                Some(Downsample2D::load(&bw.pp("downsamplers.0"), out_ch, 0)?)
            } else {
                None
            };
            down.push((resnets, ds));
        }
        let last = *boc.last().unwrap_or(&0);
        Ok(Encoder {
            conv_in,
            down,
            mid: VaeMidBlock::load(&w.pp("mid_block"), last, g, cfg.mid_block_add_attention)?,
            norm_out: GroupNorm::load(&w.pp("conv_norm_out"), g, last, VAE_EPS)?,
            conv_out: Conv2d::load(&w.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for (resnets, ds) in &self.down {
            for r in resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(d) = ds {
                h = d.forward(&h)?;
            }
        }
        h = self.mid.forward(&h)?;
        let h = self.norm_out.forward_silu(&h)?;
        self.conv_out.forward(&h)
    }
}

struct Decoder {
    conv_in: Conv2d,
    mid: VaeMidBlock,
    up: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn load(w: &Weights, cfg: &VaeConfig) -> Result<Self> {
        let boc = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let conv_in = Conv2d::load(&w.pp("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1)?;
        let mid = VaeMidBlock::load(&w.pp("mid_block"), rev[0], g, cfg.mid_block_add_attention)?;
        let mut up = Vec::new();
        let mut out_ch = rev[0];
        for (i, &ch) in rev.iter().enumerate() {
            let prev = out_ch;
            out_ch = ch;
            let bw = w.pp(format!("up_blocks.{i}"));
            let resnets = load_resnets(&bw, cfg.layers_per_block + 1, prev, out_ch, g)?;
            let us = if i + 1 < rev.len() {
                Some(Upsample2D::load(&bw.pp("upsamplers.0"), out_ch)?)
            } else {
                None
            };
            up.push((resnets, us));
        }
        Ok(Decoder {
            conv_in,
            mid,
            up,
            norm_out: GroupNorm::load(&w.pp("conv_norm_out"), g, boc[0], VAE_EPS)?,
            conv_out: Conv2d::load(&w.pp("conv_out"), boc[0], cfg.out_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        h = self.mid.forward(&h)?;
        for (resnets, us) in &self.up {
            for r in resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(u) = us {
                h = u.forward(&h, None)?;
            }
        }
        let h = self.norm_out.forward_silu(&h)?;
        self.conv_out.forward(&h)
    }
}

/// The posterior `N(mean, std²)` of the encoder (`DiagonalGaussianDistribution`).
pub struct LatentDist {
    pub mean: Tensor,
    pub std: Tensor,
}

pub struct AutoencoderKl {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    pub config: VaeConfig,
    dtype: DType,
}

impl AutoencoderKl {
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg: VaeConfig = read_config(&cfg_path, &[])?;
        cfg.validate()
            .with_context(|| format!("{}", cfg_path.display()))?;
        let files = find_weight_files(dir, "diffusion_pytorch_model")?;
        let w = Weights::open(&files, device, dtype)?;
        Self::build(&w, cfg).with_context(|| format!("building the vae from {}", dir.display()))
    }

    /// Builds the autoencoder from `cfg` and weights `w`.
    pub fn build(w: &Weights, cfg: VaeConfig) -> Result<Self> {
        cfg.validate()?;
        let lc = cfg.latent_channels;
        Ok(AutoencoderKl {
            encoder: Encoder::load(&w.pp("encoder"), &cfg)?,
            decoder: Decoder::load(&w.pp("decoder"), &cfg)?,
            quant_conv: if cfg.use_quant_conv {
                Some(Conv2d::load(&w.pp("quant_conv"), 2 * lc, 2 * lc, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(Conv2d::load(&w.pp("post_quant_conv"), lc, lc, 1, 1, 0)?)
            } else {
                None
            },
            dtype: w.dtype(),
            config: cfg,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Encodes images in `[-1, 1]`, `(b, 3, h, w)`, to the latent distribution (in the VAE's
    /// dtype; the input is cast to it).
    pub fn encode(&self, x: &Tensor) -> Result<LatentDist> {
        let h = self.encoder.forward(&x.to_dtype(self.dtype)?)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&h)?,
            None => h,
        };
        let lc = self.config.latent_channels;
        let mean = moments.narrow(1, 0, lc)?;
        let logvar = moments.narrow(1, lc, lc)?.clamp(-30f32, 20f32)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok(LatentDist { mean, std })
    }

    /// Decodes (unscaled) latents to images in about `[-1, 1]` (in the VAE's dtype; the input
    /// is cast to it).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = z.to_dtype(self.dtype)?;
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(&z)?,
            None => z,
        };
        self.decoder.forward(&z)
    }
}
