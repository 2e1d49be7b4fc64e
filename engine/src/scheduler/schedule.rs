//! The training noise schedule shared by all schedulers (betas, cumulative alphas) and the
//! numpy helpers the diffusers schedulers use to place inference timesteps, in the same
//! float precision diffusers gets from torch / numpy (float32 tensors, float64 numpy).

use anyhow::{Result, bail};

use super::class_config::Betas;

/// `betas` and `alphas_cumprod` as float32, like the torch tensors of a diffusers scheduler.
#[derive(Clone, Debug)]
pub struct TrainSchedule {
    pub num_train_timesteps: usize,
    pub betas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
}

/// `torch.linspace(start, end, n, dtype=torch.float32)`: ATen computes each value with one
/// rounding, `fma(step, i, start)` below the middle and `fma(-step, n - 1 - i, end)` above
/// (verified bit for bit against torch 2.15).
pub fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start as f32];
    }
    let (s, e) = (start as f32, end as f32);
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((n - i - 1) as f32, e)
            }
        })
        .collect()
}

/// The `alpha_bar` transforms of diffusers' `betas_for_alpha_bar`.
#[derive(Clone, Copy)]
enum AlphaBar {
    Cosine,
    Exp,
    Laplace,
}

/// `betas_for_alpha_bar(n, alpha_transform_type=...)` (Python floats, then float32).
fn betas_for_alpha_bar(n: usize, max_beta: f64, kind: AlphaBar) -> Vec<f32> {
    let alpha_bar = |t: f64| match kind {
        AlphaBar::Cosine => ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2),
        AlphaBar::Exp => (t * -12.0).exp(),
        AlphaBar::Laplace => {
            let lmb = -0.5 * (0.5 - t).signum() * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
            let snr = lmb.exp();
            (snr / (1.0 + snr)).sqrt()
        }
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// torch.cumprod on CPU accumulates in double and stores float.
fn cumprod(alphas: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    alphas
        .iter()
        .map(|&a| {
            acc *= a as f64;
            acc as f32
        })
        .collect()
}

/// `rescale_zero_terminal_snr` (float32 tensor arithmetic).
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let cp = cumprod(&alphas);
    let mut s: Vec<f32> = cp.iter().map(|a| a.sqrt()).collect();
    let s0 = s[0];
    let st = *s.last().unwrap_or(&0.0);
    for v in s.iter_mut() {
        *v -= st;
    }
    let factor = s0 / (s0 - st);
    for v in s.iter_mut() {
        *v *= factor;
    }
    let bar: Vec<f32> = s.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

impl TrainSchedule {
    /// Builds the schedule from a class's [`Betas`] and `rescale_betas_zero_snr` as the
    /// diffusers class `class` does (which `beta_schedule`s it knows, whether a zero-SNR schedule gets a
    /// finite last sigma).
    pub fn new(betas_cfg: &Betas, rescale: bool, class: &str) -> Result<Self> {
        let n = betas_cfg.num_train_timesteps;
        if n < 2 {
            bail!("scheduler config `num_train_timesteps` must be at least 2");
        }
        let (beta_start, beta_end) = (betas_cfg.beta_start, betas_cfg.beta_end);
        let schedule = &betas_cfg.beta_schedule;
        let mut betas = if let Some(tb) = &betas_cfg.trained_betas {
            if tb.len() != n {
                bail!("scheduler config `trained_betas` must have num_train_timesteps entries");
            }
            tb.iter().map(|&b| b as f32).collect()
        } else {
            match schedule.as_str() {
                "linear" => torch_linspace_f32(beta_start, beta_end, n),
                "scaled_linear" => torch_linspace_f32(beta_start.sqrt(), beta_end.sqrt(), n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
                "squaredcos_cap_v2" => betas_for_alpha_bar(n, 0.999, AlphaBar::Cosine),
                "exp" if class == "HeunDiscreteScheduler" => {
                    betas_for_alpha_bar(n, 0.999, AlphaBar::Exp)
                }
                "laplace" if class == "DDPMScheduler" => {
                    betas_for_alpha_bar(n, 0.999, AlphaBar::Laplace)
                }
                "sigmoid" if class == "DDPMScheduler" => {
                    // torch.sigmoid(torch.linspace(-6, 6, n)) * (end - start) + start, float32.
                    let (scale, shift) = ((beta_end - beta_start) as f32, beta_start as f32);
                    torch_linspace_f32(-6.0, 6.0, n)
                        .into_iter()
                        .map(|x| (1.0 / (1.0 + (-x).exp())) * scale + shift)
                        .collect()
                }
                other => bail!(
                    "scheduler config `beta_schedule` = {other} is not implemented for {class} (linear, scaled_linear, squaredcos_cap_v2{})",
                    match class {
                        "HeunDiscreteScheduler" => ", exp",
                        "DDPMScheduler" => ", sigmoid, laplace",
                        _ => "",
                    }
                ),
            }
        };
        if rescale {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = cumprod(&alphas);
        if rescale
            && matches!(
                class,
                "EulerDiscreteScheduler"
                    | "EulerAncestralDiscreteScheduler"
                    | "DPMSolverMultistepScheduler"
                    | "UniPCMultistepScheduler"
            )
        {
            // These classes avoid an infinite sigma at the last training step.
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        Ok(TrainSchedule {
            num_train_timesteps: n,
            betas,
            alphas_cumprod,
        })
    }

    /// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in float32.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }
}

/// numpy `round` (half to even).
pub fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.linspace(start, stop, num)` in float64.
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return vec![];
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// `np.arange(start, stop, step)` for float arguments.
pub fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return vec![];
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// `np.interp(x, arange(len(fp)), fp)` for one point.
pub fn np_interp_index(x: f64, fp: &[f64]) -> f64 {
    let n = fp.len();
    if x <= 0.0 {
        return fp[0];
    }
    if x >= (n - 1) as f64 {
        return fp[n - 1];
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / 1.0;
    slope * (x - j as f64) + fp[j]
}

/// The `timestep_spacing` of a diffusers scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

impl Spacing {
    pub fn parse(s: &str, class: &str) -> Result<Self> {
        match s {
            "linspace" => Ok(Spacing::Linspace),
            "leading" => Ok(Spacing::Leading),
            "trailing" => Ok(Spacing::Trailing),
            other => bail!(
                "scheduler config `timestep_spacing` = {other} is not supported by {class} (linspace, leading, trailing)"
            ),
        }
    }
}

/// Inference timesteps of the Euler-family schedulers (float32 values, as f64), highest first.
pub fn euler_timesteps(spacing: Spacing, n_train: usize, steps: usize, offset: usize) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => np_linspace(0.0, (n_train - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| t as f32 as f64)
            .collect(),
        Spacing::Leading => {
            let ratio = n_train / steps;
            (0..steps)
                .rev()
                .map(|i| (np_round((i * ratio) as f64) as f32 + offset as f32) as f64)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = n_train as f64 / steps as f64;
            np_arange(n_train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| (np_round(t) as f32 - 1.0) as f64)
                .collect()
        }
    }
}

/// Integer inference timesteps of DDIM / DDPM (highest first): "linspace" rounds
/// `linspace(0, n - 1, steps)`, "leading" takes multiples of `n // steps` plus `steps_offset`,
/// "trailing" rounds `arange(n, 0, -n / steps)` minus one.
pub fn discrete_timesteps(spacing: Spacing, n: usize, steps: usize, offset: usize) -> Vec<i64> {
    match spacing {
        Spacing::Linspace => np_linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .map(|t| np_round(t) as i64)
            .rev()
            .collect(),
        Spacing::Leading => {
            let ratio = (n / steps) as i64;
            (0..steps as i64)
                .rev()
                .map(|i| i * ratio + offset as i64)
                .collect()
        }
        Spacing::Trailing => np_arange(n as f64, 0.0, -(n as f64 / steps as f64))
            .into_iter()
            .map(|t| np_round(t) as i64 - 1)
            .collect(),
    }
}

/// `alphas_cumprod[t]` with `t` checked against the training range.
pub fn alpha_at(alphas_cumprod: &[f32], t: i64, class: &str) -> Result<f32> {
    usize::try_from(t)
        .ok()
        .and_then(|t| alphas_cumprod.get(t).copied())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{class}: timestep {t} is outside the training schedule (0..{}); check steps_offset",
                alphas_cumprod.len()
            )
        })
}
