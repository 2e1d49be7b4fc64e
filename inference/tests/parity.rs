//! Parity with diffusers: the engine must reproduce diffusers' images for the tiny model
//! within 2/255 per pixel.
//!
//! The references in `tests/fixtures/parity/` come from
//! `scripts/reference/make_parity_fixtures.py` (diffusers with
//! `torch.Generator("cpu").manual_seed(seed + i)` per image). This test writes the same tiny
//! model (`make-tiny-model`, seed from cases.json) into a temporary folder, runs every case and
//! compares. Run in release: `cargo test --release -p inference --test parity`.

use std::path::{Path, PathBuf};

use candle_core::Device;
use inference::engine::{GenerateParams, Pipeline, tiny};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn params_of(case: &Value, dir: &Path) -> GenerateParams {
    let s = |k: &str| case.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let u = |k: &str, d: u64| case.get(k).and_then(|v| v.as_u64()).unwrap_or(d);
    let init_image = s("init_image").map(|name| {
        let img = image::open(dir.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        (img, case["strength"].as_f64().expect("strength"))
    });
    GenerateParams {
        prompt: s("prompt").expect("prompt"),
        negative_prompt: s("negative_prompt"),
        width: u("width", 64) as usize,
        height: u("height", 64) as usize,
        steps: u("steps", 4) as usize,
        guidance: case["guidance"].as_f64().expect("guidance"),
        seed: u("seed", 0),
        samples: u("samples", 1) as usize,
        scheduler: s("scheduler"),
        karras: case.get("karras").and_then(|v| v.as_bool()),
        init_image,
    }
}

#[test]
fn images_match_diffusers() {
    let dir = fixtures();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let tolerance = manifest["max_abs_diff"].as_u64().unwrap_or(2) as i32;
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    tiny::write_tiny_model(&model, manifest["tiny_model_seed"].as_u64().unwrap()).unwrap();
    let pipeline = Pipeline::load(&model, &Device::Cpu).unwrap();

    let mut failures = Vec::new();
    for case in manifest["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let params = params_of(case, &dir);
        let out = pipeline
            .generate(&params, &mut |_, _| true)
            .unwrap_or_else(|e| panic!("{id}: {e:#}"));
        let expected = case["expected"].as_array().unwrap();
        assert_eq!(out.images.len(), expected.len(), "{id}: image count");
        for (i, ((img, seed), name)) in out.images.iter().zip(expected).enumerate() {
            assert_eq!(*seed, params.seed + i as u64, "{id}: seed of image {i}");
            let want = image::open(dir.join(name.as_str().unwrap()))
                .unwrap()
                .to_rgb8();
            assert_eq!(want.dimensions(), img.dimensions(), "{id}: size");
            let mut max = 0;
            let mut sum = 0u64;
            let mut over = 0usize;
            for (a, b) in want.as_raw().iter().zip(img.as_raw()) {
                let d = (*a as i32 - *b as i32).abs();
                max = max.max(d);
                sum += d as u64;
                if d > tolerance {
                    over += 1;
                }
            }
            let mean = sum as f64 / want.as_raw().len() as f64;
            println!("{id}[{i}]: max abs diff {max}, mean {mean:.5}, over tolerance {over}");
            if max > tolerance {
                failures.push(format!("{id}[{i}]: max abs diff {max} > {tolerance}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}
