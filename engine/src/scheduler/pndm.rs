//! diffusers' `PNDMScheduler`: pseudo numerical methods ("PLMS" with `skip_prk_steps`, the
//! Runge-Kutta warm-up otherwise). Like diffusers, its state is a step counter, independent of
//! which timestep index the pipeline starts at (img2img), and its timesteps list has
//! `steps + 1` entries with `skip_prk_steps` (the second-order start repeats one) and
//! `steps + 9` with the Runge-Kutta steps.

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::class_config::{Betas, ClassConfig, TimestepSpacing, class_config};
use super::schedule::{Spacing, TrainSchedule, alpha_at, np_arange, np_linspace, np_round};
use super::{Prediction, Scheduler, div_scalar, mul_scalar};
use crate::noise::NoiseSource;

class_config! {
    /// `PNDMScheduler.__init__`'s parameters and defaults (diffusers 0.42).
    PndmConfig = "PNDMScheduler" {
        #[serde(flatten)]
        betas: Betas = Betas::linear(),
        skip_prk_steps: bool = false,
        set_alpha_to_one: bool = false,
        prediction_type: Prediction = Prediction::Epsilon,
        #[serde(flatten)]
        spacing: TimestepSpacing = TimestepSpacing::new("leading"),
    }
}

const CLASS: &str = PndmConfig::CLASS;

pub struct Pndm {
    timesteps: Vec<f64>,
    ts: Vec<i64>,
    prk_timesteps: Vec<i64>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    v_prediction: bool,
    skip_prk_steps: bool,
    /// `num_train_timesteps // num_inference_steps`.
    ratio: i64,
    counter: usize,
    ets: Vec<Tensor>,
    cur_model_output: Option<Tensor>,
    cur_sample: Option<Tensor>,
}

impl Pndm {
    pub fn new(cfg: &PndmConfig, steps: usize) -> Result<Self> {
        let sched = TrainSchedule::new(&cfg.betas, false, CLASS)?;
        let n = sched.num_train_timesteps;
        let v_prediction = match cfg.prediction_type {
            Prediction::Epsilon => false,
            Prediction::VPrediction => true,
            Prediction::Sample => bail!(
                "{CLASS}: prediction_type given as sample must be one of `epsilon` or `v_prediction`"
            ),
        };
        let spacing = Spacing::parse(&cfg.spacing.timestep_spacing, CLASS)?;
        let offset = cfg.spacing.steps_offset as i64;
        // `_timesteps`, ascending.
        let base: Vec<i64> = match spacing {
            Spacing::Linspace => np_linspace(0.0, (n - 1) as f64, steps)
                .into_iter()
                .map(|t| np_round(t) as i64)
                .collect(),
            Spacing::Leading => {
                let ratio = (n / steps) as i64;
                (0..steps as i64).map(|i| i * ratio + offset).collect()
            }
            Spacing::Trailing => {
                let mut v: Vec<i64> = np_arange(n as f64, 0.0, -(n as f64 / steps as f64))
                    .into_iter()
                    .map(|t| np_round(t) as i64 - 1)
                    .collect();
                v.reverse();
                v
            }
        };
        let skip_prk_steps = cfg.skip_prk_steps;
        let ratio = (n / steps) as i64;
        let len = base.len();
        let (prk, plms): (Vec<i64>, Vec<i64>) = if skip_prk_steps {
            // concat(_ts[:-1], _ts[-2:-1], _ts[-1:])[::-1]
            let mut v = base[..len - 1].to_vec();
            if len >= 2 {
                v.push(base[len - 2]);
            }
            v.push(base[len - 1]);
            v.reverse();
            (vec![], v)
        } else {
            if len < 4 {
                bail!(
                    "{CLASS} with Runge-Kutta warm-up steps (skip_prk_steps = false) needs at least 4 steps"
                );
            }
            // _ts[-4:].repeat(2) + tile([0, ratio // 2], 4), [:-1].repeat(2)[1:-1][::-1]
            let half = ratio / 2;
            let rep: Vec<i64> = base[len - 4..]
                .iter()
                .flat_map(|&t| [t, t + half])
                .collect();
            let mut prk: Vec<i64> = rep[..rep.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            prk = prk[1..prk.len() - 1].to_vec();
            prk.reverse();
            let mut plms = base[..len - 3].to_vec();
            plms.reverse();
            (prk, plms)
        };
        let ts: Vec<i64> = prk.iter().chain(plms.iter()).copied().collect();
        for &t in &ts {
            alpha_at(&sched.alphas_cumprod, t, CLASS)?;
        }
        let set_alpha_to_one = cfg.set_alpha_to_one;
        let final_alpha_cumprod = if set_alpha_to_one {
            1.0
        } else {
            sched.alphas_cumprod[0]
        };
        Ok(Pndm {
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            ts,
            prk_timesteps: prk,
            alphas_cumprod: sched.alphas_cumprod,
            final_alpha_cumprod,
            v_prediction,
            skip_prk_steps,
            ratio,
            counter: 0,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
        })
    }

    /// `_get_prev_sample`: the DDIM-like transfer from `timestep` to `prev_timestep`.
    fn prev_sample(
        &self,
        sample: &Tensor,
        timestep: i64,
        prev_timestep: i64,
        model_output: &Tensor,
    ) -> Result<Tensor> {
        let a_t = alpha_at(&self.alphas_cumprod, timestep, CLASS)?;
        let a_prev = if prev_timestep >= 0 {
            alpha_at(&self.alphas_cumprod, prev_timestep, CLASS)?
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let model_output = if self.v_prediction {
            (mul_scalar(model_output, a_t.sqrt())? + mul_scalar(sample, b_t.sqrt())?)?
        } else {
            model_output.clone()
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let update = div_scalar(&mul_scalar(&model_output, a_prev - a_t)?, denom)?;
        Ok((mul_scalar(sample, sample_coeff)? - update)?)
    }

    fn step_prk(
        &mut self,
        model_output: &Tensor,
        timestep: i64,
        sample: &Tensor,
    ) -> Result<Tensor> {
        let diff_to_prev = if self.counter % 2 == 1 {
            0
        } else {
            self.ratio / 2
        };
        let prev_timestep = timestep - diff_to_prev;
        let timestep = self.prk_timesteps[self.counter / 4 * 4];
        let add = |acc: &Option<Tensor>, x: Tensor| -> Result<Tensor> {
            Ok(match acc {
                None => x,
                Some(a) => (a + x)?,
            })
        };
        let model_output = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(add(
                    &self.cur_model_output,
                    mul_scalar(model_output, (1.0f64 / 6.0) as f32)?,
                )?);
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            1 | 2 => {
                self.cur_model_output = Some(add(
                    &self.cur_model_output,
                    mul_scalar(model_output, (1.0f64 / 3.0) as f32)?,
                )?);
                model_output.clone()
            }
            _ => {
                let out = add(
                    &self.cur_model_output,
                    mul_scalar(model_output, (1.0f64 / 6.0) as f32)?,
                )?;
                self.cur_model_output = None;
                out
            }
        };
        let cur_sample = self.cur_sample.clone().unwrap_or_else(|| sample.clone());
        let prev = self.prev_sample(&cur_sample, timestep, prev_timestep, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }

    fn step_plms(
        &mut self,
        model_output: &Tensor,
        timestep: i64,
        sample: &Tensor,
    ) -> Result<Tensor> {
        if !self.skip_prk_steps && self.ets.len() < 3 {
            bail!(
                "{CLASS} can only be run AFTER scheduler has been run in 'prk' mode for at least 12 iterations"
            );
        }
        let mut timestep = timestep;
        let mut prev_timestep = timestep - self.ratio;
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            prev_timestep = timestep;
            timestep += self.ratio;
        }
        let e = &self.ets;
        let k = e.len();
        let mut sample = sample.clone();
        let model_output = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output.clone()
        } else if k == 1 && self.counter == 1 {
            let m = div_scalar(&(model_output + &e[0])?, 2.0)?;
            sample = self.cur_sample.take().expect("PLMS first sample");
            m
        } else if k == 2 {
            div_scalar(&(mul_scalar(&e[1], 3.0)? - &e[0])?, 2.0)?
        } else if k == 3 {
            let s =
                ((mul_scalar(&e[2], 23.0)? - mul_scalar(&e[1], 16.0)?)? + mul_scalar(&e[0], 5.0)?)?;
            div_scalar(&s, 12.0)?
        } else {
            let s = (((mul_scalar(&e[k - 1], 55.0)? - mul_scalar(&e[k - 2], 59.0)?)?
                + mul_scalar(&e[k - 3], 37.0)?)?
                - mul_scalar(&e[k - 4], 9.0)?)?;
            mul_scalar(&s, (1.0f64 / 24.0) as f32)?
        };
        let prev = self.prev_sample(&sample, timestep, prev_timestep, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }
}

impl Scheduler for Pndm {
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
        let t = self.ts[i];
        if self.counter < self.prk_timesteps.len() && !self.skip_prk_steps {
            self.step_prk(model_output, t, sample)
        } else {
            self.step_plms(model_output, t, sample)
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        let a = self.alphas_cumprod[self.ts[i] as usize];
        Ok((mul_scalar(original, a.sqrt())? + mul_scalar(noise, (1.0 - a).sqrt())?)?)
    }

    fn alphas_cumprod(&self) -> Option<&[f32]> {
        Some(&self.alphas_cumprod)
    }
}
