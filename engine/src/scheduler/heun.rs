//! diffusers' `HeunDiscreteScheduler`: Heun's second-order method, two model evaluations per
//! step. Timesteps `[t0, t1, t1, t2, t2, ...]` and sigmas `[s0, s1, s1, ..., 0]` are interleaved
//! as diffusers does, so the pipeline calls `step` once per entry (`order() = 2`).

use anyhow::Result;
use candle_core::Tensor;

use super::class_config::{Betas, ClassConfig, SigmaOptions, TimestepSpacing, class_config};
use super::schedule::TrainSchedule;
use super::sigma_schedule::{KOptions, SigmaSchedule, SigmaScheduler, k_schedule, pred_original};
use super::{Prediction, clip_sample, div_scalar, mul_scalar};
use crate::noise::NoiseSource;

class_config! {
    /// `HeunDiscreteScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    HeunConfig = "HeunDiscreteScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::new(0.00085, 0.012, "linear"),
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        sigmas: SigmaOptions = SigmaOptions::default(),
        clip_sample: bool = false,
        clip_sample_range: f64 = 1.0,
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("linspace"),
    }
}

const CLASS: &str = HeunConfig::CLASS;

pub struct HeunDiscrete {
    schedule: SigmaSchedule,
    prediction: Prediction,
    clip: Option<f32>,
    /// First-order state: (derivative, dt, sample) between the two evaluations of a step.
    state: Option<(Tensor, f32, Tensor)>,
}

/// `[x[0]] + repeat_interleave(x[1..n], 2) + [x[n]]`-style interleaving used by the
/// second-order schedulers: the first entry once, the middle ones twice, `tail` entries at the
/// end once.
pub(crate) fn interleave<T: Copy>(v: &[T], tail: usize) -> Vec<T> {
    let n = v.len();
    let mut out = vec![v[0]];
    for &x in &v[1..n - tail] {
        out.push(x);
        out.push(x);
    }
    out.extend_from_slice(&v[n - tail..]);
    out
}

/// `cat([x[:1], x[1:].repeat_interleave(2), x[-1:]])` (KDPM2's sigma layouts).
pub(crate) fn interleave_repeat_last<T: Copy>(v: &[T]) -> Vec<T> {
    let mut out = interleave(v, 0);
    out.push(v[v.len() - 1]);
    out
}

impl HeunDiscrete {
    pub fn new(cfg: &HeunConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, false, CLASS)?;
        let prediction = cfg.prediction_type;
        let k = k_schedule(
            &cfg.spacing,
            &cfg.sigmas,
            &sched,
            steps,
            CLASS,
            KOptions {
                karras_config_bounds: true,
                round_karras_timesteps: false,
            },
        )?;
        let mut sigmas: Vec<f32> = k.sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        // cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        let sigmas = interleave(&sigmas, 1);
        // cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
        let ts: Vec<f64> = k.timesteps.iter().map(|&t| t as f32 as f64).collect();
        let timesteps = if ts.len() > 1 { interleave(&ts, 0) } else { ts };
        Ok(HeunDiscrete {
            schedule: SigmaSchedule::new(timesteps, sigmas, k.spacing),
            prediction,
            clip: clip_sample(cfg.clip_sample, cfg.clip_sample_range),
            state: None,
        })
    }
}

impl SigmaScheduler for HeunDiscrete {
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
        let sigmas = self.schedule.sigmas();
        let first = self.state.is_none();
        let (sigma, sigma_next) = if first {
            (sigmas[i], sigmas[i + 1])
        } else {
            (sigmas[i - 1], sigmas[i])
        };
        // gamma = 0: sigma_hat = sigma.
        let sigma_input = if first { sigma } else { sigma_next };
        let pred = pred_original(self.prediction, model_output, sample, sigma_input)?;
        let pred = match self.clip {
            Some(r) => pred.clamp(-r, r)?,
            None => pred,
        };
        match self.state.take() {
            None => {
                let derivative = div_scalar(&(sample - pred)?, sigma)?;
                let dt = sigma_next - sigma;
                let prev = (sample + mul_scalar(&derivative, dt)?)?;
                self.state = Some((derivative, dt, sample.clone()));
                Ok(prev)
            }
            Some((prev_derivative, dt, first_sample)) => {
                let derivative = div_scalar(&(sample - pred)?, sigma_next)?;
                let derivative = div_scalar(&(prev_derivative + derivative)?, 2.0)?;
                Ok((first_sample + mul_scalar(&derivative, dt)?)?)
            }
        }
    }
}
