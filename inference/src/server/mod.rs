//! `inference serve`: the HTTP server that carries the contract of wit/ (see
//! wit/HTTP.md). Module map: [`catalog`] (names → weights + defaults), [`registry`]
//! (loaded models, memory budget), [`queue`] (bounded, with deadlines), [`worker`]
//! (batches and runs them), [`routes`] (HTTP), [`convert`] (contract ↔ engine),
//! [`metrics`] (Prometheus).

pub mod catalog;
mod convert;
mod metrics;
mod progress;
mod queue;
pub mod registry;
mod routes;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;

use catalog::Catalog;
use metrics::Metrics;
use queue::Queue;
use registry::Registry;

/// Settings of `inference serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the chosen one is logged).
    #[arg(long, env = "INFERENCE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// The model catalog (TOML; see inference/catalog.toml, which is built in and used
    /// when this is not set).
    #[arg(long, env = "CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Serve every catalog name with this one model (a diffusers folder or a hub id);
    /// the names and their defaults stay.
    #[arg(long, env = "MODEL")]
    pub model: Option<String>,
    /// auto (CUDA when built with it and a GPU is present), cpu or cuda.
    #[arg(long, env = "INFERENCE_DEVICE", default_value = "auto")]
    pub device: String,
    /// The precision of the UNet and text encoders: auto (f32 on the CPU, bf16 on a GPU), f32,
    /// f16 or bf16; a catalog entry's `dtype` overrides it for that model.
    #[arg(long, env = "INFERENCE_DTYPE", default_value = "auto")]
    pub dtype: crate::device::Precision,
    /// Requests that may wait in the queue; more are refused with 503 and Retry-After.
    #[arg(long, env = "QUEUE_SIZE", default_value_t = 64)]
    pub queue_size: usize,
    /// Most images in one UNet batch (queued requests that can share one run
    /// together); 1 turns batching off.
    #[arg(long, env = "MAX_BATCH", default_value_t = 4)]
    pub max_batch: usize,
    /// The shared secret the edge sends (`Authorization: Bearer ...`); when set,
    /// /v1/generate and /v1/models refuse requests without it.
    #[arg(long, env = "INFERENCE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Memory for loaded models, GiB (overrides the catalog's memory_budget_gb).
    #[arg(long, env = "MEMORY_BUDGET_GB")]
    pub memory_budget_gb: Option<f64>,
    /// The longest a request may wait and run, seconds (the edge's x-timeout-ms
    /// header can only shorten it).
    #[arg(long, env = "MAX_WAIT_SECS", default_value_t = 3600)]
    pub max_wait_secs: u64,
    /// Time limits and the connection cap for clients.
    #[command(flatten)]
    pub limits: http_limits::Limits,
}

/// What the request handlers and the worker share.
pub struct AppState {
    pub catalog: Catalog,
    pub registry: Arc<Registry>,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub token: Option<String>,
    pub max_wait: Duration,
    pub max_batch: usize,
    /// The batch the worker runs, for progress reports.
    pub running: progress::Running,
    /// Smoothed seconds per batch (f64 bits), for Retry-After.
    batch_secs: AtomicU64,
}

impl AppState {
    fn record_batch_secs(&self, secs: f64) {
        let old = f64::from_bits(self.batch_secs.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            secs
        } else {
            0.8 * old + 0.2 * secs
        };
        self.batch_secs.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Seconds per batch lately (0 before the first batch).
    fn batch_secs(&self) -> f64 {
        f64::from_bits(self.batch_secs.load(Ordering::Relaxed))
    }

    /// How long a request sent now would wait for its answer: the batches ahead of
    /// it and its own, at the recent pace (at least a second a batch).
    fn expected_wait_secs(&self) -> f64 {
        let batches = (self.queue.len() / self.max_batch.max(1)) as f64 + 1.0;
        self.batch_secs().max(1.0) * batches
    }

    /// Where the request with this trace id stands here.
    fn progress(&self, trace_id: &str) -> contract::Progress {
        let batch = self.batch_secs();
        if let Some(ahead) = self.queue.position(trace_id) {
            // The running batch's rest, then the batches ahead and its own.
            let batches = (ahead / self.max_batch.max(1)) as f64 + 1.0;
            return contract::Progress {
                state: contract::ProgressState::Queued,
                ahead: ahead as u32,
                step: 0,
                steps: 0,
                eta_secs: self.running.secs_left(batch) + batch.max(1.0) * batches,
            };
        }
        self.running
            .of(trace_id, batch)
            .unwrap_or_else(progress::unknown)
    }

    /// When a refused request may find room: the queue's batches at the recent pace.
    fn retry_after_secs(&self) -> u32 {
        self.expected_wait_secs().ceil().clamp(1.0, 600.0) as u32
    }
}

fn build_catalog(args: &ServeArgs) -> anyhow::Result<Catalog> {
    let mut catalog = match &args.catalog {
        Some(path) => Catalog::load(path)?,
        None => Catalog::parse(catalog::BUILT_IN).context("the built-in catalog")?,
    };
    if let Some(model) = &args.model {
        catalog = catalog.with_single_source(model);
    }
    if let Some(gb) = args.memory_budget_gb {
        catalog.memory_budget = Some(catalog::gib_to_bytes(gb));
    }
    Ok(catalog)
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let device = crate::device::select(&args.device)?;
    let catalog = build_catalog(&args)?;
    let metrics = Arc::new(Metrics::new().context("setting up metrics")?);
    let m = metrics.clone();
    let default_dtype = args.dtype.dtype(&device);
    let dtypes = catalog
        .entries()
        .iter()
        .filter_map(|e| Some((e.source.clone(), e.dtype?.dtype(&device))))
        .collect();
    let registry = Arc::new(
        Registry::new(
            device,
            (default_dtype, dtypes),
            catalog.memory_budget,
            Box::new(move |n| m.models_loaded.set(n as i64)),
        )
        .with_t5(
            catalog
                .entries()
                .iter()
                .map(|e| (e.source.clone(), e.t5))
                .collect(),
        ),
    );
    let m = metrics.clone();
    let queue = Queue::new(
        args.queue_size,
        Box::new(move |n| m.queue_depth.set(n as i64)),
    );
    if args.token.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(
            "INFERENCE_TOKEN is not set: anyone who reaches {} can generate",
            args.listen
        );
    }
    let app = Arc::new(AppState {
        registry: registry.clone(),
        queue,
        metrics,
        token: args.token.clone().filter(|t| !t.is_empty()),
        max_wait: Duration::from_secs(args.max_wait_secs.max(1)),
        max_batch: args.max_batch.max(1),
        running: progress::Running::default(),
        batch_secs: AtomicU64::new(0),
        catalog,
    });
    tracing::info!(
        models = app.catalog.entries().len(),
        default = %app.catalog.default_entry().name,
        queue_size = args.queue_size,
        max_batch = app.max_batch,
        "catalog ready"
    );

    // The default model and those marked preload load now, in the background (/ready
    // says when the default one is in); the rest on first use.
    let mut preload: Vec<String> = vec![app.catalog.default_entry().source.clone()];
    for e in app.catalog.entries() {
        if e.preload && !preload.contains(&e.source) {
            preload.push(e.source.clone());
        }
    }
    let reg = registry.clone();
    std::thread::spawn(move || {
        for source in preload {
            // A failure is logged and shown by /ready and /v1/models; requests retry it.
            let _ = reg.get(&source);
        }
    });
    let worker = worker::spawn(app.clone());

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    serve_http(listener, routes::router(app.clone()), &args.limits).await;
    app.queue.close();
    drop(worker);
    Ok(())
}

/// Serves `router` until a shutdown signal, then lets open connections finish.
/// hyper's own loop rather than `axum::serve`, for the limits (`http_limits`): the
/// head timeout, request bodies that must keep coming, the connection cap.
async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: &http_limits::Limits,
) {
    use hyper_util::rt::TokioIo;
    let gate = limits.gate();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, client, place) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = gate.accept(&listener) => accepted,
        };
        let (router, limits, mut stop) = (router.clone(), limits.clone(), stop_rx.clone());
        connections.spawn(async move {
            let http1 = limits.http1();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let req = req.map(|body| axum::body::Body::new(limits.pace(body)));
                    tower::ServiceExt::oneshot(router.clone(), req)
                });
            let conn = http1.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%client, "connection ended: {e}");
            }
            drop(place);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
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
