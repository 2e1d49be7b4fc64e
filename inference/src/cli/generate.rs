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
    let pipeline = Pipeline::load_with_dtype(&dir, &device, args.dtype.dtype(&device))
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
        samples: args.samples,
        karras: if args.karras { Some(true) } else { None },
        algorithm_type: args.algorithm_type.clone(),
        init_image,
        ..args.sampling.params(&info, seed)
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
