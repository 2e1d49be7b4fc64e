//! diffusers' `XScheduler.from_config(config, **overrides)`: each scheduler class's
//! configuration is one typed struct, declared beside the scheduler with [`class_config!`]
//! from the class's `__init__` signature (defaults included, diffusers 0.42), and filled from
//! the model's `scheduler_config.json`: the keys the class has take the file's values (a
//! `null` keeps the default), the others are ignored, so a PNDM-only `skip_prk_steps` in an
//! Euler config reaches PNDM and Euler's `interpolation_type` does not reach DDIM.
//!
//! The parameters several classes share are grouped in [`Betas`], [`TimestepSpacing`],
//! [`SigmaOptions`], [`Thresholding`] and [`FlowOptions`] (flattened into the class's struct),
//! so the code that reads them, and their defaults, are written once.

use anyhow::{Result, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::SchedulerConfig;

/// A scheduler class's configuration (made by [`class_config!`]).
pub trait ClassConfig: Serialize + DeserializeOwned + Default {
    /// The diffusers class name.
    const CLASS: &'static str;
}

/// Declares a class's configuration: `Name = "DiffusersClass" { field: Type = default, ... }`,
/// each parameter with its default written once. Group structs go in with `#[serde(flatten)]`.
/// Classes whose `__init__` is the same list name each their own type before the one list:
/// `A = "ClassA", B = "ClassB" { ... }`.
macro_rules! class_config {
    ($(#[$m:meta])* $name:ident = $class:literal, $($more:ident = $more_class:literal),+ {
        $($body:tt)*
    }) => {
        class_config! { $(#[$m])* $name = $class { $($body)* } }
        class_config! { $(#[$m])* $($more = $more_class),+ { $($body)* } }
    };
    ($(#[$m:meta])* $name:ident = $class:literal {
        $( $(#[$fm:meta])* $field:ident : $ty:ty = $default:expr ),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
        pub struct $name { $( $(#[$fm])* pub $field: $ty, )* }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $crate::scheduler::class_config::ClassConfig for $name {
            const CLASS: &'static str = $class;
        }
    };
}
pub(crate) use class_config;

/// The training noise schedule's parameters (every class has them; the defaults differ).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Betas {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
}

impl Betas {
    /// 1000 training steps, `beta_schedule` from `beta_start` to `beta_end`.
    pub fn new(beta_start: f64, beta_end: f64, beta_schedule: &str) -> Self {
        Betas {
            num_train_timesteps: 1000,
            beta_start,
            beta_end,
            beta_schedule: beta_schedule.into(),
            trained_betas: None,
        }
    }

    /// The most common defaults: linear from 0.0001 to 0.02.
    pub fn linear() -> Self {
        Betas::new(0.0001, 0.02, "linear")
    }
}

/// Where the inference timesteps are placed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimestepSpacing {
    pub timestep_spacing: String,
    pub steps_offset: usize,
}

impl TimestepSpacing {
    pub fn new(timestep_spacing: &str) -> Self {
        TimestepSpacing {
            timestep_spacing: timestep_spacing.into(),
            steps_offset: 0,
        }
    }
}

/// The sigma conversions (`use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`),
/// and the bounds they use from the config when it has them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SigmaOptions {
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    /// `sigma_min` / `sigma_max`: diffusers reads them with `hasattr(self.config, ...)`, so a
    /// config that has them bounds the conversions of every class, even one whose `__init__`
    /// does not take them (the "hidden" config). Not a parameter one can override.
    #[serde(default, skip_serializing)]
    pub sigma_min: Option<f64>,
    #[serde(default, skip_serializing)]
    pub sigma_max: Option<f64>,
}

/// Dynamic thresholding (Imagen's): not for latent-space models like Stable Diffusion, so
/// `thresholding = true` is refused; kept so configs that carry the keys read as diffusers'.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Thresholding {
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
}

impl Default for Thresholding {
    fn default() -> Self {
        Thresholding {
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
        }
    }
}

/// The flow-matching options of the multistep solvers (for SD3 / Flux-style models; refused
/// when set, none of them is set by SD / SDXL folders).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowOptions {
    pub use_flow_sigmas: bool,
    pub flow_shift: f64,
    pub use_dynamic_shifting: bool,
    pub time_shift_type: String,
}

impl Default for FlowOptions {
    fn default() -> Self {
        FlowOptions {
            use_flow_sigmas: false,
            flow_shift: 1.0,
            use_dynamic_shifting: false,
            time_shift_type: "exponential".into(),
        }
    }
}

/// Keys read from the model's config by every class that has [`SigmaOptions`], parameter or
/// not (see [`SigmaOptions::sigma_min`]).
const HIDDEN_READ: &[&str] = &["sigma_min", "sigma_max"];

/// The parameter names of `C` (its `__init__`'s).
pub fn param_names<C: ClassConfig>() -> Vec<String> {
    match serde_json::to_value(C::default()) {
        Ok(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// `C.from_config(raw, **overrides)`: every parameter from `overrides`, else from `raw` (when
/// present and not null), else `C`'s default. An override the class does not have, or a value
/// of the wrong type, is an error naming the key.
pub fn from_config<C: ClassConfig>(
    raw: &SchedulerConfig,
    overrides: &Map<String, Value>,
) -> Result<C> {
    let Value::Object(defaults) = serde_json::to_value(C::default())? else {
        bail!("{}: the configuration is not a map", C::CLASS);
    };
    let mut given = Map::new();
    for (key, v) in &raw.map {
        if !v.is_null() && (defaults.contains_key(key) || HIDDEN_READ.contains(&key.as_str())) {
            given.insert(key.clone(), v.clone());
        }
    }
    for (key, v) in overrides {
        if !defaults.contains_key(key) {
            bail!("{} has no config option `{key}`", C::CLASS);
        }
        given.insert(key.clone(), v.clone());
    }
    let with = |values: &Map<String, Value>| {
        let mut map = defaults.clone();
        map.extend(values.clone());
        serde_json::from_value::<C>(Value::Object(map))
    };
    with(&given).or_else(|e| {
        // serde's message does not say which key: find the value that fails on its own.
        for (key, v) in &given {
            if let Err(e) = with(&Map::from_iter([(key.clone(), v.clone())])) {
                bail!(
                    "scheduler config `{key}` = {v} is not accepted by {}: {e}",
                    C::CLASS
                );
            }
        }
        bail!("scheduler config for {}: {e}", C::CLASS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    class_config! {
        /// A class with shared and own parameters.
        Example = "ExampleScheduler" {
            #[serde(flatten)]
            betas: Betas = Betas::new(0.00085, 0.012, "linear"),
            #[serde(flatten)]
            sigmas: SigmaOptions = SigmaOptions::default(),
            skip_prk_steps: bool = false,
            lambda_min_clipped: Option<f64> = None,
        }
    }

    fn raw(v: Value) -> SchedulerConfig {
        SchedulerConfig {
            map: v.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn from_config_semantics() {
        let cfg = raw(serde_json::json!({
            "_class_name": "EulerDiscreteScheduler",
            "beta_schedule": "scaled_linear",
            "skip_prk_steps": true,
            "interpolation_type": "linear",
            "trained_betas": null,
            "beta_start": null,
            "sigma_max": 14.6,
        }));
        let c: Example = from_config(&cfg, &Map::new()).unwrap();
        assert!(c.skip_prk_steps);
        assert_eq!(c.betas.beta_schedule, "scaled_linear");
        // null keeps the class's default; the hidden sigma_max is read.
        assert_eq!(c.betas.beta_start, 0.00085);
        assert_eq!(c.sigmas.sigma_max, Some(14.6));
        let names = param_names::<Example>();
        assert!(names.contains(&"use_karras_sigmas".to_string()));
        assert!(!names.contains(&"sigma_max".to_string()));
        assert!(!names.contains(&"interpolation_type".to_string()));

        let karras = Map::from_iter([("use_karras_sigmas".into(), Value::Bool(true))]);
        let c: Example = from_config(&cfg, &karras).unwrap();
        assert!(c.sigmas.use_karras_sigmas);
    }

    #[test]
    fn errors_name_the_key() {
        let e = from_config::<Example>(&raw(serde_json::json!({"beta_end": "x"})), &Map::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`beta_end` = \"x\""), "{e}");
        let over = Map::from_iter([("solver_order".into(), Value::from(2))]);
        let e = from_config::<Example>(&raw(serde_json::json!({})), &over)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "ExampleScheduler has no config option `solver_order`");
    }
}
