//! The JSON configs of a diffusers-format model folder.
//!
//! Everything the engine builds is read from these files, never inferred from a model's name.
//! Unknown keys are ignored; missing keys take the defaults of the corresponding diffusers /
//! transformers `__init__`. Keys whose non-default values the engine does not implement are
//! rejected at load time with an error naming the key (see `validate` functions), so a model
//! never runs with silently different semantics.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Reads and parses a JSON file, naming the file in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
}

/// Reads a model config. A `null` value means "the `__init__` default" for most keys of
/// diffusers / transformers configs (e.g. SDXL writes `"upcast_attention": null`), so `null`
/// entries are dropped before parsing, except for `keep_null` keys where `None` has its own
/// meaning (e.g. `"mid_block_type": null` = no mid block).
pub fn read_config<T: DeserializeOwned>(path: &Path, keep_null: &[&str]) -> Result<T> {
    let mut map: serde_json::Map<String, Value> = read_json(path)?;
    map.retain(|k, v| !v.is_null() || keep_null.contains(&k.as_str()));
    serde_json::from_value(Value::Object(map))
        .with_context(|| format!("cannot parse {}", path.display()))
}

/// Keys of `unet/config.json` whose `null` differs from their default.
pub const UNET_KEEP_NULL: &[&str] = &["norm_num_groups", "mid_block_type"];

/// A config value that diffusers accepts either as one number for all blocks or per block.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// Expands to one value per block (`n` blocks), checking the length of a list.
    pub fn per_block(&self, n: usize, key: &str) -> Result<Vec<T>> {
        match self {
            OneOrMany::One(v) => Ok(vec![v.clone(); n]),
            OneOrMany::Many(v) if v.len() == n => Ok(v.clone()),
            OneOrMany::Many(v) => bail!(
                "config key `{key}` has {} entries but the model has {n} blocks",
                v.len()
            ),
        }
    }
}

/// `model_index.json`: the pipeline class and its components.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    #[serde(rename = "_diffusers_version", default)]
    pub diffusers_version: Option<String>,
    /// SDXL: with CFG and no negative prompt, the negative embeddings are zeros.
    #[serde(default)]
    pub force_zeros_for_empty_prompt: Option<bool>,
    /// SDXL refiner conditioning; not supported yet.
    #[serde(default)]
    pub requires_aesthetics_score: Option<bool>,
    /// The components: `"unet": ["diffusers", "UNet2DConditionModel"]`, ... (or `[null, null]`).
    #[serde(flatten)]
    pub components: serde_json::Map<String, Value>,
}

impl ModelIndex {
    /// The `[library, class]` of a component, or `None` when it is absent or `[null, null]`.
    pub fn component(&self, name: &str) -> Option<(String, String)> {
        let arr = self.components.get(name)?.as_array()?;
        let lib = arr.first()?.as_str()?;
        let class = arr.get(1)?.as_str()?;
        Some((lib.to_string(), class.to_string()))
    }
}

fn default_true() -> bool {
    true
}
fn default_4() -> usize {
    4
}
fn default_3() -> usize {
    3
}
fn default_1() -> usize {
    1
}
fn default_f1() -> f64 {
    1.0
}
fn default_silu() -> String {
    "silu".into()
}
fn default_eps5() -> f64 {
    1e-5
}
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

fn vae_down_default() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn vae_up_default() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn vae_channels_default() -> Vec<usize> {
    vec![64]
}
fn default_scaling() -> f64 {
    0.18215
}
fn default_groups_vae() -> usize {
    32
}
fn default_sample_vae() -> usize {
    32
}

/// `vae/config.json` (`AutoencoderKL`).
#[derive(Clone, Debug, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "default_3")]
    pub in_channels: usize,
    #[serde(default = "default_3")]
    pub out_channels: usize,
    #[serde(default = "vae_down_default")]
    pub down_block_types: Vec<String>,
    #[serde(default = "vae_up_default")]
    pub up_block_types: Vec<String>,
    #[serde(default = "vae_channels_default")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_1")]
    pub layers_per_block: usize,
    #[serde(default = "default_silu")]
    pub act_fn: String,
    #[serde(default = "default_4")]
    pub latent_channels: usize,
    #[serde(default = "default_groups_vae")]
    pub norm_num_groups: usize,
    #[serde(default = "default_sample_vae")]
    pub sample_size: usize,
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    pub fn validate(&self) -> Result<()> {
        if self.block_out_channels.is_empty() || self.layers_per_block == 0 {
            bail!("vae config: block_out_channels and layers_per_block must not be empty / zero");
        }
        for t in &self.down_block_types {
            if t != "DownEncoderBlock2D" {
                bail!(
                    "vae config `down_block_types` entry {t} is not supported by this engine yet"
                );
            }
        }
        for t in &self.up_block_types {
            if t != "UpDecoderBlock2D" {
                bail!("vae config `up_block_types` entry {t} is not supported by this engine yet");
            }
        }
        if self.down_block_types.len() != self.block_out_channels.len()
            || self.up_block_types.len() != self.block_out_channels.len()
        {
            bail!("vae config: down/up_block_types must have one entry per block_out_channels");
        }
        if self.act_fn != "silu" && self.act_fn != "swish" {
            bail!(
                "vae config `act_fn` = {} is not supported by this engine yet",
                self.act_fn
            );
        }
        if let (Some(m), Some(s)) = (&self.latents_mean, &self.latents_std)
            && (m.len() != self.latent_channels || s.len() != self.latent_channels)
        {
            bail!("vae config: latents_mean / latents_std must have latent_channels entries");
        }
        Ok(())
    }

    /// `2 ** (len(block_out_channels) - 1)`, as diffusers pipelines compute it.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }
}

fn default_quick_gelu() -> String {
    "quick_gelu".into()
}
fn default_77() -> usize {
    77
}
fn default_512() -> usize {
    512
}
fn default_eos() -> i64 {
    49407
}

/// `text_encoder*/config.json` (`CLIPTextConfig`).
#[derive(Clone, Debug, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_77")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "default_eps5")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_512")]
    pub projection_dim: usize,
    #[serde(default = "default_eos")]
    pub eos_token_id: i64,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// Not a `CLIPTextConfig` key, but diffusers' SD pipelines pass the tokenizer's attention
    /// mask to the encoder when a config sets it (padding tokens are then not attended to).
    #[serde(default)]
    pub use_attention_mask: bool,
}

impl ClipTextConfig {
    pub fn validate(&self) -> Result<()> {
        match self.hidden_act.as_str() {
            "quick_gelu" | "gelu" => Ok(()),
            other => {
                bail!("text encoder `hidden_act` = {other} is not supported (quick_gelu, gelu)")
            }
        }
    }
}

/// `tokenizer*/tokenizer_config.json` and `special_tokens_map.json` (the parts we use).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TokenizerConfig {
    #[serde(default)]
    pub model_max_length: Option<f64>,
    #[serde(default)]
    pub pad_token: Option<Value>,
    #[serde(default)]
    pub bos_token: Option<Value>,
    #[serde(default)]
    pub eos_token: Option<Value>,
    #[serde(default)]
    pub unk_token: Option<Value>,
}

/// A special token as transformers writes it: a string or `{"content": "...", ...}`.
pub fn token_content(v: &Option<Value>) -> Option<String> {
    match v.as_ref()? {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `scheduler/scheduler_config.json`: kept as the raw key/value map, because diffusers'
/// `Scheduler.from_config` lets any scheduler class read the keys it knows from any other
/// class's config (missing keys take the *target* class's defaults): each class's typed
/// config is made from it (`scheduler::class_config`).
#[derive(Clone, Debug, Default)]
pub struct SchedulerConfig {
    pub map: serde_json::Map<String, Value>,
}

impl SchedulerConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let map: serde_json::Map<String, Value> = read_json(path)?;
        Ok(SchedulerConfig { map })
    }

    /// The class that wrote the config (`_class_name`).
    pub fn class_name(&self) -> Option<&str> {
        self.map.get("_class_name")?.as_str()
    }

    fn present(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .with_context(|| format!("scheduler config `{key}` must be an integer, got {v}")),
        }
    }

    pub fn str_or(&self, key: &str, default: &str) -> Result<String> {
        match self.present(key) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("scheduler config `{key}` must be a string, got {v}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
