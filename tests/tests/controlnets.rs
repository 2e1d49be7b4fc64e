//! ControlNets through the real edge and server, as Hyperbolic's and ModelsLab's clients
//! send them, and through the contract: the images are diffusers' (the references of
//! inference/tests/fixtures/parity_controlnet, made by
//! scripts/reference/make_controlnet_fixtures.py), a photo becomes its Canny edges on the
//! server as the catalog says, and names that do not fit are 400s naming the client's
//! field.

use std::path::PathBuf;

use e2e::{
    EdgeConfig, edge_runtime_present, images, post, repo_root, spin_pass_skips_edgeless_test,
    start_edge, start_inference_with_catalog,
};
use serde_json::{Value, json};

const KEY: &str = "controlnet-key";

fn fixtures() -> PathBuf {
    repo_root().join("inference/tests/fixtures/parity_controlnet")
}

/// The server on the tiny SD 1.5 and SDXL models, with the tiny ControlNets in its
/// catalog: "canny" (one per architecture, preprocessing photos), "depth" (SD 1.5, with
/// the tiny depth model making the maps) and "lines" (SD 1.5).
fn start_server() -> (e2e::process::Process, String, tempfile::TempDir) {
    let models = repo_root().join("inference/tests/fixtures/models");
    let m = |name: &str| models.join(name).display().to_string();
    start_inference_with_catalog(&format!(
        r#"default = "SD1.5"
depth_estimator = "{depth}"
[models."SD1.5"]
source = "{sd15}"
[models."SDXL1.0-base"]
source = "{sdxl}"
{canny}[controlnets.lines]
source = "{cnb}"
architecture = "stable-diffusion-1"
[controlnets.depth-sd15]
source = "{cn15}"
aliases = ["depth"]
architecture = "stable-diffusion-1"
preprocess = "depth"
"#,
        sd15 = m("tiny-sd15"),
        sdxl = m("tiny-sdxl"),
        cn15 = m("tiny-controlnet-sd15"),
        canny = e2e::canny_controlnets(),
        cnb = m("tiny-controlnet-sd15-b"),
        depth = m("tiny-depth-anything"),
    ))
}

fn file_base64(name: &str) -> String {
    images::file_base64(&fixtures().join(name))
}

/// The largest per-channel difference to reference `name`.
fn diff_to(name: &str, got: &image::RgbImage) -> i32 {
    images::max_diff_to(&fixtures().join(name), got)
}

fn hyperbolic(edge: &str, body: &Value) -> (u16, Value) {
    e2e::post_hyperbolic(edge, KEY, body)
}

fn modelslab(edge: &str, path: &str, body: &Value) -> (u16, Value) {
    let reply = post(
        &format!("{edge}{path}"),
        &[("Content-Type", "application/json")],
        &body.to_string(),
    );
    (reply.status, reply.json())
}

#[test]
fn hyperbolic_and_modelslab_controlnets_give_diffusers_images() {
    if !edge_runtime_present() {
        return;
    }
    let (_server, url, _dir) = start_server();
    let (_edge_proc, edge) = start_edge(&EdgeConfig::keyed(&url, KEY));
    // Hyperbolic: a photo, which the server turns into its Canny edges (the catalog's
    // preprocess), on SD 1.5 and SDXL under their ControlNet model names.
    for (model, net, cfg, seed, reference) in [
        ("SD1.5-ControlNet", "canny", 7.5, 5, "sd15_cn_canny_0.png"),
        ("SDXL-ControlNet", "canny", 5.0, 3, "sdxl_cn_canny_0.png"),
        ("SD1.5-ControlNet", "depth", 7.5, 5, "sd15_cn_depth_0.png"),
    ] {
        let body = json!({"model_name": model, "prompt": "a photo of a cat",
            "negative_prompt": "blurry, low quality", "width": 64, "height": 64, "steps": 4,
            "cfg_scale": cfg, "seed": seed, "sampler": "Euler", "controlnet_name": net,
            "controlnet_image": file_base64("init_64.png")});
        let (status, answer) = hyperbolic(&edge, &body);
        assert_eq!(status, 200, "{model}: {answer}");
        let d = diff_to(
            reference,
            &images::from_base64(answer["images"][0]["image"].as_str().unwrap()),
        );
        assert!(d <= 2, "{model} {net}: {d} from {reference}");
    }
    // ModelsLab: a ready control image (auto_hint "no"), with and without guess mode.
    for (guess, reference) in [("no", "sd15_cn_0.png"), ("yes", "sd15_cn_guess_0.png")] {
        let body = json!({"key": KEY, "model_id": "SD1.5", "prompt": "a photo of a cat",
            "negative_prompt": "blurry, low quality", "width": "64", "height": "64",
            "num_inference_steps": "4", "guidance_scale": 7.5, "seed": 5,
            "scheduler": "EulerDiscreteScheduler", "safety_checker": "no", "base64": "yes",
            "controlnet_model": "canny", "controlnet_type": "canny", "auto_hint": "no",
            "guess_mode": guess, "control_image": file_base64("control_64.png")});
        let (status, answer) = modelslab(&edge, "/api/v6/images/controlnet", &body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["meta"]["ignored"], json!([]), "{answer}");
        assert_eq!(answer["meta"]["controlnet_model"], "canny");
        let d = diff_to(
            reference,
            &images::from_base64(answer["output"][0].as_str().unwrap()),
        );
        assert!(d <= 2, "guess_mode {guess}: {d} from {reference}");
    }

    // Refusals name the client's fields.
    let photo = file_base64("init_64.png");
    for (body, needle) in [
        (
            json!({"model_name": "SD1.5-ControlNet", "prompt": "p", "width": 64, "height": 64,
                   "controlnet_name": "openpose", "controlnet_image": photo}),
            "controlnet_name: unknown ControlNet \"openpose\"; this server has: canny-sd15, canny, canny-sdxl, depth-sd15, depth, lines",
        ),
        (
            json!({"model_name": "SDXL-ControlNet", "prompt": "p", "width": 64, "height": 64,
                   "controlnet_name": "lines", "controlnet_image": photo}),
            "controlnet_name: this server has no ControlNet \"lines\" for stable-diffusion-xl models (only for stable-diffusion-1)",
        ),
        (
            json!({"model_name": "SD1.5-ControlNet", "prompt": "p", "width": 64, "height": 64,
                   "controlnet_name": "canny", "controlnet_image": "aGVsbG8="}),
            "controlnet_image:",
        ),
    ] {
        let (status, answer) = hyperbolic(&edge, &body);
        assert_eq!(status, 400, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.starts_with(needle), "{needle}: {message}");
    }
}

/// Two ControlNets with their own images, scales and windows, through the contract as
/// the server reads it (each control image its own multipart part), with two samples.
#[test]
fn the_contract_carries_several_controlnets_with_their_images() {
    if spin_pass_skips_edgeless_test() {
        return;
    }
    let (_server, url, _dir) = start_server();
    let request = json!({"model": "SD1.5", "prompt": "a photo of a cat",
    "negative_prompt": "blurry, low quality", "width": 64, "height": 64, "steps": 4,
    "guidance": 7.5, "seed": 5, "samples": 2, "scheduler": "Euler a",
    "controlnets": [
        {"name": "canny", "image": "", "preprocess": "none", "scale": 1.0},
        {"name": "lines", "image": "", "scale": 0.5, "start": 0.0, "end": 0.5}
    ]});
    let images = contract::wire::Images {
        controls: vec![
            std::fs::read(fixtures().join("control_64.png"))
                .unwrap()
                .into(),
            std::fs::read(fixtures().join("canny_init_64.png"))
                .unwrap()
                .into(),
        ],
        ..Default::default()
    };
    let request: contract::GenerateRequest = serde_json::from_value(request).unwrap();
    let body = contract::wire::encode(&request, &images).unwrap();
    let reply = e2e::post_bytes(
        &format!("{url}/v1/generate"),
        &[("Content-Type", body.content_type.as_str())],
        &body.bytes,
    );
    let answer = reply.json();
    assert_eq!(reply.status, 200, "{answer}");
    for (i, reference) in ["sd15_two_cn_0.png", "sd15_two_cn_1.png"]
        .iter()
        .enumerate()
    {
        let d = diff_to(
            reference,
            &images::from_base64(answer["images"][i]["png"].as_str().unwrap()),
        );
        assert!(d <= 2, "image {i}: {d} from {reference}");
    }
}

/// Requests with ControlNets arriving together (the same net with different images may
/// share a batch; guess mode and no ControlNet may not) each get their own image.
#[test]
fn concurrent_controlnet_requests_each_get_their_own() {
    if spin_pass_skips_edgeless_test() {
        return;
    }
    let (_server, url, _dir) = start_server();
    let cases = [
        ("control_64.png", false, "sd15_cn_0.png"),
        ("canny_init_64.png", false, "sd15_cn_canny_0.png"),
        ("control_64.png", true, "sd15_cn_guess_0.png"),
        ("", false, ""),
    ];
    let threads: Vec<_> = cases
        .iter()
        .map(|&(image, guess, reference)| {
            let mut body = json!({"model": "SD1.5", "prompt": "a photo of a cat",
                "negative_prompt": "blurry, low quality", "width": 64, "height": 64,
                "steps": 4, "guidance": 7.5, "seed": 5, "samples": 1, "scheduler": "Euler"});
            if !image.is_empty() {
                body["controlnets"] = json!([{"name": "canny", "preprocess": "none",
                    "image": file_base64(image)}]);
                body["guess_mode"] = json!(guess);
            }
            let url = url.clone();
            std::thread::spawn(move || {
                let reply = post(
                    &format!("{url}/v1/generate"),
                    &[("Content-Type", "application/json")],
                    &body.to_string(),
                );
                let answer = reply.json();
                assert_eq!(reply.status, 200, "{answer}");
                (
                    reference,
                    images::from_base64(answer["images"][0]["png"].as_str().unwrap()),
                )
            })
        })
        .collect();
    for t in threads {
        let (reference, img) = t.join().unwrap();
        if reference.is_empty() {
            assert!(diff_to("sd15_cn_0.png", &img) > 10);
        } else {
            let d = diff_to(reference, &img);
            assert!(d <= 2, "{d} from {reference}");
        }
    }
}
