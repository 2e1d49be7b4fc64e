//! Model names as clients send them. Which names map to which weights is the
//! inference server's business (it answers unknown-model with the names it serves);
//! the edge only knows each dialect's default and refuses names that can't be model
//! names at all.

use crate::api_error::ApiError;

/// The model the SDXL APIs (Appypie, HolmesAI) default to.
pub const SDXL_BASE: &str = "stable-diffusion-xl-base-1.0";

/// Hyperbolic's `model_name` values (their list).
pub const HYPERBOLIC: [&str; 7] = [
    "SDXL1.0-base",
    "SD2",
    "SD1.5",
    "SSD",
    "SDXL-turbo",
    "SDXL-ControlNet",
    "SD1.5-ControlNet",
];
/// Hyperbolic's ControlNet pipelines: the base model each runs (with `controlnet_name`).
pub const HYPERBOLIC_CONTROLNET: [(&str, &str); 2] = [
    ("SDXL-ControlNet", "SDXL1.0-base"),
    ("SD1.5-ControlNet", "SD1.5"),
];

use contract::limits::MAX_MODEL_CHARS as MAX_NAME_CHARS;

/// A model name field: `default` when absent; otherwise a plausible name (a catalog
/// name, a hub id such as `org/model`), which the server then resolves.
pub fn check(field: &str, name: Option<String>, default: &str) -> Result<String, ApiError> {
    let Some(name) = name.map(|n| n.trim().to_string()) else {
        return Ok(default.to_string());
    };
    if name.is_empty() {
        return Err(ApiError::field(field, "must not be empty"));
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/:+ ".contains(c));
    if name.chars().count() > MAX_NAME_CHARS || !ok_chars {
        return Err(ApiError::field(
            field,
            format!(
                "not a model name (letters, digits and . _ - / : + only, at most {MAX_NAME_CHARS} characters)"
            ),
        ));
    }
    Ok(name)
}

/// Hyperbolic's `model_name`: one of their names.
pub fn check_hyperbolic(field: &str, name: &str) -> Result<String, ApiError> {
    if let Some(found) = HYPERBOLIC
        .iter()
        .find(|n| n.eq_ignore_ascii_case(name.trim()))
    {
        return Ok(found.to_string());
    }
    Err(ApiError::field(
        field,
        format!("unknown model {name:?}; served: {}", HYPERBOLIC.join(", ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check("model", None, SDXL_BASE).unwrap(), SDXL_BASE);
        assert_eq!(
            check("model", Some(" org/m-1.0 ".into()), SDXL_BASE).unwrap(),
            "org/m-1.0"
        );
        assert!(check("model", Some("".into()), SDXL_BASE).is_err());
        assert!(
            check("model", Some("a;rm -rf".into()), SDXL_BASE)
                .unwrap_err()
                .message
                .starts_with("model: not a model name")
        );
        assert_eq!(
            check_hyperbolic("model_name", "sdxl-turbo").unwrap(),
            "SDXL-turbo"
        );
        assert_eq!(
            check_hyperbolic("model_name", "sd1.5-controlnet").unwrap(),
            "SD1.5-ControlNet"
        );
        assert!(
            check_hyperbolic("model_name", "DALL-E")
                .unwrap_err()
                .message
                .contains("served: SDXL1.0-base")
        );
    }
}
