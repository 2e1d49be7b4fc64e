//! diffusers' `KDPM2AncestralDiscreteScheduler` ("DPM2 a"): DPM2 towards `sigma_down`, then
//! fresh noise scaled by `sigma_up`, drawn per image generator at the second evaluation of each
//! step (after the update, as diffusers does).

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::class_config::ClassConfig;
use super::heun::interleave_repeat_last;
use super::kdpm2::{Dpm2Sigmas, KDpm2AncestralConfig, log_midpoint};
use super::sigma_schedule::{SigmaSchedule, SigmaScheduler, pred_original, sigma_to_t};
use super::{Prediction, div_scalar, mul_scalar};
use crate::noise::NoiseSource;

const CLASS: &str = KDpm2AncestralConfig::CLASS;

pub struct KDpm2AncestralDiscrete {
    schedule: SigmaSchedule,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    prediction: Prediction,
    sample: Option<Tensor>,
}

impl KDpm2AncestralDiscrete {
    pub fn new(cfg: &KDpm2AncestralConfig, steps: usize) -> Result<Self> {
        let prediction = cfg.prediction_type;
        let d = Dpm2Sigmas::new(
            (&cfg.betas, &cfg.spacing, &cfg.sigmas),
            prediction,
            steps,
            CLASS,
        )?;
        let (k, sigmas) = (&d.k, &d.sigmas);
        let n = sigmas.len();
        // sigmas_next = roll(-1) with the last set to 0; float32 tensor arithmetic.
        let next: Vec<f32> = (0..n)
            .map(|j| if j + 1 < n { sigmas[j + 1] } else { 0.0 })
            .collect();
        let up: Vec<f32> = (0..n)
            .map(|j| {
                let (s, t) = (sigmas[j], next[j]);
                (t * t * (s * s - t * t) / (s * s)).sqrt()
            })
            .collect();
        let mut down: Vec<f32> = (0..n)
            .map(|j| (next[j] * next[j] - up[j] * up[j]).sqrt())
            .collect();
        down[n - 1] = 0.0;
        let mut interp: Vec<f32> = (0..n).map(|j| log_midpoint(sigmas[j], down[j])).collect();
        interp[n - 1] = 0.0;
        if n >= 2 {
            interp[n - 2] = 0.0;
        }
        let base_t: Vec<f64> = k.timesteps.iter().map(|&t| d.cast(t)).collect();
        let t_interp: Vec<f64> = interp
            .iter()
            .map(|&s| d.cast(sigma_to_t(s as f64, &k.log_sigmas)))
            .collect();
        if t_interp[..n - 2].iter().any(|t| t.is_nan()) {
            // diffusers gets the same NaN (a zero sigma_down, whose log midpoint is NaN) and
            // would pass it to the UNet.
            bail!(
                "{CLASS}: this config's sigmas give a zero sigma_down and NaN midpoint timesteps (as in diffusers); use another scheduler or more steps"
            );
        }
        // cat([timesteps[:1], stack(interpol[:-2], timesteps[1:]).flatten()])
        let mut timesteps = vec![base_t[0]];
        for j in 1..base_t.len() {
            timesteps.push(t_interp[j - 1]);
            timesteps.push(base_t[j]);
        }
        Ok(KDpm2AncestralDiscrete {
            schedule: SigmaSchedule::new(timesteps, interleave_repeat_last(sigmas), k.spacing),
            sigmas_interpol: interleave_repeat_last(&interp),
            sigmas_up: interleave_repeat_last(&up),
            sigmas_down: interleave_repeat_last(&down),
            prediction,
            sample: None,
        })
    }
}

impl SigmaScheduler for KDpm2AncestralDiscrete {
    const CLASS: &'static str = CLASS;

    fn schedule(&self) -> &SigmaSchedule {
        &self.schedule
    }

    fn sigma_scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        let sigma = if self.sample.is_none() {
            self.schedule.sigmas()[i]
        } else {
            self.sigmas_interpol[i - 1]
        };
        div_scalar(sample, (sigma * sigma + 1.0).sqrt())
    }

    fn sigma_step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let sigmas = self.schedule.sigmas();
        match self.sample.take() {
            None => {
                let (sigma, sigma_interpol) = (sigmas[i], self.sigmas_interpol[i]);
                let pred = pred_original(self.prediction, model_output, sample, sigma)?;
                let derivative = div_scalar(&(sample - pred)?, sigma)?;
                let dt = sigma_interpol - sigma;
                self.sample = Some(sample.clone());
                Ok((sample + mul_scalar(&derivative, dt)?)?)
            }
            Some(first_sample) => {
                let sigma = sigmas[i - 1];
                let sigma_interpol = self.sigmas_interpol[i - 1];
                let sigma_up = self.sigmas_up[i - 1];
                let sigma_down = self.sigmas_down[i - 1];
                let pred = pred_original(self.prediction, model_output, sample, sigma_interpol)?;
                let derivative = div_scalar(&(sample - pred)?, sigma_interpol)?;
                let dt = sigma_down - sigma;
                let prev = (first_sample + mul_scalar(&derivative, dt)?)?;
                let eps = noise
                    .randn_like(model_output)?
                    .to_dtype(model_output.dtype())?;
                Ok((prev + mul_scalar(&eps, sigma_up)?)?)
            }
        }
    }
}
