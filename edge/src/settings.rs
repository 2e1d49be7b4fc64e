//! The edge's configuration, read from Spin variables (spin.toml's [variables];
//! SPIN_VARIABLE_<NAME> in the environment). Parsing is here, pure; reading the
//! variables is the component's job.

use std::time::Duration;

use url::Url;

use crate::auth::ApiKeys;
use crate::image_url::ImageHosts;
use crate::input_image::ImageLimits;

/// The variables the component reads. Each must be declared in the component's
/// `[component.edge.variables]`, or Spin refuses the lookup.
pub const VARIABLES: [&str; 13] = [
    "api_keys",
    "allow_anonymous",
    "appypie_refiner",
    "inference_url",
    "more_inference_urls",
    "inference_token",
    "image_hosts",
    "inference_timeout_secs",
    "public_url",
    "async_after_secs",
    "webhook_retry_secs",
    "key_max_stored_mb",
    "key_max_images",
];

#[derive(Debug, Clone)]
pub struct Settings {
    pub api_keys: ApiKeys,
    /// Base URLs of the inference servers (at least one), without trailing slashes.
    pub inference_urls: Vec<String>,
    /// The shared secret the inference servers require (sent as a bearer token).
    pub inference_token: Option<String>,
    pub image_hosts: ImageHosts,
    pub image_limits: ImageLimits,
    /// How long an input image download may take in all.
    pub image_fetch_timeout: Duration,
    /// How long the inference server may take to answer a generation.
    pub inference_timeout: Duration,
    /// The origin clients reach the edge at, for links to stored images (ModelsLab's
    /// `output`); None: taken from the request.
    pub public_url: Option<String>,
    /// ModelsLab: a request expected to wait longer than this at the inference
    /// server is answered "processing" at once, for `fetch` later.
    pub async_after: Duration,
    /// How long a webhook delivery is retried.
    pub webhook_retry: Duration,
    /// What one API key's ModelsLab jobs may keep in the store at a time.
    pub key_limits: crate::quota::Limits,
    /// Appypie: run the model's catalog refiner after it (the "refinement model" their
    /// API describes; the server's catalog must name one for SDXL).
    pub appypie_refiner: bool,
}

impl Settings {
    /// Builds the settings from variable values (None: not set, use the default).
    /// Errors describe the misconfiguration, for a 500 and the log.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let first = get("inference_url").unwrap_or_else(|| "http://127.0.0.1:8081".into());
        let mut inference_urls = vec![base_url("inference_url", &first)?];
        for url in get("more_inference_urls").unwrap_or_default().split(',') {
            if !url.trim().is_empty() {
                inference_urls.push(base_url("more_inference_urls", url)?);
            }
        }
        let inference_token = get("inference_token")
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let image_hosts = ImageHosts::parse(&get("image_hosts").unwrap_or_default())
            .map_err(|e| format!("image_hosts: {e}"))?;
        let secs = |name: &str, default: u64, min: u64| -> Result<Duration, String> {
            match get(name).filter(|s| !s.trim().is_empty()) {
                None => Ok(Duration::from_secs(default)),
                Some(s) => s
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n >= min)
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        format!("{name} {s:?} must be a whole number of seconds, at least {min}")
                    }),
            }
        };
        let inference_timeout = secs("inference_timeout_secs", 600, 1)?;
        let async_after = secs("async_after_secs", 30, 0)?;
        let webhook_retry = secs("webhook_retry_secs", 3600, 0)?;
        let count = |name: &str, default: u64| -> Result<u64, String> {
            match get(name).filter(|s| !s.trim().is_empty()) {
                None => Ok(default),
                Some(s) => s
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| format!("{name} {s:?} must be a whole number")),
            }
        };
        let key_limits = crate::quota::Limits {
            max_bytes: count("key_max_stored_mb", 512)?.saturating_mul(1024 * 1024),
            max_images: count("key_max_images", 500)?.min(u64::from(u32::MAX)) as u32,
        };
        let flag = |name: &str| -> Result<bool, String> {
            match get(name)
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "" | "false" | "no" | "0" => Ok(false),
                "true" | "yes" | "1" => Ok(true),
                other => Err(format!("{name} {other:?} must be true or false")),
            }
        };
        let allow_anonymous = flag("allow_anonymous")?;
        let appypie_refiner = flag("appypie_refiner")?;
        let public_url = match get("public_url").filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(s) => {
                let u = Url::parse(s.trim())
                    .map_err(|e| format!("public_url {s:?} is not a URL ({e})"))?;
                if !matches!(u.scheme(), "http" | "https") {
                    return Err(format!("public_url {s:?} must be an http(s) URL"));
                }
                Some(s.trim().trim_end_matches('/').to_string())
            }
        };
        Ok(Settings {
            api_keys: ApiKeys::parse(&get("api_keys").unwrap_or_default())
                .allowing_anonymous(allow_anonymous),
            inference_urls,
            inference_token,
            image_hosts,
            image_limits: ImageLimits::default(),
            image_fetch_timeout: Duration::from_secs(20),
            inference_timeout,
            public_url,
            async_after,
            webhook_retry,
            key_limits,
            appypie_refiner,
        })
    }
}

/// An http(s) base URL without its trailing slash.
fn base_url(variable: &str, text: &str) -> Result<String, String> {
    let parsed =
        Url::parse(text.trim()).map_err(|e| format!("{variable}: {text:?} is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("{variable}: {text:?} must be an http(s) URL"));
    }
    Ok(text.trim().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.inference_urls, ["http://127.0.0.1:8081"]);
        assert_eq!(s.inference_token, None);
        assert!(s.api_keys.is_empty());
        assert_eq!(s.inference_timeout, Duration::from_secs(600));
    }

    #[test]
    fn values_are_parsed_and_checked() {
        let s = settings(&[
            ("inference_url", "http://gpu-1:9000/"),
            ("api_keys", "a,b"),
            ("image_hosts", "http://127.0.0.1:8000"),
            ("inference_timeout_secs", "30"),
            (
                "more_inference_urls",
                " http://gpu-2:9000, https://gpu-3/ ,",
            ),
            ("inference_token", " t0k "),
        ])
        .unwrap();
        assert_eq!(
            s.inference_urls,
            ["http://gpu-1:9000", "http://gpu-2:9000", "https://gpu-3"]
        );
        assert_eq!(s.inference_token.as_deref(), Some("t0k"));
        assert!(
            settings(&[("more_inference_urls", "http://a:1,ftp://b")])
                .unwrap_err()
                .contains("more_inference_urls")
        );
        assert_eq!(s.inference_timeout, Duration::from_secs(30));
        assert!(
            settings(&[("inference_url", "gpu-1")])
                .unwrap_err()
                .contains("inference_url")
        );
        assert!(
            settings(&[("image_hosts", "nope")])
                .unwrap_err()
                .starts_with("image_hosts:")
        );
        assert!(
            settings(&[("allow_anonymous", "maybe")])
                .unwrap_err()
                .contains("allow_anonymous")
        );
        let s = settings(&[
            ("allow_anonymous", "true"),
            ("public_url", "https://img.example/"),
        ])
        .unwrap();
        assert!(s.api_keys.check(None, "X").is_ok());
        assert_eq!(s.public_url.as_deref(), Some("https://img.example"));
        assert!(
            settings(&[("inference_timeout_secs", "0")])
                .unwrap_err()
                .contains("at least 1")
        );
        let s = settings(&[("async_after_secs", "0"), ("webhook_retry_secs", "5")]).unwrap();
        assert_eq!(
            (s.async_after, s.webhook_retry),
            (Duration::ZERO, Duration::from_secs(5))
        );
        assert!(settings(&[("async_after_secs", "x")]).is_err());
        let s = settings(&[("key_max_stored_mb", "2"), ("key_max_images", "7")]).unwrap();
        assert_eq!(
            (s.key_limits.max_bytes, s.key_limits.max_images),
            (2 << 20, 7)
        );
        assert!(settings(&[("key_max_images", "-1")]).is_err());
    }
}
