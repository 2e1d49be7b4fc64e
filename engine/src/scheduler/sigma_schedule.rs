//! What diffusers' sigma-based (k-diffusion style) schedulers share: the inference timesteps
//! with their sigmas, the initial noise scale, the UNet input scaling, img2img noising, the x0
//! prediction and the first-order (Euler) update. Each scheduler only builds its sigmas and
//! writes its `step`.

use anyhow::Result;
use candle_core::Tensor;

use anyhow::bail;

use super::class_config::{SigmaOptions, TimestepSpacing};
use super::schedule::{Spacing, TrainSchedule, euler_timesteps, np_interp_index, np_linspace};
use super::{Prediction, Scheduler, div_scalar, mul_scalar};
use crate::noise::NoiseSource;

/// The schedulers that step on a [`SigmaSchedule`] (Euler, Euler a, Heun, LMS, KDPM2,
/// KDPM2 a): each gives its class, its schedule and its step; the rest of [`Scheduler`]
/// is the schedule's, written once here.
pub(super) trait SigmaScheduler: Send {
    const CLASS: &'static str;

    fn schedule(&self) -> &SigmaSchedule;

    /// [`Scheduler::step`].
    fn sigma_step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut NoiseSource,
    ) -> Result<Tensor>;

    /// [`Scheduler::scale_model_input`]: the schedule's, unless the scheduler
    /// interpolates sigmas between its steps (KDPM2).
    fn sigma_scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        self.schedule().scale_model_input(sample, i)
    }
}

impl<T: SigmaScheduler> Scheduler for T {
    fn class_name(&self) -> &'static str {
        T::CLASS
    }

    fn timesteps(&self) -> &[f64] {
        self.schedule().timesteps()
    }

    fn init_noise_sigma(&self) -> f64 {
        self.schedule().init_noise_sigma()
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        self.sigma_scale_model_input(sample, i)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        self.sigma_step(model_output, i, sample, noise)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        self.schedule().add_noise(original, noise, i)
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(self.schedule().sigmas())
    }
}

/// Timesteps, sigmas and `init_noise_sigma` of one sigma-based scheduler instance.
pub struct SigmaSchedule {
    timesteps: Vec<f64>,
    /// One sigma per timestep, then the final sigma (the step from the last timestep goes to it).
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
}

impl SigmaSchedule {
    /// `sigmas` has one entry per timestep plus the final one. `init_noise_sigma` is computed
    /// as diffusers' property does: the largest sigma, or `sqrt(max² + 1)` for "leading"
    /// spacing.
    pub fn new(timesteps: Vec<f64>, sigmas: Vec<f32>, spacing: Spacing) -> Self {
        let init_noise_sigma = init_noise_sigma(&sigmas, spacing);
        SigmaSchedule {
            timesteps,
            sigmas,
            init_noise_sigma,
        }
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma as f64
    }

    /// `sample / sqrt(sigma² + 1)` at timestep index `i`.
    pub fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        let s = self.sigmas[i];
        div_scalar(sample, (s * s + 1.0).sqrt())
    }

    /// img2img: `original + noise * sigma` at timestep index `i`.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        Ok((original + mul_scalar(noise, self.sigmas[i])?)?)
    }
}

/// diffusers' `init_noise_sigma` property of the sigma schedulers: the largest sigma, or
/// `sqrt(max² + 1)` for "leading" spacing.
pub fn init_noise_sigma(sigmas: &[f32], spacing: Spacing) -> f32 {
    let max_sigma = sigmas.iter().cloned().fold(f32::MIN, f32::max);
    match spacing {
        Spacing::Linspace | Spacing::Trailing => max_sigma,
        Spacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
    }
}

/// The config's `timestep_spacing` (default "linspace") and the inference timesteps it places
/// (with `steps_offset`), highest first.
pub fn spaced_timesteps(
    cfg: &TimestepSpacing,
    sched: &TrainSchedule,
    steps: usize,
    class: &str,
) -> Result<(Spacing, Vec<f64>)> {
    let spacing = Spacing::parse(&cfg.timestep_spacing, class)?;
    let offset = cfg.steps_offset;
    let timesteps = euler_timesteps(spacing, sched.num_train_timesteps, steps, offset);
    Ok((spacing, timesteps))
}

/// The training sigmas interpolated at (fractional) `timesteps`:
/// `np.interp(timesteps, np.arange(len(sigmas)), sigmas)`, in float64 like numpy.
pub fn interp_sigmas(timesteps: &[f64], train_sigmas: &[f32]) -> Vec<f64> {
    let base: Vec<f64> = train_sigmas.iter().map(|&s| s as f64).collect();
    timesteps
        .iter()
        .map(|&t| np_interp_index(t, &base))
        .collect()
}

/// The denoised sample (x0) the model predicts at noise level `sigma`, per prediction type.
pub fn pred_original(
    prediction: Prediction,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    Ok(match prediction {
        Prediction::Epsilon => (sample - mul_scalar(model_output, sigma)?)?,
        Prediction::VPrediction => {
            let denom = sigma * sigma + 1.0;
            let c_out = -sigma / denom.sqrt();
            (mul_scalar(model_output, c_out)? + div_scalar(sample, denom)?)?
        }
        Prediction::Sample => model_output.clone(),
    })
}

/// One Euler step of the probability-flow ODE from `sigma` to `sigma_to`:
/// `sample + (sample - pred_original) / sigma * (sigma_to - sigma)`.
pub fn euler_update(
    sample: &Tensor,
    pred_original: &Tensor,
    sigma: f32,
    sigma_to: f32,
) -> Result<Tensor> {
    let derivative = div_scalar(&(sample - pred_original)?, sigma)?;
    Ok((sample + mul_scalar(&derivative, sigma_to - sigma)?)?)
}

/// `_sigma_to_t`: the fractional training timestep of a sigma (log-sigma interpolation);
/// `log_sigmas` are the training schedule's log sigmas (float32, as numpy's `np.log` of them).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    if sigma.is_nan() {
        return f64::NAN;
    }
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // np.cumsum(dists >= 0).argmax(): the first index where the running count is maximal,
    // i.e. the last index with log_sigma >= log_sigmas[i] (0 if none).
    let mut running = 0usize;
    let mut best = 0usize;
    let mut best_val = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls as f64 >= 0.0 {
            running += 1;
        }
        if running > best_val {
            best_val = running;
            best = i;
        }
    }
    let low_idx = best.min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = (low as f64 - log_sigma) / ((low - high) as f64);
    let w = w.clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// `log` of the training sigmas, float32.
pub fn log_sigmas(train_sigmas: &[f32]) -> Vec<f32> {
    train_sigmas.iter().map(|s| s.ln()).collect()
}

/// `_convert_to_karras` (rho = 7), float64 like numpy.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// `_convert_to_exponential`: `exp(linspace(log(max), log(min), steps))`.
pub fn exponential_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), steps)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// `ln B(0.6, 0.6)` (scipy.special.betaln).
const LN_BETA_06_06: f64 = 0.881_841_806_141_785_9;

/// The regularized incomplete beta function `I_x(a, a)` for `a = 0.6` (continued fraction,
/// modified Lentz; ~1e-15).
fn beta_cdf_06(x: f64) -> f64 {
    const A: f64 = 0.6;
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let cf = |a: f64, b: f64, x: f64| -> f64 {
        let tiny = 1e-300;
        let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
        let mut c = 1.0;
        let mut d = 1.0 - qab * x / qap;
        if d.abs() < tiny {
            d = tiny;
        }
        d = 1.0 / d;
        let mut h = d;
        for m in 1..500 {
            let m = m as f64;
            let m2 = 2.0 * m;
            let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
            d = 1.0 + aa * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + aa / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            h *= d * c;
            let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
            d = 1.0 + aa * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + aa / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        h
    };
    let front = (A * x.ln() + A * (1.0 - x).ln() - LN_BETA_06_06).exp();
    if x < (A + 1.0) / (2.0 * A + 2.0) {
        front * cf(A, A, x) / A
    } else {
        1.0 - front * cf(A, A, 1.0 - x) / A
    }
}

/// `scipy.stats.beta.ppf(q, 0.6, 0.6)` (bisection on the CDF to float64 resolution).
fn beta_ppf_06(q: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0f64, 1f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf_06(mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// `_convert_to_beta` (alpha = beta = 0.6): `sigma_min + ppf(1 - r) * (sigma_max - sigma_min)`
/// for `r` in `linspace(0, 1, steps)`.
pub fn beta_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    np_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| sigma_min + beta_ppf_06(1.0 - r) * (sigma_max - sigma_min))
        .collect()
}

/// Which of diffusers' sigma spacings a config selects (`use_karras_sigmas`,
/// `use_exponential_sigmas`, `use_beta_sigmas`; at most one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigmaSpacing {
    /// The training sigmas at the spaced timesteps.
    Interpolated,
    Karras,
    Exponential,
    Beta,
}

impl SigmaSpacing {
    pub fn from_options(cfg: &SigmaOptions, class: &str) -> Result<Self> {
        let (karras, exponential, beta) = (
            cfg.use_karras_sigmas,
            cfg.use_exponential_sigmas,
            cfg.use_beta_sigmas,
        );
        if [karras, exponential, beta].iter().filter(|&&b| b).count() > 1 {
            bail!(
                "{class}: only one of `use_beta_sigmas`, `use_exponential_sigmas`, `use_karras_sigmas` can be used"
            );
        }
        Ok(if beta {
            SigmaSpacing::Beta
        } else if karras {
            SigmaSpacing::Karras
        } else if exponential {
            SigmaSpacing::Exponential
        } else {
            SigmaSpacing::Interpolated
        })
    }
}

/// The `sigma_min` / `sigma_max` bounds of the Karras / exponential conversions: the config's
/// when it has them (`hasattr(self.config, "sigma_min")`), else the given sigmas' ends.
pub fn sigma_bounds(cfg: &SigmaOptions, first: f64, last: f64) -> (f64, f64) {
    (
        cfg.sigma_min.unwrap_or(last),
        cfg.sigma_max.unwrap_or(first),
    )
}

/// What the k-diffusion style discrete schedulers (LMS, Heun, KDPM2, KDPM2 ancestral) share in
/// `set_timesteps`: the spaced float32 timesteps, the training sigmas interpolated at them, and
/// the Karras / exponential conversions with timesteps mapped back through `_sigma_to_t`.
pub struct KSchedule {
    pub spacing: Spacing,
    /// float32 values (or float64 after a conversion, `round`ed when asked).
    pub timesteps: Vec<f64>,
    /// One per timestep (float64), without the final sigma.
    pub sigmas: Vec<f64>,
    pub log_sigmas: Vec<f32>,
}

/// Options of [`k_schedule`] that differ between the classes.
pub struct KOptions {
    /// Karras bounds from the config (`hasattr(self.config, "sigma_min")`); LMS ignores them.
    pub karras_config_bounds: bool,
    /// Round the timesteps of Karras sigmas (KDPM2 and KDPM2 ancestral).
    pub round_karras_timesteps: bool,
}

pub fn k_schedule(
    spacing: &TimestepSpacing,
    cfg: &SigmaOptions,
    sched: &TrainSchedule,
    steps: usize,
    class: &str,
    opts: KOptions,
) -> Result<KSchedule> {
    let (spacing, timesteps) = spaced_timesteps(spacing, sched, steps, class)?;
    let train = sched.sigmas();
    let log_sigmas = log_sigmas(&train);
    let mut sigmas = interp_sigmas(&timesteps, &train);
    let mut timesteps = timesteps;
    let conversion = SigmaSpacing::from_options(cfg, class)?;
    let (first, last) = (sigmas[0], *sigmas.last().unwrap_or(&0.0));
    match conversion {
        SigmaSpacing::Interpolated => {}
        SigmaSpacing::Karras => {
            let (lo, hi) = if opts.karras_config_bounds {
                sigma_bounds(cfg, first, last)
            } else {
                (last, first)
            };
            sigmas = karras_sigmas(lo, hi, steps);
            timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &log_sigmas);
                    if opts.round_karras_timesteps {
                        t.round_ties_even()
                    } else {
                        t
                    }
                })
                .collect();
        }
        SigmaSpacing::Exponential | SigmaSpacing::Beta => {
            let (lo, hi) = sigma_bounds(cfg, first, last);
            sigmas = if conversion == SigmaSpacing::Beta {
                beta_sigmas(lo, hi, steps)
            } else {
                exponential_sigmas(lo, hi, steps)
            };
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
        }
    }
    Ok(KSchedule {
        spacing,
        timesteps,
        sigmas,
        log_sigmas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_ppf_matches_scipy() {
        // scipy.stats.beta.ppf(q, 0.6, 0.6)
        for (q, want) in [
            (1e-9, 1.85588246249141e-15),
            (0.01, 0.0008612388215429059),
            (0.2, 0.12292175045833292),
            (0.5, 0.5000000000000001),
            (0.77, 0.8461624142323502),
            (0.999, 0.9999814412614826),
        ] {
            let got = beta_ppf_06(q);
            assert!(
                (got - want).abs() <= 1e-13 + 1e-10 * want,
                "{q}: {got} vs {want}"
            );
        }
    }
}
