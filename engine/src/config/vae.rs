//! `vae/config.json`: diffusers' `AutoencoderKL`.

use anyhow::{Result, bail};
use serde::Deserialize;

use super::{default_1, default_3, default_4, default_silu, default_true};

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
