//! diffusers' `DDPMScheduler`: ancestral sampling of the posterior `q(x_{t-1} | x_t, x0)`, with
//! `variance_type` fixed_small / fixed_small_log / fixed_large. Fresh noise
//! (`randn(model_output.shape)` per image generator) at every step whose timestep is above 0.

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::class_config::{Betas, ClassConfig, Thresholding, TimestepSpacing, class_config};
use super::schedule::{Spacing, TrainSchedule, alpha_at, discrete_timesteps};
use super::{Prediction, Scheduler, clip_sample, div_scalar, mul_scalar};
use crate::noise::NoiseSource;

class_config! {
    /// `DDPMScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    DdpmConfig = "DDPMScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::linear(),
        variance_type: String = "fixed_small".into(),
        clip_sample: bool = true,
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        thresholding: Thresholding = Thresholding::default(),
        clip_sample_range: f64 = 1.0,
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("leading"),
        rescale_betas_zero_snr: bool = false,
    }
}

const CLASS: &str = DdpmConfig::CLASS;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variance {
    Small,
    SmallLog,
    Large,
}

pub struct Ddpm {
    timesteps: Vec<f64>,
    ts: Vec<i64>,
    alphas_cumprod: Vec<f32>,
    prediction: Prediction,
    clip: Option<f32>,
    variance: Variance,
}

impl Ddpm {
    pub fn new(cfg: &DdpmConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, cfg.rescale_betas_zero_snr, CLASS)?;
        let n = sched.num_train_timesteps;
        if steps > n {
            bail!("{CLASS}: {steps} steps exceed num_train_timesteps ({n})");
        }
        let prediction = cfg.prediction_type;
        let variance = match cfg.variance_type.as_str() {
            "fixed_small" => Variance::Small,
            "fixed_small_log" => Variance::SmallLog,
            "fixed_large" => Variance::Large,
            other => bail!(
                "{CLASS}: `variance_type` = {other} is not supported (fixed_small, fixed_small_log, fixed_large; learned variances need a model that predicts them, and diffusers' fixed_large_log gives NaN)"
            ),
        };
        let spacing = Spacing::parse(&cfg.spacing.timestep_spacing, CLASS)?;
        let offset = cfg.spacing.steps_offset;
        let ts = discrete_timesteps(spacing, n, steps, offset);
        for &t in &ts {
            alpha_at(&sched.alphas_cumprod, t, CLASS)?;
        }
        Ok(Ddpm {
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            ts,
            alphas_cumprod: sched.alphas_cumprod,
            prediction,
            clip: clip_sample(cfg.clip_sample, cfg.clip_sample_range),
            variance,
        })
    }
}

impl Scheduler for Ddpm {
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
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = match self.ts.get(i + 1) {
            Some(&p) => self.alphas_cumprod[p as usize],
            None => 1.0,
        };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let current_alpha = a_t / a_prev;
        let current_beta = 1.0 - current_alpha;
        let pred = match self.prediction {
            Prediction::Epsilon => div_scalar(
                &(sample - mul_scalar(model_output, b_t.sqrt())?)?,
                a_t.sqrt(),
            )?,
            Prediction::Sample => model_output.clone(),
            Prediction::VPrediction => {
                (mul_scalar(sample, a_t.sqrt())? - mul_scalar(model_output, b_t.sqrt())?)?
            }
        };
        let pred = match self.clip {
            Some(r) => pred.clamp(-r, r)?,
            None => pred,
        };
        let pred_coeff = a_prev.sqrt() * current_beta / b_t;
        let sample_coeff = current_alpha.sqrt() * b_prev / b_t;
        let prev = (mul_scalar(&pred, pred_coeff)? + mul_scalar(sample, sample_coeff)?)?;
        if t <= 0 {
            return Ok(prev);
        }
        let eps = noise
            .randn_like(model_output)?
            .to_dtype(model_output.dtype())?;
        // _get_variance(t)
        let beta = 1.0 - a_t / a_prev;
        let variance = ((1.0 - a_prev) / (1.0 - a_t) * beta).max(1e-20);
        let std = match self.variance {
            Variance::Small => variance.sqrt(),
            Variance::SmallLog => (0.5 * variance.ln()).exp(),
            Variance::Large => beta.sqrt(),
        };
        Ok((prev + mul_scalar(&eps, std)?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        let a = self.alphas_cumprod[self.ts[i] as usize];
        Ok((mul_scalar(original, a.sqrt())? + mul_scalar(noise, (1.0 - a).sqrt())?)?)
    }

    fn alphas_cumprod(&self) -> Option<&[f32]> {
        Some(&self.alphas_cumprod)
    }
}
