//! Appypie's SDXL API end to end: the seed's request through the real edge .wasm
//! in the local runtime, to the real inference server on a tiny model.

use std::collections::HashMap;
use std::net::TcpListener;

use base64::Engine as _;
use e2e::images::{ImageServer, Route, encode, test_picture};
use e2e::{EdgeConfig, Reply, post, start_edge, start_inference};
use image::{ImageFormat, RgbImage};

const KEY: &str = "test-key-1";
const IMG2IMG: &str = "/img2img/getImage/v1/getSDXLImage";
const TXT2IMG: &str = "/getImage/v1/getSDXLImage";

fn images() -> ImageServer {
    let png = |hue| Route::Ok {
        content_type: "image/png",
        body: encode(&test_picture(640, 480, hue), ImageFormat::Png),
    };
    let mut routes = HashMap::new();
    routes.insert("/dog.png".to_string(), png(30));
    routes.insert(
        "/dog128.png".to_string(),
        Route::Ok {
            content_type: "image/png",
            body: encode(&dog_128(), ImageFormat::Png),
        },
    );
    routes.insert(
        "/cat.jpg".to_string(),
        Route::Ok {
            content_type: "image/jpeg",
            body: encode(&test_picture(300, 500, 220), ImageFormat::Jpeg),
        },
    );
    routes.insert(
        "/page.html".to_string(),
        Route::Ok {
            content_type: "image/png",
            body: b"<html>hi</html>".to_vec(),
        },
    );
    routes.insert("/gone.png".to_string(), Route::Status(404));
    routes.insert(
        "/moved.png".to_string(),
        Route::Redirect("/dog128.png".into()),
    );
    ImageServer::start(routes)
}

/// The seed's headers, with our key.
fn seed_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Content-Type", "application/json"),
        ("Cache-Control", "no-cache"),
        ("Ocp-Apim-Subscription-Key", KEY),
    ]
}

/// The PNG inside a success body, checked against the seed's response shape.
fn png_of(reply: &Reply) -> RgbImage {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert_eq!(body["status"], 200);
    assert_eq!(body["content-type"], "image/png");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["image_data"].as_str().unwrap())
        .unwrap();
    assert_eq!(body["content-length"], bytes.len().to_string());
    assert_eq!(image::guess_format(&bytes).unwrap(), ImageFormat::Png);
    image::load_from_memory(&bytes).unwrap().into_rgb8()
}

fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[test]
fn the_seed_request_returns_a_1024_png_made_from_the_fetched_image() {
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

    // The seed's curl, byte for byte but for the URLs.
    let body = format!(
        r#"{{ "prompt": "Change to a cat", "inputImage": "{}" }}"#,
        images.url("/dog.png")
    );
    let reply = post(&format!("{edge}{IMG2IMG}"), &seed_headers(), &body);
    assert_eq!(png_of(&reply).dimensions(), (1024, 1024));
    assert!(
        reply
            .header("x-seed")
            .is_some_and(|s| s.parse::<u64>().is_ok())
    );
    assert_eq!(images.hits(), ["/dog.png"]);

    // Made from the image: at a small size and a fixed seed, the answer is exactly
    // what the engine makes from that image directly (`inference generate
    // --init-image`), the same image gives the same answer (also via a redirect),
    // and another image, or no image, another answer.
    let run = |input: Option<&str>| {
        let image = input
            .map(|p| format!(r#","inputImage":"{}""#, images.url(p)))
            .unwrap_or_default();
        let body = format!(
            r#"{{"prompt":"Change to a cat","size":"128x128","seed":11,"strength":0.5,"num_inference_steps":8{image}}}"#
        );
        png_of(&post(&format!("{edge}{IMG2IMG}"), &seed_headers(), &body))
    };
    let dog = run(Some("/dog128.png"));
    assert_eq!(
        dog,
        engine_img2img(&dog_128(), "Change to a cat", 128, 11, 0.5, 8),
        "the engine's own img2img of the image"
    );
    assert_eq!(
        dog,
        run(Some("/dog128.png")),
        "same seed and input, same image"
    );
    assert_eq!(
        dog,
        run(Some("/moved.png")),
        "a redirect to the same image gives the same image"
    );
    // One step at the default strength 0.7: int(1 x 0.7) = 0, which diffusers refuses;
    // the last step runs (it was refused naming a strength the client never sent).
    let body = format!(
        r#"{{"prompt":"Change to a cat","size":"128x128","seed":11,"num_inference_steps":1,"inputImage":"{}"}}"#,
        images.url("/dog128.png")
    );
    let one = png_of(&post(&format!("{edge}{IMG2IMG}"), &seed_headers(), &body));
    assert_eq!(
        one,
        engine_img2img(&dog_128(), "Change to a cat", 128, 11, 0.7, 1),
        "one step at strength 0.7, as the engine runs it"
    );
    let cat = run(Some("/cat.jpg"));
    assert_eq!(cat.dimensions(), (128, 128));
    assert!(
        mean_abs_diff(&dog, &cat) > 1.0,
        "another input, another image"
    );
    assert!(
        mean_abs_diff(&dog, &run(None)) > 1.0,
        "without the image, another image"
    );
}

/// A picture already at 128x128, so the edge's fit leaves its pixels alone.
fn dog_128() -> RgbImage {
    test_picture(128, 128, 30)
}

/// `inference generate` on the same tiny model: the engine without the edge.
fn engine_img2img(
    init: &RgbImage,
    prompt: &str,
    size: u32,
    seed: u64,
    strength: f64,
    steps: u32,
) -> RgbImage {
    let dir = e2e::target_dir().join(format!("e2e-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (input, output) = (dir.join("init.png"), dir.join("out.png"));
    init.save(&input).unwrap();
    let status = std::process::Command::new(e2e::binary("inference"))
        .args([
            "generate",
            "--device",
            "cpu",
            // Appypie sends no guidance: the catalog's default for its model,
            // stable-diffusion-xl-base-1.0 (inference/catalog.toml).
            "--guidance",
            "7",
            "--prompt",
            prompt,
        ])
        .arg("--model")
        .arg(e2e::tiny_model())
        .args([
            "--width",
            &size.to_string(),
            "--height",
            &size.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args([
            "--strength",
            &strength.to_string(),
            "--steps",
            &steps.to_string(),
        ])
        .arg("--init-image")
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let img = image::open(&output).unwrap().into_rgb8();
    std::fs::remove_dir_all(&dir).unwrap();
    img
}

#[test]
fn text_to_image_on_both_routes_with_sizes_and_seeds() {
    if !e2e::edge_runtime_present() {
        return;
    }
    let (_inference, inference_url) = start_inference();
    let (_edge, edge) = start_edge(&EdgeConfig {
        inference_url: &inference_url,
        api_keys: KEY,
        image_hosts: "",
        variables: vec![],
        runtime_allows_image_hosts: true,
    });

    let body = r#"{"prompt":"a red fox in snow","negative_prompt":"blurry","size":"256x192","seed":7,"num_inference_steps":4}"#;
    let first = post(&format!("{edge}{TXT2IMG}"), &seed_headers(), body);
    let img = png_of(&first);
    assert_eq!(img.dimensions(), (256, 192));
    assert_eq!(first.header("x-seed"), Some("7"));
    // Seeded generation is reproducible, and the img2img route without an image is text-to-image.
    assert_eq!(
        png_of(&post(&format!("{edge}{IMG2IMG}"), &seed_headers(), body)),
        img
    );

    let other = r#"{"prompt":"a red fox in snow","negative_prompt":"blurry","width":256,"height":192,"seed":8,"num_inference_steps":4}"#;
    assert_ne!(
        png_of(&post(&format!("{edge}{TXT2IMG}"), &seed_headers(), other)),
        img
    );

    // No seed: the server draws one and says which.
    let random = post(
        &format!("{edge}{TXT2IMG}"),
        &seed_headers(),
        r#"{"prompt":"a fox","size":"64x64","num_inference_steps":2}"#,
    );
    assert_eq!(png_of(&random).dimensions(), (64, 64));
    assert!(
        random
            .header("x-seed")
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n != 0))
    );
}

/// One error reply: status, the seed's error shape, and the message's subject.
fn assert_error(reply: &Reply, status: u16, needle: &str) -> String {
    let body = reply.json();
    assert_eq!(reply.status, status, "{body}");
    assert_eq!(body["code"], status, "{body}");
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {body}"));
    assert!(
        message.contains(needle),
        "expected {needle:?} in {message:?}"
    );
    let trace = body["traceId"].as_str().unwrap().to_string();
    assert_eq!(trace.len(), 32, "{body}");
    assert_eq!(reply.header("x-trace-id"), Some(trace.as_str()));
    trace
}

#[test]
fn errors_follow_the_seed_contract() {
    if !e2e::edge_runtime_present() {
        return;
    }
    let images = images();
    let broken = e2e::images::start_broken_host(
        "image/png",
        encode(&test_picture(640, 480, 90), ImageFormat::Png),
    );
    let (_inference, inference_url) = start_inference();
    let (mut edge_proc, edge) = start_edge(&EdgeConfig {
        inference_url: &inference_url,
        api_keys: KEY,
        image_hosts: &format!("{},{broken}", images.origin),
        variables: vec![],
        runtime_allows_image_hosts: true,
    });
    let url = format!("{edge}{IMG2IMG}");
    let ok_body = |image: &str| {
        format!(
            r#"{{"prompt":"p","inputImage":"{}","size":"64x64"}}"#,
            images.url(image)
        )
    };

    let no_key: Vec<_> = seed_headers()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("Ocp"))
        .collect();
    assert_error(
        &post(&url, &no_key, &ok_body("/dog.png")),
        401,
        "Ocp-Apim-Subscription-Key",
    );
    let mut wrong_key = no_key.clone();
    wrong_key.push(("Ocp-Apim-Subscription-Key", "nope"));
    assert_error(
        &post(&url, &wrong_key, &ok_body("/dog.png")),
        401,
        "invalid API key",
    );

    let h = seed_headers();
    let trace = assert_error(
        &post(&url, &h, r#"{"inputImage":"x"}"#),
        400,
        "prompt: required",
    );
    assert_error(&post(&url, &h, "not json"), 400, "body: not valid JSON");
    assert_error(
        &post(&url, &h, r#"{"prompt":"p","size":"1024by1024"}"#),
        400,
        "size: must be WIDTHxHEIGHT",
    );
    assert_error(
        &post(&url, &h, r#"{"prompt":"p","num_inference_steps":50}"#),
        400,
        "num_inference_steps: must be an integer from 1 to 20",
    );
    assert_error(
        &post(
            &url,
            &h,
            r#"{"prompt":"p","inputImage":"http://10.0.0.1/a.png"}"#,
        ),
        400,
        "inputImage: http://10.0.0.1:80 is a private-use address",
    );
    assert_error(
        &post(
            &url,
            &h,
            r#"{"prompt":"p","inputImage":"https://127.0.0.1:9/a.png"}"#,
        ),
        400,
        "loopback",
    );
    assert_error(&post(&url, &h, &ok_body("/gone.png")), 400, "gave HTTP 404");
    // A download cut short is an error, not a shorter image.
    assert_error(
        &post(
            &url,
            &h,
            &format!(r#"{{"prompt":"p","inputImage":"{broken}/cut.png","size":"64x64"}}"#),
        ),
        400,
        "inputImage: the download broke off",
    );
    assert_error(
        &post(&url, &h, &ok_body("/page.html")),
        400,
        "not a PNG, JPEG or WebP image",
    );

    // The trace id of a failed request is in the edge's log line for it.
    edge_proc.wait_for_line(
        "the trace id in the log",
        std::time::Duration::from_secs(5),
        |l| l.contains(&trace),
    );
}

#[test]
fn a_down_backend_is_503_and_a_stalled_one_504() {
    if !e2e::edge_runtime_present() {
        return;
    }
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (_edge, edge) = start_edge(&EdgeConfig {
        inference_url: &closed_url,
        api_keys: KEY,
        image_hosts: "",
        variables: vec![],
        runtime_allows_image_hosts: true,
    });
    let reply = post(
        &format!("{edge}{TXT2IMG}"),
        &seed_headers(),
        r#"{"prompt":"p","size":"64x64"}"#,
    );
    assert_error(&reply, 503, "inference server is unavailable");

    // A backend that accepts the connection and never answers.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_url = format!("http://{}", stalled.local_addr().unwrap());
    let _held = std::thread::spawn(move || {
        let conns: Vec<_> = stalled.incoming().take(1).collect();
        std::thread::sleep(std::time::Duration::from_secs(30));
        drop(conns);
    });
    let (_edge, edge) = start_edge(&EdgeConfig {
        inference_url: &stalled_url,
        api_keys: KEY,
        image_hosts: "",
        variables: vec![("INFERENCE_TIMEOUT_SECS", "2")],
        runtime_allows_image_hosts: true,
    });
    let started = std::time::Instant::now();
    let reply = post(
        &format!("{edge}{TXT2IMG}"),
        &seed_headers(),
        r#"{"prompt":"p","size":"64x64"}"#,
    );
    assert_error(&reply, 504, "did not answer within 2 s");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn image_hosts_must_also_be_allowed_by_the_runtime() {
    if !e2e::edge_runtime_present() {
        return;
    }
    // image_hosts names the image server, but spin.toml's allowed_outbound_hosts
    // (and no --allow-outbound) do not: the runtime refuses the connection and the
    // edge says why, without the image server ever being asked.
    let images = images();
    let (_edge, edge) = start_edge(&EdgeConfig {
        inference_url: "http://127.0.0.1:9",
        api_keys: KEY,
        image_hosts: &images.origin,
        variables: vec![],
        runtime_allows_image_hosts: false,
    });
    let body = format!(
        r#"{{"prompt":"p","inputImage":"{}","size":"64x64"}}"#,
        images.url("/dog.png")
    );
    let reply = post(&format!("{edge}{IMG2IMG}"), &seed_headers(), &body);
    assert_error(&reply, 400, "allowed_outbound_hosts does not list it");
    assert!(images.hits().is_empty());
}
