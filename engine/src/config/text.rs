//! `text_encoder*/config.json` (transformers' `CLIPTextConfig`) and the tokenizer's
//! `tokenizer_config.json`.

use anyhow::{Result, bail};
use serde::Deserialize;
use serde_json::Value;

use super::default_eps5;

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
