//! diffusers' `LMSDiscreteScheduler` ("LMS"): linear multistep (order 4) on the derivatives
//! `(sample - x0) / sigma`, with the integrated Lagrange coefficients diffusers gets from
//! `scipy.integrate.quad` (exact here: the integrand is a polynomial of degree < 4). Like
//! diffusers, the order at step `i` is `min(i + 1, 4)` and the coefficients are paired with the
//! derivatives actually collected (img2img starts with one).

use anyhow::Result;
use candle_core::Tensor;

use super::class_config::{Betas, ClassConfig, SigmaOptions, TimestepSpacing, class_config};
use super::schedule::TrainSchedule;
use super::sigma_schedule::{KOptions, SigmaSchedule, SigmaScheduler, k_schedule, pred_original};
use super::{Prediction, div_scalar, mul_scalar};
use crate::noise::NoiseSource;

class_config! {
    /// `LMSDiscreteScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    LmsConfig = "LMSDiscreteScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::linear(),
        #[serde(flatten)]
        sigmas: SigmaOptions = SigmaOptions::default(),
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("linspace"),
    }
}

const CLASS: &str = LmsConfig::CLASS;
const ORDER: usize = 4;

pub struct LmsDiscrete {
    schedule: SigmaSchedule,
    prediction: Prediction,
    derivatives: Vec<Tensor>,
}

/// Gauss-Legendre nodes and weights on [-1, 1] (4 points: exact up to degree 7).
const GL_X: [f64; 4] = [
    -0.861_136_311_594_052_6,
    -0.339_981_043_584_856_3,
    0.339_981_043_584_856_3,
    0.861_136_311_594_052_6,
];
const GL_W: [f64; 4] = [
    0.347_854_845_137_453_85,
    0.652_145_154_862_546_1,
    0.652_145_154_862_546_1,
    0.347_854_845_137_453_85,
];

impl LmsDiscrete {
    pub fn new(cfg: &LmsConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, false, CLASS)?;
        let prediction = cfg.prediction_type;
        let k = k_schedule(
            &cfg.spacing,
            &cfg.sigmas,
            &sched,
            steps,
            CLASS,
            KOptions {
                karras_config_bounds: false,
                round_karras_timesteps: false,
            },
        )?;
        let mut sigmas: Vec<f32> = k.sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        let timesteps = k.timesteps.iter().map(|&t| t as f32 as f64).collect();
        Ok(LmsDiscrete {
            schedule: SigmaSchedule::new(timesteps, sigmas, k.spacing),
            prediction,
            derivatives: Vec::new(),
        })
    }

    /// `get_lms_coefficient(order, t, current_order)`: the integral from `sigmas[t]` to
    /// `sigmas[t + 1]` of the Lagrange basis polynomial of `sigmas[t - current_order]` over
    /// `sigmas[t - k]`, `k < order`.
    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let s = self.schedule.sigmas();
        let f = |tau: f64| -> f64 {
            let mut prod = 1.0;
            for k in 0..order {
                if k == current {
                    continue;
                }
                prod *= (tau - s[t - k] as f64) / (s[t - current] as f64 - s[t - k] as f64);
            }
            prod
        };
        let (a, b) = (s[t] as f64, s[t + 1] as f64);
        let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
        GL_X.iter()
            .zip(GL_W)
            .map(|(&x, w)| w * f(mid + half * x))
            .sum::<f64>()
            * half
    }
}

impl SigmaScheduler for LmsDiscrete {
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
        let sigma = self.schedule.sigmas()[i];
        let pred = pred_original(self.prediction, model_output, sample, sigma)?;
        let derivative = div_scalar(&(sample - pred)?, sigma)?;
        self.derivatives.push(derivative);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(ORDER);
        let mut prev = sample.clone();
        // sum(coeff * derivative for coeff, derivative in zip(coeffs, reversed(derivatives)))
        let mut acc: Option<Tensor> = None;
        for (cur, d) in (0..order).zip(self.derivatives.iter().rev()) {
            let term = mul_scalar(d, self.coefficient(order, i, cur) as f32)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        if let Some(a) = acc {
            prev = (prev + a)?;
        }
        Ok(prev)
    }
}
