//! Noise schedulers, built like diffusers' `Scheduler.from_config(scheduler_config.json)`:
//! each class's configuration is a typed struct beside it, filled from the keys of the model's
//! config that the class knows, the others taking the class's defaults ([`class_config`]).
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
pub mod flow_match_euler;
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
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use deis::DeisMultistep;
pub use dpm_multistep::DpmSolverMultistep;
pub use dpm_singlestep::DpmSolverSinglestep;
pub use euler::EulerDiscrete;
pub use euler_ancestral::EulerAncestralDiscrete;
pub use flow_match_euler::FlowMatchEuler;
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
use class_config::ClassConfig;
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
    /// FlowMatchEulerDiscreteScheduler: for flow-matching (velocity) models only (SD 3).
    FlowMatchEuler,
}

/// Something done with a scheduler class, given its config type `C` and its constructor
/// (see [`SchedulerKind::visit_class`]).
trait ClassVisitor {
    type Out;
    fn visit<C: ClassConfig, S: Scheduler + 'static>(
        self,
        new: fn(&C, usize) -> Result<S>,
    ) -> Self::Out;
}

impl SchedulerKind {
    /// The diffusers class.
    pub fn class_name(self) -> &'static str {
        struct Name;
        impl ClassVisitor for Name {
            type Out = &'static str;
            fn visit<C: ClassConfig, S: Scheduler + 'static>(
                self,
                _new: fn(&C, usize) -> Result<S>,
            ) -> &'static str {
                C::CLASS
            }
        }
        self.visit_class(Name)
    }

    /// The one table from a choice to its class: the class's config type and constructor.
    fn visit_class<V: ClassVisitor>(self, v: V) -> V::Out {
        use SchedulerKind::*;
        match self {
            EulerDiscrete => v.visit(self::EulerDiscrete::new),
            EulerAncestralDiscrete => v.visit(self::EulerAncestralDiscrete::new),
            Ddim => v.visit(self::Ddim::new),
            Ddpm => v.visit(self::Ddpm::new),
            Pndm | Plms => v.visit(self::Pndm::new),
            Lms => v.visit(LmsDiscrete::new),
            Heun => v.visit(HeunDiscrete::new),
            KDpm2 => v.visit(KDpm2Discrete::new),
            KDpm2Ancestral => v.visit(KDpm2AncestralDiscrete::new),
            DpmSolverMultistep | DpmPlusPlus2M | DpmPlusPlus2MSde => {
                v.visit(self::DpmSolverMultistep::new)
            }
            DpmSolverSinglestep | DpmPlusPlus2S => v.visit(self::DpmSolverSinglestep::new),
            UniPc => v.visit(UniPcMultistep::new),
            Deis => v.visit(DeisMultistep::new),
            Lcm => v.visit(self::Lcm::new),
            FlowMatchEuler => v.visit(self::FlowMatchEuler::new),
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

    /// The names of the class's config options (its `__init__` parameters).
    pub fn params(self) -> Vec<String> {
        struct Params;
        impl ClassVisitor for Params {
            type Out = Vec<String>;
            fn visit<C: ClassConfig, S: Scheduler + 'static>(
                self,
                _new: fn(&C, usize) -> Result<S>,
            ) -> Vec<String> {
                class_config::param_names::<C>()
            }
        }
        self.visit_class(Params)
    }

    /// Whether the class has `use_karras_sigmas` (and this engine its Karras schedule).
    pub fn supports_karras(self) -> bool {
        !self.is_flow_matching() && self.params().iter().any(|p| p == "use_karras_sigmas")
    }

    /// Whether it steps a flow-matching (velocity) model, as SD 3's transformer; the others
    /// step noise-prediction UNets. Neither runs the other's models.
    pub fn is_flow_matching(self) -> bool {
        self == SchedulerKind::FlowMatchEuler
    }
}

/// What a request may set over the model's scheduler config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Options {
    /// Karras sigmas (`use_karras_sigmas`); an error for a class without them.
    pub karras: Option<bool>,
    /// `algorithm_type` of DPM-Solver (multistep, singlestep) and DEIS; an error for another
    /// class, or against a name that fixes it ("DPM++ 2M").
    pub algorithm_type: Option<String>,
}

/// Builds a scheduler of `kind` from the model's config for `steps` inference steps, with the
/// request's `options` over the config.
pub fn build(
    kind: SchedulerKind,
    cfg: &SchedulerConfig,
    steps: usize,
    options: &Options,
) -> Result<Box<dyn Scheduler>> {
    let mut overrides = serde_json::Map::new();
    if let Some(algorithm) = &options.algorithm_type {
        let class = kind.class_name();
        let invalid = |msg: String| Err(EngineError::invalid("algorithm_type", msg));
        if !kind.params().iter().any(|p| p == "algorithm_type") {
            return invalid(format!(
                "{class} has no algorithm_type (DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler and DEISMultistepScheduler have one)"
            ));
        }
        if let Some((_, fixed)) = kind
            .overrides()
            .iter()
            .find(|(k, _)| *k == "algorithm_type")
            && serde_json::from_str::<String>(fixed)? != *algorithm
        {
            return invalid(format!(
                "{algorithm} does not agree with the scheduler asked for, which uses {fixed}"
            ));
        }
        let known = match kind {
            SchedulerKind::Deis => deis::check_algorithm(algorithm),
            _ => dpm_multistep::Algorithm::parse(algorithm, class).map(|_| ()),
        };
        if let Err(e) = known {
            return invalid(format!("{e:#}"));
        }
        overrides.insert("algorithm_type".into(), Value::String(algorithm.clone()));
    }
    build_with(kind, cfg, steps, options.karras, &overrides)
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
    if karras == Some(true) && !kind.supports_karras() {
        let with: Vec<&str> = SUPPORTED
            .iter()
            .filter(|(k, _, _)| k.supports_karras())
            .map(|(_, d, _)| *d)
            .collect();
        return Err(EngineError::invalid(
            "karras",
            format!(
                "{} does not support Karras sigmas (supported by: {})",
                kind.class_name(),
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
    // The class's typed config, then the scheduler for `steps`.
    struct Make<'a> {
        raw: &'a SchedulerConfig,
        overrides: serde_json::Map<String, Value>,
        steps: usize,
    }
    impl ClassVisitor for Make<'_> {
        type Out = Result<Box<dyn Scheduler>>;
        fn visit<C: ClassConfig, S: Scheduler + 'static>(
            self,
            new: fn(&C, usize) -> Result<S>,
        ) -> Self::Out {
            let cfg = class_config::from_config::<C>(self.raw, &self.overrides)
                .map_err(|e| EngineError::invalid("scheduler", format!("{e:#}")))?;
            reject_unsupported(&serde_json::to_value(&cfg)?, C::CLASS)?;
            Ok(Box::new(new(&cfg, self.steps)?))
        }
    }
    kind.visit_class(Make {
        raw: cfg,
        overrides: all,
        steps,
    })
}

/// `prediction_type` of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
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

/// Options of a class's config (`cfg`, serialized) that select behaviour this engine does not
/// implement; none of them is set by SD / SDXL model folders.
fn reject_unsupported(cfg: &Value, class: &str) -> Result<()> {
    // FlowMatchEulerDiscreteScheduler checks its own options (dynamic shifting is its own).
    if class == flow_match_euler::FlowMatchEulerConfig::CLASS {
        return Ok(());
    }
    for key in ["thresholding", "use_flow_sigmas", "use_dynamic_shifting"] {
        if cfg[key] == Value::Bool(true) {
            anyhow::bail!(
                "scheduler config `{key}` = true is not supported for {class} by this engine yet"
            );
        }
    }
    if !cfg["solver_p"].is_null() {
        anyhow::bail!("scheduler config `solver_p` is not supported for {class} by this engine");
    }
    if !cfg["variance_type"].is_null() && class != "DDPMScheduler" {
        anyhow::bail!(
            "scheduler config `variance_type` = {} is not supported for {class} by this engine (learned variance models are not Stable Diffusion models)",
            cfg["variance_type"]
        );
    }
    Ok(())
}

/// The range samples are clipped to, when the config's `clip_sample` asks for it.
pub(crate) fn clip_sample(clip_sample: bool, clip_sample_range: f64) -> Option<f32> {
    clip_sample.then_some(clip_sample_range as f32)
}
