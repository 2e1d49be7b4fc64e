//! multipart/form-data bodies (HolmesAI's `/v1/images/control` upload), parsed with
//! multer. The body is already in memory, so multer's stream is one chunk and its
//! futures finish within a few polls; they are driven without an executor
//! (`contract::wire::complete`, as the contract's own multipart bodies are).

use std::future::Future;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::api_error::ApiError;
use crate::fields::Fields;

/// More parts than any form of ours has; a body of thousands of tiny parts is refused early.
const MAX_PARTS: usize = 64;

/// One uploaded file.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePart {
    pub field: String,
    pub file_name: Option<String>,
    pub bytes: Vec<u8>,
}

/// A parsed form: the text parts as string fields, and the files.
pub struct Form {
    pub fields: Fields,
    pub files: Vec<FilePart>,
}

impl Form {
    /// Takes the file sent as `name` out of the form (uploads can be megabytes: the
    /// caller owns them rather than copying).
    pub fn take_file(&mut self, name: &str) -> Option<FilePart> {
        #[cfg(test)]
        crate::fields::read::note(name);
        let at = self.files.iter().position(|f| f.field == name)?;
        Some(self.files.swap_remove(at))
    }
}

/// Parses a multipart/form-data body. `content_type` is the request's header (it
/// carries the boundary).
pub fn parse(content_type: Option<&str>, body: Vec<u8>) -> Result<Form, ApiError> {
    let content_type = content_type.unwrap_or_default();
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::bad_request(format!(
            "body: expected multipart/form-data with a boundary (Content-Type was {content_type:?})"
        ))
    })?;
    let stream =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(body)) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let broken =
        |e: multer::Error| ApiError::bad_request(format!("body: broken multipart form ({e})"));

    let mut text = Map::new();
    let mut files = Vec::new();
    let mut parts = 0;
    while let Some(field) = complete(multipart.next_field())?.map_err(broken)? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(ApiError::bad_request(format!(
                "body: more than {MAX_PARTS} form parts"
            )));
        }
        let (name, file_name) = disposition(field.headers());
        let name = name.unwrap_or_default();
        if name.is_empty() {
            return Err(ApiError::bad_request("body: a form part has no name"));
        }
        let bytes = complete(field.bytes())?.map_err(broken)?;
        if file_name.is_some() {
            files.push(FilePart {
                field: name,
                file_name,
                bytes: bytes.to_vec(),
            });
            continue;
        }
        let value = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::field(&name, "a text form part that is not UTF-8"))?;
        match text.get(&name) {
            // Python requests samples send some fields twice (in `data` and `files`).
            Some(Value::String(first)) if *first != value => {
                return Err(ApiError::field(&name, "sent twice with different values"));
            }
            Some(_) => {}
            None => {
                text.insert(name, Value::String(value));
            }
        }
    }
    Ok(Form {
        fields: Fields::from_object(text),
        files,
    })
}

/// A part's `name` and file name from its Content-Disposition, read as RFC 7578 and
/// RFC 6266 say: parameter names in any case, and `filename*` (RFC 8187,
/// `UTF-8''percent-encoded`) over `filename`. Written here because multer matches
/// `name="` and `filename="` literally, so `NAME=` loses the name and `filename*=`
/// makes an upload a text field.
fn disposition(headers: &http::HeaderMap) -> (Option<String>, Option<String>) {
    let Some(value) = headers
        .get(http::header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
    else {
        return (None, None);
    };
    let (mut name, mut plain, mut extended) = (None, None, None);
    for param in split_params(value).into_iter().skip(1) {
        let Some((key, val)) = param.split_once('=') else {
            continue;
        };
        let val = unquote(val.trim());
        match key.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(val),
            "filename" => plain = Some(val),
            "filename*" => extended = ext_value(&val),
            _ => {}
        }
    }
    (name, extended.or(plain))
}

/// Splits at the `;`s outside quoted strings.
fn split_params(value: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// A quoted-string's content (its backslash escapes undone), or a token as it is.
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    out
}

/// RFC 8187's `charset'language'percent-encoded` (UTF-8 or ISO-8859-1).
fn ext_value(v: &str) -> Option<String> {
    let mut it = v.splitn(3, '\'');
    let (charset, _language, encoded) = (it.next()?, it.next()?, it.next()?);
    let raw = encoded.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    match charset.to_ascii_lowercase().as_str() {
        "utf-8" => String::from_utf8(bytes).ok(),
        "iso-8859-1" => Some(bytes.into_iter().map(char::from).collect()),
        _ => None,
    }
}

fn complete<F: Future>(fut: F) -> Result<F::Output, ApiError> {
    contract::wire::complete(fut)
        .ok_or_else(|| ApiError::internal("multipart parsing did not complete"))
}

/// A multipart/form-data body of `parts` (name, file name for a file part, bytes) and
/// its Content-Type, as a browser or an SDK sends one: for the tests that send forms.
#[cfg(test)]
pub fn form(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "XyZ123";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parts_and_files() {
        let (ct, body) = form(&[
            ("prompt", None, b"add an apple"),
            ("steps", None, b"30"),
            ("model", None, b"m"),
            ("model", None, b"m"),
            ("image", Some("test.png"), &[1, 2, 3]),
        ]);
        let mut f = parse(Some(&ct), body).unwrap();
        assert_eq!(
            f.fields.string("prompt").unwrap().as_deref(),
            Some("add an apple")
        );
        assert_eq!(f.fields.integer("steps", 10..=50).unwrap(), Some(30));
        let img = f.take_file("image").unwrap();
        assert_eq!(
            (img.file_name.as_deref(), img.bytes.as_slice()),
            (Some("test.png"), &[1u8, 2, 3][..])
        );
    }

    #[test]
    fn dispositions_in_any_case_and_extended_file_names() {
        for (head, file) in [
            (
                "Content-Disposition: form-data; name=\"image\"; filename*=UTF-8''t%C3%A9%20x.png",
                "t\u{e9} x.png",
            ),
            (
                "Content-Disposition: form-data; NAME=\"image\"; FILENAME=\"t.png\"",
                "t.png",
            ),
            (
                "content-disposition: FORM-DATA; name=image; filename=\"a;b.png\"; filename*=utf-8''c.png",
                "c.png",
            ),
        ] {
            let mut body = format!("--B\r\n{head}\r\n\r\n").into_bytes();
            body.extend_from_slice(b"\x89PNG\r\n--B--\r\n");
            let mut f = parse(Some("multipart/form-data; boundary=B"), body)
                .unwrap_or_else(|e| panic!("{head}: {}", e.message));
            let img = f.take_file("image").unwrap_or_else(|| panic!("{head}"));
            assert_eq!(img.file_name.as_deref(), Some(file), "{head}");
        }
    }

    #[test]
    fn broken_forms_are_400s() {
        let e = parse(Some("application/json"), b"{}".to_vec())
            .err()
            .unwrap();
        assert!(e.message.contains("multipart/form-data"), "{}", e.message);
        let e = parse(
            Some("multipart/form-data; boundary=abc"),
            b"--abc\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated".to_vec(),
        )
        .err()
        .unwrap();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("broken multipart"), "{}", e.message);
        let (ct, body) = form(&[("model", None, b"a"), ("model", None, b"b")]);
        assert!(
            parse(Some(&ct), body)
                .err()
                .unwrap()
                .message
                .starts_with("model: sent twice")
        );
    }
}
