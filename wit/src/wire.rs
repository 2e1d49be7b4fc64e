//! A generate-request's body on the wire (HTTP.md): JSON, with its images as base64
//! text; or multipart/form-data, with the JSON in a `request` part and each image's
//! own bytes in a part of its own (`init_image`, `mask`, `control_image.N`). The edge
//! sends the second: base64 makes an image a third larger, and encoding and escaping
//! megabytes of it costs the edge (a wasm component) more than the rest of its work.

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
/// The part that holds the inpainting mask's bytes.
pub const MASK_PART: &str = "mask";
/// The prefix of the parts that hold control images: `control_image.0`, ...
pub const CONTROL_IMAGE_PART: &str = "control_image.";
const JSON: &str = "application/json";

/// A body ready to send: its Content-Type and bytes.
pub struct Body {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// The encoded images a request carries (as the client sent them), each in the
/// request's field that says what it is for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Images {
    /// `init_image.image`.
    pub init_image: Option<Bytes>,
    /// `init_image.mask`.
    pub mask: Option<Bytes>,
    /// `controlnets[i].image`, one per ControlNet.
    pub controls: Vec<Bytes>,
}

impl Images {
    pub fn is_empty(&self) -> bool {
        self.init_image.is_none() && self.mask.is_none() && self.controls.is_empty()
    }

    /// Each image with its part name.
    fn parts(&self) -> Vec<(String, &Bytes)> {
        let mut parts = Vec::new();
        if let Some(b) = &self.init_image {
            parts.push((INIT_IMAGE_PART.to_string(), b));
        }
        if let Some(b) = &self.mask {
            parts.push((MASK_PART.to_string(), b));
        }
        for (i, b) in self.controls.iter().enumerate() {
            parts.push((format!("{CONTROL_IMAGE_PART}{i}"), b));
        }
        parts
    }
}

/// A request as read from a body: its images' bytes (from their parts, or decoded
/// from base64), taken out of the request, whose image fields are left empty.
#[derive(Debug)]
pub struct Received {
    pub request: GenerateRequest,
    pub images: Images,
}

/// The body for `request` with `images` (whose fields in `request` are emptied): JSON
/// alone without images, multipart with them.
pub fn encode(request: &GenerateRequest, images: &Images) -> Result<Body, String> {
    let json = |r: &GenerateRequest| serde_json::to_vec(r).map_err(|e| e.to_string());
    if images.is_empty() {
        return Ok(Body {
            content_type: JSON.into(),
            bytes: json(request)?,
        });
    }
    let mut request = request.clone();
    if let Some(init) = request.init_image.as_mut() {
        init.image.clear();
        if images.mask.is_some() {
            init.mask = Some(String::new());
        }
    }
    for c in request.controlnets.iter_mut().flatten() {
        c.image.clear();
    }
    let request = json(&request)?;
    let mut parts = vec![(REQUEST_PART.to_string(), JSON, &request[..])];
    for (name, bytes) in images.parts() {
        parts.push((name, "application/octet-stream", &bytes[..]));
    }
    form(&parts)
}

/// The images alone as a multipart body (how the edge keeps a job's images until it
/// runs); [`read_images`] reads it back.
pub fn encode_images(images: &Images) -> Result<Body, String> {
    let parts: Vec<_> = images
        .parts()
        .into_iter()
        .map(|(name, bytes)| (name, "application/octet-stream", &bytes[..]))
        .collect();
    form(&parts)
}

/// Reads what [`encode_images`] wrote.
pub fn read_images(content_type: &str, body: Bytes) -> Result<Images, Error> {
    let (request, images) = parts_of(content_type, body)?;
    if request.is_some() {
        return Err(invalid("body: a request part among the images"));
    }
    Ok(images)
}

fn form(parts: &[(String, &str, &[u8])]) -> Result<Body, String> {
    // A random boundary: the images' bytes were chosen by the edge's client, who
    // cannot know it, so cannot end a part early.
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| format!("no randomness for a boundary ({e})"))?;
    let boundary: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let size: usize = parts.iter().map(|(_, _, b)| b.len() + 128).sum();
    let mut bytes = Vec::with_capacity(size + 64);
    for (name, kind, data) in parts {
        bytes.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\
                 Content-Type: {kind}\r\n\r\n"
            )
            .as_bytes(),
        );
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
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
    let controls = request.controlnets.iter().flatten();
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
        (
            "controlnets",
            controls
                .flat_map(|c| [c.scale, c.start, c.end])
                .flatten()
                .find(|s| !s.is_finite()),
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
    let images = take_base64(&mut request, Images::default())?;
    Ok(Received { request, images })
}

fn decode64(text: &str, field: &str) -> Result<Bytes, Error> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(Bytes::from)
        .map_err(|e| invalid(format!("{field}: not valid base64 ({e})")))
}

/// Moves each image from its base64 field of `request` (left empty) into `parts`,
/// which holds those that came as parts: an image comes one way or the other.
fn take_base64(request: &mut GenerateRequest, mut parts: Images) -> Result<Images, Error> {
    let both = |field: &str, part: &str| {
        invalid(format!(
            "{field}: given both as base64 and as the {part} part"
        ))
    };
    match request.init_image.as_mut() {
        Some(init) => {
            match (init.image.is_empty(), &parts.init_image) {
                (false, Some(_)) => return Err(both("init_image.image", INIT_IMAGE_PART)),
                (false, None) => {
                    parts.init_image = Some(decode64(&init.image, "init_image.image")?)
                }
                _ => {}
            }
            init.image.clear();
            match (init.mask.as_deref(), &parts.mask) {
                (Some(m), Some(_)) if !m.is_empty() => {
                    return Err(both("init_image.mask", MASK_PART));
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        "init_image.mask: the mask part needs init_image.mask (\"\") in the request",
                    ));
                }
                (Some(m), None) => {
                    if m.is_empty() {
                        return Err(invalid("init_image.mask: empty, and no mask part"));
                    }
                    parts.mask = Some(decode64(m, "init_image.mask")?);
                }
                _ => {}
            }
            if init.mask.is_some() {
                init.mask = Some(String::new());
            }
        }
        None => {
            for (present, part) in [
                (parts.init_image.is_some(), INIT_IMAGE_PART),
                (parts.mask.is_some(), MASK_PART),
            ] {
                if present {
                    return Err(invalid(format!(
                        "init_image: the {part} part needs init_image (its strength) in the request"
                    )));
                }
            }
        }
    }
    let controls = request.controlnets.as_deref_mut().unwrap_or_default();
    if parts.controls.len() > controls.len() {
        return Err(invalid(format!(
            "controlnets: {} control_image parts for {} controlnets",
            parts.controls.len(),
            controls.len()
        )));
    }
    let mut images = Vec::with_capacity(controls.len());
    let mut sent = std::mem::take(&mut parts.controls).into_iter();
    for (i, c) in controls.iter_mut().enumerate() {
        let part = sent.next().filter(|b| !b.is_empty());
        let field = format!("controlnets[{i}].image");
        images.push(match (c.image.is_empty(), part) {
            (false, Some(_)) => return Err(both(&field, &format!("{CONTROL_IMAGE_PART}{i}"))),
            (false, None) => decode64(&c.image, &field)?,
            (true, Some(bytes)) => bytes,
            (true, None) => return Err(invalid(format!("{field}: required"))),
        });
        c.image.clear();
    }
    parts.controls = images;
    Ok(parts)
}

/// The image parts of a multipart body, and its request part if any.
fn parts_of(content_type: &str, body: Bytes) -> Result<(Option<Bytes>, Images), Error> {
    let boundary =
        multer::parse_boundary(content_type).map_err(|e| invalid(format!("Content-Type: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let broken = |e: multer::Error| invalid(format!("body: broken multipart form ({e})"));
    let (mut request, mut images) = (None, Images::default());
    let mut controls: Vec<Option<Bytes>> = Vec::new();
    while let Some(part) = complete(form.next_field())
        .ok_or_else(stalled)?
        .map_err(broken)?
    {
        let name = part.name().unwrap_or_default().to_string();
        let control = name
            .strip_prefix(CONTROL_IMAGE_PART)
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|&i| i < crate::limits::MAX_CONTROLNETS);
        let slot = match (name.as_str(), control) {
            (REQUEST_PART, _) => &mut request,
            (INIT_IMAGE_PART, _) => &mut images.init_image,
            (MASK_PART, _) => &mut images.mask,
            (_, Some(i)) => {
                if controls.len() <= i {
                    controls.resize(i + 1, None);
                }
                &mut controls[i]
            }
            _ => {
                return Err(invalid(format!(
                    "body: unknown part {name:?}; the parts are {REQUEST_PART:?}, \
                     {INIT_IMAGE_PART:?}, {MASK_PART:?} and {CONTROL_IMAGE_PART}N (N below {})",
                    crate::limits::MAX_CONTROLNETS
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
    // A control image sent as base64 leaves a gap in the parts: kept as empty.
    images.controls = controls
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    Ok((request, images))
}

fn from_multipart(content_type: &str, body: Bytes) -> Result<Received, Error> {
    let (request, parts) = parts_of(content_type, body)?;
    let request = request.ok_or_else(|| invalid(format!("body: no {REQUEST_PART:?} part")))?;
    let mut request = parse_request(&request)?;
    let images = take_base64(&mut request, parts)?;
    Ok(Received { request, images })
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
                mask: None,
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
        let body = encode(&request(None), &Images::default()).unwrap();
        assert_eq!(body.content_type, "application/json");
        let got = read_back(body).unwrap();
        assert_eq!(
            (got.request, got.images),
            (request(None), Images::default())
        );
    }

    #[test]
    fn an_image_travels_as_its_own_bytes() {
        // Bytes that look like multipart's own syntax must come through untouched.
        let image = b"\x89PNG\r\n--\r\n\r\n--x--\r\n\0\xff".repeat(1000);
        let images = Images {
            init_image: Some(Bytes::from(image.clone())),
            ..Images::default()
        };
        let body = encode(&request(Some("ignored")), &images).unwrap();
        assert!(
            body.content_type
                .starts_with("multipart/form-data; boundary=")
        );
        // The JSON part and the boundaries: under 1 KiB; base64 would add 8000 bytes.
        assert!(body.bytes.len() < image.len() + 1024, "no base64 inflation");
        let got = read_back(body).unwrap();
        assert_eq!(got.images.init_image.as_deref(), Some(&image[..]));
        assert_eq!(got.request, request(Some("")));
    }

    #[test]
    fn base64_in_json_is_decoded_in_either_form() {
        let got = read(
            None,
            Bytes::from(
                encode(&request(Some("aGVsbG8=")), &Images::default())
                    .unwrap()
                    .bytes,
            ),
        );
        let got = got.unwrap();
        assert_eq!(got.images.init_image.as_deref(), Some(&b"hello"[..]));
        assert_eq!(got.request.init_image.unwrap().image, "");
        let e = message(read(
            Some("application/json; charset=utf-8"),
            Bytes::from(serde_json::to_vec(&request(Some("!!"))).unwrap()),
        ));
        assert!(e.starts_with("init_image.image: not valid base64"), "{e}");
    }

    fn send(parts: &[(&str, &[u8])]) -> Result<Received, Error> {
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
                vec![("request", &with[..]), ("masks", b"x")],
                "body: unknown part \"masks\"",
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
            let e = message(send(&parts));
            assert!(e.starts_with(needle), "{e}");
        }
        // Base64 in the request part still works.
        let got = send(&[("request", &b64[..])]).unwrap();
        assert_eq!(got.images.init_image.as_deref(), Some(&b"hello"[..]));

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

    fn with_mask_and_controls(mask: &str, controls: &[&str]) -> GenerateRequest {
        let mut r = request(Some(""));
        r.init_image.as_mut().unwrap().mask = Some(mask.into());
        r.controlnets = Some(
            controls
                .iter()
                .map(|image| crate::Controlnet {
                    name: "canny".into(),
                    image: (*image).into(),
                    preprocess: None,
                    scale: None,
                    start: None,
                    end: None,
                })
                .collect(),
        );
        r
    }

    #[test]
    fn masks_and_control_images_travel_in_parts_or_base64() {
        let images = Images {
            init_image: Some(Bytes::from_static(b"init")),
            mask: Some(Bytes::from_static(b"mask")),
            controls: vec![Bytes::from_static(b"c0"), Bytes::from_static(b"c1")],
        };
        let sent = with_mask_and_controls("ignored", &["x", "y"]);
        let got = read_back(encode(&sent, &images).unwrap()).unwrap();
        assert_eq!(got.images, images);
        assert_eq!(got.request, with_mask_and_controls("", &["", ""]));
        // Base64 in the JSON; and a mix: control 0 as base64, control 1 as a part.
        let json = serde_json::to_vec(&with_mask_and_controls("bWFzaw==", &["YzA=", "YzE="]));
        let got = read(None, Bytes::from(json.unwrap())).unwrap();
        assert_eq!(
            (got.images.mask.as_deref(), got.images.controls.len()),
            (Some(&b"mask"[..]), 2)
        );
        assert_eq!(got.images.controls[1].as_ref(), b"c1");
        let mixed = serde_json::to_vec(&with_mask_and_controls("bWFzaw==", &["YzA=", ""])).unwrap();
        let got = send(&[("request", &mixed), ("control_image.1", b"c1")]).unwrap();
        assert_eq!(got.images.controls[0].as_ref(), b"c0");
        assert_eq!(got.images.controls[1].as_ref(), b"c1");
        // Kept by the edge without the request, and read back.
        let kept = encode_images(&images).unwrap();
        let back = read_images(&kept.content_type, Bytes::from(kept.bytes)).unwrap();
        assert_eq!(back, images);
    }

    #[test]
    fn masks_and_control_images_are_refused_by_name() {
        let both = serde_json::to_vec(&with_mask_and_controls("bWFzaw==", &["YzA="])).unwrap();
        let none = serde_json::to_vec(&with_mask_and_controls("", &[""])).unwrap();
        let without = serde_json::to_vec(&request(None)).unwrap();
        for (parts, needle) in [
            (
                vec![("request", &both[..]), ("mask", &b"m"[..])],
                "init_image.mask: given both",
            ),
            (
                vec![("request", &both[..]), ("control_image.0", b"c")],
                "controlnets[0].image: given both",
            ),
            (
                vec![("request", &none[..]), ("mask", b"m")],
                "controlnets[0].image: required",
            ),
            (
                vec![("request", &none[..]), ("control_image.0", b"c")],
                "init_image.mask: empty, and no mask part",
            ),
            (
                vec![("request", &without[..]), ("mask", b"m")],
                "init_image: the mask part needs",
            ),
            (
                vec![("request", &both[..]), ("control_image.1", b"c")],
                "controlnets: 2 control_image parts for 1",
            ),
            (
                vec![("request", &both[..]), ("control_image.4", b"c")],
                "body: unknown part \"control_image.4\"",
            ),
        ] {
            let e = message(send(&parts));
            assert!(e.starts_with(needle), "{needle}: {e}");
        }
    }
}
