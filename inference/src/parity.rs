//! The diffusers parity fixtures (`inference/tests/fixtures/{parity,parity_arch,scheduler_parity}/`,
//! made by `scripts/reference/`): each set's `cases.json` names its models (a tiny model the
//! engine writes from a seed, or committed folders plus scheduler variants) and its cases
//! (parameters and diffusers' reference images). Running a set gives every image's distance
//! to its reference. The tests run the sets on the CPU in f32; `inference parity` runs them
//! on any device and dtype (scripts/gpu-check: the GPU in f32 must match as the CPU does).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use serde::Serialize;
use serde_json::Value;

use crate::engine::embeddings::Embedding;
use crate::engine::lora::Lora;
use crate::engine::{
    Control, ControlNet, GenerateParams, Pipeline, SkipLayerGuidance, T5Placement, tiny,
};

/// The fixture sets, in the order `inference parity` runs them.
pub const SETS: &[&str] = &[
    "parity",
    "parity_arch",
    "scheduler_parity",
    "parity_features",
    "parity_refiner",
    "parity_inpaint",
    "parity_controlnet",
    "parity_sd3",
];

/// One generated image against its reference.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    pub set: String,
    pub id: String,
    pub image: usize,
    pub model: String,
    /// The scheduler the case asks for (`(default)`: the model's).
    pub scheduler: String,
    /// `txt2img` or `img2img`.
    pub kind: &'static str,
    /// Per 8-bit channel, 0-255.
    pub max_abs_diff: i32,
    pub mean_abs_diff: f64,
}

/// A set's results: every image, and what failed (an image over the tolerance, or a case
/// that could not run).
#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    pub set: String,
    pub tolerance: i32,
    pub images: Vec<ImageResult>,
    pub failures: Vec<String>,
}

/// The models of a set, loaded; `_tmp` holds the folders written for it (tiny models,
/// scheduler variants) and must outlive the pipelines' use.
pub struct SetModels {
    pub pipelines: BTreeMap<String, Pipeline>,
    /// The set's ControlNets (`controlnets`: name -> folder under `root`).
    pub controlnets: BTreeMap<String, Arc<ControlNet>>,
    _tmp: tempfile::TempDir,
}

pub fn manifest(root: &Path, set: &str) -> Result<Value> {
    let path = root.join(set).join("cases.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Loads the models `manifest` names: `tiny_model_seed` (the engine's tiny SDXL model, as
/// `make-tiny-model` writes it; named `tiny`), `models` (folders under `root`) and
/// `variants` (a model with another scheduler_config.json).
pub fn load_models(
    root: &Path,
    manifest: &Value,
    device: &Device,
    dtype: DType,
) -> Result<SetModels> {
    let tmp = tempfile::tempdir()?;
    let mut pipelines = BTreeMap::new();
    let mut load = |name: &str, dir: &Path, t5: T5Placement| -> Result<()> {
        let p = Pipeline::load_with(dir, device, dtype, t5)
            .with_context(|| format!("loading {name} from {}", dir.display()))?;
        pipelines.insert(name.to_string(), p);
        Ok(())
    };
    if let Some(seed) = manifest["tiny_model_seed"].as_u64() {
        let dir = tmp.path().join("tiny");
        tiny::write_tiny_model(&dir, seed)?;
        load("tiny", &dir, T5Placement::Device)?;
    }
    if let Some(models) = manifest["models"].as_object() {
        for (name, path) in models {
            let dir = root.join(path.as_str().context("models: a path")?);
            load(name, &dir, T5Placement::Device)?;
        }
    }
    // SD 3 folders loaded without their T5 encoder.
    if let Some(models) = manifest["no_t5_models"].as_object() {
        for (name, path) in models {
            let dir = root.join(path.as_str().context("no_t5_models: a path")?);
            load(name, &dir, T5Placement::Off)?;
        }
    }
    if let Some(variants) = manifest["variants"].as_object() {
        for (name, v) in variants {
            let dir = tmp.path().join(name);
            copy_dir(
                &root.join(v["base"].as_str().context("variants: base")?),
                &dir,
            )?;
            let text = serde_json::to_string_pretty(&v["scheduler_config"])?;
            std::fs::write(dir.join("scheduler/scheduler_config.json"), text)?;
            load(name, &dir, T5Placement::Device)?;
        }
    }
    let mut controlnets = BTreeMap::new();
    if let Some(nets) = manifest["controlnets"].as_object() {
        for (name, path) in nets {
            let dir = root.join(path.as_str().context("controlnets: a path")?);
            let net = ControlNet::load(&dir, device, dtype)
                .with_context(|| format!("loading {name} from {}", dir.display()))?;
            controlnets.insert(name.clone(), Arc::new(net));
        }
    }
    Ok(SetModels {
        pipelines,
        controlnets,
        _tmp: tmp,
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), dst)?;
        }
    }
    Ok(())
}

/// A case's parameters (`dir`: the set's folder, where its init images are).
pub fn params_of(case: &Value, dir: &Path) -> Result<GenerateParams> {
    let s = |k: &str| case.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let u = |k: &str| case.get(k).and_then(|v| v.as_u64());
    let init_image = match s("init_image") {
        Some(name) => {
            let img = image::open(dir.join(&name)).with_context(|| name.clone())?;
            Some((img, case["strength"].as_f64().context("strength")?))
        }
        None => None,
    };
    let mask = match s("mask") {
        Some(name) => Some(image::open(dir.join(&name)).with_context(|| name.clone())?),
        None => None,
    };
    Ok(GenerateParams {
        mask,
        controls: Vec::new(),
        guess_mode: false,
        skip_layer_guidance: case
            .get("skip_guidance_layers")
            .and_then(|v| v.as_array())
            .map(|layers| -> Result<SkipLayerGuidance> {
                let layers = layers
                    .iter()
                    .map(|l| {
                        l.as_u64()
                            .map(|l| l as usize)
                            .context("skip_guidance_layers")
                    })
                    .collect::<Result<_>>()?;
                // diffusers' defaults unless the case sets them.
                let d = SkipLayerGuidance::with_layers(layers);
                let f = |k: &str, d: f64| case.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
                Ok(SkipLayerGuidance {
                    scale: f("skip_layer_guidance_scale", d.scale),
                    start: f("skip_layer_guidance_start", d.start),
                    stop: f("skip_layer_guidance_stop", d.stop),
                    layers: d.layers,
                })
            })
            .transpose()?,
        prompt: s("prompt").context("prompt")?,
        negative_prompt: s("negative_prompt"),
        prompt_2: s("prompt_2"),
        negative_prompt_2: s("negative_prompt_2"),
        clip_skip: u("clip_skip").map(|k| k as usize),
        emphasis: match s("emphasis") {
            Some(e) => e.parse()?,
            None => Default::default(),
        },
        width: u("width").context("width")? as usize,
        height: u("height").context("height")? as usize,
        steps: u("steps").unwrap_or(4) as usize,
        guidance: case["guidance"].as_f64().context("guidance")?,
        seed: u("seed").unwrap_or(0),
        samples: u("samples").unwrap_or(1) as usize,
        scheduler: s("scheduler"),
        karras: case.get("karras").and_then(|v| v.as_bool()),
        algorithm_type: case
            .get("algorithm_type")
            .and_then(|v| v.as_str())
            .map(String::from),
        init_image,
    })
}

/// The case's model with its `vae` (a folder in the set), `embeddings` (`[file, token or
/// null]`) and `loras` (`[file, weight]`).
fn variant_of(pipeline: &Pipeline, case: &Value, dir: &Path) -> Result<Pipeline> {
    let mut p = match case.get("vae").and_then(|v| v.as_str()) {
        Some(vae) => pipeline.with_vae(&dir.join(vae))?,
        None => pipeline.clone(),
    };
    if let Some(list) = case.get("embeddings").and_then(|v| v.as_array()) {
        let mut read = Vec::new();
        for e in list {
            let file = e[0].as_str().context("embeddings: [file, token or null]")?;
            read.push(Embedding::load(&dir.join(file), e[1].as_str(), None)?);
        }
        p = p.with_embeddings(&read.iter().collect::<Vec<_>>())?;
    }
    if let Some(loras) = case.get("loras").and_then(|v| v.as_array()) {
        let mut read = Vec::new();
        for l in loras {
            let file = l[0].as_str().context("loras: [file, weight]")?;
            let weight = l[1].as_f64().context("loras: [file, weight]")?;
            read.push((Lora::load(&dir.join(file))?, weight));
        }
        let refs: Vec<(&Lora, f64)> = read.iter().map(|(l, w)| (l, *w)).collect();
        p = p.with_loras(&refs)?;
    }
    Ok(p)
}

/// The case's `controlnets`: `[{name, image, scale, start, end}]`, each net one of the
/// set's.
pub fn controls_of(case: &Value, models: &SetModels, dir: &Path) -> Result<Vec<Control>> {
    let Some(list) = case.get("controlnets").and_then(|v| v.as_array()) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|c| {
            let name = c["name"].as_str().context("controlnets: name")?;
            let image = c["image"].as_str().context("controlnets: image")?;
            Ok(Control {
                net: models
                    .controlnets
                    .get(name)
                    .with_context(|| format!("no ControlNet {name}"))?
                    .clone(),
                image: image::open(dir.join(image)).with_context(|| image.to_string())?,
                scale: c["scale"].as_f64().unwrap_or(1.0),
                start: c["start"].as_f64().unwrap_or(0.0),
                end: c["end"].as_f64().unwrap_or(1.0),
            })
        })
        .collect()
}

/// Per-channel absolute differences: (max, mean).
pub fn image_diff(a: &image::RgbImage, b: &image::RgbImage) -> (i32, f64) {
    let (mut max, mut sum) = (0i32, 0u64);
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = (*x as i32 - *y as i32).abs();
        max = max.max(d);
        sum += d as u64;
    }
    (max, sum as f64 / a.as_raw().len().max(1) as f64)
}

/// Runs every case of `set` (a folder under `root`) on `device` in `dtype`.
pub fn run_set(root: &Path, set: &str, device: &Device, dtype: DType) -> Result<SetReport> {
    let dir = root.join(set);
    let manifest = manifest(root, set)?;
    let tolerance = manifest["max_abs_diff"].as_u64().unwrap_or(2) as i32;
    let models = load_models(root, &manifest, device, dtype)?;
    let mut report = SetReport {
        set: set.to_string(),
        tolerance,
        images: Vec::new(),
        failures: Vec::new(),
    };
    for case in manifest["cases"].as_array().context("cases")? {
        let id = case["id"].as_str().context("id")?;
        if let Err(e) = run_case(&models, case, &dir, &mut report) {
            report.failures.push(format!("{id}: {e:#}"));
        }
    }
    Ok(report)
}

fn run_case(models: &SetModels, case: &Value, dir: &Path, report: &mut SetReport) -> Result<()> {
    let id = case["id"].as_str().context("id")?;
    let model = case["model"].as_str().unwrap_or("tiny");
    let pipeline = models
        .pipelines
        .get(model)
        .with_context(|| format!("no model {model}"))?;
    let mut params = params_of(case, dir)?;
    params.controls = controls_of(case, models, dir)?;
    params.guess_mode = case
        .get("guess_mode")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let pipeline = variant_of(pipeline, case, dir)?;
    let out = match case.get("refiner").and_then(|r| r.as_str()) {
        // SDXL's ensemble: this model to `refiner_start`, the refiner from there.
        Some(refiner) => {
            let refiner = models
                .pipelines
                .get(refiner)
                .with_context(|| format!("no model {refiner}"))?;
            let start = case["refiner_start"].as_f64().context("refiner_start")?;
            pipeline.generate_refined(refiner, &params, start, &mut |_, _| true)?
        }
        None => pipeline.generate(&params, &mut |_, _| true)?,
    };
    let expected = case["expected"].as_array().context("expected")?;
    if out.images.len() != expected.len() {
        bail!("{} images, {} expected", out.images.len(), expected.len());
    }
    for (i, ((img, seed), name)) in out.images.iter().zip(expected).enumerate() {
        if *seed != params.seed + i as u64 {
            bail!(
                "image {i} has seed {seed}, expected {}",
                params.seed + i as u64
            );
        }
        let name = name.as_str().context("expected: file names")?;
        let want = image::open(dir.join(name))
            .with_context(|| name.to_string())?
            .to_rgb8();
        if want.dimensions() != img.dimensions() {
            bail!(
                "{:?} pixels, expected {:?}",
                img.dimensions(),
                want.dimensions()
            );
        }
        let (max, mean) = image_diff(&want, img);
        if max > report.tolerance {
            report.failures.push(format!(
                "{id}[{i}]: max abs diff {max} > {}",
                report.tolerance
            ));
        }
        report.images.push(ImageResult {
            set: report.set.clone(),
            id: id.to_string(),
            image: i,
            model: model.to_string(),
            scheduler: params
                .scheduler
                .clone()
                .unwrap_or_else(|| "(default)".into()),
            kind: if params.init_image.is_some() {
                "img2img"
            } else {
                "txt2img"
            },
            max_abs_diff: max,
            mean_abs_diff: mean,
        });
    }
    Ok(())
}
