//! The Spin side of the edge: receives the request, reads the variables, runs
//! the shared flow (auth → dialect parse → input image → inference → dialect
//! render) and logs one line per request. Only compiled for wasm32.

mod outbound;

use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use spin_sdk::http::Request;

use crate::api_error::ApiError;
use crate::dialects::{self, Dialect, Incoming, Outgoing};
use crate::input_image::{self, Provenance};
use crate::job::ImageSource;
use crate::settings::{self, Settings};
use crate::trace::new_trace_id;

/// The largest request body the edge reads: a 10 MiB image as base64 in JSON,
/// or as a multipart upload, with room for the other fields.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

#[spin_sdk::http_service]
async fn handle(req: Request) -> http::Response<Full<Bytes>> {
    let started = Instant::now();
    let trace_id = new_trace_id();
    let method = req.method().clone();
    let path = req.uri().path().to_string();

    let (out, dialect_name, error) = match dialects::for_path(&path) {
        None => {
            let err = ApiError::not_found(&path);
            (dialects::render_unrouted(&err, &trace_id), "-", Some(err))
        }
        Some(dialect) => match serve(dialect, req, &trace_id).await {
            Ok(out) => (out, dialect.name(), None),
            Err(err) => (
                dialect.render_error(&err, &trace_id),
                dialect.name(),
                Some(err),
            ),
        },
    };
    log_request(
        &trace_id,
        dialect_name,
        &method,
        &path,
        out.status,
        started,
        error.as_ref(),
    );
    to_http(out.with_header("x-trace-id", trace_id))
}

async fn serve(dialect: &dyn Dialect, req: Request, trace_id: &str) -> Result<Outgoing, ApiError> {
    if req.method() != dialect.method() {
        return Err(ApiError::method_not_allowed(
            req.method().as_str(),
            dialect.method().as_str(),
        ));
    }
    let settings = load_settings().await?;
    let (parts, body) = req.into_parts();
    let body = outbound::read_body(body, MAX_REQUEST_BYTES, None)
        .await
        .map_err(|e| e.into_api_error("request body", Provenance::ClientBytes))?;
    let incoming = Incoming {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };

    settings.api_keys.check(
        dialect.credential(&incoming).as_deref(),
        dialect.key_location(),
    )?;
    let mut job = dialect.parse(&incoming)?;
    if let Some(init) = &job.init {
        let (bytes, from) = match &init.source {
            ImageSource::Url(url) => (
                outbound::fetch_image(url, init.field, &settings).await?,
                Provenance::FetchedUrl,
            ),
            ImageSource::Bytes(bytes) => (bytes.clone(), Provenance::ClientBytes),
        };
        let size = (job.request.width, job.request.height);
        job.request.init_image = Some(input_image::prepare_init(
            &bytes,
            settings.image_limits,
            init.field,
            from,
            size,
            init.strength,
        )?);
    }
    let result = outbound::generate(&settings, &job.request, trace_id).await?;
    dialect.render(&job, result)
}

/// The settings from Spin variables; a variable the manifest doesn't declare
/// counts as unset (Spin refuses the lookup), so old manifests keep working.
async fn load_settings() -> Result<Settings, ApiError> {
    let mut values = Vec::with_capacity(settings::VARIABLES.len());
    for name in settings::VARIABLES {
        match spin_sdk::variables::get(name).await {
            Ok(value) => values.push((name, Some(value))),
            Err(spin_sdk::variables::Error::Undefined(_)) => values.push((name, None)),
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "reading the Spin variable {name}: {e}"
                )));
            }
        }
    }
    Settings::from_lookup(|name| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.clone())
    })
    .map_err(|e| ApiError::internal(format!("edge misconfigured: {e}")))
}

fn to_http(out: Outgoing) -> http::Response<Full<Bytes>> {
    let mut builder = http::Response::builder().status(out.status);
    for (name, value) in &out.headers {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(Bytes::from(out.body)))
        .unwrap_or_else(|e| {
            // Only a header value we built wrongly can get here.
            let mut resp = http::Response::new(Full::new(Bytes::from(format!("edge error: {e}"))));
            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            resp
        })
}

/// One JSON line per request on stderr (Spin collects component stderr into its
/// logs); the trace id is the one the client sees in error bodies.
fn log_request(
    trace_id: &str,
    dialect: &str,
    method: &http::Method,
    path: &str,
    status: u16,
    started: Instant,
    error: Option<&ApiError>,
) {
    let mut line = serde_json::json!({
        "level": if status >= 500 { "ERROR" } else if status >= 400 { "WARN" } else { "INFO" },
        "target": "edge",
        "traceId": trace_id,
        "dialect": dialect,
        "method": method.as_str(),
        "path": path,
        "status": status,
        "ms": started.elapsed().as_millis() as u64,
    });
    if let Some(err) = error {
        line["error"] = err.message.clone().into();
    }
    eprintln!("{line}");
}
