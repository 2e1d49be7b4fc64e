//! The denoising loop: which timesteps run (img2img keeps the last
//! `int(steps * strength)` of them, times the scheduler's order, as diffusers'
//! `get_timesteps`, but at least one), the UNet call per step with classifier-free
//! guidance, and the scheduler step.

use anyhow::Result;
use candle_core::Tensor;

use super::UnetPipeline;
use super::conditioning::UnetConditioning;
use super::control::ControlRun;
use super::inpaint::Blend;
use crate::GenerateParams;
use crate::error::EngineError;
use crate::noise::NoiseSource;
use crate::scheduler::{Scheduler, mul_scalar};
use crate::unet::AddedCond;

/// Index of the first timestep that runs: 0 for text-to-image; for image-to-image
/// with `strength`, the schedule's last `int(steps * strength)` steps run, as in
/// diffusers. Where that is zero (a low strength with few steps), diffusers refuses
/// the request; the last step runs instead, as A1111 and ComfyUI do.
pub(super) fn first_step(steps: usize, strength: Option<f64>, order: usize) -> usize {
    match strength {
        Some(strength) => {
            let init_timestep = (((steps as f64) * strength) as usize).clamp(1, steps);
            (steps - init_timestep) * order
        }
        None => 0,
    }
}

/// The guidance scale of each image of a batch, request by request.
pub(super) fn guidance_per_image(batch: &[&GenerateParams]) -> Vec<f32> {
    batch
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.guidance as f32, p.samples))
        .collect()
}

/// Classifier-free guidance of a prediction whose first `n` rows are unconditional and last
/// `n` conditional: `(uncond + g * (cond - uncond), cond)`, with `g` per image; without CFG
/// the prediction is both.
pub(super) fn guided(
    pred: &Tensor,
    n: usize,
    do_cfg: bool,
    guidance: &[f32],
) -> Result<(Tensor, Tensor)> {
    if !do_cfg {
        return Ok((pred.clone(), pred.clone()));
    }
    let uncond = pred.narrow(0, 0, n)?;
    let cond = pred.narrow(0, n, n)?;
    let diff = (&cond - &uncond)?;
    // One scale for all (the usual case) is the same arithmetic as a scale per image, which
    // batches of requests with different scales need.
    let scaled = match guidance {
        [g, rest @ ..] if rest.iter().all(|r| r == g) => mul_scalar(&diff, *g)?,
        scales => {
            let mut shape = vec![1usize; diff.rank()];
            shape[0] = n;
            let g = Tensor::from_slice(scales, shape.as_slice(), diff.device())?
                .to_dtype(diff.dtype())?;
            diff.broadcast_mul(&g)?
        }
    };
    Ok(((&uncond + scaled)?, cond))
}

/// What one run of the loop needs besides the latents.
pub(super) struct DenoiseRun<'a> {
    pub cond: &'a UnetConditioning,
    /// Images in the request (the batch is twice that with CFG).
    pub n: usize,
    pub do_cfg: bool,
    /// The guidance scale of each image.
    pub guidance: &'a [f32],
    pub begin: usize,
    /// The timestep index to stop before (an ensemble's base hands over there); `None`:
    /// the end of the schedule.
    pub end: Option<usize>,
    /// Inpainting with an ordinary UNet: the blend after each step.
    pub blend: Option<&'a Blend>,
    /// ControlNets and their images.
    pub control: Option<&'a ControlRun>,
}

impl UnetPipeline {
    /// Runs the timesteps from `run.begin` to the end; `on_step(done, total)` after
    /// each, returning false cancels.
    pub(super) fn denoise(
        &self,
        run: &DenoiseRun,
        sched: &mut dyn Scheduler,
        mut latents: Tensor,
        noise: &mut NoiseSource,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Tensor> {
        let (n, cond) = (run.n, run.cond);
        let batch = cond.context.dim(0)?;
        let total = run.end.unwrap_or(usize::MAX).min(sched.timesteps().len());
        let steps_to_run = total.saturating_sub(run.begin);
        for (k, i) in (run.begin..total).enumerate() {
            let t = sched.timesteps()[i] as f32;
            let model_in = if run.do_cfg {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let scaled = sched.scale_model_input(&model_in, i)?;
            let ts = vec![t; batch];
            let added = AddedCond {
                text_embeds: &cond.text_embeds,
                time_ids: &cond.time_ids,
            };
            let residuals = match run.control {
                Some(c) => c.residuals(
                    k,
                    steps_to_run,
                    &scaled,
                    &ts,
                    cond,
                    Some(&added),
                    n,
                    run.do_cfg,
                )?,
                None => None,
            };
            let model_in = match &cond.latent_extra {
                Some(extra) => Tensor::cat(&[&scaled, extra], 1)?,
                None => scaled,
            };
            let pred = self.unet.forward_with(
                &model_in,
                &ts,
                &cond.context,
                Some(&added),
                cond.timestep_cond.as_ref(),
                residuals.as_ref(),
            )?;
            let pred = guided(&pred, n, run.do_cfg, run.guidance)?.0;
            latents = sched.step(&pred, i, &latents, noise)?;
            if let Some(blend) = run.blend {
                latents = blend.apply(sched, &latents, i)?;
            }
            if !on_step(k + 1, steps_to_run) {
                return Err(EngineError::Cancelled.into());
            }
        }
        Ok(latents)
    }
}

#[cfg(test)]
mod tests {
    use super::first_step;

    #[test]
    fn img2img_keeps_the_last_int_steps_x_strength_steps_and_at_least_one() {
        assert_eq!(first_step(30, None, 1), 0);
        assert_eq!(first_step(30, Some(0.7), 1), 9);
        assert_eq!(first_step(30, Some(1.0), 1), 0);
        assert_eq!(first_step(10, Some(0.35), 2), 14);
        // int(1 x 0.7) = 0 and int(4 x 0.1) = 0: the last step still runs.
        assert_eq!(first_step(1, Some(0.7), 1), 0);
        assert_eq!(first_step(4, Some(0.1), 1), 3);
        assert_eq!(first_step(4, Some(0.1), 2), 6);
    }
}
