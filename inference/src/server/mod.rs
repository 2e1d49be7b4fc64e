//! `inference serve`: the HTTP server that carries the contract of wit/ (see
//! wit/HTTP.md). It loads one model at start and answers every request with it
//! (single-model mode), running one generation at a time: the engine uses every
//! core (or the whole GPU) for one batch, so running two at once only slows both.

mod convert;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use anyhow::Context;
use tokio::sync::Semaphore;

use crate::engine::{ModelInfo, Pipeline};

/// Settings of `inference serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the chosen one is logged).
    #[arg(long, env = "INFERENCE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// A diffusers-format folder or a Hugging Face hub id; it answers every request,
    /// whatever model name the request carries.
    #[arg(long, env = "MODEL", default_value = crate::model_source::DEFAULT_MODEL)]
    pub model: String,
    /// auto (CUDA when built with it and a GPU is present), cpu or cuda.
    #[arg(long, env = "INFERENCE_DEVICE", default_value = "auto")]
    pub device: String,
    /// Requests that may wait for the model at once; more are refused with 503.
    #[arg(long, env = "QUEUE_SIZE", default_value_t = 64)]
    pub queue_size: usize,
}

/// What the request handlers share.
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub info: ModelInfo,
    /// What the model was loaded from, reported in results.
    pub model: String,
    /// One generation at a time.
    pub gate: Semaphore,
    /// Requests admitted and not yet finished (waiting or running).
    pub in_flight: AtomicUsize,
    pub queue_size: usize,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let device = crate::device::select(&args.device)?;
    let spec = args.model.clone();
    let (pipeline, dir) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let dir = crate::model_source::resolve(&spec)?;
        let pipeline = Pipeline::load(&dir, &device)
            .with_context(|| format!("loading the model in {}", dir.display()))?;
        Ok((pipeline, dir))
    })
    .await??;
    let info = pipeline.describe();
    tracing::info!(model = %args.model, folder = %dir.display(), architecture = %info.architecture, "model loaded");

    let state = Arc::new(AppState {
        pipeline: Arc::new(pipeline),
        info,
        model: args.model.clone(),
        gate: Semaphore::new(1),
        in_flight: AtomicUsize::new(0),
        queue_size: args.queue_size.max(1),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
