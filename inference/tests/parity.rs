//! Parity with diffusers: the engine must reproduce diffusers' images within 2/255 per pixel.
//!
//! Two sets of fixtures:
//! * `tests/fixtures/parity/` (`images_match_diffusers`): the SDXL tiny model that the engine
//!   writes itself (`make-tiny-model`, seed from cases.json; regenerated here in a temporary
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

use candle_core::Device;
use inference::engine::{Pipeline, tiny};
use serde_json::Value;

mod common;
use common::params_of;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs one case and compares its images with the references in `dir`; returns the largest
/// per-pixel difference of its images and appends failures.
fn check_case(
    pipeline: &Pipeline,
    case: &Value,
    dir: &Path,
    tolerance: i32,
    failures: &mut Vec<String>,
) -> i32 {
    let id = case["id"].as_str().unwrap();
    let params = params_of(case, dir, 64);
    let out = pipeline
        .generate(&params, &mut |_, _| true)
        .unwrap_or_else(|e| panic!("{id}: {e:#}"));
    let expected = case["expected"].as_array().unwrap();
    assert_eq!(out.images.len(), expected.len(), "{id}: image count");
    let mut worst = 0;
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
        worst = worst.max(max);
    }
    worst
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap()
}

#[test]
fn images_match_diffusers() {
    let dir = fixtures().join("parity");
    let manifest = manifest(&dir);
    let tolerance = manifest["max_abs_diff"].as_u64().unwrap_or(2) as i32;
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    tiny::write_tiny_model(&model, manifest["tiny_model_seed"].as_u64().unwrap()).unwrap();
    let pipeline = Pipeline::load(&model, &Device::Cpu).unwrap();

    let mut failures = Vec::new();
    for case in manifest["cases"].as_array().unwrap() {
        check_case(&pipeline, case, &dir, tolerance, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn architectures_match_diffusers() {
    let root = fixtures();
    let dir = root.join("parity_arch");
    let manifest = manifest(&dir);
    let tolerance = manifest["max_abs_diff"].as_u64().unwrap_or(2) as i32;
    let mut pipelines = BTreeMap::new();
    for (name, path) in manifest["models"].as_object().unwrap() {
        let p = Pipeline::load(&root.join(path.as_str().unwrap()), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        pipelines.insert(name.clone(), p);
    }
    // Variants: a model folder with another scheduler_config.json (SDXL-Turbo).
    let tmp = tempfile::tempdir().unwrap();
    if let Some(variants) = manifest.get("variants").and_then(|v| v.as_object()) {
        for (name, v) in variants {
            let dir = tmp.path().join(name);
            copy_dir(&root.join(v["base"].as_str().unwrap()), &dir);
            let text = serde_json::to_string_pretty(&v["scheduler_config"]).unwrap();
            std::fs::write(dir.join("scheduler/scheduler_config.json"), text).unwrap();
            let p = Pipeline::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            pipelines.insert(name.clone(), p);
        }
    }
    // The architectures the engine recognises (from the folders' components and configs).
    for (name, arch) in [
        ("tiny-sd15", "stable-diffusion-1"),
        ("tiny-sd2", "stable-diffusion-2"),
        ("tiny-sdxl", "stable-diffusion-xl"),
        ("tiny-lcm", "stable-diffusion-1"),
        ("tiny-sdxl-turbo", "stable-diffusion-xl"),
    ] {
        assert_eq!(pipelines[name].describe().architecture, arch, "{name}");
    }
    assert!(pipelines["tiny-lcm"].describe().uses_cfg_embedding);
    let mut failures = Vec::new();
    // model -> scheduler -> kind -> worst difference
    let mut table: BTreeMap<String, BTreeMap<String, i32>> = BTreeMap::new();
    for case in manifest["cases"].as_array().unwrap() {
        let model = case["model"].as_str().unwrap();
        let worst = check_case(&pipelines[model], case, &dir, tolerance, &mut failures);
        let kind = if case.get("init_image").is_some() {
            "img2img"
        } else {
            "txt2img"
        };
        let sched = case["scheduler"].as_str().unwrap_or("(default)");
        let cell = table
            .entry(model.to_string())
            .or_default()
            .entry(format!("{sched} {kind}"))
            .or_insert(0);
        *cell = (*cell).max(worst);
    }
    for (model, row) in &table {
        for (what, worst) in row {
            println!("{model:10} {what:24} max abs diff {worst}");
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}
