//! The routes of wit/HTTP.md: `POST /v1/generate` and `GET /v1/models` (behind the
//! edge's token when one is set), and `GET /health`, `/ready` and `/metrics` (open,
//! for probes and Prometheus).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use contract::{Error, GenerateResult, wire};
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tracing::Instrument;

use super::AppState;
use super::convert;
use super::metrics::error_kind;
use super::queue::Job;
use super::registry::SourceState;

/// Largest request body: an init image of up to 64 MiB as base64 in JSON (or as its
/// own bytes in a multipart body).
const MAX_BODY_BYTES: usize = 96 * 1024 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    let guarded = Router::new()
        .route(contract::GENERATE_PATH, post(generate))
        .route(contract::MODELS_PATH, get(models))
        .route(contract::QUEUE_PATH, get(queue))
        .route(
            &format!("{}/{{trace_id}}", contract::PROGRESS_PATH),
            get(progress),
        )
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(guarded)
        .route(contract::HEALTH_PATH, get(|| async { "ok" }))
        .route(contract::READY_PATH, get(ready))
        .route(contract::METRICS_PATH, get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(close_after_too_large))
        .with_state(state)
}

/// A body over the limit is left unread, so hyper closes the connection after the
/// 413: saying so keeps a keep-alive client from sending its next request on it
/// (scripts/soak saw one in 500 such requests fail at once).
async fn close_after_too_large(mut resp: Response) -> Response {
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The edge's shared token, when the server has one (`Authorization: Bearer ...`).
async fn require_token(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
            app.metrics.error("unauthorized");
            tracing::warn!(path = %req.uri().path(), "refused: missing or wrong token");
            discard_body(req).await;
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "authorization: this server needs the edge's token (INFERENCE_TOKEN) as a bearer token",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Reads a refused request's body to its end without keeping it (`http_limits::discard`).
async fn discard_body(req: Request) {
    http_limits::discard(req.into_body(), MAX_BODY_BYTES, Duration::from_secs(10)).await;
}

async fn generate(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let trace_id = headers
        .get(contract::TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .map(String::from)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let span = tracing::info_span!("generate", trace_id = %trace_id);
    let mut resp = async {
        let started = Instant::now();
        let result = run(&app, &headers, body, &trace_id, started).await;
        app.metrics.stage("total", started.elapsed());
        match &result {
            Ok(r) => tracing::info!(
                model = %r.model,
                images = r.images.len(),
                total_ms = r.timings.total_ms,
                queued_ms = r.timings.queued_ms,
                "generated"
            ),
            Err(e) => {
                app.metrics.error(error_kind(e));
                tracing::warn!(status = e.status(), error = %e, "refused or failed")
            }
        }
        reply(result)
    }
    .instrument(span)
    .await;
    if let Ok(v) = HeaderValue::from_str(&trace_id) {
        resp.headers_mut().insert(contract::TRACE_HEADER, v);
    }
    resp
}

async fn run(
    app: &Arc<AppState>,
    headers: &HeaderMap,
    body: Bytes,
    trace_id: &str,
    started: Instant,
) -> Result<GenerateResult, Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let wait = patience(headers)?.map_or(app.max_wait, |d| d.min(app.max_wait));
    // A full queue refuses before anything is read or decoded.
    if app.queue.is_full() {
        return Err(Error::Overloaded(app.retry_after_secs()));
    }
    let catalog = app.clone();
    // Reading the body (base64 or multipart) and decoding an init image are CPU
    // work: off the async threads.
    let (entry, draft) = tokio::task::spawn_blocking(move || {
        let received = wire::read(content_type.as_deref(), body)?;
        let req = received.request;
        convert::check_text(&req)?;
        let entry = catalog
            .catalog
            .lookup(&req.model)
            .cloned()
            .ok_or_else(|| unknown_model(&catalog, &req.model))?;
        let add_ons = convert::add_ons(&req, &catalog.catalog)?;
        let mut draft = convert::to_draft(&req, &received.images, &entry.defaults)?;
        draft.add_ons = add_ons;
        let depth = || {
            let source = catalog
                .catalog
                .depth_estimator
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("no depth_estimator in the catalog"))?;
            catalog.registry.depth_estimator(source)
        };
        draft.controls =
            convert::controls(&req, &received.images, &catalog.catalog, &draft, &depth)?;
        if draft.refiner_start.is_some() && entry.refiner.is_none() {
            return Err(Error::InvalidRequest(format!(
                "refiner_start: the model {} has no refiner in this server's catalog",
                entry.name
            )));
        }
        Ok::<_, Error>((entry, draft))
    })
    .await
    .map_err(|e| Error::Internal(format!("checking the request: {e}")))??;

    let (tx, rx) = tokio::sync::oneshot::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let job = Job {
        id: app.queue.next_id(),
        model: entry.name.clone(),
        source: entry.source.clone(),
        refiner_source: draft
            .refiner_start
            .and(entry.refiner.as_deref())
            .and_then(|r| app.catalog.lookup(r))
            .map(|r| r.source.clone()),
        draft,
        enqueued: started,
        deadline: started + wait,
        cancel: cancel.clone(),
        trace_id: trace_id.to_string(),
        reply: tx,
    };
    let id = job.id;
    if app.queue.push(job).is_err() {
        return Err(Error::Overloaded(app.retry_after_secs()));
    }
    // If the caller goes away (the edge timed out or disconnected), this future is
    // dropped: the guard takes the job out of the queue, or tells a running batch.
    let mut leave = LeaveOnDrop {
        app,
        id,
        cancel,
        answered: false,
    };
    let deadline = tokio::time::Instant::from_std(started + wait);
    let answer = tokio::time::timeout_at(deadline, rx).await;
    leave.answered = true;
    let done = match answer {
        Ok(reply) => {
            reply.map_err(|_| Error::Internal("the generation worker stopped".into()))??
        }
        // Dropping the guard takes the job out of the queue or stops its batch.
        Err(_) => {
            return Err(Error::Timeout(format!(
                "no result within {} ms, the request's deadline",
                wait.as_millis()
            )));
        }
    };

    let encode_started = Instant::now();
    let images = done.generated.images;
    let nsfw = done.nsfw;
    let encoded = tokio::task::spawn_blocking(move || convert::encode_images(&images, &nsfw))
        .await
        .map_err(|e| Error::Internal(format!("encoding the images: {e}")))?
        .map_err(|e| Error::Internal(format!("encoding the images: {e:#}")))?;
    app.metrics.stage("encode", encode_started.elapsed());
    Ok(GenerateResult {
        model: entry.name,
        steps: done.steps as u32,
        guidance: done.guidance as f32,
        scheduler: done.generated.scheduler.clone(),
        images: encoded,
        timings: convert::timings(done.queued, &done.generated.timings, started),
    })
}

/// The caller's patience: `x-timeout-ms` (the edge says how long it waits), which the
/// server's own cap then shortens; a value that is not a whole number of milliseconds
/// from 1 is refused rather than read as "no limit".
fn patience(headers: &HeaderMap) -> Result<Option<Duration>, Error> {
    let Some(value) = headers.get(contract::TIMEOUT_HEADER) else {
        return Ok(None);
    };
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(ms) if ms >= 1 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(Error::InvalidRequest(format!(
            "{}: must be a whole number of milliseconds from 1 (got {:?})",
            contract::TIMEOUT_HEADER,
            String::from_utf8_lossy(value.as_bytes())
        ))),
    }
}

fn unknown_model(app: &AppState, model: &str) -> Error {
    Error::UnknownModel(format!(
        "model: {model:?} is not served here; served: {}",
        app.catalog.names().join(", ")
    ))
}

fn reply(result: Result<GenerateResult, Error>) -> Response {
    match result {
        Ok(r) => (StatusCode::OK, axum::Json(r)).into_response(),
        Err(e) => {
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = (status, axum::Json(&e)).into_response();
            if let Error::Overloaded(secs) = e {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            resp
        }
    }
}

/// Takes a request out of the queue, or stops the batch it is in (once no one else in
/// the batch waits either), when its handler ends without the answer: the caller went
/// away (counted as `cancelled`) or the deadline passed.
struct LeaveOnDrop<'a> {
    app: &'a AppState,
    id: u64,
    cancel: Arc<AtomicBool>,
    answered: bool,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        let removed = self.app.queue.remove(self.id);
        if !self.answered {
            self.app.metrics.error("cancelled");
            tracing::info!(
                in_queue = removed,
                "the caller went away; its request {}",
                if removed {
                    "left the queue"
                } else {
                    "stops at the next step"
                }
            );
        }
    }
}

/// `GET /v1/queue`: how busy the server is, for callers that answer long waits
/// asynchronously (the edge's ModelsLab jobs); with `x-model`, also whether that
/// model is served (unknown-model otherwise), so a job that cannot run is refused
/// before it is queued.
async fn queue(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(model) = headers
        .get(contract::MODEL_HEADER)
        .and_then(|v| v.to_str().ok())
        && app.catalog.lookup(model).is_none()
    {
        return reply(Err(unknown_model(&app, model)));
    }
    axum::Json(json!({
        "queued": app.queue.len(),
        "batch_secs": app.batch_secs(),
        "expected_wait_secs": app.expected_wait_secs(),
    }))
    .into_response()
}

/// `GET /v1/progress/{trace_id}`: where that request stands (queued, running, or
/// unknown here), for callers that report progress (the edge's ModelsLab fetch).
async fn progress(State(app): State<Arc<AppState>>, Path(trace_id): Path<String>) -> Response {
    axum::Json(app.progress(&trace_id)).into_response()
}

/// `GET /v1/models`: the catalog and each model's state.
async fn models(State(app): State<Arc<AppState>>) -> Response {
    let default = app.catalog.default_entry().name.clone();
    let models: Vec<_> = app
        .catalog
        .entries()
        .iter()
        .map(|e| {
            let state = app.registry.state(&e.source);
            json!({
                "name": e.name,
                "aliases": e.aliases,
                "source": e.source,
                "preload": e.preload || e.name == default,
                "state": state,
                "dtype": format!("{:?}", app.registry.dtype(&e.source)).to_ascii_lowercase(),
                "defaults": e.defaults,
            })
        })
        .collect();
    axum::Json(json!({
        "default": default,
        "models": models,
        "loras": app.catalog.loras.items(),
        "vaes": app.catalog.vaes.items(),
        "embeddings": app.catalog.embeddings.items(),
        "controlnets": app.catalog.controlnets.items(),
    }))
    .into_response()
}

/// `GET /ready`: 200 once the default model is loaded.
async fn ready(State(app): State<Arc<AppState>>) -> Response {
    let entry = app.catalog.default_entry();
    match app.registry.state(&entry.source) {
        SourceState::Loaded => (StatusCode::OK, "ready").into_response(),
        SourceState::Failed(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the default model {} failed to load: {e}", entry.name),
        )
            .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("loading the default model {}", entry.name),
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}
