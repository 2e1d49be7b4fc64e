//! The API dialects: each module maps one hosted API's wire format to a `Job` and
//! the result back. Everything else (auth, images, the backend call, error
//! statuses) is shared and lives outside this folder.

use std::sync::OnceLock;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::api_error::ApiError;
use crate::fields::Fields;
use crate::job::Job;
use crate::stash::Stash;
use contract::GenerateResult;

pub mod appypie;
pub mod holmesai;
pub mod hyperbolic;
pub mod modelslab;

/// An incoming request as the dialects see it: the body already read (within
/// the edge's size cap).
#[derive(Debug, Clone)]
pub struct Incoming {
    pub method: http::Method,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// The body parsed as a JSON object, once: a dialect that reads its key from the
    /// body (ModelsLab) and then its fields would otherwise parse a body of up to
    /// 16 MiB twice.
    json: OnceLock<Result<Fields, ApiError>>,
}

impl Incoming {
    pub fn new(
        method: http::Method,
        path: String,
        headers: http::HeaderMap,
        body: Vec<u8>,
    ) -> Self {
        Incoming {
            method,
            path,
            headers,
            body,
            json: OnceLock::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as a JSON object's fields (parsed on first use).
    pub fn json(&self) -> Result<&Fields, ApiError> {
        self.json
            .get_or_init(|| Fields::parse(&self.body))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// A response ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Outgoing {
    pub fn json(status: u16, value: &impl serde::Serialize) -> Outgoing {
        Outgoing {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).expect("our response bodies always serialise"),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Outgoing {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// One hosted API's request and response formats.
pub trait Dialect: Sync {
    /// For logs.
    fn name(&self) -> &'static str;
    /// The method its routes take.
    fn method(&self) -> http::Method {
        http::Method::POST
    }
    /// Where the client puts its API key, for messages ("the Ocp-Apim-Subscription-Key header").
    fn key_location(&self) -> &'static str;
    /// The API key the request presents, if any.
    /// A body the key should be in but that can't be read is the client's error (a
    /// 400), not a missing key.
    fn credential(&self, req: &Incoming) -> Result<Option<String>, ApiError>;
    /// The request's fields, validated, as a job.
    fn parse(&self, req: &Incoming) -> Result<Job, ApiError>;
    /// What the deployment's settings add to a parsed job (Appypie's refiner).
    fn configure(&self, _job: &mut Job, _settings: &crate::settings::Settings) {}
    /// The success response for the images the server made; images to be served by
    /// link go into `stash` (written to the key-value store before the reply).
    fn render(
        &self,
        job: &Job,
        result: GenerateResult,
        stash: &mut Stash,
    ) -> Result<Outgoing, ApiError>;
    /// This API's names for the contract's fields (contract, dialect), so that the
    /// inference server's refusal of a field reaches the client under the name it
    /// sent ("steps: ..." is "num_inference_steps: ..." to an Appypie client). Fields
    /// not listed keep their name.
    fn field_names(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// Whether its requests are jobs (`crate::jobs`: fetchable by id, run after the
    /// reply when they would wait long or carry a webhook). ModelsLab's are.
    fn keeps_jobs(&self) -> bool {
        false
    }
    /// The failure response, in this API's error format; by default `{code, message,
    /// traceId}`.
    fn render_error(&self, err: &ApiError, trace_id: &str) -> Outgoing {
        code_message_error(err, trace_id)
    }
}

/// The dialect that serves `path`, if any.
pub fn for_path(path: &str) -> Option<&'static dyn Dialect> {
    if appypie::ROUTES.contains(&path) {
        return Some(&appypie::Appypie);
    }
    if holmesai::endpoint(path).is_some() {
        return Some(&holmesai::HolmesAi);
    }
    if modelslab::endpoint(path).is_some() {
        return Some(&modelslab::ModelsLab);
    }
    if path == hyperbolic::ROUTE {
        return Some(&hyperbolic::Hyperbolic);
    }
    None
}

/// The `{code, message, traceId}` error body (Appypie's error contract; HolmesAI and
/// Hyperbolic document none, and this one says everything a client needs), with
/// Retry-After when the backend asked for it.
pub fn code_message_error(err: &ApiError, trace_id: &str) -> Outgoing {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        code: u16,
        message: &'a str,
        #[serde(rename = "traceId")]
        trace_id: &'a str,
    }
    let body = ErrorBody {
        code: err.status,
        message: &err.message,
        trace_id,
    };
    with_retry_after(Outgoing::json(err.status, &body), err)
}

/// Adds Retry-After to an error response when the error carries one.
pub fn with_retry_after(out: Outgoing, err: &ApiError) -> Outgoing {
    match err.retry_after {
        Some(secs) => out.with_header("retry-after", secs.to_string()),
        None => out,
    }
}

/// The first image of a result (APIs that answer with one image).
pub fn first_image(result: GenerateResult) -> Result<contract::GeneratedImage, ApiError> {
    result
        .images
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("the inference server returned no image"))
}

/// A base64 PNG from the inference server, written into an answer as it came.
/// serde_json would check each of its megabytes for characters to escape, byte by
/// byte, and base64 has none: as a raw JSON string it is checked once, quickly.
pub struct Base64Png(Box<RawValue>);

impl Base64Png {
    pub fn new(base64: String) -> Base64Png {
        let mut quoted = String::with_capacity(base64.len() + 2);
        quoted.push('"');
        quoted.push_str(&base64);
        quoted.push('"');
        match RawValue::from_string(quoted) {
            Ok(raw) => Base64Png(raw),
            // Not plain base64 after all: escaped the usual way.
            Err(_) => Base64Png(serde_json::value::to_raw_value(&base64).expect("a string")),
        }
    }
}

impl Serialize for Base64Png {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// The error body for paths no dialect serves. Spin only routes the paths in
/// spin.toml to us, so this is for a route we list but don't know (a bug) or a
/// runtime that routes everything. Appypie's `{code, message, traceId}` is the
/// most self-explanatory of the dialects' error shapes, so it serves here too.
pub fn render_unrouted(err: &ApiError, trace_id: &str) -> Outgoing {
    code_message_error(err, trace_id)
}

/// Request and result builders for the dialects' unit tests.
#[cfg(test)]
pub mod test_support {
    use super::Incoming;
    use contract::{GenerateResult, GeneratedImage, Timings};

    /// A POST to `path` with these headers and body.
    pub fn incoming(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Incoming {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Incoming::new(http::Method::POST, path.into(), map, body.to_vec())
    }

    /// `n` images whose PNG is "hello" (base64 aGVsbG8=), seeds 9, 10, ...; 1.5 s in all.
    pub fn result(n: usize) -> GenerateResult {
        GenerateResult {
            model: "m".into(),
            steps: 4,
            guidance: 1.5,
            scheduler: "EulerDiscreteScheduler".into(),
            images: (0..n)
                .map(|i| GeneratedImage {
                    png: "aGVsbG8=".into(),
                    seed: 9 + i as u64,
                    width: 8,
                    height: 8,
                    nsfw: (i == 1).then_some(true),
                })
                .collect(),
            timings: Timings {
                queued_ms: 0,
                prepare_ms: 0,
                denoise_ms: 0,
                decode_ms: 0,
                total_ms: 1500,
            },
        }
    }
}
