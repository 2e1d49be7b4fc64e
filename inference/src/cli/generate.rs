use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use inference::engine::depth::DepthEstimator;
use inference::engine::embeddings::Embedding;
use inference::engine::lora::Lora;
use inference::engine::preprocess::Preprocess;
use inference::engine::safety::{self, Replacement, SafetyChecker};
use inference::engine::{
    Control, ControlNet, GenerateParams, Pipeline, SkipLayerGuidance, T5Placement,
};
use inference::server::catalog::{BUILT_IN, Catalog};

#[derive(Args)]
pub struct GenerateArgs {
    /// Model: a diffusers-format folder (model_index.json, unet/, vae/, ...) or a
    /// Hugging Face hub id (downloaded once into the Hugging Face cache).
    #[arg(long)]
    pub model: String,
    /// auto (CUDA when built with it and a GPU is present), cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision of the UNet and text encoders: auto (f32 on the CPU, bf16 on a GPU), f32,
    /// f16 or bf16. In f16 the SDXL VAE runs in f32 when its config has `force_upcast`, as in
    /// diffusers.
    #[arg(long, default_value = "auto")]
    pub dtype: inference::device::Precision,
    #[command(flatten)]
    pub sampling: super::sampling::SamplingArgs,
    /// Seed of the first image (image i uses seed + i). Random when left out.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Use Karras sigmas where the scheduler has them (Euler, Heun, LMS, DPM2, DPM2 a, DPM++,
    /// UniPC, DEIS; the others run as configured).
    #[arg(long)]
    pub karras: bool,
    /// DPM-Solver's algorithm_type (dpmsolver, dpmsolver++, sde-dpmsolver, sde-dpmsolver++;
    /// DEIS: deis) over the model's scheduler config.
    #[arg(long)]
    pub algorithm_type: Option<String>,
    /// Init image for img2img (any size; resized to width x height).
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// Inpainting (with --init-image; an inpainting model's UNet, or any model by latent
    /// blending): the mask, white where the image is repainted, black where it is kept;
    /// any size (resized to the image's).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// img2img strength in (0, 1].
    #[arg(long, default_value_t = 0.3)]
    pub strength: f64,
    /// Number of images.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// A VAE in place of the model's: a catalog name (`[vaes]` of CATALOG, else the built-in
    /// catalog), a VAE folder, a model folder (its vae/) or a hub id.
    #[arg(long)]
    pub vae: Option<String>,
    /// A LoRA to merge, at STRENGTH (default 1): a catalog name (`[loras]`), a .safetensors
    /// file (diffusers/PEFT or kohya format), a folder holding one, or a hub id
    /// (owner/name or owner/name/FILE.safetensors). Repeat for several.
    #[arg(long = "lora", value_name = "PATH_OR_NAME[:STRENGTH]")]
    pub loras: Vec<String>,
    /// A textual-inversion embedding whose token the prompts may use: a catalog name
    /// (`[embeddings]`), a file (diffusers' `{token: vectors}`, A1111's `.pt` or
    /// `emb_params`, SDXL's `clip_l` + `clip_g`), a folder holding one or a hub id; `=TOKEN`
    /// names its token (else the file's own, else the file's name). Repeat for several.
    #[arg(long = "embeddings", value_name = "PATH_OR_NAME[=TOKEN]")]
    pub embeddings: Vec<String>,
    /// Run diffusers' safety checker on the images: a checker folder (a model folder with
    /// safety_checker/ and feature_extractor/, or config.json and preprocessor_config.json
    /// side by side), a hub id (CompVis/stable-diffusion-safety-checker), or `model` for the
    /// model folder's own. Flagged images are replaced (--safety-replace) and reported.
    #[arg(long, value_name = "PATH_OR_ID")]
    pub safety_checker: Option<String>,
    /// How flagged images are replaced: black (diffusers'), blur, pixelate or
    /// sensitive_content_text.
    #[arg(long, default_value = "black")]
    pub safety_replace: Replacement,
    /// SDXL's refiner after this model, as diffusers' ensemble of expert denoisers: a refiner
    /// folder or hub id (stabilityai/stable-diffusion-xl-refiner-1.0). The base denoises down
    /// to --refiner-start, the refiner the rest, on the same latents and generators.
    #[arg(long, value_name = "PATH_OR_ID")]
    pub refiner: Option<String>,
    /// Where the refiner takes over, as a fraction of the schedule (diffusers'
    /// denoising_end / denoising_start).
    #[arg(long, default_value_t = 0.8)]
    pub refiner_start: f64,
    /// A ControlNet guiding the run, at SCALE (default 1): a catalog name (`[controlnets]`
    /// of CATALOG, else the built-in catalog, for this model's architecture), a ControlNet
    /// folder or a hub id. Repeat for several (their residuals are summed); each takes the
    /// --control-image at its position.
    #[arg(long = "controlnet", value_name = "PATH_OR_NAME[:SCALE]")]
    pub controlnets: Vec<String>,
    /// The image of each --controlnet, in order (any size; resized to width x height).
    #[arg(long = "control-image", value_name = "PATH")]
    pub control_images: Vec<PathBuf>,
    /// How the control images are made from the images given: canny (OpenCV's Canny
    /// edges, thresholds 100 and 200), depth (a depth model's map, --depth-model) or none
    /// (used as given); default: the catalog entry's, else none.
    #[arg(long)]
    pub preprocess: Option<String>,
    /// The depth model of --preprocess depth: a Depth Anything folder in transformers'
    /// format or a hub id (depth-anything/Depth-Anything-V2-Small-hf); default: the
    /// catalog's depth_estimator.
    #[arg(long, value_name = "PATH_OR_ID")]
    pub depth_model: Option<String>,
    /// The fractions of the run the ControlNets guide (diffusers'
    /// control_guidance_start / control_guidance_end).
    #[arg(long, default_value_t = 0.0)]
    pub control_start: f64,
    #[arg(long, default_value_t = 1.0)]
    pub control_end: f64,
    /// diffusers' guess_mode: the ControlNets see the prompt's half only, their residuals
    /// scaled from 0.1 (shallowest) to 1 (mid block).
    #[arg(long)]
    pub guess_mode: bool,
    /// SD 3: leave the T5 encoder out (its part of the prompt is zeros, as diffusers with
    /// `text_encoder_3=None`); saves its memory (~9 GB for T5-XXL in bf16).
    #[arg(long, conflicts_with = "t5")]
    pub no_t5: bool,
    /// SD 3: where the T5 encoder runs: device (the model's), cpu (f32) or off.
    #[arg(long, value_name = "device|cpu|off")]
    pub t5: Option<T5Placement>,
    /// SD 3.5: skip-layer guidance on these transformer layers (e.g. 7,8,9 for 3.5 Medium),
    /// with diffusers' scale 2.8 from 1% to 20% of the steps.
    #[arg(long, value_delimiter = ',', value_name = "LAYERS")]
    pub skip_layers: Vec<usize>,
    /// Output PNG; with several samples, `-<i>` is added before the extension.
    #[arg(long)]
    pub out: PathBuf,
}

/// The catalog that names LoRAs and VAEs: CATALOG's file, else the built-in one.
fn catalog() -> anyhow::Result<Catalog> {
    match std::env::var_os("CATALOG") {
        Some(path) => Catalog::load(Path::new(&path)),
        None => Catalog::parse(BUILT_IN),
    }
}

/// `SPEC[:STRENGTH]`: the strength is what follows the last colon when it is a number.
fn lora_arg(arg: &str) -> anyhow::Result<(&str, f64)> {
    if let Some((spec, s)) = arg.rsplit_once(':')
        && let Ok(strength) = s.trim().parse::<f64>()
    {
        anyhow::ensure!(
            strength.is_finite(),
            "--lora {arg}: the strength is not a number"
        );
        return Ok((spec, strength));
    }
    Ok((arg, 1.0))
}

fn with_add_ons(pipeline: Pipeline, args: &GenerateArgs) -> anyhow::Result<Pipeline> {
    if args.vae.is_none() && args.loras.is_empty() && args.embeddings.is_empty() {
        return Ok(pipeline);
    }
    let catalog = catalog()?;
    let mut pipeline = pipeline;
    if let Some(spec) = &args.vae {
        let source = catalog
            .vaes
            .lookup(spec)
            .map_or(spec.as_str(), |v| v.source.as_str());
        let dir = inference::model_source::resolve_vae(source)?;
        pipeline = pipeline.with_vae(&dir)?;
        eprintln!("VAE {}", dir.display());
    }
    let mut embeddings = Vec::new();
    for arg in &args.embeddings {
        let (spec, token) = match arg.rsplit_once('=') {
            Some((spec, token)) if !token.contains('/') => (spec, Some(token)),
            _ => (arg.as_str(), None),
        };
        let entry = catalog.embeddings.lookup(spec);
        let source = entry.map_or(spec, |e| e.source.as_str());
        let token = token.or(entry.and_then(|e| e.token.as_deref()));
        let file = inference::model_source::resolve_embedding(source)?;
        let e = Embedding::load(&file, token, entry.map(|e| e.name.as_str()))?;
        eprintln!("embedding {} as {}", file.display(), e.token);
        embeddings.push(e);
    }
    if !embeddings.is_empty() {
        pipeline = pipeline.with_embeddings(&embeddings.iter().collect::<Vec<_>>())?;
    }
    let mut loras = Vec::new();
    for arg in &args.loras {
        let (spec, strength) = lora_arg(arg)?;
        let source = catalog
            .loras
            .lookup(spec)
            .map_or(spec, |l| l.source.as_str());
        let file = inference::model_source::resolve_lora(source)?;
        let lora = Lora::load(&file)?;
        eprintln!(
            "LoRA {} ({} layers) at {strength}",
            file.display(),
            lora.len()
        );
        loras.push((lora, strength));
    }
    let refs: Vec<(&Lora, f64)> = loras.iter().map(|(l, s)| (l, *s)).collect();
    pipeline.with_loras(&refs)
}

/// The --controlnet / --control-image pairs, their nets loaded for `pipeline`.
fn controls(pipeline: &Pipeline, args: &GenerateArgs) -> anyhow::Result<Vec<Control>> {
    if args.controlnets.len() != args.control_images.len() {
        bail!(
            "{} --controlnet and {} --control-image: give one image per ControlNet, in order",
            args.controlnets.len(),
            args.control_images.len()
        );
    }
    if args.controlnets.is_empty() {
        return Ok(Vec::new());
    }
    let catalog = catalog()?;
    let arch = pipeline.architecture().name();
    let mut depth: Option<DepthEstimator> = None;
    let mut out = Vec::new();
    for (arg, image) in args.controlnets.iter().zip(&args.control_images) {
        let (spec, scale) = lora_arg(arg)?;
        let entries = catalog.controlnets.lookup_all(spec);
        let entry = entries
            .iter()
            .find(|e| e.architecture.as_deref() == Some(arch))
            .or_else(|| entries.iter().find(|e| e.architecture.is_none()));
        let source = entry.map_or(spec, |e| e.source.as_str());
        let how = args
            .preprocess
            .as_deref()
            .or(entry.and_then(|e| e.preprocess.as_deref()))
            .unwrap_or("none");
        let how: Preprocess = how.parse()?;
        let dir = inference::model_source::resolve_controlnet(source)?;
        let (dtype, _) = pipeline.model_dtypes();
        let net = ControlNet::load(&dir, pipeline.device(), dtype)
            .with_context(|| format!("loading the ControlNet {}", dir.display()))?;
        let img = image::open(image).with_context(|| format!("cannot read {}", image.display()))?;
        eprintln!(
            "ControlNet {} at {scale}, image {} ({})",
            dir.display(),
            image.display(),
            how.name()
        );
        if how == Preprocess::Depth && depth.is_none() {
            let spec = args
                .depth_model
                .as_deref()
                .or(catalog.depth_estimator.as_deref())
                .context("--preprocess depth needs --depth-model (or a catalog depth_estimator)")?;
            let dir = inference::model_source::resolve_depth_estimator(spec)?;
            depth = Some(DepthEstimator::load(&dir, pipeline.device())?);
        }
        out.push(Control {
            net: Arc::new(net),
            image: how.apply(img, depth.as_ref())?,
            scale,
            start: args.control_start,
            end: args.control_end,
        });
    }
    Ok(out)
}

fn output_path(out: &Path, i: usize, n: usize) -> PathBuf {
    if n == 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    out.with_file_name(format!("{stem}-{i}.{ext}"))
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let device = inference::device::select(&args.device)?;
    let dir = inference::model_source::resolve(&args.model)?;
    let t = Instant::now();
    let t5 = match (args.no_t5, args.t5) {
        (true, _) => T5Placement::Off,
        (false, t5) => t5.unwrap_or_default(),
    };
    let pipeline = Pipeline::load_with(&dir, &device, args.dtype.dtype(&device), t5)
        .with_context(|| format!("loading model {}", dir.display()))?;
    let info = pipeline.describe();
    eprintln!(
        "loaded {} ({}) in {:.2?}",
        args.model,
        info.architecture,
        t.elapsed()
    );
    let pipeline = with_add_ons(pipeline, &args)?;
    let init_image = match &args.init_image {
        Some(p) => Some((
            image::open(p).with_context(|| format!("cannot read {}", p.display()))?,
            args.strength,
        )),
        None => None,
    };
    let mask = match &args.mask {
        Some(p) => Some(image::open(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let controls = controls(&pipeline, &args)?;
    let seed = args.seed.unwrap_or_else(inference::random_seed);
    let params = GenerateParams {
        controls,
        guess_mode: args.guess_mode,
        samples: args.samples,
        karras: if args.karras { Some(true) } else { None },
        algorithm_type: args.algorithm_type.clone(),
        init_image,
        mask,
        skip_layer_guidance: (!args.skip_layers.is_empty())
            .then(|| SkipLayerGuidance::with_layers(args.skip_layers.clone())),
        ..args.sampling.params(&info, seed)
    };
    println!("seed: {seed}");
    // Steps, elapsed time and the time left; drawn on a terminal only.
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("denoising {bar:30} step {pos}/{len}, {elapsed} (left {eta})")
            .expect("a valid template"),
    );
    let mut on_step = |step: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(step as u64);
        true
    };
    let mut out = match &args.refiner {
        Some(spec) => {
            let rdir = inference::model_source::resolve(spec)?;
            let refiner = Pipeline::load_with_dtype(&rdir, &device, args.dtype.dtype(&device))
                .with_context(|| format!("loading the refiner {}", rdir.display()))?;
            pipeline.generate_refined(&refiner, &params, args.refiner_start, &mut on_step)?
        }
        None => pipeline.generate(&params, &mut on_step)?,
    };
    bar.finish_and_clear();
    if let Some(spec) = &args.safety_checker {
        let checker_dir = if spec == "model" {
            dir.clone()
        } else {
            inference::model_source::resolve_safety_checker(spec)?
        };
        let checker = SafetyChecker::load(&checker_dir, &device)?;
        let verdicts = checker.check(&out.images.iter().map(|(i, _)| i).collect::<Vec<_>>())?;
        for ((img, seed), v) in out.images.iter_mut().zip(verdicts) {
            println!(
                "safety checker, seed {seed}: {} (concept scores {:?})",
                if v.nsfw {
                    "flagged, replaced"
                } else {
                    "passed"
                },
                v.concept_scores
            );
            if v.nsfw {
                *img = safety::replace(img, args.safety_replace);
            }
        }
    }
    let n = out.images.len();
    for (i, (img, seed)) in out.images.iter().enumerate() {
        let path = output_path(&args.out, i, n);
        img.save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{} (seed {seed})", path.display());
    }
    let tm = out.timings;
    println!(
        "scheduler {}; prepare {:.3}s, denoise {:.3}s, decode {:.3}s",
        out.scheduler,
        tm.prepare.as_secs_f64(),
        tm.denoise.as_secs_f64(),
        tm.decode.as_secs_f64()
    );
    Ok(())
}
