//! The engine's public API: typed parameter errors, cancellation, errors naming files and
//! tensors, thread-safety, per-image seeds.

use std::path::{Path, PathBuf};

use candle_core::Device;
use inference::engine::{EngineError, ErrorKind, GenerateParams, Pipeline, tiny};

/// The tiny model written to a temporary folder (deleted when the guard drops).
fn tiny_model() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    tiny::write_tiny_model(&dir, 0).unwrap();
    (tmp, dir)
}

fn tiny_pipeline() -> (tempfile::TempDir, Pipeline) {
    let (tmp, dir) = tiny_model();
    let p = Pipeline::load(&dir, &Device::Cpu).unwrap();
    (tmp, p)
}

/// The error (with its context chain) of loading the model in `dir`, which must fail.
fn load_error(dir: &Path) -> String {
    format!("{:#}", Pipeline::load(dir, &Device::Cpu).err().unwrap())
}

/// Replaces `from` with `to` in the file at `path`; returns the original text.
fn edit(path: &Path, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, text.replace(from, to)).unwrap();
    text
}

fn small() -> GenerateParams {
    GenerateParams {
        prompt: "a cat".into(),
        width: 64,
        height: 64,
        steps: 2,
        ..GenerateParams::default()
    }
}

fn invalid(p: &Pipeline, params: GenerateParams, param: &str) -> String {
    let err = p
        .generate(&params, &mut |_, _| true)
        .expect_err("should fail");
    assert_eq!(ErrorKind::of(&err), ErrorKind::InvalidParam, "{err:#}");
    match err.downcast_ref::<EngineError>() {
        Some(EngineError::InvalidParam { param: got, .. }) => assert_eq!(*got, param),
        other => panic!("unexpected {other:?}"),
    }
    format!("{err}")
}

#[test]
fn pipeline_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Pipeline>();
}

#[test]
fn bad_parameters_are_typed_errors() {
    let (_tmp, p) = tiny_pipeline();
    let msg = invalid(
        &p,
        GenerateParams {
            scheduler: Some("PLMS".into()),
            ..small()
        },
        "scheduler",
    );
    assert!(msg.contains("Euler a") && msg.contains("DDIM"), "{msg}");
    invalid(
        &p,
        GenerateParams {
            width: 60,
            ..small()
        },
        "width",
    );
    invalid(
        &p,
        GenerateParams {
            height: 0,
            ..small()
        },
        "height",
    );
    invalid(
        &p,
        GenerateParams {
            steps: 0,
            ..small()
        },
        "steps",
    );
    invalid(
        &p,
        GenerateParams {
            samples: 0,
            ..small()
        },
        "samples",
    );
    invalid(
        &p,
        GenerateParams {
            guidance: f64::NAN,
            ..small()
        },
        "guidance",
    );
    let img = image::DynamicImage::new_rgb8(64, 64);
    invalid(
        &p,
        GenerateParams {
            init_image: Some((img.clone(), 1.5)),
            ..small()
        },
        "strength",
    );
    invalid(
        &p,
        GenerateParams {
            init_image: Some((img, 0.1)),
            ..small()
        },
        "strength",
    );
    invalid(
        &p,
        GenerateParams {
            scheduler: Some("DDIM".into()),
            karras: Some(true),
            ..small()
        },
        "karras",
    );
}

#[test]
fn scheduler_names() {
    use inference::engine::scheduler::{SchedulerKind, resolve};
    for (name, kind, karras) in [
        ("Euler", SchedulerKind::EulerDiscrete, None),
        ("EulerDiscreteScheduler", SchedulerKind::EulerDiscrete, None),
        ("euler karras", SchedulerKind::EulerDiscrete, Some(true)),
        ("Euler a", SchedulerKind::EulerAncestralDiscrete, None),
        (
            "k_euler_ancestral",
            SchedulerKind::EulerAncestralDiscrete,
            None,
        ),
        (
            "EulerAncestralDiscreteScheduler",
            SchedulerKind::EulerAncestralDiscrete,
            None,
        ),
        ("DDIM", SchedulerKind::Ddim, None),
        ("DDIMScheduler", SchedulerKind::Ddim, None),
    ] {
        assert_eq!(resolve(name).unwrap(), (kind, karras), "{name}");
    }
    assert!(resolve("DPM++ 2M").is_err());
    assert!(resolve("DDIM Karras").is_err());
}

#[test]
fn cancellation_is_distinguishable() {
    let (_tmp, p) = tiny_pipeline();
    let mut calls = Vec::new();
    let err = p
        .generate(
            &GenerateParams {
                steps: 3,
                ..small()
            },
            &mut |s, t| {
                calls.push((s, t));
                s < 2
            },
        )
        .expect_err("cancelled");
    assert_eq!(ErrorKind::of(&err), ErrorKind::Cancelled);
    assert_eq!(calls, vec![(1, 3), (2, 3)]);
}

#[test]
fn each_image_reproduces_alone() {
    let (_tmp, p) = tiny_pipeline();
    let both = p
        .generate(
            &GenerateParams {
                samples: 2,
                seed: 5,
                ..small()
            },
            &mut |_, _| true,
        )
        .unwrap();
    let second = p
        .generate(&GenerateParams { seed: 6, ..small() }, &mut |_, _| true)
        .unwrap();
    assert_eq!(both.images[1].1, 6);
    let (a, b) = (both.images[1].0.as_raw(), second.images[0].0.as_raw());
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as i32 - *y as i32).abs())
        .max()
        .unwrap();
    assert!(
        max <= 1,
        "image 1 of a batch differs from the same seed alone by {max}"
    );
}

#[test]
fn load_errors_name_the_file_and_tensor() {
    let (_tmp, dir) = tiny_model();
    // A missing weights file.
    let vae = dir.join("vae/diffusion_pytorch_model.safetensors");
    std::fs::rename(&vae, dir.join("vae/moved.safetensors")).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("vae") && err.contains("diffusion_pytorch_model.safetensors"),
        "{err}"
    );
    std::fs::rename(dir.join("vae/moved.safetensors"), &vae).unwrap();
    // A config that no longer fits the weights: the error names the tensor and the file.
    let cfg_path = dir.join("unet/config.json");
    let cfg = edit(
        &cfg_path,
        "\"cross_attention_dim\": 64",
        "\"cross_attention_dim\": 48",
    );
    let err = load_error(&dir);
    assert!(
        err.contains("cross_attention_dim") || err.contains("attn2.to_k.weight"),
        "{err}"
    );
    std::fs::write(&cfg_path, &cfg).unwrap();
    // A mis-shaped tensor.
    edit(
        &dir.join("text_encoder/config.json"),
        "\"intermediate_size\": 37",
        "\"intermediate_size\": 38",
    );
    let err = load_error(&dir);
    assert!(
        err.contains("fc1.weight") && err.contains("model.safetensors"),
        "{err}"
    );
}

/// transformers 5 saves a bare `CLIPTextModel` without the `text_model.` prefix of the hub
/// checkpoints; both load to the same model.
#[test]
fn text_encoder_without_prefix_loads() {
    let (_tmp, dir) = tiny_model();
    let before = Pipeline::load(&dir, &Device::Cpu)
        .unwrap()
        .generate(&small(), &mut |_, _| true)
        .unwrap();
    let file = dir.join("text_encoder/model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let renamed: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("text_model.").to_string(), v))
        .collect();
    assert!(renamed.contains_key("embeddings.token_embedding.weight"));
    candle_core::safetensors::save(&renamed, &file).unwrap();
    let after = Pipeline::load(&dir, &Device::Cpu)
        .unwrap()
        .generate(&small(), &mut |_, _| true)
        .unwrap();
    assert_eq!(before.images[0].0.as_raw(), after.images[0].0.as_raw());
}

/// Concurrent requests, and a request issued from inside a rayon worker, give the same
/// images as sequential ones (and do not deadlock).
#[test]
fn concurrent_and_nested_generation() {
    let (_tmp, p) = tiny_pipeline();
    let a = GenerateParams {
        seed: 21,
        ..small()
    };
    let b = GenerateParams {
        seed: 22,
        scheduler: Some("Euler a".into()),
        ..small()
    };
    let want_a = p.generate(&a, &mut |_, _| true).unwrap().images[0]
        .0
        .clone();
    let want_b = p.generate(&b, &mut |_, _| true).unwrap().images[0]
        .0
        .clone();
    std::thread::scope(|s| {
        let ha = s.spawn(|| p.generate(&a, &mut |_, _| true).unwrap());
        let hb = s.spawn(|| p.generate(&b, &mut |_, _| true).unwrap());
        assert_eq!(ha.join().unwrap().images[0].0, want_a);
        assert_eq!(hb.join().unwrap().images[0].0, want_b);
    });
    let (ra, rb) = rayon::join(
        || p.generate(&a, &mut |_, _| true).unwrap(),
        || p.generate(&b, &mut |_, _| true).unwrap(),
    );
    assert_eq!(ra.images[0].0, want_a);
    assert_eq!(rb.images[0].0, want_b);
}
