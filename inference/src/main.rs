//! `inference`: command line of the Stable Diffusion engine. A thin dispatcher; each
//! subcommand lives in its own module under `cli/`.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "inference",
    version,
    about = "Stable Diffusion inference engine (diffusers-format models on candle)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt (txt2img) or a prompt and an init image (img2img).
    Generate(Box<cli::generate::GenerateArgs>),
    /// Write a tiny randomly initialised SDXL-architecture model (diffusers layout).
    MakeTinyModel(cli::make_tiny::MakeTinyArgs),
    /// Serve the edge-inference contract (wit/HTTP.md) over HTTP.
    Serve(inference::server::ServeArgs),
    /// Time model loading, whole generations and UNet steps (scripts/bench-engine, gpu-check).
    Bench(cli::bench::BenchArgs),
    /// Run the diffusers parity fixtures on a device and dtype (scripts/gpu-check).
    Parity(cli::parity::ParityArgs),
}

fn main() -> std::process::ExitCode {
    cli::init_logging();
    // Errors are for people: the chain of causes on one line each, no backtrace.
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Generate(args) => cli::generate::run(*args),
        Command::MakeTinyModel(args) => cli::make_tiny::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Parity(args) => cli::parity::run(args),
        Command::Serve(args) => {
            tokio::runtime::Runtime::new()?.block_on(inference::server::serve(args))
        }
    }
}
