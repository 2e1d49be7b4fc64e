//! diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to `sigma_down`, then fresh noise
//! scaled by `sigma_up`, drawn from each image's generator after the step (diffusers' order).

use anyhow::Result;
use candle_core::Tensor;

use super::class_config::{Betas, ClassConfig, TimestepSpacing, class_config};
use super::schedule::TrainSchedule;
use super::sigma_schedule::{
    SigmaSchedule, SigmaScheduler, euler_update, interp_sigmas, pred_original, spaced_timesteps,
};
use super::{Prediction, mul_scalar};
use crate::noise::NoiseSource;

class_config! {
    /// `EulerAncestralDiscreteScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    EulerAncestralConfig = "EulerAncestralDiscreteScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::linear(),
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("linspace"),
        rescale_betas_zero_snr: bool = false,
    }
}

const CLASS: &str = EulerAncestralConfig::CLASS;

pub struct EulerAncestralDiscrete {
    schedule: SigmaSchedule,
    prediction: Prediction,
}

impl EulerAncestralDiscrete {
    pub fn new(cfg: &EulerAncestralConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, cfg.rescale_betas_zero_snr, CLASS)?;
        let prediction = cfg.prediction_type;
        if prediction == Prediction::Sample {
            anyhow::bail!("{CLASS} does not implement prediction_type \"sample\"");
        }
        let (spacing, timesteps) = spaced_timesteps(&cfg.spacing, &sched, steps, CLASS)?;
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

impl SigmaScheduler for EulerAncestralDiscrete {
    const CLASS: &'static str = CLASS;

    fn schedule(&self) -> &SigmaSchedule {
        &self.schedule
    }

    fn sigma_step(
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
}
