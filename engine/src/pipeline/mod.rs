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
mod variant;

pub use control::{ControlKey, MAX_CONTROLNETS};
pub use load::{Architecture, KNOWN_PIPELINE_CLASSES, model_dtype};
pub use plan::{BatchKey, Plan};

use super::config::{ModelIndex, SchedulerConfig};
use super::error::EngineError;
use super::image_io::tensor_to_images;
use super::noise::NoiseSource;
use super::scheduler::{self, SchedulerKind};
use super::unet::UNet;
use super::vae::AutoencoderKl;
use super::{GenerateParams, Generated, ModelInfo, StageTimings};
use conditioning::{TextEncoderSlot, UnetConditioning};
use denoise::DenoiseRun;

/// Largest width / height accepted (pixels): beyond it a model would not fit in memory
/// on most machines, and none was trained for it.
pub const MAX_SIDE: usize = 4096;
/// Largest number of images per request (the inference server's cap too).
pub const MAX_SAMPLES: usize = 8;

/// A loaded model. Cloning shares its components; [`Pipeline::with_vae`] and
/// [`Pipeline::with_loras`] make variants that share what they do not change.
#[derive(Clone)]
pub struct Pipeline {
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

impl Pipeline {
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

    /// Runs several plans with equal [`Plan::key`]s as one UNet batch (their prompts,
    /// negative prompts, seeds, guidance scales, sample counts and init images may differ)
    /// and returns each request's own result, in order. Every image comes from its own
    /// generator, so each request gets the images it would get alone. `on_step` as in
    /// [`Pipeline::generate`], for the whole batch.
    pub fn run(
        &self,
        plans: &[Plan],
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<Generated>> {
        if rayon::current_thread_index().is_some() {
            // Already on a rayon worker: its parallel kernels join the pool directly.
            return self.generate_on_worker(plans, on_step);
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
                rayon::scope(|_| self.generate_on_worker(plans, &mut relay))
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

    fn generate_on_worker(
        &self,
        plans: &[Plan],
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<Generated>> {
        let Some(first) = plans.first() else {
            return Ok(Vec::new());
        };
        let t0 = Instant::now();
        let key = &first.key;
        if let Some(other) = plans.iter().find(|p| p.key != *key) {
            bail!(
                "requests that differ in {key:?} and {:?} cannot share a batch",
                other.key
            );
        }
        let batch: Vec<&GenerateParams> = plans.iter().map(|p| &p.params).collect();
        let mut sched = self.scheduler_for(key)?;
        let counts: Vec<usize> = batch.iter().map(|p| p.samples).collect();

        // 1-3. Per request: prompt conditioning and initial latents, each image from its own
        // generator (seed + i), then joined into one batch.
        let mut conds = Vec::with_capacity(batch.len());
        let mut latents = Vec::with_capacity(batch.len());
        let mut blends = Vec::new();
        let mut generators = Vec::new();
        for &params in &batch {
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
        let control = control::ControlRun::new(&batch, key.do_cfg, &self.device, self.dtype)?;
        let prepare = t0.elapsed();

        // 4. Denoising loop.
        let t1 = Instant::now();
        let guidance: Vec<f32> = batch
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.guidance as f32, p.samples))
            .collect();
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
        let mut images = tensor_to_images(&decoded)?.into_iter();
        let decode = t2.elapsed();
        let timings = StageTimings {
            prepare,
            denoise,
            decode,
        };
        Ok(batch
            .iter()
            .map(|params| Generated {
                images: images
                    .by_ref()
                    .take(params.samples)
                    .enumerate()
                    .map(|(i, img)| (img, params.seed.wrapping_add(i as u64)))
                    .collect(),
                timings,
                scheduler: sched.class_name().to_string(),
            })
            .collect())
    }
}
