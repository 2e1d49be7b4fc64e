//! diffusers' `FlowMatchEulerDiscreteScheduler` (SD 3 / 3.5): Euler steps of a velocity
//! (flow-matching) model, `x + (sigma_next - sigma) * v`, on sigmas shifted by `shift` or, with
//! `use_dynamic_shifting`, by the image's `mu` (see [`mu_for`]).
//!
//! The precision follows diffusers: the training sigmas are float32 tensors (shifted once at
//! construction), the inference ones numpy float64 from their ends (shifted again, as diffusers
//! does), then float32.

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::class_config::{ClassConfig, class_config};
use super::schedule::np_linspace;
use crate::noise::NoiseSource;

class_config! {
    /// `FlowMatchEulerDiscreteScheduler.__init__`'s parameters and defaults (diffusers 0.42),
    /// plus the pipeline's dynamic-shift keys and `mu` (set by the SD 3 pipeline per image
    /// size, not read from a config).
    FlowMatchEulerConfig = "FlowMatchEulerDiscreteScheduler" {
        num_train_timesteps: usize = 1000,
        shift: f64 = 1.0,
        use_dynamic_shifting: bool = false,
        base_shift: Option<f64> = Some(0.5),
        max_shift: Option<f64> = Some(1.15),
        base_image_seq_len: Option<usize> = Some(256),
        max_image_seq_len: Option<usize> = Some(4096),
        invert_sigmas: bool = false,
        shift_terminal: Option<f64> = None,
        use_karras_sigmas: bool = false,
        use_exponential_sigmas: bool = false,
        use_beta_sigmas: bool = false,
        time_shift_type: String = "exponential".into(),
        stochastic_sampling: bool = false,
        mu: Option<f64> = None,
    }
}

const CLASS: &str = FlowMatchEulerConfig::CLASS;

/// StableDiffusion3Pipeline's `calculate_shift`: `mu` for `image_seq_len` patches, from the
/// scheduler config's keys with the pipeline's defaults (whose `max_shift` is 1.16, not the
/// scheduler's 1.15, when the config leaves it out).
pub fn mu_for(raw: &crate::config::SchedulerConfig, image_seq_len: usize) -> Result<f64> {
    let base_len = raw.f64_or("base_image_seq_len", 256.0)?;
    let max_len = raw.f64_or("max_image_seq_len", 4096.0)?;
    let base_shift = raw.f64_or("base_shift", 0.5)?;
    let max_shift = raw.f64_or("max_shift", 1.16)?;
    let m = (max_shift - base_shift) / (max_len - base_len);
    let b = base_shift - m * base_len;
    Ok(image_seq_len as f64 * m + b)
}

pub struct FlowMatchEuler {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
}

impl FlowMatchEuler {
    pub fn new(cfg: &FlowMatchEulerConfig, steps: usize) -> Result<Self> {
        for (key, on) in [
            ("invert_sigmas", cfg.invert_sigmas),
            ("use_karras_sigmas", cfg.use_karras_sigmas),
            ("use_exponential_sigmas", cfg.use_exponential_sigmas),
            ("use_beta_sigmas", cfg.use_beta_sigmas),
            ("stochastic_sampling", cfg.stochastic_sampling),
        ] {
            if on {
                bail!(
                    "scheduler config `{key}` = true is not supported for {CLASS} by this engine"
                );
            }
        }
        let n = cfg.num_train_timesteps;
        if steps == 0 || n == 0 {
            bail!("{CLASS}: steps and num_train_timesteps must be positive");
        }
        let shift32 = |s: f32, shift: f32| shift * s / (1.0 + (shift - 1.0) * s);
        // Training sigmas (float32): i/N for i = N..1, shifted unless shifting is dynamic.
        let train = |i: usize| {
            let s = i as f32 / n as f32;
            if cfg.use_dynamic_shifting {
                s
            } else {
                shift32(s, cfg.shift as f32)
            }
        };
        let (sigma_max, sigma_min) = (train(n) as f64, train(1) as f64);
        let ts = np_linspace(sigma_max * n as f64, sigma_min * n as f64, steps);
        let mut sigmas: Vec<f64> = ts.iter().map(|t| t / n as f64).collect();
        if cfg.use_dynamic_shifting {
            let Some(mu) = cfg.mu else {
                bail!("{CLASS}: use_dynamic_shifting needs the image's mu");
            };
            let linear = match cfg.time_shift_type.as_str() {
                "exponential" => false,
                "linear" => true,
                other => bail!("{CLASS}: time_shift_type {other:?} is not exponential or linear"),
            };
            for s in &mut sigmas {
                *s = if linear {
                    mu / (mu + (1.0 / *s - 1.0))
                } else {
                    mu.exp() / (mu.exp() + (1.0 / *s - 1.0))
                };
            }
        } else {
            for s in &mut sigmas {
                *s = cfg.shift * *s / (1.0 + (cfg.shift - 1.0) * *s);
            }
        }
        if let Some(terminal) = cfg.shift_terminal.filter(|&t| t != 0.0) {
            let last = 1.0 - sigmas[sigmas.len() - 1];
            let scale = last / (1.0 - terminal);
            for s in &mut sigmas {
                *s = 1.0 - (1.0 - *s) / scale;
            }
        }
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        let timesteps = sigmas.iter().map(|&s| (s * n as f32) as f64).collect();
        sigmas.push(0.0);
        Ok(FlowMatchEuler { timesteps, sigmas })
    }
}

impl super::Scheduler for FlowMatchEuler {
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
        let dt = self.sigmas[i + 1] - self.sigmas[i];
        Ok((sample + super::mul_scalar(model_output, dt)?)?)
    }

    /// `scale_noise`: `sigma * noise + (1 - sigma) * sample` at index `i`.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        let s = self.sigmas[i];
        Ok((super::mul_scalar(noise, s)? + super::mul_scalar(original, 1.0 - s)?)?)
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Scheduler;

    fn schedule(cfg: FlowMatchEulerConfig, steps: usize) -> Vec<f32> {
        let s = FlowMatchEuler::new(&cfg, steps).unwrap();
        s.timesteps().iter().map(|&t| t as f32).collect()
    }

    /// diffusers 0.42.1's `FlowMatchEulerDiscreteScheduler(shift=3.0).set_timesteps(n)` and,
    /// with `use_dynamic_shifting`, `set_timesteps(4, mu=0.521667)`, bit for bit.
    #[test]
    fn timesteps_and_sigmas_match_diffusers() {
        let shifted = FlowMatchEulerConfig {
            shift: 3.0,
            ..Default::default()
        };
        assert_eq!(
            schedule(shifted.clone(), 4),
            [1000.0, 857.692_3, 602.150_6, 8.928_572]
        );
        let s = FlowMatchEuler::new(&shifted, 4).unwrap();
        assert_eq!(
            s.sigmas().unwrap(),
            [1.0, 0.857_692_3, 0.602_150_56, 0.008_928_572, 0.0]
        );
        assert_eq!(
            schedule(shifted, 7),
            [
                1000.0, 937.710_45, 857.692_3, 751.121_1, 602.150_6, 379.194_6, 8.928_572
            ]
        );
        let dynamic = FlowMatchEulerConfig {
            shift: 3.0,
            use_dynamic_shifting: true,
            mu: Some(0.521667),
            ..Default::default()
        };
        assert_eq!(
            schedule(dynamic, 4),
            [1000.0, 771.414_37, 457.978_94, 1.683_680_9]
        );
    }

    #[test]
    fn dynamic_shifting_needs_mu_and_options_beyond_it_are_refused() {
        let dynamic = FlowMatchEulerConfig {
            use_dynamic_shifting: true,
            ..Default::default()
        };
        assert!(FlowMatchEuler::new(&dynamic, 4).is_err());
        let karras = FlowMatchEulerConfig {
            use_karras_sigmas: true,
            ..Default::default()
        };
        let err = FlowMatchEuler::new(&karras, 4).err().unwrap().to_string();
        assert!(err.contains("use_karras_sigmas"), "{err}");
    }

    #[test]
    fn mu_is_the_pipelines_calculate_shift() {
        let cfg = crate::config::SchedulerConfig::default();
        assert_eq!(mu_for(&cfg, 256).unwrap(), 0.5);
        // The pipeline's max_shift default (1.16) where the config has none.
        assert!((mu_for(&cfg, 4096).unwrap() - 1.16).abs() < 1e-12);
    }
}
