//! Inpainting through the real edge and server, as ModelsLab's clients send it (the
//! SDKs' and documents' paths, base64 images, `steps`): an inpainting model and an
//! ordinary one give diffusers' images (the references of
//! inference/tests/fixtures/parity_inpaint, made by
//! scripts/reference/make_inpaint_fixtures.py), also when the job runs after the reply
//! and its images wait in the key-value store; what does not fit is a 400 naming the
//! client's field.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::{
    EdgeConfig, edge_runtime_present, images, post, repo_root, start_edge,
    start_inference_with_catalog,
};
use serde_json::{Value, json};

const KEY: &str = "inpaint-key";

fn fixtures() -> PathBuf {
    repo_root().join("inference/tests/fixtures/parity_inpaint")
}

fn start_server() -> (e2e::process::Process, String, tempfile::TempDir) {
    let models = repo_root().join("inference/tests/fixtures/models");
    start_inference_with_catalog(&format!(
        "default = \"sd15-inpaint\"\n\
             [models.sd15-inpaint]\nsource = \"{}\"\n\
             [models.\"SD1.5\"]\nsource = \"{}\"\n\
             [models.sdxl-inpaint]\nsource = \"{}\"\n",
        models.join("tiny-sd15-inpaint").display(),
        models.join("tiny-sd15").display(),
        models.join("tiny-sdxl-inpaint").display(),
    ))
}

fn edge_config<'a>(
    inference_url: &'a str,
    variables: Vec<(&'static str, &'static str)>,
) -> EdgeConfig<'a> {
    EdgeConfig {
        variables,
        ..EdgeConfig::keyed(inference_url, KEY)
    }
}

fn file_base64(name: &str) -> String {
    images::file_base64(&fixtures().join(name))
}

/// A reference case in ModelsLab's fields: 64x64, 4 steps, seed 5, base64 images.
fn case(model: &str, scheduler: &str, strength: f64) -> Value {
    json!({"key": KEY, "model_id": model, "prompt": "a photo of a cat",
        "negative_prompt": "blurry, low quality", "width": "64", "height": "64",
        "steps": "4", "guidance_scale": 7.5, "seed": 5, "scheduler": scheduler,
        "strength": strength, "safety_checker": "no", "base64": "yes",
        "init_image": file_base64("init_64.png"), "mask_image": file_base64("mask_64.png")})
}

/// ... with the SDXL cases' guidance and seed.
fn sdxl(mut body: Value) -> Value {
    body["guidance_scale"] = json!(5.0);
    body["seed"] = json!(3);
    body
}

fn send(url: &str, body: &Value) -> (u16, Value) {
    let reply = post(
        url,
        &[("Content-Type", "application/json")],
        &body.to_string(),
    );
    (reply.status, reply.json())
}

/// The largest per-channel difference between the answer's first image and `reference`.
fn diff_to(reference: &str, answer: &Value) -> i32 {
    let got = images::from_base64(answer["output"][0].as_str().expect("an image"));
    images::max_diff_to(&fixtures().join(reference), &got)
}

#[test]
fn modelslab_inpainting_gives_diffusers_images() {
    if !edge_runtime_present() {
        return;
    }
    let (_server, url, _dir) = start_server();
    let (_edge_proc, edge) = start_edge(&edge_config(&url, vec![]));
    for (path, body, reference) in [
        // The SDKs' community path, on an inpainting model.
        (
            "/api/v6/images/inpaint",
            case("sd15-inpaint", "EulerDiscreteScheduler", 1.0),
            "inpaint_full_euler_0.png",
        ),
        // The documents' enterprise path, on an ordinary model (latent blending).
        (
            "/api/v1/enterprise/inpaint",
            case("SD1.5", "DDIMScheduler", 0.7),
            "blend_07_ddim_0.png",
        ),
        // The CLI's v7 path, on an SDXL inpainting model.
        (
            "/api/v7/images/inpaint",
            sdxl(case("sdxl-inpaint", "EulerDiscreteScheduler", 0.7)),
            "xl_inpaint_07_euler_0.png",
        ),
    ] {
        let (status, answer) = send(&format!("{edge}{path}"), &body);
        assert_eq!(status, 200, "{path}: {answer}");
        assert_eq!(answer["status"], "success", "{answer}");
        assert_eq!(answer["meta"]["mask_image"], "(base64)", "{answer}");
        let d = diff_to(reference, &answer);
        assert!(d <= 2, "{path}: {d} from {reference}");
    }
    // Without the mask the same request is another image: the mask did the work.
    let mut unmasked = case("SD1.5", "DDIMScheduler", 0.7);
    unmasked.as_object_mut().unwrap().remove("mask_image");
    let (status, answer) = send(&format!("{edge}/api/v1/enterprise/img2img"), &unmasked);
    assert_eq!(status, 200, "{answer}");
    assert!(diff_to("blend_07_ddim_0.png", &answer) > 10);

    // Refusals name the client's fields.
    let mut no_mask = case("SD1.5", "DDIMScheduler", 0.7);
    no_mask.as_object_mut().unwrap().remove("mask_image");
    let mut not_an_image = case("SD1.5", "DDIMScheduler", 0.7);
    not_an_image["mask_image"] = json!("aGVsbG8=");
    let mut needs_mask = case("sd15-inpaint", "DDIMScheduler", 0.7);
    needs_mask.as_object_mut().unwrap().remove("mask_image");
    for (path, body, needle) in [
        ("/api/v6/images/inpaint", no_mask, "mask_image: required"),
        ("/api/v6/images/inpaint", not_an_image, "mask_image:"),
        (
            "/api/v6/images/img2img",
            needs_mask,
            "mask_image: this is an inpainting model",
        ),
    ] {
        let (status, answer) = send(&format!("{edge}{path}"), &body);
        assert_eq!(status, 400, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.starts_with(needle), "{needle}: {answer}");
    }
}

/// A job that runs after the reply keeps its init image and mask in the store until it
/// runs (the image-editing path, as `modelslab-py`'s `Image_editing.inpainting` calls it).
#[test]
fn a_queued_inpainting_job_keeps_its_mask() {
    if !edge_runtime_present() {
        return;
    }
    let (_server, url, _dir) = start_server();
    let (_edge_proc, edge) = start_edge(&edge_config(&url, vec![("ASYNC_AFTER_SECS", "0")]));
    let body = case("SD1.5", "DDIMScheduler", 0.7);
    let (status, queued) = send(&format!("{edge}/api/v6/image_editing/inpaint"), &body);
    assert_eq!(status, 200, "{queued}");
    assert_eq!(queued["status"], "processing", "{queued}");
    let id = queued["id"].as_u64().unwrap();
    let fetch_url = format!("{edge}/api/v6/image_editing/fetch/{id}");
    assert_eq!(queued["fetch_result"], fetch_url);
    let end = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let (status, answer) = send(&fetch_url, &json!({"key": KEY}));
        assert_eq!(status, 200, "{answer}");
        if answer["status"] != "processing" {
            break answer;
        }
        assert!(Instant::now() < end, "still processing: {answer}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(done["status"], "success", "{done}");
    let d = diff_to("blend_07_ddim_0.png", &done);
    assert!(d <= 2, "{d}");
}
