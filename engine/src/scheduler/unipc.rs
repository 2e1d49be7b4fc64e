//! diffusers' `UniPCMultistepScheduler`: the UniP predictor and the UniC corrector (applied to
//! the incoming sample before each step but the first, unless listed in `disable_corrector`),
//! `solver_type` bh1 / bh2, `predict_x0`, `solver_order`, `lower_order_final`,
//! `final_sigmas_type`, Karras / exponential sigmas.

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::class_config::{
    Betas, ClassConfig, FlowOptions, SigmaOptions, Thresholding, TimestepSpacing, class_config,
};
use super::schedule::{Spacing, TrainSchedule};
use super::solver_schedule::{
    KarrasRounding, alpha_sigma, eps_prediction, lambda, solver_sigmas, solver_timesteps,
    train_sigma_min, vp_add_noise, x0_prediction,
};
use super::{Prediction, Scheduler, mul_scalar};
use crate::noise::NoiseSource;

class_config! {
    /// `UniPCMultistepScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    UniPcConfig = "UniPCMultistepScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::linear(),
        solver_order: usize = 2,
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        thresholding: Thresholding = Thresholding::default(),
        predict_x0: bool = true,
        solver_type: String = "bh2".into(),
        lower_order_final: bool = true,
        disable_corrector: Vec<usize> = Vec::new(),
        solver_p: Option<serde_json::Value> = None,
        #[serde(flatten)]
        sigmas: SigmaOptions = SigmaOptions::default(),
        #[serde(flatten)]
        flow: FlowOptions = FlowOptions::default(),
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("linspace"),
        final_sigmas_type: String = "zero".into(),
        rescale_betas_zero_snr: bool = false,
        shift_terminal: Option<f64> = None,
    }
}

const CLASS: &str = UniPcConfig::CLASS;

pub struct UniPcMultistep {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: Prediction,
    predict_x0: bool,
    bh1: bool,
    solver_order: usize,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    last_sample: Option<Tensor>,
    this_order: usize,
}

/// Solves `a x = b` (small dense system, partial pivoting; float64, then float32 like the
/// torch.linalg.solve result).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f32> {
    let n = b.len();
    for col in 0..n {
        let p = (col..n)
            .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
            .unwrap_or(col);
        a.swap(col, p);
        b.swap(col, p);
        let pivot = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot[col];
            for (x, p) in a[row].iter_mut().zip(&pivot).skip(col) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0f64; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x.into_iter().map(|v| v as f32).collect()
}

/// The coefficients shared by the predictor and the corrector: `rks`, `h_phi_1`, `B_h` and the
/// `b` vector (float32 scalars as the torch 0-dim tensors).
struct Coeffs {
    rks: Vec<f32>,
    h_phi_1: f32,
    b_h: f32,
    b: Vec<f32>,
}

impl UniPcMultistep {
    pub fn new(cfg: &UniPcConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, cfg.rescale_betas_zero_snr, CLASS)?;
        let prediction = cfg.prediction_type;
        let bh1 = match cfg.solver_type.as_str() {
            "bh1" => true,
            "bh2" | "midpoint" | "heun" | "logrho" => false,
            other => bail!("{CLASS}: `solver_type` = {other} is not implemented"),
        };
        let solver_order = cfg.solver_order;
        if solver_order == 0 {
            bail!("{CLASS}: `solver_order` must be at least 1");
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
        let final_sigma = match cfg.final_sigmas_type.as_str() {
            "zero" => 0.0,
            // The last converted sigma for Karras / exponential sigmas, else the training one.
            "sigma_min" if s.converted => *s.sigmas.last().unwrap_or(&0.0) as f32,
            "sigma_min" => train_sigma_min(&sched),
            other => bail!(
                "{CLASS}: `final_sigmas_type` must be one of 'zero', or 'sigma_min', but got {other}"
            ),
        };
        let predict_x0 = cfg.predict_x0;
        if (bh1 || !predict_x0) && final_sigma == 0.0 {
            // At a zero final sigma h = inf: diffusers computes `alpha_t * B_h * 0` with
            // B_h = -inf (bh1), or `sigma_t * expm1(h)` = 0 * inf (noise prediction): NaN images.
            bail!(
                "{CLASS}: solver_type bh1 or predict_x0 = false with final_sigmas_type zero gives NaN at the last step (as in diffusers); use bh2 with predict_x0, or final_sigmas_type sigma_min"
            );
        }
        let mut sigmas: Vec<f32> = s.sigmas.iter().map(|&v| v as f32).collect();
        sigmas.push(final_sigma);
        let disable_corrector = cfg.disable_corrector.clone();
        Ok(UniPcMultistep {
            timesteps: s.timesteps.iter().map(|&t| t as f64).collect(),
            sigmas,
            prediction,
            predict_x0,
            bh1,
            solver_order,
            lower_order_final: cfg.lower_order_final,
            disable_corrector,
            model_outputs: vec![None; solver_order],
            lower_order_nums: 0,
            last_sample: None,
            this_order: 1,
        })
    }

    fn lambda_at(&self, idx: usize) -> f32 {
        let (a, s) = alpha_sigma(self.sigmas[idx]);
        lambda(a, s)
    }

    /// `rks` from the earlier sigmas `si` (indices), and the `b` vector of `order` entries.
    fn coeffs(&self, h: f32, lambda_s0: f32, earlier: &[usize], order: usize) -> Coeffs {
        let mut rks: Vec<f32> = earlier
            .iter()
            .map(|&si| (self.lambda_at(si) - lambda_s0) / h)
            .collect();
        rks.push(1.0);
        let hh = if self.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial_i = 1u64;
        let b_h = if self.bh1 { hh } else { hh.exp_m1() };
        let mut b = Vec::with_capacity(order);
        for i in 1..=order as u64 {
            b.push(h_phi_k * factorial_i as f32 / b_h);
            factorial_i *= i + 1;
            h_phi_k = h_phi_k / hh - 1.0 / factorial_i as f32;
        }
        Coeffs {
            rks,
            h_phi_1,
            b_h,
            b,
        }
    }

    /// `R[i][j] = rks[j] ** i` for the first `n` rows and columns.
    fn r_matrix(rks: &[f32], n: usize) -> Vec<Vec<f64>> {
        (0..n)
            .map(|i| (0..n).map(|j| rks[j].powi(i as i32) as f64).collect())
            .collect()
    }

    /// `sum_k rhos[k] * D1s[k]` (the einsum).
    fn weighted(rhos: &[f32], d1s: &[Tensor]) -> Result<Tensor> {
        let mut acc = mul_scalar(&d1s[0], rhos[0])?;
        for (r, d) in rhos.iter().zip(d1s).skip(1) {
            acc = (acc + mul_scalar(d, *r)?)?;
        }
        Ok(acc)
    }

    /// UniP: the predictor from the sample at index `i` to `i + 1`.
    fn predictor(&self, i: usize, x: &Tensor, order: usize) -> Result<Tensor> {
        let k = self.solver_order;
        let m0 = self.model_outputs[k - 1].as_ref().expect("m0");
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let earlier: Vec<usize> = (1..order).map(|j| i - j).collect();
        let c = self.coeffs(h, lambda_s0, &earlier, order);
        let mut d1s = Vec::new();
        for j in 1..order {
            let mi = self.model_outputs[k - 1 - j].as_ref().expect("mi");
            d1s.push(super::div_scalar(&(mi - m0)?, c.rks[j - 1])?);
        }
        let rhos_p: Vec<f32> = if d1s.is_empty() {
            vec![]
        } else if order == 2 {
            vec![0.5]
        } else {
            let r = Self::r_matrix(&c.rks, order - 1);
            solve(r, c.b[..order - 1].iter().map(|&v| v as f64).collect())
        };
        let (scale_x, scale_m, outer) = if self.predict_x0 {
            (sigma_t / sigma_s0, alpha_t * c.h_phi_1, alpha_t * c.b_h)
        } else {
            (alpha_t / alpha_s0, sigma_t * c.h_phi_1, sigma_t * c.b_h)
        };
        let x_t_ = (mul_scalar(x, scale_x)? - mul_scalar(m0, scale_m)?)?;
        if d1s.is_empty() {
            // `x_t_ - alpha_t * B_h * 0`
            return Ok(x_t_);
        }
        let pred_res = Self::weighted(&rhos_p, &d1s)?;
        Ok((x_t_ - mul_scalar(&pred_res, outer)?)?)
    }

    /// UniC: corrects the sample at index `i` (the predictor's output) with the model output
    /// there (`model_t`, converted), from `last_sample` at `i - 1`.
    fn corrector(&self, i: usize, model_t: &Tensor, last: &Tensor, order: usize) -> Result<Tensor> {
        let k = self.solver_order;
        let m0 = self.model_outputs[k - 1].as_ref().expect("m0");
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i - 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let earlier: Vec<usize> = (1..order).map(|j| i - (j + 1)).collect();
        let c = self.coeffs(h, lambda_s0, &earlier, order);
        let mut d1s = Vec::new();
        for j in 1..order {
            let mi = self.model_outputs[k - 1 - j].as_ref().expect("mi");
            d1s.push(super::div_scalar(&(mi - m0)?, c.rks[j - 1])?);
        }
        let rhos_c: Vec<f32> = if order == 1 {
            vec![0.5]
        } else {
            let r = Self::r_matrix(&c.rks, order);
            solve(r, c.b.iter().map(|&v| v as f64).collect())
        };
        let (scale_x, scale_m, outer) = if self.predict_x0 {
            (sigma_t / sigma_s0, alpha_t * c.h_phi_1, alpha_t * c.b_h)
        } else {
            (alpha_t / alpha_s0, sigma_t * c.h_phi_1, sigma_t * c.b_h)
        };
        let x_t_ = (mul_scalar(last, scale_x)? - mul_scalar(m0, scale_m)?)?;
        let d1_t = (model_t - m0)?;
        let last_term = mul_scalar(&d1_t, rhos_c[order - 1])?;
        let inner = if d1s.is_empty() {
            // `corr_res = 0`: `0 + rhos_c[-1] * D1_t`
            last_term
        } else {
            (Self::weighted(&rhos_c[..order - 1], &d1s)? + last_term)?
        };
        Ok((x_t_ - mul_scalar(&inner, outer)?)?)
    }
}

impl Scheduler for UniPcMultistep {
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
        let use_corrector =
            i > 0 && !self.disable_corrector.contains(&(i - 1)) && self.last_sample.is_some();
        let converted = if self.predict_x0 {
            x0_prediction(self.prediction, model_output, sample, self.sigmas[i])?
        } else {
            eps_prediction(self.prediction, model_output, sample, self.sigmas[i])?
        };
        let sample = if use_corrector {
            let last = self.last_sample.clone().expect("last sample");
            self.corrector(i, &converted, &last, self.this_order)?
        } else {
            sample.clone()
        };
        self.model_outputs.rotate_left(1);
        let k = self.solver_order;
        self.model_outputs[k - 1] = Some(converted);
        let this_order = if self.lower_order_final {
            k.min(self.timesteps.len() - i)
        } else {
            k
        };
        self.this_order = this_order.min(self.lower_order_nums + 1);
        self.last_sample = Some(sample.clone());
        let prev = self.predictor(i, &sample, self.this_order)?;
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
