//! ModelsLab's enterprise API (../shared/seeds/modelslab-enterprise-img2img.txt).
//!
//! - `POST /api/v1/enterprise/img2img` and `/api/v1/enterprise/text2img`, JSON; the
//!   key in the body (`key`). Numbers may come as strings ("512"), as their samples
//!   send them. The same under the paths ModelsLab's SDKs, CLI and other documents
//!   call ([`FAMILIES`]), and inpainting (`.../inpaint`: init_image and mask_image,
//!   white repaints, black keeps; an inpainting model's UNet, or any model by
//!   blending).
//! - Aliases some of ModelsLab's clients send: `steps` (num_inference_steps), `image`
//!   (init_image), `prompt_strength` (strength).
//! - Fields: model_id, prompt (required), negative_prompt, init_image (img2img,
//!   required: a URL, or base64 with "base64":"yes"), width / height (512; multiples
//!   of 8 from 64 to 1024), samples 1-4 (1), num_inference_steps 1-50 (30),
//!   guidance_scale 1-20 (7.5), strength (0.7), scheduler (their list; the engine
//!   refuses the ones that can't sample SD models, with the reason), use_karras_sigmas
//!   (yes: Karras sigmas where the scheduler has them), algorithm_type (with
//!   DPMSolverMultistepScheduler: dpmsolver++ or sde-dpmsolver++), seed (null:
//!   random), track_id, base64, temp.
//! - lora_model (comma-separated names from the server's catalog) with lora_strength
//!   (one number for all, or one per LoRA; absent: 1), vae (a catalog name) and
//!   clip_skip (1-8, diffusers' meaning) are applied.
//! - embeddings_model: comma-separated textual-inversion names from the catalog.
//! - Prompts are read with A1111's emphasis (`(word:1.3)`, 75-token chunks), as
//!   ModelsLab's prompts are written; `"emphasis": "none"` (this server's field) reads
//!   them as diffusers does.
//! - safety_checker (yes unless "no") runs the server's safety checker; flagged images
//!   are replaced as safety_checker_type says (sensitive_content_text, blur, pixelate,
//!   black) and `nsfw_content_detected` lists each image's verdict.
//! - Every other field (webhook, enhance_prompt, tomesd, ...) is
//!   accepted and listed in `meta.ignored`, never dropped silently.
//! - Success: `{"status":"success","generationTime":S,"id":N,"output":[...],"meta":{...}}`:
//!   `output` holds links the edge serves itself (images kept 24 hours in Spin's
//!   key-value store, like their temp links), or base64 PNGs with "base64":"yes".
//! - Errors: `{"status":"error","message":"..."}` (plus the traceId).

use base64::Engine;
use contract::limits::MAX_SAMPLES;
use contract::{Controlnet, GenerateRequest, GenerateResult, Lora};
use serde_json::{Value, json};

use super::{Dialect, Incoming, Outgoing, with_retry_after};
use crate::api_error::ApiError;
use crate::fields::Fields;
use crate::input_image::{ImageLimits, decode_base64};
use crate::job::{self, ImageSource, InitImageSource, InputImage, Job};
use crate::models;
use crate::stash::Stash;

const DEFAULT_SIDE: u32 = 512;
const DEFAULT_STRENGTH: f64 = 0.7;
/// ControlNet's `strength` (with an init image), as its page documents it.
const CONTROL_STRENGTH: f64 = 0.55;
/// How flagged images are replaced (`safety_checker_type`).
const SAFETY_TYPES: [&str; 4] = ["sensitive_content_text", "blur", "pixelate", "black"];

/// The fields this dialect reads; anything else present goes to `meta.ignored`.
const KNOWN: [&str; 40] = [
    "controlnet_model",
    "controlnet_type",
    "auto_hint",
    "guess_mode",
    "controlnet_conditioning_scale",
    "control_image",
    "controlnet_image",
    "mask_image",
    "steps",
    "image",
    "prompt_strength",
    "base64",
    "safety_checker",
    "safety_checker_type",
    "emphasis",
    "embeddings_model",
    "lora_model",
    "lora_strength",
    "vae",
    "clip_skip",
    "key",
    "model_id",
    "prompt",
    "negative_prompt",
    "init_image",
    "width",
    "height",
    "samples",
    "num_inference_steps",
    "guidance_scale",
    "strength",
    "scheduler",
    "use_karras_sigmas",
    "algorithm_type",
    "seed",
    "track_id",
    "temp",
    "aspect_ratio",
    "init_image_2",
    "webhook",
];
/// Fields only image-to-image (and inpainting) reads.
const IMG2IMG_ONLY: [&str; 5] = [
    "init_image",
    "strength",
    "init_image_2",
    "image",
    "prompt_strength",
];
/// Fields only inpainting reads.
const INPAINT_ONLY: [&str; 1] = ["mask_image"];
/// Fields only ControlNet requests read.
const CONTROL_ONLY: [&str; 7] = [
    "controlnet_model",
    "controlnet_type",
    "auto_hint",
    "guess_mode",
    "controlnet_conditioning_scale",
    "control_image",
    "controlnet_image",
];

/// The longest side an `aspect_ratio` asks for.
const ASPECT_MAX_SIDE: u32 = 1024;

/// v7's `aspect_ratio` ("16:9"): the largest size of that shape with sides multiples
/// of 8 and at most 1024.
fn aspect_ratio(f: &Fields) -> Result<Option<(u32, u32)>, ApiError> {
    let Some(text) = f.string("aspect_ratio")? else {
        return Ok(None);
    };
    let parsed = text
        .trim()
        .split_once(':')
        .and_then(|(w, h)| Some((w.trim().parse::<f64>().ok()?, h.trim().parse::<f64>().ok()?)))
        .filter(|(w, h)| *w > 0.0 && *h > 0.0 && w / h <= 4.0 && h / w <= 4.0);
    let Some((w, h)) = parsed else {
        return Err(ApiError::field(
            "aspect_ratio",
            format!("must be W:H with sides at most 4 times each other, like 16:9 (got {text:?})"),
        ));
    };
    let scale = f64::from(ASPECT_MAX_SIDE) / w.max(h);
    let side = |v: f64| (((v * scale) / 8.0).round() as u32 * 8).clamp(64, ASPECT_MAX_SIDE);
    Ok(Some((side(w), side(h))))
}

/// A comma-separated list of names ("contrast-fix,yae-miko-genshin"), as ModelsLab takes
/// several LoRAs or embeddings.
fn names(f: &Fields, field: &str) -> Result<Vec<String>, ApiError> {
    Ok(f.string(field)?
        .unwrap_or_default()
        .split(',')
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty() && n != "null")
        .collect())
}

/// `lora_model` ("a,b") with `lora_strength` (a number for all, or "0.7,0.5" one per
/// LoRA; absent: 1 each).
fn loras(f: &Fields) -> Result<Option<Vec<Lora>>, ApiError> {
    let names = names(f, "lora_model")?;
    let strengths: Vec<f32> = match f.get_raw("lora_strength") {
        Value::Null => Vec::new(),
        Value::Number(n) => vec![n.as_f64().unwrap_or(f64::NAN) as f32],
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<f32>().map_err(|_| s.to_string()))
            .collect::<Result<_, _>>()
            .map_err(|s| {
                ApiError::field(
                    "lora_strength",
                    format!("{s:?} is not a number; send one number, or one per LoRA separated by commas (\"0.7,0.5\")"),
                )
            })?,
        _ => {
            return Err(ApiError::field(
                "lora_strength",
                "must be a number, or numbers separated by commas (\"0.7,0.5\")",
            ));
        }
    };
    if strengths.iter().any(|s| !s.is_finite()) {
        return Err(ApiError::field("lora_strength", "must be finite numbers"));
    }
    if names.is_empty() {
        return Ok(None);
    }
    let strength_of = |i: usize| match strengths.as_slice() {
        [] => Ok(1.0),
        [one] => Ok(*one),
        many if many.len() == names.len() => Ok(many[i]),
        many => Err(ApiError::field(
            "lora_strength",
            format!(
                "{} strengths for {} LoRAs in lora_model: send one for all, or one per LoRA",
                many.len(),
                names.len()
            ),
        )),
    };
    let loras = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Ok(Lora {
                name: name.clone(),
                strength: strength_of(i)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Some(loras))
}

/// `init_image` (or `field`, its alias): a string, or (v7's image editing) a list of one.
fn one_init_image(f: &Fields, field: &'static str) -> Result<String, ApiError> {
    if f.has("init_image_2") {
        return Err(ApiError::field(
            "init_image_2",
            "a second input image is not supported here; send one init_image",
        ));
    }
    match f.get_raw(field) {
        Value::Array(items) => match items.as_slice() {
            [Value::String(one)] if !one.trim().is_empty() => Ok(one.clone()),
            _ => Err(ApiError::field(
                field,
                format!(
                    "one image is supported here: a string, or a list of one (got a list of {})",
                    items.len()
                ),
            )),
        },
        _ => f.required_string(field),
    }
}

/// An image field's text: a URL, or with `"base64": "yes"` the image itself; and how
/// `meta` shows it.
fn image_source(
    field: &'static str,
    text: &str,
    base64_io: bool,
) -> Result<(ImageSource, Value), ApiError> {
    if base64_io {
        let bytes = decode_base64(text, ImageLimits::default(), field)?;
        Ok((ImageSource::Bytes(bytes), Value::from("(base64)")))
    } else if text.trim_start().starts_with("http://") || text.trim_start().starts_with("https://")
    {
        Ok((ImageSource::url(field, text)?, Value::from(text.trim())))
    } else {
        Err(ApiError::field(
            field,
            "not an http(s) URL; to send the image itself as base64, also send \"base64\": \"yes\"",
        ))
    }
}

/// Whether an image field holds something (not absent, null or "").
fn present(f: &Fields, name: &str) -> bool {
    match f.get_raw(name) {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        _ => true,
    }
}

/// A ControlNet request's nets, their images and what `meta` echoes.
struct Controls {
    request: Vec<Controlnet>,
    images: Vec<InputImage>,
    guess_mode: bool,
    meta: Value,
}

/// `controlnet_model` (comma-separated: several ControlNets, ModelsLab's multi-ControlNet)
/// with one `control_image` (or `controlnet_image`, as their SDK docs write it; absent:
/// the init image) for all, `controlnet_conditioning_scale` for all, `auto_hint` (yes:
/// the catalog's preprocessor makes the control image from a photo; no: used as sent)
/// and `guess_mode`.
fn controlnets(
    f: &Fields,
    base64_io: bool,
    init: Option<&ImageSource>,
) -> Result<Controls, ApiError> {
    let names = names(f, "controlnet_model")?;
    if names.is_empty() {
        return Err(ApiError::field(
            "controlnet_model",
            "required: a ControlNet name (canny, depth, ...), or several separated by commas",
        ));
    }
    if names.len() > contract::limits::MAX_CONTROLNETS {
        return Err(ApiError::field(
            "controlnet_model",
            format!(
                "at most {} ControlNets (got {})",
                contract::limits::MAX_CONTROLNETS,
                names.len()
            ),
        ));
    }
    for name in &names {
        models::check("controlnet_model", Some(name.clone()), "")?;
    }
    let field = alias(f, "control_image", "controlnet_image")?;
    let (source, shown) = if present(f, field) {
        image_source(field, &f.required_string(field)?, base64_io)?
    } else if let Some(init) = init {
        (init.clone(), Value::from("(init_image)"))
    } else {
        return Err(ApiError::field(
            "control_image",
            "required (the ControlNet's image), or send init_image",
        ));
    };
    let field = if shown == "(init_image)" {
        "init_image"
    } else {
        field
    };
    let scale = f
        .number("controlnet_conditioning_scale", 0.0..=20.0)?
        .map(|s| s as f32);
    let auto_hint = f.yes_no("auto_hint")?.unwrap_or(true);
    let guess_mode = f.yes_no("guess_mode")?.unwrap_or(false);
    let request = names
        .iter()
        .map(|name| Controlnet {
            name: name.clone(),
            image: String::new(),
            // Without auto_hint the image is the control image already.
            preprocess: (!auto_hint).then(|| "none".to_string()),
            scale,
            start: None,
            end: None,
        })
        .collect();
    Ok(Controls {
        request,
        images: names
            .iter()
            .map(|_| InputImage {
                field,
                source: source.clone(),
            })
            .collect(),
        guess_mode,
        meta: json!({
            "controlnet_model": names.join(","),
            "controlnet_type": f.string("controlnet_type")?,
            "auto_hint": if auto_hint { "yes" } else { "no" },
            "guess_mode": if guess_mode { "yes" } else { "no" },
            "controlnet_conditioning_scale": scale.unwrap_or(1.0),
            "control_image": shown,
        }),
    })
}

/// The field a request uses of a documented name and the alias some clients send
/// (`steps` in ModelsLab's own examples, `image` in its TypeScript SDK's docs,
/// `prompt_strength` in its older pages): the documented one unless only the alias
/// is present.
/// Both sent with different values is refused rather than one silently dropped.
fn alias(f: &Fields, name: &'static str, other: &'static str) -> Result<&'static str, ApiError> {
    match (f.has(name), f.has(other)) {
        (false, true) => Ok(other),
        (true, true) if f.get_raw(name) != f.get_raw(other) => Err(ApiError::field(
            other,
            format!("another name of {name}, which is sent with another value: send one of them"),
        )),
        _ => Ok(name),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Img2Img,
    Text2Img,
    /// An init image and a mask (white repaints).
    Inpaint,
    /// ControlNets (`controlnet_model`) with a control image.
    ControlNet,
    /// A queued job's result, by its id.
    Fetch(String),
}

/// A family of paths ModelsLab's clients call (after `/api/`), with its operations
/// and its fetch route (`{prefix}fetch/{id}`).
struct Family {
    prefix: &'static str,
    text2img: Option<&'static str>,
    img2img: Option<&'static str>,
    inpaint: &'static [&'static str],
    controlnet: bool,
}

const fn family(
    prefix: &'static str,
    text2img: Option<&'static str>,
    img2img: Option<&'static str>,
    inpaint: &'static [&'static str],
    controlnet: bool,
) -> Family {
    Family {
        prefix,
        text2img,
        img2img,
        inpaint,
        controlnet,
    }
}

/// The seed's enterprise endpoints, the official SDKs' (`modelslab-py`, `modelslab-js`,
/// `modelslab-go`: v6 community, realtime and image editing, or their v1/enterprise
/// forms with `enterprise=True`; the Dart SDK's `v6/images/text2img/inpaint`; the PHP
/// SDK's `image_editing/inpainting`), the documented ones (v1/enterprise/inpaint, the
/// legacy v3/inpaint) and the v7 API its providers and the official CLI
/// (`modelslab-cli`) use.
const FAMILIES: [Family; 11] = [
    family(
        "v1/enterprise/",
        Some("text2img"),
        Some("img2img"),
        &["inpaint"],
        true,
    ),
    family(
        "v6/images/",
        Some("text2img"),
        Some("img2img"),
        &["inpaint"],
        true,
    ),
    family(
        "v6/realtime/",
        Some("text2img"),
        Some("img2img"),
        &["inpaint"],
        false,
    ),
    family(
        "v1/enterprise/images/",
        Some("text2img"),
        Some("img2img"),
        &["inpaint"],
        true,
    ),
    family(
        "v1/enterprise/realtime/",
        Some("text2img"),
        Some("img2img"),
        &["inpaint"],
        false,
    ),
    family(
        "v7/images/",
        Some("text-to-image"),
        Some("image-to-image"),
        &["inpaint"],
        false,
    ),
    family(
        "v6/image_editing/",
        None,
        None,
        &["inpaint", "inpainting"],
        false,
    ),
    family(
        "v1/enterprise/image_editing/",
        None,
        None,
        &["inpaint"],
        false,
    ),
    family("v6/images/text2img/", None, None, &["inpaint"], true),
    family("v3/", None, None, &["inpaint"], false),
    family("v5/", None, None, &[], true),
];

pub fn endpoint(path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix("/api/")?;
    // The SDK's enterprise Qwen text-to-image.
    if rest == "v1/enterprise/qwen/text2img" {
        return Some(Endpoint::Text2Img);
    }
    FAMILIES.iter().find_map(|f| {
        let op = rest.strip_prefix(f.prefix)?;
        match op.strip_prefix("fetch/") {
            Some(id) if !id.is_empty() && !id.contains('/') => Some(Endpoint::Fetch(id.into())),
            Some(_) => None,
            None if Some(op) == f.text2img => Some(Endpoint::Text2Img),
            None if Some(op) == f.img2img => Some(Endpoint::Img2Img),
            None if f.inpaint.contains(&op) => Some(Endpoint::Inpaint),
            None if f.controlnet && op == "controlnet" => Some(Endpoint::ControlNet),
            None => None,
        }
    })
}

/// Every path [`endpoint`] answers, with `:id` for a fetch route's id (spin.toml
/// routes each).
pub fn routes() -> Vec<String> {
    let mut routes = vec!["/api/v1/enterprise/qwen/text2img".to_string()];
    for f in &FAMILIES {
        let ops = [f.text2img, f.img2img]
            .into_iter()
            .flatten()
            .chain(f.inpaint.iter().copied())
            .chain(f.controlnet.then_some("controlnet"))
            .chain(["fetch/:id"]);
        routes.extend(ops.map(|op| format!("/api/{}{op}", f.prefix)));
    }
    routes
}

pub struct ModelsLab;

impl Dialect for ModelsLab {
    fn name(&self) -> &'static str {
        "modelslab"
    }

    fn field_names(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("model", "model_id"),
            ("steps", "num_inference_steps"),
            ("guidance", "guidance_scale"),
            ("karras", "use_karras_sigmas"),
            ("init_image.strength", "strength"),
            ("init_image.image", "init_image"),
            ("init_image.mask", "mask_image"),
            ("mask", "mask_image"),
            ("controlnets", "controlnet_model"),
            ("controlnets[0].name", "controlnet_model"),
            ("controlnets[1].name", "controlnet_model"),
            ("controlnets[2].name", "controlnet_model"),
            ("controlnets[3].name", "controlnet_model"),
            ("controlnets[0].image", "control_image"),
            ("controlnets[1].image", "control_image"),
            ("controlnets[2].image", "control_image"),
            ("controlnets[3].image", "control_image"),
            ("guess_mode", "guess_mode"),
            ("loras", "lora_model"),
            ("embeddings", "embeddings_model"),
        ]
    }

    fn key_location(&self) -> &'static str {
        "the \"key\" field of the JSON body"
    }

    fn keeps_jobs(&self) -> bool {
        true
    }

    fn credential(&self, req: &Incoming) -> Result<Option<String>, ApiError> {
        // The CLI also sends the key as a `key` header; the body's is the API's.
        req.json()?.string("key")
    }

    fn parse(&self, req: &Incoming) -> Result<Job, ApiError> {
        let op = endpoint(&req.path);
        let inpaint = op == Some(Endpoint::Inpaint);
        let control = op == Some(Endpoint::ControlNet);
        let f = req.json()?;
        // ControlNet: an init_image, when sent, is also where image-to-image starts.
        let img2img = op == Some(Endpoint::Img2Img)
            || inpaint
            || (control && present(f, alias(f, "init_image", "image")?));
        let model_id = models::check("model_id", f.string("model_id")?, models::SDXL_BASE)?;
        let prompt = job::check_prompt("prompt", f.required_string("prompt")?)?;
        let negative_prompt = job::optional_prompt(f, "negative_prompt")?;
        let side = |name: &'static str| -> Result<Option<u32>, ApiError> {
            f.integer(name, 0..=i64::from(u32::MAX))?
                .map(|n| job::check_side(name, n as u32, 64, 1024, 8))
                .transpose()
        };
        // One side alone: the other is ModelsLab's usual 512. Neither, but v7's
        // aspect_ratio: that shape at up to 1024 a side (checked even when a size wins).
        let (width, height, ratio) = (side("width")?, side("height")?, aspect_ratio(f)?);
        let (width, height) = match (width, height) {
            (None, None) => ratio.map_or((None, None), |(w, h)| (Some(w), Some(h))),
            (w, h) => job::optional_size(w, h, DEFAULT_SIDE),
        };
        let samples = f
            .integer("samples", 1..=i64::from(MAX_SAMPLES))?
            .map_or(1, |n| n as u32);
        // ModelsLab documents no defaults: absent, the model's catalog defaults apply.
        let steps = f
            .integer(alias(f, "num_inference_steps", "steps")?, 1..=50)?
            .map(|n| n as u32);
        let guidance = f.number("guidance_scale", 1.0..=20.0)?.map(|g| g as f32);
        let seed = job::seed_or_random(f.seed("seed")?);
        let karras = f.yes_no("use_karras_sigmas")?;
        let clip_skip = f.integer("clip_skip", 1..=8)?.map(|n| n as u32);
        let vae = f
            .string("vae")?
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        let loras = loras(f)?;
        let embeddings = Some(names(f, "embeddings_model")?).filter(|e| !e.is_empty());
        // ModelsLab checks by default (its samples send "yes"), replacing flagged images
        // with a "sensitive content" image unless told otherwise.
        let safety = match f.yes_no("safety_checker")? {
            Some(false) => None,
            _ => Some(
                match f
                    .string("safety_checker_type")?
                    .map(|t| t.trim().to_ascii_lowercase())
                {
                    None => "sensitive_content_text".to_string(),
                    Some(t) if SAFETY_TYPES.contains(&t.as_str()) => t,
                    Some(t) => {
                        return Err(ApiError::field(
                            "safety_checker_type",
                            format!("must be one of {} (got {t:?})", SAFETY_TYPES.join(", ")),
                        ));
                    }
                },
            ),
        };
        // ModelsLab's prompts are written for A1111's emphasis ("(masterpiece:1.2)"): on
        // unless the request asks for diffusers' reading (this server's own field).
        let emphasis = match f.string("emphasis")?.map(|e| e.trim().to_ascii_lowercase()) {
            None => "a1111".to_string(),
            Some(e) if e == "a1111" || e == "none" => e,
            Some(e) => {
                return Err(ApiError::field(
                    "emphasis",
                    format!("must be a1111 or none (got {e:?})"),
                ));
            }
        };
        let base64_io = f.yes_no("base64")?.unwrap_or(false);
        f.yes_no("temp")?;
        let track_id = f.get_raw("track_id");
        let webhook = f
            .string("webhook")?
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty());
        let mut ignored: Vec<String> = f
            .names()
            .filter(|n| {
                !KNOWN.contains(n)
                    || (!img2img && IMG2IMG_ONLY.contains(n))
                    || (!inpaint && INPAINT_ONLY.contains(n))
                    || (!control && CONTROL_ONLY.contains(n))
            })
            .map(String::from)
            .collect();
        let scheduler = f
            .string("scheduler")?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        // DPMSolverMultistepScheduler's algorithm_type, as at ModelsLab: for another
        // scheduler it is ignored; the server checks it against the model.
        let algorithm_type = match f
            .string("algorithm_type")?
            .map(|a| a.trim().to_ascii_lowercase())
        {
            Some(algo) if algo.is_empty() || algo == "none" => None,
            Some(algo) if scheduler.as_deref() == Some("DPMSolverMultistepScheduler") => {
                if !matches!(algo.as_str(), "dpmsolver++" | "sde-dpmsolver++") {
                    return Err(ApiError::field(
                        "algorithm_type",
                        format!("must be dpmsolver++ or sde-dpmsolver++ (got {algo:?})"),
                    ));
                }
                Some(algo)
            }
            Some(_) => {
                ignored.push("algorithm_type".into());
                None
            }
            None => None,
        };
        let (init, init_shown) = if img2img {
            let strength = f
                .number(alias(f, "strength", "prompt_strength")?, 0.01..=1.0)?
                .unwrap_or(if control {
                    CONTROL_STRENGTH
                } else {
                    DEFAULT_STRENGTH
                });
            let field = alias(f, "init_image", "image")?;
            let (source, shown) = image_source(field, &one_init_image(f, field)?, base64_io)?;
            (
                Some(InitImageSource {
                    field,
                    source,
                    strength: strength as f32,
                }),
                shown,
            )
        } else {
            (None, Value::Null)
        };
        let (mask, mask_shown) = if inpaint {
            let field = "mask_image";
            let (source, shown) = image_source(field, &f.required_string(field)?, base64_io)?;
            (Some(InputImage { field, source }), shown)
        } else {
            (None, Value::Null)
        };
        let controlnets = if control {
            if present(f, "mask_image") {
                return Err(ApiError::field(
                    "mask_image",
                    "ControlNet inpainting is not supported here; use the inpaint endpoint",
                ));
            }
            Some(controlnets(f, base64_io, init.as_ref().map(|i| &i.source))?)
        } else {
            None
        };
        let mut job = Job::new(
            GenerateRequest {
                model: model_id.clone(),
                prompt: prompt.clone(),
                negative_prompt: negative_prompt.clone(),
                clip_skip,
                vae: vae.clone(),
                loras: loras.clone(),
                embeddings: embeddings.clone(),
                emphasis: Some(emphasis.clone()),
                safety_checker: safety.clone(),
                width,
                height,
                steps,
                guidance,
                seed,
                samples,
                scheduler: scheduler.clone(),
                karras,
                algorithm_type,
                init_image: None,
                ..GenerateRequest::default()
            },
            init,
        );
        job.mask = mask;
        let control_meta = match controlnets {
            Some(c) => {
                job.request.controlnets = Some(c.request);
                job.request.guess_mode = Some(c.guess_mode);
                job.controls = c.images;
                c.meta
            }
            None => Value::Null,
        };
        job.echo = json!({
            "base64": base64_io,
            "track_id": track_id,
            "webhook": webhook,
            "meta": {
                "prompt": prompt,
                "model_id": model_id,
                "scheduler": scheduler.unwrap_or_else(|| "default".into()),
                "negative_prompt": negative_prompt,
                "W": width,
                "H": height,
                "guidance_scale": guidance,
                "init_image": init_shown,
                "mask_image": mask_shown,
                "steps": steps,
                "n_samples": samples,
                "strength": job.init.as_ref().map(|i| f64::from(i.strength)),
                "use_karras_sigmas": if karras == Some(true) { "yes" } else { "no" },
                "base64": if base64_io { "yes" } else { "no" },
                "vae": vae,
                "lora_model": loras.as_ref().map(|l| l.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(",")),
                "lora_strength": loras.as_ref().map(|l| l.iter().map(|l| l.strength.to_string()).collect::<Vec<_>>().join(",")),
                "clip_skip": clip_skip,
                "embeddings_model": embeddings.as_ref().map(|e| e.join(",")),
                "emphasis": emphasis,
                "safety_checker": if safety.is_some() { "yes" } else { "no" },
                "safety_checker_type": safety,
                "ignored": ignored,
            },
        });
        if let (Some(meta), Value::Object(extra)) = (job.echo["meta"].as_object_mut(), control_meta)
        {
            meta.extend(extra);
        }
        Ok(job)
    }

    fn render(
        &self,
        job: &Job,
        result: GenerateResult,
        stash: &mut Stash,
    ) -> Result<Outgoing, ApiError> {
        let as_base64 = job.echo["base64"].as_bool().unwrap_or(false);
        let seeds: Vec<u64> = result.images.iter().map(|i| i.seed).collect();
        let sizes: Vec<(u32, u32)> = result.images.iter().map(|i| (i.width, i.height)).collect();
        let nsfw: Vec<Option<bool>> = result.images.iter().map(|i| i.nsfw).collect();
        let mut output = Vec::with_capacity(result.images.len());
        for image in result.images {
            if as_base64 {
                output.push(image.png);
            } else {
                let png = base64::engine::general_purpose::STANDARD
                    .decode(&image.png)
                    .map_err(|e| ApiError::internal(format!("the inference server's PNG: {e}")))?;
                output.push(stash.put(png)?);
            }
        }
        // The job's id (every ModelsLab request is a job, fetchable by it).
        let id = job.echo["id"].as_u64().unwrap_or_default();
        let mut meta = job.echo["meta"].clone();
        // What ran, with the model's defaults filled in for what the client left out.
        if let Some((w, h)) = sizes.first() {
            (meta["W"], meta["H"]) = ((*w).into(), (*h).into());
        }
        meta["steps"] = result.steps.into();
        meta["guidance_scale"] = result.guidance.into();
        meta["scheduler"] = result.scheduler.into();
        meta["seed"] = seeds.first().copied().into();
        meta["seeds"] = seeds.into();
        // Asked for, but the server has no checker for this model: said, not hidden.
        if meta["safety_checker"] == "yes"
            && nsfw.iter().any(Option::is_none)
            && let Some(ignored) = meta["ignored"].as_array_mut()
        {
            ignored.push("safety_checker".into());
        }
        let mut body = json!({
            "status": "success",
            "generationTime": f64::from(result.timings.total_ms) / 1000.0,
            "id": id,
            "output": output,
            "nsfw_content_detected": nsfw,
            "meta": meta,
        });
        if !job.echo["track_id"].is_null() {
            body["track_id"] = job.echo["track_id"].clone();
        }
        Ok(Outgoing::json(200, &body))
    }

    fn render_error(&self, err: &ApiError, trace_id: &str) -> Outgoing {
        let body = json!({"status": "error", "message": err.message, "traceId": trace_id});
        with_retry_after(Outgoing::json(err.status, &body), err)
    }
}

/// The webhook a request asked for, if any.
pub fn webhook(job: &Job) -> Option<&str> {
    job.echo["webhook"].as_str()
}

/// Where a job submitted at `path` is fetched: its family's fetch route.
pub fn fetch_path(path: &str, id: u64) -> String {
    let rest = path.strip_prefix("/api/").unwrap_or_default();
    let prefix = FAMILIES
        .iter()
        .map(|f| f.prefix)
        .filter(|prefix| rest.starts_with(prefix))
        .max_by_key(|prefix| prefix.len())
        // (Every fetch route serves every job; this is the family's own.)
        .unwrap_or("v1/enterprise/");
    format!("/api/{prefix}fetch/{id}")
}

/// The answer to a request that runs after the reply: ModelsLab's "processing"
/// body, with where to fetch the result and the links its images will have.
pub fn render_processing(
    job: &Job,
    id: u64,
    eta_secs: f64,
    fetch_url: &str,
    future_links: &[String],
) -> Outgoing {
    let mut body = json!({
        "status": "processing",
        "tip": "the image is being generated; fetch it when the eta has passed",
        "eta": eta_secs,
        "messege": "Try to fetch request after given estimated time",
        "message": "Try to fetch request after given estimated time",
        "fetch_result": fetch_url,
        "id": id,
        "output": [],
        "meta": job.echo["meta"].clone(),
        "future_links": future_links,
    });
    if !job.echo["track_id"].is_null() {
        body["track_id"] = job.echo["track_id"].clone();
    }
    Outgoing::json(200, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialects::test_support::{incoming, result};

    const SEED_BODY: &str = r#"{
        "key": "enterprise_api_key", "model_id": "model_id",
        "prompt": "papercraft, quilling, layers, landscape", "negative_prompt": null,
        "init_image": "https://pub-8b49af329fae499aa563997f5d4068a4.r2.dev/generations/d8cd0add-8cd7-40a4-802b-7b80be45a14c-0.png",
        "width": "512", "height": "512", "samples": "1", "num_inference_steps": "20",
        "safety_checker": "yes", "enhance_prompt": "yes", "guidance_scale": 7.5, "strength": 0.7,
        "scheduler": "DDPMScheduler", "lora_model": null, "tomesd": "yes", "use_karras_sigmas": "yes",
        "vae": null, "lora_strength": null, "embeddings_model": null, "seed": null, "webhook": null,
        "track_id": null
    }"#;

    fn parse(path: &str, body: &str) -> Result<Job, ApiError> {
        ModelsLab.parse(&incoming(path, &[], body.as_bytes()))
    }

    #[test]
    fn every_path_of_the_api_family() {
        for (path, want) in [
            ("/api/v1/enterprise/text2img", Some(Endpoint::Text2Img)),
            ("/api/v1/enterprise/img2img", Some(Endpoint::Img2Img)),
            ("/api/v6/images/text2img", Some(Endpoint::Text2Img)),
            ("/api/v6/realtime/img2img", Some(Endpoint::Img2Img)),
            ("/api/v1/enterprise/images/img2img", Some(Endpoint::Img2Img)),
            (
                "/api/v1/enterprise/realtime/text2img",
                Some(Endpoint::Text2Img),
            ),
            ("/api/v1/enterprise/qwen/text2img", Some(Endpoint::Text2Img)),
            ("/api/v7/images/text-to-image", Some(Endpoint::Text2Img)),
            ("/api/v7/images/image-to-image", Some(Endpoint::Img2Img)),
            (
                "/api/v7/images/fetch/12",
                Some(Endpoint::Fetch("12".into())),
            ),
            (
                "/api/v1/enterprise/fetch/9",
                Some(Endpoint::Fetch("9".into())),
            ),
            (
                "/api/v1/enterprise/images/fetch/9",
                Some(Endpoint::Fetch("9".into())),
            ),
            ("/api/v6/images/fetch/", None),
            ("/api/v6/images/fetch/1/2", None),
            ("/api/v6/images/controlnet", Some(Endpoint::ControlNet)),
            ("/api/v5/controlnet", Some(Endpoint::ControlNet)),
            ("/api/v6/realtime/controlnet", None),
            ("/api/v7/images/text2img", None),
            ("/v6/images/text2img", None),
        ] {
            assert_eq!(endpoint(path), want, "{path}");
        }
        assert_eq!(
            fetch_path("/api/v6/realtime/text2img", 5),
            "/api/v6/realtime/fetch/5"
        );
        assert_eq!(
            fetch_path("/api/v1/enterprise/img2img", 5),
            "/api/v1/enterprise/fetch/5"
        );
        assert_eq!(
            fetch_path("/api/v1/enterprise/images/img2img", 5),
            "/api/v1/enterprise/images/fetch/5"
        );
        assert_eq!(
            fetch_path("/api/v1/enterprise/qwen/text2img", 5),
            "/api/v1/enterprise/fetch/5"
        );
        assert_eq!(
            fetch_path("/api/v7/images/text-to-image", 5),
            "/api/v7/images/fetch/5"
        );
    }

    #[test]
    fn v7_aspect_ratios_and_init_image_lists() {
        let t2i = |body: &str| parse("/api/v7/images/text-to-image", body);
        let size = |body: &str| {
            let r = t2i(body).unwrap().request;
            (r.width, r.height)
        };
        assert_eq!(
            size(r#"{"prompt":"p","aspect_ratio":"16:9"}"#),
            (Some(1024), Some(576))
        );
        assert_eq!(
            size(r#"{"prompt":"p","aspect_ratio":"1:1"}"#),
            (Some(1024), Some(1024))
        );
        assert_eq!(
            size(r#"{"prompt":"p","aspect_ratio":"2:3","width":512}"#),
            (Some(512), Some(512))
        );
        for bad in ["16x9", "0:1", "9:1", ""] {
            let e = t2i(&format!(r#"{{"prompt":"p","aspect_ratio":"{bad}"}}"#))
                .err()
                .unwrap();
            assert!(
                e.message.starts_with("aspect_ratio: must be W:H"),
                "{}",
                e.message
            );
        }
        let i2i = |body: &str| parse("/api/v7/images/image-to-image", body);
        let job = i2i(r#"{"prompt":"p","init_image":["https://a.example/x.png"]}"#).unwrap();
        assert!(job.init.is_some());
        let e = i2i(r#"{"prompt":"p","init_image":["https://a/x.png","https://a/y.png"]}"#)
            .err()
            .unwrap();
        assert!(
            e.message.starts_with("init_image: one image"),
            "{}",
            e.message
        );
        let e = i2i(
            r#"{"prompt":"p","init_image":"https://a/x.png","init_image_2":"https://a/y.png"}"#,
        )
        .err()
        .unwrap();
        assert!(e.message.starts_with("init_image_2:"), "{}", e.message);
    }

    #[test]
    fn the_seed_request() {
        let job = parse("/api/v1/enterprise/img2img", SEED_BODY).unwrap();
        assert_eq!(
            ModelsLab
                .credential(&incoming("/", &[], SEED_BODY.as_bytes()))
                .unwrap()
                .as_deref(),
            Some("enterprise_api_key")
        );
        // A body that is not JSON is the client's error, not a missing key.
        let e = ModelsLab
            .credential(&incoming("/", &[], b"{not json"))
            .unwrap_err();
        assert_eq!(e.status, 400, "{}", e.message);
        let r = &job.request;
        assert_eq!(
            (
                r.model.as_str(),
                r.width,
                r.height,
                r.samples,
                r.steps,
                r.guidance
            ),
            ("model_id", Some(512), Some(512), 1, Some(20), Some(7.5))
        );
        assert_eq!(
            (r.scheduler.as_deref(), r.karras, r.seed),
            (Some("DDPMScheduler"), Some(true), None)
        );
        assert_eq!(job.init.as_ref().unwrap().strength, 0.7);
        assert_eq!(
            job.echo["meta"]["ignored"],
            json!(["enhance_prompt", "tomesd"])
        );
        // The sample's "safety_checker": "yes", with ModelsLab's default replacement.
        assert_eq!(r.safety_checker.as_deref(), Some("sensitive_content_text"));
    }

    #[test]
    fn text2img_base64_and_algorithm_type() {
        let job = parse("/api/v1/enterprise/text2img", r#"{"prompt":"p","samples":3,"strength":0.5,"scheduler":"DPMSolverMultistepScheduler","algorithm_type":"sde-dpmsolver++","base64":"yes","track_id":12}"#).unwrap();
        assert!(job.init.is_none());
        assert_eq!(job.request.samples, 3);
        assert_eq!(
            (
                job.request.scheduler.as_deref(),
                job.request.algorithm_type.as_deref()
            ),
            (Some("DPMSolverMultistepScheduler"), Some("sde-dpmsolver++"))
        );
        assert_eq!(job.echo["meta"]["ignored"], json!(["strength"]));
        let out = ModelsLab
            .render(&job, result(3), &mut Stash::new("http://e", 0))
            .unwrap();
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(body["output"], json!(["aGVsbG8=", "aGVsbG8=", "aGVsbG8="]));
        assert_eq!(
            (
                body["status"].as_str(),
                body["track_id"].as_i64(),
                body["generationTime"].as_f64()
            ),
            (Some("success"), Some(12), Some(1.5))
        );
        assert_eq!(body["meta"]["seeds"], json!([9, 10, 11]));
        // Each image's verdict; images the server could not check are said to be so.
        assert_eq!(body["nsfw_content_detected"], json!([null, true, null]));
        assert_eq!(
            body["meta"]["ignored"],
            json!(["strength", "safety_checker"])
        );

        let job = parse(
            "/api/v1/enterprise/img2img",
            r#"{"prompt":"p","init_image":"data:image/png;base64,aGVsbG8=","base64":"yes"}"#,
        )
        .unwrap();
        assert!(
            matches!(&job.init.as_ref().unwrap().source, ImageSource::Bytes(b) if b == b"hello")
        );
    }

    #[test]
    fn loras_vae_clip_skip_and_embeddings() {
        let path = "/api/v1/enterprise/text2img";
        let names = |job: &Job| -> Vec<(String, f32)> {
            job.request
                .loras
                .iter()
                .flatten()
                .map(|l| (l.name.clone(), l.strength))
                .collect()
        };
        let job = parse(path, r#"{"prompt":"p","lora_model":"contrast-fix, yae-miko-genshin","lora_strength":"0.7,0.5","vae":"sdxl-vae-fp16-fix","clip_skip":"2","embeddings_model":"easynegative, bad-hands"}"#).unwrap();
        assert_eq!(
            names(&job),
            [
                ("contrast-fix".into(), 0.7),
                ("yae-miko-genshin".into(), 0.5)
            ]
        );
        assert_eq!(job.request.vae.as_deref(), Some("sdxl-vae-fp16-fix"));
        assert_eq!(job.request.clip_skip, Some(2));
        assert_eq!(
            job.request.embeddings,
            Some(vec!["easynegative".to_string(), "bad-hands".to_string()])
        );
        assert_eq!(
            job.echo["meta"]["embeddings_model"],
            "easynegative,bad-hands"
        );
        assert_eq!(
            job.echo["meta"]["lora_model"],
            "contrast-fix,yae-miko-genshin"
        );
        assert_eq!(job.echo["meta"]["ignored"], json!([]));
        // One strength for all; none: 1; no LoRA: none.
        let job = parse(
            path,
            r#"{"prompt":"p","lora_model":"a,b","lora_strength":0.6}"#,
        )
        .unwrap();
        assert_eq!(names(&job), [("a".into(), 0.6), ("b".into(), 0.6)]);
        let job = parse(path, r#"{"prompt":"p","lora_model":"a"}"#).unwrap();
        assert_eq!(names(&job), [("a".into(), 1.0)]);
        let job = parse(
            path,
            r#"{"prompt":"p","lora_model":null,"lora_strength":null,"vae":null}"#,
        )
        .unwrap();
        assert_eq!((job.request.loras, job.request.vae), (None, None));
        for (body, says) in [
            (
                r#"{"prompt":"p","lora_model":"a,b,c","lora_strength":"1,2"}"#,
                "lora_strength: 2 strengths for 3 LoRAs",
            ),
            (
                r#"{"prompt":"p","lora_model":"a","lora_strength":"strong"}"#,
                "lora_strength: \"strong\" is not a number",
            ),
            (r#"{"prompt":"p","clip_skip":9}"#, "clip_skip: "),
        ] {
            let e = parse(path, body).unwrap_err().to_string();
            assert!(e.starts_with(&format!("400 {says}")), "{body}: {e}");
        }
    }

    #[test]
    fn links_point_at_the_stash() {
        let job = parse(
            "/api/v1/enterprise/text2img",
            r#"{"prompt":"p","samples":"2"}"#,
        )
        .unwrap();
        let mut stash = Stash::new("https://edge.example", 100);
        let out = ModelsLab.render(&job, result(2), &mut stash).unwrap();
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        let links = body["output"].as_array().unwrap();
        assert_eq!(links.len(), 2);
        assert!(
            links[0]
                .as_str()
                .unwrap()
                .starts_with("https://edge.example/generations/86500-")
        );
        assert_eq!(stash.pending.len(), 2);
        assert_eq!(stash.pending[0].1, b"hello");
    }

    #[test]
    fn bad_fields_are_named_in_their_error_format() {
        for (path, body, start) in [
            (
                "/api/v1/enterprise/img2img",
                r#"{"prompt":"p"}"#,
                "init_image: required",
            ),
            (
                "/api/v1/enterprise/img2img",
                r#"{"prompt":"p","init_image":"aGVsbG8="}"#,
                "init_image: not an http(s) URL",
            ),
            (
                "/api/v1/enterprise/text2img",
                r#"{"prompt":"p","width":"2048"}"#,
                "width: must be a multiple of 8 from 64 to 1024",
            ),
            (
                "/api/v1/enterprise/text2img",
                r#"{"prompt":"p","samples":5}"#,
                "samples: must be an integer from 1 to 4",
            ),
            (
                "/api/v1/enterprise/text2img",
                r#"{"prompt":"p","num_inference_steps":"51"}"#,
                "num_inference_steps: must be an integer from 1 to 50",
            ),
            (
                "/api/v1/enterprise/text2img",
                r#"{"prompt":"p","guidance_scale":0.5}"#,
                "guidance_scale: must be a number from 1 to 20",
            ),
            (
                "/api/v1/enterprise/text2img",
                r#"{"prompt":"p","use_karras_sigmas":"maybe"}"#,
                "use_karras_sigmas: must be \"yes\" or \"no\"",
            ),
            (
                "/api/v1/enterprise/text2img",
                r#"{"prompt":"p","scheduler":"DPMSolverMultistepScheduler","algorithm_type":"x"}"#,
                "algorithm_type: must be",
            ),
        ] {
            let e = parse(path, body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.starts_with(start), "{body}: {}", e.message);
        }
        let out = ModelsLab.render_error(&ApiError::field("prompt", "required"), "t");
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            body,
            json!({"status":"error","message":"prompt: required","traceId":"t"})
        );
    }

    #[test]
    fn spin_toml_routes_every_path() {
        let manifest = include_str!("../../../spin.toml");
        for route in routes() {
            assert!(
                manifest.contains(&format!("route = \"{route}\"")),
                "spin.toml does not route {route}"
            );
            let probe = route.replace(":id", "12");
            assert!(endpoint(&probe).is_some(), "{probe}");
        }
    }

    #[test]
    fn inpaint_paths_of_the_sdks_and_documents() {
        for path in [
            "/api/v6/images/inpaint",
            "/api/v6/image_editing/inpaint",
            "/api/v6/image_editing/inpainting",
            "/api/v6/realtime/inpaint",
            "/api/v7/images/inpaint",
            "/api/v1/enterprise/inpaint",
            "/api/v1/enterprise/images/inpaint",
            "/api/v1/enterprise/image_editing/inpaint",
            "/api/v6/images/text2img/inpaint",
            "/api/v3/inpaint",
        ] {
            assert_eq!(endpoint(path), Some(Endpoint::Inpaint), "{path}");
        }
        assert_eq!(
            endpoint("/api/v6/images/text2img/fetch/7"),
            Some(Endpoint::Fetch("7".into()))
        );
        assert_eq!(
            fetch_path("/api/v6/image_editing/inpaint", 7),
            "/api/v6/image_editing/fetch/7"
        );
        assert_eq!(endpoint("/api/v6/images/text2img/img2img"), None);
    }

    #[test]
    fn inpaint_reads_the_mask_and_the_aliases_clients_send() {
        // The shape of ModelsLab's v6 community inpaint example (`steps`, strings).
        let body = r#"{"key":"k","model_id":"m","prompt":"a cat",
            "init_image":"https://example.com/i.png","mask_image":"https://example.com/m.png",
            "width":"512","height":"512","samples":"1","steps":"21","safety_checker":"no",
            "guidance_scale":7.5,"strength":0.7,"scheduler":"UniPCMultistepScheduler",
            "lora_model":null,"use_karras_sigmas":"yes","vae":null,"lora_strength":null,
            "seed":null,"webhook":null,"track_id":null}"#;
        let job = parse("/api/v6/images/inpaint", body).unwrap();
        assert_eq!(job.request.steps, Some(21));
        let mask = job.mask.as_ref().unwrap();
        assert_eq!(mask.field, "mask_image");
        assert!(
            matches!(&mask.source, ImageSource::Url(u) if u.as_str() == "https://example.com/m.png")
        );
        assert_eq!(job.init.as_ref().unwrap().strength, 0.7);
        assert_eq!(job.echo["meta"]["mask_image"], "https://example.com/m.png");
        assert!(
            !job.echo["meta"]["ignored"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == "mask_image" || n == "steps")
        );
        // The TypeScript SDK docs' `image`, the old pages' `prompt_strength`, base64.
        let body = r#"{"prompt":"p","image":"aGVsbG8=","mask_image":"aGVsbG8=","prompt_strength":0.5,"base64":"yes"}"#;
        let job = parse("/api/v6/image_editing/inpaint", body).unwrap();
        assert_eq!(job.init.as_ref().unwrap().field, "image");
        assert_eq!(job.init.as_ref().unwrap().strength, 0.5);
        assert_eq!(
            job.mask.unwrap().source,
            ImageSource::Bytes(b"hello".to_vec())
        );
        // Both names: one value, or a 400 naming the alias.
        let both = |extra: &str| {
            let body = format!(
                r#"{{"prompt":"p","init_image":"aGVsbG8=","mask_image":"aGVsbG8=","base64":"yes",{extra}}}"#
            );
            parse("/api/v6/image_editing/inpaint", &body)
        };
        assert_eq!(
            both(r#""steps":9,"num_inference_steps":9"#)
                .unwrap()
                .request
                .steps,
            Some(9)
        );
        let e = both(r#""strength":0.5,"prompt_strength":7"#).unwrap_err();
        assert!(
            e.message
                .starts_with("prompt_strength: another name of strength"),
            "{}",
            e.message
        );
        // A mask is required there, and only read there.
        let e = parse(
            "/api/v3/inpaint",
            r#"{"prompt":"p","init_image":"https://e.com/i.png"}"#,
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("mask_image: required"),
            "{}",
            e.message
        );
        let job = parse(
            "/api/v6/images/img2img",
            r#"{"prompt":"p","init_image":"https://e.com/i.png","mask_image":"https://e.com/m.png"}"#,
        )
        .unwrap();
        assert!(job.mask.is_none());
        assert!(
            job.echo["meta"]["ignored"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == "mask_image")
        );
    }

    #[test]
    fn controlnet_requests_as_the_documents_and_sdks_send_them() {
        // The documents' multi-ControlNet example: one image, comma-separated nets.
        let body = r#"{"key":"k","controlnet_model":"canny, depth","controlnet_type":"canny",
            "model_id":"midjourney","auto_hint":"yes","guess_mode":"yes",
            "control_image":"https://example.com/c.png","init_image":"https://example.com/i.png",
            "mask_image":null,"prompt":"p","width":"512","height":"512","samples":"1",
            "controlnet_conditioning_scale":0.7,"strength":0.55,"clip_skip":"2","tomesd":"yes"}"#;
        let job = parse("/api/v5/controlnet", body).unwrap();
        let nets = job.request.controlnets.as_ref().unwrap();
        let names: Vec<&str> = nets.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["canny", "depth"]);
        assert!(
            nets.iter()
                .all(|c| c.scale == Some(0.7) && c.preprocess.is_none())
        );
        assert_eq!(job.request.guess_mode, Some(true));
        assert_eq!(job.controls.len(), 2);
        assert_eq!(job.controls[0].field, "control_image");
        assert_eq!(job.init.as_ref().unwrap().strength, 0.55);
        let meta = &job.echo["meta"];
        assert_eq!(meta["controlnet_model"], "canny,depth");
        assert_eq!(meta["auto_hint"], "yes");
        let ignored: Vec<&str> = meta["ignored"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(ignored, ["tomesd"]);
        // The SDKs' path and field name, no init image, auto_hint off.
        let body = r#"{"prompt":"p","controlnet_model":"canny","controlnet_image":"aGVsbG8=",
            "base64":"yes","auto_hint":"no"}"#;
        let job = parse("/api/v6/images/controlnet", body).unwrap();
        assert!(job.init.is_none());
        assert_eq!(
            job.controls[0].source,
            ImageSource::Bytes(b"hello".to_vec())
        );
        let nets = job.request.controlnets.unwrap();
        assert_eq!(nets[0].preprocess.as_deref(), Some("none"));
        // The documents' SD1.5 canny example: the hint from init_image.
        let body =
            r#"{"prompt":"p","controlnet_model":"canny","init_image":"https://e.com/i.png"}"#;
        let job = parse("/api/v1/enterprise/controlnet", body).unwrap();
        assert_eq!(job.controls[0].field, "init_image");
        assert!(job.init.is_some());
        for (body, needle) in [
            (
                r#"{"prompt":"p","control_image":"https://e.com/c.png"}"#,
                "controlnet_model: required",
            ),
            (
                r#"{"prompt":"p","controlnet_model":"canny"}"#,
                "control_image: required",
            ),
            (
                r#"{"prompt":"p","controlnet_model":"a,b,c,d,e","control_image":"https://e.com/c.png"}"#,
                "controlnet_model: at most 4",
            ),
            (
                r#"{"prompt":"p","controlnet_model":"inpaint","control_image":"https://e.com/c.png","mask_image":"https://e.com/m.png"}"#,
                "mask_image: ControlNet inpainting is not supported",
            ),
        ] {
            let e = parse("/api/v5/controlnet", body).unwrap_err();
            assert!(e.message.starts_with(needle), "{needle}: {}", e.message);
        }
    }
}
