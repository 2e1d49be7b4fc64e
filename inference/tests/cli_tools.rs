//! `inference bench`, `inference parity` and `inference generate`, as scripts/gpu-check,
//! scripts/bench-engine and users call them: the JSON they write is what those scripts read.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn inference(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_inference"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inference {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn bench_reports_every_measurement() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    inference(&["make-tiny-model", model.to_str().unwrap()]);
    let json = tmp.path().join("bench.json");
    let save = tmp.path().join("images");
    let out = inference(&[
        "bench",
        "--device",
        "cpu",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a lighthouse at dusk",
        "--width",
        "64",
        "--height",
        "48",
        "--steps",
        "2",
        "--guidance",
        "5",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--batches",
        "1,2",
        "--unet-steps",
        "1",
        "--save",
        save.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let v = read_json(&json);
    assert_eq!(v["engine"], "ours");
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["dtype"], "f32");
    assert_eq!(v["vae_dtype"], "f32");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(64), Some(48))
    );
    assert_eq!(v["scheduler"], "EulerDiscreteScheduler");
    assert!(v["load_s"].as_f64().unwrap() > 0.0);
    let rows = v["pipeline"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, batch) in rows.iter().zip([1u64, 2]) {
        assert_eq!(row["batch"].as_u64(), Some(batch));
        assert_eq!(row["runs_s"].as_array().unwrap().len(), 2);
        let median = row["median_s"].as_f64().unwrap();
        let ips = row["images_per_s"].as_f64().unwrap();
        assert!((ips - batch as f64 / median).abs() < 1e-9);
        assert!(row["denoise_median_s"].as_f64().unwrap() <= median);
    }
    // CFG: the UNet step runs the unconditional and conditional rows together.
    assert_eq!(v["unet_step"]["batch"].as_u64(), Some(2));
    assert_eq!(v["unet_step"]["runs_s"].as_array().unwrap().len(), 1);
    // The batch-1 image, the same as `generate` makes for the same settings.
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    let benched = image::open(images[0].as_str().unwrap()).unwrap().to_rgb8();
    let generated = tmp.path().join("g.png");
    inference(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a lighthouse at dusk",
        "--width",
        "64",
        "--height",
        "48",
        "--steps",
        "2",
        "--guidance",
        "5",
        "--seed",
        "42",
        "--out",
        generated.to_str().unwrap(),
    ]);
    let generated = image::open(&generated).unwrap().to_rgb8();
    assert_eq!(inference::parity::image_diff(&benched, &generated).0, 0);
    // One JSON line per measurement on stdout, for scripts/bench-engine.
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let whats: Vec<&str> = lines.iter().map(|l| l["what"].as_str().unwrap()).collect();
    assert_eq!(
        whats,
        [
            "load",
            "txt2img_64x48_2steps_b1",
            "txt2img_64x48_2steps_b2",
            "unet_step_b2_6x8"
        ]
    );
}

#[test]
fn parity_runs_the_fixtures_and_judges_f32_only() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let json = tmp.path().join("parity.json");
    let run = |dtype: &str| {
        inference(&[
            "parity",
            "--fixtures",
            fixtures.to_str().unwrap(),
            "--device",
            "cpu",
            "--dtype",
            dtype,
            "--sets",
            "parity",
            "--json",
            json.to_str().unwrap(),
        ]);
        read_json(&json)
    };
    let v = run("f32");
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["dtype"], "f32");
    assert_eq!(v["passed"], true);
    assert_eq!(v["tolerance"].as_i64(), Some(2));
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 27);
    assert!(v["worst"].as_i64().unwrap() <= 2);
    // Half precision is reported, not held to the f32 tolerance.
    let v = run("f16");
    assert_eq!(v["dtype"], "f16");
    assert_eq!(v["passed"], true);
    assert_eq!(v["cases"].as_array().unwrap().len(), 27);
}

/// `generate` on a fixture model with the parity_features cases' settings (64x64, 4 Euler
/// steps, seed 3), writing `out`.
fn generate_args(model: &Path, out: &Path) -> Vec<String> {
    let (model, out) = (model.to_str().unwrap(), out.to_str().unwrap());
    [
        "generate",
        "--model",
        model,
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "4",
        "--seed",
        "3",
        "--scheduler",
        "Euler",
        "--out",
        out,
    ]
    .map(String::from)
    .to_vec()
}

/// A long prompt with A1111 weights (as make_feature_fixtures.py writes it).
const LONG_WEIGHTED: &str = "a (very detailed:1.2) oil painting of a lighthouse, [rocky] coast at ((dusk)), a (very detailed:1.2) oil painting of a lighthouse, [rocky] coast at ((dusk)), a (very detailed:1.2) oil painting of a lighthouse, [rocky] coast at ((dusk)), a (very detailed:1.2) oil painting of a lighthouse, [rocky] coast at ((dusk)), a (very detailed:1.2) oil painting of a lighthouse, [rocky] coast at ((dusk))";

/// `generate` with LoRAs (both file forms, one negative), a VAE, `--clip-skip`,
/// `--prompt-2` and textual-inversion embeddings (each file form) gives diffusers' images
/// (the parity_features references).
#[test]
fn generate_takes_loras_a_vae_embeddings_and_second_prompts() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let f = fixtures.join("parity_features");
    let tmp = tempfile::tempdir().unwrap();
    let p = |path: &Path| path.to_str().unwrap().to_string();
    let runs = [
        (
            "tiny-sd15",
            vec![
                "--guidance".into(),
                "7.5".into(),
                "--lora".into(),
                format!("{}:0.7", p(&f.join("lora-sd15-peft.safetensors"))),
                "--lora".into(),
                format!("{}:-0.5", p(&f.join("lora-sd15-kohya.safetensors"))),
                "--init-image".into(),
                p(&f.join("init_64.png")),
                "--strength".into(),
                "0.7".into(),
            ],
            "sd15_lora_both_i2i_0.png",
        ),
        (
            "tiny-sdxl",
            vec![
                "--guidance".into(),
                "5".into(),
                "--lora".into(),
                format!("{}:0.8", p(&f.join("lora-sdxl-kohya.safetensors"))),
                "--vae".into(),
                p(&f.join("vae-sdxl")),
                "--clip-skip".into(),
                "1".into(),
                "--prompt-2".into(),
                "an oil painting of a lighthouse".into(),
            ],
            "sdxl_everything_0.png",
        ),
        (
            "tiny-sd15",
            vec![
                "--guidance".into(),
                "7.5".into(),
                "--embeddings".into(),
                p(&f.join("ti-sd15-diffusers.safetensors")),
                "--embeddings".into(),
                format!("{}=<style>", p(&f.join("ti-sd15-a1111.safetensors"))),
                "--embeddings".into(),
                p(&f.join("ti-sd15-a1111.pt")),
                "--prompt".into(),
                "a photo of <cat-toy> in <style> style, <pt-style>".into(),
                "--negative-prompt".into(),
                "blurry, <style>".into(),
            ],
            "sd15_embeddings_0.png",
        ),
        (
            "tiny-sd2",
            vec![
                "--guidance".into(),
                "7.5".into(),
                "--emphasis".into(),
                "a1111".into(),
                "--prompt".into(),
                LONG_WEIGHTED.into(),
                "--negative-prompt".into(),
                "(ugly:0.5)".into(),
                "--init-image".into(),
                p(&f.join("init_64.png")),
                "--strength".into(),
                "0.75".into(),
            ],
            "sd2_emphasis_long_i2i_0.png",
        ),
    ];
    for (model, extra, reference) in runs {
        let out = tmp.path().join(reference);
        let mut args = generate_args(&fixtures.join("models").join(model), &out);
        if !extra.iter().any(|a| a == "--prompt") {
            args.extend(
                [
                    "--prompt",
                    "a photo of a cat",
                    "--negative-prompt",
                    "blurry, low quality",
                ]
                .map(String::from),
            );
        }
        args.extend(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        inference(&refs);
        let got = image::open(&out).unwrap().to_rgb8();
        let want = image::open(f.join(reference)).unwrap().to_rgb8();
        let (max, _) = inference::parity::image_diff(&want, &got);
        assert!(max <= 2, "{reference}: {max}");
    }
}

/// `generate --safety-checker`: an image the checker flags (the tiny checker flags this
/// reference, as diffusers does) is replaced; one it passes is left as it is.
#[test]
fn generate_runs_the_safety_checker() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let f = fixtures.join("parity_features");
    let tmp = tempfile::tempdir().unwrap();
    let p = |path: &Path| path.to_str().unwrap().to_string();
    let checker = p(&fixtures.join("safety_checker"));
    let run = |model: &str, prompt: &str, negative: &str, extra: &[&str], out: &Path| {
        let mut args = generate_args(&fixtures.join("models").join(model), out);
        for a in [
            "--prompt",
            prompt,
            "--negative-prompt",
            negative,
            "--guidance",
            "7.5",
        ] {
            args.push(a.into());
        }
        args.extend(["--safety-checker".to_string(), checker.clone()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        String::from_utf8(inference(&refs).stdout).unwrap()
    };
    let flagged = tmp.path().join("flagged.png");
    let init = p(&f.join("init_64.png"));
    let said = run(
        "tiny-sd2",
        LONG_WEIGHTED,
        "(ugly:0.5)",
        &[
            "--emphasis",
            "a1111",
            "--init-image",
            &init,
            "--strength",
            "0.75",
        ],
        &flagged,
    );
    assert!(said.contains("flagged, replaced"), "{said}");
    let img = image::open(&flagged).unwrap().to_rgb8();
    assert!(
        img.pixels().all(|p| p.0 == [0, 0, 0]),
        "replaced with black"
    );
    let passed = tmp.path().join("passed.png");
    let said = run(
        "tiny-sd15",
        "a photo of a cat",
        "blurry, low quality",
        &["--clip-skip", "1"],
        &passed,
    );
    assert!(said.contains("passed"), "{said}");
    let got = image::open(&passed).unwrap().to_rgb8();
    let want = image::open(f.join("sd15_clip_skip_1_0.png"))
        .unwrap()
        .to_rgb8();
    assert!(inference::parity::image_diff(&want, &got).0 <= 2);
}

/// `generate --refiner`: SDXL's ensemble of base and refiner gives diffusers' image.
#[test]
fn generate_runs_the_refiner_after_the_base() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("refined.png");
    let mut args = generate_args(&fixtures.join("models/tiny-sdxl"), &out);
    let steps = args.iter().position(|a| a == "--steps").unwrap() + 1;
    args[steps] = "6".into();
    let refiner = fixtures.join("models/tiny-sdxl-refiner");
    for a in [
        "--prompt",
        "a photo of a cat",
        "--negative-prompt",
        "blurry, low quality",
        "--guidance",
        "5",
        "--refiner",
        refiner.to_str().unwrap(),
        "--refiner-start",
        "0.8",
    ] {
        args.push(a.into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    inference(&refs);
    let got = image::open(&out).unwrap().to_rgb8();
    let want = image::open(fixtures.join("parity_refiner/ensemble_euler_0.png"))
        .unwrap()
        .to_rgb8();
    assert!(inference::parity::image_diff(&want, &got).0 <= 2);
}

/// `generate --mask` on an inpainting model gives diffusers' inpainted image.
#[test]
fn generate_inpaints_with_a_mask() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let set = fixtures.join("parity_inpaint");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("inpainted.png");
    let mut args = generate_args(&fixtures.join("models/tiny-sd15-inpaint"), &out);
    let seed = args.iter().position(|a| a == "--seed").unwrap() + 1;
    args[seed] = "5".into();
    let (init, mask) = (set.join("init_64.png"), set.join("mask_64.png"));
    for a in [
        "--prompt",
        "a photo of a cat",
        "--negative-prompt",
        "blurry, low quality",
        "--guidance",
        "7.5",
        "--init-image",
        init.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "--strength",
        "1",
    ] {
        args.push(a.into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    inference(&refs);
    let got = image::open(&out).unwrap().to_rgb8();
    let want = image::open(set.join("inpaint_full_euler_0.png"))
        .unwrap()
        .to_rgb8();
    assert!(inference::parity::image_diff(&want, &got).0 <= 2);
}

/// `generate --controlnet DIR --control-image PHOTO --preprocess canny|depth`: the photo's
/// Canny edges, or its depth map, guide the tiny SD 1.5 model as diffusers' ControlNet
/// pipeline (the references of make_controlnet_fixtures.py); two ControlNets at their
/// scales as well.
#[test]
fn generate_takes_controlnets() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let set = fixtures.join("parity_controlnet");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("controlled.png");
    let net = fixtures.join("models/tiny-controlnet-sd15");
    let mut args = generate_args(&fixtures.join("models/tiny-sd15"), &out);
    let seed = args.iter().position(|a| a == "--seed").unwrap() + 1;
    args[seed] = "5".into();
    for a in [
        "--prompt",
        "a photo of a cat",
        "--negative-prompt",
        "blurry, low quality",
        "--guidance",
        "7.5",
    ] {
        args.push(a.into());
    }
    let photo = set.join("init_64.png");
    run_with(
        &args,
        &[
            "--controlnet",
            net.to_str().unwrap(),
            "--control-image",
            photo.to_str().unwrap(),
            "--preprocess",
            "canny",
        ],
    );
    let got = image::open(&out).unwrap().to_rgb8();
    let want = image::open(set.join("sd15_cn_canny_0.png"))
        .unwrap()
        .to_rgb8();
    assert!(inference::parity::image_diff(&want, &got).0 <= 2);

    // The photo's depth map (a tiny Depth Anything) as the control image.
    let depth_model = fixtures.join("models/tiny-depth-anything");
    run_with(
        &args,
        &[
            "--controlnet",
            net.to_str().unwrap(),
            "--control-image",
            photo.to_str().unwrap(),
            "--preprocess",
            "depth",
            "--depth-model",
            depth_model.to_str().unwrap(),
        ],
    );
    let got = image::open(&out).unwrap().to_rgb8();
    let want = image::open(set.join("sd15_cn_depth_0.png"))
        .unwrap()
        .to_rgb8();
    assert!(inference::parity::image_diff(&want, &got).0 <= 2);

    // Two, each with its image and scale: the same window for both here (diffusers'
    // sd15_two_cn gives the second one half the schedule), so only that it runs and
    // differs from one ControlNet alone.
    let second = fixtures.join("models/tiny-controlnet-sd15-b");
    let edges = set.join("canny_init_64.png");
    let control = set.join("control_64.png");
    run_with(
        &args,
        &[
            "--controlnet",
            net.to_str().unwrap(),
            "--control-image",
            control.to_str().unwrap(),
            "--controlnet",
            &format!("{}:0.5", second.display()),
            "--control-image",
            edges.to_str().unwrap(),
        ],
    );
    let got_two = image::open(&out).unwrap().to_rgb8();
    let one = image::open(set.join("sd15_cn_0.png")).unwrap().to_rgb8();
    assert!(inference::parity::image_diff(&one, &got_two).0 > 10);
}

/// Runs `inference` with `args` and then `extra`.
fn run_with(args: &[String], extra: &[&str]) {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    inference(&all);
}

/// `generate` draws a progress bar (steps done, elapsed, time left) on a terminal, here
/// a pseudo-terminal made by util-linux's `script`, and nothing when stderr is a pipe.
#[test]
fn generate_shows_its_progress_on_a_terminal() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("progress.png");
    let mut args = generate_args(&fixtures.join("models/tiny-sd15"), &out);
    for (flag, value) in [("--width", "128"), ("--height", "128"), ("--steps", "30")] {
        let i = args.iter().position(|a| a == flag).unwrap() + 1;
        args[i] = value.into();
    }
    args.extend(["--prompt".to_string(), "a cat".to_string()]);
    let piped = inference(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!String::from_utf8_lossy(&piped.stderr).contains("denoising"));
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped the terminal half: no `script` (util-linux) here");
        return;
    }
    let line = std::iter::once(env!("CARGO_BIN_EXE_inference").to_string())
        .chain(args)
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let tty = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .unwrap();
    assert!(tty.status.success());
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(
        shown.contains("denoising") && shown.contains("step ") && shown.contains("left"),
        "{shown}"
    );
}

/// `generate` runs SD 3.5 folders like the others: `--no-t5` leaves T5 out and
/// `--skip-layers` turns on skip-layer guidance, each giving diffusers' image
/// (the parity_sd3 references); T5 on the CPU gives the on-device image.
#[test]
fn generate_runs_sd35_with_and_without_t5() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let set = fixtures.join("parity_sd3");
    let model = fixtures.join("models/tiny-sd35");
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| -> image::RgbImage {
        let out = tmp.path().join(format!("{name}.png"));
        let mut args = generate_args(&model, &out);
        let at = |args: &mut Vec<String>, flag: &str, v: &str| {
            let i = args.iter().position(|a| a == flag).unwrap() + 1;
            args[i] = v.into();
        };
        at(&mut args, "--scheduler", "Flow Euler");
        for (flag, v) in extra.chunks(2).map(|c| (c[0], c.get(1).copied())) {
            match v {
                Some(v) if args.iter().any(|a| a == flag) => at(&mut args, flag, v),
                Some(v) => args.extend([flag.to_string(), v.to_string()]),
                None => args.push(flag.to_string()),
            }
        }
        run_with(&args, &[]);
        image::open(&out).unwrap().to_rgb8()
    };
    let want = |name: &str| image::open(set.join(name)).unwrap().to_rgb8();
    let diff = |a: &image::RgbImage, b: &image::RgbImage| inference::parity::image_diff(a, b).0;
    let cat = [
        "--seed",
        "1",
        "--prompt",
        "a photo of a cat",
        "--negative-prompt",
        "blurry, low quality",
        "--guidance",
        "5",
    ];
    let no_t5 = run("no_t5", &[&cat[..], &["--no-t5"]].concat());
    assert!(diff(&no_t5, &want("sd35_no_t5_t2i_neg_0.png")) <= 2);
    let with_t5 = run("t5", &cat);
    assert!(diff(&with_t5, &want("sd35_t2i_neg_0.png")) <= 2);
    let t5_cpu = run("t5_cpu", &[&cat[..], &["--t5", "cpu"]].concat());
    assert_eq!(diff(&t5_cpu, &with_t5), 0, "the CPU is the device here");
    let slg = run(
        "slg",
        &[
            "--seed",
            "22",
            "--steps",
            "12",
            "--prompt",
            "a lighthouse at dusk",
            "--negative-prompt",
            "blurry",
            "--guidance",
            "4",
            "--skip-layers",
            "1",
        ],
    );
    assert!(diff(&slg, &want("sd35_t2i_slg_0.png")) <= 2);
}
