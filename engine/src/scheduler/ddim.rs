//! diffusers' `DDIMScheduler` (eta = 0, as the pipelines call it by default).

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::class_config::{Betas, ClassConfig, Thresholding, TimestepSpacing, class_config};
use super::schedule::{Spacing, TrainSchedule, np_arange, np_linspace, np_round};
use super::{Prediction, Scheduler, div_scalar, mul_scalar};
use crate::noise::NoiseSource;

class_config! {
    /// `DDIMScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    DdimConfig = "DDIMScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::linear(),
        clip_sample: bool = true,
        set_alpha_to_one: bool = true,
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("leading"),
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        thresholding: Thresholding = Thresholding::default(),
        clip_sample_range: f64 = 1.0,
        rescale_betas_zero_snr: bool = false,
    }
}

const CLASS: &str = DdimConfig::CLASS;

pub struct Ddim {
    timesteps: Vec<f64>,
    ts: Vec<usize>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    step_ratio: usize,
    prediction: Prediction,
    clip_sample: Option<f32>,
}

impl Ddim {
    pub fn new(cfg: &DdimConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, cfg.rescale_betas_zero_snr, CLASS)?;
        let n = sched.num_train_timesteps;
        if steps > n {
            bail!("{CLASS}: {steps} steps exceed num_train_timesteps ({n})");
        }
        let prediction = cfg.prediction_type;
        let spacing = Spacing::parse(&cfg.spacing.timestep_spacing, CLASS)?;
        let offset = cfg.spacing.steps_offset;
        let ts: Vec<usize> = match spacing {
            Spacing::Linspace => np_linspace(0.0, (n - 1) as f64, steps)
                .into_iter()
                .map(|t| np_round(t) as usize)
                .rev()
                .collect(),
            Spacing::Leading => {
                let ratio = n / steps;
                (0..steps).rev().map(|i| i * ratio + offset).collect()
            }
            Spacing::Trailing => np_arange(n as f64, 0.0, -(n as f64 / steps as f64))
                .into_iter()
                .map(|t| np_round(t) as usize - 1)
                .collect(),
        };
        if let Some(&t) = ts.iter().find(|&&t| t >= n) {
            bail!("{CLASS}: timestep {t} out of range (steps_offset too large?)");
        }
        let set_alpha_to_one = cfg.set_alpha_to_one;
        let final_alpha_cumprod = if set_alpha_to_one {
            1.0
        } else {
            sched.alphas_cumprod[0]
        };
        let clip_sample = if cfg.clip_sample {
            Some(cfg.clip_sample_range as f32)
        } else {
            None
        };
        Ok(Ddim {
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            ts,
            alphas_cumprod: sched.alphas_cumprod,
            final_alpha_cumprod,
            step_ratio: n / steps,
            prediction,
            clip_sample,
        })
    }
}

impl Ddim {
    /// `alphas_cumprod` at each inference timestep.
    pub fn alphas_at_timesteps(&self) -> Vec<f32> {
        self.ts.iter().map(|&t| self.alphas_cumprod[t]).collect()
    }
}

impl Scheduler for Ddim {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let t = self.ts[i];
        let prev_t = t as i64 - self.step_ratio as i64;
        let a_t = self.alphas_cumprod[t];
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (pred_original, pred_epsilon) = match self.prediction {
            Prediction::Epsilon => (
                div_scalar(
                    &(sample - mul_scalar(model_output, b_t.sqrt())?)?,
                    a_t.sqrt(),
                )?,
                model_output.clone(),
            ),
            Prediction::Sample => (
                model_output.clone(),
                div_scalar(
                    &(sample - mul_scalar(model_output, a_t.sqrt())?)?,
                    b_t.sqrt(),
                )?,
            ),
            Prediction::VPrediction => (
                (mul_scalar(sample, a_t.sqrt())? - mul_scalar(model_output, b_t.sqrt())?)?,
                (mul_scalar(model_output, a_t.sqrt())? + mul_scalar(sample, b_t.sqrt())?)?,
            ),
        };
        let pred_original = match self.clip_sample {
            Some(r) => pred_original.clamp(-r, r)?,
            None => pred_original,
        };
        // eta = 0: std_dev_t = 0.
        let direction = mul_scalar(&pred_epsilon, (1.0 - a_prev).sqrt())?;
        Ok((mul_scalar(&pred_original, a_prev.sqrt())? + direction)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        let a = self.alphas_cumprod[self.ts[i]];
        Ok((mul_scalar(original, a.sqrt())? + mul_scalar(noise, (1.0 - a).sqrt())?)?)
    }

    fn alphas_cumprod(&self) -> Option<&[f32]> {
        Some(&self.alphas_cumprod)
    }
}
