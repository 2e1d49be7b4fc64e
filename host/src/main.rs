//! `edge-host`: serve a Spin application (spin.toml) on wasmtime.
//!
//! ```text
//! edge-host [--from spin.toml] [--listen 127.0.0.1:3000] [--allow-outbound ORIGIN]...
//! ```
//! See `edge-host --help`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use edge_host::cli::{Options, run};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let options = Options::parse();

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if options.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge-host: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}
