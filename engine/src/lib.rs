#![recursion_limit = "256"]
//! The inference engine: diffusers-format Stable Diffusion models on candle.
//!
//! # Public API
//!
//! ```no_run
//! use engine::{GenerateParams, Pipeline};
//! # fn main() -> anyhow::Result<()> {
//! let device = candle_core::Device::Cpu;
//! let pipeline = Pipeline::load(std::path::Path::new("models/sdxl"), &device)?; // once
//! let info = pipeline.describe(); // default size, VAE factor, scheduler, ...
//! let params = GenerateParams {
//!     prompt: "a lighthouse at dusk".into(),
//!     width: info.default_width,
//!     height: info.default_height,
//!     ..GenerateParams::default()
//! };
//! let out = pipeline.generate(&params, &mut |step, total| {
//!     println!("{step}/{total}");
//!     true // false cancels: the call returns EngineError::Cancelled
//! })?;
//! for (image, seed) in &out.images {
//!     image.save(format!("out-{seed}.png"))?;
//! }
//! # Ok(()) }
//! ```
//!
//! * [`Pipeline`] is loaded once and shared by all requests (`Send + Sync`; `generate` takes
//!   `&self` and may run concurrently). Models run in f32 on the CPU and bf16 on a GPU (f16 or f32 on request; in f16
//!   the SDXL VAE in f32 when its config has `force_upcast`); latents and schedulers in f32. `generate` blocks (call it from a
//!   blocking task in async code); the work runs on the rayon pool and `on_step` is called on
//!   the calling thread after each denoising step.
//! * Seeds: image `i` of a request uses its own torch-compatible generator seeded with
//!   `seed + i` (wrapping), so each image can be reproduced alone with `samples = 1`, and the
//!   result equals diffusers called with
//!   `generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(samples)]`.
//! * Errors: [`ErrorKind::of`] classifies an error as a bad parameter (the message names the
//!   parameter and what is accepted; map to HTTP 400), a cancellation, or an internal failure
//!   (missing file, mis-shaped tensor: the message names the file / tensor).
//! * Schedulers: `scheduler: None` uses the model's `scheduler_config.json`; names are
//!   resolved by [`scheduler::resolve`] (diffusers class names or A1111 names such as
//!   `"Euler a"`).
//! * Architectures: SD 1.x, SD 2.x, SDXL (base, Turbo, SSD-1B, and its refiner: see
//!   [`Pipeline::generate_refined`]) and LCM-distilled UNets, in
//!   diffusers' folder layout (weights in safetensors, plain or `fp16` variant, single or
//!   sharded), decided from the folder's components and configs ([`pipeline::Architecture`]).
//! * Fidelity: same folder, prompt, seed, scheduler and steps give diffusers' image (fp32,
//!   `torch.Generator("cpu")`), see `inference/tests/parity.rs` and `scripts/reference/`.
//!
//! Module map: [`pipeline`] (txt2img / img2img for every architecture), [`clip`] + [`tokenizer`] (text),
//! [`unet`] + [`unet_blocks`], [`vae`], [`scheduler`], [`noise`] (torch-compatible RNG),
//! [`config`] (model folder JSON), [`weights`] (safetensors), [`nn`] + [`cpu_conv`] +
//! [`cpu_kernels`] (layers and fused CPU kernels), [`image_io`], [`tiny`] (test model writer).

pub mod clip;
pub mod config;
pub mod controlnet;
pub mod cpu_conv;
pub mod cpu_kernels;
pub mod depth;
pub mod embeddings;
pub mod emphasis;
pub mod error;
pub mod image_io;
pub mod lora;
pub mod mmdit;
pub mod nn;
pub mod noise;
pub mod pil_resize;
pub mod pipeline;
pub mod preprocess;
pub mod safety;
pub mod scheduler;
pub mod t5;
#[cfg(feature = "random-weights")]
pub mod tiny;
pub mod tokenizer;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod weights;

use std::time::Duration;

pub use controlnet::ControlNet;
pub use error::{EngineError, ErrorKind};
pub use pipeline::{
    BatchKey, MAX_CONTROLNETS, Pipeline, Plan, Sd3Pipeline, T5Placement, UnetPipeline,
};

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub prompt: String,
    /// `None` and `Some("")` differ for SDXL (as in diffusers): with CFG, `None` uses zero
    /// negative embeddings when the model sets `force_zeros_for_empty_prompt`. SD 1.x / 2.x
    /// encode `""` for `None`. Unused without CFG (and by LCM UNets).
    pub negative_prompt: Option<String>,
    /// SDXL: the prompt of the second text encoder (`tokenizer_2` / `text_encoder_2`);
    /// `None` or empty: `prompt`, as diffusers. Refused by models with one text encoder.
    pub prompt_2: Option<String>,
    /// SDXL: the second encoder's negative prompt; `None` or empty: `negative_prompt`.
    pub negative_prompt_2: Option<String>,
    /// diffusers' `clip_skip`: condition on the text encoder output this many layers before
    /// the one the model uses (SD: the last, SDXL: the penultimate); `None` = 0. Applies to
    /// the prompt only, as in diffusers.
    pub clip_skip: Option<usize>,
    /// How the prompts are read: as diffusers reads them, or with A1111's emphasis syntax
    /// and 75-token chunks.
    pub emphasis: Emphasis,
    /// Pixels; a positive multiple of the VAE scale factor.
    pub width: usize,
    pub height: usize,
    /// Scheduler steps (img2img runs the last `int(steps * strength)` of them).
    pub steps: usize,
    /// Classifier-free guidance scale; CFG is on when > 1.
    pub guidance: f64,
    /// Seed of image 0; image `i` uses `seed + i`.
    pub seed: u64,
    /// Number of images.
    pub samples: usize,
    /// Scheduler name; `None` = the model's default.
    pub scheduler: Option<String>,
    /// Karras sigmas; `None` = the scheduler config's `use_karras_sigmas`.
    pub karras: Option<bool>,
    /// DPM-Solver's / DEIS' `algorithm_type`; `None` = the scheduler's (config or name).
    pub algorithm_type: Option<String>,
    /// img2img: the init image (any size; resized to width x height with Lanczos3) and the
    /// strength in (0, 1].
    pub init_image: Option<(image::DynamicImage, f64)>,
    /// Inpainting (with `init_image`, on a model whose UNet takes the mask and the masked
    /// image too): white repaints, black keeps (binarized at half, as diffusers' mask
    /// processor; any size, resized to width x height).
    pub mask: Option<image::DynamicImage>,
    /// ControlNets guiding the run, their residuals summed (diffusers'
    /// `MultiControlNetModel`); at most [`pipeline::MAX_CONTROLNETS`].
    pub controls: Vec<Control>,
    /// diffusers' `guess_mode`: the ControlNets see the conditional half only and their
    /// residuals rise from 0.1x at the shallowest skip to 1x at the mid block.
    pub guess_mode: bool,
    /// SD 3.5's skip-layer guidance (diffusers' `skip_guidance_layers` and its scale, start
    /// and stop); text-to-image with CFG only, as diffusers. Refused by UNet models.
    pub skip_layer_guidance: Option<SkipLayerGuidance>,
}

/// Skip-layer guidance: on the steps `i` with `start * steps < i < stop * steps`, the
/// prediction moves by `scale * (cond - cond without the transformer blocks in layers)`.
#[derive(Clone, Debug, PartialEq)]
pub struct SkipLayerGuidance {
    pub layers: Vec<usize>,
    pub scale: f64,
    pub start: f64,
    pub stop: f64,
}

impl SkipLayerGuidance {
    /// diffusers' defaults (scale 2.8 from 1% to 20% of the steps) on `layers` (7, 8, 9 for
    /// SD 3.5 Medium, as its card recommends).
    pub fn with_layers(layers: Vec<usize>) -> Self {
        SkipLayerGuidance {
            layers,
            scale: 2.8,
            start: 0.01,
            stop: 0.2,
        }
    }
}

/// One ControlNet of a request ([`GenerateParams::controls`]).
#[derive(Clone, Debug)]
pub struct Control {
    pub net: std::sync::Arc<controlnet::ControlNet>,
    /// The control image as the net takes it (preprocessed already); resized to
    /// width x height (Lanczos) if its size differs, read as RGB in [0, 1].
    pub image: image::DynamicImage,
    /// diffusers' `controlnet_conditioning_scale`.
    pub scale: f64,
    /// `control_guidance_start` / `control_guidance_end`: the fractions of the run it
    /// guides.
    pub start: f64,
    pub end: f64,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            prompt: String::new(),
            negative_prompt: None,
            prompt_2: None,
            negative_prompt_2: None,
            clip_skip: None,
            emphasis: Emphasis::None,
            algorithm_type: None,
            width: 1024,
            height: 1024,
            steps: 20,
            guidance: 5.0,
            seed: 0,
            samples: 1,
            scheduler: None,
            karras: None,
            init_image: None,
            mask: None,
            controls: Vec::new(),
            guess_mode: false,
            skip_layer_guidance: None,
        }
    }
}

/// How prompts are read ([`GenerateParams::emphasis`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Emphasis {
    /// As diffusers: the text as it is, truncated to the tokenizer's 77 tokens.
    #[default]
    None,
    /// A1111's: `(word)`, `((word))`, `(word:1.3)`, `[word]` weight tokens, `\(` is a
    /// bracket, `BREAK` ends a chunk, and prompts of any length are encoded in 75-token
    /// chunks ([`emphasis`]).
    A1111,
}

impl std::str::FromStr for Emphasis {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "diffusers" => Ok(Emphasis::None),
            "a1111" => Ok(Emphasis::A1111),
            _ => Err(EngineError::invalid(
                "emphasis",
                format!("{s:?} is not accepted: a1111 or none"),
            )),
        }
    }
}

/// Wall-clock time of each stage of a request.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimings {
    /// Prompt encoding, scheduler setup, initial latents (incl. the VAE encode for img2img).
    pub prepare: Duration,
    /// The denoising loop.
    pub denoise: Duration,
    /// VAE decode and conversion to images.
    pub decode: Duration,
}

/// The result of a request.
#[derive(Clone, Debug)]
pub struct Generated {
    /// Each image with the seed that reproduces it alone.
    pub images: Vec<(image::RgbImage, u64)>,
    pub timings: StageTimings,
    /// The diffusers class of the scheduler that ran.
    pub scheduler: String,
}

/// What a loaded model is and what it defaults to.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// `stable-diffusion-1`, `stable-diffusion-2` or `stable-diffusion-xl`.
    pub architecture: String,
    /// `_class_name` of model_index.json.
    pub pipeline_class: String,
    pub default_width: usize,
    pub default_height: usize,
    pub vae_scale_factor: usize,
    /// `_class_name` of scheduler_config.json.
    pub default_scheduler: String,
    /// Display names accepted for `scheduler` (see [`scheduler::SUPPORTED`] for aliases).
    pub supported_schedulers: Vec<String>,
    /// `epsilon` or `v_prediction`.
    pub prediction_type: String,
    pub default_steps: usize,
    pub default_guidance: f64,
    /// LCM-style guidance embedding (`time_cond_proj_dim`): guidance is not CFG.
    pub uses_cfg_embedding: bool,
}
