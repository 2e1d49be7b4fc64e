//! Pipeline-level scheduler parity with diffusers: txt2img and img2img with every scheduler name
//! the engine accepts (and Karras / SDE / several-image variants) on the tiny SDXL model must
//! reproduce diffusers' images within 2/255 per pixel.
//!
//! References in `tests/fixtures/scheduler_parity/` come from
//! `scripts/reference/make_scheduler_parity_fixtures.py` (diffusers'
//! `Class.from_config(pipe.scheduler.config, **overrides)` for the name,
//! `torch.Generator("cpu").manual_seed(seed + i)` per image). Run in release:
//! `cargo test --release -p inference --test scheduler_parity`.

use std::path::{Path, PathBuf};

use candle_core::Device;
use inference::engine::{Pipeline, tiny};
use serde_json::Value;

mod common;
use common::params_of;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scheduler_parity")
}

#[test]
fn scheduler_images_match_diffusers() {
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
        let params = params_of(case, &dir, 32);
        let out = match pipeline.generate(&params, &mut |_, _| true) {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{id}: {e:#}"));
                continue;
            }
        };
        let expected = case["expected"].as_array().unwrap();
        assert_eq!(out.images.len(), expected.len(), "{id}: image count");
        for (i, ((img, _), name)) in out.images.iter().zip(expected).enumerate() {
            let want = image::open(dir.join(name.as_str().unwrap()))
                .unwrap()
                .to_rgb8();
            assert_eq!(want.dimensions(), img.dimensions(), "{id}: size");
            let (mut max, mut sum) = (0, 0u64);
            for (a, b) in want.as_raw().iter().zip(img.as_raw()) {
                let d = (*a as i32 - *b as i32).abs();
                max = max.max(d);
                sum += d as u64;
            }
            let mean = sum as f64 / want.as_raw().len() as f64;
            println!(
                "{id}[{i}] ({}): max abs diff {max}, mean {mean:.5}",
                out.scheduler
            );
            if max > tolerance {
                failures.push(format!("{id}[{i}]: max abs diff {max} > {tolerance}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "scheduler parity failures:\n{}",
        failures.join("\n")
    );
}
