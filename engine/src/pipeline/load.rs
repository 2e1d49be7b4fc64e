//! Loading a model folder: the architecture decided from its components and their configs,
//! each component loaded from its folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};

use super::UnetPipeline;
use super::conditioning::TextEncoderSlot;
use crate::clip::ClipTextEncoder;
use crate::config::{
    ModelIndex, OneOrMany, SchedulerConfig, UNET_KEEP_NULL, UNetConfig, VaeConfig, read_config,
    read_json,
};
use crate::tokenizer::ClipTokenizer;
use crate::unet::UNet;
use crate::vae::AutoencoderKl;

/// Model families the engine knows how to condition. Decided from the components a model
/// folder has and their configs, never from a name (see [`UnetPipeline::load`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// SD 1.x (and LCM-distilled SD 1.5): one CLIP text encoder (quick_gelu, OpenAI CLIP),
    /// conditioning on its last hidden state after the final layer norm.
    StableDiffusion1,
    /// SD 2.x: as SD 1.x, with an OpenCLIP text encoder (gelu); typically v-prediction, linear
    /// projections and `upcast_attention` (all read from the configs).
    StableDiffusion2,
    /// SDXL base / Turbo / SSD-1B: two CLIP encoders, `text_time` added conditioning.
    StableDiffusionXl,
    /// SD 3 / 3.5: an MMDiT transformer, two CLIP encoders and T5, a 16-channel VAE, flow
    /// matching.
    StableDiffusion3,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::StableDiffusion1 => "stable-diffusion-1",
            Architecture::StableDiffusion2 => "stable-diffusion-2",
            Architecture::StableDiffusionXl => "stable-diffusion-xl",
            Architecture::StableDiffusion3 => "stable-diffusion-3",
        }
    }

    pub fn is_xl(self) -> bool {
        self == Architecture::StableDiffusionXl
    }
}

/// Pipeline classes whose components this engine runs as they are; a folder naming any other
/// class is run when its components are those of one of these (decided by
/// [`UnetPipeline::load`], with a log line).
pub const KNOWN_PIPELINE_CLASSES: &[&str] = &[
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "LatentConsistencyModelPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusion3Pipeline",
    "StableDiffusion3Img2ImgPipeline",
];

pub(super) fn component_dir(dir: &Path, index: &ModelIndex, name: &str) -> Result<PathBuf> {
    if index.component(name).is_none() {
        bail!(
            "{}: model_index.json has no `{name}` component",
            dir.join("model_index.json").display()
        );
    }
    let d = dir.join(name);
    if !d.is_dir() {
        bail!("model folder {} has no {name}/ directory", dir.display());
    }
    Ok(d)
}

/// The dtype the models run in on `device` unless told otherwise: f32 on the CPU (where the
/// fused kernels are), bf16 on a GPU (half the memory and tensor-core speed of f16, without
/// f16's overflow in the SDXL VAE and SD 2.x attention).
pub fn model_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

/// Whether the SDXL family (two text encoders) or SD 1.x / 2.x (one), from the components
/// model_index.json lists.
fn is_xl_folder(dir: &Path, index: &ModelIndex) -> Result<bool> {
    let has = |name: &str| index.component(name).is_some();
    let index_path = dir.join("model_index.json");
    if has("text_encoder_2") || has("tokenizer_2") {
        // Both encoders (SDXL base), or the second alone (SDXL's refiner).
        if has("text_encoder") != has("tokenizer") || !has("text_encoder_2") || !has("tokenizer_2")
        {
            bail!(
                "{}: an SDXL model needs tokenizer_2 and text_encoder_2, and tokenizer and text_encoder together",
                index_path.display()
            );
        }
        return Ok(true);
    }
    for name in ["text_encoder", "tokenizer", "unet", "vae", "scheduler"] {
        if !has(name) {
            bail!(
                "{}: pipeline class {} without a `{name}` component is not a Stable Diffusion model this engine runs (supported: {})",
                index_path.display(),
                index.class_name,
                KNOWN_PIPELINE_CLASSES.join(", ")
            );
        }
    }
    Ok(false)
}

/// Loads the VAE in `dir` for a model running in `dtype`. diffusers' SDXL pipelines run a
/// `force_upcast` VAE in f32 when the model is in f16 (the SDXL VAE overflows f16; an
/// fp16-fix VAE sets force_upcast false); bf16 has f32's range and stays as it is, and the
/// SD pipelines never upcast.
pub(super) fn load_vae(
    dir: &Path,
    xl: bool,
    device: &Device,
    dtype: DType,
) -> Result<AutoencoderKl> {
    let cfg: VaeConfig = read_config(&dir.join("config.json"), &[])?;
    let vae_dtype = if xl && cfg.force_upcast && dtype == DType::F16 {
        DType::F32
    } else {
        dtype
    };
    AutoencoderKl::load(dir, device, vae_dtype)
}

impl UnetPipeline {
    /// Loads a diffusers-format model folder. The architecture is decided from the components
    /// model_index.json lists (`text_encoder_2` → SDXL, else SD 1.x / 2.x) and from their
    /// configs, whatever the pipeline class is called. Models run in f32 on the CPU and in
    /// bf16 on a GPU ([`model_dtype`]; in f16 the SDXL VAE runs in f32 when its config has
    /// `force_upcast`, as diffusers does to keep it from overflowing).
    pub fn load(dir: &Path, device: &Device) -> Result<UnetPipeline> {
        Self::load_with_dtype(dir, device, model_dtype(device))
    }

    /// [`UnetPipeline::load`] with the models in `dtype` (f32, f16 or bf16) instead of the
    /// device's default. Latents and scheduler arithmetic stay in f32. Off f32 on the CPU the
    /// engine takes candle's generic ops instead of its fused CPU kernels: the path a GPU
    /// takes, slow on a CPU (for tests).
    pub fn load_with_dtype(dir: &Path, device: &Device, dtype: DType) -> Result<UnetPipeline> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            bail!("model dtype {dtype:?} is not supported (f32, f16, bf16)");
        }
        let index: ModelIndex = read_json(&dir.join("model_index.json"))?;
        let xl = is_xl_folder(dir, &index)?;
        let pairs: &[(&str, &str)] = if xl && index.component("text_encoder").is_none() {
            // SDXL's refiner: the second encoder only.
            &[("tokenizer_2", "text_encoder_2")]
        } else if xl {
            &[
                ("tokenizer", "text_encoder"),
                ("tokenizer_2", "text_encoder_2"),
            ]
        } else {
            &[("tokenizer", "text_encoder")]
        };
        let mut encoders = Vec::new();
        for &(tok, enc) in pairs {
            let tdir = component_dir(dir, &index, tok)?;
            let edir = component_dir(dir, &index, enc)?;
            let class = index.component(enc).map(|c| c.1).unwrap_or_default();
            let with_projection = class == "CLIPTextModelWithProjection";
            encoders.push(TextEncoderSlot {
                tokenizer: Arc::new(ClipTokenizer::load(&tdir)?),
                encoder: Arc::new(
                    ClipTextEncoder::load(&edir, with_projection, device, dtype)
                        .with_context(|| format!("loading {}", edir.display()))?,
                ),
            });
        }
        if xl && !encoders.last().is_some_and(|e| e.encoder.with_projection) {
            bail!("SDXL: text_encoder_2 must be a CLIPTextModelWithProjection");
        }
        let unet_dir = component_dir(dir, &index, "unet")?;
        let vae_dir = component_dir(dir, &index, "vae")?;
        let vae_cfg: VaeConfig = read_config(&vae_dir.join("config.json"), &[])?;
        let unet_cfg_path = unet_dir.join("config.json");
        let unet_cfg: UNetConfig = read_config(&unet_cfg_path, UNET_KEEP_NULL)?;
        let latent = vae_cfg.latent_channels;
        // Inpainting UNets also take the mask and the masked image's latents.
        let inpaint = unet_cfg.in_channels == 2 * latent + 1;
        if (unet_cfg.in_channels != latent && !inpaint) || unet_cfg.out_channels != latent {
            bail!(
                "{}: the unet takes {} and returns {} channels but the vae has {latent} latent channels (it must take them, or them plus a mask and a masked image for inpainting; upscaling / instruct-pix2pix models are not supported yet)",
                unet_cfg_path.display(),
                unet_cfg.in_channels,
                unet_cfg.out_channels
            );
        }
        let unet = Arc::new(UNet::load(&unet_dir, device, dtype)?);
        let vae = Arc::new(load_vae(&vae_dir, xl, device, dtype)?);
        let sched_path = component_dir(dir, &index, "scheduler")?.join("scheduler_config.json");
        let scheduler_config = SchedulerConfig::load(&sched_path)?;
        if xl && !unet.needs_added_cond() {
            bail!(
                "{}: an SDXL-family model (text_encoder_2) needs addition_embed_type \"text_time\"",
                unet_cfg_path.display()
            );
        }
        if !xl && unet.needs_added_cond() {
            bail!(
                "{}: addition_embed_type \"text_time\" needs SDXL's two text encoders, but model_index.json lists no text_encoder_2",
                unet_cfg_path.display()
            );
        }
        let (cross, what) = if xl {
            (
                encoders
                    .iter()
                    .map(|e| e.encoder.config.hidden_size)
                    .sum::<usize>(),
                "text encoders' hidden sizes sum to",
            )
        } else {
            (
                encoders[0].encoder.config.hidden_size,
                "text encoder's hidden size is",
            )
        };
        let unet_cross = match &unet.config.cross_attention_dim {
            OneOrMany::One(c) => vec![*c],
            OneOrMany::Many(v) => v.clone(),
        };
        if unet_cross.iter().any(|&c| c != cross) {
            bail!(
                "the {what} {cross}, but the unet's cross_attention_dim is {:?}",
                unet.config.cross_attention_dim
            );
        }
        let arch = if xl {
            Architecture::StableDiffusionXl
        } else if encoders[0].encoder.config.hidden_act == "gelu" {
            // OpenCLIP text encoders (SD 2.x) use gelu; OpenAI CLIP ViT-L (SD 1.x) quick_gelu.
            Architecture::StableDiffusion2
        } else {
            Architecture::StableDiffusion1
        };
        if !KNOWN_PIPELINE_CLASSES.contains(&index.class_name.as_str()) {
            tracing::info!(
                class = %index.class_name,
                architecture = arch.name(),
                "model_index.json names another pipeline class; running it as {} from its components",
                if xl { "StableDiffusionXLPipeline" } else { "StableDiffusionPipeline" }
            );
        }
        Ok(UnetPipeline {
            dir: dir.to_path_buf(),
            // Only the SDXL pipelines have this option; SD 1.x / 2.x encode "" instead.
            force_zeros_for_empty_prompt: xl && index.force_zeros_for_empty_prompt.unwrap_or(true),
            aesthetics: xl && index.requires_aesthetics_score == Some(true),
            inpaint,
            index,
            arch,
            encoders,
            unet,
            vae,
            scheduler_config,
            device: device.clone(),
            dtype: DType::F32,
        })
    }
}
