//! Appypie's SDXL API (../shared/seeds/appypie-sdxl-img2img.txt).
//!
//! - `POST /img2img/getImage/v1/getSDXLImage` and `POST /getImage/v1/getSDXLImage`;
//!   with `inputImage` (a URL) it is image-to-image, without it text-to-image.
//! - Key in the `Ocp-Apim-Subscription-Key` header.
//! - Fields: prompt (required), negative_prompt, size "WxH" (default 1024x1024) or
//!   width/height, response_format (JSON), num_inference_steps (default 20, at
//!   most 20), guidance_scale (default 5.0), seed, strength (image-to-image,
//!   default 0.7).
//! - With the edge variable `appypie_refiner`, the model's catalog refiner runs after
//!   it from 0.8 of the schedule: the "refinement model" Appypie's page describes.
//! - Success: `{"status":200,"content-type":"image/png","content-length":"<bytes>","image_data":"<base64 PNG>"}`.
//! - Errors: `{"code":<status>,"message":"...","traceId":"..."}`.

use contract::limits::MAX_SIDE;
use contract::{GenerateRequest, GenerateResult};
use serde::Serialize;

use super::{Base64Png, Dialect, Incoming, Outgoing, first_image};
use crate::api_error::ApiError;
use crate::fields::Fields;
use crate::input_image::base64_decoded_len;
use crate::job::{self, ImageSource, InitImageSource, Job};
use crate::models;
use crate::stash::Stash;

pub const ROUTES: [&str; 2] = [
    "/getImage/v1/getSDXLImage",
    "/img2img/getImage/v1/getSDXLImage",
];

const KEY_HEADER: &str = "ocp-apim-subscription-key";
const DEFAULT_SIZE: u32 = 1024;
const MAX_STEPS: i64 = 20;
/// How much of the input image is re-imagined when the client doesn't say.
const DEFAULT_STRENGTH: f64 = 0.7;
/// Where the refiner takes over with `appypie_refiner` (diffusers' usual split).
const REFINER_START: f32 = 0.8;

pub struct Appypie;

impl Dialect for Appypie {
    fn name(&self) -> &'static str {
        "appypie"
    }

    fn field_names(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("steps", "num_inference_steps"),
            ("guidance", "guidance_scale"),
            ("init_image.strength", "strength"),
            ("init_image.image", "inputImage"),
        ]
    }

    fn key_location(&self) -> &'static str {
        "the Ocp-Apim-Subscription-Key header"
    }

    fn credential(&self, req: &Incoming) -> Result<Option<String>, ApiError> {
        Ok(req.header(KEY_HEADER).map(String::from))
    }

    fn parse(&self, req: &Incoming) -> Result<Job, ApiError> {
        let f = req.json()?;
        let prompt = job::check_prompt("prompt", f.required_string("prompt")?)?;
        let negative_prompt = job::optional_prompt(f, "negative_prompt")?;
        if let Some(format) = f.string("response_format")?
            && !matches!(
                format.trim().to_ascii_lowercase().as_str(),
                "json" | "b64_json" | "base64"
            )
        {
            return Err(ApiError::field(
                "response_format",
                format!(
                    "only \"json\" is served: the PNG comes back base64 in image_data (got {format:?})"
                ),
            ));
        }
        let (width, height) = size(f)?;
        let steps = f
            .integer("num_inference_steps", 1..=MAX_STEPS)?
            .map(|n| n as u32);
        // Appypie documents neither: absent, the model's catalog defaults apply.
        let guidance = f.number("guidance_scale", 0.0..=20.0)?.map(|g| g as f32);
        let seed = job::seed_or_random(f.seed("seed")?);
        let strength = f
            .number("strength", 0.01..=1.0)?
            .unwrap_or(DEFAULT_STRENGTH);
        let init = f
            .string("inputImage")?
            .map(|url| -> Result<_, ApiError> {
                Ok(InitImageSource {
                    field: "inputImage",
                    source: ImageSource::url("inputImage", &url)?,
                    strength: strength as f32,
                })
            })
            .transpose()?;
        Ok(Job::new(
            GenerateRequest {
                model: models::SDXL_BASE.into(),
                prompt,
                negative_prompt,
                width: Some(width),
                height: Some(height),
                steps,
                guidance,
                seed,
                samples: 1,
                scheduler: None,
                karras: None,
                algorithm_type: None,
                init_image: None,
                ..GenerateRequest::default()
            },
            init,
        ))
    }

    fn configure(&self, job: &mut Job, settings: &crate::settings::Settings) {
        // Their "refinement model": SDXL's refiner after the base, as diffusers'
        // ensemble of expert denoisers hands over (0.8).
        if settings.appypie_refiner {
            job.request.refiner_start = Some(REFINER_START);
        }
    }

    fn render(
        &self,
        _job: &Job,
        result: GenerateResult,
        _stash: &mut Stash,
    ) -> Result<Outgoing, ApiError> {
        let image = first_image(result)?;
        let body = ImageBody {
            status: 200,
            content_type: "image/png",
            content_length: base64_decoded_len(&image.png).to_string(),
            image_data: Base64Png::new(image.png),
        };
        Ok(Outgoing::json(200, &body).with_header("x-seed", image.seed.to_string()))
    }
}

/// The seed's success body, fields in the seed's order.
#[derive(Serialize)]
struct ImageBody {
    status: u16,
    #[serde(rename = "content-type")]
    content_type: &'static str,
    /// Size of the PNG in bytes, as a string (as the seed shows it).
    #[serde(rename = "content-length")]
    content_length: String,
    image_data: Base64Png,
}

/// `size` ("WxH") or `width`/`height`; both given must agree.
fn size(f: &Fields) -> Result<(u32, u32), ApiError> {
    let from_size = f
        .string("size")?
        .map(|s| job::parse_size("size", &s))
        .transpose()?;
    let width = f
        .integer("width", 0..=i64::from(u32::MAX))?
        .map(|n| n as u32);
    let height = f
        .integer("height", 0..=i64::from(u32::MAX))?
        .map(|n| n as u32);
    let (w, h) = match (from_size, width, height) {
        (Some((sw, sh)), w, h) => {
            if w.is_some_and(|w| w != sw) || h.is_some_and(|h| h != sh) {
                return Err(ApiError::field(
                    "size",
                    "disagrees with width/height; send one or the other",
                ));
            }
            (sw, sh)
        }
        (None, w, h) => (w.unwrap_or(DEFAULT_SIZE), h.unwrap_or(DEFAULT_SIZE)),
    };
    let field = |name: &'static str| if from_size.is_some() { "size" } else { name };
    Ok((
        job::check_side(field("width"), w, 64, MAX_SIDE, 8)?,
        job::check_side(field("height"), h, 64, MAX_SIDE, 8)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialects::test_support::{incoming, result};
    use serde_json::json;

    fn parse(body: &str) -> Result<Job, ApiError> {
        Appypie.parse(&incoming(ROUTES[1], &[], body.as_bytes()))
    }

    #[test]
    fn the_seed_request_is_img2img_at_1024_with_defaults() {
        let job = parse(r#"{ "prompt": "Change to a cat", "inputImage": "https://pub-1fb693cb11cc46b2b2f656f51e015a2c.r2.dev/dog.png" }"#).unwrap();
        let r = &job.request;
        assert_eq!(
            (r.width, r.height, r.steps, r.guidance, r.samples),
            (Some(1024), Some(1024), None, None, 1)
        );
        assert_eq!(
            (r.prompt.as_str(), r.negative_prompt.as_deref(), r.seed),
            ("Change to a cat", None, None)
        );
        let init = job.init.unwrap();
        assert_eq!((init.field, init.strength), ("inputImage", 0.7));
        assert!(
            matches!(init.source, ImageSource::Url(u) if u.host_str() == Some("pub-1fb693cb11cc46b2b2f656f51e015a2c.r2.dev"))
        );
    }

    #[test]
    fn optional_fields() {
        let job = parse(
            r#"{"prompt":"p","negative_prompt":"blurry","size":"512x768","num_inference_steps":4,
                "guidance_scale":0,"seed":42,"response_format":"JSON","unknown":{"x":1}}"#,
        )
        .unwrap();
        let r = &job.request;
        assert_eq!(
            (r.width, r.height, r.steps, r.guidance, r.seed),
            (Some(512), Some(768), Some(4), Some(0.0), Some(42))
        );
        assert_eq!(r.negative_prompt.as_deref(), Some("blurry"));
        assert!(job.init.is_none());
        let job = parse(r#"{"prompt":"p","width":256,"height":320,"seed":0}"#).unwrap();
        assert_eq!(
            (job.request.width, job.request.height, job.request.seed),
            (Some(256), Some(320), None)
        );
        assert!(parse(r#"{"prompt":"p","size":"256x256","width":256}"#).is_ok());
    }

    #[test]
    fn bad_fields_are_named() {
        for (body, start) in [
            (r#"{}"#, "prompt: required"),
            (r#"{"prompt":""}"#, "prompt: must not be empty"),
            (r#"{"prompt":5}"#, "prompt: expected a string"),
            (
                r#"{"prompt":"p","size":"big"}"#,
                "size: must be WIDTHxHEIGHT",
            ),
            (
                r#"{"prompt":"p","size":"1001x1000"}"#,
                "size: must be a multiple of 8",
            ),
            (
                r#"{"prompt":"p","size":"4096x4096"}"#,
                "size: must be a multiple of 8 from 64 to 2048",
            ),
            (
                r#"{"prompt":"p","width":100}"#,
                "width: must be a multiple of 8",
            ),
            (
                r#"{"prompt":"p","size":"512x512","height":256}"#,
                "size: disagrees",
            ),
            (
                r#"{"prompt":"p","num_inference_steps":21}"#,
                "num_inference_steps: must be an integer from 1 to 20",
            ),
            (
                r#"{"prompt":"p","guidance_scale":"high"}"#,
                "guidance_scale: must be a number from 0 to 20",
            ),
            (
                r#"{"prompt":"p","seed":-1}"#,
                "seed: must be an integer from 0",
            ),
            (
                r#"{"prompt":"p","inputImage":"dog.png"}"#,
                "inputImage: not an absolute http(s) URL",
            ),
            (
                r#"{"prompt":"p","inputImage":7}"#,
                "inputImage: expected a string",
            ),
            (
                r#"{"prompt":"p","strength":1.5}"#,
                "strength: must be a number from 0.01 to 1",
            ),
            (
                r#"{"prompt":"p","response_format":"url"}"#,
                "response_format: only \"json\" is served",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.starts_with(start), "{body}: {}", e.message);
        }
    }

    #[test]
    fn responses_match_the_seed() {
        let job = parse(r#"{"prompt":"p"}"#).unwrap();
        let out = Appypie
            .render(&job, result(1), &mut Stash::new("http://e", 0))
            .unwrap();
        assert!(
            out.body
                .starts_with(br#"{"status":200,"content-type":"image/png","content-length":"5","#)
        );
        let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            body,
            json!({"status":200,"content-type":"image/png","content-length":"5","image_data":"aGVsbG8="})
        );
        let err = Appypie.render_error(&ApiError::unavailable("busy").with_retry_after(3), "t-1");
        assert_eq!(err.status, 503);
        assert!(err.headers.contains(&("retry-after".into(), "3".into())));
        let body: serde_json::Value = serde_json::from_slice(&err.body).unwrap();
        assert_eq!(body, json!({"code":503,"message":"busy","traceId":"t-1"}));
    }

    #[test]
    fn key_comes_from_the_subscription_header() {
        let mut req = incoming(ROUTES[0], &[], b"{}");
        assert_eq!(Appypie.credential(&req).unwrap(), None);
        req.headers
            .insert("Ocp-Apim-Subscription-Key", "k1".parse().unwrap());
        assert_eq!(Appypie.credential(&req).unwrap().as_deref(), Some("k1"));
    }

    #[test]
    fn appypie_refiner_asks_for_the_models_refiner() {
        let settings = |on: &str| {
            crate::settings::Settings::from_lookup(|name| {
                (name == "appypie_refiner").then(|| on.to_string())
            })
            .unwrap()
        };
        let mut job = parse(r#"{"prompt":"a cat"}"#).unwrap();
        Appypie.configure(&mut job, &settings("false"));
        assert_eq!(job.request.refiner_start, None);
        Appypie.configure(&mut job, &settings("true"));
        assert_eq!(job.request.refiner_start, Some(0.8));
    }
}
