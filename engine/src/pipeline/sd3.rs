//! Stable Diffusion 3 / 3.5 (Large, Large Turbo, Medium), step for step as diffusers'
//! `StableDiffusion3Pipeline` and `StableDiffusion3Img2ImgPipeline`:
//!
//! 1. prompt embeddings: CLIP-L's and CLIP-G's penultimate hidden states (77 tokens each,
//!    `clip_skip` further back) side by side, zero-padded to the transformer's
//!    `joint_attention_dim`, followed by T5's last hidden state over 256 tokens (zeros
//!    where the model runs without T5); pooled: both CLIPs' projected pooled outputs.
//!    Negatives encode `negative_prompt or ""` (never zeros); only with CFG (`guidance > 1`);
//! 2. timesteps: FlowMatchEulerDiscreteScheduler (with the image's `mu` when the config
//!    shifts dynamically); img2img starts at `int(steps - steps * strength)`;
//! 3. latents: txt2img `randn`; img2img the posterior sample of the init image,
//!    `(z - shift_factor) * scaling_factor`, then `scale_noise` with a second draw;
//! 4. the transformer per step with CFG, and skip-layer guidance (txt2img, where asked) on the
//!    steps strictly inside `(start, stop) * steps`;
//! 5. VAE decode of `latents / scaling_factor + shift_factor`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};

use super::conditioning::TextEncoderSlot;
use super::denoise::{guidance_per_image, guided};
use super::latents::posterior_sample;
use super::load::{component_dir, load_vae};
use super::plan::check_common;
use super::{BatchKey, MAX_SIDE, Plan, per_request};
use crate::clip::ClipTextEncoder;
use crate::config::{ModelIndex, SchedulerConfig, read_json};
use crate::error::EngineError;
use crate::image_io::{image_to_tensor, tensor_to_images};
use crate::mmdit::Mmdit;
use crate::noise::NoiseSource;
use crate::scheduler::{self, Scheduler, SchedulerKind, div_scalar, mul_scalar};
use crate::t5::{T5Encoder, T5Tokenizer};
use crate::tokenizer::ClipTokenizer;
use crate::vae::AutoencoderKl;
use crate::{GenerateParams, Generated, ModelInfo, StageTimings};

/// diffusers' default `max_sequence_length` of the T5 prompt.
pub const T5_TOKENS: usize = 256;

/// Where the T5-XXL encoder runs (it is ~9 GB in bf16: the largest part of SD 3.5 Medium).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum T5Placement {
    /// On the model's device, in its dtype.
    #[default]
    Device,
    /// On the CPU in f32; its output is moved to the device.
    Cpu,
    /// Not loaded: the T5 part of the prompt is zeros, as diffusers with `text_encoder_3=None`.
    Off,
}

impl std::str::FromStr for T5Placement {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "device" | "gpu" | "on" => Ok(T5Placement::Device),
            "cpu" => Ok(T5Placement::Cpu),
            "off" | "none" | "no" => Ok(T5Placement::Off),
            _ => bail!("t5 placement {s:?}: device, cpu or off"),
        }
    }
}

/// A prompt's `(context, pooled)` embeddings.
type Embeds = (Tensor, Tensor);

struct T5Slot {
    tokenizer: Arc<T5Tokenizer>,
    encoder: Arc<T5Encoder>,
}

/// A loaded SD 3 / 3.5 model.
#[derive(Clone)]
pub struct Sd3Pipeline {
    dir: PathBuf,
    index: ModelIndex,
    clip: Vec<TextEncoderSlot>,
    t5: Option<Arc<T5Slot>>,
    transformer: Arc<Mmdit>,
    vae: Arc<AutoencoderKl>,
    scheduler_config: SchedulerConfig,
    device: Device,
}

/// Whether model_index.json lists SD 3's components (a transformer and a third text encoder).
pub(super) fn is_sd3_folder(index: &ModelIndex) -> bool {
    index.component("transformer").is_some()
        && (index.component("text_encoder_3").is_some() || index.class_name.contains("3"))
}

impl Sd3Pipeline {
    pub fn load(dir: &Path, device: &Device, dtype: DType, t5: T5Placement) -> Result<Self> {
        let index: ModelIndex = read_json(&dir.join("model_index.json"))?;
        let mut clip = Vec::new();
        for (tok, enc) in [
            ("tokenizer", "text_encoder"),
            ("tokenizer_2", "text_encoder_2"),
        ] {
            let edir = component_dir(dir, &index, enc)?;
            clip.push(TextEncoderSlot {
                tokenizer: Arc::new(ClipTokenizer::load(&component_dir(dir, &index, tok)?)?),
                encoder: Arc::new(
                    ClipTextEncoder::load(&edir, true, device, dtype)
                        .with_context(|| format!("loading {}", edir.display()))?,
                ),
            });
        }
        let transformer = Arc::new(
            Mmdit::load(&component_dir(dir, &index, "transformer")?, device, dtype)
                .with_context(|| format!("loading {}/transformer", dir.display()))?,
        );
        let cfg = &transformer.config;
        let clip_dim: usize = clip.iter().map(|c| c.encoder.config.hidden_size).sum();
        let pooled: usize = clip.iter().map(|c| c.encoder.config.projection_dim).sum();
        if clip_dim > cfg.joint_attention_dim || pooled != cfg.pooled_projection_dim {
            bail!(
                "{}: the CLIP encoders give {clip_dim} features (at most joint_attention_dim {}) and {pooled} pooled (pooled_projection_dim {})",
                dir.display(),
                cfg.joint_attention_dim,
                cfg.pooled_projection_dim
            );
        }
        let has_t5 = index.component("text_encoder_3").is_some();
        let t5 = match (t5, has_t5) {
            (T5Placement::Off, _) | (_, false) => None,
            (placement, true) => {
                let (t5_device, t5_dtype) = match placement {
                    T5Placement::Cpu => (Device::Cpu, DType::F32),
                    _ => (device.clone(), dtype),
                };
                let edir = component_dir(dir, &index, "text_encoder_3")?;
                let encoder = T5Encoder::load(&edir, &t5_device, t5_dtype)
                    .with_context(|| format!("loading {}", edir.display()))?;
                if encoder.config.d_model != cfg.joint_attention_dim {
                    bail!(
                        "{}: T5's d_model {} differs from the transformer's joint_attention_dim {}",
                        edir.display(),
                        encoder.config.d_model,
                        cfg.joint_attention_dim
                    );
                }
                let tokenizer = T5Tokenizer::load(&component_dir(dir, &index, "tokenizer_3")?)?;
                Some(Arc::new(T5Slot {
                    tokenizer: Arc::new(tokenizer),
                    encoder: Arc::new(encoder),
                }))
            }
        };
        let vae = load_vae(&component_dir(dir, &index, "vae")?, false, device, dtype)?;
        if vae.config.latent_channels != cfg.in_channels {
            bail!(
                "{}: the VAE has {} latent channels, the transformer takes {}",
                dir.display(),
                vae.config.latent_channels,
                cfg.in_channels
            );
        }
        let sched_path = component_dir(dir, &index, "scheduler")?.join("scheduler_config.json");
        Ok(Sd3Pipeline {
            dir: dir.to_path_buf(),
            index,
            clip,
            t5,
            transformer,
            vae: Arc::new(vae),
            scheduler_config: SchedulerConfig::load(&sched_path)?,
            device: device.clone(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the T5 encoder is loaded.
    pub fn has_t5(&self) -> bool {
        self.t5.is_some()
    }

    pub fn model_dtypes(&self) -> (DType, DType) {
        (self.transformer.dtype(), self.vae.dtype())
    }

    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config.scale_factor()
    }

    /// Width and height must be multiples of this (latent pixels per patch).
    fn size_multiple(&self) -> usize {
        self.vae_scale_factor() * self.transformer.config.patch_size
    }

    pub fn with_vae(&self, dir: &Path) -> Result<Self> {
        let vae = load_vae(dir, false, &self.device, self.transformer.dtype())
            .with_context(|| format!("loading the VAE in {}", dir.display()))?;
        if vae.config.latent_channels != self.vae.config.latent_channels {
            return Err(EngineError::invalid(
                "vae",
                format!(
                    "the VAE in {} has {} latent channels; this model's has {}",
                    dir.display(),
                    vae.config.latent_channels,
                    self.vae.config.latent_channels
                ),
            ));
        }
        let mut p = self.clone();
        p.vae = Arc::new(vae);
        Ok(p)
    }

    pub fn describe(&self) -> ModelInfo {
        let f = self.vae_scale_factor();
        let side = self.transformer.config.sample_size * f;
        ModelInfo {
            architecture: super::Architecture::StableDiffusion3.name().to_string(),
            pipeline_class: self.index.class_name.clone(),
            default_width: side,
            default_height: side,
            vae_scale_factor: f,
            default_scheduler: self
                .scheduler_config
                .class_name()
                .unwrap_or("(none)")
                .to_string(),
            supported_schedulers: scheduler::SUPPORTED
                .iter()
                .filter(|(k, _, _)| k.is_flow_matching())
                .map(|(_, d, _)| d.to_string())
                .collect(),
            prediction_type: "flow_matching".into(),
            // StableDiffusion3Pipeline's defaults.
            default_steps: 28,
            default_guidance: 7.0,
            uses_cfg_embedding: false,
        }
    }

    fn validate(&self, p: &GenerateParams) -> Result<()> {
        let max = (self.transformer.max_latent_side() * self.vae_scale_factor()).min(MAX_SIDE);
        let n_train = self
            .scheduler_config
            .usize_or("num_train_timesteps", 1000)?;
        check_common(p, self.size_multiple(), max, n_train)?;
        if let Some(k) = p.clip_skip {
            let max = self
                .clip
                .iter()
                .map(|c| c.encoder.config.num_hidden_layers)
                .min()
                .unwrap_or(1)
                - 1;
            if k > max {
                return Err(EngineError::invalid(
                    "clip_skip",
                    format!("{k} is not accepted: this model's text encoders allow 0 to {max}"),
                ));
            }
        }
        let unsupported = [
            (
                "emphasis",
                p.emphasis != crate::Emphasis::None,
                "A1111 prompt emphasis",
            ),
            ("mask", p.mask.is_some(), "inpainting"),
            ("controlnet", !p.controls.is_empty(), "ControlNets"),
            (
                "algorithm_type",
                p.algorithm_type.is_some(),
                "algorithm_type",
            ),
        ];
        // `karras` asks for Karras sigmas where the scheduler has them (the contract's
        // meaning): Flow Euler has none, so it is ignored here, as by UNet schedulers without.
        for (name, asked, what) in unsupported {
            if asked {
                return Err(EngineError::invalid(
                    name,
                    format!("{what} is not available for SD 3 models yet"),
                ));
            }
        }
        if let Some((_, s)) = &p.init_image
            && !(s.is_finite() && *s > 0.0 && *s <= 1.0)
        {
            return Err(EngineError::invalid(
                "strength",
                format!("{s} is not accepted: must be in (0, 1]"),
            ));
        }
        if let Some(slg) = &p.skip_layer_guidance {
            let n = self.transformer.config.num_layers;
            if let Some(bad) = slg.layers.iter().find(|&&l| l >= n) {
                return Err(EngineError::invalid(
                    "skip_layer_guidance",
                    format!(
                        "layer {bad} is not accepted: this transformer has layers 0 to {}",
                        n - 1
                    ),
                ));
            }
            if !(slg.scale.is_finite() && slg.start.is_finite() && slg.stop.is_finite()) {
                return Err(EngineError::invalid(
                    "skip_layer_guidance",
                    "scale, start and stop must be finite numbers",
                ));
            }
        }
        Ok(())
    }

    /// The scheduler for `steps` at this image size.
    fn scheduler(
        &self,
        kind: SchedulerKind,
        steps: usize,
        width: usize,
        height: usize,
    ) -> Result<Box<dyn Scheduler>> {
        let mut overrides = serde_json::Map::new();
        if self.scheduler_config.flag("use_dynamic_shifting") {
            let patch = self.size_multiple();
            let seq = (height / patch) * (width / patch);
            let mu = scheduler::flow_match_euler::mu_for(&self.scheduler_config, seq)?;
            overrides.insert("mu".into(), serde_json::json!(mu));
        }
        scheduler::build_with(kind, &self.scheduler_config, steps, None, &overrides)
    }

    pub fn plan(&self, params: GenerateParams) -> Result<Plan> {
        self.validate(&params)?;
        let kind = match &params.scheduler {
            Some(name) => scheduler::resolve(name)?.0,
            None => {
                let class = self.scheduler_config.class_name().unwrap_or("(none)");
                scheduler::resolve(class)
                    .map(|(k, _)| k)
                    .unwrap_or(SchedulerKind::EulerDiscrete)
            }
        };
        // "Euler" on a flow-matching model is its Euler (as ComfyUI names it for SD 3).
        let kind = match kind {
            SchedulerKind::EulerDiscrete => SchedulerKind::FlowMatchEuler,
            k => k,
        };
        if !kind.is_flow_matching() {
            return Err(EngineError::invalid(
                "scheduler",
                format!(
                    "{} steps noise-prediction models; SD 3 models take \"Flow Euler\" (FlowMatchEulerDiscreteScheduler)",
                    kind.class_name()
                ),
            ));
        }
        self.scheduler(kind, params.steps, params.width, params.height)
            .map_err(|e| match e.downcast::<EngineError>() {
                Ok(e) => e.into(),
                Err(e) => EngineError::invalid("scheduler", format!("{e:#}")),
            })?;
        let do_cfg = params.guidance > 1.0;
        let begin = match &params.init_image {
            // StableDiffusion3Img2ImgPipeline.get_timesteps (float arithmetic, no minimum).
            Some((_, strength)) => {
                let steps = params.steps as f64;
                let init = (steps * strength).min(steps);
                ((steps - init).max(0.0) as usize).min(params.steps - 1)
            }
            None => 0,
        };
        let key = BatchKey {
            width: params.width,
            height: params.height,
            steps: params.steps,
            scheduler: kind,
            options: Default::default(),
            do_cfg,
            text_chunks: 1,
            img2img: params.init_image.is_some(),
            masked: false,
            controls: Vec::new(),
            guess_mode: false,
            begin,
            // StableDiffusion3Img2ImgPipeline has no skip-layer guidance.
            skip_layer_guidance: match params.init_image {
                None if do_cfg => params.skip_layer_guidance.clone(),
                _ => None,
            },
        };
        Ok(Plan { params, key })
    }

    /// `(prompt_embeds (1, 77 + 256, joint), pooled (1, pooled_dim))` of one prompt triple.
    fn encode(
        &self,
        clip_texts: [&str; 2],
        t5_text: &str,
        clip_skip: Option<usize>,
    ) -> Result<Embeds> {
        let mut hidden = Vec::new();
        let mut pooled = Vec::new();
        for (slot, text) in self.clip.iter().zip(clip_texts) {
            let ids = slot.tokenizer.encode_padded(text)?;
            let out = slot.encoder.forward(&[ids])?;
            let k = out.hidden_states.len() - 2 - clip_skip.unwrap_or(0);
            hidden.push(out.hidden_states[k].clone());
            pooled.push(
                out.text_embeds
                    .context("SD 3's CLIP encoders have projections")?,
            );
        }
        let joint = self.transformer.config.joint_attention_dim;
        let clip = Tensor::cat(&hidden, 2)?;
        let clip = clip.pad_with_zeros(2, 0, joint - clip.dim(2)?)?;
        let t5 = match &self.t5 {
            Some(t5) => {
                let ids = t5.tokenizer.encode_padded(t5_text, T5_TOKENS)?;
                t5.encoder
                    .forward(&[ids])?
                    .to_device(&self.device)?
                    .to_dtype(clip.dtype())?
            }
            None => Tensor::zeros((1, T5_TOKENS, joint), clip.dtype(), &self.device)?,
        };
        Ok((Tensor::cat(&[clip, t5], 1)?, Tensor::cat(&pooled, 1)?))
    }

    /// The `(context, pooled)` conditioning of one request's images, and with CFG its
    /// negative one.
    fn condition(&self, p: &GenerateParams, do_cfg: bool) -> Result<(Embeds, Option<Embeds>)> {
        let or = |a: &Option<String>, b: &str| -> String {
            a.as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or(b)
                .to_string()
        };
        let rep = |(ctx, pooled): Embeds| -> Result<Embeds> {
            Ok((
                ctx.repeat((p.samples, 1, 1))?,
                pooled.repeat((p.samples, 1))?,
            ))
        };
        let prompt_2 = or(&p.prompt_2, &p.prompt);
        let pos = self.encode([&p.prompt, &prompt_2], &p.prompt, p.clip_skip)?;
        let neg = if do_cfg {
            let n1 = p.negative_prompt.clone().unwrap_or_default();
            let n2 = or(&p.negative_prompt_2, &n1);
            Some(rep(self.encode([&n1, &n2], &n1, None)?)?)
        } else {
            None
        };
        Ok((rep(pos)?, neg))
    }

    /// The starting latents of one request's images.
    fn initial_latents(
        &self,
        p: &GenerateParams,
        sched: &dyn Scheduler,
        begin: usize,
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let f = self.vae_scale_factor();
        let shape = [
            self.transformer.config.in_channels,
            p.height / f,
            p.width / f,
        ];
        let Some((img, _)) = &p.init_image else {
            return Ok(noise.randn(&shape)?);
        };
        let pixels = image_to_tensor(img, p.width, p.height, &self.device, self.vae.dtype())?;
        let sample = posterior_sample(&self.vae, &pixels, &noise.randn(&shape)?)?;
        let cfg = &self.vae.config;
        let shift = cfg.shift_factor.unwrap_or(0.0) as f32;
        let init = mul_scalar(
            &sample.affine(1.0, -(shift as f64))?,
            cfg.scaling_factor as f32,
        )?;
        let noise = noise.randn(&shape)?;
        sched.add_noise(&init, &noise, begin)
    }

    /// Runs one batch of requests that share `key` (see [`super::Pipeline::run`]).
    pub(super) fn run_batch(
        &self,
        batch: &[&GenerateParams],
        key: &BatchKey,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<Generated>> {
        let t0 = Instant::now();
        let mut sched = self.scheduler(key.scheduler, key.steps, key.width, key.height)?;
        let (mut ctx, mut pooled, mut neg_ctx, mut neg_pooled) = (vec![], vec![], vec![], vec![]);
        let mut latents = Vec::new();
        let mut generators = Vec::new();
        for &p in batch {
            let ((c, pl), negative) = self.condition(p, key.do_cfg)?;
            ctx.push(c);
            pooled.push(pl);
            if let Some((nc, npl)) = negative {
                neg_ctx.push(nc);
                neg_pooled.push(npl);
            }
            let mut noise = NoiseSource::new(p.seed, p.samples, &self.device);
            latents.push(self.initial_latents(p, sched.as_ref(), key.begin, &mut noise)?);
            generators.extend(noise.into_generators());
        }
        let (ctx, pooled) = (Tensor::cat(&ctx, 0)?, Tensor::cat(&pooled, 0)?);
        // With CFG the negative rows come first, as in diffusers.
        let (both_ctx, both_pooled) = if key.do_cfg {
            neg_ctx.push(ctx.clone());
            neg_pooled.push(pooled.clone());
            (Tensor::cat(&neg_ctx, 0)?, Tensor::cat(&neg_pooled, 0)?)
        } else {
            (ctx.clone(), pooled.clone())
        };
        let mut latents = Tensor::cat(&latents, 0)?;
        let mut noise = NoiseSource::from_generators(generators, &self.device);
        let guidance = guidance_per_image(batch);
        let n = guidance.len();
        let prepare = t0.elapsed();

        let t1 = Instant::now();
        let total = sched.timesteps().len();
        let to_run = total - key.begin;
        for (k, i) in (key.begin..total).enumerate() {
            let t = sched.timesteps()[i] as f32;
            let input = if key.do_cfg {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let rows = input.dim(0)?;
            let pred =
                self.transformer
                    .forward(&input, &vec![t; rows], &both_ctx, &both_pooled, &[])?;
            let (mut pred, cond) = guided(&pred, n, key.do_cfg, &guidance)?;
            if let Some(slg) = &key.skip_layer_guidance {
                let steps = key.steps as f64;
                if (k as f64) > steps * slg.start && (k as f64) < steps * slg.stop {
                    let skipped = self.transformer.forward(
                        &latents,
                        &vec![t; n],
                        &ctx,
                        &pooled,
                        &slg.layers,
                    )?;
                    let extra = mul_scalar(&(cond - skipped)?, slg.scale as f32)?;
                    pred = (pred + extra)?;
                }
            }
            latents = sched.step(&pred, i, &latents, &mut noise)?;
            if !on_step(k + 1, to_run) {
                return Err(EngineError::Cancelled.into());
            }
        }
        let denoise = t1.elapsed();

        let t2 = Instant::now();
        let cfg = &self.vae.config;
        let z = div_scalar(&latents, cfg.scaling_factor as f32)?
            .affine(1.0, cfg.shift_factor.unwrap_or(0.0))?;
        let decoded = self.vae.decode(&z)?;
        let images = tensor_to_images(&decoded)?;
        let timings = StageTimings {
            prepare,
            denoise,
            decode: t2.elapsed(),
        };
        Ok(per_request(batch, images, timings, sched.class_name()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn t5_placement_parses() {
        use super::T5Placement;
        assert_eq!("cpu".parse::<T5Placement>().unwrap(), T5Placement::Cpu);
        assert_eq!("off".parse::<T5Placement>().unwrap(), T5Placement::Off);
        assert!("elsewhere".parse::<T5Placement>().is_err());
    }
}
