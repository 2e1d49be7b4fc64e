//! diffusers' `DEISMultistepScheduler` (log-rho multistep DEIS, orders 1-3). Its final sigma is
//! always the smallest training sigma (or the repeated last Karras / exponential sigma).

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::class_config::{
    Betas, ClassConfig, FlowOptions, SigmaOptions, Thresholding, TimestepSpacing, class_config,
};
use super::schedule::{Spacing, TrainSchedule};
use super::solver_schedule::{
    KarrasRounding, Point, alpha_sigma, lambda, solver_sigmas, solver_timesteps, train_sigma_min,
    vp_add_noise, x0_prediction,
};
use super::{Prediction, Scheduler, div_scalar, mul_scalar};
use crate::noise::NoiseSource;

class_config! {
    /// `DEISMultistepScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    DeisConfig = "DEISMultistepScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::linear(),
        solver_order: usize = 2,
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        thresholding: Thresholding = Thresholding::default(),
        algorithm_type: String = "deis".into(),
        solver_type: String = "logrho".into(),
        lower_order_final: bool = true,
        #[serde(flatten)]
        sigmas: SigmaOptions = SigmaOptions::default(),
        #[serde(flatten)]
        flow: FlowOptions = FlowOptions::default(),
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("linspace"),
    }
}

const CLASS: &str = DeisConfig::CLASS;

pub struct DeisMultistep {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: Prediction,
    solver_order: usize,
    lower_order_final: bool,
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
}

/// Second-order `ind_fn(t, b, c)` (float32, as numpy on float32 scalars).
fn ind2(t: f32, b: f32, c: f32) -> f32 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

/// Third-order `ind_fn(t, b, c, d)`.
fn ind3(t: f32, b: f32, c: f32, d: f32) -> f32 {
    let (lt, lc, ld, lb) = (t.ln(), c.ln(), d.ln(), b.ln());
    let numerator = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    let denominator = (lb - lc) * (lb - ld);
    numerator / denominator
}

/// The `algorithm_type`s DEIS takes (diffusers registers the DPM-Solver ones as deis).
pub(crate) fn check_algorithm(algorithm_type: &str) -> Result<()> {
    match algorithm_type {
        "deis" | "dpmsolver" | "dpmsolver++" => Ok(()),
        other => bail!(
            "{CLASS}: `algorithm_type` = {other} is not implemented (deis, dpmsolver, dpmsolver++)"
        ),
    }
}

impl DeisMultistep {
    pub fn new(cfg: &DeisConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, false, CLASS)?;
        let prediction = cfg.prediction_type;
        check_algorithm(&cfg.algorithm_type)?;
        match cfg.solver_type.as_str() {
            "logrho" | "midpoint" | "heun" | "bh1" | "bh2" => {}
            other => bail!("{CLASS}: solver type {other} is not implemented"),
        }
        let solver_order = cfg.solver_order;
        if !(1..=3).contains(&solver_order) {
            bail!("{CLASS}: `solver_order` = {solver_order} is not supported (1, 2, 3)");
        }
        let spacing = Spacing::parse(&cfg.spacing.timestep_spacing, CLASS)?;
        let n = sched.num_train_timesteps;
        let offset = cfg.spacing.steps_offset;
        let timesteps = solver_timesteps(spacing, n, n, steps, offset);
        let s = solver_sigmas(
            &cfg.sigmas,
            false,
            &sched,
            CLASS,
            timesteps,
            steps,
            KarrasRounding::Round,
        )?;
        let mut sigmas: Vec<f32> = s.sigmas.iter().map(|&v| v as f32).collect();
        let final_sigma = if s.converted {
            *sigmas.last().unwrap_or(&0.0)
        } else {
            train_sigma_min(&sched)
        };
        sigmas.push(final_sigma);
        Ok(DeisMultistep {
            timesteps: s.timesteps.iter().map(|&t| t as f64).collect(),
            sigmas,
            prediction,
            solver_order,
            lower_order_final: cfg.lower_order_final,
            model_outputs: vec![None; solver_order],
            lower_order_nums: 0,
        })
    }

    fn first_order(&self, m: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
        Ok((mul_scalar(sample, alpha_t / alpha_s)? - mul_scalar(m, sigma_t * (h.exp() - 1.0))?)?)
    }

    fn second_order(&self, i: usize, sample: &Tensor) -> Result<Tensor> {
        let k = self.solver_order;
        let m0 = self.model_outputs[k - 1].as_ref().expect("m0");
        let m1 = self.model_outputs[k - 2].as_ref().expect("m1");
        let [t, s0, s1] = Point::around(&self.sigmas, i);
        let (alpha_t, alpha_s0) = (t.alpha, s0.alpha);
        let (rho_t, rho_s0, rho_s1) = (t.sigma / t.alpha, s0.sigma / s0.alpha, s1.sigma / s1.alpha);
        let coef1 = ind2(rho_t, rho_s0, rho_s1) - ind2(rho_s0, rho_s0, rho_s1);
        let coef2 = ind2(rho_t, rho_s1, rho_s0) - ind2(rho_s0, rho_s1, rho_s0);
        let inner =
            ((div_scalar(sample, alpha_s0)? + mul_scalar(m0, coef1)?)? + mul_scalar(m1, coef2)?)?;
        mul_scalar(&inner, alpha_t)
    }

    fn third_order(&self, i: usize, sample: &Tensor) -> Result<Tensor> {
        let m0 = self.model_outputs[2].as_ref().expect("m0");
        let m1 = self.model_outputs[1].as_ref().expect("m1");
        let m2 = self.model_outputs[0].as_ref().expect("m2");
        let [t, s0, s1, s2] = Point::around(&self.sigmas, i);
        let (alpha_t, alpha_s0) = (t.alpha, s0.alpha);
        let [rho_t, rho_s0, rho_s1, rho_s2] = [t, s0, s1, s2].map(|p| p.sigma / p.alpha);
        let coef1 = ind3(rho_t, rho_s0, rho_s1, rho_s2) - ind3(rho_s0, rho_s0, rho_s1, rho_s2);
        let coef2 = ind3(rho_t, rho_s1, rho_s2, rho_s0) - ind3(rho_s0, rho_s1, rho_s2, rho_s0);
        let coef3 = ind3(rho_t, rho_s2, rho_s0, rho_s1) - ind3(rho_s0, rho_s2, rho_s0, rho_s1);
        let inner = (((div_scalar(sample, alpha_s0)? + mul_scalar(m0, coef1)?)?
            + mul_scalar(m1, coef2)?)?
            + mul_scalar(m2, coef3)?)?;
        mul_scalar(&inner, alpha_t)
    }
}

impl Scheduler for DeisMultistep {
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
        let len = self.timesteps.len();
        let lower_order_final = i + 1 == len && self.lower_order_final && len < 15;
        let lower_order_second = i + 2 == len && self.lower_order_final && len < 15;
        // convert_model_output: x0, then back to epsilon with the same alpha / sigma.
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        let x0 = x0_prediction(self.prediction, model_output, sample, self.sigmas[i])?;
        let eps = div_scalar(&(sample - mul_scalar(&x0, alpha_t)?)?, sigma_t)?;
        self.model_outputs.rotate_left(1);
        let k = self.solver_order;
        self.model_outputs[k - 1] = Some(eps.clone());
        let prev = if k == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(&eps, i, sample)?
        } else if k == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(i, sample)?
        } else {
            self.third_order(i, sample)?
        };
        if self.lower_order_nums < k {
            self.lower_order_nums += 1;
        }
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        vp_add_noise(original, noise, self.sigmas[i])
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}
