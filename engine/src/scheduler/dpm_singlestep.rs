//! diffusers' `DPMSolverSinglestepScheduler` ("DPM++ 2S", DPM-Solver++(2S) of the paper):
//! groups of `solver_order` model evaluations, each group stepping from the sample at its start
//! (the `order_list` of diffusers, with its `lower_order_final` rules). `algorithm_type`
//! dpmsolver++ / dpmsolver / sde-dpmsolver++ (noise drawn at every step).

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::class_config::{
    Betas, ClassConfig, FlowOptions, SigmaOptions, Thresholding, class_config,
};
use super::dpm_multistep::{Algorithm, parse_midpoint};
use super::dpm_solver::{first_order_update, second_order_update, third_order_update};
use super::schedule::{Spacing, TrainSchedule};
use super::solver_schedule::{
    KarrasRounding, Point, clipped_last_timestep, eps_prediction, solver_sigmas, solver_timesteps,
    train_sigma_min, vp_add_noise, x0_prediction,
};
use super::{Prediction, Scheduler, mul_scalar};
use crate::noise::NoiseSource;

class_config! {
    /// `DPMSolverSinglestepScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    DpmSinglestepConfig = "DPMSolverSinglestepScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::linear(),
        solver_order: usize = 2,
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        thresholding: Thresholding = Thresholding::default(),
        algorithm_type: String = "dpmsolver++".into(),
        solver_type: String = "midpoint".into(),
        lower_order_final: bool = false,
        #[serde(flatten)]
        sigmas: SigmaOptions = SigmaOptions::default(),
        #[serde(flatten)]
        flow: FlowOptions = FlowOptions::default(),
        final_sigmas_type: String = "zero".into(),
        lambda_min_clipped: Option<f64> = None,
        variance_type: Option<String> = None,
    }
}

const CLASS: &str = DpmSinglestepConfig::CLASS;

pub struct DpmSolverSinglestep {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: Prediction,
    algorithm: Algorithm,
    midpoint: bool,
    solver_order: usize,
    order_list: Vec<usize>,
    model_outputs: Vec<Option<Tensor>>,
    /// The sample at the start of the current group of steps.
    sample: Option<Tensor>,
}

/// `get_order_list`.
fn order_list(steps: usize, order: usize, lower_order_final: bool, final_zero: bool) -> Vec<usize> {
    let rep = |pat: &[usize], n: usize| -> Vec<usize> {
        pat.iter().copied().cycle().take(pat.len() * n).collect()
    };
    let mut orders = if lower_order_final {
        match order {
            3 => {
                if steps.is_multiple_of(3) {
                    let mut v = rep(&[1, 2, 3], (steps / 3).saturating_sub(1));
                    v.extend([1, 2, 1]);
                    v
                } else if steps % 3 == 1 {
                    let mut v = rep(&[1, 2, 3], steps / 3);
                    v.push(1);
                    v
                } else {
                    let mut v = rep(&[1, 2, 3], steps / 3);
                    v.extend([1, 2]);
                    v
                }
            }
            2 => {
                if steps.is_multiple_of(2) {
                    let mut v = rep(&[1, 2], (steps / 2).saturating_sub(1));
                    v.extend([1, 1]);
                    v
                } else {
                    let mut v = rep(&[1, 2], steps / 2);
                    v.push(1);
                    v
                }
            }
            _ => vec![1; steps],
        }
    } else {
        match order {
            3 => rep(&[1, 2, 3], steps / 3),
            2 => rep(&[1, 2], steps / 2),
            _ => vec![1; steps],
        }
    };
    if final_zero && let Some(last) = orders.last_mut() {
        *last = 1;
    }
    orders
}

impl DpmSolverSinglestep {
    pub fn new(cfg: &DpmSinglestepConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, false, CLASS)?;
        let prediction = cfg.prediction_type;
        let algorithm = Algorithm::parse(&cfg.algorithm_type, CLASS)?;
        let midpoint = parse_midpoint(&cfg.solver_type, CLASS)?;
        let solver_order = cfg.solver_order;
        if !(1..=3).contains(&solver_order) {
            bail!("{CLASS}: `solver_order` = {solver_order} is not supported (1, 2, 3)");
        }
        let final_type = cfg.final_sigmas_type.as_str();
        let final_sigma = match final_type {
            "zero" => 0.0,
            "sigma_min" => train_sigma_min(&sched),
            other => bail!(
                "{CLASS}: `final_sigmas_type` must be one of `sigma_min` or `zero`, but got {other}"
            ),
        };
        let final_zero = final_type == "zero";
        if !algorithm.data_prediction() && final_zero {
            bail!(
                "{CLASS}: `final_sigmas_type` zero is not supported for `algorithm_type` dpmsolver; choose sigma_min"
            );
        }
        let last = clipped_last_timestep(&sched, cfg.lambda_min_clipped);
        let n = sched.num_train_timesteps;
        let timesteps = solver_timesteps(Spacing::Linspace, last, n, steps, 0);
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
        sigmas.push(final_sigma);
        // set_timesteps turns lower_order_final on for an uneven number of steps, or with a
        // zero final sigma.
        let mut lower_order_final = cfg.lower_order_final;
        if !lower_order_final && (!steps.is_multiple_of(solver_order) || final_zero) {
            lower_order_final = true;
        }
        Ok(DpmSolverSinglestep {
            timesteps: s.timesteps.iter().map(|&t| t as f64).collect(),
            sigmas,
            prediction,
            algorithm,
            midpoint,
            solver_order,
            order_list: order_list(steps, solver_order, lower_order_final, final_zero),
            model_outputs: vec![None; solver_order],
            sample: None,
        })
    }

    fn second_order(&self, i: usize, x: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let k = self.solver_order;
        let m0 = self.model_outputs[k - 1].as_ref().expect("m0");
        let m1 = self.model_outputs[k - 2].as_ref().expect("m1");
        let [t, s0, s1] = Point::around(&self.sigmas, i);
        let h = t.lambda - s1.lambda;
        let r0 = (s0.lambda - s1.lambda) / h;
        let d1 = mul_scalar(&(m0 - m1)?, 1.0 / r0)?;
        if self.algorithm == Algorithm::SdeDpmSolver {
            unreachable!("not a singlestep algorithm")
        }
        second_order_update(
            (self.algorithm, self.midpoint),
            x,
            t,
            s1,
            h,
            (m1, &d1),
            noise,
        )
    }

    fn third_order(&self, i: usize, x: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let m0 = self.model_outputs[2].as_ref().expect("m0");
        let m1 = self.model_outputs[1].as_ref().expect("m1");
        let m2 = self.model_outputs[0].as_ref().expect("m2");
        let [t, s0, s1, s2] = Point::around(&self.sigmas, i);
        let h = t.lambda - s2.lambda;
        let (r0, r1) = ((s0.lambda - s2.lambda) / h, (s1.lambda - s2.lambda) / h);
        let (alpha_t, sigma_t, alpha_s2, sigma_s2) = (t.alpha, t.sigma, s2.alpha, s2.sigma);
        let d0 = m2;
        let d1_0 = mul_scalar(&(m1 - m2)?, 1.0 / r1)?;
        let d1_1 = mul_scalar(&(m0 - m2)?, 1.0 / r0)?;
        // D1 = (r0 * D1_0 - r1 * D1_1) / (r0 - r1); D2 = 2 * (D1_1 - D1_0) / (r0 - r1)
        let d1 = super::div_scalar(&(mul_scalar(&d1_0, r0)? - mul_scalar(&d1_1, r1)?)?, r0 - r1)?;
        let d2 = super::div_scalar(&mul_scalar(&(&d1_1 - &d1_0)?, 2.0)?, r0 - r1)?;
        if !self.midpoint {
            return third_order_update(self.algorithm, x, t, s2, h, (d0, &d1, &d2), noise);
        }
        // diffusers' singlestep-only "midpoint" third order: the first-order term and D1_1.
        let em = (-h).exp() - 1.0;
        let ep = h.exp() - 1.0;
        Ok(match self.algorithm {
            Algorithm::DpmSolverPP => {
                ((mul_scalar(x, sigma_t / sigma_s2)? - mul_scalar(d0, alpha_t * em)?)?
                    + mul_scalar(&d1_1, alpha_t * (em / h + 1.0))?)?
            }
            Algorithm::DpmSolver => {
                ((mul_scalar(x, alpha_t / alpha_s2)? - mul_scalar(d0, sigma_t * ep)?)?
                    - mul_scalar(&d1_1, sigma_t * (ep / h - 1.0))?)?
            }
            Algorithm::SdeDpmSolverPP => {
                let noise = noise.expect("sde noise");
                let e2 = 1.0 - (-2.0 * h).exp();
                (((mul_scalar(x, sigma_t / sigma_s2 * (-h).exp())?
                    + mul_scalar(d0, alpha_t * e2)?)?
                    + mul_scalar(&d1_1, alpha_t * (e2 / (-2.0 * h) + 1.0))?)?
                    + mul_scalar(noise, sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())?)?
            }
            Algorithm::SdeDpmSolver => unreachable!("not a singlestep algorithm"),
        })
    }
}

impl Scheduler for DpmSolverSinglestep {
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
        let converted = if self.algorithm.data_prediction() {
            x0_prediction(self.prediction, model_output, sample, self.sigmas[i])?
        } else {
            eps_prediction(self.prediction, model_output, sample, self.sigmas[i])?
        };
        self.model_outputs.rotate_left(1);
        let k = self.solver_order;
        self.model_outputs[k - 1] = Some(converted.clone());
        let eps = if self.algorithm.sde() {
            Some(
                noise
                    .randn_like(model_output)?
                    .to_dtype(model_output.dtype())?,
            )
        } else {
            None
        };
        let mut order = self.order_list[i];
        while self.model_outputs[k - order].is_none() {
            order -= 1;
        }
        if order == 1 {
            self.sample = Some(sample.clone());
        }
        let x = self.sample.clone().expect("group start sample");
        match order {
            1 => first_order_update(
                self.algorithm,
                &x,
                self.sigmas[i],
                self.sigmas[i + 1],
                &converted,
                eps.as_ref(),
            ),
            2 => self.second_order(i, &x, eps.as_ref()),
            _ => self.third_order(i, &x, eps.as_ref()),
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        vp_add_noise(original, noise, self.sigmas[i])
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}
