//! The routes of wit/HTTP.md: `POST /v1/generate` and `GET /health`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use contract::{Error, GenerateRequest, GenerateResult};
use tracing::Instrument;

use super::AppState;
use super::convert;
use crate::engine::ErrorKind;

/// Largest request body: an init image of up to 64 MiB as base64 in JSON.
const MAX_BODY_BYTES: usize = 96 * 1024 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(contract::GENERATE_PATH, post(generate))
        .route(contract::HEALTH_PATH, get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn generate(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let trace_id = headers
        .get(contract::TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .map(String::from)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let span = tracing::info_span!("generate", trace_id = %trace_id);
    let mut resp = async {
        let started = Instant::now();
        let result = run(&state, &body, started).await;
        match &result {
            Ok(r) => tracing::info!(
                images = r.images.len(),
                total_ms = r.timings.total_ms,
                "generated"
            ),
            Err(e) => tracing::warn!(status = e.status(), error = %e, "refused or failed"),
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
    state: &Arc<AppState>,
    body: &[u8],
    started: Instant,
) -> Result<GenerateResult, Error> {
    let req: GenerateRequest = serde_json::from_slice(body)
        .map_err(|e| Error::InvalidRequest(format!("body: not a generate-request ({e})")))?;
    let params = convert::to_params(&req, &state.info)?;

    // Admission: a bounded number of requests may wait for the model.
    let admitted = InFlight::admit(state).ok_or(Error::Overloaded(5))?;
    let _permit = state
        .gate
        .acquire()
        .await
        .map_err(|_| Error::Internal("the server is shutting down".into()))?;
    let queued = started.elapsed();

    // If the client goes away (the edge timed out), this future is dropped: the
    // guard then tells the engine to stop at its next step.
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let pipeline = state.pipeline.clone();
    let generated = tokio::task::spawn_blocking(move || {
        let out = pipeline.generate(&params, &mut |_, _| !cancel.load(Ordering::Relaxed))?;
        let encoded = convert::encode_images(&out.images)?;
        anyhow::Ok((out, encoded))
    })
    .await
    .map_err(|e| Error::Internal(format!("the generation task failed: {e}")))?;
    drop(admitted);
    let (out, images) = generated.map_err(|e| match ErrorKind::of(&e) {
        ErrorKind::InvalidParam => Error::InvalidRequest(convert::param_message(&e)),
        ErrorKind::Cancelled => Error::Timeout("cancelled: the client went away".into()),
        ErrorKind::Internal => Error::Internal(format!("{e:#}")),
    })?;
    Ok(GenerateResult {
        model: state.model.clone(),
        images,
        timings: convert::timings(queued, &out.timings, started),
    })
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

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a AppState);

impl<'a> InFlight<'a> {
    fn admit(state: &'a AppState) -> Option<InFlight<'a>> {
        let before = state.in_flight.fetch_add(1, Ordering::SeqCst);
        let admitted = InFlight(state);
        (before < state.queue_size).then_some(admitted)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
