//! Text-to-image and image-to-image, step for step as diffusers' `StableDiffusionPipeline` /
//! `StableDiffusionImg2ImgPipeline` (SD 1.x / 2.x), `LatentConsistencyModelPipeline` (an SD
//! UNet with `time_cond_proj_dim`) and `StableDiffusionXLPipeline` /
//! `StableDiffusionXLImg2ImgPipeline` (SDXL, SDXL-Turbo, SSD-1B); fp32 on the CPU, no
//! watermark, no safety checker.
//!
//! Order of operations (and of random draws, per image generator):
//! 1. prompt embeddings, each prompt truncated to the tokenizer's 77 tokens (with a warning):
//!    SD 1.x / 2.x: the text encoder's last hidden state after its final layer norm
//!    (`clip_skip=None`; the tokenizer's attention mask is passed when the text encoder config
//!    sets `use_attention_mask`); SDXL: both encoders' penultimate hidden states concatenated,
//!    and the pooled output (projected) of `text_encoder_2`. Negative: SDXL uses zeros when
//!    `negative_prompt` is `None` and `force_zeros_for_empty_prompt`; otherwise the encoding
//!    of `negative_prompt` (`None` → `""`). Only with CFG (`guidance > 1` and no
//!    `time_cond_proj_dim`); an LCM UNet gets the guidance embedding of `guidance - 1` instead;
//! 2. timesteps (`steps`; img2img keeps the last `int(steps * strength)`, at least one);
//! 3. latents: txt2img draws `randn` and multiplies by `init_noise_sigma`; img2img encodes the
//!    image with the VAE, draws the posterior sample, scales it, then draws the noise and
//!    calls `scheduler.add_noise` at the first kept timestep;
//! 4. denoising loop with CFG `uncond + g * (cond - uncond)`;
//! 5. VAE decode of `latents / scaling_factor` (SDXL: the `latents_mean`/`latents_std` form
//!    when the VAE config has them), `(x / 2 + 0.5).clamp(0, 1)`, `(x * 255).round()`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};

mod conditioning;
mod control;
mod denoise;
mod inpaint;
mod latents;
mod load;
mod plan;
mod refine;
mod sd3;
mod variant;

pub use control::{ControlKey, MAX_CONTROLNETS};
pub use load::{Architecture, KNOWN_PIPELINE_CLASSES, model_dtype};
pub use plan::{BatchKey, Plan};
pub use sd3::{Sd3Pipeline, T5Placement};

use super::config::{ModelIndex, SchedulerConfig};
use super::embeddings::Embedding;
use super::error::EngineError;
use super::image_io::tensor_to_images;
use super::lora::Lora;
use super::noise::NoiseSource;
use super::scheduler::{self, SchedulerKind};
use super::unet::UNet;
use super::vae::AutoencoderKl;
use super::{GenerateParams, Generated, ModelInfo, StageTimings};
use conditioning::{TextEncoderSlot, UnetConditioning};
use denoise::{DenoiseRun, guidance_per_image};

/// Largest width / height accepted (pixels): beyond it a model would not fit in memory
/// on most machines, and none was trained for it.
pub const MAX_SIDE: usize = 4096;
/// Largest number of images per request (the inference server's cap too).
pub const MAX_SAMPLES: usize = 8;

/// Each request's own images (`samples` of them, in order) from a batch's, with the seed
/// that reproduces each alone.
pub(super) fn per_request(
    batch: &[&GenerateParams],
    images: Vec<image::RgbImage>,
    timings: StageTimings,
    scheduler: &str,
) -> Vec<Generated> {
    let mut images = images.into_iter();
    batch
        .iter()
        .map(|params| Generated {
            images: images
                .by_ref()
                .take(params.samples)
                .enumerate()
                .map(|(i, img)| (img, params.seed.wrapping_add(i as u64)))
                .collect(),
            timings,
            scheduler: scheduler.to_string(),
        })
        .collect()
}

/// A loaded model of any family the engine runs: the UNet families (SD 1.x / 2.x / SDXL and
/// their variants) or SD 3 / 3.5's transformer. Cloning shares its components.
#[derive(Clone)]
pub enum Pipeline {
    Unet(UnetPipeline),
    Sd3(Sd3Pipeline),
}

/// The error for what SD 3 models cannot do yet.
fn not_for_sd3(param: &'static str, what: &str) -> anyhow::Error {
    EngineError::invalid(
        param,
        format!("{what} are not available for SD 3 models yet"),
    )
}

impl Pipeline {
    /// Loads a diffusers-format model folder of any supported family, decided from the
    /// components model_index.json lists (a `transformer` and `text_encoder_3`: SD 3) and
    /// their configs. Models run in f32 on the CPU and bf16 on a GPU ([`model_dtype`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Pipeline> {
        Self::load_with_dtype(dir, device, model_dtype(device))
    }

    /// [`Pipeline::load`] with the models in `dtype` (f32, f16 or bf16).
    pub fn load_with_dtype(dir: &Path, device: &Device, dtype: DType) -> Result<Pipeline> {
        Self::load_with(dir, device, dtype, T5Placement::default())
    }

    /// [`Pipeline::load_with_dtype`], with SD 3's T5 encoder placed as `t5` says (ignored by
    /// the other families).
    pub fn load_with(
        dir: &Path,
        device: &Device,
        dtype: DType,
        t5: T5Placement,
    ) -> Result<Pipeline> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            bail!("model dtype {dtype:?} is not supported (f32, f16, bf16)");
        }
        let index: ModelIndex = crate::config::read_json(&dir.join("model_index.json"))?;
        if sd3::is_sd3_folder(&index) {
            return Ok(Pipeline::Sd3(Sd3Pipeline::load(dir, device, dtype, t5)?));
        }
        Ok(Pipeline::Unet(UnetPipeline::load_with_dtype(
            dir, device, dtype,
        )?))
    }

    pub fn architecture(&self) -> Architecture {
        match self {
            Pipeline::Unet(p) => p.architecture(),
            Pipeline::Sd3(_) => Architecture::StableDiffusion3,
        }
    }

    /// The UNet (for benchmarks of one step); SD 3 models have none.
    pub fn unet(&self) -> Result<&UNet> {
        match self {
            Pipeline::Unet(p) => Ok(p.unet()),
            Pipeline::Sd3(_) => bail!("an SD 3 model has a transformer, not a UNet"),
        }
    }

    /// The dtypes the denoiser (and text encoders) and the VAE run in.
    pub fn model_dtypes(&self) -> (DType, DType) {
        match self {
            Pipeline::Unet(p) => p.model_dtypes(),
            Pipeline::Sd3(p) => p.model_dtypes(),
        }
    }

    pub fn dir(&self) -> &Path {
        match self {
            Pipeline::Unet(p) => p.dir(),
            Pipeline::Sd3(p) => p.dir(),
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Pipeline::Unet(p) => p.device(),
            Pipeline::Sd3(p) => p.device(),
        }
    }

    pub fn vae_scale_factor(&self) -> usize {
        match self {
            Pipeline::Unet(p) => p.vae_scale_factor(),
            Pipeline::Sd3(p) => p.vae_scale_factor(),
        }
    }

    pub fn describe(&self) -> ModelInfo {
        match self {
            Pipeline::Unet(p) => p.describe(),
            Pipeline::Sd3(p) => p.describe(),
        }
    }

    /// Checks `params` against this model once and decides everything its run needs
    /// ([`Plan::key`] says which requests may share a batch).
    pub fn plan(&self, params: GenerateParams) -> Result<Plan> {
        match self {
            Pipeline::Unet(p) => p.plan(params),
            Pipeline::Sd3(p) => p.plan(params),
        }
    }

    /// Plans and runs one request. `on_step(done, total)` is called after every denoising
    /// step, on the calling thread; returning `false` cancels with [`EngineError::Cancelled`].
    pub fn generate(
        &self,
        params: &GenerateParams,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Generated> {
        let plan = self.plan(params.clone())?;
        let mut out = self.run(std::slice::from_ref(&plan), on_step)?;
        Ok(out.remove(0))
    }

    /// Runs several plans with equal [`Plan::key`]s as one batch (their prompts, negative
    /// prompts, seeds, guidance scales, sample counts and init images may differ) and returns
    /// each request's own result, in order. Every image comes from its own generator, so each
    /// request gets the images it would get alone. `on_step` as in [`Pipeline::generate`],
    /// for the whole batch.
    pub fn run(
        &self,
        plans: &[Plan],
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<Generated>> {
        if rayon::current_thread_index().is_some() {
            // Already on a rayon worker: its parallel kernels join the pool directly.
            return self.run_on_worker(plans, on_step);
        }
        // Run the work on a rayon worker, so that the many short parallel kernels are joined
        // by the thread that issues them instead of parking it each time (15-25% faster on 2
        // cores). Progress is relayed back here, where `on_step` runs (it need not be `Send`).
        let (progress_tx, progress_rx) = std::sync::mpsc::channel::<(usize, usize)>();
        let (reply_tx, reply_rx) = std::sync::mpsc::channel::<bool>();
        std::thread::scope(|ts| {
            let worker = ts.spawn(move || {
                let mut relay = move |done: usize, total: usize| -> bool {
                    progress_tx.send((done, total)).is_ok() && reply_rx.recv().unwrap_or(false)
                };
                rayon::scope(|_| self.run_on_worker(plans, &mut relay))
            });
            for (done, total) in progress_rx.iter() {
                if reply_tx.send(on_step(done, total)).is_err() {
                    break;
                }
            }
            worker
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the generation thread panicked")))
        })
    }

    /// [`Pipeline::run`] on the calling rayon worker.
    fn run_on_worker(
        &self,
        plans: &[Plan],
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<Generated>> {
        let Some(key) = plan::batch_key(plans)? else {
            return Ok(Vec::new());
        };
        let batch: Vec<&GenerateParams> = plans.iter().map(Plan::params).collect();
        match self {
            Pipeline::Unet(p) => p.run_batch(&batch, key, on_step),
            Pipeline::Sd3(p) => p.run_batch(&batch, key, on_step),
        }
    }

    /// SDXL's base + refiner ensemble ([`UnetPipeline::generate_refined`]).
    pub fn generate_refined(
        &self,
        refiner: &Pipeline,
        params: &GenerateParams,
        start: f64,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Generated> {
        match (self, refiner) {
            (Pipeline::Unet(p), Pipeline::Unet(r)) => p.generate_refined(r, params, start, on_step),
            _ => Err(not_for_sd3("refiner", "refiners")),
        }
    }

    /// This model with another VAE ([`UnetPipeline::with_vae`]).
    pub fn with_vae(&self, dir: &Path) -> Result<Pipeline> {
        Ok(match self {
            Pipeline::Unet(p) => Pipeline::Unet(p.with_vae(dir)?),
            Pipeline::Sd3(p) => Pipeline::Sd3(p.with_vae(dir)?),
        })
    }

    /// This model with LoRAs merged in ([`UnetPipeline::with_loras`]).
    pub fn with_loras(&self, loras: &[(&Lora, f64)]) -> Result<Pipeline> {
        match self {
            Pipeline::Unet(p) => Ok(Pipeline::Unet(p.with_loras(loras)?)),
            Pipeline::Sd3(_) if loras.is_empty() => Ok(self.clone()),
            Pipeline::Sd3(_) => Err(not_for_sd3("loras", "LoRAs")),
        }
    }

    /// This model with textual inversions ([`UnetPipeline::with_embeddings`]).
    pub fn with_embeddings(&self, embeddings: &[&Embedding]) -> Result<Pipeline> {
        match self {
            Pipeline::Unet(p) => Ok(Pipeline::Unet(p.with_embeddings(embeddings)?)),
            Pipeline::Sd3(_) if embeddings.is_empty() => Ok(self.clone()),
            Pipeline::Sd3(_) => Err(not_for_sd3("embeddings", "textual inversions")),
        }
    }
}

/// A loaded UNet-family model. Cloning shares its components; [`UnetPipeline::with_vae`] and
/// [`UnetPipeline::with_loras`] make variants that share what they do not change.
#[derive(Clone)]
pub struct UnetPipeline {
    dir: PathBuf,
    index: ModelIndex,
    arch: Architecture,
    encoders: Vec<TextEncoderSlot>,
    unet: Arc<UNet>,
    vae: Arc<AutoencoderKl>,
    scheduler_config: SchedulerConfig,
    force_zeros_for_empty_prompt: bool,
    /// SDXL's refiner (`requires_aesthetics_score`): its time ids end with an aesthetic
    /// score (6 for the prompt, 2.5 for the negative, as diffusers) instead of the size.
    aesthetics: bool,
    /// The UNet takes the latents, the mask and the masked image's latents (inpainting).
    inpaint: bool,
    device: Device,
    /// The dtype of the latents and of the scheduler arithmetic: always f32 (the UNet casts
    /// its input to its own dtype and its output back).
    dtype: DType,
}

impl UnetPipeline {
    /// The architecture the folder was recognised as.
    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    /// The UNet (for benchmarks of one step).
    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    /// The dtypes the UNet (and text encoders) and the VAE run in.
    pub fn model_dtypes(&self) -> (DType, DType) {
        (self.unet.dtype(), self.vae.dtype())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config.scale_factor()
    }

    /// The scheduler a batch with `key` runs, on this model's scheduler config.
    fn scheduler_for(&self, key: &BatchKey) -> Result<Box<dyn scheduler::Scheduler>> {
        scheduler::build(
            key.scheduler,
            &self.scheduler_config,
            key.steps,
            &key.options,
        )
    }

    /// The scheduler the model folder asks for, if this engine implements it.
    fn default_scheduler(&self) -> Result<SchedulerKind> {
        let class = self.scheduler_config.class_name().unwrap_or("(none)");
        scheduler::resolve(class).map(|(k, _)| k).map_err(|_| {
            EngineError::invalid(
                "scheduler",
                format!(
                    "the model's default scheduler {class} is not supported; choose one of: {}",
                    scheduler::supported_list()
                ),
            )
        })
    }

    pub fn describe(&self) -> ModelInfo {
        let f = self.vae_scale_factor();
        let (dh, dw) = self
            .unet
            .config
            .sample_size_hw()
            .map(|(h, w)| (h * f, w * f))
            .unwrap_or(if self.arch.is_xl() {
                (1024, 1024)
            } else {
                (512, 512)
            });
        let lcm = self.unet.config.time_cond_proj_dim.is_some();
        // diffusers' defaults: SD 7.5, SDXL 5.0, LCM 8.5 with 4 steps.
        let (default_steps, default_guidance) = match (lcm, self.arch.is_xl()) {
            (true, _) => (4, 8.5),
            (false, true) => (20, 5.0),
            (false, false) => (20, 7.5),
        };
        ModelInfo {
            architecture: self.arch.name().to_string(),
            pipeline_class: self.index.class_name.clone(),
            default_width: dw,
            default_height: dh,
            vae_scale_factor: f,
            default_scheduler: self
                .scheduler_config
                .class_name()
                .unwrap_or("(none)")
                .to_string(),
            supported_schedulers: scheduler::SUPPORTED
                .iter()
                .map(|(_, d, _)| d.to_string())
                .collect(),
            prediction_type: self
                .scheduler_config
                .str_or("prediction_type", "epsilon")
                .unwrap_or_else(|_| "epsilon".into()),
            default_steps,
            default_guidance,
            uses_cfg_embedding: lcm,
        }
    }

    /// Runs one batch of requests that share `key` (see [`Pipeline::run`]).
    fn run_batch(
        &self,
        batch: &[&GenerateParams],
        key: &BatchKey,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<Generated>> {
        let t0 = Instant::now();
        let mut sched = self.scheduler_for(key)?;
        let counts: Vec<usize> = batch.iter().map(|p| p.samples).collect();

        // 1-3. Per request: prompt conditioning and initial latents, each image from its own
        // generator (seed + i), then joined into one batch.
        let mut conds = Vec::with_capacity(batch.len());
        let mut latents = Vec::with_capacity(batch.len());
        let mut blends = Vec::new();
        let mut generators = Vec::new();
        for &params in batch {
            let mut cond = self.condition(params, params.samples, key.do_cfg)?;
            let mut noise = NoiseSource::new(params.seed, params.samples, &self.device);
            if params.mask.is_some() {
                let start = self.inpaint_start(params, sched.as_ref(), key.begin, &mut noise)?;
                latents.push(start.latents);
                cond.latent_extra = match start.unet_extra {
                    Some(extra) if key.do_cfg => Some(Tensor::cat(&[&extra, &extra], 0)?),
                    extra => extra,
                };
                blends.extend(start.blend);
            } else {
                latents.push(self.initial_latents(
                    params,
                    sched.as_ref(),
                    key.begin,
                    &mut noise,
                )?);
            }
            conds.push(cond);
            generators.extend(noise.into_generators());
        }
        let cond = UnetConditioning::join(&conds, &counts, key.do_cfg)?;
        let latents = Tensor::cat(&latents, 0)?;
        let blend = match blends.len() {
            0 => None,
            k if k == batch.len() => Some(inpaint::Blend::join(&blends)?),
            _ => bail!("masked and unmasked requests cannot share a batch"),
        };
        let mut noise = NoiseSource::from_generators(generators, &self.device);
        let control = control::ControlRun::new(batch, key.do_cfg, &self.device, self.dtype)?;
        let prepare = t0.elapsed();

        // 4. Denoising loop.
        let t1 = Instant::now();
        let guidance = guidance_per_image(batch);
        let run = DenoiseRun {
            cond: &cond,
            n: guidance.len(),
            do_cfg: key.do_cfg,
            guidance: &guidance,
            begin: key.begin,
            end: None,
            blend: blend.as_ref(),
            control: control.as_ref(),
        };
        let latents = self.denoise(&run, sched.as_mut(), latents, &mut noise, on_step)?;
        let denoise = t1.elapsed();

        // 5. Decode, then hand each request its own images.
        let t2 = Instant::now();
        let z = self.unscale_latents(&latents)?;
        let decoded = self.vae.decode(&z)?;
        let images = tensor_to_images(&decoded)?;
        let decode = t2.elapsed();
        let timings = StageTimings {
            prepare,
            denoise,
            decode,
        };
        Ok(per_request(batch, images, timings, sched.class_name()))
    }
}
