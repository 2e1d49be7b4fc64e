//! diffusers' `LCMScheduler` (latent consistency models): timesteps picked from the
//! `original_inference_steps`-point distillation schedule, the consistency boundary conditions
//! `c_skip` / `c_out` (`timestep_scaling`), and fresh noise (`randn(model_output.shape)` per image
//! generator) at every step but the last.

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::class_config::{Betas, ClassConfig, Thresholding, TimestepSpacing, class_config};
use super::schedule::TrainSchedule;
use super::{Prediction, Scheduler, clip_sample, div_scalar, mul_scalar};
use crate::error::EngineError;
use crate::noise::NoiseSource;

class_config! {
    /// `LCMScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    LcmConfig = "LCMScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::new(0.00085, 0.012, "scaled_linear"),
        original_inference_steps: usize = 50,
        clip_sample: bool = false,
        clip_sample_range: f64 = 1.0,
        set_alpha_to_one: bool = true,
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("leading"),
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        thresholding: Thresholding = Thresholding::default(),
        timestep_scaling: f64 = 10.0,
        rescale_betas_zero_snr: bool = false,
    }
}

const CLASS: &str = LcmConfig::CLASS;

pub struct Lcm {
    timesteps: Vec<f64>,
    ts: Vec<i64>,
    alphas_cumprod: Vec<f32>,
    prediction: Prediction,
    clip: Option<f32>,
    timestep_scaling: f32,
    steps: usize,
}

impl Lcm {
    pub fn new(cfg: &LcmConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, cfg.rescale_betas_zero_snr, CLASS)?;
        let n = sched.num_train_timesteps;
        let prediction = cfg.prediction_type;
        let original = cfg.original_inference_steps;
        if original > n || original == 0 {
            bail!(
                "{CLASS}: `original_inference_steps` = {original} must be between 1 and num_train_timesteps ({n})"
            );
        }
        // The distillation schedule: k - 1, 2k - 1, ..., original * k - 1 (strength 1).
        let k = (n / original) as i64;
        let origin: Vec<i64> = (1..=original as i64).rev().map(|i| i * k - 1).collect();
        if steps > original || origin.len() / steps.max(1) < 1 {
            return Err(EngineError::invalid(
                "steps",
                format!(
                    "{steps} is not accepted for LCMScheduler: at most original_inference_steps ({original})"
                ),
            ));
        }
        // floor(linspace(0, len, steps, endpoint=False))
        let step = origin.len() as f64 / steps as f64;
        let ts: Vec<i64> = (0..steps)
            .map(|i| origin[(i as f64 * step).floor() as usize])
            .collect();
        Ok(Lcm {
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            ts,
            alphas_cumprod: sched.alphas_cumprod,
            prediction,
            clip: clip_sample(cfg.clip_sample, cfg.clip_sample_range),
            timestep_scaling: cfg.timestep_scaling as f32,
            steps,
        })
    }

    /// `get_scalings_for_boundary_condition_discrete` (float32).
    fn scalings(&self, t: i64) -> (f32, f32) {
        let sigma_data2 = 0.25f32;
        let scaled = t as f32 * self.timestep_scaling;
        let c_skip = sigma_data2 / (scaled * scaled + sigma_data2);
        let c_out = scaled / (scaled * scaled + sigma_data2).sqrt();
        (c_skip, c_out)
    }
}

impl Scheduler for Lcm {
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
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let t = self.ts[i];
        let prev_t = self.ts.get(i + 1).copied().unwrap_or(t);
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = self.alphas_cumprod[prev_t as usize];
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let (c_skip, c_out) = self.scalings(t);
        let x0 = match self.prediction {
            Prediction::Epsilon => div_scalar(
                &(sample - mul_scalar(model_output, b_t.sqrt())?)?,
                a_t.sqrt(),
            )?,
            Prediction::Sample => model_output.clone(),
            Prediction::VPrediction => {
                (mul_scalar(sample, a_t.sqrt())? - mul_scalar(model_output, b_t.sqrt())?)?
            }
        };
        let x0 = match self.clip {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        let denoised = (mul_scalar(&x0, c_out)? + mul_scalar(sample, c_skip)?)?;
        if i + 1 == self.steps {
            return Ok(denoised);
        }
        let eps = noise.randn_like(model_output)?.to_dtype(denoised.dtype())?;
        Ok((mul_scalar(&denoised, a_prev.sqrt())? + mul_scalar(&eps, b_prev.sqrt())?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        let a = self.alphas_cumprod[self.ts[i] as usize];
        Ok((mul_scalar(original, a.sqrt())? + mul_scalar(noise, (1.0 - a).sqrt())?)?)
    }

    fn alphas_cumprod(&self) -> Option<&[f32]> {
        Some(&self.alphas_cumprod)
    }
}
