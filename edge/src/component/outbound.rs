//! Outbound HTTP from the component: input-image downloads (allowlist checked at
//! every redirect, size and time capped while reading) and the call to the
//! inference server. Failures become `ApiError`s with the status the client
//! should see: an image URL that can't be fetched is a 400 naming the field (the
//! client chose it), the backend's failures are 502/503/504.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{Empty, Full};
use spin_sdk::http::send;
use spin_sdk::wasip3::http::types::{ErrorCode, RequestOptions};
use spin_sdk::wasip3::http_compat::{IncomingBody, IncomingMessage, RequestOptionsExtension};
use spin_sdk::wasip3::wit_bindgen::StreamResult;
use spin_sdk::wasip3::wit_future;
use url::Url;

use crate::api_error::{ApiError, human_bytes};
use crate::input_image::Provenance;
use crate::settings::Settings;

/// Room kept free in a body's buffer for each read: the host fills what it has ready.
const READ_ROOM: usize = 64 * 1024;
/// Redirects followed for an image URL (each hop re-checked against the allowlist).
const MAX_REDIRECTS: usize = 3;
/// The largest answer accepted from the inference server (4 samples of 2048x2048 PNG, base64).
const MAX_RESULT_BYTES: usize = 256 * 1024 * 1024;
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub enum ReadError {
    TooLarge(usize),
    TimedOut,
    Transport(ErrorCode),
}

impl ReadError {
    pub fn into_api_error(self, what: &str, from: Provenance) -> ApiError {
        match (self, from) {
            (ReadError::TooLarge(cap), Provenance::ClientBytes) => ApiError::too_large(what, cap),
            (ReadError::TooLarge(cap), Provenance::FetchedUrl) => ApiError::field(
                what,
                format!("the image is larger than the {} limit", human_bytes(cap)),
            ),
            (ReadError::TimedOut, Provenance::ClientBytes) => {
                ApiError::timeout(format!("{what}: reading it took too long"))
            }
            (ReadError::TimedOut, Provenance::FetchedUrl) => {
                ApiError::field(what, "the download took longer than the time limit")
            }
            (ReadError::Transport(code), Provenance::ClientBytes) => {
                ApiError::bad_request(format!("{what}: could not be read ({code:?})"))
            }
            (ReadError::Transport(code), Provenance::FetchedUrl) => {
                ApiError::field(what, format!("the download broke off ({code:?})"))
            }
        }
    }
}

/// Reads a whole body, refusing more than `cap` bytes and, with a deadline,
/// stopping once it has passed. It reads the body's stream itself, into one buffer
/// with room for all the host has ready: spin-sdk's `http_body` view reads 16 KiB
/// frames, and every read is a trip through the host, which cost the edge several
/// milliseconds per megabyte.
pub async fn read_body<T: IncomingMessage>(
    mut body: IncomingBody<T>,
    cap: usize,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, ReadError> {
    let declared = body.size_hint().upper().map_or(0, |n| n as usize);
    let Some(message) = body.take_unstarted() else {
        return Err(ReadError::Transport(ErrorCode::InternalError(Some(
            "the body was already being read".into(),
        ))));
    };
    // Kept until the end: dropping it tells the host the body was taken.
    let (_done, done) = wit_future::new(|| Ok(()));
    let (mut stream, trailers) = message.consume_body(done);
    let mut buf = Vec::with_capacity(declared.min(cap) + READ_ROOM);
    loop {
        if buf.capacity() - buf.len() < READ_ROOM {
            buf.reserve(READ_ROOM);
        }
        let (result, filled) = stream.read(buf).await;
        buf = filled;
        if buf.len() > cap {
            return Err(ReadError::TooLarge(cap));
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(ReadError::TimedOut);
        }
        match result {
            StreamResult::Complete(_) => {}
            StreamResult::Dropped | StreamResult::Cancelled => break,
        }
    }
    // The stream ends either way; the trailers' future says whether it broke off.
    match trailers.await {
        Ok(_) => Ok(buf),
        Err(code) => Err(ReadError::Transport(code)),
    }
}

/// Per-request timeouts, enforced by the host's HTTP client.
fn options(
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
) -> RequestOptionsExtension {
    let opts = RequestOptions::new();
    // A host that doesn't support a timeout says so with an error; the edge's own
    // deadline (images) or the backend's (inference) still bounds the request.
    let _ = opts.set_connect_timeout(Some(connect.as_nanos() as u64));
    let _ = opts.set_first_byte_timeout(Some(first_byte.as_nanos() as u64));
    let _ = opts.set_between_bytes_timeout(Some(between_bytes.as_nanos() as u64));
    RequestOptionsExtension(opts)
}

/// Downloads an input image, following at most MAX_REDIRECTS redirects.
pub async fn fetch_image(url: &Url, field: &str, settings: &Settings) -> Result<Vec<u8>, ApiError> {
    let limit = settings.image_fetch_timeout;
    let deadline = Instant::now() + limit;
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        settings.image_hosts.check(&url, field)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let req = http::Request::get(url.as_str())
            .header("accept", "image/png,image/jpeg,image/webp;q=0.9,*/*;q=0.5")
            .extension(options(left, left, left))
            .body(Empty::<Bytes>::new())
            .map_err(|e| ApiError::field(field, format!("cannot request {url} ({e})")))?;
        let resp = send(req)
            .await
            .map_err(|code| image_fetch_error(field, &url, code, limit))?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok());
            let Some(next) = location.and_then(|l| url.join(l).ok()) else {
                return Err(ApiError::field(
                    field,
                    format!("{url} redirected without a usable Location"),
                ));
            };
            url = next;
            continue;
        }
        if !status.is_success() {
            return Err(ApiError::field(
                field,
                format!("fetching {url} gave HTTP {}", status.as_u16()),
            ));
        }
        let cap = settings.image_limits.max_bytes;
        let declared = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cap as u64) {
            return Err(ApiError::field(
                field,
                format!("the image is larger than the {} limit", human_bytes(cap)),
            ));
        }
        return read_body(resp.into_body(), cap, Some(deadline))
            .await
            .map_err(|e| e.into_api_error(field, Provenance::FetchedUrl));
    }
    Err(ApiError::field(
        field,
        format!("more than {MAX_REDIRECTS} redirects"),
    ))
}

fn image_fetch_error(field: &str, url: &Url, code: ErrorCode, limit: Duration) -> ApiError {
    match code {
        ErrorCode::HttpRequestDenied => ApiError::field(
            field,
            format!(
                "{url} is not an allowed image host (spin.toml's allowed_outbound_hosts does not list it)"
            ),
        ),
        ErrorCode::DestinationIpProhibited => ApiError::field(
            field,
            format!("{url} resolves to a private address, which is not allowed"),
        ),
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::HttpResponseTimeout => ApiError::field(
            field,
            format!("{url} did not answer within {} s", limit.as_secs()),
        ),
        ErrorCode::DnsError(_) | ErrorCode::DnsTimeout | ErrorCode::DestinationNotFound => {
            ApiError::field(field, format!("the host of {url} could not be found"))
        }
        ErrorCode::ConnectionRefused => {
            ApiError::field(field, format!("{url} refused the connection"))
        }
        other => ApiError::field(field, format!("could not fetch {url} ({other:?})")),
    }
}

/// Sends one generation to an inference server and reads its answer. With several
/// servers, each request starts at a random one (spreading the load without shared
/// state) and moves on to the next when a server can't be reached or is full; a
/// server that took the request and then failed is not retried (the work may have
/// run).
pub async fn generate(
    settings: &Settings,
    request: &contract::GenerateRequest,
    images: &contract::wire::Images,
    trace_id: &str,
) -> Result<contract::GenerateResult, ApiError> {
    let body = contract::wire::encode(request, images)
        .map_err(|e| ApiError::internal(format!("encoding the request: {e}")))?;
    let (content_type, body) = (body.content_type, Bytes::from(body.bytes));
    let urls = &settings.inference_urls;
    let start = random_index(urls.len());
    let deadline = Instant::now() + settings.inference_timeout;
    let mut last = None;
    for url in urls.iter().cycle().skip(start).take(urls.len()) {
        match generate_at(
            url,
            settings,
            &content_type,
            body.clone(),
            trace_id,
            deadline,
        )
        .await
        {
            Err(Attempt::TryAnother(err)) => {
                eprintln!("trace_id={trace_id} inference server {url}: {err}; trying another");
                last = Some(err);
            }
            Err(Attempt::Final(err)) => return Err(err),
            Ok(result) => return Ok(result),
        }
    }
    Err(last.unwrap_or_else(|| ApiError::unavailable("no inference_url is configured")))
}

/// Why one server did not produce a result.
enum Attempt {
    /// The request did not start there (unreachable, full): another server may take it.
    TryAnother(ApiError),
    Final(ApiError),
}

async fn generate_at(
    base: &str,
    settings: &Settings,
    content_type: &str,
    body: Bytes,
    trace_id: &str,
    deadline: Instant,
) -> Result<contract::GenerateResult, Attempt> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    if timeout.is_zero() {
        return Err(Attempt::Final(ApiError::timeout(format!(
            "no inference server answered within {} s",
            settings.inference_timeout.as_secs()
        ))));
    }
    let mut req = http::Request::post(format!("{base}{}", contract::GENERATE_PATH))
        .header(http::header::CONTENT_TYPE, content_type)
        .header(contract::TRACE_HEADER, trace_id)
        // The server gives up on (or never starts) work the edge no longer waits for.
        .header(contract::TIMEOUT_HEADER, timeout.as_millis().to_string());
    if let Some(token) = &settings.inference_token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .extension(options(
            BACKEND_CONNECT_TIMEOUT.min(timeout),
            timeout,
            timeout,
        ))
        .body(Full::new(body))
        .map_err(|e| {
            Attempt::Final(ApiError::internal(format!(
                "inference_url {base}: cannot build a request ({e})"
            )))
        })?;
    let resp = send(req).await.map_err(|code| {
        let err = backend_error(code.clone(), settings.inference_timeout);
        if never_reached(&code) {
            Attempt::TryAnother(err)
        } else {
            Attempt::Final(err)
        }
    })?;
    let status = resp.status().as_u16();
    let body = read_body(resp.into_body(), MAX_RESULT_BYTES, Some(deadline))
        .await
        .map_err(|e| {
            Attempt::Final(match e {
                ReadError::Transport(code) => backend_error(code, settings.inference_timeout),
                ReadError::TooLarge(cap) => ApiError::bad_gateway(format!(
                    "the inference server's answer exceeds {}",
                    human_bytes(cap)
                )),
                ReadError::TimedOut => {
                    ApiError::timeout("the inference server's answer took too long")
                }
            })
        })?;
    if status == 200 {
        return serde_json::from_slice(&body).map_err(|e| {
            Attempt::Final(ApiError::bad_gateway(format!(
                "the inference server's answer is unreadable ({e})"
            )))
        });
    }
    match serde_json::from_slice::<contract::Error>(&body) {
        // A full queue there: another server may have room.
        Ok(err @ contract::Error::Overloaded(_)) => Err(Attempt::TryAnother(err.into())),
        Ok(err) => Err(Attempt::Final(err.into())),
        Err(_) if status == 401 => Err(Attempt::Final(ApiError::internal(
            "the inference server refused the edge's token (set the same inference_token on both)",
        ))),
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            Err(Attempt::Final(ApiError::bad_gateway(format!(
                "the inference server answered HTTP {status}: {text}"
            ))))
        }
    }
}

/// Failures that mean the request never reached a server.
fn never_reached(code: &ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionTimeout
            | ErrorCode::DestinationNotFound
            | ErrorCode::DestinationUnavailable
            | ErrorCode::DestinationIpUnroutable
            | ErrorCode::DnsError(_)
            | ErrorCode::DnsTimeout
            | ErrorCode::ConnectionLimitReached
    )
}

fn random_index(n: usize) -> usize {
    let mut b = [0u8; 4];
    if n <= 1 || getrandom::fill(&mut b).is_err() {
        return 0;
    }
    u32::from_le_bytes(b) as usize % n
}

fn backend_error(code: ErrorCode, timeout: Duration) -> ApiError {
    match code {
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::HttpResponseTimeout => ApiError::timeout(format!(
            "the inference server did not answer within {} s",
            timeout.as_secs()
        )),
        ErrorCode::HttpRequestDenied => ApiError::internal(
            "spin.toml's allowed_outbound_hosts does not allow this inference URL",
        ),
        ErrorCode::ConnectionRefused
        | ErrorCode::DestinationNotFound
        | ErrorCode::DestinationUnavailable
        | ErrorCode::DnsError(_)
        | ErrorCode::DnsTimeout
        | ErrorCode::ConnectionLimitReached => {
            ApiError::unavailable(format!("the inference server is unavailable ({code:?})"))
        }
        other => ApiError::unavailable(format!(
            "the connection to the inference server failed ({other:?})"
        )),
    }
}

/// A short `GET` of `path` on the inference server at `base` (with the token and
/// `headers`): its status and body, or None when it did not answer in time.
async fn ask(
    settings: &Settings,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, Vec<u8>)> {
    let mut req = http::Request::get(format!("{base}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(token) = &settings.inference_token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let limit = Duration::from_secs(2);
    let req = req
        .extension(options(limit, limit, limit))
        .body(Empty::<Bytes>::new())
        .ok()?;
    let resp = send(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = read_body(resp.into_body(), 64 * 1024, Some(Instant::now() + limit))
        .await
        .ok()?;
    Some((status, body))
}

/// How long a request for `model` sent now would wait at the first inference server
/// (its `GET /v1/queue`), in seconds: Ok(None) when it does not say (an older
/// server, a network error; the request then runs as usual), Err when the server
/// refuses the model.
pub async fn expected_wait(settings: &Settings, model: &str) -> Result<Option<f64>, ApiError> {
    let Some(base) = settings.inference_urls.first() else {
        return Ok(None);
    };
    let headers = [(contract::MODEL_HEADER, model)];
    let Some((status, body)) = ask(settings, base, contract::QUEUE_PATH, &headers).await else {
        return Ok(None);
    };
    if status == 400
        && let Ok(err @ contract::Error::UnknownModel(_)) = serde_json::from_slice(&body)
    {
        return Err(err.into());
    }
    let queue: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Ok(queue["expected_wait_secs"].as_f64())
}

/// Where the request sent with `trace_id` stands, from the inference server that
/// has it queued or running (`GET /v1/progress/{trace_id}`); None when none says.
pub async fn progress(settings: &Settings, trace_id: &str) -> Option<contract::Progress> {
    let path = format!("{}/{trace_id}", contract::PROGRESS_PATH);
    for base in &settings.inference_urls {
        if let Some((200, body)) = ask(settings, base, &path, &[]).await
            && let Ok(p) = serde_json::from_slice::<contract::Progress>(&body)
            && p.state != contract::ProgressState::Unknown
        {
            return Some(p);
        }
    }
    None
}

/// POSTs a job's answer to its webhook; Err says why it did not arrive (for the
/// retry log). The URL obeys the image hosts' rules, checked again at each try.
pub async fn post_webhook(
    settings: &Settings,
    url: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    settings
        .image_hosts
        .check(&parsed, "webhook")
        .map_err(|e| e.message)?;
    let limit = Duration::from_secs(10);
    let req = http::Request::post(parsed.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .extension(options(limit, limit, limit))
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = send(req).await.map_err(|code| format!("{code:?}"))?;
    let status = resp.status();
    // Read (and drop) the answer so that the connection ends cleanly.
    let _ = read_body(resp.into_body(), 64 * 1024, Some(Instant::now() + limit)).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered HTTP {}", status.as_u16()))
    }
}
