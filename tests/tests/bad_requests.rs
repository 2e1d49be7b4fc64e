//! Bad requests across the four dialects, table-driven, through the real edge in the
//! local runtime: each must get the right status and a message in that dialect's
//! error format that names the problem; the edge and the server must keep serving.

use std::collections::HashMap;

use base64::Engine as _;
use e2e::images::{ImageServer, Route, encode, test_picture};
use e2e::{EdgeConfig, get, post, post_bytes, start_edge, start_inference};
use image::{ImageFormat, RgbImage};

const KEY: &str = "table-key";
const APPYPIE: &str = "/img2img/getImage/v1/getSDXLImage";
const HOLMES_GEN: &str = "/svc-1/v1/images/generate";
const HOLMES_CTL: &str = "/v1/images/control";
const ML_I2I: &str = "/api/v1/enterprise/img2img";
const ML_T2I: &str = "/api/v1/enterprise/text2img";
const HYPER: &str = "/v1/image/generation";

fn images() -> ImageServer {
    let mut routes = HashMap::new();
    let ok = |content_type, body| Route::Ok { content_type, body };
    routes.insert(
        "/ok.png".into(),
        ok(
            "image/png",
            encode(&test_picture(64, 64, 10), ImageFormat::Png),
        ),
    );
    routes.insert(
        "/page.png".into(),
        ok("image/png", b"<html>not an image</html>".to_vec()),
    );
    routes.insert("/gone.png".into(), Route::Status(404));
    routes.insert("/loop1.png".into(), Route::Redirect("/loop2.png".into()));
    routes.insert("/loop2.png".into(), Route::Redirect("/loop1.png".into()));
    // 11 MiB of bytes that start like a PNG: over the 10 MiB cap.
    let mut big = encode(&test_picture(8, 8, 1), ImageFormat::Png);
    big.resize(11 * 1024 * 1024, 0);
    routes.insert("/big.png".into(), ok("image/png", big));
    // 5000x4000 = 20 megapixels (uniform, so the file is small): over the 16 MP cap.
    routes.insert(
        "/huge.png".into(),
        ok(
            "image/png",
            encode(&RgbImage::new(5000, 4000), ImageFormat::Png),
        ),
    );
    routes.insert(
        "/gif.gif".into(),
        ok("image/gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec()),
    );
    ImageServer::start(routes)
}

fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        let disposition = match file {
            Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\""),
            None => format!("form-data; name=\"{name}\""),
        };
        body.extend_from_slice(
            format!("--BB\r\nContent-Disposition: {disposition}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--BB--\r\n");
    body
}

struct Case {
    name: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// Must appear in the error message.
    says: &'static str,
}

fn case(
    name: &'static str,
    path: &'static str,
    auth: Auth,
    body: impl Into<Vec<u8>>,
    status: u16,
    says: &'static str,
) -> Case {
    let mut headers = vec![("content-type", "application/json".to_string())];
    match auth {
        Auth::Appypie(k) => headers.push(("ocp-apim-subscription-key", k.to_string())),
        Auth::Bearer(k) => headers.push(("authorization", format!("Bearer {k}"))),
        Auth::Raw(v) => headers.push(("authorization", v.to_string())),
        Auth::Form(k) => {
            headers = vec![
                (
                    "content-type",
                    "multipart/form-data; boundary=BB".to_string(),
                ),
                ("authorization", format!("Bearer {k}")),
            ]
        }
        Auth::None => {}
    }
    Case {
        name,
        path,
        headers,
        body: body.into(),
        status,
        says,
    }
}

#[derive(Clone, Copy)]
enum Auth {
    Appypie(&'static str),
    Bearer(&'static str),
    Raw(&'static str),
    Form(&'static str),
    None,
}

fn cases(img: &str) -> Vec<Case> {
    use Auth::*;
    let a = Appypie(KEY);
    let b = Bearer(KEY);
    let f = Form(KEY);
    let url = |p: &str| format!("{img}{p}");
    let ai = |p: &str| {
        format!(
            r#"{{"prompt":"p","size":"64x64","num_inference_steps":2,"inputImage":"{}"}}"#,
            url(p)
        )
    };
    let text_b64 = base64::engine::general_purpose::STANDARD.encode(b"plain text, not an image");
    let png = encode(&test_picture(64, 64, 5), ImageFormat::Png);
    vec![
        // Appypie.
        case(
            "appypie: no key",
            APPYPIE,
            None,
            r#"{"prompt":"p"}"#,
            401,
            "missing API key",
        ),
        case(
            "appypie: wrong key",
            APPYPIE,
            Appypie("nope"),
            r#"{"prompt":"p"}"#,
            401,
            "invalid API key",
        ),
        case(
            "appypie: not JSON",
            APPYPIE,
            a,
            "prompt=p",
            400,
            "not valid JSON",
        ),
        case(
            "appypie: JSON array",
            APPYPIE,
            a,
            "[1,2]",
            400,
            "expected a JSON object",
        ),
        case("appypie: empty body", APPYPIE, a, "", 400, "body: empty"),
        case(
            "appypie: prompt missing",
            APPYPIE,
            a,
            r#"{"size":"64x64"}"#,
            400,
            "prompt: required",
        ),
        case(
            "appypie: prompt not a string",
            APPYPIE,
            a,
            r#"{"prompt":7}"#,
            400,
            "prompt: expected a string",
        ),
        case(
            "appypie: bad size",
            APPYPIE,
            a,
            r#"{"prompt":"p","size":"big"}"#,
            400,
            "size: must be WIDTHxHEIGHT",
        ),
        case(
            "appypie: too many steps",
            APPYPIE,
            a,
            r#"{"prompt":"p","num_inference_steps":21}"#,
            400,
            "num_inference_steps: must be an integer from 1 to 20",
        ),
        case(
            "appypie: guidance not a number",
            APPYPIE,
            a,
            r#"{"prompt":"p","guidance_scale":"high"}"#,
            400,
            "guidance_scale: must be a number",
        ),
        case(
            "appypie: negative seed",
            APPYPIE,
            a,
            r#"{"prompt":"p","seed":-1}"#,
            400,
            "seed: must be an integer",
        ),
        case(
            "appypie: strength out of range",
            APPYPIE,
            a,
            r#"{"prompt":"p","strength":1.5}"#,
            400,
            "strength: must be a number from 0.01 to 1",
        ),
        case(
            "appypie: relative URL",
            APPYPIE,
            a,
            r#"{"prompt":"p","inputImage":"dog.png"}"#,
            400,
            "inputImage: not an absolute",
        ),
        case(
            "appypie: ftp URL",
            APPYPIE,
            a,
            r#"{"prompt":"p","inputImage":"ftp://example.com/x.png"}"#,
            400,
            "only http and https",
        ),
        case(
            "appypie: cloud metadata address",
            APPYPIE,
            a,
            r#"{"prompt":"p","inputImage":"http://169.254.169.254/latest/meta-data"}"#,
            400,
            "link-local (cloud metadata)",
        ),
        case(
            "appypie: private address",
            APPYPIE,
            a,
            r#"{"prompt":"p","inputImage":"https://10.1.2.3/x.png"}"#,
            400,
            "a private-use address",
        ),
        case(
            "appypie: loopback not in allowlist",
            APPYPIE,
            a,
            r#"{"prompt":"p","inputImage":"http://127.0.0.1:1/x.png"}"#,
            400,
            "a loopback address",
        ),
        case(
            "appypie: plain http host",
            APPYPIE,
            a,
            r#"{"prompt":"p","inputImage":"http://example.com/x.png"}"#,
            400,
            "not an allowed image host",
        ),
        case(
            "appypie: credentials in URL",
            APPYPIE,
            a,
            r#"{"prompt":"p","inputImage":"https://u:p@example.com/x.png"}"#,
            400,
            "credentials",
        ),
        case(
            "appypie: image URL 404",
            APPYPIE,
            a,
            ai("/gone.png"),
            400,
            "gave HTTP 404",
        ),
        case(
            "appypie: URL serves HTML",
            APPYPIE,
            a,
            ai("/page.png"),
            400,
            "not a PNG, JPEG or WebP",
        ),
        case(
            "appypie: URL serves GIF",
            APPYPIE,
            a,
            ai("/gif.gif"),
            400,
            "PNG, JPEG and WebP are accepted",
        ),
        case(
            "appypie: redirect loop",
            APPYPIE,
            a,
            ai("/loop1.png"),
            400,
            "more than 3 redirects",
        ),
        case(
            "appypie: image over 10 MiB",
            APPYPIE,
            a,
            ai("/big.png"),
            400,
            "larger than the 10 MiB limit",
        ),
        case(
            "appypie: image over 16 megapixels",
            APPYPIE,
            a,
            ai("/huge.png"),
            400,
            "20.0 megapixels",
        ),
        // HolmesAI.
        case(
            "holmesai: no key",
            HOLMES_GEN,
            None,
            r#"{"prompt":"p"}"#,
            401,
            "Bearer",
        ),
        case(
            "holmesai: not a bearer token",
            HOLMES_GEN,
            Raw("Basic abc"),
            r#"{"prompt":"p"}"#,
            401,
            "missing API key",
        ),
        case(
            "holmesai: steps below 10",
            HOLMES_GEN,
            b,
            r#"{"prompt":"p","steps":5}"#,
            400,
            "steps: must be an integer from 10 to 50",
        ),
        case(
            "holmesai: width not a multiple of 64",
            HOLMES_GEN,
            b,
            r#"{"prompt":"p","width":100}"#,
            400,
            "width: must be a multiple of 64 from 128",
        ),
        case(
            "holmesai: cfg_scale over 35",
            HOLMES_GEN,
            b,
            r#"{"prompt":"p","cfg_scale":40}"#,
            400,
            "cfg_scale: must be a number from 0 to 35",
        ),
        case(
            "holmesai: seed over 2^32-1",
            HOLMES_GEN,
            b,
            r#"{"prompt":"p","seed":4294967296}"#,
            400,
            "seed: must be an integer from 0 to 4294967295",
        ),
        case(
            "holmesai: model name with odd characters",
            HOLMES_GEN,
            b,
            r#"{"prompt":"p","model":"x;y"}"#,
            400,
            "model: not a model name",
        ),
        case(
            "holmesai: control sent as JSON",
            HOLMES_CTL,
            b,
            r#"{"prompt":"p"}"#,
            400,
            "expected multipart/form-data",
        ),
        case(
            "holmesai: broken multipart",
            HOLMES_CTL,
            f,
            "--BB\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nunterminated",
            400,
            "broken multipart",
        ),
        case(
            "holmesai: control without image",
            HOLMES_CTL,
            f,
            multipart(&[("prompt", Option::None, b"p")]),
            400,
            "image: required",
        ),
        case(
            "holmesai: upload not an image",
            HOLMES_CTL,
            f,
            multipart(&[
                ("prompt", Option::None, b"p"),
                ("image", Some("x.png"), b"hello"),
            ]),
            400,
            "image: something that is not a PNG",
        ),
        case(
            "holmesai: control_strength over 1",
            HOLMES_CTL,
            f,
            multipart(&[
                ("prompt", Option::None, b"p"),
                ("control_strength", Option::None, b"2"),
                ("image", Some("x.png"), &png),
            ]),
            400,
            "control_strength: must be a number from 0 to 1",
        ),
        // ModelsLab.
        case(
            "modelslab: a body that is not JSON is a 400, not a missing key",
            ML_T2I,
            None,
            r#"{"key":"k","prompt":"p""#,
            400,
            "body: not valid JSON",
        ),
        case(
            "modelslab: wrong key",
            ML_T2I,
            None,
            r#"{"key":"nope","prompt":"p"}"#,
            401,
            "invalid API key in the \"key\" field",
        ),
        case(
            "modelslab: init_image missing",
            ML_I2I,
            None,
            format!(r#"{{"key":"{KEY}","prompt":"p"}}"#),
            400,
            "init_image: required",
        ),
        case(
            "modelslab: base64 without base64 yes",
            ML_I2I,
            None,
            format!(r#"{{"key":"{KEY}","prompt":"p","init_image":"aGVsbG8="}}"#),
            400,
            "also send \"base64\": \"yes\"",
        ),
        case(
            "modelslab: invalid base64",
            ML_I2I,
            None,
            format!(r#"{{"key":"{KEY}","prompt":"p","base64":"yes","init_image":"@@@"}}"#),
            400,
            "init_image: not valid base64",
        ),
        case(
            "modelslab: width over 1024",
            ML_T2I,
            None,
            format!(r#"{{"key":"{KEY}","prompt":"p","width":"2048"}}"#),
            400,
            "width: must be a multiple of 8 from 64 to 1024",
        ),
        case(
            "modelslab: samples over 4",
            ML_T2I,
            None,
            format!(r#"{{"key":"{KEY}","prompt":"p","samples":"5"}}"#),
            400,
            "samples: must be an integer from 1 to 4",
        ),
        case(
            "modelslab: zero steps",
            ML_T2I,
            None,
            format!(r#"{{"key":"{KEY}","prompt":"p","num_inference_steps":"0"}}"#),
            400,
            "num_inference_steps: must be an integer from 1 to 50",
        ),
        case(
            "modelslab: guidance over 20",
            ML_T2I,
            None,
            format!(r#"{{"key":"{KEY}","prompt":"p","guidance_scale":25}}"#),
            400,
            "guidance_scale: must be a number from 1 to 20",
        ),
        case(
            "modelslab: karras flag not yes/no",
            ML_T2I,
            None,
            format!(r#"{{"key":"{KEY}","prompt":"p","use_karras_sigmas":"maybe"}}"#),
            400,
            "use_karras_sigmas: must be \"yes\" or \"no\"",
        ),
        case(
            "modelslab: scheduler that can't sample SD",
            ML_T2I,
            None,
            format!(
                r#"{{"key":"{KEY}","prompt":"p","width":64,"height":64,"num_inference_steps":1,"scheduler":"KarrasVeScheduler"}}"#
            ),
            400,
            "\"KarrasVeScheduler\" is not supported",
        ),
        case(
            "modelslab: unknown scheduler",
            ML_T2I,
            None,
            format!(
                r#"{{"key":"{KEY}","prompt":"p","width":64,"height":64,"num_inference_steps":1,"scheduler":"FancyScheduler"}}"#
            ),
            400,
            "unknown scheduler \"FancyScheduler\"; supported:",
        ),
        // Hyperbolic.
        case(
            "hyperbolic: no key",
            HYPER,
            None,
            r#"{"prompt":"p"}"#,
            401,
            "missing API key",
        ),
        case(
            "hyperbolic: ControlNet model without its ControlNet",
            HYPER,
            b,
            r#"{"model_name":"SD1.5-ControlNet","prompt":"p"}"#,
            400,
            "controlnet_name: required with model_name SD1.5-ControlNet",
        ),
        case(
            "hyperbolic: unknown model",
            HYPER,
            b,
            r#"{"model_name":"Flux","prompt":"p"}"#,
            400,
            "model_name: unknown model",
        ),
        case(
            "hyperbolic: invalid base64 image",
            HYPER,
            b,
            r#"{"prompt":"p","image":"@@@"}"#,
            400,
            "image: not valid base64",
        ),
        case(
            "hyperbolic: base64 of text",
            HYPER,
            b,
            format!(r#"{{"prompt":"p","image":"{text_b64}"}}"#),
            400,
            "image: something that is not a PNG",
        ),
        case(
            "hyperbolic: strength without image",
            HYPER,
            b,
            r#"{"prompt":"p","strength":0.5}"#,
            400,
            "strength: applies to image-to-image only",
        ),
        case(
            "hyperbolic: width not a multiple of 8",
            HYPER,
            b,
            r#"{"prompt":"p","width":1001}"#,
            400,
            "width: must be a multiple of 8",
        ),
        case(
            "hyperbolic: inversion scheduler",
            HYPER,
            b,
            r#"{"prompt":"p","width":64,"height":64,"steps":1,"sampler":"DDIMInverseScheduler"}"#,
            400,
            // The server names the contract's field (scheduler); the edge, Hyperbolic's.
            "sampler: \"DDIMInverseScheduler\" is not supported",
        ),
        case(
            "hyperbolic: a LoRA the catalog lacks",
            HYPER,
            b,
            r#"{"prompt":"p","width":64,"height":64,"steps":1,"loras":{"Nope":0.5}}"#,
            400,
            // The server's refusal, listing the catalog's LoRAs.
            "loras: unknown LoRA \"Nope\"; this server has: Logo",
        ),
        case(
            "hyperbolic: body over 16 MiB",
            HYPER,
            b,
            vec![b' '; 17 * 1024 * 1024],
            413,
            "larger than the 16 MiB limit",
        ),
    ]
}

/// POSTs a body the edge refuses before reading it all: over a raw socket, since an
/// HTTP client stops at the broken pipe when the server answers early.
fn post_oversized(edge: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let addr = edge.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    // The edge may answer and close before the body is all sent.
    let _ = conn.write_all(body);
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // The JSON body, whether chunked or not.
    let body = match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) if a < b => text[a..=b].as_bytes().to_vec(),
        _ => Vec::new(),
    };
    (status, body)
}

#[test]
fn bad_requests_get_the_right_status_and_say_why() {
    if !e2e::edge_runtime_present() {
        return;
    }
    let images = images();
    let (_inference, inference_url) = start_inference();
    let (_edge, edge) = start_edge(&EdgeConfig {
        inference_url: &inference_url,
        api_keys: KEY,
        image_hosts: &images.origin,
        variables: vec![],
        runtime_allows_image_hosts: true,
    });
    let cases = cases(&images.origin);
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, raw) = if c.body.len() > 1 << 20 {
            post_oversized(&edge, c.path, &headers, &c.body)
        } else {
            let r = post_bytes(&format!("{edge}{}", c.path), &headers, &c.body);
            (r.status, r.body)
        };
        let reply = e2e::Reply {
            status,
            headers: vec![],
            body: raw,
        };
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        let message = body["message"].as_str().unwrap_or_default();
        let format_ok = if c.path.starts_with("/api/v1/enterprise") {
            body["status"] == "error"
        } else {
            body["code"] == c.status && body["traceId"].is_string()
        };
        if reply.status != c.status || !message.contains(c.says) || !format_ok {
            failures.push(format!(
                "{}: got {} {}; wanted {} with {:?}",
                c.name,
                reply.status,
                String::from_utf8_lossy(&reply.body),
                c.status,
                c.says
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Still serving after all that.
    let ok = post(
        &format!("{edge}{HYPER}"),
        &[("authorization", &format!("Bearer {KEY}"))],
        r#"{"prompt":"p","width":64,"height":64,"steps":2}"#,
    );
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    // A stored-image link that doesn't exist, and one of the wrong shape.
    let missing = get(&format!(
        "{edge}/generations/99999999999-0123456789abcdef0123456789abcdef.png"
    ));
    assert_eq!(missing.status, 404);
    assert_eq!(get(&format!("{edge}/generations/../spin.toml")).status, 404);
}
