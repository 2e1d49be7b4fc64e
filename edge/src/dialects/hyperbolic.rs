//! Hyperbolic's image generation API (../shared/seeds/hyperbolic-image-generation.txt).
//!
//! - `POST /v1/image/generation`, JSON; key as `Authorization: Bearer <key>`.
//! - Fields: model_name (their list), prompt
//!   (required), height / width (1024; multiples of 8 from 64 to 2048; with an
//!   `image` and no size, the image's size), negative_prompt, image (base64) with
//!   strength (0.8), seed, cfg_scale (7.5), sampler (a scheduler name), steps (30),
//!   backend (auto / tvm / torch: one backend here, all accepted).
//! - prompt_2 / negative_prompt_2 go to SDXL's second text encoder (diffusers'
//!   meaning; refused by models with one encoder), loras (`{"name": weight}`) are
//!   merged from the server's catalog (`[loras]`).
//! - enable_refiner runs the model's catalog refiner after it (SDXL's ensemble of
//!   experts, handing over at 0.8).
//! - controlnet_name (canny, depth, ... : a ControlNet of the server's catalog for the
//!   model's architecture) with controlnet_image (base64, a photo: preprocessed as the
//!   catalog entry says, as Hyperbolic preprocesses it); model_name SDXL-ControlNet /
//!   SD1.5-ControlNet is SDXL1.0-base / SD1.5 with them, and requires them.
//! - style_preset changes the image in ways this server does not implement: sent with
//!   a value, it is refused with a message saying so rather than dropped.
//! - Success: `{"images":[{"index":0,"image":"<base64 PNG>","random_seed":N}],"inference_time":S}`.
//!   Errors: `{code, message, traceId}` (the seed documents none).

use contract::limits::{MAX_SIDE, MAX_STEPS};
use contract::{Controlnet, GenerateRequest, GenerateResult, Lora};
use serde::Serialize;

use super::{Base64Png, Dialect, Incoming, Outgoing};
use crate::api_error::ApiError;
use crate::auth::{BEARER_LOCATION, bearer_token};
use crate::fields::Fields;
use crate::input_image::{ImageLimits, decode_base64};
use crate::job::{self, ImageSource, InitImageSource, InputImage, Job, SizeRule};
use crate::models;
use crate::stash::Stash;

pub const ROUTE: &str = "/v1/image/generation";

const DEFAULT_SIDE: u32 = 1024;
const DEFAULT_STRENGTH: f64 = 0.8;
const BACKENDS: [&str; 3] = ["auto", "tvm", "torch"];
/// img2img without a size: the image's own, within the sizes we accept.
const IMAGE_SIZE: SizeRule = SizeRule {
    step: 8,
    min: 64,
    max: 1024,
};

pub struct Hyperbolic;

impl Dialect for Hyperbolic {
    fn name(&self) -> &'static str {
        "hyperbolic"
    }

    fn field_names(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("model", "model_name"),
            ("guidance", "cfg_scale"),
            ("scheduler", "sampler"),
            ("init_image.strength", "strength"),
            ("init_image.image", "image"),
            ("refiner_start", "enable_refiner"),
            ("controlnets", "controlnet_name"),
            ("controlnets[0].name", "controlnet_name"),
            ("controlnets[0].image", "controlnet_image"),
        ]
    }

    fn key_location(&self) -> &'static str {
        BEARER_LOCATION
    }

    fn credential(&self, req: &Incoming) -> Result<Option<String>, ApiError> {
        Ok(bearer_token(req.header("authorization")).map(String::from))
    }

    fn parse(&self, req: &Incoming) -> Result<Job, ApiError> {
        let f = req.json()?;
        refuse_unsupported(f)?;
        let model = match f.string("model_name")? {
            Some(name) => models::check_hyperbolic("model_name", &name)?,
            None => models::HYPERBOLIC[0].to_string(),
        };
        let (model, controlnet) = controlnet(f, model)?;
        let prompt = job::check_prompt("prompt", f.required_string("prompt")?)?;
        let negative_prompt = job::optional_prompt(f, "negative_prompt")?;
        let prompt_2 = job::optional_prompt(f, "prompt_2")?;
        let negative_prompt_2 = job::optional_prompt(f, "negative_prompt_2")?;
        let loras = loras(f)?;
        // diffusers' ensemble of experts hands over at 0.8 of the schedule by default.
        let refiner_start = (f.yes_no("enable_refiner")? == Some(true)).then_some(0.8);
        if let Some(backend) = f.string("backend")?
            && !BACKENDS.contains(&backend.trim().to_ascii_lowercase().as_str())
        {
            return Err(ApiError::field(
                "backend",
                format!("must be one of {} (got {backend:?})", BACKENDS.join(", ")),
            ));
        }
        let side = |name: &'static str| -> Result<Option<u32>, ApiError> {
            f.integer(name, 0..=i64::from(u32::MAX))?
                .map(|n| job::check_side(name, n as u32, 64, MAX_SIDE, 8))
                .transpose()
        };
        let (width, height) = (side("width")?, side("height")?);
        // Hyperbolic documents no defaults: absent, the model's catalog defaults apply.
        let steps = f
            .integer("steps", 1..=i64::from(MAX_STEPS))?
            .map(|n| n as u32);
        let guidance = f.number("cfg_scale", 0.0..=35.0)?.map(|g| g as f32);
        let seed = job::seed_or_random(f.seed("seed")?);
        let scheduler = f
            .string("sampler")?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let strength = f.number("strength", 0.01..=1.0)?;
        let init = match f.string("image")?.filter(|s| !s.trim().is_empty()) {
            Some(b64) => Some(InitImageSource {
                field: "image",
                source: ImageSource::Bytes(decode_base64(&b64, ImageLimits::default(), "image")?),
                strength: strength.unwrap_or(DEFAULT_STRENGTH) as f32,
            }),
            None if strength.is_some() => {
                return Err(ApiError::field(
                    "strength",
                    "applies to image-to-image only: send it with `image`",
                ));
            }
            None => None,
        };
        let (width, height) = job::optional_size(width, height, DEFAULT_SIDE);
        let size_from_image = init.is_some() && width.is_none();
        let mut job = Job::new(
            GenerateRequest {
                model,
                prompt,
                negative_prompt,
                prompt_2,
                negative_prompt_2,
                loras,
                refiner_start,
                width,
                height,
                steps,
                guidance,
                seed,
                samples: 1,
                scheduler,
                karras: None,
                algorithm_type: None,
                init_image: None,
                ..GenerateRequest::default()
            },
            init,
        );
        if size_from_image {
            job.size_from_init = Some(IMAGE_SIZE);
        }
        if let Some((name, image)) = controlnet {
            job.request.controlnets = Some(vec![Controlnet {
                name,
                image: String::new(),
                preprocess: None,
                scale: None,
                start: None,
                end: None,
            }]);
            job.controls = vec![InputImage {
                field: "controlnet_image",
                source: ImageSource::Bytes(image),
            }];
        }
        Ok(job)
    }

    fn render(
        &self,
        _job: &Job,
        result: GenerateResult,
        _stash: &mut Stash,
    ) -> Result<Outgoing, ApiError> {
        let body = Body {
            images: result
                .images
                .into_iter()
                .enumerate()
                .map(|(index, img)| Image {
                    index,
                    image: Base64Png::new(img.png),
                    random_seed: img.seed,
                })
                .collect(),
            inference_time: f64::from(result.timings.total_ms) / 1000.0,
        };
        Ok(Outgoing::json(200, &body))
    }
}

/// A ControlNet's name and its image's bytes.
type NamedImage = (String, Vec<u8>);

/// `controlnet_name` with `controlnet_image` (base64): the ControlNet and its image; a
/// ControlNet `model_name` becomes its base model and needs both.
fn controlnet(f: &Fields, model: String) -> Result<(String, Option<NamedImage>), ApiError> {
    let name = f
        .string("controlnet_name")?
        .filter(|n| !n.trim().is_empty());
    let image = f
        .string("controlnet_image")?
        .filter(|i| !i.trim().is_empty());
    let base = models::HYPERBOLIC_CONTROLNET
        .iter()
        .find(|(n, _)| *n == model)
        .map(|(_, base)| base.to_string());
    let chosen = match (name, image) {
        (Some(name), Some(image)) => {
            let name = models::check("controlnet_name", Some(name), "")?;
            let bytes = decode_base64(&image, ImageLimits::default(), "controlnet_image")?;
            Some((name, bytes))
        }
        (Some(_), None) => {
            return Err(ApiError::field(
                "controlnet_image",
                "required with controlnet_name (the reference image, base64)",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::field(
                "controlnet_name",
                "required with controlnet_image (canny, depth, ...)",
            ));
        }
        (None, None) if base.is_some() => {
            return Err(ApiError::field(
                "controlnet_name",
                format!("required with model_name {model} (with controlnet_image)"),
            ));
        }
        (None, None) => None,
    };
    Ok((base.unwrap_or(model), chosen))
}

/// Options that would change the image in ways we don't implement: refused when set.
fn refuse_unsupported(f: &Fields) -> Result<(), ApiError> {
    for name in ["style_preset"] {
        if f.string(name)?.is_some_and(|v| !v.trim().is_empty()) {
            return Err(ApiError::field(
                name,
                "not supported by this server; leave it out",
            ));
        }
    }
    Ok(())
}

/// `loras`: `{"name": weight, ...}` as Hyperbolic documents it (null or `{}`: none).
fn loras(f: &Fields) -> Result<Option<Vec<Lora>>, ApiError> {
    let shape =
        "must be an object of LoRA names and weights, e.g. {\"Pixel_Art\": 0.7, \"Logo\": 0.6}";
    match f.get_raw("loras") {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Object(map) => {
            let mut loras = Vec::with_capacity(map.len());
            for (name, weight) in map {
                let strength = weight
                    .as_f64()
                    .filter(|w| w.is_finite() && w.abs() <= f64::from(f32::MAX))
                    .ok_or_else(|| {
                        ApiError::field(
                            "loras",
                            format!("the weight of {name:?} is not a number; {shape}"),
                        )
                    })?;
                loras.push(Lora {
                    name,
                    strength: strength as f32,
                });
            }
            Ok((!loras.is_empty()).then_some(loras))
        }
        _ => Err(ApiError::field("loras", shape)),
    }
}

#[derive(Serialize)]
struct Body {
    images: Vec<Image>,
    inference_time: f64,
}

#[derive(Serialize)]
struct Image {
    index: usize,
    image: Base64Png,
    random_seed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialects::test_support::{incoming, result};
    use serde_json::json;

    fn parse(body: &str) -> Result<Job, ApiError> {
        Hyperbolic.parse(&incoming(ROUTE, &[], body.as_bytes()))
    }

    #[test]
    fn the_seed_request() {
        let job = parse(r#"{"model_name":"SDXL1.0-base","prompt":"a photo of an astronaut riding a horse on mars","height":1024,"width":1024,"backend":"auto"}"#).unwrap();
        let r = &job.request;
        assert_eq!(
            (r.model.as_str(), r.width, r.height, r.steps, r.guidance),
            ("SDXL1.0-base", Some(1024), Some(1024), None, None)
        );
        assert!(job.init.is_none());
    }

    #[test]
    fn img2img_and_options() {
        let job = parse(r#"{"model_name":"SD1.5","prompt":"p","image":"aGVsbG8=","strength":0.5,"seed":7,"sampler":"Euler a","steps":12,"cfg_scale":3,"negative_prompt":"n","prompt_2":"p"}"#).unwrap();
        let init = job.init.as_ref().unwrap();
        assert_eq!(init.strength, 0.5);
        assert!(matches!(&init.source, ImageSource::Bytes(b) if b == b"hello"));
        assert_eq!(job.size_from_init, Some(IMAGE_SIZE));
        let r = &job.request;
        assert_eq!(
            (
                r.seed,
                r.scheduler.as_deref(),
                r.steps,
                r.negative_prompt.as_deref()
            ),
            (Some(7), Some("Euler a"), Some(12), Some("n"))
        );
        assert_eq!(r.prompt_2.as_deref(), Some("p"));
    }

    #[test]
    fn second_prompts_and_loras_go_to_the_server() {
        let job = parse(r#"{"prompt":"p","prompt_2":"q","negative_prompt_2":"n2","loras":{"Pixel_Art":0.7,"Logo":-0.5}}"#).unwrap();
        let r = &job.request;
        assert_eq!(
            (r.prompt_2.as_deref(), r.negative_prompt_2.as_deref()),
            (Some("q"), Some("n2"))
        );
        let mut loras: Vec<(String, f32)> = r
            .loras
            .iter()
            .flatten()
            .map(|l| (l.name.clone(), l.strength))
            .collect();
        loras.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            loras,
            [("Logo".to_string(), -0.5), ("Pixel_Art".to_string(), 0.7)]
        );
        for empty in [r#""loras":{}"#, r#""loras":null"#] {
            let job = parse(&format!(r#"{{"prompt":"p",{empty}}}"#)).unwrap();
            assert_eq!(job.request.loras, None, "{empty}");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        for (body, start) in [
            (
                r#"{"model_name":"SD1.5-ControlNet","prompt":"p"}"#,
                "controlnet_name: required with model_name SD1.5-ControlNet",
            ),
            (
                r#"{"prompt":"p","controlnet_name":"canny"}"#,
                "controlnet_image: required with controlnet_name",
            ),
            (
                r#"{"prompt":"p","controlnet_image":"aGVsbG8="}"#,
                "controlnet_name: required with controlnet_image",
            ),
            (
                r#"{"prompt":"p","controlnet_name":"canny","controlnet_image":"@@"}"#,
                "controlnet_image: not valid base64",
            ),
            (
                r#"{"model_name":"Flux","prompt":"p"}"#,
                "model_name: unknown model",
            ),
            (
                r#"{"prompt":"p","width":1001}"#,
                "width: must be a multiple of 8",
            ),
            (r#"{"prompt":"p","image":"@@@"}"#, "image: not valid base64"),
            (
                r#"{"prompt":"p","strength":0.5}"#,
                "strength: applies to image-to-image only",
            ),
            (
                r#"{"prompt":"p","backend":"gpu"}"#,
                "backend: must be one of auto, tvm, torch",
            ),
            (
                r#"{"prompt":"p","loras":{"Pixel_Art":"strong"}}"#,
                "loras: the weight of \"Pixel_Art\" is not a number",
            ),
            (
                r#"{"prompt":"p","loras":["Pixel_Art"]}"#,
                "loras: must be an object of LoRA names and weights",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.starts_with(start), "{body}: {}", e.message);
        }
    }

    #[test]
    fn response_shape() {
        let job = parse(r#"{"prompt":"p"}"#).unwrap();
        let out = Hyperbolic
            .render(&job, result(1), &mut Stash::new("http://e", 0))
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            body,
            json!({"images":[{"index":0,"image":"aGVsbG8=","random_seed":9}],"inference_time":1.5})
        );
    }

    #[test]
    fn controlnet_models_run_their_base_with_the_controlnet() {
        let job = parse(r#"{"model_name":"SDXL-ControlNet","prompt":"p","controlnet_name":"canny","controlnet_image":"aGVsbG8=","cfg_scale":15}"#).unwrap();
        assert_eq!(job.request.model, "SDXL1.0-base");
        let nets = job.request.controlnets.as_ref().unwrap();
        assert_eq!((nets.len(), nets[0].name.as_str()), (1, "canny"));
        assert_eq!(job.controls.len(), 1);
        assert_eq!(job.controls[0].field, "controlnet_image");
        assert_eq!(
            job.controls[0].source,
            ImageSource::Bytes(b"hello".to_vec())
        );
        // Any model may take one.
        let job = parse(r#"{"model_name":"SD1.5","prompt":"p","controlnet_name":"depth","controlnet_image":"aGVsbG8="}"#).unwrap();
        assert_eq!(job.request.model, "SD1.5");
        assert_eq!(job.request.controlnets.unwrap()[0].name, "depth");
    }
}
