//! diffusers' `EulerDiscreteScheduler` (with `s_churn = 0`, as the pipelines call it).

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::Prediction;
use super::class_config::{Betas, ClassConfig, SigmaOptions, TimestepSpacing, class_config};
use super::schedule::{TrainSchedule, torch_linspace_f32};
use super::sigma_schedule::{
    SigmaSchedule, SigmaScheduler, SigmaSpacing, beta_sigmas, euler_update, exponential_sigmas,
    interp_sigmas, karras_sigmas, log_sigmas, pred_original, sigma_bounds, sigma_to_t,
    spaced_timesteps,
};
use crate::noise::NoiseSource;

class_config! {
    /// `EulerDiscreteScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    EulerConfig = "EulerDiscreteScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::linear(),
        prediction_type: Prediction = Prediction::Epsilon,
        interpolation_type: String = "linear".into(),
        #[serde(flatten)]
        sigmas: SigmaOptions = SigmaOptions::default(),
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("linspace"),
        timestep_type: String = "discrete".into(),
        rescale_betas_zero_snr: bool = false,
        final_sigmas_type: String = "zero".into(),
    }
}

const CLASS: &str = EulerConfig::CLASS;

pub struct EulerDiscrete {
    schedule: SigmaSchedule,
    prediction: Prediction,
}

impl EulerDiscrete {
    /// `cfg` is the class's effective config (see `class_config::effective`).
    pub fn new(cfg: &EulerConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, cfg.rescale_betas_zero_snr, CLASS)?;
        let conversion = SigmaSpacing::from_options(&cfg.sigmas, CLASS)?;
        let prediction = cfg.prediction_type;
        let (spacing, mut timesteps) = spaced_timesteps(&cfg.spacing, &sched, steps, CLASS)?;
        let interpolation = cfg.interpolation_type.as_str();
        let final_type = cfg.final_sigmas_type.as_str();
        let timestep_type = cfg.timestep_type.as_str();
        let n_train = sched.num_train_timesteps;

        let base: Vec<f32> = sched.sigmas();
        let mut sigmas: Vec<f64> = match interpolation {
            "linear" => interp_sigmas(&timesteps, &base),
            "log_linear" => {
                let lo = base[n_train - 1].ln() as f64;
                let hi = base[0].ln() as f64;
                torch_linspace_f32(lo, hi, steps + 1)
                    .into_iter()
                    .map(|v| v.exp() as f64)
                    .collect()
            }
            other => bail!(
                "scheduler config `interpolation_type` = {other} is not supported (linear, log_linear)"
            ),
        };
        if conversion != SigmaSpacing::Interpolated {
            let (sigma_min, sigma_max) =
                sigma_bounds(&cfg.sigmas, sigmas[0], *sigmas.last().unwrap_or(&0.0));
            sigmas = match conversion {
                SigmaSpacing::Karras => karras_sigmas(sigma_min, sigma_max, steps),
                SigmaSpacing::Beta => beta_sigmas(sigma_min, sigma_max, steps),
                _ => exponential_sigmas(sigma_min, sigma_max, steps),
            };
            let log_sigmas = log_sigmas(&base);
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64)
                .collect();
        }
        let last = match final_type {
            "zero" => 0.0,
            "sigma_min" => {
                let a = sched.alphas_cumprod[0];
                ((1.0 - a) / a).sqrt() as f64
            }
            other => bail!(
                "scheduler config `final_sigmas_type` = {other} is not supported (zero, sigma_min)"
            ),
        };
        sigmas.push(last);
        let sigmas: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        if timestep_type == "continuous" && prediction == Prediction::VPrediction {
            timesteps = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|s| (0.25 * s.ln()) as f64)
                .collect();
        }
        Ok(EulerDiscrete {
            schedule: SigmaSchedule::new(timesteps, sigmas, spacing),
            prediction,
        })
    }
}

impl SigmaScheduler for EulerDiscrete {
    const CLASS: &'static str = CLASS;

    fn schedule(&self) -> &SigmaSchedule {
        &self.schedule
    }

    fn sigma_step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        // gamma = 0 (s_churn = 0): sigma_hat = sigma.
        let sigmas = self.schedule.sigmas();
        let pred = pred_original(self.prediction, model_output, sample, sigmas[i])?;
        euler_update(sample, &pred, sigmas[i], sigmas[i + 1])
    }
}
