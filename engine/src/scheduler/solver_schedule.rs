//! What diffusers' exponential-integrator solvers share (DPMSolverMultistep,
//! DPMSolverSinglestep, UniPCMultistep, DEISMultistep): integer timesteps placed on
//! `steps + 1` points with the last dropped, sigmas at them (or Karras / exponential sigmas with
//! timesteps mapped back), and the VP coefficients `alpha_t = 1 / sqrt(sigma² + 1)`,
//! `sigma_t = sigma * alpha_t`, `lambda = log(alpha_t) - log(sigma_t)` computed per step in
//! float32 as the torch scalars are.

use anyhow::Result;
use candle_core::Tensor;

use super::class_config::SigmaOptions;
use super::schedule::{Spacing, TrainSchedule, np_arange, np_linspace, np_round};
use super::sigma_schedule::{
    SigmaSpacing, beta_sigmas, exponential_sigmas, interp_sigmas, karras_sigmas, log_sigmas,
    sigma_bounds, sigma_to_t,
};
use super::{Prediction, div_scalar, mul_scalar};

/// `alpha_t, sigma_t` of a sigma (`_sigma_to_alpha_sigma_t`, float32).
pub fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// `log(alpha_t) - log(sigma_t)` (float32).
pub fn lambda(alpha: f32, sigma_t: f32) -> f32 {
    alpha.ln() - sigma_t.ln()
}

/// One point of a solver's path: `alpha_t`, `sigma_t` and the log-SNR `lambda_t` of a sigma.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub alpha: f32,
    pub sigma: f32,
    pub lambda: f32,
}

impl Point {
    pub fn at(sigma: f32) -> Self {
        let (alpha, sigma) = alpha_sigma(sigma);
        Point {
            alpha,
            sigma,
            lambda: lambda(alpha, sigma),
        }
    }

    /// The points a step from index `i` uses: `t` (`sigmas[i + 1]`), then `s0` (`sigmas[i]`),
    /// `s1` (`sigmas[i - 1]`), ... back to `N - 1` points before `t`.
    pub fn around<const N: usize>(sigmas: &[f32], i: usize) -> [Point; N] {
        std::array::from_fn(|k| Point::at(sigmas[i + 1 - k]))
    }
}

/// `num_train_timesteps - searchsorted(flip(lambda_t), lambda_min_clipped)`: the top of the
/// timestep range once the steps whose log-SNR is below `lambda_min_clipped` are cut.
pub fn clipped_last_timestep(sched: &TrainSchedule, lambda_min_clipped: Option<f64>) -> usize {
    let n = sched.num_train_timesteps;
    let Some(clip) = lambda_min_clipped else {
        return n;
    };
    let clip = clip as f32;
    let lambdas: Vec<f32> = sched
        .alphas_cumprod
        .iter()
        .map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
        .collect();
    // flip(lambda_t) ascends; searchsorted (left) counts the entries below `clip`.
    let idx = lambdas.iter().rev().take_while(|&&l| l < clip).count();
    n - idx
}

/// The integer timesteps of the solvers: `linspace(0, last - 1, steps + 1)` rounded, reversed,
/// last dropped; "leading": multiples of `last // (steps + 1)` plus `steps_offset`;
/// "trailing": `arange(last, 0, -n_train / steps)` rounded, minus one.
pub fn solver_timesteps(
    spacing: Spacing,
    last: usize,
    n_train: usize,
    steps: usize,
    offset: usize,
) -> Vec<i64> {
    match spacing {
        Spacing::Linspace => {
            let mut v: Vec<i64> = np_linspace(0.0, (last - 1) as f64, steps + 1)
                .into_iter()
                .map(|t| np_round(t) as i64)
                .collect();
            v.reverse();
            v.pop();
            v
        }
        Spacing::Leading => {
            let ratio = (last / (steps + 1)) as i64;
            (1..=steps as i64)
                .rev()
                .map(|i| i * ratio + offset as i64)
                .collect()
        }
        Spacing::Trailing => np_arange(last as f64, 0.0, -(n_train as f64 / steps as f64))
            .into_iter()
            .map(|t| np_round(t) as i64 - 1)
            .collect(),
    }
}

/// How a class turns Karras / exponential sigmas back into timesteps.
#[derive(Clone, Copy)]
pub enum KarrasRounding {
    /// `round()` (then `int64`).
    Round,
    /// Truncation only (DPMSolverMultistep with `beta_schedule` `squaredcos_cap_v2`).
    Truncate,
}

/// Timesteps and sigmas (one per timestep, float64, before the final sigma) of a solver.
pub struct SolverSigmas {
    pub timesteps: Vec<i64>,
    pub sigmas: Vec<f64>,
    /// Whether the sigmas were converted (Karras, exponential, lu lambdas) rather than
    /// interpolated at the timesteps.
    pub converted: bool,
}

/// The sigmas at `timesteps`, or the config's Karras / exponential / lu-lambda sigmas (bounds:
/// the training sigmas' ends, or the config's `sigma_min` / `sigma_max`) with timesteps from
/// `_sigma_to_t`.
pub fn solver_sigmas(
    cfg: &SigmaOptions,
    use_lu_lambdas: bool,
    sched: &TrainSchedule,
    class: &str,
    timesteps: Vec<i64>,
    steps: usize,
    rounding: KarrasRounding,
) -> Result<SolverSigmas> {
    let train = sched.sigmas();
    let logs = log_sigmas(&train);
    let conversion = SigmaSpacing::from_options(cfg, class)?;
    let lu = use_lu_lambdas;
    // np.flip(sigmas): the largest training sigma first.
    let (first, last) = (train[train.len() - 1] as f64, train[0] as f64);
    let round = match rounding {
        KarrasRounding::Round => true,
        KarrasRounding::Truncate => false,
    };
    let to_t = |sigmas: &[f64], round: bool| -> Vec<i64> {
        sigmas
            .iter()
            .map(|&s| {
                let t = sigma_to_t(s, &logs);
                // `.round()` where diffusers rounds, then `.to(torch.int64)` (truncation).
                (if round { t.round_ties_even() } else { t }) as i64
            })
            .collect()
    };
    Ok(match conversion {
        SigmaSpacing::Karras => {
            let (lo, hi) = sigma_bounds(cfg, first, last);
            let sigmas = karras_sigmas(lo, hi, steps);
            SolverSigmas {
                timesteps: to_t(&sigmas, round),
                sigmas,
                converted: true,
            }
        }
        SigmaSpacing::Exponential | SigmaSpacing::Beta => {
            let (lo, hi) = sigma_bounds(cfg, first, last);
            let sigmas = if conversion == SigmaSpacing::Beta {
                beta_sigmas(lo, hi, steps)
            } else {
                exponential_sigmas(lo, hi, steps)
            };
            SolverSigmas {
                timesteps: to_t(&sigmas, false),
                sigmas,
                converted: true,
            }
        }
        SigmaSpacing::Interpolated if lu => {
            // `_convert_to_lu` on flip(log_sigmas) (rho = 1: a straight line in log sigma).
            let (lmin, lmax) = (logs[0] as f64, logs[logs.len() - 1] as f64);
            let sigmas: Vec<f64> = np_linspace(0.0, 1.0, steps)
                .into_iter()
                .map(|r| (lmax + r * (lmin - lmax)).exp())
                .collect();
            SolverSigmas {
                timesteps: to_t(&sigmas, round),
                sigmas,
                converted: true,
            }
        }
        SigmaSpacing::Interpolated => {
            let ts: Vec<f64> = timesteps.iter().map(|&t| t as f64).collect();
            SolverSigmas {
                sigmas: interp_sigmas(&ts, &train),
                timesteps,
                converted: false,
            }
        }
    })
}

/// `((1 - alphas_cumprod[0]) / alphas_cumprod[0]) ** 0.5` (float32): the smallest training
/// sigma, the final sigma of `final_sigmas_type = "sigma_min"`.
pub fn train_sigma_min(sched: &TrainSchedule) -> f32 {
    let a = sched.alphas_cumprod[0];
    ((1.0 - a) / a).sqrt()
}

/// The data prediction (x0) of a VP model output at `sigma`.
pub fn x0_prediction(
    prediction: Prediction,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    let (alpha_t, sigma_t) = alpha_sigma(sigma);
    Ok(match prediction {
        Prediction::Epsilon => {
            div_scalar(&(sample - mul_scalar(model_output, sigma_t)?)?, alpha_t)?
        }
        Prediction::Sample => model_output.clone(),
        Prediction::VPrediction => {
            (mul_scalar(sample, alpha_t)? - mul_scalar(model_output, sigma_t)?)?
        }
    })
}

/// The noise prediction (epsilon) of a VP model output at `sigma`.
pub fn eps_prediction(
    prediction: Prediction,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    let (alpha_t, sigma_t) = alpha_sigma(sigma);
    Ok(match prediction {
        Prediction::Epsilon => model_output.clone(),
        Prediction::Sample => div_scalar(&(sample - mul_scalar(model_output, alpha_t)?)?, sigma_t)?,
        Prediction::VPrediction => {
            (mul_scalar(model_output, alpha_t)? + mul_scalar(sample, sigma_t)?)?
        }
    })
}

/// img2img noising of the solvers: `alpha_t * original + sigma_t * noise` at `sigma`.
pub fn vp_add_noise(original: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    let (alpha_t, sigma_t) = alpha_sigma(sigma);
    Ok((mul_scalar(original, alpha_t)? + mul_scalar(noise, sigma_t)?)?)
}
