//! The API dialects: each module maps one hosted API's wire format to a `Job` and
//! the result back. Everything else (auth, images, the backend call, error
//! statuses) is shared and lives outside this folder.

use crate::api_error::ApiError;
use crate::job::Job;
use contract::GenerateResult;

pub mod appypie;

/// An incoming request as the dialects see it: the body already read (within
/// the edge's size cap).
#[derive(Debug, Clone)]
pub struct Incoming {
    pub method: http::Method,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
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
    fn credential(&self, req: &Incoming) -> Option<String>;
    /// The request's fields, validated, as a job.
    fn parse(&self, req: &Incoming) -> Result<Job, ApiError>;
    /// The success response for the images the server made.
    fn render(&self, job: &Job, result: GenerateResult) -> Result<Outgoing, ApiError>;
    /// The failure response, in this API's error format.
    fn render_error(&self, err: &ApiError, trace_id: &str) -> Outgoing;
}

/// The dialect that serves `path`, if any.
pub fn for_path(path: &str) -> Option<&'static dyn Dialect> {
    if appypie::ROUTES.contains(&path) {
        return Some(&appypie::Appypie);
    }
    None
}

/// The error body for paths no dialect serves. Spin only routes the paths in
/// spin.toml to us, so this is for a route we list but don't know (a bug) or a
/// runtime that routes everything. Appypie's `{code, message, traceId}` is the
/// most self-explanatory of the dialects' error shapes, so it serves here too.
pub fn render_unrouted(err: &ApiError, trace_id: &str) -> Outgoing {
    appypie::Appypie.render_error(err, trace_id)
}
