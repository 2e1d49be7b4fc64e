//! The building blocks of diffusers' `UNet2DConditionModel`: `ResnetBlock2D`,
//! `Transformer2DModel` (with `BasicTransformerBlock`, `Attention`, GEGLU feed-forward),
//! `Downsample2D` / `Upsample2D`, and the down / mid / up blocks. Weight names follow
//! diffusers' module tree.

use anyhow::Result;
use candle_core::Tensor;

use super::nn::{
    Conv2d, GroupNorm, LayerNorm, Linear, attention_upcast, geglu, merge_heads, split_heads,
};
use super::weights::Weights;

/// `ResnetBlock2D` with `time_embedding_norm="default"`.
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

pub struct ResnetSpec {
    pub in_ch: usize,
    pub out_ch: usize,
    /// `None` for the VAE (no time embedding).
    pub temb_ch: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn load(w: &Weights, s: &ResnetSpec) -> Result<Self> {
        let conv_shortcut = if s.in_ch != s.out_ch {
            Some(Conv2d::load(
                &w.pp("conv_shortcut"),
                s.in_ch,
                s.out_ch,
                1,
                1,
                0,
            )?)
        } else {
            None
        };
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(&w.pp("norm1"), s.groups, s.in_ch, s.eps)?,
            conv1: Conv2d::load(&w.pp("conv1"), s.in_ch, s.out_ch, 3, 1, 1)?,
            time_emb_proj: match s.temb_ch {
                Some(t) => Some(Linear::load(&w.pp("time_emb_proj"), t, s.out_ch, true)?),
                None => None,
            },
            norm2: GroupNorm::load(&w.pp("norm2"), s.groups, s.out_ch, s.eps)?,
            conv2: Conv2d::load(&w.pp("conv2"), s.out_ch, s.out_ch, 3, 1, 1)?,
            conv_shortcut,
            output_scale_factor: s.output_scale_factor,
        })
    }

    /// `temb_act` is `silu(temb)` (the block applies its nonlinearity to the embedding first).
    pub fn forward(&self, x: &Tensor, temb_act: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb_act) {
            let t = proj.forward(t)?.unsqueeze(2)?.unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let out = (shortcut + h)?;
        if self.output_scale_factor != 1.0 {
            Ok((out / self.output_scale_factor)?)
        } else {
            Ok(out)
        }
    }
}

/// diffusers' `Attention` as used by `BasicTransformerBlock` (no bias on q/k/v).
pub struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
    /// `upcast_attention`: scores in f32 when the model runs in half precision.
    upcast: bool,
}

impl CrossAttention {
    pub fn load(
        w: &Weights,
        query_dim: usize,
        kv_dim: usize,
        heads: usize,
        dim_head: usize,
        upcast: bool,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        Ok(CrossAttention {
            to_q: Linear::load(&w.pp("to_q"), query_dim, inner, false)?,
            to_k: Linear::load(&w.pp("to_k"), kv_dim, inner, false)?,
            to_v: Linear::load(&w.pp("to_v"), kv_dim, inner, false)?,
            to_out: Linear::load(&w.pp("to_out.0"), inner, query_dim, true)?,
            heads,
            scale: (dim_head as f64).powf(-0.5),
            upcast,
        })
    }

    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let q = split_heads(&self.to_q.forward(x)?, self.heads)?;
        let k = split_heads(&self.to_k.forward(ctx)?, self.heads)?;
        let v = split_heads(&self.to_v.forward(ctx)?, self.heads)?;
        let o = attention_upcast(&q, &k, &v, self.scale, self.upcast)?;
        self.to_out.forward(&merge_heads(&o, self.heads)?)
    }
}

/// `BasicTransformerBlock` with `norm_type="layer_norm"` and a GEGLU feed-forward.
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
    only_cross_attention: bool,
}

impl BasicTransformerBlock {
    pub fn load(w: &Weights, s: &TransformerSpec, dim_head: usize) -> Result<Self> {
        let dim = s.channels;
        let (heads, cross_dim, up) = (s.heads, s.cross_dim, s.upcast_attention);
        let only_cross_attention = s.only_cross_attention;
        let inner_ff = dim * 4;
        let attn1_kv = if only_cross_attention { cross_dim } else { dim };
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::load(&w.pp("norm1"), dim, 1e-5)?,
            attn1: CrossAttention::load(&w.pp("attn1"), dim, attn1_kv, heads, dim_head, up)?,
            norm2: LayerNorm::load(&w.pp("norm2"), dim, 1e-5)?,
            attn2: CrossAttention::load(&w.pp("attn2"), dim, cross_dim, heads, dim_head, up)?,
            norm3: LayerNorm::load(&w.pp("norm3"), dim, 1e-5)?,
            ff_proj: Linear::load(&w.pp("ff.net.0.proj"), dim, inner_ff * 2, true)?,
            ff_out: Linear::load(&w.pp("ff.net.2"), inner_ff, dim, true)?,
            only_cross_attention,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(x)?;
        let ctx1 = if self.only_cross_attention {
            Some(context)
        } else {
            None
        };
        let x = (self.attn1.forward(&h, ctx1)? + x)?;
        let h = self.norm2.forward(&x)?;
        let x = (self.attn2.forward(&h, Some(context))? + x)?;
        let h = self.norm3.forward(&x)?;
        // GEGLU: hidden, gate = proj(x).chunk(2); hidden * gelu(gate) (exact erf GELU).
        let h = geglu(&self.ff_proj.forward(&h)?)?;
        Ok((self.ff_out.forward(&h)? + x)?)
    }
}

enum Proj {
    Linear(Linear),
    Conv(Conv2d),
}

/// `Transformer2DModel` for continuous (image-like) input.
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

pub struct TransformerSpec {
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub cross_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
    pub upcast_attention: bool,
}

impl Transformer2D {
    pub fn load(w: &Weights, s: &TransformerSpec) -> Result<Self> {
        let c = s.channels;
        if s.heads == 0 || !c.is_multiple_of(s.heads) {
            anyhow::bail!(
                "{c} channels cannot be split into {} attention heads",
                s.heads
            );
        }
        let dim_head = c / s.heads;
        let (proj_in, proj_out) = if s.use_linear_projection {
            (
                Proj::Linear(Linear::load(&w.pp("proj_in"), c, c, true)?),
                Proj::Linear(Linear::load(&w.pp("proj_out"), c, c, true)?),
            )
        } else {
            (
                Proj::Conv(Conv2d::load(&w.pp("proj_in"), c, c, 1, 1, 0)?),
                Proj::Conv(Conv2d::load(&w.pp("proj_out"), c, c, 1, 1, 0)?),
            )
        };
        let blocks = (0..s.layers)
            .map(|i| {
                BasicTransformerBlock::load(&w.pp(format!("transformer_blocks.{i}")), s, dim_head)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer2D {
            norm: GroupNorm::load(&w.pp("norm"), s.groups, c, 1e-6)?,
            proj_in,
            blocks,
            proj_out,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let residual = x;
        let normed = self.norm.forward(x)?;
        let to_tokens =
            |t: &Tensor| -> Result<Tensor> { Ok(t.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?) };
        let mut t = match &self.proj_in {
            Proj::Linear(l) => l.forward(&to_tokens(&normed)?)?,
            Proj::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
        };
        for block in &self.blocks {
            t = block.forward(&t, context)?;
        }
        let to_image = |t: &Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, h, w, c))?
                .permute((0, 3, 1, 2))?
                .contiguous()?)
        };
        let out = match &self.proj_out {
            Proj::Linear(l) => to_image(&l.forward(&t)?)?,
            Proj::Conv(conv) => conv.forward(&to_image(&t)?)?,
        };
        Ok((out + residual)?)
    }
}

/// `Downsample2D(use_conv=True)`: a stride-2 3x3 conv; with `padding=0` the input is first
/// padded by one on the right and bottom (diffusers' VAE encoder).
pub struct Downsample2D {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample2D {
    pub fn load(w: &Weights, channels: usize, padding: usize) -> Result<Self> {
        Ok(Downsample2D {
            conv: Conv2d::load(&w.pp("conv"), channels, channels, 3, 2, padding)?,
            pad_right_bottom: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_right_bottom {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// `Upsample2D(use_conv=True)`: nearest-neighbour upsampling then a 3x3 conv.
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn load(w: &Weights, channels: usize) -> Result<Self> {
        Ok(Upsample2D {
            conv: Conv2d::load(&w.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    /// Upsamples to `size` (h, w) when given (diffusers' `upsample_size`), else by 2.
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        let up = if th == 2 * h && tw == 2 * w {
            upsample_nearest_2x(x)?
        } else {
            x.upsample_nearest2d(th, tw)?
        };
        self.conv.forward(&up)
    }
}

/// Exact 2x nearest upsampling via broadcasting (faster than the generic kernel).
fn upsample_nearest_2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    Ok(x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .contiguous()?
        .reshape((b, c, 2 * h, 2 * w))?)
}

/// Shared parameters of the UNet's blocks.
pub struct BlockCommon {
    pub temb_ch: usize,
    pub groups: usize,
    pub eps: f64,
    pub resnet_scale: f64,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
}

/// The cross-attention settings of a block's transformers.
pub struct AttnSpec {
    pub heads: usize,
    /// Transformer depth of each layer (at least as many entries as the block has layers).
    pub transformer_layers: Vec<usize>,
    pub cross_dim: usize,
    pub only_cross_attention: bool,
}

impl BlockCommon {
    /// A resnet with the UNet's time embedding, norms and output scale.
    fn resnet_spec(&self, in_ch: usize, out_ch: usize) -> ResnetSpec {
        ResnetSpec {
            in_ch,
            out_ch,
            temb_ch: Some(self.temb_ch),
            groups: self.groups,
            eps: self.eps,
            output_scale_factor: self.resnet_scale,
        }
    }

    /// The transformer of layer `layer` over `channels`, with the UNet's norms and projection
    /// kind.
    fn transformer_spec(
        &self,
        channels: usize,
        a: &AttnSpec,
        layer: usize,
    ) -> Result<TransformerSpec> {
        let layers = *a.transformer_layers.get(layer).ok_or_else(|| {
            anyhow::anyhow!("unet: no transformer depth given for layer {layer} of a block")
        })?;
        Ok(TransformerSpec {
            channels,
            heads: a.heads,
            layers,
            cross_dim: a.cross_dim,
            groups: self.groups,
            use_linear_projection: self.use_linear_projection,
            only_cross_attention: a.only_cross_attention,
            upcast_attention: self.upcast_attention,
        })
    }

    /// The layers of a down or up block: `resnets.{i}` (input channels `in_ch(i)`, output
    /// `out_ch`), each followed by `attentions.{i}` in cross-attention blocks (`attn` set).
    fn load_layers(
        &self,
        w: &Weights,
        layers: usize,
        out_ch: usize,
        attn: Option<&AttnSpec>,
        in_ch: impl Fn(usize) -> usize,
    ) -> Result<(Vec<ResnetBlock2D>, Vec<Transformer2D>)> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            resnets.push(ResnetBlock2D::load(
                &w.pp(format!("resnets.{i}")),
                &self.resnet_spec(in_ch(i), out_ch),
            )?);
            if let Some(a) = attn {
                attentions.push(Transformer2D::load(
                    &w.pp(format!("attentions.{i}")),
                    &self.transformer_spec(out_ch, a, i)?,
                )?);
            }
        }
        Ok((resnets, attentions))
    }
}

/// `DownBlock2D` / `CrossAttnDownBlock2D`.
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
}

pub struct DownSpec {
    pub in_ch: usize,
    pub out_ch: usize,
    pub layers: usize,
    /// `Some` for `CrossAttnDownBlock2D`.
    pub attn: Option<AttnSpec>,
    pub add_downsample: bool,
    pub downsample_padding: usize,
}

impl DownBlock {
    pub fn load(w: &Weights, s: &DownSpec, c: &BlockCommon) -> Result<Self> {
        let (resnets, attentions) = c.load_layers(w, s.layers, s.out_ch, s.attn.as_ref(), |i| {
            if i == 0 { s.in_ch } else { s.out_ch }
        })?;
        let downsampler = if s.add_downsample {
            Some(Downsample2D::load(
                &w.pp("downsamplers.0"),
                s.out_ch,
                s.downsample_padding,
            )?)
        } else {
            None
        };
        Ok(DownBlock {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the block output and the skip tensors it contributes.
    pub fn forward(
        &self,
        x: &Tensor,
        temb_act: &Tensor,
        context: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut skips = Vec::new();
        for (i, r) in self.resnets.iter().enumerate() {
            h = r.forward(&h, Some(temb_act))?;
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h, context)?;
            }
            skips.push(h.clone());
        }
        if let Some(d) = &self.downsampler {
            h = d.forward(&h)?;
            skips.push(h.clone());
        }
        Ok((h, skips))
    }
}

/// `UpBlock2D` / `CrossAttnUpBlock2D`.
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Upsample2D>,
}

pub struct UpSpec {
    pub in_ch: usize,
    pub prev_out_ch: usize,
    pub out_ch: usize,
    pub layers: usize,
    /// `Some` for `CrossAttnUpBlock2D`.
    pub attn: Option<AttnSpec>,
    pub add_upsample: bool,
}

impl UpBlock {
    pub fn load(w: &Weights, s: &UpSpec, c: &BlockCommon) -> Result<Self> {
        // Each resnet takes the previous output concatenated with its skip connection.
        let (resnets, attentions) = c.load_layers(w, s.layers, s.out_ch, s.attn.as_ref(), |i| {
            let res_skip = if i == s.layers - 1 { s.in_ch } else { s.out_ch };
            let res_in = if i == 0 { s.prev_out_ch } else { s.out_ch };
            res_in + res_skip
        })?;
        let upsampler = if s.add_upsample {
            Some(Upsample2D::load(&w.pp("upsamplers.0"), s.out_ch)?)
        } else {
            None
        };
        Ok(UpBlock {
            resnets,
            attentions,
            upsampler,
        })
    }

    pub fn num_resnets(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` are consumed from the end; `upsample_size` is the size of the next skip.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb_act: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, r) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .ok_or_else(|| anyhow::anyhow!("unet: ran out of skip connections"))?;
            h = Tensor::cat(&[&h, &skip], 1)?;
            h = r.forward(&h, Some(temb_act))?;
            if let Some(a) = self.attentions.get(i) {
                h = a.forward(&h, context)?;
            }
        }
        if let Some(u) = &self.upsampler {
            h = u.forward(&h, upsample_size)?;
        }
        Ok(h)
    }
}

/// `UNetMidBlock2DCrossAttn` (one attention between two resnets per layer).
pub struct MidBlockCrossAttn {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
}

impl MidBlockCrossAttn {
    pub fn load(
        w: &Weights,
        channels: usize,
        attn: &AttnSpec,
        output_scale_factor: f64,
        c: &BlockCommon,
    ) -> Result<Self> {
        let spec = ResnetSpec {
            output_scale_factor,
            ..c.resnet_spec(channels, channels)
        };
        let resnets = vec![
            ResnetBlock2D::load(&w.pp("resnets.0"), &spec)?,
            ResnetBlock2D::load(&w.pp("resnets.1"), &spec)?,
        ];
        let attentions = vec![Transformer2D::load(
            &w.pp("attentions.0"),
            &c.transformer_spec(channels, attn, 0)?,
        )?];
        Ok(MidBlockCrossAttn {
            resnets,
            attentions,
        })
    }

    pub fn forward(&self, x: &Tensor, temb_act: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, Some(temb_act))?;
        for (a, r) in self.attentions.iter().zip(&self.resnets[1..]) {
            h = a.forward(&h, context)?;
            h = r.forward(&h, Some(temb_act))?;
        }
        Ok(h)
    }
}
