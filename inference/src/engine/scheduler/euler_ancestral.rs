//! diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to `sigma_down`, then fresh noise
//! scaled by `sigma_up`, drawn from each image's generator after the step (diffusers' order).

use anyhow::Result;
use candle_core::Tensor;

use super::schedule::TrainSchedule;
use super::sigma_schedule::{
    SigmaSchedule, euler_update, interp_sigmas, pred_original, spaced_timesteps,
};
use super::{Prediction, Scheduler, mul_scalar};
use crate::engine::config::SchedulerConfig;
use crate::engine::noise::NoiseSource;

const CLASS: &str = "EulerAncestralDiscreteScheduler";

pub struct EulerAncestralDiscrete {
    schedule: SigmaSchedule,
    prediction: Prediction,
}

impl EulerAncestralDiscrete {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::from_config(cfg, CLASS)?;
        let prediction = Prediction::from_config(cfg)?;
        if prediction == Prediction::Sample {
            anyhow::bail!("{CLASS} does not implement prediction_type \"sample\"");
        }
        let (spacing, timesteps) = spaced_timesteps(cfg, &sched, steps, CLASS)?;
        let mut sigmas: Vec<f32> = interp_sigmas(&timesteps, &sched.sigmas())
            .into_iter()
            .map(|s| s as f32)
            .collect();
        sigmas.push(0.0);
        Ok(EulerAncestralDiscrete {
            schedule: SigmaSchedule::new(timesteps, sigmas, spacing),
            prediction,
        })
    }
}

impl Scheduler for EulerAncestralDiscrete {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn timesteps(&self) -> &[f64] {
        self.schedule.timesteps()
    }

    fn init_noise_sigma(&self) -> f64 {
        self.schedule.init_noise_sigma()
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        self.schedule.scale_model_input(sample, i)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let sigmas = self.schedule.sigmas();
        let (sigma_from, sigma_to) = (sigmas[i], sigmas[i + 1]);
        // `new` rejects prediction_type "sample" (diffusers raises for it here).
        let pred = pred_original(self.prediction, model_output, sample, sigma_from)?;
        let (f2, t2) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (t2 * (f2 - t2) / f2).sqrt();
        let sigma_down = (t2 - sigma_up * sigma_up).sqrt();
        let prev = euler_update(sample, &pred, sigma_from, sigma_down)?;
        let eps = noise
            .randn_like(model_output)?
            .to_dtype(model_output.dtype())?;
        Ok((prev + mul_scalar(&eps, sigma_up)?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, i)
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(self.schedule.sigmas())
    }
}
