//! Writes a tiny, randomly initialised model in diffusers' exact folder layout, for tests and
//! benchmarks (no weights can be downloaded on the build machines): SDXL by default, or SD 1.5
//! / SD 2.x-like ([`TinyArch`]).
//!
//! The folder loads in diffusers (`StableDiffusionXLPipeline` / `StableDiffusionPipeline`
//! `.from_pretrained`) without missing or unexpected weights, and in this engine. Everything is deterministic from the
//! seed: each component's tensors are drawn in a fixed order from a torch-compatible generator
//! (seeded `seed`, `seed + 1`, ...), see [`Weights::random`].
//!
//! Sizes (chosen for fast CPU tests up to 1024x1024 output):
//! * UNet shaped like diffusers' tiny SDXL test model, with one more level so that attention
//!   runs at a quarter of the latent resolution (a 1024x1024 image has 1024 attention tokens
//!   instead of 4096 — the difference between ~6 and ~100 GFLOP per CFG step):
//!   block_out_channels (16, 32, 64), 2 layers per block, `DownBlock2D`, `DownBlock2D`,
//!   `CrossAttnDownBlock2D`, attention_head_dim (1, 2, 4) (used as head counts, diffusers'
//!   quirk), transformer layers (1, 1, 2), linear projections, cross_attention_dim 64,
//!   `text_time` with addition_time_embed_dim 8 and projection_class_embeddings_input_dim 80
//!   (= 6 * 8 + 32), norm_num_groups 8, sample_size 128 (default size 1024 like SDXL).
//! * VAE: 4 blocks (scale factor 8) with channels (8, 16, 16, 16), 1 layer per block,
//!   norm_num_groups 4, scaling_factor 0.13025 (SDXL's), mid-block attention.
//! * Text encoders: CLIP hidden 32, 5 layers, 4 heads, intermediate 37, vocab 1000;
//!   `text_encoder` uses quick_gelu (like CLIP ViT-L), `text_encoder_2` gelu with
//!   projection_dim 32 (like OpenCLIP bigG).
//! * Tokenizers: the first 1000 entries of the real CLIP BPE vocabulary (see
//!   `scripts/reference/make_tiny_vocab.py`); `tokenizer_2` pads with "!" like SDXL's.
//! * Scheduler: `EulerDiscreteScheduler` with SDXL base's scheduler_config.json.
//!
//! SD 1.5 / SD 2.x-like models ([`TinyArch::Sd15`], [`TinyArch::Sd2`]; `StableDiffusionPipeline`,
//! default size 256x256): one text encoder (SD 1.5: quick_gelu, pad `<|endoftext|>`; SD 2.x:
//! gelu, pad "!"), UNet block_out_channels (16, 32, 32) with `CrossAttnDownBlock2D`,
//! `CrossAttnDownBlock2D`, `DownBlock2D` (SD 1.5: attention_head_dim 2, conv projections; SD 2.x:
//! attention_head_dim (2, 4, 4), linear projections, upcast_attention), cross_attention_dim 32,
//! the VAE above with scaling_factor 0.18215, and the real models' schedulers (SD 1.5:
//! `PNDMScheduler`; SD 2.1: `DDIMScheduler` with v_prediction).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::clip::ClipTextEncoder;
use super::config::{ClipTextConfig, UNetConfig, VaeConfig};
use super::unet::UNet;
use super::vae::AutoencoderKl;
use super::weights::Weights;

const DIFFUSERS_VERSION: &str = "0.42.1";
const TRANSFORMERS_VERSION: &str = "5.23.0";
const TINY_VOCAB: &str = include_str!("tiny_vocab/vocab.json");
const TINY_MERGES: &str = include_str!("tiny_vocab/merges.txt");

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn write_safetensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::serialize(tensors, Some(meta))
        .with_context(|| format!("cannot serialize {}", path.display()))?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Which tiny model [`write_tiny_model_arch`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TinyArch {
    Sdxl,
    Sd15,
    Sd2,
}

impl std::str::FromStr for TinyArch {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sdxl" => Ok(TinyArch::Sdxl),
            "sd15" | "sd1" | "sd1.5" => Ok(TinyArch::Sd15),
            "sd2" | "sd21" | "sd2.1" => Ok(TinyArch::Sd2),
            other => {
                anyhow::bail!("unknown tiny model architecture {other:?}: use sdxl, sd15 or sd2")
            }
        }
    }
}

/// SDXL's model_index.json.
pub fn model_index() -> Value {
    json!({
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [null, null],
        "force_zeros_for_empty_prompt": true,
        "image_encoder": [null, null],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    })
}

/// SDXL base's scheduler_config.json.
pub fn scheduler_config() -> Value {
    json!({
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": null,
        "use_karras_sigmas": false
    })
}

/// model_index.json of a `StableDiffusionPipeline` without a safety checker.
pub fn sd_model_index(scheduler_class: &str) -> Value {
    json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    })
}

/// SD 1.5's scheduler_config.json (`PNDMScheduler`).
pub fn sd15_scheduler_config() -> Value {
    json!({
        "_class_name": "PNDMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": null
    })
}

/// SD 2.1's scheduler_config.json (`DDIMScheduler`, v-prediction).
pub fn sd2_scheduler_config() -> Value {
    json!({
        "_class_name": "DDIMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "clip_sample_range": 1.0,
        "dynamic_thresholding_ratio": 0.995,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": false,
        "sample_max_value": 1.0,
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "thresholding": false,
        "timestep_spacing": "leading",
        "trained_betas": null
    })
}

/// The SD 1.5 / 2.x-like UNet (`sd2`: per-block heads, linear projections, upcast_attention).
pub fn sd_unet_config(sd2: bool) -> Value {
    let heads = if sd2 { json!([2, 4, 4]) } else { json!(2) };
    json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "addition_embed_type": null,
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": null,
        "attention_head_dim": heads,
        "attention_type": "default",
        "block_out_channels": [16, 32, 32],
        "center_input_sample": false,
        "class_embed_type": null,
        "class_embeddings_concat": false,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 32,
        "cross_attention_norm": null,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "dropout": 0.0,
        "dual_cross_attention": false,
        "encoder_hid_dim": null,
        "encoder_hid_dim_type": null,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": null,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 8,
        "num_attention_heads": null,
        "num_class_embeds": null,
        "only_cross_attention": false,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": null,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": false,
        "resnet_time_scale_shift": "default",
        "reverse_transformer_layers_per_block": null,
        "sample_size": 32,
        "time_cond_proj_dim": null,
        "time_embedding_act_fn": null,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "timestep_post_act": null,
        "transformer_layers_per_block": 1,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "upcast_attention": sd2,
        "use_linear_projection": sd2
    })
}

/// SDXL's UNet.
pub fn unet_config() -> Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 8,
        "attention_head_dim": [1, 2, 4],
        "attention_type": "default",
        "block_out_channels": [16, 32, 64],
        "center_input_sample": false,
        "class_embed_type": null,
        "class_embeddings_concat": false,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 64,
        "cross_attention_norm": null,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dropout": 0.0,
        "dual_cross_attention": false,
        "encoder_hid_dim": null,
        "encoder_hid_dim_type": null,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": null,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 8,
        "num_attention_heads": null,
        "num_class_embeds": null,
        "only_cross_attention": false,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 80,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": false,
        "resnet_time_scale_shift": "default",
        "reverse_transformer_layers_per_block": null,
        "sample_size": 128,
        "time_cond_proj_dim": null,
        "time_embedding_act_fn": null,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "timestep_post_act": null,
        "transformer_layers_per_block": [1, 1, 2],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "upcast_attention": false,
        "use_linear_projection": true
    })
}

/// The VAE (SDXL's scaling factor).
pub fn vae_config() -> Value {
    vae_config_scaled(0.13025)
}

/// The VAE with the given `scaling_factor`.
pub fn vae_config_scaled(scaling_factor: f64) -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": [8, 16, 16, 16],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "force_upcast": true,
        "in_channels": 3,
        "latent_channels": 4,
        "latents_mean": null,
        "latents_std": null,
        "layers_per_block": 1,
        "mid_block_add_attention": true,
        "norm_num_groups": 4,
        "out_channels": 3,
        "sample_size": 1024,
        "scaling_factor": scaling_factor,
        "shift_factor": null,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "use_post_quant_conv": true,
        "use_quant_conv": true
    })
}

/// SDXL's text encoders: `text_encoder` (quick_gelu) and `text_encoder_2` (projection, gelu).
pub fn text_encoder_config(with_projection: bool) -> Value {
    clip_config(with_projection, with_projection)
}

/// A CLIP text encoder config; `gelu` (OpenCLIP) or quick_gelu (OpenAI CLIP).
pub fn clip_config(with_projection: bool, gelu: bool) -> Value {
    json!({
        "architectures": [if with_projection { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dtype": "float32",
        "eos_token_id": 2,
        "hidden_act": if gelu { "gelu" } else { "quick_gelu" },
        "hidden_size": 32,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "pad_token_id": 1,
        "projection_dim": 32,
        "transformers_version": TRANSFORMERS_VERSION,
        "vocab_size": 1000
    })
}

fn write_tokenizer(dir: &Path, pad: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("vocab.json"), TINY_VOCAB)?;
    std::fs::write(dir.join("merges.txt"), TINY_MERGES)?;
    write_json(
        &dir.join("special_tokens_map.json"),
        &json!({
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": pad,
            "unk_token": "<|endoftext|>"
        }),
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "add_prefix_space": false,
            "bos_token": "<|startoftext|>",
            "clean_up_tokenization_spaces": true,
            "do_lower_case": true,
            "eos_token": "<|endoftext|>",
            "errors": "replace",
            "model_max_length": 77,
            "pad_token": pad,
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": "<|endoftext|>"
        }),
    )
}

/// Writes one model component to `d`: its `config.json`, and random weights drawn by building
/// the model from them (so the file holds exactly the tensors the model loads, in load order).
fn write_component<C: DeserializeOwned>(
    d: &Path,
    cfg_json: Value,
    seed: u64,
    weights_file: &str,
    build: impl FnOnce(&Weights, C) -> Result<()>,
) -> Result<()> {
    std::fs::create_dir_all(d)?;
    write_json(&d.join("config.json"), &cfg_json)?;
    let cfg: C = serde_json::from_value(cfg_json)?;
    let w = Weights::random(seed);
    build(&w, cfg)?;
    write_safetensors(&d.join(weights_file), w.drawn())
}

/// Writes the tiny SDXL model to `dir` (created if needed; existing files are overwritten).
pub fn write_tiny_model(dir: &Path, seed: u64) -> Result<()> {
    write_tiny_model_arch(dir, seed, TinyArch::Sdxl)
}

/// Writes the tiny model of `arch` to `dir` (created if needed; existing files are
/// overwritten).
pub fn write_tiny_model_arch(dir: &Path, seed: u64, arch: TinyArch) -> Result<()> {
    match arch {
        TinyArch::Sdxl => write_sdxl(dir, seed),
        TinyArch::Sd15 => write_sd(dir, seed, false),
        TinyArch::Sd2 => write_sd(dir, seed, true),
    }
}

/// An SD 1.5 (`sd2` false) or SD 2.x-like model.
fn write_sd(dir: &Path, seed: u64, sd2: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (sched_cfg, pad) = if sd2 {
        (sd2_scheduler_config(), "!")
    } else {
        (sd15_scheduler_config(), "<|endoftext|>")
    };
    let class = sched_cfg["_class_name"].as_str().unwrap_or_default();
    write_json(&dir.join("model_index.json"), &sd_model_index(class))?;
    let sched = dir.join("scheduler");
    std::fs::create_dir_all(&sched)?;
    write_json(&sched.join("scheduler_config.json"), &sched_cfg)?;
    write_tokenizer(&dir.join("tokenizer"), pad)?;
    write_component(
        &dir.join("text_encoder"),
        clip_config(false, sd2),
        seed.wrapping_add(1),
        "model.safetensors",
        |w, cfg: ClipTextConfig| ClipTextEncoder::build(w, cfg, false).map(drop),
    )?;
    write_component(
        &dir.join("unet"),
        sd_unet_config(sd2),
        seed.wrapping_add(3),
        "diffusion_pytorch_model.safetensors",
        |w, cfg: UNetConfig| UNet::build(w, cfg).map(drop),
    )?;
    write_component(
        &dir.join("vae"),
        vae_config_scaled(0.18215),
        seed.wrapping_add(4),
        "diffusion_pytorch_model.safetensors",
        |w, cfg: VaeConfig| AutoencoderKl::build(w, cfg).map(drop),
    )
}

fn write_sdxl(dir: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_json(&dir.join("model_index.json"), &model_index())?;

    let sched = dir.join("scheduler");
    std::fs::create_dir_all(&sched)?;
    write_json(&sched.join("scheduler_config.json"), &scheduler_config())?;

    write_tokenizer(&dir.join("tokenizer"), "<|endoftext|>")?;
    write_tokenizer(&dir.join("tokenizer_2"), "!")?;

    for (k, (name, with_projection)) in [("text_encoder", false), ("text_encoder_2", true)]
        .into_iter()
        .enumerate()
    {
        write_component(
            &dir.join(name),
            text_encoder_config(with_projection),
            seed.wrapping_add(1 + k as u64),
            "model.safetensors",
            |w, cfg: ClipTextConfig| ClipTextEncoder::build(w, cfg, with_projection).map(drop),
        )?;
    }
    write_component(
        &dir.join("unet"),
        unet_config(),
        seed.wrapping_add(3),
        "diffusion_pytorch_model.safetensors",
        |w, cfg: UNetConfig| UNet::build(w, cfg).map(drop),
    )?;
    write_component(
        &dir.join("vae"),
        vae_config(),
        seed.wrapping_add(4),
        "diffusion_pytorch_model.safetensors",
        |w, cfg: VaeConfig| AutoencoderKl::build(w, cfg).map(drop),
    )?;
    Ok(())
}
