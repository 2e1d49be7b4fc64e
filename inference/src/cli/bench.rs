//! `inference bench`: timings of our engine, for scripts/bench-engine (CPU, against diffusers
//! on the same machine) and scripts/gpu-check (GPU, against diffusers on the same card).
//!
//! With `--model DIR`: the load time, whole txt2img generations at each `--batches` size (one
//! request of b images, as a batch of b requests runs; median of `--runs` after `--warmup`),
//! and `--unet-steps` synchronised UNet forward passes at the CFG batch. Without a model: the
//! UNet step alone, on an SD 1.5-size UNet with random weights. Prints a JSON line per
//! measurement (`{"engine":"ours","what",...,"median_s"}`); `--json` keeps everything,
//! rewritten after each measurement.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use inference::device::Precision;
use inference::engine::config::UNetConfig;
use inference::engine::unet::{AddedCond, UNet, sdxl_time_ids};
use inference::engine::weights::Weights;
use inference::engine::{GenerateParams, Pipeline};
use serde_json::{Value, json};

/// Stable Diffusion 1.5's unet/config.json (the fields that shape the network).
const SD15_UNET: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false, "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
  "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
  "out_channels": 4, "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

#[derive(Args)]
pub struct BenchArgs {
    /// A diffusers-format folder or hub id; without it, only the UNet step of an SD 1.5-size
    /// UNet with random weights is timed.
    #[arg(long)]
    pub model: Option<String>,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto (f32 on the CPU, bf16 on a GPU), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: Precision,
    #[command(flatten)]
    pub sampling: super::sampling::SamplingArgs,
    /// Seed of image 0 (image i: seed + i).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Timed runs per batch size.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Untimed runs first (kernel loading, allocator warm-up, cuDNN heuristics).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Images per request, one measurement each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batches: Vec<usize>,
    /// Timed UNet forward passes (0: none).
    #[arg(long, default_value_t = 0)]
    pub unet_steps: usize,
    /// Save the images of the first timed batch-1 run here (`ours_b1_<i>.png`).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Write all results here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn report(what: &str, runs: &[f64]) -> Value {
    let line = json!({"engine": "ours", "what": what, "median_s": median(runs), "runs_s": runs});
    println!("{line}");
    line
}

fn dtype_name(d: DType) -> String {
    format!("{d:?}").to_ascii_lowercase()
}

pub fn run(args: BenchArgs) -> Result<()> {
    let device = inference::device::select(&args.device)?;
    let dtype = args.dtype.dtype(&device);
    let mut out = Results {
        json: json!({
            "engine": "ours",
            "device": inference::device::name(&device),
            "dtype": dtype_name(dtype),
        }),
        path: args.json.clone(),
    };
    match &args.model {
        Some(model) => bench_model(&args, model, &device, dtype, &mut out)?,
        None => {
            let cfg: UNetConfig = serde_json::from_str(SD15_UNET)?;
            let t = Instant::now();
            let unet = UNet::build(&Weights::random(0), cfg)?;
            eprintln!("built a random SD1.5-size UNet in {:.1?}", t.elapsed());
            let (w, h) = (
                args.sampling.width.unwrap_or(512),
                args.sampling.height.unwrap_or(512),
            );
            // CFG runs the UNet on two rows; 8 is SD 1.5's VAE scale factor.
            let step = unet_steps(&args, &unet, 2, (w, h, 8), &device, dtype)?;
            out.set("unet_step", step)?;
        }
    }
    Ok(())
}

/// The `--json` object, written again after each measurement, so a run stopped part way (a
/// time limit in gpu-check) keeps what it measured.
struct Results {
    json: Value,
    path: Option<PathBuf>,
}

impl Results {
    fn set(&mut self, key: &str, value: Value) -> Result<()> {
        self.json[key] = value;
        if let Some(path) = &self.path {
            std::fs::write(path, serde_json::to_string_pretty(&self.json)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

fn bench_model(
    args: &BenchArgs,
    model: &str,
    device: &Device,
    dtype: DType,
    out: &mut Results,
) -> Result<()> {
    let dir = inference::model_source::resolve(model)?;
    let t = Instant::now();
    let pipeline = Pipeline::load_with_dtype(&dir, device, dtype)?;
    device.synchronize()?;
    let load_s = t.elapsed().as_secs_f64();
    let info = pipeline.describe();
    let params = args.sampling.params(&info, args.seed);
    let (w, h, steps) = (params.width, params.height, params.steps);
    out.set("model", json!(model))?;
    out.set("vae_dtype", json!(dtype_name(pipeline.model_dtypes().1)))?;
    out.set("width", json!(w))?;
    out.set("height", json!(h))?;
    out.set("steps", json!(steps))?;
    out.set("guidance", json!(params.guidance))?;
    out.set("load_s", json!(load_s))?;
    eprintln!("loaded {model} ({}) in {load_s:.2} s", info.architecture);
    report("load", &[load_s]);

    let mut rows = Vec::new();
    let mut images = Vec::new();
    for &batch in &args.batches {
        let params = GenerateParams {
            samples: batch.max(1),
            ..params.clone()
        };
        let (mut totals, mut denoise) = (Vec::new(), Vec::new());
        for i in 0..args.warmup + args.runs {
            let t = Instant::now();
            let g = pipeline.generate(&params, &mut |_, _| true)?;
            // `generate` returns images on the host, so the work is done when it returns.
            let secs = t.elapsed().as_secs_f64();
            out.json["scheduler"] = json!(g.scheduler);
            if i < args.warmup {
                continue;
            }
            totals.push(secs);
            denoise.push(g.timings.denoise.as_secs_f64());
            if let Some(dir) = &args.save
                && batch == 1
                && images.is_empty()
            {
                images = save_images(dir, &g.images)?;
            }
        }
        report(&format!("txt2img_{w}x{h}_{steps}steps_b{batch}"), &totals);
        let m = median(&totals);
        rows.push(json!({
            "batch": batch,
            "runs_s": totals,
            "median_s": m,
            "images_per_s": batch as f64 / m,
            "denoise_median_s": median(&denoise),
        }));
        out.set("images", json!(images))?;
        out.set("pipeline", json!(rows))?;
    }
    if args.unet_steps > 0 {
        // The UNet batch of one image: two rows when the pipeline runs guidance as CFG.
        let rows = if pipeline.plan(params.clone())?.key().do_cfg {
            2
        } else {
            1
        };
        let size = (w, h, pipeline.vae_scale_factor());
        let step = unet_steps(args, pipeline.unet()?, rows, size, device, dtype)?;
        out.set("unet_step", step)?;
    }
    Ok(())
}

fn save_images(dir: &Path, images: &[(image::RgbImage, u64)]) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    images
        .iter()
        .enumerate()
        .map(|(i, (img, _))| {
            let path = dir.join(format!("ours_b1_{i}.png"));
            img.save(&path)?;
            Ok(path.display().to_string())
        })
        .collect()
}

/// `--unet-steps` forward passes of `unet` at `batch` for `w` x `h` images (latents smaller
/// by the VAE's scale factor `f`), each waited for.
fn unet_steps(
    args: &BenchArgs,
    unet: &UNet,
    batch: usize,
    (w, h, f): (usize, usize, usize),
    device: &Device,
    dtype: DType,
) -> Result<Value> {
    let cfg = &unet.config;
    let (lh, lw) = (h / f, w / f);
    let cross = match &cfg.cross_attention_dim {
        inference::engine::config::OneOrMany::One(c) => *c,
        inference::engine::config::OneOrMany::Many(v) => v[0],
    };
    let sample = Tensor::randn(0f32, 1.0, (batch, cfg.in_channels, lh, lw), device)?;
    let context = Tensor::randn(0f32, 1.0, (batch, 77, cross), device)?.to_dtype(dtype)?;
    // SDXL's added conditioning: pooled text embeddings and six time ids per row.
    let pooled_dim = cfg
        .projection_class_embeddings_input_dim
        .map(|d| d - 6 * cfg.addition_time_embed_dim.unwrap_or(0));
    let text_embeds = match pooled_dim {
        Some(d) if unet.needs_added_cond() => {
            Some(Tensor::randn(0f32, 1.0, (batch, d), device)?.to_dtype(dtype)?)
        }
        _ => None,
    };
    let time_ids = sdxl_time_ids(w, h, batch);
    let timestep_cond = match cfg.time_cond_proj_dim {
        Some(d) => Some(Tensor::randn(0f32, 1.0, (batch, d), device)?.to_dtype(dtype)?),
        None => None,
    };
    let step = || -> Result<f64> {
        let t = Instant::now();
        let added = text_embeds.as_ref().map(|te| AddedCond {
            text_embeds: te,
            time_ids: &time_ids,
        });
        let timesteps = vec![500.0; batch];
        let out = unet.forward(
            &sample,
            &timesteps,
            &context,
            added.as_ref(),
            timestep_cond.as_ref(),
        )?;
        drop(out);
        device.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    for _ in 0..args.warmup {
        step()?;
    }
    let runs = (0..args.unet_steps)
        .map(|_| step())
        .collect::<Result<Vec<_>>>()?;
    let line = report(&format!("unet_step_b{batch}_{lh}x{lw}"), &runs);
    Ok(json!({"batch": batch, "runs_s": runs, "median_s": line["median_s"]}))
}
