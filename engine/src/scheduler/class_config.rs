//! diffusers' `XScheduler.from_config(config)` for the classes this engine implements: the
//! class's own `__init__` parameters are read from the model's `scheduler_config.json` when the
//! file has them, and take that class's defaults when it does not; keys the class does not know
//! are ignored (so a PNDM-only `skip_prk_steps` in an Euler config reaches PNDM, and Euler's
//! `interpolation_type` does not reach DDIM).
//!
//! The table is the `__init__` signature of each class in diffusers 0.42 (defaults included;
//! `lambda_min_clipped`'s `-inf` is written as `null`).

use anyhow::{Result, bail};
use serde_json::Value;

use crate::config::SchedulerConfig;

/// (class, [(parameter, default as JSON)]).
const CLASS_PARAMS: &[(&str, &[(&str, &str)])] = &[
    (
        "DDIMScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.0001"),
            ("beta_end", "0.02"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("clip_sample", "true"),
            ("set_alpha_to_one", "true"),
            ("steps_offset", "0"),
            ("prediction_type", r#""epsilon""#),
            ("thresholding", "false"),
            ("dynamic_thresholding_ratio", "0.995"),
            ("clip_sample_range", "1.0"),
            ("sample_max_value", "1.0"),
            ("timestep_spacing", r#""leading""#),
            ("rescale_betas_zero_snr", "false"),
        ],
    ),
    (
        "DDPMScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.0001"),
            ("beta_end", "0.02"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("variance_type", r#""fixed_small""#),
            ("clip_sample", "true"),
            ("prediction_type", r#""epsilon""#),
            ("thresholding", "false"),
            ("dynamic_thresholding_ratio", "0.995"),
            ("clip_sample_range", "1.0"),
            ("sample_max_value", "1.0"),
            ("timestep_spacing", r#""leading""#),
            ("steps_offset", "0"),
            ("rescale_betas_zero_snr", "false"),
        ],
    ),
    (
        "PNDMScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.0001"),
            ("beta_end", "0.02"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("skip_prk_steps", "false"),
            ("set_alpha_to_one", "false"),
            ("prediction_type", r#""epsilon""#),
            ("timestep_spacing", r#""leading""#),
            ("steps_offset", "0"),
        ],
    ),
    (
        "LMSDiscreteScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.0001"),
            ("beta_end", "0.02"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("use_karras_sigmas", "false"),
            ("use_exponential_sigmas", "false"),
            ("use_beta_sigmas", "false"),
            ("prediction_type", r#""epsilon""#),
            ("timestep_spacing", r#""linspace""#),
            ("steps_offset", "0"),
        ],
    ),
    (
        "EulerDiscreteScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.0001"),
            ("beta_end", "0.02"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("prediction_type", r#""epsilon""#),
            ("interpolation_type", r#""linear""#),
            ("use_karras_sigmas", "false"),
            ("use_exponential_sigmas", "false"),
            ("use_beta_sigmas", "false"),
            ("sigma_min", "null"),
            ("sigma_max", "null"),
            ("timestep_spacing", r#""linspace""#),
            ("timestep_type", r#""discrete""#),
            ("steps_offset", "0"),
            ("rescale_betas_zero_snr", "false"),
            ("final_sigmas_type", r#""zero""#),
        ],
    ),
    (
        "EulerAncestralDiscreteScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.0001"),
            ("beta_end", "0.02"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("prediction_type", r#""epsilon""#),
            ("timestep_spacing", r#""linspace""#),
            ("steps_offset", "0"),
            ("rescale_betas_zero_snr", "false"),
        ],
    ),
    (
        "HeunDiscreteScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.00085"),
            ("beta_end", "0.012"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("prediction_type", r#""epsilon""#),
            ("use_karras_sigmas", "false"),
            ("use_exponential_sigmas", "false"),
            ("use_beta_sigmas", "false"),
            ("clip_sample", "false"),
            ("clip_sample_range", "1.0"),
            ("timestep_spacing", r#""linspace""#),
            ("steps_offset", "0"),
        ],
    ),
    (
        "DPMSolverMultistepScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.0001"),
            ("beta_end", "0.02"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("solver_order", "2"),
            ("prediction_type", r#""epsilon""#),
            ("thresholding", "false"),
            ("dynamic_thresholding_ratio", "0.995"),
            ("sample_max_value", "1.0"),
            ("algorithm_type", r#""dpmsolver++""#),
            ("solver_type", r#""midpoint""#),
            ("lower_order_final", "true"),
            ("euler_at_final", "false"),
            ("use_karras_sigmas", "false"),
            ("use_exponential_sigmas", "false"),
            ("use_beta_sigmas", "false"),
            ("use_lu_lambdas", "false"),
            ("use_flow_sigmas", "false"),
            ("flow_shift", "1.0"),
            ("final_sigmas_type", r#""zero""#),
            ("lambda_min_clipped", "null"),
            ("variance_type", "null"),
            ("timestep_spacing", r#""linspace""#),
            ("steps_offset", "0"),
            ("rescale_betas_zero_snr", "false"),
            ("use_dynamic_shifting", "false"),
            ("time_shift_type", r#""exponential""#),
        ],
    ),
    (
        "DPMSolverSinglestepScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.0001"),
            ("beta_end", "0.02"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("solver_order", "2"),
            ("prediction_type", r#""epsilon""#),
            ("thresholding", "false"),
            ("dynamic_thresholding_ratio", "0.995"),
            ("sample_max_value", "1.0"),
            ("algorithm_type", r#""dpmsolver++""#),
            ("solver_type", r#""midpoint""#),
            ("lower_order_final", "false"),
            ("use_karras_sigmas", "false"),
            ("use_exponential_sigmas", "false"),
            ("use_beta_sigmas", "false"),
            ("use_flow_sigmas", "false"),
            ("flow_shift", "1.0"),
            ("final_sigmas_type", r#""zero""#),
            ("lambda_min_clipped", "null"),
            ("variance_type", "null"),
            ("use_dynamic_shifting", "false"),
            ("time_shift_type", r#""exponential""#),
        ],
    ),
    (
        "KDPM2DiscreteScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.00085"),
            ("beta_end", "0.012"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("use_karras_sigmas", "false"),
            ("use_exponential_sigmas", "false"),
            ("use_beta_sigmas", "false"),
            ("prediction_type", r#""epsilon""#),
            ("timestep_spacing", r#""linspace""#),
            ("steps_offset", "0"),
        ],
    ),
    (
        "KDPM2AncestralDiscreteScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.00085"),
            ("beta_end", "0.012"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("use_karras_sigmas", "false"),
            ("use_exponential_sigmas", "false"),
            ("use_beta_sigmas", "false"),
            ("prediction_type", r#""epsilon""#),
            ("timestep_spacing", r#""linspace""#),
            ("steps_offset", "0"),
        ],
    ),
    (
        "UniPCMultistepScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.0001"),
            ("beta_end", "0.02"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("solver_order", "2"),
            ("prediction_type", r#""epsilon""#),
            ("thresholding", "false"),
            ("dynamic_thresholding_ratio", "0.995"),
            ("sample_max_value", "1.0"),
            ("predict_x0", "true"),
            ("solver_type", r#""bh2""#),
            ("lower_order_final", "true"),
            ("disable_corrector", "[]"),
            ("solver_p", "null"),
            ("use_karras_sigmas", "false"),
            ("use_exponential_sigmas", "false"),
            ("use_beta_sigmas", "false"),
            ("use_flow_sigmas", "false"),
            ("flow_shift", "1.0"),
            ("timestep_spacing", r#""linspace""#),
            ("steps_offset", "0"),
            ("final_sigmas_type", r#""zero""#),
            ("rescale_betas_zero_snr", "false"),
            ("use_dynamic_shifting", "false"),
            ("time_shift_type", r#""exponential""#),
            ("sigma_min", "null"),
            ("sigma_max", "null"),
            ("shift_terminal", "null"),
        ],
    ),
    (
        "DEISMultistepScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.0001"),
            ("beta_end", "0.02"),
            ("beta_schedule", r#""linear""#),
            ("trained_betas", "null"),
            ("solver_order", "2"),
            ("prediction_type", r#""epsilon""#),
            ("thresholding", "false"),
            ("dynamic_thresholding_ratio", "0.995"),
            ("sample_max_value", "1.0"),
            ("algorithm_type", r#""deis""#),
            ("solver_type", r#""logrho""#),
            ("lower_order_final", "true"),
            ("use_karras_sigmas", "false"),
            ("use_exponential_sigmas", "false"),
            ("use_beta_sigmas", "false"),
            ("use_flow_sigmas", "false"),
            ("flow_shift", "1.0"),
            ("timestep_spacing", r#""linspace""#),
            ("steps_offset", "0"),
            ("use_dynamic_shifting", "false"),
            ("time_shift_type", r#""exponential""#),
        ],
    ),
    (
        "LCMScheduler",
        &[
            ("num_train_timesteps", "1000"),
            ("beta_start", "0.00085"),
            ("beta_end", "0.012"),
            ("beta_schedule", r#""scaled_linear""#),
            ("trained_betas", "null"),
            ("original_inference_steps", "50"),
            ("clip_sample", "false"),
            ("clip_sample_range", "1.0"),
            ("set_alpha_to_one", "true"),
            ("steps_offset", "0"),
            ("prediction_type", r#""epsilon""#),
            ("thresholding", "false"),
            ("dynamic_thresholding_ratio", "0.995"),
            ("sample_max_value", "1.0"),
            ("timestep_spacing", r#""leading""#),
            ("timestep_scaling", "10.0"),
            ("rescale_betas_zero_snr", "false"),
        ],
    ),
];

/// Keys diffusers keeps in a scheduler's config even when its class does not take them (the
/// "hidden" config of `from_config`), and that the sigma conversions read with
/// `hasattr(self.config, ...)`.
const HIDDEN_READ: &[&str] = &["sigma_min", "sigma_max"];

/// The parameters of `class` (diffusers class name), `None` for a class not in the table.
pub fn class_params(class: &str) -> Option<&'static [(&'static str, &'static str)]> {
    CLASS_PARAMS
        .iter()
        .find(|(c, _)| *c == class)
        .map(|(_, p)| *p)
}

/// The config `class.from_config(raw, **overrides)` ends up with: every parameter of the class,
/// from `overrides`, else from `raw` (when present and not null), else the class default; plus
/// `sigma_min` / `sigma_max` from `raw` when it has them (see [`HIDDEN_READ`]).
pub fn effective(
    raw: &SchedulerConfig,
    class: &str,
    overrides: &serde_json::Map<String, Value>,
) -> Result<SchedulerConfig> {
    let Some(params) = class_params(class) else {
        bail!("no parameter table for scheduler class {class}");
    };
    let mut map = serde_json::Map::new();
    map.insert("_class_name".into(), Value::String(class.into()));
    for &(key, default) in params {
        let v = match raw.map.get(key).filter(|v| !v.is_null()) {
            Some(v) => v.clone(),
            None => serde_json::from_str(default)?,
        };
        map.insert(key.to_string(), v);
    }
    for &key in HIDDEN_READ {
        if !map.contains_key(key)
            && let Some(v) = raw.map.get(key).filter(|v| !v.is_null())
        {
            map.insert(key.to_string(), v.clone());
        }
    }
    for (key, v) in overrides {
        if !map.contains_key(key) {
            bail!("{class} has no config option `{key}`");
        }
        map.insert(key.clone(), v.clone());
    }
    Ok(SchedulerConfig { map })
}

/// Whether `class` takes `key` (used for the `karras` request option).
pub fn has_param(class: &str, key: &str) -> bool {
    class_params(class).is_some_and(|p| p.iter().any(|(k, _)| *k == key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_config_semantics() {
        let raw = SchedulerConfig {
            map: serde_json::json!({
                "_class_name": "EulerDiscreteScheduler",
                "beta_schedule": "scaled_linear",
                "skip_prk_steps": true,
                "interpolation_type": "linear",
                "timestep_spacing": "leading",
                "trained_betas": null,
            })
            .as_object()
            .unwrap()
            .clone(),
        };
        let pndm = effective(&raw, "PNDMScheduler", &Default::default()).unwrap();
        assert_eq!(pndm.map["skip_prk_steps"], true);
        assert_eq!(pndm.map["beta_schedule"], "scaled_linear");
        assert!(!pndm.map.contains_key("interpolation_type"));
        let heun = effective(&raw, "HeunDiscreteScheduler", &Default::default()).unwrap();
        assert_eq!(heun.map["beta_start"], 0.00085);
        assert!(!heun.map.contains_key("skip_prk_steps"));
        assert!(has_param("LMSDiscreteScheduler", "use_karras_sigmas"));
        assert!(!has_param("DDIMScheduler", "use_karras_sigmas"));
    }
}
