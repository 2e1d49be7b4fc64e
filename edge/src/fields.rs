//! Reading a JSON request body field by field, so that every bad value is a 400
//! that names the field, what was sent and what is accepted. Unknown fields are
//! left alone (the hosted APIs ignore them too).
//!
//! Numbers sent as strings ("512") are accepted: ModelsLab's own samples send
//! them that way, and no client is surprised by the leniency.

use std::ops::RangeInclusive;

use serde_json::{Map, Value};

use crate::api_error::ApiError;

/// The top-level object of a JSON body.
#[derive(Debug, Clone)]
pub struct Fields {
    obj: Map<String, Value>,
}

impl Fields {
    /// Parses `body` as a JSON object.
    pub fn parse(body: &[u8]) -> Result<Fields, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("body: empty; expected a JSON object"));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(obj)) => Ok(Fields { obj }),
            Ok(other) => Err(ApiError::bad_request(format!(
                "body: expected a JSON object, got {}",
                kind(&other)
            ))),
            Err(e) => Err(ApiError::bad_request(format!("body: not valid JSON ({e})"))),
        }
    }

    /// Fields that did not come as JSON (the text parts of a multipart form, as strings:
    /// the number readers accept numeric strings).
    pub fn from_object(obj: Map<String, Value>) -> Fields {
        Fields { obj }
    }

    /// The names of the fields present (null counts as absent).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.obj
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, _)| k.as_str())
    }

    /// A field's JSON value as sent (null: absent), for echoing back.
    pub fn get_raw(&self, name: &str) -> serde_json::Value {
        self.get(name).cloned().unwrap_or(Value::Null)
    }

    /// An optional yes/no flag: booleans, "yes"/"no", "true"/"false", 1/0.
    pub fn yes_no(&self, name: &str) -> Result<Option<bool>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let flag = match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "yes" | "true" | "1" => Some(true),
                "no" | "false" | "0" | "" => Some(false),
                _ => None,
            },
            Value::Number(n) => match n.as_i64() {
                Some(1) => Some(true),
                Some(0) => Some(false),
                _ => None,
            },
            _ => None,
        };
        flag.map(Some).ok_or_else(|| {
            ApiError::field(
                name,
                format!("must be \"yes\" or \"no\" (got {})", shown(v)),
            )
        })
    }

    /// The value of `name`, treating JSON null like an absent field.
    fn get(&self, name: &str) -> Option<&Value> {
        #[cfg(test)]
        read::note(name);
        self.obj.get(name).filter(|v| !v.is_null())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// An optional string.
    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(ApiError::field(
                name,
                format!("expected a string, got {}", kind(other)),
            )),
        }
    }

    /// A string that must be present and not blank.
    pub fn required_string(&self, name: &str) -> Result<String, ApiError> {
        match self.string(name)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(ApiError::field(name, "must not be empty")),
            None => Err(ApiError::field(name, "required (a string)")),
        }
    }

    /// An optional integer within `range`.
    pub fn integer(&self, name: &str, range: RangeInclusive<i64>) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let accepted = || {
            format!(
                "must be an integer from {} to {}",
                range.start(),
                range.end()
            )
        };
        let n = match v {
            Value::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            }),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::field(
                name,
                format!("{} (got {})", accepted(), shown(v)),
            )),
        }
    }

    /// An optional number within `range`.
    pub fn number(&self, name: &str, range: RangeInclusive<f64>) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let n = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n.is_finite() && range.contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::field(
                name,
                format!(
                    "must be a number from {} to {} (got {})",
                    range.start(),
                    range.end(),
                    shown(v)
                ),
            )),
        }
    }

    /// An optional seed: an integer from 0 to 2^64-1. Several APIs treat 0 as
    /// "random"; the caller decides.
    pub fn seed(&self, name: &str) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.map(Some).ok_or_else(|| {
            ApiError::field(
                name,
                format!(
                    "must be an integer from 0 to {} (got {})",
                    u64::MAX,
                    shown(v)
                ),
            )
        })
    }
}

/// The names the dialects' parsers look up, recorded for the test that holds the
/// OpenAPI documents to the parsers (`crate::openapi`): a field read but not documented,
/// or documented but never read, fails it.
#[cfg(test)]
pub mod read {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    thread_local! {
        static NAMES: RefCell<Option<BTreeSet<String>>> = const { RefCell::new(None) };
    }

    /// Records `name` as read, when recording.
    pub fn note(name: &str) {
        NAMES.with(|n| {
            if let Some(names) = n.borrow_mut().as_mut() {
                names.insert(name.to_string());
            }
        });
    }

    /// Runs `f`, returning what it returned and the field names read meanwhile.
    pub fn recording<T>(f: impl FnOnce() -> T) -> (T, BTreeSet<String>) {
        NAMES.with(|n| *n.borrow_mut() = Some(BTreeSet::new()));
        let out = f();
        let names = NAMES.with(|n| n.borrow_mut().take()).unwrap_or_default();
        (out, names)
    }
}

/// What kind of JSON value this is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value as the client sent it, shortened for messages.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Fields {
        Fields::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused() {
        for (body, needle) in [
            ("", "empty"),
            ("{", "not valid JSON"),
            ("[1]", "an array"),
            ("\"x\"", "a string"),
        ] {
            let e = Fields::parse(body.as_bytes()).err().unwrap();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn strings() {
        let f = fields(r#"{"a":"x","b":3,"c":null,"d":"  "}"#);
        assert_eq!(f.string("a").unwrap().as_deref(), Some("x"));
        assert_eq!(f.string("c").unwrap(), None);
        assert_eq!(f.string("zzz").unwrap(), None);
        assert!(
            f.string("b")
                .unwrap_err()
                .message
                .starts_with("b: expected a string, got a number")
        );
        assert!(
            f.required_string("d")
                .unwrap_err()
                .message
                .contains("must not be empty")
        );
        assert!(
            f.required_string("zzz")
                .unwrap_err()
                .message
                .contains("required")
        );
    }

    #[test]
    fn integers_accept_numeric_strings_and_check_ranges() {
        let f = fields(r#"{"a":5,"b":"7","c":5.0,"d":5.5,"e":"x","f":99,"g":true}"#);
        assert_eq!(f.integer("a", 1..=10).unwrap(), Some(5));
        assert_eq!(f.integer("b", 1..=10).unwrap(), Some(7));
        assert_eq!(f.integer("c", 1..=10).unwrap(), Some(5));
        for name in ["d", "e", "f", "g"] {
            let e = f.integer(name, 1..=10).unwrap_err();
            assert!(
                e.message
                    .starts_with(&format!("{name}: must be an integer from 1 to 10")),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn numbers_and_seeds() {
        let f = fields(r#"{"g":7.5,"h":"2","i":-1,"s":18446744073709551615,"t":-3}"#);
        assert_eq!(f.number("g", 0.0..=20.0).unwrap(), Some(7.5));
        assert_eq!(f.number("h", 0.0..=20.0).unwrap(), Some(2.0));
        assert!(
            f.number("i", 0.0..=20.0)
                .unwrap_err()
                .message
                .contains("from 0 to 20 (got -1)")
        );
        assert_eq!(f.seed("s").unwrap(), Some(u64::MAX));
        assert!(
            f.seed("t")
                .unwrap_err()
                .message
                .starts_with("t: must be an integer from 0")
        );
    }
}
