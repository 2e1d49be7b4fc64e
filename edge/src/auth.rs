//! API keys: which keys the edge accepts and whether a request carries one of them.
//! Where a dialect carries its key (a header, a bearer token, a body field) is the
//! dialect's business; the check itself is the same for all.

use crate::api_error::ApiError;

/// The keys this deployment accepts (the `api_keys` Spin variable, comma-separated),
/// and whether requests without a key are served too (`allow_anonymous`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiKeys {
    keys: Vec<String>,
    anonymous: bool,
}

impl ApiKeys {
    pub fn parse(list: &str) -> ApiKeys {
        ApiKeys {
            keys: list
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect(),
            anonymous: false,
        }
    }

    /// Serve requests that carry no key (several of the hosted APIs' own samples send
    /// none, or an empty one). A key that is presented is still checked against the
    /// configured ones, so a client with a wrong key hears about it.
    pub fn allowing_anonymous(mut self, anonymous: bool) -> ApiKeys {
        self.anonymous = anonymous;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Accepts the request if `presented` is one of the keys. `what` names where the
    /// dialect expects the key ("the Ocp-Apim-Subscription-Key header"), for the message.
    pub fn check(&self, presented: Option<&str>, what: &str) -> Result<(), ApiError> {
        let presented = presented.map(str::trim).filter(|k| !k.is_empty());
        if self.anonymous && (presented.is_none() || self.keys.is_empty()) {
            return Ok(());
        }
        if self.keys.is_empty() {
            // No keys configured is a deployment mistake, but failing closed keeps a
            // forgotten variable from opening the GPUs to the world.
            return Err(ApiError::unauthorized(
                "this server has no API keys configured (set the api_keys variable)",
            ));
        }
        let Some(presented) = presented else {
            return Err(ApiError::unauthorized(format!(
                "missing API key: send it in {what}"
            )));
        };
        // Compare every key in full, so timing doesn't tell how much of a guess was right.
        let mut ok = false;
        for key in &self.keys {
            ok |= constant_time_eq(key.as_bytes(), presented.as_bytes());
        }
        if ok {
            Ok(())
        } else {
            Err(ApiError::unauthorized(format!("invalid API key in {what}")))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where bearer-token APIs (HolmesAI, Hyperbolic) carry the key, for messages.
pub const BEARER_LOCATION: &str = "the Authorization header (Bearer <key>)";

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_a_trimmed_comma_list() {
        let keys = ApiKeys::parse(" a1 ,b2,, ");
        assert_eq!(keys.keys, vec!["a1".to_string(), "b2".to_string()]);
        assert!(ApiKeys::parse(" , ").is_empty());
    }

    #[test]
    fn check_accepts_only_configured_keys() {
        let keys = ApiKeys::parse("a1,b2");
        assert!(keys.check(Some("b2"), "X").is_ok());
        assert!(keys.check(Some(" a1 "), "X").is_ok());
        let missing = keys.check(None, "the X header").unwrap_err();
        assert_eq!(missing.status, 401);
        assert!(
            missing
                .message
                .contains("missing API key: send it in the X header")
        );
        let wrong = keys.check(Some("a"), "the X header").unwrap_err();
        assert_eq!(
            (wrong.status, wrong.message.as_str()),
            (401, "invalid API key in the X header")
        );
    }

    #[test]
    fn no_configured_keys_fails_closed() {
        let e = ApiKeys::default().check(Some("anything"), "X").unwrap_err();
        assert_eq!(e.status, 401);
        assert!(e.message.contains("no API keys configured"));
    }

    #[test]
    fn anonymous_requests_when_allowed_but_wrong_keys_still_refused() {
        let keys = ApiKeys::parse("a1").allowing_anonymous(true);
        assert!(keys.check(None, "X").is_ok());
        assert!(keys.check(Some(" "), "X").is_ok());
        assert!(keys.check(Some("a1"), "X").is_ok());
        assert_eq!(keys.check(Some("zz"), "X").unwrap_err().status, 401);
        let open = ApiKeys::default().allowing_anonymous(true);
        assert!(open.check(Some("whatever"), "X").is_ok());
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(Some("abc")), None);
        assert_eq!(bearer_token(None), None);
    }
}
