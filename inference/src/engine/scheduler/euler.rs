//! diffusers' `EulerDiscreteScheduler` (with `s_churn = 0`, as the pipelines call it).

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::schedule::{
    Spacing, TrainSchedule, euler_timesteps, np_interp_index, np_linspace, torch_linspace_f32,
};
use super::{Prediction, Scheduler, div_scalar, mul_scalar, reject_flag};
use crate::engine::config::SchedulerConfig;
use crate::engine::noise::NoiseSource;

const CLASS: &str = "EulerDiscreteScheduler";

pub struct EulerDiscrete {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
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
        let spacing = Spacing::parse(&cfg.str_or("timestep_spacing", "linspace")?, CLASS)?;
        let offset = cfg.usize_or("steps_offset", 0)?;
        let use_karras = karras.unwrap_or(cfg.bool_or("use_karras_sigmas", false)?);
        let interpolation = cfg.str_or("interpolation_type", "linear")?;
        let final_type = cfg.str_or("final_sigmas_type", "zero")?;
        let timestep_type = cfg.str_or("timestep_type", "discrete")?;
        let n_train = sched.num_train_timesteps;

        let mut timesteps = euler_timesteps(spacing, n_train, steps, offset);
        let base: Vec<f32> = sched.sigmas();
        let base64: Vec<f64> = base.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f64> = match interpolation.as_str() {
            "linear" => timesteps
                .iter()
                .map(|&t| np_interp_index(t, &base64))
                .collect(),
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
        let max_sigma = sigmas.iter().cloned().fold(f32::MIN, f32::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => max_sigma,
            Spacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(EulerDiscrete {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction,
        })
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for EulerDiscrete {
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
        _noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[i];
        // gamma = 0 (s_churn = 0): sigma_hat = sigma.
        let sigma_hat = sigma;
        let pred_original = match self.prediction {
            Prediction::Epsilon => (sample - mul_scalar(model_output, sigma_hat)?)?,
            Prediction::VPrediction => {
                let denom = sigma * sigma + 1.0;
                let c_out = -sigma / denom.sqrt();
                (mul_scalar(model_output, c_out)? + div_scalar(sample, denom)?)?
            }
            Prediction::Sample => model_output.clone(),
        };
        let derivative = div_scalar(&(sample - pred_original)?, sigma_hat)?;
        let dt = self.sigmas[i + 1] - sigma_hat;
        Ok((sample + mul_scalar(&derivative, dt)?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        Ok((original + mul_scalar(noise, self.sigmas[i])?)?)
    }
}
