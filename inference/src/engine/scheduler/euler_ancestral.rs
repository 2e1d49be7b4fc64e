//! diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to `sigma_down`, then fresh noise
//! scaled by `sigma_up`, drawn from each image's generator after the step (diffusers' order).

use anyhow::Result;
use candle_core::Tensor;

use super::schedule::{Spacing, TrainSchedule, euler_timesteps, np_interp_index};
use super::{Prediction, Scheduler, div_scalar, mul_scalar};
use crate::engine::config::SchedulerConfig;
use crate::engine::noise::NoiseSource;

const CLASS: &str = "EulerAncestralDiscreteScheduler";

pub struct EulerAncestralDiscrete {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
}

impl EulerAncestralDiscrete {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::from_config(cfg, CLASS)?;
        let prediction = Prediction::from_config(cfg)?;
        if prediction == Prediction::Sample {
            anyhow::bail!("{CLASS} does not implement prediction_type \"sample\"");
        }
        let spacing = Spacing::parse(&cfg.str_or("timestep_spacing", "linspace")?, CLASS)?;
        let offset = cfg.usize_or("steps_offset", 0)?;
        let timesteps = euler_timesteps(spacing, sched.num_train_timesteps, steps, offset);
        let base: Vec<f64> = sched.sigmas().iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| np_interp_index(t, &base) as f32)
            .collect();
        sigmas.push(0.0);
        let max_sigma = sigmas.iter().cloned().fold(f32::MIN, f32::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => max_sigma,
            Spacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(EulerAncestralDiscrete {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction,
        })
    }
}

impl EulerAncestralDiscrete {
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for EulerAncestralDiscrete {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma as f64
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        let s = self.sigmas[i];
        div_scalar(sample, (s * s + 1.0).sqrt())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[i];
        let pred_original = match self.prediction {
            Prediction::VPrediction => {
                let denom = sigma * sigma + 1.0;
                let c_out = -sigma / denom.sqrt();
                (mul_scalar(model_output, c_out)? + div_scalar(sample, denom)?)?
            }
            _ => (sample - mul_scalar(model_output, sigma)?)?,
        };
        let sigma_from = sigma;
        let sigma_to = self.sigmas[i + 1];
        let (f2, t2) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (t2 * (f2 - t2) / f2).sqrt();
        let sigma_down = (t2 - sigma_up * sigma_up).sqrt();
        let derivative = div_scalar(&(sample - pred_original)?, sigma)?;
        let dt = sigma_down - sigma;
        let prev = (sample + mul_scalar(&derivative, dt)?)?;
        let eps = noise
            .randn_like(model_output)?
            .to_dtype(model_output.dtype())?;
        Ok((prev + mul_scalar(&eps, sigma_up)?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        Ok((original + mul_scalar(noise, self.sigmas[i])?)?)
    }
}
