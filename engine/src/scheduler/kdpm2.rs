//! diffusers' `KDPM2DiscreteScheduler` ("DPM2"): k-diffusion's DPM-Solver-2, a midpoint step
//! through the geometric mean of consecutive sigmas. Two model evaluations per step; the
//! midpoint timesteps come from `_sigma_to_t` of the interpolated sigmas and are interleaved as
//! diffusers does (`order() = 2`).

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::class_config::{Betas, ClassConfig, SigmaOptions, TimestepSpacing, class_config};
use super::heun::interleave_repeat_last;
use super::schedule::TrainSchedule;
use super::sigma_schedule::{
    KOptions, KSchedule, SigmaSchedule, SigmaScheduler, k_schedule, pred_original, sigma_to_t,
};
use super::{Prediction, div_scalar, mul_scalar};
use crate::noise::NoiseSource;

class_config! {
    /// `KDPM2DiscreteScheduler.__init__`'s and `KDPM2AncestralDiscreteScheduler.__init__`'s
    /// parameters and defaults (the same in both; diffusers 0.42).
    KDpm2Config = "KDPM2DiscreteScheduler",
    KDpm2AncestralConfig = "KDPM2AncestralDiscreteScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::new(0.00085, 0.012, "linear"),
        #[serde(flatten)]
        sigmas: SigmaOptions = SigmaOptions::default(),
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("linspace"),
    }
}

const CLASS: &str = KDpm2Config::CLASS;

pub struct KDpm2Discrete {
    schedule: SigmaSchedule,
    sigmas_interpol: Vec<f32>,
    prediction: Prediction,
    /// The sample at the start of the step, between its two evaluations.
    sample: Option<Tensor>,
}

/// `log(a).lerp(log(b), 0.5).exp()` in float32 (torch's lerp with weight 0.5 computes
/// `end - (end - start) * 0.5`; `start` = log(a)).
pub(crate) fn log_midpoint(a: f32, b: f32) -> f32 {
    let (start, end) = (a.ln(), b.ln());
    (end - (end - start) * 0.5).exp()
}

/// What both DPM2 classes compute first in `set_timesteps`: the k-diffusion schedule and its
/// sigmas (float32) with the final 0.
pub(crate) struct Dpm2Sigmas {
    pub k: KSchedule,
    pub sigmas: Vec<f32>,
    /// Karras / exponential / beta timesteps stay float64, the spaced ones are float32.
    float64: bool,
}

impl Dpm2Sigmas {
    pub fn new(
        (betas, spacing, options): (&Betas, &TimestepSpacing, &SigmaOptions),
        prediction: Prediction,
        steps: usize,
        class: &str,
    ) -> Result<Self> {
        let sched = TrainSchedule::new(betas, false, class)?;
        if prediction == Prediction::Sample {
            bail!("{class}: prediction_type not implemented yet: sample");
        }
        let k = k_schedule(
            spacing,
            options,
            &sched,
            steps,
            class,
            KOptions {
                karras_config_bounds: true,
                round_karras_timesteps: true,
            },
        )?;
        let mut sigmas: Vec<f32> = k.sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        let float64 =
            options.use_karras_sigmas || options.use_exponential_sigmas || options.use_beta_sigmas;
        Ok(Dpm2Sigmas { k, sigmas, float64 })
    }

    /// A timestep in the precision diffusers keeps it in.
    pub fn cast(&self, t: f64) -> f64 {
        if self.float64 { t } else { t as f32 as f64 }
    }
}

impl KDpm2Discrete {
    pub fn new(cfg: &KDpm2Config, steps: usize) -> Result<Self> {
        let prediction = cfg.prediction_type;
        let d = Dpm2Sigmas::new(
            (&cfg.betas, &cfg.spacing, &cfg.sigmas),
            prediction,
            steps,
            CLASS,
        )?;
        let (k, sigmas) = (&d.k, &d.sigmas);
        let n = sigmas.len();
        // sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp(): entry j mixes sigmas[j] and
        // sigmas[j - 1] (entry 0 wraps around to the final 0 and is never used).
        let interp: Vec<f32> = (0..n)
            .map(|j| log_midpoint(sigmas[j], sigmas[(j + n - 1) % n]))
            .collect();
        let timesteps_interp: Vec<f64> = interp
            .iter()
            .map(|&s| sigma_to_t(s as f64, &k.log_sigmas))
            .collect();
        let base_t: Vec<f64> = k.timesteps.iter().map(|&t| d.cast(t)).collect();
        // cat([timesteps[:1], stack(interpol[1:-1], timesteps[1:]).flatten()])
        let mut timesteps = vec![base_t[0]];
        for j in 1..base_t.len() {
            timesteps.push(d.cast(timesteps_interp[j]));
            timesteps.push(base_t[j]);
        }
        Ok(KDpm2Discrete {
            schedule: SigmaSchedule::new(timesteps, interleave_repeat_last(sigmas), k.spacing),
            sigmas_interpol: interleave_repeat_last(&interp),
            prediction,
            sample: None,
        })
    }
}

impl SigmaScheduler for KDpm2Discrete {
    const CLASS: &'static str = CLASS;

    fn schedule(&self) -> &SigmaSchedule {
        &self.schedule
    }

    fn sigma_scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        let sigma = if self.sample.is_none() {
            self.schedule.sigmas()[i]
        } else {
            self.sigmas_interpol[i]
        };
        div_scalar(sample, (sigma * sigma + 1.0).sqrt())
    }

    fn sigma_step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let sigmas = self.schedule.sigmas();
        match self.sample.take() {
            None => {
                let (sigma, sigma_interpol) = (sigmas[i], self.sigmas_interpol[i + 1]);
                let pred = pred_original(self.prediction, model_output, sample, sigma)?;
                let derivative = div_scalar(&(sample - pred)?, sigma)?;
                let dt = sigma_interpol - sigma;
                self.sample = Some(sample.clone());
                Ok((sample + mul_scalar(&derivative, dt)?)?)
            }
            Some(first_sample) => {
                let (sigma, sigma_interpol, sigma_next) =
                    (sigmas[i - 1], self.sigmas_interpol[i], sigmas[i]);
                let pred = pred_original(self.prediction, model_output, sample, sigma_interpol)?;
                let derivative = div_scalar(&(sample - pred)?, sigma_interpol)?;
                let dt = sigma_next - sigma;
                Ok((first_sample + mul_scalar(&derivative, dt)?)?)
            }
        }
    }
}
