//! diffusers' `SD3Transformer2DModel`: the MMDiT of Stable Diffusion 3 / 3.5 (joint attention
//! of image patches and text tokens, AdaLN-Zero modulation), with 3.5 Medium's extra
//! self-attention in the `dual_attention_layers` (MMDiT-X) and RMS q/k norms (`qk_norm`), and
//! skip-layer guidance's `skip_layers`.
//!
//! Owned rather than candle-transformers' `mmdit`: that one reads the original checkpoints'
//! names and fused qkv weights with sizes fixed per release, where diffusers' folders name
//! each projection and a config decides the sizes.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor};
use serde::Deserialize;

use crate::config::read_config;
use crate::nn::{Conv2d, LayerNorm, Linear, RmsNorm, attention, merge_heads, split_heads};
use crate::unet::timestep_embedding;
use crate::weights::{Weights, find_weight_files};

fn default_patch() -> usize {
    2
}
fn default_16() -> usize {
    16
}

/// `transformer/config.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct MmditConfig {
    pub sample_size: usize,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    #[serde(default = "default_16")]
    pub in_channels: usize,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub caption_projection_dim: usize,
    pub pooled_projection_dim: usize,
    #[serde(default = "default_16")]
    pub out_channels: usize,
    #[serde(default)]
    pub pos_embed_max_size: Option<usize>,
    #[serde(default)]
    pub dual_attention_layers: Vec<usize>,
    #[serde(default)]
    pub qk_norm: Option<String>,
}

impl MmditConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }
}

/// `Linear(silu(emb))` split into `n` chunks along the last dimension.
fn modulation(linear: &Linear, emb: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    let m = linear.forward(&emb.silu()?)?;
    Ok(m.chunk(n, D::Minus1)?)
}

/// `x * (1 + scale[:, None]) + shift[:, None]`.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?
        .broadcast_add(&shift.unsqueeze(1)?)?)
}

/// `x + gate[:, None] * y`.
fn gated_add(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok((x + y.broadcast_mul(&gate.unsqueeze(1)?)?)?)
}

/// diffusers' `FeedForward(dim, dim_out=dim, activation_fn="gelu-approximate")`.
struct FeedForward {
    up: Linear,
    down: Linear,
}

impl FeedForward {
    fn load(w: &Weights, dim: usize) -> Result<Self> {
        Ok(FeedForward {
            up: Linear::load(&w.pp("net.0.proj"), dim, 4 * dim, true)?,
            down: Linear::load(&w.pp("net.2"), 4 * dim, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // candle's `gelu` is the tanh approximation, torch's `approximate="tanh"`.
        self.down.forward(&self.up.forward(x)?.gelu()?)
    }
}

/// Query, key and value projections with their optional RMS norms.
struct Qkv {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
}

impl Qkv {
    /// `names`: the projections' and norms' names (`to_q`, ... or `add_q_proj`, ...).
    fn load(
        w: &Weights,
        dim: usize,
        head_dim: usize,
        qk_norm: bool,
        names: [&str; 5],
    ) -> Result<Self> {
        let norm = |name: &str| -> Result<Option<RmsNorm>> {
            Ok(if qk_norm {
                Some(RmsNorm::load(&w.pp(name), head_dim, 1e-6)?)
            } else {
                None
            })
        };
        Ok(Qkv {
            q: Linear::load(&w.pp(names[0]), dim, dim, true)?,
            k: Linear::load(&w.pp(names[1]), dim, dim, true)?,
            v: Linear::load(&w.pp(names[2]), dim, dim, true)?,
            norm_q: norm(names[3])?,
            norm_k: norm(names[4])?,
        })
    }

    /// `(batch*heads, n, head_dim)` each, q and k normed.
    fn project(&self, x: &Tensor, heads: usize) -> Result<[Tensor; 3]> {
        let norm = |n: &Option<RmsNorm>, t: Tensor| -> Result<Tensor> {
            match n {
                Some(n) => n.forward(&t),
                None => Ok(t),
            }
        };
        let q = norm(&self.norm_q, split_heads(&self.q.forward(x)?, heads)?)?;
        let k = norm(&self.norm_k, split_heads(&self.k.forward(x)?, heads)?)?;
        let v = split_heads(&self.v.forward(x)?, heads)?;
        Ok([q, k, v])
    }
}

/// Joint attention (`JointAttnProcessor2_0`): the image tokens, then the context tokens, in
/// one softmax; each part's output projected back separately.
struct JointAttention {
    x: Qkv,
    ctx: Qkv,
    out: Linear,
    /// Absent in the last block (`context_pre_only`), whose context output is dropped.
    ctx_out: Option<Linear>,
    heads: usize,
    scale: f64,
}

impl JointAttention {
    fn forward(&self, x: &Tensor, ctx: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let [q, k, v] = self.x.project(x, self.heads)?;
        let [cq, ck, cv] = self.ctx.project(ctx, self.heads)?;
        let n = q.dim(1)?;
        let q = Tensor::cat(&[q, cq], 1)?;
        let k = Tensor::cat(&[k, ck], 1)?;
        let v = Tensor::cat(&[v, cv], 1)?;
        let a = merge_heads(&attention(&q, &k, &v, self.scale)?, self.heads)?;
        let total = a.dim(1)?;
        let xa = self.out.forward(&a.narrow(1, 0, n)?)?;
        let ca = match &self.ctx_out {
            Some(o) => Some(o.forward(&a.narrow(1, n, total - n)?)?),
            None => None,
        };
        Ok((xa, ca))
    }
}

/// Self-attention of the image tokens alone (MMDiT-X's second attention).
struct SelfAttention {
    qkv: Qkv,
    out: Linear,
    heads: usize,
    scale: f64,
}

impl SelfAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [q, k, v] = self.qkv.project(x, self.heads)?;
        let a = merge_heads(&attention(&q, &k, &v, self.scale)?, self.heads)?;
        self.out.forward(&a)
    }
}

/// What the context stream of a block does after the attention.
enum ContextTail {
    /// The last block (`context_pre_only`): AdaLayerNormContinuous before the attention,
    /// nothing after.
    PreOnly,
    /// AdaLayerNormZero gates and a feed-forward, as the image stream.
    Full { ff: FeedForward },
}

/// `JointTransformerBlock`.
struct JointBlock {
    norm1: Linear,
    norm1_ctx: Linear,
    attn: JointAttention,
    attn2: Option<SelfAttention>,
    ff: FeedForward,
    ctx_tail: ContextTail,
    norm: LayerNorm,
}

impl JointBlock {
    fn load(w: &Weights, cfg: &MmditConfig, last: bool, dual: bool) -> Result<Self> {
        let dim = cfg.inner_dim();
        let hd = cfg.attention_head_dim;
        let qk_norm = match cfg.qk_norm.as_deref() {
            None => false,
            Some("rms_norm") => true,
            Some(other) => bail!("qk_norm {other:?} is not supported (rms_norm or none)"),
        };
        let a = w.pp("attn");
        let heads = cfg.num_attention_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let attn = JointAttention {
            x: Qkv::load(
                &a,
                dim,
                hd,
                qk_norm,
                ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
            )?,
            ctx: Qkv::load(
                &a,
                dim,
                hd,
                qk_norm,
                [
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                    "norm_added_q",
                    "norm_added_k",
                ],
            )?,
            out: Linear::load(&a.pp("to_out.0"), dim, dim, true)?,
            ctx_out: if last {
                None
            } else {
                Some(Linear::load(&a.pp("to_add_out"), dim, dim, true)?)
            },
            heads,
            scale,
        };
        let attn2 = if dual {
            let a2 = w.pp("attn2");
            Some(SelfAttention {
                qkv: Qkv::load(
                    &a2,
                    dim,
                    hd,
                    qk_norm,
                    ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
                )?,
                out: Linear::load(&a2.pp("to_out.0"), dim, dim, true)?,
                heads,
                scale,
            })
        } else {
            None
        };
        let (norm1_chunks, ctx_chunks) = (if dual { 9 } else { 6 }, if last { 2 } else { 6 });
        let w_dtype = w.dtype();
        Ok(JointBlock {
            norm1: Linear::load(&w.pp("norm1.linear"), dim, norm1_chunks * dim, true)?,
            norm1_ctx: Linear::load(&w.pp("norm1_context.linear"), dim, ctx_chunks * dim, true)?,
            attn,
            attn2,
            ff: FeedForward::load(&w.pp("ff"), dim)?,
            ctx_tail: if last {
                ContextTail::PreOnly
            } else {
                ContextTail::Full {
                    ff: FeedForward::load(&w.pp("ff_context"), dim)?,
                }
            },
            norm: LayerNorm::plain(dim, 1e-6, w.device(), w_dtype)?,
        })
    }

    /// One block: returns the image tokens and (unless the last block) the context tokens.
    fn forward(&self, x: &Tensor, ctx: &Tensor, temb: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let m = modulation(&self.norm1, temb, if self.attn2.is_some() { 9 } else { 6 })?;
        let normed = self.norm.forward(x)?;
        let h = modulate(&normed, &m[0], &m[1])?;
        let (ctx_h, cm) = match self.ctx_tail {
            ContextTail::PreOnly => {
                // AdaLayerNormContinuous: scale first, then shift.
                let c = modulation(&self.norm1_ctx, temb, 2)?;
                (modulate(&self.norm.forward(ctx)?, &c[1], &c[0])?, None)
            }
            ContextTail::Full { .. } => {
                let c = modulation(&self.norm1_ctx, temb, 6)?;
                (modulate(&self.norm.forward(ctx)?, &c[0], &c[1])?, Some(c))
            }
        };
        let (xa, ca) = self.attn.forward(&h, &ctx_h)?;
        let mut x = gated_add(x, &m[2], &xa)?;
        if let Some(attn2) = &self.attn2 {
            let h2 = modulate(&normed, &m[6], &m[7])?;
            x = gated_add(&x, &m[8], &attn2.forward(&h2)?)?;
        }
        let h = modulate(&self.norm.forward(&x)?, &m[3], &m[4])?;
        let x = gated_add(&x, &m[5], &self.ff.forward(&h)?)?;
        let ctx = match (&self.ctx_tail, cm, ca) {
            (ContextTail::Full { ff }, Some(c), Some(ca)) => {
                let ctx = gated_add(ctx, &c[2], &ca)?;
                let h = modulate(&self.norm.forward(&ctx)?, &c[3], &c[4])?;
                Some(gated_add(&ctx, &c[5], &ff.forward(&h)?)?)
            }
            _ => None,
        };
        Ok((x, ctx))
    }
}

/// The SD 3 transformer.
pub struct Mmdit {
    patch: Conv2d,
    /// The fixed sin-cos position table `(max, max, dim)`, cropped to each image's patches.
    pos_embed: Tensor,
    pos_max: usize,
    time_1: Linear,
    time_2: Linear,
    text_1: Linear,
    text_2: Linear,
    context_embedder: Linear,
    blocks: Vec<JointBlock>,
    norm_out: Linear,
    norm: LayerNorm,
    proj_out: Linear,
    pub config: MmditConfig,
    device: Device,
}

impl Mmdit {
    /// Loads a `transformer` folder.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg: MmditConfig = read_config(&cfg_path, &[])?;
        let dim = cfg.inner_dim();
        if cfg.caption_projection_dim != dim {
            bail!(
                "{}: caption_projection_dim {} must equal num_attention_heads x attention_head_dim = {dim}",
                cfg_path.display(),
                cfg.caption_projection_dim
            );
        }
        if let Some(&bad) = cfg
            .dual_attention_layers
            .iter()
            .find(|&&l| l >= cfg.num_layers)
        {
            bail!(
                "{}: dual_attention_layers names layer {bad} of {}",
                cfg_path.display(),
                cfg.num_layers
            );
        }
        let w = Weights::open(
            &find_weight_files(dir, "diffusion_pytorch_model")?,
            device,
            dtype,
        )?;
        let p = cfg.patch_size;
        let pos_max = cfg.pos_embed_max_size.with_context(|| {
            format!(
                "{}: pos_embed_max_size is needed (every SD 3 / 3.5 release sets it)",
                cfg_path.display()
            )
        })?;
        // diffusers stores the table with the weights when pos_embed_max_size is set.
        let pos_embed = w
            .get((1, pos_max * pos_max, dim), "pos_embed.pos_embed")?
            .reshape((pos_max, pos_max, dim))?;
        let tt = w.pp("time_text_embed");
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                JointBlock::load(
                    &w.pp(format!("transformer_blocks.{i}")),
                    &cfg,
                    i + 1 == cfg.num_layers,
                    cfg.dual_attention_layers.contains(&i),
                )
                .with_context(|| format!("transformer block {i}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Mmdit {
            patch: Conv2d::load(&w.pp("pos_embed.proj"), cfg.in_channels, dim, p, p, 0)?,
            pos_embed,
            pos_max,
            time_1: Linear::load(&tt.pp("timestep_embedder.linear_1"), 256, dim, true)?,
            time_2: Linear::load(&tt.pp("timestep_embedder.linear_2"), dim, dim, true)?,
            text_1: Linear::load(
                &tt.pp("text_embedder.linear_1"),
                cfg.pooled_projection_dim,
                dim,
                true,
            )?,
            text_2: Linear::load(&tt.pp("text_embedder.linear_2"), dim, dim, true)?,
            context_embedder: Linear::load(
                &w.pp("context_embedder"),
                cfg.joint_attention_dim,
                dim,
                true,
            )?,
            blocks,
            norm_out: Linear::load(&w.pp("norm_out.linear"), dim, 2 * dim, true)?,
            norm: LayerNorm::plain(dim, 1e-6, device, dtype)?,
            proj_out: Linear::load(&w.pp("proj_out"), dim, p * p * cfg.out_channels, true)?,
            config: cfg,
            device: device.clone(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.pos_embed.dtype()
    }

    /// The largest latent side (in latent pixels) the position table covers.
    pub fn max_latent_side(&self) -> usize {
        self.pos_max * self.config.patch_size
    }

    /// The velocity prediction for `latents` `(b, c, h, w)` at `timesteps` (one per row, on
    /// the 0-1000 scale), conditioned on `context` `(b, tokens, joint_attention_dim)` and
    /// `pooled` `(b, pooled_projection_dim)`; the blocks in `skip` are left out (skip-layer
    /// guidance). Inputs are cast to the model's dtype, the output back to the latents'.
    pub fn forward(
        &self,
        latents: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
        pooled: &Tensor,
        skip: &[usize],
    ) -> Result<Tensor> {
        let out_dtype = latents.dtype();
        let dtype = self.dtype();
        let (b, _, h, w) = latents.dims4()?;
        let p = self.config.patch_size;
        let (hp, wp) = (h / p, w / p);
        if hp > self.pos_max || wp > self.pos_max {
            bail!(
                "latents of {h}x{w} exceed the transformer's position table ({} patches a side)",
                self.pos_max
            );
        }
        // Patches plus the centre crop of the position table.
        let x = self.patch.forward(&latents.to_dtype(dtype)?)?;
        let x = x.flatten_from(2)?.transpose(1, 2)?;
        let (top, left) = ((self.pos_max - hp) / 2, (self.pos_max - wp) / 2);
        let pos = self
            .pos_embed
            .narrow(0, top, hp)?
            .narrow(1, left, wp)?
            .reshape((1, hp * wp, ()))?;
        let mut x = x.broadcast_add(&pos)?;
        let t = timestep_embedding(timesteps, 256, true, 0.0, &self.device)?.to_dtype(dtype)?;
        let temb = self.time_2.forward(&self.time_1.forward(&t)?.silu()?)?;
        let pooled = self
            .text_2
            .forward(&self.text_1.forward(&pooled.to_dtype(dtype)?)?.silu()?)?;
        let temb = (temb + pooled)?;
        let mut ctx = self.context_embedder.forward(&context.to_dtype(dtype)?)?;
        for (i, block) in self.blocks.iter().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            let (nx, nctx) = block.forward(&x, &ctx, &temb)?;
            x = nx;
            if let Some(c) = nctx {
                ctx = c;
            }
        }
        let m = modulation(&self.norm_out, &temb, 2)?;
        let x = modulate(&self.norm.forward(&x)?, &m[1], &m[0])?;
        let x = self.proj_out.forward(&x)?;
        // (b, hp*wp, p*p*c) -> (b, c, hp*p, wp*p)
        let c = self.config.out_channels;
        let x = x
            .reshape((b, hp, wp, p, p, c))?
            .permute((0, 5, 1, 3, 2, 4))?
            .reshape((b, c, hp * p, wp * p))?;
        Ok(x.to_dtype(out_dtype)?)
    }
}
