//! diffusers' `EulerDiscreteScheduler` (with `s_churn = 0`, as the pipelines call it).

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::schedule::{TrainSchedule, np_linspace, torch_linspace_f32};
use super::sigma_schedule::{
    SigmaSchedule, euler_update, interp_sigmas, pred_original, spaced_timesteps,
};
use super::{Prediction, Scheduler, reject_flag};
use crate::engine::config::SchedulerConfig;
use crate::engine::noise::NoiseSource;

const CLASS: &str = "EulerDiscreteScheduler";

pub struct EulerDiscrete {
    schedule: SigmaSchedule,
    prediction: Prediction,
}

/// `_sigma_to_t`: fractional training timestep of a sigma (log-sigma interpolation).
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // np.cumsum(dists >= 0).argmax(): the first index where the running count is maximal,
    // i.e. the last index with log_sigma >= log_sigmas[i] (0 if none).
    let mut running = 0usize;
    let mut best = 0usize;
    let mut best_val = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls as f64 >= 0.0 {
            running += 1;
        }
        if running > best_val {
            best_val = running;
            best = i;
        }
    }
    let low_idx = best.min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = (low as f64 - log_sigma) / ((low - high) as f64);
    let w = w.clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// `_convert_to_karras` (rho = 7).
fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

impl EulerDiscrete {
    pub fn new(cfg: &SchedulerConfig, steps: usize, karras: Option<bool>) -> Result<Self> {
        let sched = TrainSchedule::from_config(cfg, CLASS)?;
        reject_flag(cfg, "use_exponential_sigmas", CLASS)?;
        reject_flag(cfg, "use_beta_sigmas", CLASS)?;
        let prediction = Prediction::from_config(cfg)?;
        let (spacing, mut timesteps) = spaced_timesteps(cfg, &sched, steps, CLASS)?;
        let use_karras = karras.unwrap_or(cfg.bool_or("use_karras_sigmas", false)?);
        let interpolation = cfg.str_or("interpolation_type", "linear")?;
        let final_type = cfg.str_or("final_sigmas_type", "zero")?;
        let timestep_type = cfg.str_or("timestep_type", "discrete")?;
        let n_train = sched.num_train_timesteps;

        let base: Vec<f32> = sched.sigmas();
        let mut sigmas: Vec<f64> = match interpolation.as_str() {
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
        if use_karras {
            let sigma_min = cfg
                .opt_f64("sigma_min")?
                .unwrap_or(*sigmas.last().unwrap_or(&0.0));
            let sigma_max = cfg.opt_f64("sigma_max")?.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(sigma_min, sigma_max, steps);
            let log_sigmas: Vec<f32> = base.iter().map(|s| s.ln()).collect();
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64)
                .collect();
        }
        let last = match final_type.as_str() {
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

    pub fn sigmas(&self) -> &[f32] {
        self.schedule.sigmas()
    }
}

impl Scheduler for EulerDiscrete {
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
        _noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        // gamma = 0 (s_churn = 0): sigma_hat = sigma.
        let sigmas = self.schedule.sigmas();
        let pred = pred_original(self.prediction, model_output, sample, sigmas[i])?;
        euler_update(sample, &pred, sigmas[i], sigmas[i + 1])
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, i)
    }
}
