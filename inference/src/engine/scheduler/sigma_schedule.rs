//! What diffusers' sigma-based (k-diffusion style) schedulers share: the inference timesteps
//! with their sigmas, the initial noise scale, the UNet input scaling, img2img noising, the x0
//! prediction and the first-order (Euler) update. Each scheduler only builds its sigmas and
//! writes its `step`.

use anyhow::Result;
use candle_core::Tensor;

use super::schedule::{Spacing, TrainSchedule, euler_timesteps, np_interp_index};
use super::{Prediction, div_scalar, mul_scalar};
use crate::engine::config::SchedulerConfig;

/// Timesteps, sigmas and `init_noise_sigma` of one sigma-based scheduler instance.
pub struct SigmaSchedule {
    timesteps: Vec<f64>,
    /// One sigma per timestep, then the final sigma (the step from the last timestep goes to it).
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
}

impl SigmaSchedule {
    /// `sigmas` has one entry per timestep plus the final one. `init_noise_sigma` is computed
    /// as diffusers' property does: the largest sigma, or `sqrt(max² + 1)` for "leading"
    /// spacing.
    pub fn new(timesteps: Vec<f64>, sigmas: Vec<f32>, spacing: Spacing) -> Self {
        let max_sigma = sigmas.iter().cloned().fold(f32::MIN, f32::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => max_sigma,
            Spacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        SigmaSchedule {
            timesteps,
            sigmas,
            init_noise_sigma,
        }
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma as f64
    }

    /// `sample / sqrt(sigma² + 1)` at timestep index `i`.
    pub fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        let s = self.sigmas[i];
        div_scalar(sample, (s * s + 1.0).sqrt())
    }

    /// img2img: `original + noise * sigma` at timestep index `i`.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        Ok((original + mul_scalar(noise, self.sigmas[i])?)?)
    }
}

/// The config's `timestep_spacing` (default "linspace") and the inference timesteps it places
/// (with `steps_offset`), highest first.
pub fn spaced_timesteps(
    cfg: &SchedulerConfig,
    sched: &TrainSchedule,
    steps: usize,
    class: &str,
) -> Result<(Spacing, Vec<f64>)> {
    let spacing = Spacing::parse(&cfg.str_or("timestep_spacing", "linspace")?, class)?;
    let offset = cfg.usize_or("steps_offset", 0)?;
    let timesteps = euler_timesteps(spacing, sched.num_train_timesteps, steps, offset);
    Ok((spacing, timesteps))
}

/// The training sigmas interpolated at (fractional) `timesteps`:
/// `np.interp(timesteps, np.arange(len(sigmas)), sigmas)`, in float64 like numpy.
pub fn interp_sigmas(timesteps: &[f64], train_sigmas: &[f32]) -> Vec<f64> {
    let base: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
    timesteps
        .iter()
        .map(|&t| np_interp_index(t, &base))
        .collect()
}

/// The denoised sample (x0) the model predicts at noise level `sigma`, per prediction type.
pub fn pred_original(
    prediction: Prediction,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    Ok(match prediction {
        Prediction::Epsilon => (sample - mul_scalar(model_output, sigma)?)?,
        Prediction::VPrediction => {
            let denom = sigma * sigma + 1.0;
            let c_out = -sigma / denom.sqrt();
            (mul_scalar(model_output, c_out)? + div_scalar(sample, denom)?)?
        }
        Prediction::Sample => model_output.clone(),
    })
}

/// One Euler step of the probability-flow ODE from `sigma` to `sigma_to`:
/// `sample + (sample - pred_original) / sigma * (sigma_to - sigma)`.
pub fn euler_update(
    sample: &Tensor,
    pred_original: &Tensor,
    sigma: f32,
    sigma_to: f32,
) -> Result<Tensor> {
    let derivative = div_scalar(&(sample - pred_original)?, sigma)?;
    Ok((sample + mul_scalar(&derivative, sigma_to - sigma)?)?)
}
