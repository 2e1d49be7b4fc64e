use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct MakeTinyArgs {
    /// Folder to write (created if needed).
    pub dir: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: MakeTinyArgs) -> anyhow::Result<()> {
    inference::engine::tiny::write_tiny_model(&args.dir, args.seed)?;
    println!("wrote tiny SDXL model to {}", args.dir.display());
    Ok(())
}
