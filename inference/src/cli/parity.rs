//! `inference parity`: runs the diffusers parity fixtures (`inference::parity`) on a device
//! and dtype, prints each image's difference, and fails when one is over its set's
//! tolerance. scripts/gpu-check runs it on a GPU in f32 (the images must match diffusers'
//! as the CPU's do); in half precision the differences are reported, not judged.

use std::path::PathBuf;

use clap::Args;
use inference::device::Precision;
use inference::parity;
use serde_json::json;

#[derive(Args)]
pub struct ParityArgs {
    /// The fixtures folder (with parity/, parity_arch/, scheduler_parity/, models/).
    #[arg(long, default_value = "inference/tests/fixtures")]
    pub fixtures: PathBuf,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto, f32, f16 or bf16 (only f32 is held to the tolerance).
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// Sets to run (default: all).
    #[arg(long, value_delimiter = ',')]
    pub sets: Vec<String>,
    /// Write the results here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: ParityArgs) -> anyhow::Result<()> {
    let device = inference::device::select(&args.device)?;
    let dtype = args.dtype.dtype(&device);
    let sets: Vec<String> = if args.sets.is_empty() {
        parity::SETS.iter().map(|s| s.to_string()).collect()
    } else {
        args.sets.clone()
    };
    let judged = dtype == candle_core::DType::F32;
    let mut reports = Vec::new();
    for set in &sets {
        let started = std::time::Instant::now();
        let report = parity::run_set(&args.fixtures, set, &device, dtype)?;
        let worst = report.images.iter().map(|r| r.max_abs_diff).max();
        println!(
            "{set}: {} images in {:.1?}, worst max abs diff {}, tolerance {}{}",
            report.images.len(),
            started.elapsed(),
            worst.map_or("-".into(), |w| w.to_string()),
            report.tolerance,
            if report.failures.is_empty() {
                ""
            } else {
                ": FAILED"
            }
        );
        for f in &report.failures {
            println!("  {f}");
        }
        reports.push(report);
    }
    let failed = reports.iter().any(|r| !r.failures.is_empty());
    let worst = reports
        .iter()
        .flat_map(|r| &r.images)
        .map(|r| r.max_abs_diff)
        .max();
    if let Some(path) = &args.json {
        let cases: Vec<_> = reports.iter().flat_map(|r| &r.images).collect();
        let failures: Vec<_> = reports.iter().flat_map(|r| &r.failures).collect();
        let out = json!({
            "device": inference::device::name(&device),
            "dtype": format!("{dtype:?}").to_ascii_lowercase(),
            "tolerance": reports.iter().map(|r| r.tolerance).min(),
            "cases": cases,
            "failures": failures,
            "worst": worst,
            "passed": !failed || !judged,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    if failed && judged {
        anyhow::bail!("parity: some images are further from diffusers' than the tolerance");
    }
    Ok(())
}
