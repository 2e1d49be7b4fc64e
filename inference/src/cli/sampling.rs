//! The sampling options `generate` and `bench` share, and the engine parameters they make.

use clap::Args;
use inference::engine::{GenerateParams, ModelInfo};

#[derive(Args)]
pub struct SamplingArgs {
    #[arg(long)]
    pub prompt: String,
    /// Negative prompt. Leaving it out differs from passing "" for SDXL (it zeroes the negative
    /// conditioning when the model sets force_zeros_for_empty_prompt); SD 1.x / 2.x encode "".
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// SDXL: the prompt of the second text encoder (default: --prompt).
    #[arg(long)]
    pub prompt_2: Option<String>,
    /// SDXL: the negative prompt of the second text encoder (default: --negative-prompt).
    #[arg(long)]
    pub negative_prompt_2: Option<String>,
    /// diffusers' clip_skip: condition on the text encoder output this many layers before the
    /// one the model uses (the prompt only, as diffusers).
    #[arg(long)]
    pub clip_skip: Option<usize>,
    /// How prompts are read: none (as diffusers: cut at 77 tokens) or a1111 (A1111's
    /// `(word:1.3)` emphasis and 75-token chunks for longer prompts).
    #[arg(long, default_value = "none")]
    pub emphasis: inference::engine::Emphasis,
    /// Width in pixels (default: the model's: unet sample_size x VAE scale factor, e.g. 1024 for
    /// SDXL, 512 for SD 1.5).
    #[arg(long)]
    pub width: Option<usize>,
    /// Height in pixels (default: the model's).
    #[arg(long)]
    pub height: Option<usize>,
    /// Denoising steps (default: the model's, 20; 4 for LCM).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (CFG is on above 1; default: the model's, 7.5 for SD
    /// 1.x / 2.x, 5 for SDXL; for LCM UNets the guidance embedding, 8.5).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Scheduler (default: the model's scheduler_config.json): a diffusers class name
    /// (EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, ...)
    /// or an A1111 name ("Euler a", "DPM++ 2M Karras", "DPM++ 2M SDE", "Heun", "LMS", "DPM2 a",
    /// "DDIM", "DDPM", "PLMS", "UniPC", "DEIS", "LCM"); an unknown name lists the supported ones.
    #[arg(long)]
    pub scheduler: Option<String>,
}

impl SamplingArgs {
    /// One image from `seed`, what was left out from the model's defaults.
    pub fn params(&self, info: &ModelInfo, seed: u64) -> GenerateParams {
        GenerateParams {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            prompt_2: self.prompt_2.clone(),
            negative_prompt_2: self.negative_prompt_2.clone(),
            clip_skip: self.clip_skip,
            emphasis: self.emphasis,
            width: self.width.unwrap_or(info.default_width),
            height: self.height.unwrap_or(info.default_height),
            steps: self.steps.unwrap_or(info.default_steps),
            guidance: self.guidance.unwrap_or(info.default_guidance),
            seed,
            scheduler: self.scheduler.clone(),
            ..GenerateParams::default()
        }
    }
}
