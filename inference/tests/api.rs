//! The engine's public API: typed parameter errors, cancellation, errors naming files and
//! tensors, thread-safety, per-image seeds.

use std::path::{Path, PathBuf};

use candle_core::Device;
use inference::engine::{EngineError, ErrorKind, GenerateParams, Pipeline, tiny};
use inference::parity::image_diff;

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
            scheduler: Some("No Such Sampler".into()),
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
            init_image: Some((img, 0.0)),
            ..small()
        },
        "strength",
    );
    // Karras sigmas asked for by name on a scheduler without them: refused.
    invalid(
        &p,
        GenerateParams {
            scheduler: Some("DDIM Karras".into()),
            ..small()
        },
        "scheduler",
    );
    // The `karras` option means "where the scheduler has them" (the contract's meaning):
    // DDIM runs as configured, the same image as without the option.
    let run = |karras| {
        let params = GenerateParams {
            scheduler: Some("DDIM".into()),
            karras,
            seed: 5,
            ..small()
        };
        p.generate(&params, &mut |_, _| true).unwrap().images[0]
            .0
            .clone()
    };
    assert_eq!(run(Some(true)), run(None));
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
    assert!(resolve("No Such Sampler").is_err());
    assert!(resolve("DDIM Karras").is_err());
}

#[test]
fn algorithm_type_is_its_own_option() {
    let (_d, p) = tiny_pipeline();
    let with = |scheduler: &str, algorithm: Option<&str>| GenerateParams {
        scheduler: Some(scheduler.into()),
        algorithm_type: algorithm.map(String::from),
        seed: 7,
        ..small()
    };
    let image = |params: GenerateParams| {
        p.generate(&params, &mut |_, _| true).unwrap().images[0]
            .0
            .clone()
    };
    // The class with the option over the config is the A1111 name that fixes it (the tiny
    // model's config leaves solver_order at its default, 2).
    let sde = image(with("DPMSolverMultistepScheduler", Some("sde-dpmsolver++")));
    assert_eq!(sde, image(with("DPM++ 2M SDE", None)));
    assert_ne!(sde, image(with("DPMSolverMultistepScheduler", None)));
    assert_eq!(sde, image(with("DPM++ 2M SDE", Some("sde-dpmsolver++"))));

    let msg = invalid(&p, with("DDIM", Some("dpmsolver++")), "algorithm_type");
    assert!(msg.contains("DDIMScheduler has no algorithm_type"), "{msg}");
    let msg = invalid(
        &p,
        with("DPMSolverMultistepScheduler", Some("x")),
        "algorithm_type",
    );
    assert!(msg.contains("sde-dpmsolver++"), "{msg}");
    let msg = invalid(
        &p,
        with("DPM++ 2M", Some("sde-dpmsolver++")),
        "algorithm_type",
    );
    assert!(msg.contains("does not agree"), "{msg}");
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

/// Where `int(steps x strength)` is zero, which diffusers refuses, the last step
/// runs: the same image as a strength that keeps exactly one step (which diffusers
/// accepts, and the parity fixtures cover).
#[test]
fn img2img_runs_at_least_one_step() {
    let (_tmp, p) = tiny_pipeline();
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 90])
    }));
    let run = |strength: f64| {
        let mut totals = Vec::new();
        let out = p
            .generate(
                &GenerateParams {
                    steps: 4,
                    seed: 3,
                    init_image: Some((img.clone(), strength)),
                    ..small()
                },
                &mut |_, total| {
                    totals.push(total);
                    true
                },
            )
            .unwrap();
        (out.images[0].0.clone(), totals)
    };
    let (low, low_steps) = run(0.1); // int(4 x 0.1) = 0
    let (one, one_steps) = run(0.3); // int(4 x 0.3) = 1
    assert_eq!(low_steps, vec![1]);
    assert_eq!(one_steps, vec![1]);
    assert_eq!(low, one);
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

/// A committed tiny diffusers model (`tests/fixtures/models/NAME`) copied to a temporary
/// folder that a test may edit.
fn fixture_model(name: &str) -> (tempfile::TempDir, PathBuf) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dst = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &dst);
            } else {
                std::fs::copy(e.path(), dst).unwrap();
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy(&src, &dir);
    (tmp, dir)
}

/// The architecture comes from the components and configs, whatever the pipeline class in
/// model_index.json is called.
#[test]
fn architecture_is_decided_from_the_components() {
    for (name, arch, class) in [
        ("tiny-sd15", "stable-diffusion-1", "StableDiffusionPipeline"),
        ("tiny-sd2", "stable-diffusion-2", "StableDiffusionPipeline"),
        (
            "tiny-sdxl",
            "stable-diffusion-xl",
            "StableDiffusionXLPipeline",
        ),
    ] {
        let (_tmp, dir) = fixture_model(name);
        let index = dir.join("model_index.json");
        for other in [
            "LatentConsistencyModelPipeline",
            "StableDiffusionImg2ImgPipeline",
            "SomeCommunityPipeline",
        ] {
            edit(&index, class, other);
            let p = Pipeline::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{e:#}"));
            let info = p.describe();
            assert_eq!(info.architecture, arch, "{name} as {other}");
            assert_eq!(info.pipeline_class, other);
            edit(&index, other, class);
        }
        let p = Pipeline::load(&dir, &Device::Cpu).unwrap();
        let out = p
            .generate(
                &GenerateParams {
                    scheduler: Some("Euler".into()),
                    ..small()
                },
                &mut |_, _| true,
            )
            .unwrap();
        assert_eq!(out.images[0].0.dimensions(), (64, 64));
        let info = p.describe();
        assert_eq!((info.default_width, info.vae_scale_factor), (64, 8));
        let sd = name != "tiny-sdxl";
        assert_eq!(info.default_guidance, if sd { 7.5 } else { 5.0 });
    }
}

#[test]
fn unsupported_layouts_are_named() {
    // A tokenizer without its text encoder (a refiner has neither).
    let (_tmp, dir) = fixture_model("tiny-sdxl");
    let index = dir.join("model_index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["text_encoder"] = serde_json::json!([null, null]);
    std::fs::write(&index, v.to_string()).unwrap();
    let err = load_error(&dir);
    assert!(err.contains("tokenizer and text_encoder together"), "{err}");
    std::fs::write(&index, text).unwrap();
    // A UNet that takes neither the latents nor latents + mask + masked image (inpainting:
    // 9 here) is refused.
    let cfg = dir.join("unet/config.json");
    edit(&cfg, "\"in_channels\": 4", "\"in_channels\": 7");
    let err = load_error(&dir);
    assert!(err.contains("unet") && err.contains("7"), "{err}");
    edit(&cfg, "\"in_channels\": 7", "\"in_channels\": 4");
    // Text-time conditioning without a second text encoder.
    let (_tmp2, sd) = fixture_model("tiny-sd15");
    edit(
        &sd.join("unet/config.json"),
        "\"addition_embed_type\": null",
        "\"addition_embed_type\": \"text_time\", \"addition_time_embed_dim_unused\": 1",
    );
    let err = load_error(&sd);
    assert!(err.contains("text_time"), "{err}");
}

/// diffusers' fp16 variant names (`*.fp16.safetensors`, sharded
/// `*.safetensors.index.fp16.json`): a missing shard or a mis-shaped tensor is an error that
/// names it.
#[test]
fn fp16_variant_errors_name_the_file_and_tensor() {
    let (_tmp, dir) = fixture_model("tiny-sdxl");
    let shard = dir.join("unet/diffusion_pytorch_model.fp16-00002-of-00005.safetensors");
    std::fs::rename(&shard, dir.join("unet/moved")).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("diffusion_pytorch_model.fp16-00002-of-00005.safetensors")
            && err.contains("diffusion_pytorch_model.safetensors.index.fp16.json"),
        "{err}"
    );
    std::fs::rename(dir.join("unet/moved"), &shard).unwrap();
    edit(
        &dir.join("text_encoder_2/config.json"),
        "\"projection_dim\": 32",
        "\"projection_dim\": 16",
    );
    let err = load_error(&dir);
    assert!(
        err.contains("text_projection.weight") && err.contains("model.fp16-0000"),
        "{err}"
    );
    // No weights at all: the message lists what was looked for.
    let (_tmp2, sd) = fixture_model("tiny-sd15");
    std::fs::remove_file(sd.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let err = load_error(&sd);
    assert!(
        err.contains("vae") && err.contains("diffusion_pytorch_model.fp16.safetensors"),
        "{err}"
    );
}

/// Half precision runs candle's generic ops (the GPU path) instead of the fused f32 CPU
/// kernels; on the CPU (f16: candle's CPU matmul has no bf16) it must give nearly the f32
/// images. The SDXL VAE stays in f32
/// (`force_upcast`), the SD one runs in the model dtype, as in diffusers.
#[test]
fn half_precision_path_matches_f32() {
    use candle_core::DType;
    for (name, dtype, vae) in [
        ("tiny-sd2", DType::F16, DType::F16),
        ("tiny-sdxl", DType::F16, DType::F32),
        ("tiny-sd15", DType::F16, DType::F16),
    ] {
        let (_tmp, dir) = fixture_model(name);
        let full = Pipeline::load(&dir, &Device::Cpu).unwrap();
        let half = Pipeline::load_with_dtype(&dir, &Device::Cpu, dtype).unwrap();
        assert_eq!(full.model_dtypes(), (DType::F32, DType::F32));
        assert_eq!(half.model_dtypes(), (dtype, vae), "{name}");
        let init = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])
        }));
        for params in [
            GenerateParams {
                scheduler: Some("Euler".into()),
                negative_prompt: Some("blurry".into()),
                ..small()
            },
            GenerateParams {
                scheduler: Some("DDIM".into()),
                init_image: Some((init, 0.6)),
                steps: 3,
                ..small()
            },
        ] {
            let a = full.generate(&params, &mut |_, _| true).unwrap();
            let b = half.generate(&params, &mut |_, _| true).unwrap();
            let (a, b) = (&a.images[0].0, &b.images[0].0);
            assert_eq!(a.dimensions(), b.dimensions());
            let (max, mean) = image_diff(a, b);
            println!("{name} {dtype:?}: max abs diff {max}, mean {mean:.3}");
            assert!(
                mean < 1.0 && max <= 12,
                "{name} {dtype:?}: max {max}, mean {mean}"
            );
        }
    }
}

/// `make-tiny-model --arch sd15 | sd2` folders load as their architecture and generate.
#[test]
fn tiny_sd_models_load_and_generate() {
    use inference::engine::tiny::{TinyArch, write_tiny_model_arch};
    for (arch, name, prediction) in [
        (TinyArch::Sd15, "stable-diffusion-1", "epsilon"),
        (TinyArch::Sd2, "stable-diffusion-2", "v_prediction"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tiny");
        write_tiny_model_arch(&dir, 0, arch).unwrap();
        let p = Pipeline::load(&dir, &Device::Cpu).unwrap();
        let info = p.describe();
        assert_eq!(info.architecture, name);
        assert_eq!(info.prediction_type, prediction);
        assert_eq!((info.default_width, info.default_height), (256, 256));
        let out = p
            .generate(
                &GenerateParams {
                    scheduler: Some("DDIM".into()),
                    negative_prompt: Some("ugly".into()),
                    ..small()
                },
                &mut |_, _| true,
            )
            .unwrap();
        assert_eq!(out.images[0].0.dimensions(), (64, 64));
    }
}

/// Runs `requests` as one batch and each alone; every request must get exactly its own
/// images (with its own seeds), whatever else shares the batch.
fn assert_batch_equals_alone(p: &Pipeline, requests: &[GenerateParams]) {
    let plans: Vec<_> = requests
        .iter()
        .map(|r| p.plan(r.clone()).unwrap())
        .collect();
    assert!(plans.windows(2).all(|w| w[0].key() == w[1].key()));
    let batched = p.run(&plans, &mut |_, _| true).unwrap();
    assert_eq!(batched.len(), requests.len());
    for (req, got) in requests.iter().zip(&batched) {
        let alone = p.generate(req, &mut |_, _| true).unwrap();
        assert_eq!(got.images.len(), req.samples);
        for ((img, seed), (want, want_seed)) in got.images.iter().zip(&alone.images) {
            assert_eq!(seed, want_seed);
            // Batching changes no arithmetic per image; allow one level for kernels that
            // block differently on a larger batch.
            assert_eq!(img.dimensions(), want.dimensions());
            let (d, _) = image_diff(img, want);
            assert!(
                d <= 1,
                "{:?} seed {seed}: differs by {d}/255 from alone",
                req.prompt
            );
        }
    }
    // And the requests really made different images.
    assert_ne!(batched[0].images[0].0, batched[1].images[0].0);
}

/// Requests with different prompts, negative prompts, seeds, guidance scales and sample
/// counts share one UNet batch and each get what they would get alone: SDXL with CFG and
/// an ancestral scheduler (noise drawn every step), SD 1.5 and an LCM UNet (guidance
/// embedding per request).
#[test]
fn batched_requests_each_get_their_own_images() {
    let (_tmp, p) = tiny_pipeline();
    let base = GenerateParams {
        scheduler: Some("Euler a".into()),
        ..small()
    };
    let requests = [
        GenerateParams {
            prompt: "a cat".into(),
            seed: 1,
            samples: 2,
            guidance: 5.0,
            ..base.clone()
        },
        GenerateParams {
            prompt: "a red dog on a hill".into(),
            negative_prompt: Some("blurry".into()),
            seed: 99,
            guidance: 9.0,
            ..base.clone()
        },
        GenerateParams {
            prompt: String::new(),
            seed: 5,
            guidance: 3.0,
            ..base.clone()
        },
    ];
    assert_batch_equals_alone(&p, &requests);

    // Image-to-image: different init images, same strength.
    let init = |c: u8| {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            80,
            48,
            image::Rgb([c, 90, 200 - c]),
        ))
    };
    let img2img: Vec<_> = [(10u8, 3u64), (180, 4)]
        .iter()
        .map(|&(c, seed)| GenerateParams {
            steps: 4,
            seed,
            init_image: Some((init(c), 0.5)),
            ..small()
        })
        .collect();
    assert_batch_equals_alone(&p, &img2img);

    for name in ["tiny-sd15", "tiny-lcm"] {
        let (_t, dir) = fixture_model(name);
        let p = Pipeline::load(&dir, &Device::Cpu).unwrap();
        let info = p.describe();
        let one = |prompt: &str, seed: u64, guidance: f64| GenerateParams {
            prompt: prompt.into(),
            seed,
            guidance,
            width: info.default_width.min(64),
            height: info.default_height.min(64),
            steps: 3,
            ..GenerateParams::default()
        };
        assert_batch_equals_alone(&p, &[one("a cat", 7, 7.5), one("a boat", 8, 4.0)]);
    }
}

/// Requests that would need different denoising loops are not batched together.
#[test]
fn incompatible_requests_have_different_batch_keys() {
    let (_tmp, p) = tiny_pipeline();
    let key = |params: GenerateParams| p.plan(params).unwrap().key().clone();
    let base = key(small());
    assert_eq!(
        base,
        key(GenerateParams {
            prompt: "other".into(),
            seed: 9,
            guidance: 8.0,
            samples: 3,
            ..small()
        })
    );
    assert_ne!(
        base,
        key(GenerateParams {
            width: 128,
            ..small()
        })
    );
    assert_ne!(
        base,
        key(GenerateParams {
            steps: 3,
            ..small()
        })
    );
    assert_ne!(
        base,
        key(GenerateParams {
            guidance: 1.0,
            ..small()
        })
    );
    assert_ne!(
        base,
        key(GenerateParams {
            scheduler: Some("DDIM".into()),
            ..small()
        })
    );
    let plans = [
        p.plan(small()).unwrap(),
        p.plan(GenerateParams {
            steps: 3,
            ..small()
        })
        .unwrap(),
    ];
    let err = p.run(&plans, &mut |_, _| true).unwrap_err();
    assert!(format!("{err}").contains("cannot share a batch"), "{err}");
    // Bad parameters are reported by plan, as by generate.
    let err = p
        .plan(GenerateParams {
            width: 65,
            ..small()
        })
        .unwrap_err();
    assert_eq!(ErrorKind::of(&err), ErrorKind::InvalidParam);
}

/// Add-ons that do not fit the model are refused as the parameter they came in, naming
/// the file and why; nothing is changed in the model.
#[test]
fn add_ons_that_do_not_fit_are_invalid_params() {
    use inference::engine::embeddings::Embedding;
    use inference::engine::lora::Lora;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let f = fixtures.join("parity_features");
    let sdxl = Pipeline::load(&fixtures.join("models/tiny-sdxl"), &Device::Cpu).unwrap();
    let refused = |r: anyhow::Result<Pipeline>, param: &str, says: &str| {
        let e = r.err().expect("refused");
        assert_eq!(ErrorKind::of(&e), ErrorKind::InvalidParam, "{e:#}");
        match e.downcast_ref::<EngineError>() {
            Some(EngineError::InvalidParam { param: p, message }) => {
                assert_eq!(*p, param);
                assert!(message.contains(says), "{message}");
            }
            other => panic!("{other:?}"),
        }
    };
    // An SD 1.5 LoRA: its text-encoder layers match SDXL's first encoder by name, its UNet
    // layers have other shapes.
    let sd15_lora = Lora::load(&f.join("lora-sd15-kohya.safetensors")).unwrap();
    refused(
        sdxl.with_loras(&[(&sd15_lora, 1.0)]),
        "loras",
        "does not fit this model",
    );
    // Vectors of a size no text encoder has; a token the vocabulary already has.
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, token: &str, dim: usize| {
        let path = tmp.path().join(name);
        let t =
            candle_core::Tensor::zeros((2, dim), candle_core::DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &std::collections::HashMap::from([(token.to_string(), t)]),
            &path,
        )
        .unwrap();
        Embedding::load(&path, None, None).unwrap()
    };
    let wide = write("wide.safetensors", "<wide>", 48);
    refused(
        sdxl.with_embeddings(&[&wide]),
        "embeddings",
        "fit none of this model's text encoders",
    );
    let known = write("known.safetensors", "a", 32);
    refused(
        sdxl.with_embeddings(&[&known]),
        "embeddings",
        "already in the",
    );
}

/// A mask needs an init image and an inpainting model; an inpainting model needs both.
#[test]
fn masks_and_inpainting_models_go_together() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let inpaint = Pipeline::load(&fixtures.join("models/tiny-sd15-inpaint"), &Device::Cpu).unwrap();
    let plain = Pipeline::load(&fixtures.join("models/tiny-sd15"), &Device::Cpu).unwrap();
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::new(64, 64));
    let base = GenerateParams {
        width: 64,
        height: 64,
        steps: 2,
        ..GenerateParams::default()
    };
    let refusal = |p: &Pipeline, params: GenerateParams| {
        let e = p.plan(params).expect_err("refused");
        assert_eq!(ErrorKind::of(&e), ErrorKind::InvalidParam);
        e.to_string()
    };
    let with_mask = GenerateParams {
        mask: Some(image.clone()),
        ..base.clone()
    };
    assert!(refusal(&inpaint, with_mask.clone()).contains("needs an init image"));
    let both = GenerateParams {
        init_image: Some((image.clone(), 1.0)),
        ..with_mask
    };
    // An ordinary model inpaints by blending its latents with the image's.
    assert!(plain.plan(both.clone()).is_ok());
    assert!(inpaint.plan(both).is_ok());
    assert!(refusal(&inpaint, base).contains("send an init image and a mask"));
}

/// A loaded model keeps its tensors, not its memory-mapped weight files (whose pages would
/// otherwise stay in the server's resident memory); LoRAs still merge afterwards.
#[cfg(target_os = "linux")]
#[test]
fn a_loaded_model_does_not_keep_its_files_mapped() {
    use inference::engine::lora::Lora;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (_tmp, dir) = fixture_model("tiny-sd15");
    let p = Pipeline::load(&dir, &Device::Cpu).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let folder = dir.to_str().unwrap();
    assert!(
        !maps.lines().any(|l| l.contains(folder)),
        "{folder} is still mapped"
    );
    let lora = Lora::load(&fixtures.join("parity_features/lora-sd15-kohya.safetensors")).unwrap();
    p.with_loras(&[(&lora, 1.0)]).unwrap();
}
