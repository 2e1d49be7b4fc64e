//! diffusers' `DPMSolverMultistepScheduler` ("DPM++ 2M" and friends): `algorithm_type`
//! dpmsolver++ / sde-dpmsolver++ / dpmsolver / sde-dpmsolver, `solver_order` 1-3,
//! `solver_type` midpoint / heun, `lower_order_final`, `euler_at_final`, `final_sigmas_type`,
//! Karras / exponential / lu-lambda sigmas, `lambda_min_clipped`. The SDE variants draw
//! `randn(model_output.shape)` per image generator at every step, before the update.

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::dpm_solver::{first_order_update, second_order_update, third_order_update};
use super::schedule::{Spacing, TrainSchedule};
use super::solver_schedule::{
    KarrasRounding, alpha_sigma, clipped_last_timestep, eps_prediction, lambda, solver_sigmas,
    solver_timesteps, train_sigma_min, vp_add_noise, x0_prediction,
};
use super::{Prediction, Scheduler, mul_scalar};
use crate::config::SchedulerConfig;
use crate::noise::NoiseSource;

const CLASS: &str = "DPMSolverMultistepScheduler";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algorithm {
    DpmSolver,
    DpmSolverPP,
    SdeDpmSolver,
    SdeDpmSolverPP,
}

impl Algorithm {
    pub(crate) fn parse(s: &str, class: &str) -> Result<Self> {
        Ok(match s {
            "dpmsolver" => Algorithm::DpmSolver,
            "dpmsolver++" | "deis" => Algorithm::DpmSolverPP,
            "sde-dpmsolver" if class == CLASS => Algorithm::SdeDpmSolver,
            "sde-dpmsolver++" => Algorithm::SdeDpmSolverPP,
            other => bail!("{class}: `algorithm_type` = {other} is not implemented"),
        })
    }

    /// Whether the model output is converted to a data (x0) prediction.
    pub(crate) fn data_prediction(self) -> bool {
        matches!(self, Algorithm::DpmSolverPP | Algorithm::SdeDpmSolverPP)
    }

    pub(crate) fn sde(self) -> bool {
        matches!(self, Algorithm::SdeDpmSolver | Algorithm::SdeDpmSolverPP)
    }
}

/// `solver_type`: midpoint or heun (bh1 / bh2 / logrho are mapped to midpoint, as diffusers
/// does).
pub(crate) fn parse_midpoint(cfg: &SchedulerConfig, class: &str) -> Result<bool> {
    match cfg.str_or("solver_type", "midpoint")?.as_str() {
        "midpoint" | "logrho" | "bh1" | "bh2" => Ok(true),
        "heun" => Ok(false),
        other => bail!("{class}: `solver_type` = {other} is not implemented"),
    }
}

pub struct DpmSolverMultistep {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: Prediction,
    algorithm: Algorithm,
    midpoint: bool,
    solver_order: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
}

impl DpmSolverMultistep {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::from_config(cfg, CLASS)?;
        let prediction = Prediction::from_config(cfg)?;
        let algorithm = Algorithm::parse(&cfg.str_or("algorithm_type", "dpmsolver++")?, CLASS)?;
        let midpoint = parse_midpoint(cfg, CLASS)?;
        let solver_order = cfg.usize_or("solver_order", 2)?;
        if !(1..=3).contains(&solver_order) {
            bail!("{CLASS}: `solver_order` = {solver_order} is not supported (1, 2, 3)");
        }
        if solver_order == 3 && algorithm == Algorithm::SdeDpmSolver {
            bail!("{CLASS}: third order is not implemented for algorithm_type sde-dpmsolver");
        }
        let final_type = cfg.str_or("final_sigmas_type", "zero")?;
        let final_sigma = match final_type.as_str() {
            "zero" => 0.0,
            "sigma_min" => train_sigma_min(&sched),
            other => bail!(
                "{CLASS}: `final_sigmas_type` must be one of 'zero', or 'sigma_min', but got {other}"
            ),
        };
        if !algorithm.data_prediction() && final_type == "zero" {
            bail!(
                "{CLASS}: `final_sigmas_type` zero is not supported for `algorithm_type` {}; choose sigma_min",
                cfg.str_or("algorithm_type", "")?
            );
        }
        let spacing = Spacing::parse(&cfg.str_or("timestep_spacing", "linspace")?, CLASS)?;
        let last = clipped_last_timestep(&sched, cfg)?;
        let n = sched.num_train_timesteps;
        let offset = cfg.usize_or("steps_offset", 0)?;
        let timesteps = solver_timesteps(spacing, last, n, steps, offset);
        let s = solver_sigmas(
            cfg,
            &sched,
            CLASS,
            timesteps,
            steps,
            KarrasRounding::RoundUnlessCosine,
        )?;
        let mut sigmas: Vec<f32> = s.sigmas.iter().map(|&v| v as f32).collect();
        sigmas.push(final_sigma);
        Ok(DpmSolverMultistep {
            timesteps: s.timesteps.iter().map(|&t| t as f64).collect(),
            sigmas,
            prediction,
            algorithm,
            midpoint,
            solver_order,
            lower_order_final: cfg.bool_or("lower_order_final", true)?,
            euler_at_final: cfg.bool_or("euler_at_final", false)?,
            final_zero: final_type == "zero",
            model_outputs: vec![None; solver_order],
            lower_order_nums: 0,
        })
    }

    fn convert(&self, model_output: &Tensor, sample: &Tensor, i: usize) -> Result<Tensor> {
        if self.algorithm.data_prediction() {
            x0_prediction(self.prediction, model_output, sample, self.sigmas[i])
        } else {
            eps_prediction(self.prediction, model_output, sample, self.sigmas[i])
        }
    }

    fn second_order(&self, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let m0 = self.model_outputs[self.solver_order - 1]
            .as_ref()
            .expect("m0");
        let m1 = self.model_outputs[self.solver_order - 2]
            .as_ref()
            .expect("m1");
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let r0 = h_0 / h;
        let d1 = mul_scalar(&(m0 - m1)?, 1.0 / r0)?;
        second_order_update(
            (self.algorithm, self.midpoint),
            sample,
            (alpha_t, sigma_t),
            (alpha_s0, sigma_s0),
            h,
            (m0, &d1),
            noise,
        )
    }

    fn third_order(&self, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let m0 = self.model_outputs[2].as_ref().expect("m0");
        let m1 = self.model_outputs[1].as_ref().expect("m1");
        let m2 = self.model_outputs[0].as_ref().expect("m2");
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let (alpha_s2, sigma_s2) = alpha_sigma(self.sigmas[i - 2]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let lambda_s2 = lambda(alpha_s2, sigma_s2);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let h_1 = lambda_s1 - lambda_s2;
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d0 = m0;
        let d1_0 = mul_scalar(&(m0 - m1)?, 1.0 / r0)?;
        let d1_1 = mul_scalar(&(m1 - m2)?, 1.0 / r1)?;
        let diff = (&d1_0 - &d1_1)?;
        let d1 = (&d1_0 + mul_scalar(&diff, r0 / (r0 + r1))?)?;
        let d2 = mul_scalar(&diff, 1.0 / (r0 + r1))?;
        third_order_update(
            self.algorithm,
            sample,
            (alpha_t, sigma_t),
            (alpha_s0, sigma_s0),
            h,
            (d0, &d1, &d2),
            noise,
        )
    }
}

impl Scheduler for DpmSolverMultistep {
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
        let len = self.timesteps.len();
        let lower_order_final = i == len - 1
            && (self.euler_at_final || (self.lower_order_final && len < 15) || self.final_zero);
        let lower_order_second = i + 2 == len && self.lower_order_final && len < 15;
        let converted = self.convert(model_output, sample, i)?;
        self.model_outputs.rotate_left(1);
        self.model_outputs[self.solver_order - 1] = Some(converted.clone());
        let eps = if self.algorithm.sde() {
            Some(
                noise
                    .randn_like(model_output)?
                    .to_dtype(model_output.dtype())?,
            )
        } else {
            None
        };
        let prev = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            first_order_update(
                self.algorithm,
                sample,
                self.sigmas[i],
                self.sigmas[i + 1],
                &converted,
                eps.as_ref(),
            )?
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(i, sample, eps.as_ref())?
        } else {
            self.third_order(i, sample, eps.as_ref())?
        };
        if self.lower_order_nums < self.solver_order {
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
