use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use inference::engine::{GenerateParams, Pipeline};

#[derive(Args)]
pub struct GenerateArgs {
    /// Model: a diffusers-format folder (model_index.json, unet/, vae/, ...) or a
    /// Hugging Face hub id (downloaded once into the Hugging Face cache).
    #[arg(long)]
    pub model: String,
    /// auto (CUDA when built with it and a GPU is present), cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub prompt: String,
    /// Negative prompt. Leaving it out differs from passing "" for SDXL (it zeroes the negative
    /// conditioning when the model sets force_zeros_for_empty_prompt); SD 1.x / 2.x encode "".
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Width in pixels (default: the model's: unet sample_size x VAE scale factor, e.g. 1024 for
    /// SDXL, 512 for SD 1.5).
    #[arg(long)]
    pub width: Option<usize>,
    /// Height in pixels (default: the model's).
    #[arg(long)]
    pub height: Option<usize>,
    /// Denoising steps (default: the model's, 20; 4 for LCM).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (CFG is on above 1; default: the model's, 7.5 for SD
    /// 1.x / 2.x, 5 for SDXL; for LCM UNets the guidance embedding, 8.5).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Seed of the first image (image i uses seed + i). Random when left out.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Scheduler (default: the model's scheduler_config.json): a diffusers class name
    /// (EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, ...)
    /// or an A1111 name ("Euler a", "DPM++ 2M Karras", "DPM++ 2M SDE", "Heun", "LMS", "DPM2 a",
    /// "DDIM", "DDPM", "PLMS", "UniPC", "DEIS", "LCM"); an unknown name lists the supported ones.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Use Karras sigmas where the scheduler has them (Euler, Heun, LMS, DPM2, DPM2 a, DPM++,
    /// UniPC, DEIS; the others run as configured).
    #[arg(long)]
    pub karras: bool,
    /// Init image for img2img (any size; resized to width x height).
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// img2img strength in (0, 1].
    #[arg(long, default_value_t = 0.3)]
    pub strength: f64,
    /// Number of images.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Output PNG; with several samples, `-<i>` is added before the extension.
    #[arg(long)]
    pub out: PathBuf,
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
    let pipeline = Pipeline::load(&dir, &device)
        .with_context(|| format!("loading model {}", dir.display()))?;
    let info = pipeline.describe();
    eprintln!(
        "loaded {} ({}) in {:.2?}",
        args.model,
        info.architecture,
        t.elapsed()
    );
    let init_image = match &args.init_image {
        Some(p) => Some((
            image::open(p).with_context(|| format!("cannot read {}", p.display()))?,
            args.strength,
        )),
        None => None,
    };
    let seed = args.seed.unwrap_or_else(inference::random_seed);
    let params = GenerateParams {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width: args.width.unwrap_or(info.default_width),
        height: args.height.unwrap_or(info.default_height),
        steps: args.steps.unwrap_or(info.default_steps),
        guidance: args.guidance.unwrap_or(info.default_guidance),
        seed,
        samples: args.samples,
        scheduler: args.scheduler.clone(),
        karras: if args.karras { Some(true) } else { None },
        init_image,
    };
    println!("seed: {seed}");
    let mut on_step = |step: usize, total: usize| {
        eprint!("\rstep {step}/{total}");
        let _ = std::io::stderr().flush();
        true
    };
    let out = pipeline.generate(&params, &mut on_step)?;
    eprintln!();
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
