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
        let name = field.name().unwrap_or_default().to_string();
        if name.is_empty() {
            return Err(ApiError::bad_request("body: a form part has no name"));
        }
        let file_name = field.file_name().map(String::from);
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

fn complete<F: Future>(fut: F) -> Result<F::Output, ApiError> {
    contract::wire::complete(fut)
        .ok_or_else(|| ApiError::internal("multipart parsing did not complete"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
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
