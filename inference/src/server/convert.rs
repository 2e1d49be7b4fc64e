//! Between the contract's records (wit/) and the engine's types: validation of a
//! generate-request (the server trusts no client, not even our edge), and the
//! encoding of results.

use std::time::{Duration, Instant};

use base64::Engine as _;
use contract::{Error, GenerateRequest, GeneratedImage, Timings};

use super::catalog::{AddOn, Catalog, Defaults};
use crate::engine::ErrorKind;
use crate::engine::depth::DepthEstimator;
use crate::engine::pipeline::Architecture;
use crate::engine::preprocess::Preprocess;
use crate::engine::safety::Replacement;
use crate::engine::{
    Emphasis, EngineError, GenerateParams, MAX_CONTROLNETS, ModelInfo, SkipLayerGuidance,
    StageTimings,
};
use contract::init_image;
use contract::limits::{
    MAX_INIT_PIXELS, MAX_MODEL_CHARS, MAX_PROMPT_CHARS, MAX_SAMPLES, MAX_SIDE, MAX_STEPS,
};
use contract::wire::Images;
use std::sync::Arc;

/// The sides, steps and guidance a request (or a catalog default) may ask for, in one
/// place for both: the engine then checks the model's own VAE factor and schedule.
pub fn side_ok(v: u32) -> bool {
    (64..=MAX_SIDE).contains(&v) && v.is_multiple_of(8)
}

pub fn steps_ok(steps: u32) -> bool {
    (1..=MAX_STEPS).contains(&steps)
}

pub fn guidance_ok(g: f32) -> bool {
    g.is_finite() && (0.0..=100.0).contains(&g)
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidRequest(msg.into())
}

/// A checked request, the catalog's defaults applied, whose settings the request and
/// the catalog left unset come from the model's own configs once it is loaded
/// ([`Draft::resolve`]).
#[derive(Clone, Debug)]
pub struct Draft {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub prompt_2: Option<String>,
    pub negative_prompt_2: Option<String>,
    pub clip_skip: Option<usize>,
    pub emphasis: Emphasis,
    /// Check the images, replacing flagged ones so.
    pub safety: Option<Replacement>,
    /// Run the model's refiner from this fraction of the schedule.
    pub refiner_start: Option<f64>,
    /// The VAE and LoRAs it runs with (requests share a batch only with the same ones).
    pub add_ons: AddOnChoice,
    pub seed: u64,
    pub samples: usize,
    pub scheduler: Option<String>,
    pub karras: Option<bool>,
    pub algorithm_type: Option<String>,
    pub init_image: Option<(image::DynamicImage, f64)>,
    /// Inpainting: the mask, fitted as the init image.
    pub mask: Option<image::DynamicImage>,
    /// ControlNets (their nets found and loaded by the worker for the model) and
    /// guess mode.
    pub controls: Vec<ControlChoice>,
    pub guess_mode: bool,
    /// None: the model's default.
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    /// SD 3.5's skip-layer guidance layers (the catalog entry's).
    pub skip_layer_guidance: Option<Vec<usize>>,
}

impl Draft {
    pub fn resolve(&self, info: &ModelInfo) -> GenerateParams {
        GenerateParams {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            prompt_2: self.prompt_2.clone(),
            negative_prompt_2: self.negative_prompt_2.clone(),
            clip_skip: self.clip_skip,
            emphasis: self.emphasis,
            width: self.width.unwrap_or(info.default_width),
            height: self.height.unwrap_or(info.default_height),
            steps: self.steps.unwrap_or(info.default_steps),
            guidance: self.guidance.unwrap_or(info.default_guidance),
            seed: self.seed,
            samples: self.samples,
            scheduler: self.scheduler.clone(),
            karras: self.karras,
            algorithm_type: self.algorithm_type.clone(),
            init_image: self.init_image.clone(),
            mask: self.mask.clone(),
            // The nets depend on the model's architecture: the worker adds them.
            controls: Vec::new(),
            guess_mode: self.guess_mode,
            // A catalog setting of SD 3 models (other families have no such layers).
            skip_layer_guidance: self
                .skip_layer_guidance
                .clone()
                .filter(|_| info.architecture == Architecture::StableDiffusion3.name())
                .map(SkipLayerGuidance::with_layers),
        }
    }
}

/// Checks a request and applies the catalog's defaults. Sizes are checked as
/// multiples of 8 here (every SD VAE's factor); the engine checks the model's own.
/// The checks on what a request names and says, before its model is looked up (an
/// unknown model's name is echoed in the refusal) and before anything is decoded.
pub fn check_text(req: &GenerateRequest) -> Result<(), Error> {
    model_name_ok(&req.model)?;
    for (name, text) in [
        ("prompt", Some(&req.prompt)),
        ("negative_prompt", req.negative_prompt.as_ref()),
        ("prompt_2", req.prompt_2.as_ref()),
        ("negative_prompt_2", req.negative_prompt_2.as_ref()),
    ] {
        if text.is_some_and(|t| t.chars().count() > MAX_PROMPT_CHARS) {
            return Err(invalid(format!(
                "{name}: longer than {MAX_PROMPT_CHARS} characters"
            )));
        }
    }
    Ok(())
}

/// A model name short enough to be one (and to be repeated in a refusal).
pub fn model_name_ok(model: &str) -> Result<(), Error> {
    if model.chars().count() > MAX_MODEL_CHARS {
        return Err(invalid(format!(
            "model: longer than {MAX_MODEL_CHARS} characters, so not a model name"
        )));
    }
    Ok(())
}

/// `images`: the request's images, which `contract::wire::read` took out of the body
/// (`req.init_image` keeps its strength and mask options).
pub fn to_draft(
    req: &GenerateRequest,
    images: &Images,
    defaults: &Defaults,
) -> Result<Draft, Error> {
    let width = req.width.or(defaults.width);
    let height = req.height.or(defaults.height);
    for (name, v) in [("width", width), ("height", height)] {
        if let Some(v) = v
            && !side_ok(v)
        {
            return Err(invalid(format!(
                "{name}: must be a multiple of 8 from 64 to {MAX_SIDE} (got {v})"
            )));
        }
    }
    let steps = req.steps.or(defaults.steps);
    if let Some(steps) = steps
        && !steps_ok(steps)
    {
        return Err(invalid(format!(
            "steps: must be from 1 to {MAX_STEPS} (got {steps})"
        )));
    }
    let guidance = req.guidance.or(defaults.guidance);
    if let Some(g) = guidance
        && !guidance_ok(g)
    {
        return Err(invalid(format!(
            "guidance: must be from 0 to 100 (got {g})"
        )));
    }
    if req.samples == 0 || req.samples > MAX_SAMPLES {
        return Err(invalid(format!(
            "samples: must be from 1 to {MAX_SAMPLES} (got {})",
            req.samples
        )));
    }
    // Fitted to the size asked for; without one, the model's default size comes
    // later and the engine resizes (diffusers' own preprocessing).
    let fitted = |bytes: &[u8], field: &str| -> Result<image::DynamicImage, Error> {
        let mut img = init_image::decode_field(bytes, MAX_INIT_PIXELS, field)?;
        if let (Some(w), Some(h)) = (width, height) {
            img = init_image::fit(img, w, h);
        }
        Ok(image::DynamicImage::ImageRgb8(img))
    };
    let init_image = match (&req.init_image, images.init_image.as_deref()) {
        (None, None) => None,
        (None, Some(_)) | (Some(_), None) => {
            return Err(invalid(
                "init_image: the image and its strength come together",
            ));
        }
        // The strength's range is the engine's to check (Pipeline::plan), once.
        (Some(init), Some(bytes)) => {
            Some((fitted(bytes, "init_image.image")?, decimal(init.strength)))
        }
    };
    let mask = match (&req.init_image, images.mask.as_deref()) {
        (Some(_), Some(bytes)) => Some(fitted(bytes, "init_image.mask")?),
        _ => None,
    };
    Ok(Draft {
        prompt: req.prompt.clone(),
        negative_prompt: req.negative_prompt.clone(),
        prompt_2: req.prompt_2.clone(),
        negative_prompt_2: req.negative_prompt_2.clone(),
        clip_skip: req.clip_skip.map(|k| k as usize),
        emphasis: match req.emphasis.as_deref() {
            None => Emphasis::None,
            Some(e) => e
                .parse()
                .map_err(|_| invalid(format!("emphasis: must be a1111 or none (got {e:?})")))?,
        },
        safety: match req.safety_checker.as_deref() {
            None => None,
            Some(how) => Some(
                how.parse()
                    .map_err(|e| invalid(format!("safety_checker: {e:#}")))?,
            ),
        },
        refiner_start: match req.refiner_start.map(decimal) {
            Some(s) if !(s > 0.0 && s < 1.0) => {
                return Err(invalid(format!(
                    "refiner_start: must be between 0 and 1 (got {s})"
                )));
            }
            s => s,
        },
        add_ons: AddOnChoice::default(),
        seed: req.seed.unwrap_or_else(crate::random_seed),
        samples: req.samples as usize,
        scheduler: req.scheduler.clone().or_else(|| defaults.scheduler.clone()),
        karras: req.karras,
        algorithm_type: req.algorithm_type.clone(),
        init_image,
        mask,
        controls: Vec::new(),
        guess_mode: req.guess_mode.unwrap_or(false),
        width: width.map(|v| v as usize),
        height: height.map(|v| v as usize),
        steps: steps.map(|v| v as usize),
        guidance: guidance.map(f64::from),
        skip_layer_guidance: defaults.skip_layer_guidance.clone(),
    })
}

/// A request's ControlNet before its net is loaded.
#[derive(Clone, Debug)]
pub struct ControlChoice {
    /// Its name as the request gave it.
    pub name: String,
    /// The catalog entries of that name (one per architecture): the worker takes the
    /// model's.
    pub entries: Vec<AddOn>,
    /// The control image: decoded, fitted as an init image, preprocessed.
    pub image: image::DynamicImage,
    pub scale: f64,
    pub start: f64,
    pub end: f64,
}

/// The request's ControlNets: each name found in the catalog, its image (`images`)
/// decoded, fitted to the draft's size and preprocessed (the request's `preprocess`, else
/// the catalog entry's, else none). Scales and windows are the engine's to check.
pub fn controls(
    req: &GenerateRequest,
    images: &Images,
    catalog: &Catalog,
    draft: &Draft,
    depth: &dyn Fn() -> anyhow::Result<Arc<DepthEstimator>>,
) -> Result<Vec<ControlChoice>, Error> {
    let asked = req.controlnets.as_deref().unwrap_or_default();
    if asked.len() > MAX_CONTROLNETS {
        return Err(invalid(format!(
            "controlnets: at most {MAX_CONTROLNETS} (got {})",
            asked.len()
        )));
    }
    let mut out = Vec::with_capacity(asked.len());
    for (i, c) in asked.iter().enumerate() {
        model_name_ok(&c.name)
            .map_err(|_| invalid(format!("controlnets[{i}].name: longer than a name")))?;
        let entries: Vec<AddOn> = catalog
            .controlnets
            .lookup_all(&c.name)
            .into_iter()
            .cloned()
            .collect();
        let Some(first) = entries.first() else {
            return Err(invalid(format!(
                "controlnets[{i}].name: unknown ControlNet {:?}; {}",
                c.name,
                catalog.controlnets.names()
            )));
        };
        let how = c
            .preprocess
            .as_deref()
            .or(first.preprocess.as_deref())
            .unwrap_or("none");
        let how: Preprocess = how.parse().map_err(|e: anyhow::Error| {
            invalid(format!("controlnets[{i}].{}", param_message(&e)))
        })?;
        let bytes = images
            .controls
            .get(i)
            .ok_or_else(|| invalid(format!("controlnets[{i}].image: required")))?;
        let field = format!("controlnets[{i}].image");
        let mut img = init_image::decode_field(bytes, MAX_INIT_PIXELS, &field)?;
        if let (Some(w), Some(h)) = (draft.width, draft.height) {
            img = init_image::fit(img, w as u32, h as u32);
        }
        let model = match how {
            Preprocess::Depth if catalog.depth_estimator.is_some() => {
                Some(depth().map_err(|e| Error::Internal(format!("the depth model: {e:#}")))?)
            }
            _ => None,
        };
        let image = how
            .apply(image::DynamicImage::ImageRgb8(img), model.as_deref())
            .map_err(|e| match ErrorKind::of(&e) {
                ErrorKind::InvalidParam => {
                    invalid(format!("controlnets[{i}].{}", param_message(&e)))
                }
                _ => Error::Internal(format!("the {} preprocessor: {e:#}", how.name())),
            })?;
        out.push(ControlChoice {
            name: c.name.clone(),
            entries,
            image,
            scale: c.scale.map_or(1.0, decimal),
            start: c.start.map_or(0.0, decimal),
            end: c.end.map_or(1.0, decimal),
        });
    }
    Ok(out)
}

/// Most LoRAs one request may merge.
pub const MAX_LORAS: usize = 8;
/// Most textual-inversion embeddings one request may use.
pub const MAX_EMBEDDINGS: usize = 16;
/// The strengths a LoRA may have (diffusers takes any; beyond this no image survives).
pub const LORA_STRENGTH: std::ops::RangeInclusive<f64> = -10.0..=10.0;

/// The VAE and LoRAs a request asks for, found in the catalog.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AddOnChoice {
    pub vae: Option<AddOn>,
    /// Each LoRA with its strength, in the request's order.
    pub loras: Vec<(AddOn, f64)>,
    /// Textual-inversion embeddings, in the request's order.
    pub embeddings: Vec<AddOn>,
}

impl AddOnChoice {
    pub fn is_empty(&self) -> bool {
        self.vae.is_none() && self.loras.is_empty() && self.embeddings.is_empty()
    }
}

/// The catalog entries of `req`'s `vae` and `loras`; a name the catalog lacks is an
/// invalid request listing those it has.
pub fn add_ons(req: &GenerateRequest, catalog: &Catalog) -> Result<AddOnChoice, Error> {
    let vae = match req.vae.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(name) => {
            model_name_ok(name).map_err(|_| invalid("vae: longer than a VAE name"))?;
            Some(catalog.vaes.lookup(name).cloned().ok_or_else(|| {
                invalid(format!(
                    "vae: unknown VAE {name:?}; {}",
                    catalog.vaes.names()
                ))
            })?)
        }
    };
    let asked = req.loras.as_deref().unwrap_or_default();
    if asked.len() > MAX_LORAS {
        return Err(invalid(format!(
            "loras: at most {MAX_LORAS} LoRAs (got {})",
            asked.len()
        )));
    }
    let mut loras = Vec::with_capacity(asked.len());
    for l in asked {
        model_name_ok(&l.name).map_err(|_| invalid("loras: longer than a LoRA name"))?;
        let strength = decimal(l.strength);
        if !LORA_STRENGTH.contains(&strength) {
            return Err(invalid(format!(
                "loras: the strength of {:?} must be from {} to {} (got {})",
                l.name,
                LORA_STRENGTH.start(),
                LORA_STRENGTH.end(),
                l.strength
            )));
        }
        let entry = catalog.loras.lookup(&l.name).cloned().ok_or_else(|| {
            invalid(format!(
                "loras: unknown LoRA {:?}; {}",
                l.name,
                catalog.loras.names()
            ))
        })?;
        loras.push((entry, strength));
    }
    let asked = req.embeddings.as_deref().unwrap_or_default();
    if asked.len() > MAX_EMBEDDINGS {
        return Err(invalid(format!(
            "embeddings: at most {MAX_EMBEDDINGS} (got {})",
            asked.len()
        )));
    }
    let mut embeddings: Vec<AddOn> = Vec::with_capacity(asked.len());
    for name in asked {
        model_name_ok(name).map_err(|_| invalid("embeddings: longer than a name"))?;
        let entry = catalog.embeddings.lookup(name).cloned().ok_or_else(|| {
            invalid(format!(
                "embeddings: unknown embedding {name:?}; {}",
                catalog.embeddings.names()
            ))
        })?;
        // The same one twice would add its token twice.
        if !embeddings.contains(&entry) {
            embeddings.push(entry);
        }
    }
    Ok(AddOnChoice {
        vae,
        loras,
        embeddings,
    })
}

/// The f64 a client meant by an f32 on the wire: 0.7, not 0.699999988079071. It
/// matters beyond messages: img2img keeps `int(steps x strength)` steps, and
/// 10 x 0.699999988 would keep 6 where diffusers, given 0.7, keeps 7.
fn decimal(v: f32) -> f64 {
    // f32's Display is the shortest decimal that reads back as the same f32.
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// The message of an engine's invalid-parameter error, in the contract's terms
/// ("field: what is accepted").
pub fn param_message(err: &anyhow::Error) -> String {
    match err.downcast_ref::<EngineError>() {
        Some(EngineError::InvalidParam { param, message }) => {
            format!("{}: {message}", contract_field(param))
        }
        _ => format!("{err:#}"),
    }
}

/// The contract's name for an engine parameter.
fn contract_field(param: &str) -> &str {
    match param {
        "strength" => "init_image.strength",
        "init_image" => "init_image.image",
        "mask" => "init_image.mask",
        other => other,
    }
}

/// The images in PNG, each with its seed and the safety checker's verdict (`nsfw[i]`).
pub fn encode_images(
    images: &[(image::RgbImage, u64)],
    nsfw: &[Option<bool>],
) -> anyhow::Result<Vec<GeneratedImage>> {
    images
        .iter()
        .enumerate()
        .map(|(i, (img, seed))| {
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
            Ok(GeneratedImage {
                png: base64::engine::general_purpose::STANDARD.encode(png),
                seed: *seed,
                width: img.width(),
                height: img.height(),
                nsfw: nsfw.get(i).copied().flatten(),
            })
        })
        .collect()
}

pub fn timings(queued: Duration, stages: &StageTimings, started: Instant) -> Timings {
    let ms = |d: Duration| d.as_millis().min(u128::from(u32::MAX)) as u32;
    Timings {
        queued_ms: ms(queued),
        prepare_ms: ms(stages.prepare),
        denoise_ms: ms(stages.denoise),
        decode_ms: ms(stages.decode),
        total_ms: ms(started.elapsed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An 8x8 PNG.
    const TINY_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8wcXFgA0wYRUdtBIAse4A7AgtPbsAAAAASUVORK5CYII=";

    fn info() -> ModelInfo {
        ModelInfo {
            architecture: "stable-diffusion-xl".into(),
            pipeline_class: "StableDiffusionXLPipeline".into(),
            default_width: 1024,
            default_height: 1024,
            vae_scale_factor: 8,
            default_scheduler: "EulerDiscreteScheduler".into(),
            supported_schedulers: vec![],
            prediction_type: "epsilon".into(),
            default_steps: 20,
            default_guidance: 5.0,
            uses_cfg_embedding: false,
        }
    }

    fn request() -> GenerateRequest {
        GenerateRequest {
            model: "m".into(),
            prompt: "p".into(),
            width: Some(512),
            height: Some(512),
            steps: Some(4),
            guidance: Some(5.0),
            ..GenerateRequest::default()
        }
    }

    /// As the server reads a request: its JSON body through `wire::read`, then `to_draft`.
    fn draft(req: &GenerateRequest, defaults: &Defaults) -> Result<Draft, Error> {
        let body = serde_json::to_vec(req).unwrap();
        let got = contract::wire::read(None, body.into())?;
        check_text(&got.request)?;
        to_draft(&got.request, &got.images, defaults)
    }

    fn to_params(req: &GenerateRequest, info: &ModelInfo) -> Result<GenerateParams, Error> {
        draft(req, &Defaults::default()).map(|d| d.resolve(info))
    }

    #[test]
    fn loras_and_vaes_are_looked_up_in_the_catalog() {
        let catalog = Catalog::parse(
            "default = \"m\"\n[models.m]\nsource = \"x\"\n[loras.pixel]\nsource = \"p.safetensors\"\naliases = [\"Pixel_Art\"]\n[vaes.fix]\nsource = \"v\"",
        )
        .unwrap();
        let lora = |name: &str, strength: f32| contract::Lora {
            name: name.into(),
            strength,
        };
        let with = |loras: Vec<contract::Lora>, vae: Option<&str>| GenerateRequest {
            loras: Some(loras),
            vae: vae.map(String::from),
            ..request()
        };
        let got = add_ons(&with(vec![lora("pixel_art", 0.7)], Some("FIX")), &catalog).unwrap();
        assert_eq!(got.loras[0].0.name, "pixel");
        assert_eq!(got.loras[0].1, 0.7);
        assert_eq!(got.vae.unwrap().name, "fix");
        assert!(add_ons(&request(), &catalog).unwrap().is_empty());
        for (req, says) in [
            (
                with(vec![lora("x", 1.0)], None),
                "loras: unknown LoRA \"x\"; this server has: pixel, Pixel_Art",
            ),
            (
                with(vec![], Some("y")),
                "vae: unknown VAE \"y\"; this server has: fix",
            ),
            (
                with(vec![lora("pixel", 11.0)], None),
                "loras: the strength of \"pixel\" must be from -10 to 10",
            ),
            (
                with(vec![lora("pixel", 1.0); 9], None),
                "loras: at most 8 LoRAs",
            ),
            (
                GenerateRequest {
                    embeddings: Some(vec!["cat-toy".into()]),
                    ..request()
                },
                "embeddings: unknown embedding \"cat-toy\"; this server's catalog has no embeddings",
            ),
        ] {
            let e = add_ons(&req, &catalog).unwrap_err().to_string();
            assert!(e.starts_with(says), "{e}");
        }
        let odd = GenerateRequest {
            emphasis: Some("compel".into()),
            ..request()
        };
        let e = draft(&odd, &Defaults::default()).unwrap_err().to_string();
        assert!(e.starts_with("emphasis: must be a1111 or none"), "{e}");
    }

    #[test]
    fn valid_requests_become_params_with_a_seed() {
        let p = to_params(&request(), &info()).unwrap();
        assert_eq!((p.width, p.height, p.steps, p.samples), (512, 512, 4, 1));
        assert!(p.seed >= 1 && p.seed <= u64::from(u32::MAX));
        let p = to_params(
            &GenerateRequest {
                seed: Some(u64::MAX),
                ..request()
            },
            &info(),
        )
        .unwrap();
        assert_eq!(p.seed, u64::MAX);
    }

    /// What the request leaves out comes from the catalog, then from the model.
    #[test]
    fn defaults_come_from_the_catalog_then_the_model() {
        let bare = GenerateRequest {
            width: None,
            height: Some(256),
            steps: None,
            guidance: None,
            ..request()
        };
        let p = draft(&bare, &Defaults::default()).unwrap().resolve(&info());
        assert_eq!(
            (p.width, p.height, p.steps, p.guidance),
            (1024, 256, 20, 5.0)
        );
        let catalog = Defaults {
            width: Some(640),
            height: Some(640),
            steps: Some(2),
            guidance: Some(0.0),
            scheduler: Some("Euler a".into()),
            skip_layer_guidance: None,
        };
        let p = draft(&bare, &catalog).unwrap().resolve(&info());
        assert_eq!((p.width, p.height, p.steps, p.guidance), (640, 256, 2, 0.0));
        assert_eq!(p.scheduler.as_deref(), Some("Euler a"));
    }

    #[test]
    fn out_of_range_fields_are_named() {
        for (req, needle) in [
            (
                GenerateRequest {
                    width: Some(500),
                    ..request()
                },
                "width: must be a multiple of 8",
            ),
            (
                GenerateRequest {
                    height: Some(8192),
                    ..request()
                },
                "height: must be a multiple of 8 from 64 to 2048",
            ),
            (
                GenerateRequest {
                    steps: Some(0),
                    ..request()
                },
                "steps: must be from 1",
            ),
            (
                GenerateRequest {
                    guidance: Some(101.0),
                    ..request()
                },
                "guidance: must be from 0 to 100",
            ),
            (
                GenerateRequest {
                    samples: 5,
                    ..request()
                },
                "samples: must be from 1 to 4",
            ),
            (
                GenerateRequest {
                    steps: Some(101),
                    ..request()
                },
                "steps: must be from 1 to 100",
            ),
            (
                GenerateRequest {
                    negative_prompt: Some("x".repeat(10_001)),
                    ..request()
                },
                "negative_prompt: longer than 10000 characters",
            ),
            (
                GenerateRequest {
                    model: "m".repeat(201),
                    ..request()
                },
                "model: longer than 200 characters",
            ),
            (
                GenerateRequest {
                    init_image: Some(contract::InitImage {
                        image: "!!".into(),
                        strength: 0.5,
                        mask: None,
                    }),
                    ..request()
                },
                "init_image.image: not valid base64",
            ),
            (
                GenerateRequest {
                    init_image: Some(contract::InitImage {
                        image: "aGVsbG8=".into(),
                        strength: 0.5,
                        mask: None,
                    }),
                    ..request()
                },
                "init_image.image:",
            ),
            (
                GenerateRequest {
                    init_image: Some(contract::InitImage {
                        image: TINY_PNG.into(),
                        strength: 0.5,
                        mask: Some("aGVsbG8=".into()),
                    }),
                    ..request()
                },
                "init_image.mask: not a PNG, JPEG or WebP image",
            ),
        ] {
            match to_params(&req, &info()) {
                Err(Error::InvalidRequest(m)) => assert!(m.starts_with(needle), "{m}"),
                other => panic!("expected InvalidRequest({needle}), got {other:?}"),
            }
        }
    }

    #[test]
    fn a_strength_on_the_wire_is_the_decimal_the_client_sent() {
        for (wire, meant) in [(0.7f32, 0.7), (0.35, 0.35), (1.0, 1.0), (0.01, 0.01)] {
            assert_eq!(decimal(wire), meant);
        }
        // So img2img keeps diffusers' number of steps: int(10 x 0.7) = 7.
        assert_eq!((10.0 * decimal(0.7)) as usize, 7);
        assert_eq!((10.0 * f64::from(0.7f32)) as usize, 6);
    }

    #[test]
    fn engine_parameter_errors_read_as_contract_fields() {
        let e = EngineError::invalid("strength", "must be in (0, 1]");
        assert_eq!(param_message(&e), "init_image.strength: must be in (0, 1]");
        let e = EngineError::invalid("scheduler", "unknown; supported: DDIM, Euler");
        assert_eq!(
            param_message(&e),
            "scheduler: unknown; supported: DDIM, Euler"
        );
    }
}
