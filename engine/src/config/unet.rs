//! `unet/config.json`: diffusers' `UNet2DConditionModel`.

use anyhow::{Result, bail};
use serde::Deserialize;

use super::{
    OneOrMany, default_1, default_3, default_4, default_eps5, default_f1, default_silu,
    default_true,
};

/// Keys of `unet/config.json` whose `null` differs from their default.
pub const UNET_KEEP_NULL: &[&str] = &["norm_num_groups", "mid_block_type"];

fn default_groups32() -> Option<usize> {
    Some(32)
}
fn default_default() -> String {
    "default".into()
}
fn default_positional() -> String {
    "positional".into()
}
fn default_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_unet_down() -> Vec<String> {
    vec![
        "CrossAttnDownBlock2D".into(),
        "CrossAttnDownBlock2D".into(),
        "CrossAttnDownBlock2D".into(),
        "DownBlock2D".into(),
    ]
}
fn default_unet_up() -> Vec<String> {
    vec![
        "UpBlock2D".into(),
        "CrossAttnUpBlock2D".into(),
        "CrossAttnUpBlock2D".into(),
        "CrossAttnUpBlock2D".into(),
    ]
}
fn default_unet_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}

/// `unet/config.json` (`UNet2DConditionModel`).
#[derive(Clone, Debug, Deserialize)]
pub struct UNetConfig {
    #[serde(default)]
    pub sample_size: Option<OneOrMany<usize>>,
    #[serde(default = "default_4")]
    pub in_channels: usize,
    #[serde(default = "default_4")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "default_unet_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_mid_block_type")]
    pub mid_block_type: Option<String>,
    #[serde(default = "default_unet_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "only_cross_default")]
    pub only_cross_attention: OneOrMany<bool>,
    #[serde(default = "default_unet_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "layers_default")]
    pub layers_per_block: OneOrMany<usize>,
    #[serde(default = "default_1")]
    pub downsample_padding: usize,
    #[serde(default = "default_f1")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "default_silu")]
    pub act_fn: String,
    #[serde(default = "default_groups32")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "default_eps5")]
    pub norm_eps: f64,
    #[serde(default = "cross_dim_default")]
    pub cross_attention_dim: OneOrMany<usize>,
    #[serde(default = "tlpb_default")]
    pub transformer_layers_per_block: TransformerDepth,
    /// The up blocks' depths (SSD-1B and other asymmetric UNets); by default the reverse of
    /// `transformer_layers_per_block`.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<PerLayer>>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default = "head_dim_default")]
    pub attention_head_dim: OneOrMany<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<OneOrMany<usize>>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "default_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "default_f1")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "default_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "default_3")]
    pub conv_in_kernel: usize,
    #[serde(default = "default_3")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "default_default")]
    pub attention_type: String,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
}

fn only_cross_default() -> OneOrMany<bool> {
    OneOrMany::One(false)
}
fn layers_default() -> OneOrMany<usize> {
    OneOrMany::One(2)
}
fn cross_dim_default() -> OneOrMany<usize> {
    OneOrMany::One(1280)
}
fn tlpb_default() -> TransformerDepth {
    TransformerDepth::One(1)
}

/// A block's transformer depth: one number for all its layers, or one per layer (resnet).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerLayer {
    One(usize),
    Many(Vec<usize>),
}

impl PerLayer {
    /// One depth per layer of a block with `layers` layers.
    pub fn per_layer(&self, layers: usize, key: &str) -> Result<Vec<usize>> {
        match self {
            PerLayer::One(v) => Ok(vec![*v; layers]),
            PerLayer::Many(v) if v.len() >= layers => Ok(v[..layers].to_vec()),
            PerLayer::Many(v) => bail!(
                "config key `{key}` lists {} transformer depths for a block of {layers} layers",
                v.len()
            ),
        }
    }
}

/// `transformer_layers_per_block` as diffusers accepts it: one number for every block, or
/// one entry per block that is a number or a list with one depth per layer
/// (`[1, [2, 2], [4, 4]]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TransformerDepth {
    One(usize),
    PerBlock(Vec<PerLayer>),
}

impl TransformerDepth {
    /// One entry per block (`n` blocks).
    pub fn per_block(&self, n: usize, key: &str) -> Result<Vec<PerLayer>> {
        match self {
            TransformerDepth::One(v) => Ok(vec![PerLayer::One(*v); n]),
            TransformerDepth::PerBlock(v) if v.len() == n => Ok(v.clone()),
            TransformerDepth::PerBlock(v) => bail!(
                "config key `{key}` has {} entries but the model has {n} blocks",
                v.len()
            ),
        }
    }

    /// Whether some block lists per-layer depths (diffusers then requires
    /// `reverse_transformer_layers_per_block`).
    pub fn has_per_layer_lists(&self) -> bool {
        matches!(self, TransformerDepth::PerBlock(v) if v.iter().any(|e| matches!(e, PerLayer::Many(_))))
    }
}
fn head_dim_default() -> OneOrMany<usize> {
    OneOrMany::One(8)
}

impl UNetConfig {
    /// Rejects options whose semantics the engine does not implement.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 {
            bail!("unet config: block_out_channels is empty");
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            bail!("unet config: conv_in_kernel / conv_out_kernel must be odd");
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            bail!(
                "down_block_types ({}) / up_block_types ({}) must have one entry per block_out_channels ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            );
        }
        if self.transformer_layers_per_block.has_per_layer_lists()
            && self.reverse_transformer_layers_per_block.is_none()
        {
            bail!(
                "unet config: transformer_layers_per_block lists per-layer depths, so reverse_transformer_layers_per_block is required (as in diffusers)"
            );
        }
        let unsupported = |key: &str, what: String| -> Result<()> {
            bail!("unet config `{key}` = {what} is not supported by this engine yet")
        };
        if self.encoder_hid_dim.is_some() {
            unsupported("encoder_hid_dim", format!("{:?}", self.encoder_hid_dim))?;
        }
        if self.dual_cross_attention {
            unsupported("dual_cross_attention", "true".into())?;
        }
        if let Some(c) = &self.class_embed_type {
            unsupported("class_embed_type", c.clone())?;
        }
        if self.num_class_embeds.is_some() {
            unsupported("num_class_embeds", format!("{:?}", self.num_class_embeds))?;
        }
        match self.addition_embed_type.as_deref() {
            None | Some("text_time") => {}
            Some(other) => unsupported("addition_embed_type", other.into())?,
        }
        if self.addition_embed_type.as_deref() == Some("text_time")
            && (self.addition_time_embed_dim.is_none()
                || self.projection_class_embeddings_input_dim.is_none())
        {
            bail!(
                "unet config: addition_embed_type \"text_time\" needs addition_time_embed_dim and projection_class_embeddings_input_dim"
            );
        }
        if self.resnet_time_scale_shift != "default" {
            unsupported(
                "resnet_time_scale_shift",
                self.resnet_time_scale_shift.clone(),
            )?;
        }
        if self.resnet_skip_time_act {
            unsupported("resnet_skip_time_act", "true".into())?;
        }
        if self.time_embedding_type != "positional" {
            unsupported("time_embedding_type", self.time_embedding_type.clone())?;
        }
        if let Some(a) = &self.time_embedding_act_fn {
            unsupported("time_embedding_act_fn", a.clone())?;
        }
        if let Some(a) = &self.timestep_post_act {
            unsupported("timestep_post_act", a.clone())?;
        }
        if self.attention_type != "default" {
            unsupported("attention_type", self.attention_type.clone())?;
        }
        if self.class_embeddings_concat {
            unsupported("class_embeddings_concat", "true".into())?;
        }
        if let Some(n) = &self.cross_attention_norm {
            unsupported("cross_attention_norm", n.clone())?;
        }
        if self.act_fn != "silu" && self.act_fn != "swish" {
            unsupported("act_fn", self.act_fn.clone())?;
        }
        if self.center_input_sample {
            unsupported("center_input_sample", "true".into())?;
        }
        for t in &self.down_block_types {
            if t != "DownBlock2D" && t != "CrossAttnDownBlock2D" {
                unsupported("down_block_types", t.clone())?;
            }
        }
        for t in &self.up_block_types {
            if t != "UpBlock2D" && t != "CrossAttnUpBlock2D" {
                unsupported("up_block_types", t.clone())?;
            }
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2DCrossAttn") => {}
            Some(other) => unsupported("mid_block_type", other.into())?,
        }
        if self.mid_block_only_cross_attention == Some(true) {
            unsupported("mid_block_only_cross_attention", "true".into())?;
        }
        if self.norm_num_groups.is_none() {
            unsupported("norm_num_groups", "null".into())?;
        }
        Ok(())
    }

    /// `sample_size` as (height, width) in latent pixels, if configured.
    pub fn sample_size_hw(&self) -> Option<(usize, usize)> {
        match self.sample_size.as_ref()? {
            OneOrMany::One(s) => Some((*s, *s)),
            OneOrMany::Many(v) if v.len() == 2 => Some((v[0], v[1])),
            OneOrMany::Many(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::read_config;

    /// stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (note the nulls).
    const SDXL_UNET: &str = r#"{
      "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0",
      "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
      "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
      "block_out_channels": [320, 640, 1280], "center_input_sample": false,
      "class_embed_type": null, "class_embeddings_concat": false, "conv_in_kernel": 3,
      "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": null,
      "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
      "downsample_padding": 1, "dual_cross_attention": false, "encoder_hid_dim": null,
      "encoder_hid_dim_type": null, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
      "layers_per_block": 2, "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1,
      "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
      "num_attention_heads": null, "num_class_embeds": null, "only_cross_attention": false,
      "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
      "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false,
      "resnet_time_scale_shift": "default", "sample_size": 128, "time_cond_proj_dim": null,
      "time_embedding_act_fn": null, "time_embedding_dim": null,
      "time_embedding_type": "positional", "timestep_post_act": null,
      "transformer_layers_per_block": [1, 2, 10],
      "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
      "upcast_attention": null, "use_linear_projection": true
    }"#;

    #[test]
    fn parses_sdxl_unet_config_with_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, SDXL_UNET).unwrap();
        let cfg: UNetConfig = read_config(&p, UNET_KEEP_NULL).unwrap();
        cfg.validate().unwrap();
        assert!(!cfg.upcast_attention);
        assert_eq!(cfg.norm_num_groups, Some(32));
        assert_eq!(cfg.sample_size_hw(), Some((128, 128)));
        assert_eq!(
            cfg.transformer_layers_per_block.per_block(3, "t").unwrap(),
            vec![PerLayer::One(1), PerLayer::One(2), PerLayer::One(10)]
        );
        // A config with almost nothing takes diffusers' defaults (SD 1.x style UNet).
        std::fs::write(
            &p,
            r#"{"cross_attention_dim": 768, "mid_block_type": null}"#,
        )
        .unwrap();
        let cfg: UNetConfig = read_config(&p, UNET_KEEP_NULL).unwrap();
        assert_eq!(cfg.block_out_channels, vec![320, 640, 1280, 1280]);
        assert_eq!(cfg.mid_block_type, None);
        assert_eq!(cfg.attention_head_dim, OneOrMany::One(8));
    }

    /// SSD-1B style: per-layer depths in `transformer_layers_per_block` need
    /// `reverse_transformer_layers_per_block` (as diffusers requires).
    #[test]
    fn parses_asymmetric_transformer_depths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let base = SDXL_UNET.replace(
            r#""transformer_layers_per_block": [1, 2, 10]"#,
            r#""transformer_layers_per_block": [1, [2, 1], [4, 10]]"#,
        );
        std::fs::write(&p, &base).unwrap();
        let cfg: UNetConfig = read_config(&p, UNET_KEEP_NULL).unwrap();
        let err = format!("{:#}", cfg.validate().unwrap_err());
        assert!(
            err.contains("reverse_transformer_layers_per_block"),
            "{err}"
        );
        let text = base.replace(
            r#""upcast_attention": null"#,
            r#""upcast_attention": null, "reverse_transformer_layers_per_block": [[10, 4, 4], [1, 2, 2], 1]"#,
        );
        std::fs::write(&p, text).unwrap();
        let cfg: UNetConfig = read_config(&p, UNET_KEEP_NULL).unwrap();
        cfg.validate().unwrap();
        let down = cfg.transformer_layers_per_block.per_block(3, "t").unwrap();
        assert_eq!(down[1].per_layer(2, "t").unwrap(), vec![2, 1]);
        assert_eq!(down[0].per_layer(2, "t").unwrap(), vec![1, 1]);
        let up = cfg.reverse_transformer_layers_per_block.unwrap();
        assert_eq!(up[0].per_layer(3, "t").unwrap(), vec![10, 4, 4]);
        assert_eq!(up[2].per_layer(3, "t").unwrap(), vec![1, 1, 1]);
        assert!(up[1].per_layer(4, "t").is_err());
    }
}
