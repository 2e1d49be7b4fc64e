//! diffusers' `DPMSolverMultistepScheduler` ("DPM++ 2M" and friends): `algorithm_type`
//! dpmsolver++ / sde-dpmsolver++ / dpmsolver / sde-dpmsolver, `solver_order` 1-3,
//! `solver_type` midpoint / heun, `lower_order_final`, `euler_at_final`, `final_sigmas_type`,
//! Karras / exponential / lu-lambda sigmas, `lambda_min_clipped`. The SDE variants draw
//! `randn(model_output.shape)` per image generator at every step, before the update.

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::class_config::{
    Betas, ClassConfig, FlowOptions, SigmaOptions, Thresholding, TimestepSpacing, class_config,
};
use super::dpm_solver::{first_order_update, second_order_update, third_order_update};
use super::schedule::{Spacing, TrainSchedule};
use super::solver_schedule::{
    KarrasRounding, Point, clipped_last_timestep, eps_prediction, solver_sigmas, solver_timesteps,
    train_sigma_min, vp_add_noise, x0_prediction,
};
use super::{Prediction, Scheduler, mul_scalar};
use crate::noise::NoiseSource;

class_config! {
    /// `DPMSolverMultistepScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    DpmMultistepConfig = "DPMSolverMultistepScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::linear(),
        solver_order: usize = 2,
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        thresholding: Thresholding = Thresholding::default(),
        algorithm_type: String = "dpmsolver++".into(),
        solver_type: String = "midpoint".into(),
        lower_order_final: bool = true,
        euler_at_final: bool = false,
        #[serde(flatten)]
        sigmas: SigmaOptions = SigmaOptions::default(),
        use_lu_lambdas: bool = false,
        #[serde(flatten)]
        flow: FlowOptions = FlowOptions::default(),
        final_sigmas_type: String = "zero".into(),
        lambda_min_clipped: Option<f64> = None,
        variance_type: Option<String> = None,
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("linspace"),
        rescale_betas_zero_snr: bool = false,
    }
}

const CLASS: &str = DpmMultistepConfig::CLASS;

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
            other => bail!(
                "{class}: `algorithm_type` = {other} is not implemented ({})",
                if class == CLASS {
                    "dpmsolver, dpmsolver++, sde-dpmsolver, sde-dpmsolver++"
                } else {
                    "dpmsolver, dpmsolver++, sde-dpmsolver++"
                }
            ),
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
pub(crate) fn parse_midpoint(solver_type: &str, class: &str) -> Result<bool> {
    match solver_type {
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
    pub fn new(cfg: &DpmMultistepConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, cfg.rescale_betas_zero_snr, CLASS)?;
        let prediction = cfg.prediction_type;
        let algorithm = Algorithm::parse(&cfg.algorithm_type, CLASS)?;
        let midpoint = parse_midpoint(&cfg.solver_type, CLASS)?;
        let solver_order = cfg.solver_order;
        if !(1..=3).contains(&solver_order) {
            bail!("{CLASS}: `solver_order` = {solver_order} is not supported (1, 2, 3)");
        }
        if solver_order == 3 && algorithm == Algorithm::SdeDpmSolver {
            bail!("{CLASS}: third order is not implemented for algorithm_type sde-dpmsolver");
        }
        let final_type = cfg.final_sigmas_type.as_str();
        let final_sigma = match final_type {
            "zero" => 0.0,
            "sigma_min" => train_sigma_min(&sched),
            other => bail!(
                "{CLASS}: `final_sigmas_type` must be one of 'zero', or 'sigma_min', but got {other}"
            ),
        };
        if !algorithm.data_prediction() && final_type == "zero" {
            bail!(
                "{CLASS}: `final_sigmas_type` zero is not supported for `algorithm_type` {}; choose sigma_min",
                cfg.algorithm_type
            );
        }
        let spacing = Spacing::parse(&cfg.spacing.timestep_spacing, CLASS)?;
        let last = clipped_last_timestep(&sched, cfg.lambda_min_clipped);
        let n = sched.num_train_timesteps;
        let offset = cfg.spacing.steps_offset;
        let timesteps = solver_timesteps(spacing, last, n, steps, offset);
        let s = solver_sigmas(
            &cfg.sigmas,
            cfg.use_lu_lambdas,
            &sched,
            CLASS,
            timesteps,
            steps,
            if cfg.betas.beta_schedule == "squaredcos_cap_v2" {
                KarrasRounding::Truncate
            } else {
                KarrasRounding::Round
            },
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
            lower_order_final: cfg.lower_order_final,
            euler_at_final: cfg.euler_at_final,
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
        let [t, s0, s1] = Point::around(&self.sigmas, i);
        let h = t.lambda - s0.lambda;
        let r0 = (s0.lambda - s1.lambda) / h;
        let d1 = mul_scalar(&(m0 - m1)?, 1.0 / r0)?;
        second_order_update(
            (self.algorithm, self.midpoint),
            sample,
            t,
            s0,
            h,
            (m0, &d1),
            noise,
        )
    }

    fn third_order(&self, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let m0 = self.model_outputs[2].as_ref().expect("m0");
        let m1 = self.model_outputs[1].as_ref().expect("m1");
        let m2 = self.model_outputs[0].as_ref().expect("m2");
        let [t, s0, s1, s2] = Point::around(&self.sigmas, i);
        let h = t.lambda - s0.lambda;
        let (r0, r1) = ((s0.lambda - s1.lambda) / h, (s1.lambda - s2.lambda) / h);
        let d0 = m0;
        let d1_0 = mul_scalar(&(m0 - m1)?, 1.0 / r0)?;
        let d1_1 = mul_scalar(&(m1 - m2)?, 1.0 / r1)?;
        let diff = (&d1_0 - &d1_1)?;
        let d1 = (&d1_0 + mul_scalar(&diff, r0 / (r0 + r1))?)?;
        let d2 = mul_scalar(&diff, 1.0 / (r0 + r1))?;
        third_order_update(self.algorithm, sample, t, s0, h, (d0, &d1, &d2), noise)
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
