//! The JSON configs of a diffusers-format model folder: the UNet's (`unet`), the VAE's (`vae`),
//! the text encoders' and tokenizers' (`text`), and the scheduler's raw map (here).
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

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .with_context(|| format!("scheduler config `{key}` must be a number, got {v}")),
        }
    }

    /// Whether a boolean key is present and true.
    pub fn flag(&self, key: &str) -> bool {
        self.present(key).and_then(Value::as_bool) == Some(true)
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

mod text;
mod unet;
mod vae;

pub use text::{ClipTextConfig, TokenizerConfig, token_content};
pub use unet::{PerLayer, TransformerDepth, UNET_KEEP_NULL, UNetConfig};
pub use vae::VaeConfig;
