//! HolmesAI's image models API (../shared/seeds/holmesai-image-models.txt).
//!
//! - `POST /v1/images/generate`: JSON; text-to-image.
//! - `POST /v1/images/control`: multipart/form-data with an `image` file;
//!   image-to-image from the upload, at the upload's size (sides rounded to
//!   multiples of 64, at most 1024).
//! - Both also under a `/{service_id}` prefix, as the seed's URLs have them.
//! - Key as `Authorization: Bearer <key>`.
//! - Fields: model (default stable-diffusion-xl-base-1.0), prompt (required),
//!   negative_prompt, steps 10-50 (30), height / width multiples of 64 from 128
//!   (512), cfg_scale 0-35 (7), seed 0-4294967295 (0: random); control adds
//!   control_strength 0-1 (0.35): how much the upload shapes the result, so the
//!   denoising strength is 1 - control_strength.
//! - Success: the PNG itself (`image/png`); the seed in `x-seed`. Errors: the seed
//!   documents none; `{code, message, traceId}` JSON, as the other dialects.

use base64::Engine;
use contract::{GenerateRequest, GenerateResult};

use super::{Dialect, Incoming, Outgoing, first_image};
use crate::api_error::ApiError;
use crate::auth::{BEARER_LOCATION, bearer_token};
use crate::fields::Fields;
use crate::job::{self, ImageSource, InitImageSource, Job, SizeRule};
use crate::models;
use crate::multipart;
use crate::stash::Stash;

const DEFAULT_STEPS: u32 = 30;
const DEFAULT_SIDE: u32 = 512;
const DEFAULT_CFG: f64 = 7.0;
const DEFAULT_CONTROL_STRENGTH: f64 = 0.35;
/// The smallest denoising strength a control request turns into (control_strength 1
/// would otherwise run no steps at all).
const MIN_STRENGTH: f64 = 0.01;
use contract::limits::MAX_SIDE;
/// Control outputs follow the upload's size within these bounds.
const CONTROL_SIZE: SizeRule = SizeRule {
    step: 64,
    min: 128,
    max: 1024,
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Endpoint {
    Generate,
    Control,
}

/// The endpoint `path` names: `/v1/images/{generate,control}`, optionally after one
/// `/{service_id}` segment.
pub fn endpoint(path: &str) -> Option<Endpoint> {
    let rest = match path.strip_prefix('/')?.split_once('/') {
        Some((first, rest)) if first != "v1" => {
            if first.is_empty() {
                return None;
            }
            format!("/{rest}")
        }
        _ => path.to_string(),
    };
    match rest.as_str() {
        "/v1/images/generate" => Some(Endpoint::Generate),
        "/v1/images/control" => Some(Endpoint::Control),
        _ => None,
    }
}

pub struct HolmesAi;

impl Dialect for HolmesAi {
    fn name(&self) -> &'static str {
        "holmesai"
    }

    fn field_names(&self) -> &'static [(&'static str, &'static str)] {
        &[("guidance", "cfg_scale"), ("init_image.image", "image")]
    }

    fn key_location(&self) -> &'static str {
        BEARER_LOCATION
    }

    fn credential(&self, req: &Incoming) -> Result<Option<String>, ApiError> {
        Ok(bearer_token(req.header("authorization")).map(String::from))
    }

    fn parse(&self, req: &Incoming) -> Result<Job, ApiError> {
        match endpoint(&req.path) {
            Some(Endpoint::Control) => parse_control(req),
            _ => parse_generate(req),
        }
    }

    fn render(
        &self,
        _job: &Job,
        result: GenerateResult,
        _stash: &mut Stash,
    ) -> Result<Outgoing, ApiError> {
        let image = first_image(result)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(&image.png)
            .map_err(|e| ApiError::internal(format!("the inference server's PNG: {e}")))?;
        Ok(Outgoing {
            status: 200,
            headers: vec![
                ("content-type".into(), "image/png".into()),
                ("x-seed".into(), image.seed.to_string()),
            ],
            body: png,
        })
    }
}

/// The fields both endpoints share, as a request of `width` x `height`.
fn common(f: &Fields, (width, height): (u32, u32)) -> Result<GenerateRequest, ApiError> {
    let model = models::check("model", f.string("model")?, models::SDXL_BASE)?;
    let prompt = job::check_prompt("prompt", f.required_string("prompt")?)?;
    let negative_prompt = job::optional_prompt(f, "negative_prompt")?;
    let steps = f
        .integer("steps", 10..=50)?
        .map_or(DEFAULT_STEPS, |n| n as u32);
    let guidance = f.number("cfg_scale", 0.0..=35.0)?.unwrap_or(DEFAULT_CFG);
    let seed = f
        .integer("seed", 0..=i64::from(u32::MAX))?
        .and_then(|s| job::seed_or_random(Some(s as u64)));
    Ok(GenerateRequest {
        model,
        prompt,
        negative_prompt,
        width: Some(width),
        height: Some(height),
        steps: Some(steps),
        guidance: Some(guidance as f32),
        seed,
        samples: 1,
        scheduler: None,
        karras: None,
        algorithm_type: None,
        init_image: None,
        ..GenerateRequest::default()
    })
}

fn parse_generate(req: &Incoming) -> Result<Job, ApiError> {
    let f = req.json()?;
    let side = |name: &'static str| -> Result<u32, ApiError> {
        let v = f
            .integer(name, 0..=i64::from(u32::MAX))?
            .map_or(DEFAULT_SIDE, |n| n as u32);
        job::check_side(name, v, 128, MAX_SIDE, 64)
    };
    let size = (side("width")?, side("height")?);
    Ok(Job::new(common(f, size)?, None))
}

fn parse_control(req: &Incoming) -> Result<Job, ApiError> {
    let mut form = multipart::parse(req.header("content-type"), req.body.clone())?;
    let control = form
        .fields
        .number("control_strength", 0.0..=1.0)?
        .unwrap_or(DEFAULT_CONTROL_STRENGTH);
    let image = form
        .take_file("image")
        .filter(|p| !p.bytes.is_empty())
        .ok_or_else(|| {
            ApiError::field(
                "image",
                "required: an image file (PNG, JPEG or WebP) upload",
            )
        })?;
    let mut job = Job::new(
        common(&form.fields, (0, 0))?,
        Some(InitImageSource {
            field: "image",
            source: ImageSource::Bytes(image.bytes),
            strength: (1.0 - control).max(MIN_STRENGTH) as f32,
        }),
    );
    job.size_from_init = Some(CONTROL_SIZE);
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialects::test_support::{incoming, result};

    fn generate(body: &str) -> Result<Job, ApiError> {
        HolmesAi.parse(&incoming("/svc-1/v1/images/generate", &[], body.as_bytes()))
    }

    fn control(parts: &[(&str, &str)], image: Option<&[u8]>) -> Result<Job, ApiError> {
        let mut form: Vec<(&str, Option<&str>, &[u8])> = parts
            .iter()
            .map(|(k, v)| (*k, None, v.as_bytes()))
            .collect();
        if let Some(img) = image {
            form.push(("image", Some("t.png"), img));
        }
        let (content_type, body) = crate::multipart::form(&form);
        HolmesAi.parse(&incoming(
            "/v1/images/control",
            &[("content-type", content_type.as_str())],
            &body,
        ))
    }

    #[test]
    fn routes_with_and_without_service_id() {
        assert_eq!(endpoint("/v1/images/generate"), Some(Endpoint::Generate));
        assert_eq!(
            endpoint("/abc123/v1/images/control"),
            Some(Endpoint::Control)
        );
        assert_eq!(endpoint("/a/b/v1/images/generate"), None);
        assert_eq!(endpoint("//v1/images/generate"), None);
        assert_eq!(endpoint("/v1/images/other"), None);
    }

    #[test]
    fn the_seed_requests_with_defaults() {
        let job = generate(
            r#"{"model":"m","prompt":"a cat ","steps":20,"height":512,"width":512,"cfg_scale":10}"#,
        )
        .unwrap();
        let r = &job.request;
        assert_eq!(
            (
                r.model.as_str(),
                r.steps,
                r.width,
                r.height,
                r.guidance,
                r.seed
            ),
            ("m", Some(20), Some(512), Some(512), Some(10.0), None)
        );
        let job = generate(r#"{"prompt":"p"}"#).unwrap();
        let r = &job.request;
        assert_eq!(
            (r.model.as_str(), r.steps, r.width, r.guidance),
            (models::SDXL_BASE, Some(30), Some(512), Some(7.0))
        );

        let job = control(
            &[
                ("model", "m"),
                ("prompt", "add an apple"),
                ("negative_prompt", ""),
                ("steps", "30"),
                ("cfg_scale", "10"),
            ],
            Some(b"img"),
        )
        .unwrap();
        let init = job.init.as_ref().unwrap();
        assert_eq!((init.field, init.strength), ("image", 0.65));
        assert_eq!(job.request.negative_prompt, None);
        assert_eq!(job.size_from_init, Some(CONTROL_SIZE));
        assert!(matches!(&init.source, ImageSource::Bytes(b) if b == b"img"));
    }

    #[test]
    fn bad_fields_are_named() {
        for (body, start) in [
            (
                r#"{"prompt":"p","steps":5}"#,
                "steps: must be an integer from 10 to 50",
            ),
            (
                r#"{"prompt":"p","width":100}"#,
                "width: must be a multiple of 64 from 128",
            ),
            (
                r#"{"prompt":"p","height":64}"#,
                "height: must be a multiple of 64 from 128",
            ),
            (
                r#"{"prompt":"p","cfg_scale":36}"#,
                "cfg_scale: must be a number from 0 to 35",
            ),
            (
                r#"{"prompt":"p","seed":4294967296}"#,
                "seed: must be an integer from 0 to 4294967295",
            ),
            (r#"{"steps":20}"#, "prompt: required"),
        ] {
            let e = generate(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.starts_with(start), "{body}: {}", e.message);
        }
        let e = control(&[("prompt", "p")], None).unwrap_err();
        assert!(e.message.starts_with("image: required"), "{}", e.message);
        let e = control(&[("prompt", "p"), ("control_strength", "2")], Some(b"x")).unwrap_err();
        assert!(
            e.message
                .starts_with("control_strength: must be a number from 0 to 1"),
            "{}",
            e.message
        );
    }

    #[test]
    fn answers_raw_png() {
        let job = generate(r#"{"prompt":"p"}"#).unwrap();
        let out = HolmesAi
            .render(&job, result(1), &mut Stash::new("http://e", 0))
            .unwrap();
        assert_eq!(out.body, b"hello");
        assert!(
            out.headers
                .contains(&("content-type".into(), "image/png".into()))
        );
    }
}
