//! Timings for `scripts/bench-engine` (our side; scripts/reference/bench_diffusers.py is
//! the diffusers side, measured in the same run). Prints one JSON line per measurement.
//!
//!   bench_engine unet [--runs N]                 one UNet step, SD1.5-size random weights,
//!                                                batch 2 (CFG), 64x64 latents (512x512 images)
//!   bench_engine pipeline --model DIR [--runs N] [--size PX] [--steps N]
//!                                                one whole txt2img generation (model loaded once)

use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use inference::engine::config::UNetConfig;
use inference::engine::unet::UNet;
use inference::engine::weights::Weights;
use inference::engine::{GenerateParams, Pipeline};

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

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} needs a value")),
        None => Ok(default),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn report(what: &str, runs: Vec<f64>) {
    let m = median(runs.clone());
    println!(r#"{{"engine":"ours","what":"{what}","median_s":{m:.4},"runs_s":{runs:?}}}"#);
}

fn bench_unet(runs: usize) -> Result<()> {
    let cfg: UNetConfig = serde_json::from_str(SD15_UNET)?;
    let t = Instant::now();
    let unet = UNet::build(&Weights::random(0), cfg)?;
    eprintln!("built a random SD1.5-size UNet in {:.1?}", t.elapsed());
    let dev = Device::Cpu;
    let sample = Tensor::randn(0f32, 1.0, (2, 4, 64, 64), &dev)?;
    let context = Tensor::randn(0f32, 1.0, (2, 77, 768), &dev)?.to_dtype(DType::F32)?;
    let step = || -> Result<f64> {
        let t = Instant::now();
        let out = unet.forward(&sample, &[500.0, 500.0], &context, None, None)?;
        out.sum_all()?.to_scalar::<f32>()?;
        Ok(t.elapsed().as_secs_f64())
    };
    step()?; // warm-up
    let times = (0..runs).map(|_| step()).collect::<Result<Vec<_>>>()?;
    report("unet_step_sd15_b2_64x64", times);
    Ok(())
}

fn bench_pipeline(args: &[String], runs: usize) -> Result<()> {
    let Some(model) = args
        .iter()
        .position(|a| a == "--model")
        .and_then(|i| args.get(i + 1))
    else {
        bail!("pipeline needs --model DIR");
    };
    let size: usize = arg(args, "--size", 256)?;
    let steps: usize = arg(args, "--steps", 20)?;
    let pipeline = Pipeline::load(std::path::Path::new(model), &Device::Cpu)?;
    let params = GenerateParams {
        prompt: "a lighthouse at dusk".into(),
        width: size,
        height: size,
        steps,
        guidance: 5.0,
        seed: 42,
        ..GenerateParams::default()
    };
    let once = || -> Result<f64> {
        let t = Instant::now();
        pipeline.generate(&params, &mut |_, _| true)?;
        Ok(t.elapsed().as_secs_f64())
    };
    once()?; // warm-up
    let times = (0..runs).map(|_| once()).collect::<Result<Vec<_>>>()?;
    report(&format!("tiny_sdxl_txt2img_{size}px_{steps}steps"), times);
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = arg(&args, "--runs", 3)?;
    match args.first().map(String::as_str) {
        Some("unet") => bench_unet(runs),
        Some("pipeline") => bench_pipeline(&args, runs),
        _ => bail!(
            "usage: bench_engine unet|pipeline [--model DIR] [--runs N] [--size PX] [--steps N]"
        ),
    }
}
