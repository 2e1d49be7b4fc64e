//! The one error type of the edge. Every failure, whatever its source, becomes an
//! `ApiError` with an HTTP status and a message for the client; each dialect only
//! decides how to render it (`dialects::*::render_error`).

use std::fmt;

/// What went wrong, as the client should hear it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// Seconds after which a retry may succeed (503 from an overloaded backend).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: a field the client sent (or left out) is not acceptable. The message
    /// starts with the field's name so the client knows what to fix.
    pub fn field(name: &str, problem: impl fmt::Display) -> Self {
        Self::new(400, format!("{name}: {problem}"))
    }

    /// 400 about the request as a whole (not JSON, wrong content type, ...).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 401: missing or wrong credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, message)
    }

    /// 404: no dialect serves this path.
    pub fn not_found(path: &str) -> Self {
        Self::new(404, format!("no API is served at {path}"))
    }

    /// 405: a served path called with the wrong method.
    pub fn method_not_allowed(method: &str, allowed: &str) -> Self {
        Self::new(
            405,
            format!("method {method} is not allowed here; use {allowed}"),
        )
    }

    /// 413: the request body is larger than the edge accepts.
    pub fn too_large(what: &str, limit: usize) -> Self {
        Self::new(
            413,
            format!("{what}: larger than the {} limit", human_bytes(limit)),
        )
    }

    /// 502: something upstream of us (an image URL) answered with something unusable.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(502, message)
    }

    /// 503: the inference backend cannot take the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }

    /// 504: the inference backend (or an image host) took too long.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, message)
    }

    /// 500: our own fault (misconfiguration, a bug); never used for a client's mistake.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }

    /// A 400 about a field, named as `names` (contract, dialect) says: the server's
    /// refusals use the contract's names, the client knows its API's.
    pub fn in_field_names(mut self, names: &[(&str, &str)]) -> Self {
        if self.status == 400
            && let Some((field, rest)) = self.message.split_once(": ")
            && let Some((_, dialect)) = names.iter().find(|(contract, _)| *contract == field)
        {
            self.message = format!("{dialect}: {rest}");
        }
        self
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Error from the inference server's contract → the client's view of it.
impl From<contract::Error> for ApiError {
    fn from(e: contract::Error) -> Self {
        let err = ApiError::new(e.status(), e.message());
        match e {
            contract::Error::Overloaded(secs) => err.with_retry_after(secs),
            _ => err,
        }
    }
}

/// "10 MiB" for 10 * 1024 * 1024, for limits in messages.
pub fn human_bytes(n: usize) -> String {
    const MIB: usize = 1024 * 1024;
    const KIB: usize = 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_name_the_field() {
        let e = ApiError::field("size", "must be WxH");
        assert_eq!(e.status, 400);
        assert_eq!(e.message, "size: must be WxH");
    }

    #[test]
    fn contract_errors_keep_status_and_retry_after() {
        let e = ApiError::from(contract::Error::Overloaded(7));
        assert_eq!((e.status, e.retry_after), (503, Some(7)));
        let e = ApiError::from(contract::Error::InvalidRequest("steps: too many".into()));
        assert_eq!((e.status, e.message.as_str()), (400, "steps: too many"));
    }

    #[test]
    fn server_refusals_read_in_the_dialects_names() {
        let names = [
            ("steps", "num_inference_steps"),
            ("init_image.strength", "strength"),
        ];
        let e = ApiError::from(contract::Error::InvalidRequest(
            "steps: must be from 1 to 1000 (got 5000)".into(),
        ));
        assert_eq!(
            e.in_field_names(&names).message,
            "num_inference_steps: must be from 1 to 1000 (got 5000)"
        );
        let e = ApiError::field("init_image.strength", "0 is not accepted");
        assert_eq!(
            e.in_field_names(&names).message,
            "strength: 0 is not accepted"
        );
        // Other fields, and errors that aren't a field's, stay as they are.
        let e = ApiError::field("seed", "too big").in_field_names(&names);
        assert_eq!(e.message, "seed: too big");
        let e = ApiError::unavailable("steps: busy").in_field_names(&names);
        assert_eq!(e.message, "steps: busy");
    }

    #[test]
    fn byte_sizes_read_naturally() {
        assert_eq!(human_bytes(10 * 1024 * 1024), "10 MiB");
        assert_eq!(human_bytes(64 * 1024), "64 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
