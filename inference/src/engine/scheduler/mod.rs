//! Noise schedulers, built like diffusers' `Scheduler.from_config(scheduler_config.json)`:
//! the keys of the model's config that the chosen class knows are used, the others take that
//! class's defaults.
//!
//! A scheduler is created per request ([`build`]) with its number of steps; the pipeline then
//! calls, for each index `i` of [`Scheduler::timesteps`] (starting at the begin index for
//! img2img): [`Scheduler::scale_model_input`], the UNet, [`Scheduler::step`]. Randomness (Euler
//! ancestral, DDIM with eta > 0) comes from the request's [`NoiseSource`], drawn in diffusers'
//! order.
//!
//! Names accepted by [`resolve`]: diffusers class names and the A1111 / ComfyUI names, see
//! [`SUPPORTED`]. Anything else is an `InvalidParam` error listing the supported names; there
//! is no silent fallback.

mod ddim;
mod euler;
mod euler_ancestral;
pub mod schedule;
mod sigma_schedule;

use anyhow::Result;
use candle_core::Tensor;

pub use ddim::Ddim;
pub use euler::EulerDiscrete;
pub use euler_ancestral::EulerAncestralDiscrete;

use super::config::SchedulerConfig;
use super::error::EngineError;
use super::noise::NoiseSource;

/// One denoising scheduler instance (stateful, one request).
pub trait Scheduler: Send {
    /// The diffusers class this scheduler reproduces.
    fn class_name(&self) -> &'static str;
    /// The timesteps passed to the UNet, in order (`order()` entries per step).
    fn timesteps(&self) -> &[f64];
    /// Model evaluations per step (1 for the schedulers here; 2 for Heun-like ones).
    fn order(&self) -> usize {
        1
    }
    /// Multiplier of the initial noise for txt2img.
    fn init_noise_sigma(&self) -> f64;
    /// Scales the UNet input at timestep index `i`.
    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor>;
    /// One step from timestep index `i`: returns the previous (less noisy) sample.
    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut NoiseSource,
    ) -> Result<Tensor>;
    /// img2img: noises clean latents to the level of timestep index `i`.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor>;
}

/// The scheduler classes this engine implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    EulerDiscrete,
    EulerAncestralDiscrete,
    Ddim,
}

impl SchedulerKind {
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::EulerDiscrete => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
        }
    }

    pub fn supports_karras(self) -> bool {
        matches!(self, SchedulerKind::EulerDiscrete)
    }
}

/// (kind, display name, accepted names). Names compare case-insensitively, ignoring spaces,
/// `_` and `-`.
pub const SUPPORTED: &[(SchedulerKind, &str, &[&str])] = &[
    (
        SchedulerKind::EulerDiscrete,
        "Euler",
        &[
            "EulerDiscreteScheduler",
            "Euler",
            "k_euler",
            "EulerDiscrete",
        ],
    ),
    (
        SchedulerKind::EulerAncestralDiscrete,
        "Euler a",
        &[
            "EulerAncestralDiscreteScheduler",
            "Euler a",
            "Euler Ancestral",
            "k_euler_ancestral",
            "euler_a",
            "EulerAncestralDiscrete",
        ],
    ),
    (SchedulerKind::Ddim, "DDIM", &["DDIMScheduler", "DDIM"]),
];

fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-'))
        .flat_map(|c| c.to_lowercase())
        .collect()
}

/// The list of supported names for error messages.
pub fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|(k, display, _)| {
            let karras = if k.supports_karras() {
                format!(", \"{display} Karras\"")
            } else {
                String::new()
            };
            format!("\"{display}\" ({}){karras}", k.class_name())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves a scheduler name. A trailing "Karras" (A1111 style, e.g. "Euler Karras") asks for
/// Karras sigmas and is returned as `Some(true)`.
pub fn resolve(name: &str) -> Result<(SchedulerKind, Option<bool>)> {
    let mut n = normalize(name);
    let mut karras = None;
    if let Some(stripped) = n.strip_suffix("karras")
        && !stripped.is_empty()
    {
        n = stripped.to_string();
        karras = Some(true);
    }
    for (kind, _, names) in SUPPORTED {
        if names.iter().any(|a| normalize(a) == n) {
            if karras == Some(true) && !kind.supports_karras() {
                return Err(EngineError::invalid(
                    "scheduler",
                    format!(
                        "\"{name}\": {} does not support Karras sigmas; supported: {}",
                        kind.class_name(),
                        supported_list()
                    ),
                ));
            }
            return Ok((*kind, karras));
        }
    }
    Err(EngineError::invalid(
        "scheduler",
        format!(
            "unknown scheduler \"{name}\"; supported: {}",
            supported_list()
        ),
    ))
}

/// Builds a scheduler of `kind` from the model's config for `steps` inference steps.
/// `karras` overrides the config's `use_karras_sigmas` when given.
pub fn build(
    kind: SchedulerKind,
    cfg: &SchedulerConfig,
    steps: usize,
    karras: Option<bool>,
) -> Result<Box<dyn Scheduler>> {
    if karras == Some(true) && !kind.supports_karras() {
        return Err(EngineError::invalid(
            "karras",
            format!(
                "{} does not support Karras sigmas (supported by: EulerDiscreteScheduler)",
                kind.class_name()
            ),
        ));
    }
    Ok(match kind {
        SchedulerKind::EulerDiscrete => Box::new(EulerDiscrete::new(cfg, steps, karras)?),
        SchedulerKind::EulerAncestralDiscrete => Box::new(EulerAncestralDiscrete::new(cfg, steps)?),
        SchedulerKind::Ddim => Box::new(Ddim::new(cfg, steps)?),
    })
}

/// `prediction_type` of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}

impl Prediction {
    pub fn from_config(cfg: &SchedulerConfig) -> Result<Self> {
        match cfg.str_or("prediction_type", "epsilon")?.as_str() {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::VPrediction),
            "sample" => Ok(Prediction::Sample),
            other => anyhow::bail!(
                "scheduler config `prediction_type` = {other} is not supported (epsilon, v_prediction, sample)"
            ),
        }
    }
}

/// `x / d` with `d` a float32 scalar (exact IEEE division, as torch divides by a 0-dim tensor).
pub(crate) fn div_scalar(x: &Tensor, d: f32) -> Result<Tensor> {
    let d = Tensor::new(d, x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&d)?)
}

/// `x * m` with `m` a float32 scalar.
pub(crate) fn mul_scalar(x: &Tensor, m: f32) -> Result<Tensor> {
    Ok(x.affine(m as f64, 0.0)?)
}

/// Rejects config flags that select a behaviour not implemented here.
pub(crate) fn reject_flag(cfg: &SchedulerConfig, key: &str, class: &str) -> Result<()> {
    if cfg.bool_or(key, false)? {
        anyhow::bail!(
            "scheduler config `{key}` = true is not supported for {class} by this engine yet"
        );
    }
    Ok(())
}
