//! ModelsLab's official clients, pinned (scripts/modelslab-clients), against the
//! edge with nothing changed but their base URL: every image call of the Python SDK
//! (modelslab-py), and the CLI's (modelslab-cli) image commands with their fetch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::images::{ImageServer, Route, encode, test_picture};
use e2e::{
    EdgeConfig, edge_runtime_present, get, repo_root, start_edge, start_inference, target_dir,
};
use image::ImageFormat;
use serde_json::Value;

const KEY: &str = "clients-key";

fn clients() -> PathBuf {
    let venv = target_dir().join("modelslab-clients");
    assert!(
        venv.join("bin/modelslab").is_file(),
        "ModelsLab's clients are missing: run scripts/modelslab-clients (scripts/test does)"
    );
    venv
}

fn png_at(link: &str) {
    let got = get(link);
    assert_eq!(got.status, 200, "{link}");
    assert!(got.body.starts_with(b"\x89PNG"), "{link} is not a PNG");
}

fn stack(async_after: &str) -> (ImageServer, Vec<e2e::Process>, String) {
    let mut routes = HashMap::new();
    routes.insert(
        "/in.png".to_string(),
        Route::Ok {
            content_type: "image/png",
            body: encode(&test_picture(96, 64, 40), ImageFormat::Png),
        },
    );
    // Webhooks go to an allowed host too.
    routes.insert("/hook".to_string(), Route::Status(200));
    let images = ImageServer::start(routes);
    let (inference, inference_url) = start_inference();
    let (edge_proc, edge) = start_edge(&EdgeConfig {
        inference_url: &inference_url,
        api_keys: KEY,
        image_hosts: &images.origin,
        variables: vec![("ASYNC_AFTER_SECS", async_after)],
        runtime_allows_image_hosts: true,
    });
    (images, vec![inference, edge_proc], edge)
}

#[test]
fn the_python_sdk_every_image_call() {
    if !edge_runtime_present() {
        return;
    }
    let venv = clients();
    // Every request answered "processing", so that each call also goes through the
    // SDK's own fetch.
    let (images, _procs, edge) = stack("0");
    let out = Command::new(venv.join("bin/python"))
        .arg(repo_root().join("tests/clients/modelslab_sdk.py"))
        .args([edge.as_str(), KEY, &images.url("/in.png")])
        .output()
        .expect("running the SDK script");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The last line: the SDK's realtime text-to-image prints its answer itself.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let results: HashMap<String, Value> =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    for name in [
        "text_to_image",
        "image_to_image",
        "realtime_text_to_image",
        "realtime_image_to_image",
        "enterprise_text_to_image",
        "enterprise_image_to_image",
        "enterprise_qwen_text_to_image",
        "enterprise_realtime_text_to_image",
        "enterprise_realtime_image_to_image",
        "async_text_to_image",
    ] {
        let answer = &results[name]["ok"];
        assert_eq!(answer["status"], "success", "{name}: {}", results[name]);
        let output = answer["output"].as_array().unwrap();
        assert_eq!(output.len(), 1, "{name}");
        png_at(output[0].as_str().unwrap());
    }
    // Their providers' models: a 400 that names model_id (the SDK raises on it).
    for name in [
        "z_image_turbo",
        "flux_2_dev",
        "enterprise_z_image_turbo",
        "enterprise_flux_2_dev",
        "bfl_flux_pro_11",
        "bfl_flux_2_pro",
        "google_imagen_4",
        "byteplus_seedream_t2i",
    ] {
        let error = results[name]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("status code 400") && error.contains("model_id"),
            "{name}: {}",
            results[name]
        );
    }
    assert_eq!(results.len(), 18, "{results:?}");
}

/// The CLI, with its home (config, profiles) in a scratch folder.
fn cli(venv: &Path, home: &Path, edge: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(venv.join("bin/modelslab"))
        .env("HOME", home)
        .env("MODELSLAB_NO_UPDATE_CHECK", "1")
        .args(["--base-url", edge, "--api-key", KEY])
        .args(args)
        .output()
        .expect("running the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pngs_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| std::fs::read(e.path()).is_ok_and(|b| b.starts_with(b"\x89PNG")))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn the_cli_image_commands_and_fetch() {
    if !edge_runtime_present() {
        return;
    }
    let venv = clients();
    let home = tempfile::tempdir().unwrap();
    let (images, _procs, edge) = stack("30");
    let small = [
        "--width", "64", "--height", "64", "--steps", "2", "--seed", "5",
    ];

    let out = home.path().join("t2i");
    let mut args = vec!["generate", "image", "--prompt", "a red apple"];
    args.extend(small);
    args.extend(["--output-dir", out.to_str().unwrap()]);
    let (ok, stdout, stderr) = cli(&venv, home.path(), &edge, &args);
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(pngs_in(&out), 1, "{stdout}\n{stderr}");

    let out = home.path().join("i2i");
    let init = images.url("/in.png");
    let (ok, stdout, stderr) = cli(
        &venv,
        home.path(),
        &edge,
        &[
            "generate",
            "image-to-image",
            "--prompt",
            "a red apple",
            "--init-image",
            &init,
            "--strength",
            "0.5",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(pngs_in(&out), 1, "{stdout}\n{stderr}");

    // Queued (a webhook makes it so), then fetched by id.
    let webhook = images.url("/hook");
    let mut args = vec!["generate", "image", "--prompt", "a red apple"];
    args.extend(small);
    args.extend(["--webhook", &webhook, "--no-wait", "-o", "json"]);
    let (ok, stdout, stderr) = cli(&venv, home.path(), &edge, &args);
    assert!(ok, "{stdout}\n{stderr}");
    let queued: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(queued["status"], "processing", "{queued}");
    let id = queued["id"].to_string();
    // `generate fetch` asks once: wait until the job is done.
    let fetch_url = queued["fetch_result"].as_str().unwrap();
    for _ in 0..240 {
        let body = e2e::post(fetch_url, &[], &format!(r#"{{"key":"{KEY}"}}"#)).json();
        if body["status"] != "processing" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let out = home.path().join("fetched");
    let (ok, stdout, stderr) = cli(
        &venv,
        home.path(),
        &edge,
        &[
            "generate",
            "fetch",
            "--id",
            &id,
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(pngs_in(&out), 1, "{stdout}\n{stderr}");

    // A model this server does not have: the CLI fails with the server's reason.
    let (ok, stdout, stderr) = cli(
        &venv,
        home.path(),
        &edge,
        &[
            "generate",
            "image",
            "--prompt",
            "x",
            "--model",
            "flux-2-pro",
        ],
    );
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("model_id"), "{stderr}");
}
