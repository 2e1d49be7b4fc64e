//! Noise schedulers, built like diffusers' `Scheduler.from_config(scheduler_config.json)`:
//! the keys of the model's config that the chosen class knows are used, the others take that
//! class's defaults ([`class_config`]).
//!
//! A scheduler is created per request ([`build`]) with its number of steps; the pipeline then
//! calls, for each index `i` of [`Scheduler::timesteps`] (starting at the begin index for
//! img2img): [`Scheduler::scale_model_input`], the UNet, [`Scheduler::step`], exactly as
//! diffusers' pipelines call `scale_model_input(x, t)` / `step(out, t, x)` once per entry of
//! `scheduler.timesteps`. Schedulers that evaluate the model twice per step (Heun, KDPM2, KDPM2
//! ancestral) list their timesteps that way ([`Scheduler::order`] = 2), PNDM's Runge-Kutta
//! warm-up steps likewise. Passing the index is what diffusers' `set_begin_index` does for
//! img2img; [`Scheduler::add_noise`] takes the same index.
//!
//! Randomness (Euler ancestral, KDPM2 ancestral, DDPM, LCM, the SDE variants of DPM-Solver) comes
//! from the request's [`NoiseSource`]: one `randn(model_output.shape)` per step per image
//! generator, at the point of `step` where diffusers draws it.
//!
//! Names accepted by [`resolve`]: diffusers class names and the A1111 / ComfyUI names, see
//! [`SUPPORTED`]. Anything else is an `InvalidParam` error listing the supported names; there
//! is no silent fallback. Classes that cannot generate images from Stable Diffusion models
//! ([`REFUSED`]) are refused with the reason.

pub mod class_config;
mod ddim;
mod ddpm;
mod deis;
mod dpm_multistep;
mod dpm_singlestep;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod heun;
mod kdpm2;
mod kdpm2_ancestral;
mod lcm;
mod lms;
mod names;
mod pndm;
pub mod schedule;
mod sigma_schedule;
mod solver_schedule;
mod unipc;

use anyhow::Result;
use candle_core::Tensor;
use serde_json::Value;

pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use deis::DeisMultistep;
pub use dpm_multistep::DpmSolverMultistep;
pub use dpm_singlestep::DpmSolverSinglestep;
pub use euler::EulerDiscrete;
pub use euler_ancestral::EulerAncestralDiscrete;
pub use heun::HeunDiscrete;
pub use kdpm2::KDpm2Discrete;
pub use kdpm2_ancestral::KDpm2AncestralDiscrete;
pub use lcm::Lcm;
pub use lms::LmsDiscrete;
pub use pndm::Pndm;
pub use unipc::UniPcMultistep;

use super::config::SchedulerConfig;
use super::error::EngineError;
use super::noise::NoiseSource;
pub use names::{REFUSED, SUPPORTED, resolve, supported_list};

/// One denoising scheduler instance (stateful, one request).
pub trait Scheduler: Send {
    /// The diffusers class this scheduler reproduces.
    fn class_name(&self) -> &'static str;
    /// The timesteps passed to the UNet, in order (diffusers' `scheduler.timesteps`: `order()`
    /// entries per step for the second-order schedulers).
    fn timesteps(&self) -> &[f64];
    /// Multiplier of the initial noise for txt2img: 1 for the schedulers that step on
    /// alphas_cumprod (DDIM, DDPM, PNDM, LCM, DPM-Solver, UniPC, DEIS); the sigma schedulers
    /// override it.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// Scales the UNet input at timestep index `i`: unchanged unless the scheduler works in
    /// sigmas (Euler, Heun, LMS, KDPM2, which divide by sqrt(sigma^2 + 1)).
    fn scale_model_input(&self, sample: &Tensor, _i: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }
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
    /// diffusers' `scheduler.sigmas` (one per timestep entry and the final one), for the
    /// schedulers that have them (tests compare them with diffusers').
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }
    /// diffusers' `scheduler.alphas_cumprod` (the training schedule), for the schedulers that
    /// step on it directly (DDIM, DDPM, PNDM, LCM).
    fn alphas_cumprod(&self) -> Option<&[f32]> {
        None
    }
}

/// The scheduler choices this engine implements: diffusers classes, and the A1111 names that
/// are a class with some options fixed (see [`SchedulerKind::overrides`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    EulerDiscrete,
    EulerAncestralDiscrete,
    Ddim,
    Ddpm,
    /// PNDMScheduler as configured (`skip_prk_steps` from the model's config).
    Pndm,
    /// PNDMScheduler with `skip_prk_steps = true` (pseudo linear multistep only).
    Plms,
    Lms,
    Heun,
    KDpm2,
    KDpm2Ancestral,
    /// DPMSolverMultistepScheduler as configured.
    DpmSolverMultistep,
    /// "DPM++ 2M": DPMSolverMultistepScheduler with `algorithm_type = "dpmsolver++"`,
    /// `solver_order = 2`.
    DpmPlusPlus2M,
    /// "DPM++ 2M SDE": the same with `algorithm_type = "sde-dpmsolver++"` (fresh noise each step).
    DpmPlusPlus2MSde,
    /// DPMSolverSinglestepScheduler as configured.
    DpmSolverSinglestep,
    /// "DPM++ 2S": DPMSolverSinglestepScheduler with `algorithm_type = "dpmsolver++"`,
    /// `solver_order = 2` (DPM-Solver++(2S) of the paper; not A1111's ancestral "DPM++ 2S a").
    DpmPlusPlus2S,
    UniPc,
    Deis,
    Lcm,
}

impl SchedulerKind {
    /// The diffusers class.
    pub fn class_name(self) -> &'static str {
        use SchedulerKind::*;
        match self {
            EulerDiscrete => "EulerDiscreteScheduler",
            EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
            Ddim => "DDIMScheduler",
            Ddpm => "DDPMScheduler",
            Pndm | Plms => "PNDMScheduler",
            Lms => "LMSDiscreteScheduler",
            Heun => "HeunDiscreteScheduler",
            KDpm2 => "KDPM2DiscreteScheduler",
            KDpm2Ancestral => "KDPM2AncestralDiscreteScheduler",
            DpmSolverMultistep | DpmPlusPlus2M | DpmPlusPlus2MSde => "DPMSolverMultistepScheduler",
            DpmSolverSinglestep | DpmPlusPlus2S => "DPMSolverSinglestepScheduler",
            UniPc => "UniPCMultistepScheduler",
            Deis => "DEISMultistepScheduler",
            Lcm => "LCMScheduler",
        }
    }

    /// Config options the name fixes, over the model's config (as
    /// `XScheduler.from_config(config, **overrides)`).
    pub fn overrides(self) -> &'static [(&'static str, &'static str)] {
        use SchedulerKind::*;
        match self {
            Plms => &[("skip_prk_steps", "true")],
            DpmPlusPlus2M | DpmPlusPlus2S => &[
                ("algorithm_type", r#""dpmsolver++""#),
                ("solver_order", "2"),
            ],
            DpmPlusPlus2MSde => &[
                ("algorithm_type", r#""sde-dpmsolver++""#),
                ("solver_order", "2"),
            ],
            _ => &[],
        }
    }

    /// diffusers' `scheduler.order`: model evaluations per step (the second-order
    /// schedulers list each timestep twice), which scales img2img's begin index
    /// (`(steps - int(steps * strength)) * order`). A property of the class, so known
    /// without building a scheduler.
    pub fn order(self) -> usize {
        use SchedulerKind::*;
        match self {
            Heun | KDpm2 | KDpm2Ancestral => 2,
            _ => 1,
        }
    }

    /// Whether the class has `use_karras_sigmas`.
    pub fn supports_karras(self) -> bool {
        class_config::has_param(self.class_name(), "use_karras_sigmas")
    }
}

/// Builds a scheduler of `kind` from the model's config for `steps` inference steps.
/// `karras` overrides the config's `use_karras_sigmas` when given (an error for a class without
/// Karras sigmas).
pub fn build(
    kind: SchedulerKind,
    cfg: &SchedulerConfig,
    steps: usize,
    karras: Option<bool>,
) -> Result<Box<dyn Scheduler>> {
    build_with(kind, cfg, steps, karras, &serde_json::Map::new())
}

/// [`build`] with further config options over the model's (e.g. `{"algorithm_type":
/// "sde-dpmsolver++"}`), as `XScheduler.from_config(config, **overrides)`; an option the class
/// does not have is an error.
pub fn build_with(
    kind: SchedulerKind,
    cfg: &SchedulerConfig,
    steps: usize,
    karras: Option<bool>,
    overrides: &serde_json::Map<String, Value>,
) -> Result<Box<dyn Scheduler>> {
    let class = kind.class_name();
    if karras == Some(true) && !kind.supports_karras() {
        let with: Vec<&str> = SUPPORTED
            .iter()
            .filter(|(k, _, _)| k.supports_karras())
            .map(|(_, d, _)| *d)
            .collect();
        return Err(EngineError::invalid(
            "karras",
            format!(
                "{class} does not support Karras sigmas (supported by: {})",
                with.join(", ")
            ),
        ));
    }
    let mut all = serde_json::Map::new();
    for (k, v) in kind.overrides() {
        all.insert(k.to_string(), serde_json::from_str(v)?);
    }
    for (k, v) in overrides {
        all.insert(k.clone(), v.clone());
    }
    if let Some(k) = karras
        && kind.supports_karras()
    {
        all.insert("use_karras_sigmas".into(), Value::Bool(k));
    }
    let cfg = class_config::effective(cfg, class, &all)
        .map_err(|e| EngineError::invalid("scheduler", format!("{e:#}")))?;
    reject_unsupported(&cfg, class)?;
    use SchedulerKind::*;
    Ok(match kind {
        EulerDiscrete => Box::new(self::EulerDiscrete::new(&cfg, steps)?),
        EulerAncestralDiscrete => Box::new(self::EulerAncestralDiscrete::new(&cfg, steps)?),
        Ddim => Box::new(self::Ddim::new(&cfg, steps)?),
        Ddpm => Box::new(self::Ddpm::new(&cfg, steps)?),
        Pndm | Plms => Box::new(self::Pndm::new(&cfg, steps)?),
        Lms => Box::new(LmsDiscrete::new(&cfg, steps)?),
        Heun => Box::new(HeunDiscrete::new(&cfg, steps)?),
        KDpm2 => Box::new(KDpm2Discrete::new(&cfg, steps)?),
        KDpm2Ancestral => Box::new(KDpm2AncestralDiscrete::new(&cfg, steps)?),
        DpmSolverMultistep | DpmPlusPlus2M | DpmPlusPlus2MSde => {
            Box::new(self::DpmSolverMultistep::new(&cfg, steps)?)
        }
        DpmSolverSinglestep | DpmPlusPlus2S => {
            Box::new(self::DpmSolverSinglestep::new(&cfg, steps)?)
        }
        UniPc => Box::new(UniPcMultistep::new(&cfg, steps)?),
        Deis => Box::new(DeisMultistep::new(&cfg, steps)?),
        Lcm => Box::new(self::Lcm::new(&cfg, steps)?),
    })
}

/// Options of the effective config that select behaviour this engine does not implement (none
/// of them is set by SD / SDXL model folders).
fn reject_unsupported(cfg: &SchedulerConfig, class: &str) -> Result<()> {
    for key in ["thresholding", "use_flow_sigmas", "use_dynamic_shifting"] {
        reject_flag(cfg, key, class)?;
    }
    let present = |key: &str| cfg.map.get(key).is_some_and(|v| !v.is_null());
    if present("solver_p") {
        anyhow::bail!("scheduler config `solver_p` is not supported for {class} by this engine");
    }
    if present("variance_type") && class != "DDPMScheduler" {
        anyhow::bail!(
            "scheduler config `variance_type` = {} is not supported for {class} by this engine (learned variance models are not Stable Diffusion models)",
            cfg.str_or("variance_type", "")?
        );
    }
    Ok(())
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

/// Applies `clip_sample` / `clip_sample_range` when the config asks for it.
pub(crate) fn clip_sample(cfg: &SchedulerConfig) -> Result<Option<f32>> {
    Ok(if cfg.bool_or("clip_sample", false)? {
        Some(cfg.f64_or("clip_sample_range", 1.0)? as f32)
    } else {
        None
    })
}
