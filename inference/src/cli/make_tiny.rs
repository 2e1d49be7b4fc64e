use std::path::PathBuf;

use clap::Args;
use inference::engine::tiny::{TinyArch, write_tiny_model_arch};

#[derive(Args)]
pub struct MakeTinyArgs {
    /// Folder to write (created if needed).
    pub dir: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Architecture: sdxl (StableDiffusionXLPipeline), sd15 or sd2 (StableDiffusionPipeline).
    #[arg(long, default_value = "sdxl")]
    pub arch: String,
}

pub fn run(args: MakeTinyArgs) -> anyhow::Result<()> {
    let arch: TinyArch = args.arch.parse()?;
    write_tiny_model_arch(&args.dir, args.seed, arch)?;
    let name = match arch {
        TinyArch::Sdxl => "SDXL",
        TinyArch::Sd15 => "SD 1.5",
        TinyArch::Sd2 => "SD 2",
    };
    println!("wrote tiny {name} model to {}", args.dir.display());
    Ok(())
}
