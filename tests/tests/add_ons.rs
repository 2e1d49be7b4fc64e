//! LoRAs, a replacement VAE, textual-inversion embeddings, SDXL's second prompts and
//! clip_skip through the real edge
//! and server, as Hyperbolic and ModelsLab clients send them: the images are diffusers'
//! (the references of inference/tests/fixtures/parity_features, made by
//! scripts/reference/make_feature_fixtures.py), requests with different LoRA sets each get
//! their own, and what does not fit is a 400 naming the client's field.

use std::path::PathBuf;

use base64::Engine as _;
use e2e::{
    EdgeConfig, edge_runtime_present, images, post, repo_root, spin_pass_skips_edgeless_test,
    start_edge, start_inference_with_add_ons,
};
use serde_json::{Value, json};

const KEY: &str = "add-ons-key";
const CAT: &str = "a photo of a cat";
const NEG: &str = "blurry, low quality";

fn features() -> PathBuf {
    repo_root().join("inference/tests/fixtures/parity_features")
}

fn edge_config(inference_url: &str) -> EdgeConfig<'_> {
    EdgeConfig::keyed(inference_url, KEY)
}

fn png(b64: &str) -> image::RgbImage {
    images::from_base64(b64)
}

/// The largest per-channel difference to reference `name`.
fn diff_to(name: &str, img: &image::RgbImage) -> i32 {
    diff_to_set("parity_features", name, img)
}

/// ... to reference `name` of another fixture set.
fn diff_to_set(set: &str, name: &str, img: &image::RgbImage) -> i32 {
    images::max_diff_to(
        &repo_root()
            .join("inference/tests/fixtures")
            .join(set)
            .join(name),
        img,
    )
}

fn hyperbolic(edge: &str, body: Value) -> (u16, Value) {
    e2e::post_hyperbolic(edge, KEY, &body)
}

fn modelslab(edge: &str, body: Value) -> (u16, Value) {
    let mut body = body;
    body["key"] = json!(KEY);
    let reply = post(
        &format!("{edge}/api/v1/enterprise/text2img"),
        &[("Content-Type", "application/json")],
        &body.to_string(),
    );
    (reply.status, reply.json())
}

/// The reference cases' settings, in Hyperbolic's fields (tiny SDXL, Euler, 4 steps).
fn sdxl_case(extra: Value) -> Value {
    let mut body = json!({"model_name": "SDXL1.0-base", "prompt": CAT, "negative_prompt": NEG,
        "width": 64, "height": 64, "steps": 4, "cfg_scale": 5, "seed": 3, "sampler": "Euler"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// ... and in ModelsLab's (tiny SD 1.5).
fn sd15_case(extra: Value) -> Value {
    let mut body = json!({"model_id": "SD1.5", "prompt": CAT, "negative_prompt": NEG,
        "width": 64, "height": 64, "num_inference_steps": 4, "guidance_scale": 7.5, "seed": 3,
        "scheduler": "EulerDiscreteScheduler", "base64": "yes"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn hyperbolic_loras_and_second_prompts_give_diffusers_images() {
    if !edge_runtime_present() {
        return;
    }
    let (_server, url, _dir) = start_inference_with_add_ons();
    let (_edge_proc, edge) = start_edge(&edge_config(&url));
    for (extra, reference) in [
        (
            json!({"loras": {"Logo": 0.6, "Pixel_Art": 1.2}}),
            "sdxl_lora_both_0.png",
        ),
        (
            json!({"loras": {"pixel-art": 1.0}}),
            "sdxl_lora_kohya_0.png",
        ),
        (
            json!({"prompt_2": "an oil painting of a lighthouse", "negative_prompt_2": "grainy"}),
            "sdxl_prompt_2_0.png",
        ),
    ] {
        let (status, answer) = hyperbolic(&edge, sdxl_case(extra.clone()));
        assert_eq!(status, 200, "{extra}: {answer}");
        let img = png(answer["images"][0]["image"].as_str().unwrap());
        let d = diff_to(reference, &img);
        assert!(d <= 2, "{extra}: {d} from {reference}");
    }
    // enable_refiner: the catalog's refiner after the base (diffusers' ensemble, 0.8).
    let (status, answer) = hyperbolic(
        &edge,
        sdxl_case(json!({"steps": 6, "enable_refiner": true})),
    );
    assert_eq!(status, 200, "{answer}");
    let d = diff_to_set(
        "parity_refiner",
        "ensemble_euler_0.png",
        &png(answer["images"][0]["image"].as_str().unwrap()),
    );
    assert!(d <= 2, "refiner: {d}");
    // What does not fit is refused, naming the field.
    for (extra, says) in [
        (json!({"loras": {"Nope": 1}}), "unknown LoRA \"Nope\""),
        (
            json!({"loras": {"contrast-fix": 1}}),
            "contrast-fix is made for stable-diffusion-1 models",
        ),
        (
            json!({"loras": {"sd15-kohya": 1}}),
            "does not fit this model",
        ),
        (
            json!({"model_name": "SD1.5", "prompt_2": "other"}),
            "prompt_2: is for SDXL's second text encoder",
        ),
        (
            json!({"model_name": "SD1.5", "enable_refiner": true}),
            "enable_refiner: the model SD1.5 has no refiner",
        ),
    ] {
        let (status, answer) = hyperbolic(&edge, sdxl_case(extra.clone()));
        assert_eq!(status, 400, "{extra}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{extra}: {answer}");
        if extra.get("loras").is_some() {
            assert!(message.starts_with("loras: "), "{answer}");
        }
    }
}

#[test]
fn modelslab_lora_vae_and_clip_skip_give_diffusers_images() {
    if !edge_runtime_present() {
        return;
    }
    let (_server, url, _dir) = start_inference_with_add_ons();
    let (_edge_proc, edge) = start_edge(&edge_config(&url));
    for (extra, reference) in [
        (
            json!({"lora_model": "contrast-fix", "lora_strength": "0.8"}),
            "sd15_lora_peft_0.png",
        ),
        (json!({"vae": "vae-sd15"}), "sd15_vae_0.png"),
        (json!({"clip_skip": 1}), "sd15_clip_skip_1_0.png"),
        (
            json!({"embeddings_model": "cat-toy, style,pt-style",
                   "prompt": "a photo of <cat-toy> in <style> style, <pt-style>",
                   "negative_prompt": "blurry, <style>"}),
            "sd15_embeddings_0.png",
        ),
        // ModelsLab reads A1111's emphasis by default.
        (
            json!({"prompt": "a (photo:1.3) of a ((cat)), [blurry], \\(literal\\) BREAK at dusk",
                   "negative_prompt": "(low quality:1.4), [[grainy]]"}),
            "sd15_emphasis_0.png",
        ),
    ] {
        let (status, answer) = modelslab(&edge, sd15_case(extra.clone()));
        assert_eq!(status, 200, "{extra}: {answer}");
        assert_eq!(answer["status"], "success", "{extra}: {answer}");
        assert_eq!(answer["meta"]["ignored"], json!([]), "{answer}");
        // Checked (ModelsLab's default) and passed.
        assert_eq!(answer["nsfw_content_detected"], json!([false]), "{answer}");
        let img = png(answer["output"][0].as_str().unwrap());
        let d = diff_to(reference, &img);
        assert!(d <= 2, "{extra}: {d} from {reference}");
    }
    // "emphasis": "none" reads the same prompt as diffusers does: another image.
    let (status, answer) = modelslab(
        &edge,
        sd15_case(json!({"emphasis": "none",
            "prompt": "a (photo:1.3) of a ((cat)), [blurry], \\(literal\\) BREAK at dusk",
            "negative_prompt": "(low quality:1.4), [[grainy]]"})),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        diff_to(
            "sd15_emphasis_0.png",
            &png(answer["output"][0].as_str().unwrap())
        ) > 10
    );
    let (status, answer) = modelslab(
        &edge,
        sd15_case(json!({"lora_model": "contrast-fix,yae-miko-genshin"})),
    );
    assert_eq!(status, 400, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.starts_with("lora_model: unknown LoRA \"yae-miko-genshin\"")
            && message.contains("contrast-fix"),
        "{answer}"
    );
}

/// ModelsLab's safety checker (on by default): the catalog's checker flags this image as
/// diffusers' does (make_safety_fixtures.py) and it is replaced with the "sensitive content"
/// image; `"safety_checker":"no"` leaves it as diffusers makes it.
#[test]
fn modelslab_safety_checker_replaces_what_it_flags() {
    if !edge_runtime_present() {
        return;
    }
    let (_server, url, _dir) = start_inference_with_add_ons();
    let (_edge_proc, edge) = start_edge(&edge_config(&url));
    let init = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(features().join("init_64.png")).unwrap());
    let long = ["a (very detailed:1.2) oil painting of a lighthouse, [rocky] coast at ((dusk))"; 5]
        .join(", ");
    let body = |extra: Value| {
        let mut b = json!({"key": KEY, "model_id": "SD2", "prompt": long, "negative_prompt": "(ugly:0.5)",
            "init_image": init, "base64": "yes", "strength": 0.75, "width": 64, "height": 64,
            "num_inference_steps": 4, "guidance_scale": 7.5, "seed": 3,
            "scheduler": "EulerDiscreteScheduler"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let send = |b: Value| {
        let reply = post(
            &format!("{edge}/api/v1/enterprise/img2img"),
            &[("Content-Type", "application/json")],
            &b.to_string(),
        );
        let answer = reply.json();
        assert_eq!(reply.status, 200, "{answer}");
        answer
    };
    let flagged = send(body(json!({})));
    assert_eq!(flagged["nsfw_content_detected"], json!([true]), "{flagged}");
    let img = png(flagged["output"][0].as_str().unwrap());
    assert!(diff_to("sd2_emphasis_long_i2i_0.png", &img) > 10);
    let grey = img.pixels().filter(|p| p.0 == [32, 32, 32]).count();
    assert!(
        grey > img.pixels().count() / 2,
        "the sensitive-content image"
    );
    let black = send(body(json!({"safety_checker_type": "black"})));
    let img = png(black["output"][0].as_str().unwrap());
    assert!(img.pixels().all(|p| p.0 == [0, 0, 0]));
    let unchecked = send(body(json!({"safety_checker": "no"})));
    assert_eq!(
        unchecked["nsfw_content_detected"],
        json!([null]),
        "{unchecked}"
    );
    let img = png(unchecked["output"][0].as_str().unwrap());
    assert!(diff_to("sd2_emphasis_long_i2i_0.png", &img) <= 2);
}

/// Requests with different LoRA sets sent at once each get the image of their own set
/// (the server batches only requests with the same set).
#[test]
fn concurrent_requests_with_different_loras_each_get_their_own() {
    if spin_pass_skips_edgeless_test() {
        return;
    }
    let (_server, url, _dir) = start_inference_with_add_ons();
    let cases = [
        (
            json!([{"name": "logo", "strength": 0.9}]),
            "sdxl_lora_peft_0.png",
        ),
        (
            json!([{"name": "Pixel_Art", "strength": 1.0}]),
            "sdxl_lora_kohya_0.png",
        ),
        (json!(null), ""),
    ];
    let threads: Vec<_> = cases
        .iter()
        .map(|(loras, reference)| {
            let body = json!({"model": "SDXL1.0-base", "prompt": CAT, "negative_prompt": NEG,
                "width": 64, "height": 64, "steps": 4, "guidance": 5.0, "seed": 3, "samples": 1,
                "scheduler": "Euler", "loras": loras});
            let url = url.clone();
            let reference = reference.to_string();
            std::thread::spawn(move || {
                let reply = post(
                    &format!("{url}/v1/generate"),
                    &[("Content-Type", "application/json")],
                    &body.to_string(),
                );
                assert_eq!(
                    reply.status,
                    200,
                    "{}",
                    String::from_utf8_lossy(&reply.body)
                );
                let img = png(reply.json()["images"][0]["png"].as_str().unwrap());
                (reference, img)
            })
        })
        .collect();
    let results: Vec<(String, image::RgbImage)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (reference, img) in &results {
        if reference.is_empty() {
            // No LoRA: far from both LoRA images.
            assert!(diff_to("sdxl_lora_peft_0.png", img) > 10);
            assert!(diff_to("sdxl_lora_kohya_0.png", img) > 10);
        } else {
            let d = diff_to(reference, img);
            assert!(d <= 2, "{d} from {reference}");
        }
    }
}

/// Appypie's "refinement model" (the edge's `appypie_refiner`): the SDXL base, then the
/// catalog's refiner from 0.8 of the schedule, gives diffusers' ensemble image.
#[test]
fn appypie_runs_the_refiner_when_the_edge_says() {
    if !edge_runtime_present() {
        return;
    }
    let (_server, url, _dir) = start_inference_with_add_ons();
    let config = EdgeConfig {
        variables: vec![("APPYPIE_REFINER", "true")],
        ..edge_config(&url)
    };
    let appypie = |edge: &str| {
        let reply = post(
            &format!("{edge}/getImage/v1/getSDXLImage"),
            &[
                ("Content-Type", "application/json"),
                ("Ocp-Apim-Subscription-Key", KEY),
            ],
            &json!({"prompt": CAT, "negative_prompt": NEG, "size": "64x64",
                    "num_inference_steps": 6, "guidance_scale": 5, "seed": 3})
            .to_string(),
        );
        let answer = reply.json();
        assert_eq!(reply.status, 200, "{answer}");
        let img = png(answer["image_data"].as_str().unwrap());
        diff_to_set("parity_refiner", "ensemble_euler_0.png", &img)
    };
    let (refining, edge) = start_edge(&config);
    let d = appypie(&edge);
    assert!(d <= 2, "{d}");
    drop(refining);
    // Without it, the base alone: another image.
    let (_plain, edge) = start_edge(&edge_config(&url));
    assert!(appypie(&edge) > 10);
}
