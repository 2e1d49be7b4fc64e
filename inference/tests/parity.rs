//! Parity with diffusers: the engine must reproduce diffusers' images within 2/255 per pixel
//! (the runner is `inference::parity`; `inference parity` runs the same sets on a GPU).
//!
//! * `tests/fixtures/parity/` (`images_match_diffusers`): the SDXL tiny model that the engine
//!   writes itself (`make-tiny-model`, seed from cases.json; regenerated in a temporary
//!   folder), references from `scripts/reference/make_parity_fixtures.py`;
//! * `tests/fixtures/parity_arch/` (`architectures_match_diffusers`): tiny SD 1.5-like,
//!   SD 2-like (v-prediction, linear projections, upcast_attention, text attention mask; fp16
//!   variant), SDXL / SSD-1B-like (fp16 variant, sharded) and LCM-distilled SD 1.5-like (fp16
//!   variant) models made and saved by diffusers itself and committed under
//!   `tests/fixtures/models/`, and SDXL-Turbo (the SDXL model with SDXL-Turbo's scheduler
//!   config: Euler a, trailing spacing; cases.json `variants`), references from
//!   `scripts/reference/make_arch_fixtures.py`, txt2img and img2img per scheduler.
//!
//! References use `torch.Generator("cpu").manual_seed(seed + i)` per image. Run in release:
//! `cargo test --release -p inference --test parity`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use inference::parity;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs `set` on the CPU in f32, prints every image's difference, and fails on any over
/// the set's tolerance.
fn assert_set_matches(set: &str) -> parity::SetReport {
    let report = parity::run_set(&fixtures(), set, &Device::Cpu, DType::F32).unwrap();
    for r in &report.images {
        println!(
            "{}[{}] ({} {}): max abs diff {}, mean {:.5}",
            r.id, r.image, r.model, r.scheduler, r.max_abs_diff, r.mean_abs_diff
        );
    }
    assert!(
        report.failures.is_empty(),
        "{set} failures:\n{}",
        report.failures.join("\n")
    );
    report
}

#[test]
fn images_match_diffusers() {
    assert_set_matches("parity");
}

#[test]
fn architectures_match_diffusers() {
    let root = fixtures();
    // The architectures the engine recognises (from the folders' components and configs).
    let manifest = parity::manifest(&root, "parity_arch").unwrap();
    let models = parity::load_models(&root, &manifest, &Device::Cpu, DType::F32).unwrap();
    for (name, arch) in [
        ("tiny-sd15", "stable-diffusion-1"),
        ("tiny-sd2", "stable-diffusion-2"),
        ("tiny-sdxl", "stable-diffusion-xl"),
        ("tiny-lcm", "stable-diffusion-1"),
        ("tiny-sdxl-turbo", "stable-diffusion-xl"),
    ] {
        assert_eq!(
            models.pipelines[name].describe().architecture,
            arch,
            "{name}"
        );
    }
    assert!(models.pipelines["tiny-lcm"].describe().uses_cfg_embedding);
    drop(models);

    let report = assert_set_matches("parity_arch");
    // model -> scheduler and kind -> worst difference
    let mut table: BTreeMap<&str, BTreeMap<String, i32>> = BTreeMap::new();
    for r in &report.images {
        let cell = table
            .entry(&r.model)
            .or_default()
            .entry(format!("{} {}", r.scheduler, r.kind))
            .or_insert(0);
        *cell = (*cell).max(r.max_abs_diff);
    }
    for (model, row) in &table {
        for (what, worst) in row {
            println!("{model:10} {what:24} max abs diff {worst}");
        }
    }
}

/// Second prompts, clip_skip, a replacement VAE, textual inversion, LoRAs (diffusers/PEFT
/// and kohya files, several at once with their weights) and A1111 emphasis (against the
/// embeddings of scripts/reference/a1111_emphasis.py) against diffusers
/// (scripts/reference/make_feature_fixtures.py).
/// Each case's feature must matter: the model without it is far from the reference.
#[test]
fn features_match_diffusers() {
    let report = assert_set_matches("parity_features");
    let root = fixtures();
    let dir = root.join("parity_features");
    let manifest = parity::manifest(&root, "parity_features").unwrap();
    let models = parity::load_models(&root, &manifest, &Device::Cpu, DType::F32).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert_eq!(
        report.images.len(),
        cases
            .iter()
            .map(|c| c["expected"].as_array().unwrap().len())
            .sum::<usize>()
    );
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let mut plain = parity::params_of(case, &dir).unwrap();
        // Without the case's features (the VAE and LoRAs are left out by using the base model).
        (plain.prompt_2, plain.negative_prompt_2, plain.clip_skip) = (None, None, None);
        plain.emphasis = Default::default();
        let base = &models.pipelines[case["model"].as_str().unwrap()];
        let out = base.generate(&plain, &mut |_, _| true).unwrap();
        let want = image::open(dir.join(case["expected"][0].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let (max, _) = parity::image_diff(&want, &out.images[0].0);
        assert!(
            max > 10,
            "{id}: the image without its features is as close as {max}"
        );
    }
}

/// ControlNets as diffusers' StableDiffusion(XL)ControlNet(Img2Img)Pipeline run them: SD 1.5
/// and SDXL, text-to-image and image-to-image, two at once (one BGR), scales, guidance
/// windows and guess mode (scripts/reference/make_controlnet_fixtures.py). Each case's
/// ControlNets must matter: the run without them is far from the reference.
#[test]
fn controlnets_match_diffusers() {
    let report = assert_set_matches("parity_controlnet");
    assert_eq!(report.images.len(), 12);
    let root = fixtures();
    let dir = root.join("parity_controlnet");
    let manifest = parity::manifest(&root, "parity_controlnet").unwrap();
    let models = parity::load_models(&root, &manifest, &Device::Cpu, DType::F32).unwrap();
    for case in manifest["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let plain = parity::params_of(case, &dir).unwrap();
        assert!(plain.controls.is_empty());
        let base = &models.pipelines[case["model"].as_str().unwrap()];
        let out = base.generate(&plain, &mut |_, _| true).unwrap();
        let want = image::open(dir.join(case["expected"][0].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let (max, _) = parity::image_diff(&want, &out.images[0].0);
        assert!(max > 10, "{id}: without its ControlNets as close as {max}");
        // And their images matter: the inverted control images make another image.
        let mut inverted = plain.clone();
        inverted.guess_mode = case["guess_mode"].as_bool().unwrap_or(false);
        inverted.controls = parity::controls_of(case, &models, &dir).unwrap();
        for c in &mut inverted.controls {
            c.image.invert();
        }
        let out = base.generate(&inverted, &mut |_, _| true).unwrap();
        let (max, _) = parity::image_diff(&want, &out.images[0].0);
        assert!(
            max > 10,
            "{id}: with inverted control images as close as {max}"
        );
    }
}

/// The depth preprocessor gives transformers' depth-estimation pipeline's `depth` image of
/// a tiny random Depth Anything made by transformers (make_depth_fixtures.py): an image at
/// the processor's size, one resized, and one whose patch grid is not square (the position
/// embeddings interpolated).
#[test]
fn depth_matches_transformers() {
    use inference::engine::depth::DepthEstimator;
    let root = fixtures();
    let dir = root.join("depth");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let model = DepthEstimator::load(
        &root.join(manifest["model"].as_str().unwrap()),
        &Device::Cpu,
    )
    .unwrap();
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["image"].as_str().unwrap();
        let img = image::open(dir.join(name)).unwrap().to_rgb8();
        let got = model.depth_image(&img).unwrap();
        let want = image::open(dir.join(case["expected"].as_str().unwrap()))
            .unwrap()
            .to_luma8();
        assert_eq!(got.dimensions(), want.dimensions(), "{name}");
        let diffs: Vec<i32> = want
            .pixels()
            .zip(got.pixels())
            .map(|(a, b)| (i32::from(a[0]) - i32::from(b[0])).abs())
            .collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        let spread =
            want.pixels().map(|p| p[0]).max().unwrap() - want.pixels().map(|p| p[0]).min().unwrap();
        assert!(spread > 200, "{name}: a flat reference");
        eprintln!("{name}: max abs diff {max} (of 255)");
        assert!(max <= 2, "{name}: max abs diff {max}");
    }
}

/// The canny preprocessor gives OpenCV's `cv2.Canny(rgb, 100, 200)` pixel for pixel
/// (the fixtures' edges were made by OpenCV, make_controlnet_fixtures.py).
#[test]
fn canny_matches_opencv() {
    use inference::engine::preprocess::canny;
    let dir = fixtures().join("parity_controlnet");
    for name in ["init_64.png", "init_100x80.png"] {
        let img = image::open(dir.join(name)).unwrap().to_rgb8();
        let want = image::open(dir.join(format!("canny_{name}")))
            .unwrap()
            .to_luma8();
        let got = canny(&img, 100.0, 200.0);
        let differing = want
            .pixels()
            .zip(got.pixels())
            .filter(|(a, b)| a != b)
            .count();
        let edges = want.pixels().filter(|p| p[0] == 255).count();
        assert!(edges > 50, "{name}: {edges} edge pixels");
        assert_eq!(
            differing, 0,
            "{name}: {differing} pixels differ of {edges} edges"
        );
    }
}

/// The safety checker's scores and flags are diffusers' (a tiny random
/// StableDiffusionSafetyChecker and its feature extractor, from
/// scripts/reference/make_safety_fixtures.py), on square and non-square images.
#[test]
fn safety_checker_scores_match_diffusers() {
    use inference::engine::safety::SafetyChecker;
    let root = fixtures();
    let dir = root.join("safety_checker");
    let checker = SafetyChecker::load(&dir, &Device::Cpu).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scores.json")).unwrap()).unwrap();
    let tolerance = manifest["tolerance"].as_f64().unwrap() as f32;
    let images = manifest["images"].as_object().unwrap();
    let files: Vec<&String> = images.keys().collect();
    let pictures: Vec<image::RgbImage> = files
        .iter()
        .map(|f| image::open(root.join(f)).unwrap().to_rgb8())
        .collect();
    let verdicts = checker.check(&pictures.iter().collect::<Vec<_>>()).unwrap();
    let mut worst = 0f32;
    let mut flagged = 0;
    for ((file, want), got) in files.iter().zip(images.values()).zip(&verdicts) {
        for (key, ours) in [
            ("special_scores", &got.special_scores),
            ("concept_scores", &got.concept_scores),
        ] {
            let theirs: Vec<f32> = want[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(theirs.len(), ours.len(), "{file} {key}");
            for (a, b) in theirs.iter().zip(ours.iter()) {
                worst = worst.max((a - b).abs());
                assert!(
                    (a - b).abs() <= tolerance,
                    "{file} {key}: {theirs:?} vs {ours:?}"
                );
            }
        }
        assert_eq!(got.nsfw, want["nsfw"].as_bool().unwrap(), "{file}");
        flagged += usize::from(got.nsfw);
    }
    println!(
        "safety checker: {} images, {flagged} flagged, largest score difference {worst}",
        files.len()
    );
    assert!(flagged > 0 && flagged < files.len());
}

/// SDXL's base and refiner as diffusers' ensemble of expert denoisers (`denoising_end` /
/// `denoising_start`, one and two samples, an ancestral scheduler whose generators carry
/// over), and the refiner alone as img2img (scripts/reference/make_refiner_fixtures.py).
#[test]
fn refiner_matches_diffusers() {
    let report = assert_set_matches("parity_refiner");
    assert_eq!(report.images.len(), 5);
}

/// Inpainting as diffusers' StableDiffusion(XL)InpaintPipeline does it, SD 1.5 and SDXL,
/// with a 9-channel UNet and with an ordinary one (latents blended with the noised image
/// after each step): full strength, SDXL's default 0.9999 and below, a soft-edged mask
/// binarized at half, two samples (scripts/reference/make_inpaint_fixtures.py).
#[test]
fn inpainting_matches_diffusers() {
    let report = assert_set_matches("parity_inpaint");
    assert_eq!(report.images.len(), 13);
}

/// SD 3 / 3.5 (`tests/fixtures/parity_sd3/`, from `scripts/reference/make_sd3_fixtures.py`):
/// a tiny SD 3 Medium-like model and a 3.5 Medium-like one (MMDiT-X dual attention in two
/// layers, RMS q/k norms), each with and without its T5 encoder, txt2img and img2img; a
/// dynamically shifted scheduler, a non-square batch of two, skip-layer guidance, and
/// prompts past CLIP's 77 and T5's 256 tokens.
#[test]
fn sd3_matches_diffusers() {
    let report = assert_set_matches("parity_sd3");
    let root = fixtures();
    let manifest = parity::manifest(&root, "parity_sd3").unwrap();
    let models = parity::load_models(&root, &manifest, &Device::Cpu, DType::F32).unwrap();
    for (name, p) in &models.pipelines {
        assert_eq!(p.architecture().name(), "stable-diffusion-3", "{name}");
    }
    let cases = manifest["cases"].as_array().unwrap().len();
    let ids: std::collections::BTreeSet<&str> =
        report.images.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), cases, "every case ran");
}
