//! SDXL's base and refiner as diffusers' "ensemble of expert denoisers": the base denoises
//! the high-noise part of the schedule (`denoising_end`), the refiner the rest
//! (`denoising_start`) on the same latents and generators, and decodes.

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;

use super::UnetPipeline;
use super::denoise::DenoiseRun;
use crate::error::EngineError;
use crate::image_io::tensor_to_images;
use crate::noise::NoiseSource;
use crate::{GenerateParams, Generated, StageTimings};

impl UnetPipeline {
    /// The timestep diffusers cuts the schedule at for `fraction` (`denoising_end` /
    /// `denoising_start`): `round(T - fraction * T)` with T the training timesteps.
    fn cutoff(&self, fraction: f64) -> Result<f64> {
        let train = self
            .scheduler_config
            .usize_or("num_train_timesteps", 1000)? as f64;
        Ok((train - fraction * train).round())
    }

    /// This model (the base) runs the schedule's timesteps at or above the cutoff of `start`
    /// (diffusers' `denoising_end=start`), then `refiner` runs those below it on the same
    /// latents and generators (`denoising_start=start`; one more for a second-order
    /// scheduler that would stop between its two evaluations) and decodes: diffusers'
    /// `StableDiffusionXLPipeline(..., denoising_end=start, output_type="latent")` then
    /// `StableDiffusionXLImg2ImgPipeline(image=latents, denoising_start=start)`, the refiner
    /// with the same scheduler, steps, prompts and guidance. `on_step` counts both parts.
    pub fn generate_refined(
        &self,
        refiner: &UnetPipeline,
        params: &GenerateParams,
        start: f64,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Generated> {
        if !(start.is_finite() && start > 0.0 && start < 1.0) {
            return Err(EngineError::invalid(
                "refiner_start",
                format!("{start} is not accepted: must be between 0 and 1"),
            ));
        }
        if refiner.unet.config.in_channels != self.unet.config.in_channels
            || refiner.vae_scale_factor() != self.vae_scale_factor()
        {
            return Err(EngineError::invalid(
                "refiner",
                "its latents are not the base model's (other channels or VAE scale)",
            ));
        }
        if params.mask.is_some() {
            return Err(EngineError::invalid(
                "mask",
                "inpainting does not run with a refiner; leave one of them out",
            ));
        }
        if !params.controls.is_empty() {
            return Err(EngineError::invalid(
                "controlnets",
                "ControlNets do not run with a refiner; leave one of them out",
            ));
        }
        let plan = self.plan(params.clone())?;
        let key = plan.key.clone();
        let n = params.samples;
        let t0 = Instant::now();
        let mut sched = self.scheduler_for(&key)?;
        let mut r_sched = refiner.scheduler_for(&key)?;
        let cutoff = self.cutoff(start)?;
        let end = sched
            .timesteps()
            .iter()
            .filter(|&&t| t >= cutoff)
            .count()
            .max(key.begin);
        let r_cutoff = refiner.cutoff(start)?;
        let r_total = r_sched.timesteps().len();
        let mut r_steps = r_sched
            .timesteps()
            .iter()
            .filter(|&&t| t < r_cutoff)
            .count();
        if key.scheduler.order() == 2 && r_steps % 2 == 0 {
            r_steps += 1;
        }
        let r_begin = r_total - r_steps.min(r_total);

        let cond = self.condition(params, n, key.do_cfg)?;
        let text_only = GenerateParams {
            init_image: None,
            ..params.clone()
        };
        let r_cond = refiner.condition(&text_only, n, key.do_cfg)?;
        let mut noise = NoiseSource::new(params.seed, n, &self.device);
        let latents = self.initial_latents(params, sched.as_ref(), key.begin, &mut noise)?;
        let prepare = t0.elapsed();

        let t1 = Instant::now();
        let guidance = vec![params.guidance as f32; n];
        let total = (end - key.begin) + (r_total - r_begin);
        let base_steps = end - key.begin;
        let run = DenoiseRun {
            cond: &cond,
            n,
            do_cfg: key.do_cfg,
            guidance: &guidance,
            begin: key.begin,
            end: Some(end),
            blend: None,
            control: None,
        };
        let latents = self.denoise(&run, sched.as_mut(), latents, &mut noise, &mut |k, _| {
            on_step(k, total)
        })?;
        let r_run = DenoiseRun {
            cond: &r_cond,
            n,
            do_cfg: key.do_cfg,
            guidance: &guidance,
            begin: r_begin,
            end: None,
            blend: None,
            control: None,
        };
        let latents: Tensor = refiner.denoise(
            &r_run,
            r_sched.as_mut(),
            latents,
            &mut noise,
            &mut |k, _| on_step(base_steps + k, total),
        )?;
        let denoise = t1.elapsed();

        let t2 = Instant::now();
        let decoded = refiner.vae.decode(&refiner.unscale_latents(&latents)?)?;
        let images = tensor_to_images(&decoded)?;
        Ok(Generated {
            images: images
                .into_iter()
                .enumerate()
                .map(|(i, img)| (img, params.seed.wrapping_add(i as u64)))
                .collect(),
            timings: StageTimings {
                prepare,
                denoise,
                decode: t2.elapsed(),
            },
            scheduler: sched.class_name().to_string(),
        })
    }
}
