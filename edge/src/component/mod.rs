//! The Spin side of the edge: receives the request, reads the variables, runs
//! the shared flow (auth → dialect parse → input image → inference → dialect
//! render) and logs one line per request. Only compiled for wasm32.

mod jobs;
mod outbound;

use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use spin_sdk::http::Request;

use crate::api_error::ApiError;
use crate::dialects::{self, Dialect, Incoming, Outgoing, modelslab};
use crate::input_image::{self, Provenance};
use crate::job::{ImageSource, Job, SizeRule};
use crate::openapi;
use crate::settings::{self, Settings};
use crate::stash::{self, Stash};
use crate::trace::new_trace_id;
use contract::wire::Images;

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
        None if openapi::serves(&path) => match openapi::serve(&method, &path) {
            Ok(out) => (out, "openapi", None),
            Err(err) => (
                dialects::render_unrouted(&err, &trace_id),
                "openapi",
                Some(err),
            ),
        },
        None if path.starts_with(stash::ROUTE_PREFIX) => match serve_stored(&req, &path).await {
            Ok(out) => (out, "stored", None),
            Err(err) => (
                dialects::render_unrouted(&err, &trace_id),
                "stored",
                Some(err),
            ),
        },
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

async fn serve(
    dialect: &'static dyn Dialect,
    req: Request,
    trace_id: &str,
) -> Result<Outgoing, ApiError> {
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
    let incoming = Incoming::new(
        parts.method,
        parts.uri.path().to_string(),
        parts.headers,
        body,
    );

    let key = dialect.credential(&incoming)?;
    settings
        .api_keys
        .check(key.as_deref(), dialect.key_location())?;
    // Links are built on it (ModelsLab's); other dialects have none.
    let origin = if dialect.keeps_jobs() {
        public_origin(&settings, &incoming)?
    } else {
        String::new()
    };
    if let Some(modelslab::Endpoint::Fetch(id)) = modelslab::endpoint(&incoming.path) {
        return jobs::fetch(
            dialect,
            &id,
            key.as_deref(),
            &origin,
            &incoming.path,
            &settings,
        )
        .await;
    }
    let mut job = dialect.parse(&incoming)?;
    dialect.configure(&mut job, &settings);
    let images = fetch_images(&mut job, &settings).await?;
    if dialect.keeps_jobs() {
        return jobs::submit(
            dialect,
            job,
            images,
            key.as_deref(),
            &origin,
            &incoming.path,
            &settings,
            trace_id,
        )
        .await;
    }
    let result = outbound::generate(&settings, &job.request, &images, trace_id)
        .await
        .map_err(|e| e.in_field_names(dialect.field_names()))?;
    let mut stash = Stash::new(&origin, unix_now());
    let out = dialect.render(&job, result, &mut stash)?;
    store(stash).await?;
    Ok(out)
}

/// Fetches (or takes) a job's input images and checks each from its header; sets the
/// output size from the init image's where the dialect leaves it to that, and fills in
/// `request.init_image`. The server decodes and fits them (once, natively); their bytes
/// travel as they are.
async fn fetch_images(job: &mut Job, settings: &Settings) -> Result<Images, ApiError> {
    let mut images = Images::default();
    if let Some(init) = job.init.take() {
        let bytes = fetch_image(&init.source, init.field, settings).await?;
        let upright = input_image::inspect(&bytes.0, settings.image_limits, init.field, bytes.1)?;
        let size = match (job.request.width, job.request.height, job.size_from_init) {
            (Some(w), Some(h), None) => (w, h),
            // No size given: the image's aspect, by the dialect's rule or the default one.
            (_, _, rule) => rule.unwrap_or(SizeRule::DEFAULT).size_for(upright),
        };
        (job.request.width, job.request.height) = (Some(size.0), Some(size.1));
        job.request.init_image = Some(contract::InitImage {
            image: String::new(),
            strength: init.strength,
            mask: None,
        });
        images.init_image = Some(bytes.0.into());
    }
    if let Some(mask) = job.mask.take() {
        let bytes = fetch_image(&mask.source, mask.field, settings).await?;
        input_image::inspect(&bytes.0, settings.image_limits, mask.field, bytes.1)?;
        let Some(init) = job.request.init_image.as_mut() else {
            return Err(ApiError::field(mask.field, "a mask needs an init image"));
        };
        init.mask = Some(String::new());
        images.mask = Some(bytes.0.into());
    }
    for control in std::mem::take(&mut job.controls) {
        let bytes = fetch_image(&control.source, control.field, settings).await?;
        input_image::inspect(&bytes.0, settings.image_limits, control.field, bytes.1)?;
        images.controls.push(bytes.0.into());
    }
    Ok(images)
}

async fn fetch_image(
    source: &ImageSource,
    field: &'static str,
    settings: &Settings,
) -> Result<(Vec<u8>, Provenance), ApiError> {
    Ok(match source {
        ImageSource::Url(url) => (
            outbound::fetch_image(url, field, settings).await?,
            Provenance::FetchedUrl,
        ),
        ImageSource::Bytes(bytes) => (bytes.clone(), Provenance::ClientBytes),
    })
}

/// How clients reach this edge, for links (`stash::links_origin`: `public_url`, or a
/// loopback origin of the request's own).
fn public_origin(settings: &Settings, req: &Incoming) -> Result<String, ApiError> {
    stash::links_origin(
        settings.public_url.as_deref(),
        req.header("spin-full-url"),
        req.header("host"),
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn kv_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!(
        "{what} the key-value store `{}` (spin.toml's key_value_stores): {e}",
        stash::STORE
    ))
}

/// Writes the stashed images (expired ones are swept by `jobs::maintain`).
async fn store(stash: Stash) -> Result<(), ApiError> {
    if stash.pending.is_empty() {
        return Ok(());
    }
    let kv = spin_sdk::key_value::Store::open(stash::STORE)
        .await
        .map_err(|e| kv_error("opening", e))?;
    for (key, png) in &stash.pending {
        kv.set(key, png)
            .await
            .map_err(|e| kv_error("writing to", e))?;
    }
    Ok(())
}

/// GET of a stored image link.
async fn serve_stored(req: &Request, path: &str) -> Result<Outgoing, ApiError> {
    if req.method() != http::Method::GET {
        return Err(ApiError::method_not_allowed(req.method().as_str(), "GET"));
    }
    let key = stash::key_for_path(path, unix_now())?;
    let kv = spin_sdk::key_value::Store::open(stash::STORE)
        .await
        .map_err(|e| kv_error("opening", e))?;
    match kv.get(&key).await.map_err(|e| kv_error("reading", e))? {
        Some(png) => Ok(Outgoing {
            status: 200,
            headers: vec![
                ("content-type".into(), "image/png".into()),
                ("cache-control".into(), "private, max-age=86400".into()),
            ],
            body: png,
        }),
        None => Err(ApiError::new(404, format!("no stored image at {path}"))),
    }
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
