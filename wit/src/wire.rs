//! A generate-request's body on the wire (HTTP.md): JSON, with an init image as
//! base64 text; or multipart/form-data, with the JSON in a `request` part and the
//! init image's own bytes in an `init_image` part. The edge sends the second: base64
//! makes an image a third larger, and encoding and escaping megabytes of it costs the
//! edge (a wasm component) more than the rest of its work.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use bytes::Bytes;

use crate::{Error, GenerateRequest};

/// The part that holds the generate-request's JSON.
pub const REQUEST_PART: &str = "request";
/// The part that holds the init image's bytes.
pub const INIT_IMAGE_PART: &str = "init_image";
const JSON: &str = "application/json";

/// A body ready to send: its Content-Type and bytes.
pub struct Body {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A request as read from a body: the init image's bytes (from its part, or
/// decoded from base64) taken out of `request.init_image.image`, which is left empty.
#[derive(Debug)]
pub struct Received {
    pub request: GenerateRequest,
    pub init_image: Option<Bytes>,
}

/// The body for `request`, whose `init_image.image` is ignored when `init_image`
/// is given: JSON alone without an image, multipart with one.
pub fn encode(request: &GenerateRequest, init_image: Option<&[u8]>) -> Result<Body, String> {
    let json = |r: &GenerateRequest| serde_json::to_vec(r).map_err(|e| e.to_string());
    let Some(image) = init_image else {
        return Ok(Body {
            content_type: JSON.into(),
            bytes: json(request)?,
        });
    };
    let mut request = request.clone();
    if let Some(init) = request.init_image.as_mut() {
        init.image.clear();
    }
    let request = json(&request)?;
    // A random boundary: the image's bytes were chosen by the edge's client, who
    // cannot know it, so cannot end the part early.
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| format!("no randomness for a boundary ({e})"))?;
    let boundary: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let head = |name: &str, kind: &str| {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\
             Content-Type: {kind}\r\n\r\n"
        )
    };
    let (request_head, image_head) = (
        head(REQUEST_PART, JSON),
        head(INIT_IMAGE_PART, "application/octet-stream"),
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let mut bytes = Vec::with_capacity(
        request_head.len() + request.len() + 2 + image_head.len() + image.len() + tail.len(),
    );
    bytes.extend_from_slice(request_head.as_bytes());
    bytes.extend_from_slice(&request);
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(image_head.as_bytes());
    bytes.extend_from_slice(image);
    bytes.extend_from_slice(tail.as_bytes());
    Ok(Body {
        content_type: format!("multipart/form-data; boundary={boundary}"),
        bytes,
    })
}

/// Reads a body in either form. Refusals are `invalid-request`s naming the part or field.
pub fn read(content_type: Option<&str>, body: Bytes) -> Result<Received, Error> {
    let content_type = content_type.unwrap_or(JSON);
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        JSON => from_json(&body),
        "multipart/form-data" => from_multipart(content_type, body),
        other => Err(invalid(format!(
            "Content-Type: {other:?} is not accepted; send {JSON} or multipart/form-data"
        ))),
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidRequest(message.into())
}

fn parse_request(json: &[u8]) -> Result<GenerateRequest, Error> {
    let request: GenerateRequest = serde_json::from_slice(json)
        .map_err(|e| invalid(format!("body: not a generate-request ({e})")))?;
    // serde_json reads a number beyond f32's range as infinity, which JSON cannot
    // carry on (it would be written as null, a different request): refused here.
    let floats = [
        ("guidance", request.guidance),
        ("refiner_start", request.refiner_start),
        (
            "loras",
            request
                .loras
                .iter()
                .flatten()
                .map(|l| l.strength)
                .find(|s| !s.is_finite()),
        ),
        (
            "init_image.strength",
            request.init_image.as_ref().map(|i| i.strength),
        ),
    ];
    for (name, value) in floats {
        if value.is_some_and(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "{name}: a number beyond the 32-bit float range"
            )));
        }
    }
    Ok(request)
}

fn from_json(body: &[u8]) -> Result<Received, Error> {
    let mut request = parse_request(body)?;
    let init_image = take_base64(&mut request)?;
    Ok(Received {
        request,
        init_image,
    })
}

/// The init image's bytes decoded from `init_image.image`, which is left empty.
fn take_base64(request: &mut GenerateRequest) -> Result<Option<Bytes>, Error> {
    let Some(init) = request.init_image.as_mut() else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&init.image)
        .map_err(|e| invalid(format!("init_image.image: not valid base64 ({e})")))?;
    init.image = String::new();
    Ok(Some(Bytes::from(bytes)))
}

fn from_multipart(content_type: &str, body: Bytes) -> Result<Received, Error> {
    let boundary =
        multer::parse_boundary(content_type).map_err(|e| invalid(format!("Content-Type: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let broken = |e: multer::Error| invalid(format!("body: broken multipart form ({e})"));
    let (mut request, mut init_image) = (None, None);
    while let Some(part) = complete(form.next_field())
        .ok_or_else(stalled)?
        .map_err(broken)?
    {
        let name = part.name().unwrap_or_default().to_string();
        let slot = match name.as_str() {
            REQUEST_PART => &mut request,
            INIT_IMAGE_PART => &mut init_image,
            _ => {
                return Err(invalid(format!(
                    "body: unknown part {name:?}; the parts are {REQUEST_PART:?} and \
                     {INIT_IMAGE_PART:?}"
                )));
            }
        };
        if slot.is_some() {
            return Err(invalid(format!("body: part {name:?} sent twice")));
        }
        *slot = Some(
            complete(part.bytes())
                .ok_or_else(stalled)?
                .map_err(broken)?,
        );
    }
    let request = request.ok_or_else(|| invalid(format!("body: no {REQUEST_PART:?} part")))?;
    let mut request = parse_request(&request)?;
    let init_image = match (&request.init_image, init_image) {
        (Some(init), Some(_)) if !init.image.is_empty() => {
            return Err(invalid(
                "init_image.image: given both as base64 and as the init_image part",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "init_image: the init_image part needs init_image (its strength) in the request",
            ));
        }
        (_, Some(bytes)) => Some(bytes),
        // Base64 in the JSON part, as in a JSON body.
        (_, None) => take_base64(&mut request)?,
    };
    Ok(Received {
        request,
        init_image,
    })
}

fn stalled() -> Error {
    Error::Internal("multipart parsing did not complete".into())
}

/// Runs a future that never waits on I/O, without an executor: multer over a body
/// that is all in memory yields between parts but has nothing to wait for, so a few
/// polls finish it. `None` if it has not finished after those.
pub fn complete<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    (0..16).find_map(|_| match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InitImage;

    fn request(init: Option<&str>) -> GenerateRequest {
        GenerateRequest {
            model: "m".into(),
            prompt: "a cat".into(),
            negative_prompt: None,
            width: Some(64),
            height: Some(64),
            steps: Some(2),
            guidance: None,
            seed: Some(1),
            samples: 1,
            scheduler: None,
            karras: None,
            algorithm_type: None,
            init_image: init.map(|image| InitImage {
                image: image.into(),
                strength: 0.5,
            }),
            ..GenerateRequest::default()
        }
    }

    fn read_back(body: Body) -> Result<Received, Error> {
        read(Some(&body.content_type), Bytes::from(body.bytes))
    }

    fn message(r: Result<Received, Error>) -> String {
        match r {
            Err(Error::InvalidRequest(m)) => m,
            other => panic!("expected an invalid-request, got {other:?}"),
        }
    }

    #[test]
    fn numbers_beyond_f32_are_refused_not_made_infinite() {
        // Found by the contract_json fuzz target: 5.5e38 read as infinity, written
        // back as null.
        for (body, field) in [
            (
                r#"{"model":"m","prompt":"p","samples":1,"guidance":5.5e38}"#,
                "guidance",
            ),
            (
                r#"{"model":"m","prompt":"p","samples":1,"init_image":{"image":"","strength":-1e39}}"#,
                "init_image.strength",
            ),
        ] {
            let got = message(read(Some(JSON), Bytes::from(body)));
            assert!(got.starts_with(field), "{got}");
        }
    }

    #[test]
    fn without_an_image_the_body_is_json() {
        let body = encode(&request(None), None).unwrap();
        assert_eq!(body.content_type, "application/json");
        let got = read_back(body).unwrap();
        assert_eq!((got.request, got.init_image), (request(None), None));
    }

    #[test]
    fn an_image_travels_as_its_own_bytes() {
        // Bytes that look like multipart's own syntax must come through untouched.
        let image = b"\x89PNG\r\n--\r\n\r\n--x--\r\n\0\xff".repeat(1000);
        let body = encode(&request(Some("ignored")), Some(&image)).unwrap();
        assert!(
            body.content_type
                .starts_with("multipart/form-data; boundary=")
        );
        // The JSON part and the boundaries: under 1 KiB; base64 would add 8000 bytes.
        assert!(body.bytes.len() < image.len() + 1024, "no base64 inflation");
        let got = read_back(body).unwrap();
        assert_eq!(got.init_image.as_deref(), Some(&image[..]));
        assert_eq!(got.request, request(Some("")));
    }

    #[test]
    fn base64_in_json_is_decoded_in_either_form() {
        let got = read(
            None,
            Bytes::from(encode(&request(Some("aGVsbG8=")), None).unwrap().bytes),
        );
        let got = got.unwrap();
        assert_eq!(got.init_image.as_deref(), Some(&b"hello"[..]));
        assert_eq!(got.request.init_image.unwrap().image, "");
        let e = message(read(
            Some("application/json; charset=utf-8"),
            Bytes::from(serde_json::to_vec(&request(Some("!!"))).unwrap()),
        ));
        assert!(e.starts_with("init_image.image: not valid base64"), "{e}");
    }

    fn form(parts: &[(&str, &[u8])]) -> Result<Received, Error> {
        let mut bytes = Vec::new();
        for (name, data) in parts {
            bytes.extend_from_slice(
                format!("--B\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                    .as_bytes(),
            );
            bytes.extend_from_slice(data);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"--B--\r\n");
        read(Some("multipart/form-data; boundary=B"), Bytes::from(bytes))
    }

    #[test]
    fn malformed_bodies_are_refused_by_name() {
        let with = serde_json::to_vec(&request(Some(""))).unwrap();
        let without = serde_json::to_vec(&request(None)).unwrap();
        let b64 = serde_json::to_vec(&request(Some("aGVsbG8="))).unwrap();
        for (parts, needle) in [
            (vec![("init_image", &b"x"[..])], "body: no \"request\" part"),
            (
                vec![("request", &with[..]), ("mask", b"x")],
                "body: unknown part \"mask\"",
            ),
            (
                vec![("request", &with[..]), ("request", &with[..])],
                "body: part \"request\" sent twice",
            ),
            (
                vec![("request", &without[..]), ("init_image", b"x")],
                "init_image: the init_image part needs",
            ),
            (
                vec![("request", &b64[..]), ("init_image", b"x")],
                "init_image.image: given both",
            ),
            (vec![("request", b"{")], "body: not a generate-request"),
        ] {
            let e = message(form(&parts));
            assert!(e.starts_with(needle), "{e}");
        }
        // Base64 in the request part still works.
        let got = form(&[("request", &b64[..])]).unwrap();
        assert_eq!(got.init_image.as_deref(), Some(&b"hello"[..]));

        let e = message(read(Some("text/plain"), Bytes::from_static(b"{}")));
        assert!(
            e.starts_with("Content-Type: \"text/plain\" is not accepted"),
            "{e}"
        );
        let e = message(read(Some("multipart/form-data"), Bytes::new()));
        assert!(e.starts_with("Content-Type:"), "{e}");
        let e = message(read(
            Some("multipart/form-data; boundary=B"),
            Bytes::from_static(b"--B\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{"),
        ));
        assert!(e.starts_with("body: broken multipart form"), "{e}");
    }
}
