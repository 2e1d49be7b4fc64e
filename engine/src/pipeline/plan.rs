//! A request checked against a loaded model once, and everything its run needs decided:
//! [`UnetPipeline::plan`] makes a [`Plan`], whose [`BatchKey`] says which requests may share a
//! batch.

use anyhow::Result;

use super::{ControlKey, MAX_SAMPLES, MAX_SIDE, UnetPipeline, denoise};
use crate::error::EngineError;
use crate::scheduler::{self, SchedulerKind};
use crate::{GenerateParams, SkipLayerGuidance};

/// The checks every family makes: the size (a positive multiple of `multiple`, at most
/// `max_side`), steps (1 to the scheduler's training steps), guidance and samples.
pub(super) fn check_common(
    p: &GenerateParams,
    multiple: usize,
    max_side: usize,
    n_train: usize,
) -> Result<()> {
    for (name, v) in [("width", p.width), ("height", p.height)] {
        if v == 0 || v % multiple != 0 || v > max_side {
            return Err(EngineError::invalid(
                name,
                format!(
                    "{v} is not accepted: must be a positive multiple of {multiple}, at most {max_side}"
                ),
            ));
        }
    }
    if p.steps == 0 || p.steps > n_train {
        return Err(EngineError::invalid(
            "steps",
            format!(
                "{} is not accepted: must be between 1 and {n_train}",
                p.steps
            ),
        ));
    }
    if !p.guidance.is_finite() || p.guidance < 0.0 {
        return Err(EngineError::invalid(
            "guidance",
            format!(
                "{} is not accepted: must be a finite number >= 0",
                p.guidance
            ),
        ));
    }
    if p.samples == 0 || p.samples > MAX_SAMPLES {
        return Err(EngineError::invalid(
            "samples",
            format!(
                "{} is not accepted: must be between 1 and {MAX_SAMPLES}",
                p.samples
            ),
        ));
    }
    Ok(())
}

impl UnetPipeline {
    fn validate(&self, p: &GenerateParams) -> Result<()> {
        let n_train = self
            .scheduler_config
            .usize_or("num_train_timesteps", 1000)?;
        check_common(p, self.vae_scale_factor(), MAX_SIDE, n_train)?;
        if !self.arch.is_xl() {
            for (name, v) in [
                ("prompt_2", &p.prompt_2),
                ("negative_prompt_2", &p.negative_prompt_2),
            ] {
                if v.as_deref().is_some_and(|v| !v.is_empty()) {
                    return Err(EngineError::invalid(
                        name,
                        "is for SDXL's second text encoder; this model has one (leave it out)",
                    ));
                }
            }
        }
        if let Some(k) = p.clip_skip {
            let max = self.max_clip_skip();
            if k > max {
                return Err(EngineError::invalid(
                    "clip_skip",
                    format!("{k} is not accepted: this model's text encoders allow 0 to {max}"),
                ));
            }
        }
        match (&p.mask, &p.init_image, self.inpaint) {
            (Some(_), None, _) => {
                return Err(EngineError::invalid(
                    "mask",
                    "needs an init image (the image to paint into)",
                ));
            }
            (None, _, true) => {
                return Err(EngineError::invalid(
                    "mask",
                    "this is an inpainting model: send an init image and a mask",
                ));
            }
            _ => {}
        }
        self.validate_controls(p)?;
        if let Some((_, strength)) = &p.init_image {
            let s = *strength;
            if !(s.is_finite() && s > 0.0 && s <= 1.0) {
                return Err(EngineError::invalid(
                    "strength",
                    format!("{s} is not accepted: must be in (0, 1]"),
                ));
            }
        }
        Ok(())
    }

    /// Checks `params` against this model once and decides everything the run needs: the
    /// scheduler (the request's, else the model's), Karras sigmas, where image-to-image
    /// starts, and so what the request must share with others to run in one batch
    /// ([`Plan::key`]). The pipeline runs plans without checking them again.
    pub fn plan(&self, params: GenerateParams) -> Result<Plan> {
        self.validate(&params)?;
        let (scheduler, name_karras) = match &params.scheduler {
            Some(name) => scheduler::resolve(name)?,
            None => (self.default_scheduler()?, None),
        };
        if scheduler.is_flow_matching() {
            return Err(EngineError::invalid(
                "scheduler",
                format!(
                    "{} is for flow-matching models (SD 3); this model predicts noise: choose one of {}",
                    scheduler.class_name(),
                    scheduler::supported_list()
                ),
            ));
        }
        if params.skip_layer_guidance.is_some() {
            return Err(EngineError::invalid(
                "skip_layer_guidance",
                "is for SD 3 models' transformer layers; this model has a UNet",
            ));
        }
        // The `karras` option asks for Karras sigmas where the scheduler has them (the
        // contract's meaning; ModelsLab sends use_karras_sigmas=yes with any scheduler);
        // a name that asks for them ("DDIM Karras") was refused by `resolve` already.
        let options = scheduler::Options {
            karras: params
                .karras
                .filter(|_| scheduler.supports_karras())
                .or(name_karras),
            algorithm_type: params.algorithm_type.clone(),
        };
        // Built once here to check the options against this model's config (microseconds);
        // the batch builds its own when it runs.
        scheduler::build(scheduler, &self.scheduler_config, params.steps, &options).map_err(
            |e| match e.downcast::<EngineError>() {
                Ok(e) => e.into(),
                Err(e) => EngineError::invalid("scheduler", format!("{e:#}")),
            },
        )?;
        let has_time_cond = self.unet.config.time_cond_proj_dim.is_some();
        let strength = params.init_image.as_ref().map(|(_, s)| *s);
        let do_cfg = params.guidance > 1.0 && !has_time_cond;
        let text_chunks = self.text_chunks(&params, do_cfg)?;
        let key = BatchKey {
            width: params.width,
            height: params.height,
            steps: params.steps,
            scheduler,
            options,
            do_cfg,
            text_chunks,
            img2img: strength.is_some(),
            masked: params.mask.is_some(),
            controls: params.controls.iter().map(ControlKey::of).collect(),
            guess_mode: params.guess_mode,
            begin: denoise::first_step(params.steps, strength, scheduler.order()),
            skip_layer_guidance: None,
        };
        Ok(Plan { params, key })
    }
}

/// The key every plan of a batch shares (None for no plans); plans whose keys differ cannot
/// run together.
pub(super) fn batch_key(plans: &[Plan]) -> Result<Option<&BatchKey>> {
    let Some(first) = plans.first() else {
        return Ok(None);
    };
    let key = &first.key;
    if let Some(other) = plans.iter().find(|p| p.key != *key) {
        anyhow::bail!(
            "requests that differ in {key:?} and {:?} cannot share a batch",
            other.key
        );
    }
    Ok(Some(key))
}

/// A request checked against one loaded model, with everything its run needs decided
/// ([`UnetPipeline::plan`]).
#[derive(Clone, Debug)]
pub struct Plan {
    pub(super) params: GenerateParams,
    pub(super) key: BatchKey,
}

impl Plan {
    pub fn params(&self) -> &GenerateParams {
        &self.params
    }

    /// What the request must share with others to run in one batch with them.
    pub fn key(&self) -> &BatchKey {
        &self.key
    }
}

/// What requests must share to run as one batch: everything that shapes the denoising loop
/// (latent size, timesteps, scheduler, whether the UNet runs twice for guidance, where
/// image-to-image starts). Prompts, seeds, guidance scales and init images may differ.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchKey {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub scheduler: SchedulerKind,
    pub options: scheduler::Options,
    pub do_cfg: bool,
    pub img2img: bool,
    /// Inpainting (the UNet's extra input, or the blend after each step).
    pub masked: bool,
    /// The ControlNets with their scales and windows (the images may differ).
    pub controls: Vec<ControlKey>,
    pub guess_mode: bool,
    /// The first timestep that runs (image-to-image skips the early ones).
    pub begin: usize,
    /// 77-token chunks of text conditioning (more than one with A1111 emphasis).
    pub text_chunks: usize,
    /// SD 3's skip-layer guidance (an extra transformer pass on some steps).
    pub skip_layer_guidance: Option<SkipLayerGuidance>,
}
