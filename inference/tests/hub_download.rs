//! `--model <hub id>`: the files are downloaded once into the Hugging Face cache
//! (only those the engine reads), and later runs work from the cache even when the
//! hub can't be reached. The hub here is a local HTTP server speaking the two
//! endpoints the hf-hub client uses (repository info, and file resolve with
//! ranges); the client, the cache and the engine are the real ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

const REPO: &str = "test-org/tiny-sdxl";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn inference() -> Command {
    Command::new(env!("CARGO_BIN_EXE_inference"))
}

/// Every file under `dir`, by its path relative to `dir`.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// A stand-in for huggingface.co serving `files`; records the files downloaded.
fn fake_hub(
    files: BTreeMap<String, Vec<u8>>,
) -> (String, Arc<Mutex<Vec<String>>>, Arc<tiny_http::Server>) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let origin = format!("http://{}", server.server_addr().to_ip().unwrap());
    let downloaded = Arc::new(Mutex::new(Vec::new()));
    let (srv, log) = (server.clone(), downloaded.clone());
    std::thread::spawn(move || {
        let info_path = format!("/api/models/{REPO}/revision/main");
        let resolve_prefix = format!("/{REPO}/resolve/main/");
        for req in srv.incoming_requests() {
            let url = req.url().to_string();
            if url == info_path {
                let siblings: Vec<_> = files
                    .keys()
                    .map(|f| format!(r#"{{"rfilename":"{f}"}}"#))
                    .collect();
                let body = format!(
                    r#"{{"sha":"{COMMIT}","siblings":[{}]}}"#,
                    siblings.join(",")
                );
                let _ = req.respond(tiny_http::Response::from_string(body));
                continue;
            }
            let Some(body) = url.strip_prefix(&resolve_prefix).and_then(|f| files.get(f)) else {
                let _ = req.respond(tiny_http::Response::empty(404));
                continue;
            };
            let range = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Range"))
                .map(|h| h.value.to_string());
            let start: usize = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let end = if range.as_deref() == Some("bytes=0-0") {
                1
            } else {
                body.len()
            };
            if end == body.len() {
                log.lock()
                    .unwrap()
                    .push(url[resolve_prefix.len()..].to_string());
            }
            let etag = format!("\"{:016x}{:08x}\"", fnv(body), body.len());
            let headers = [
                ("ETag", etag),
                ("X-Repo-Commit", COMMIT.to_string()),
                (
                    "Content-Range",
                    format!("bytes {start}-{}/{}", end.max(1) - 1, body.len()),
                ),
            ];
            let mut resp = tiny_http::Response::from_data(body[start.min(end)..end].to_vec())
                .with_status_code(206);
            for (name, value) in headers {
                resp.add_header(tiny_http::Header::from_bytes(name, value.as_bytes()).unwrap());
            }
            let _ = req.respond(resp);
        }
    });
    (origin, downloaded, server)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn generate(hf_home: &Path, endpoint: &str, out: &Path) -> std::process::Output {
    inference()
        .args([
            "generate",
            "--device",
            "cpu",
            "--model",
            REPO,
            "--prompt",
            "a lighthouse",
        ])
        .args([
            "--width", "64", "--height", "64", "--steps", "2", "--seed", "5", "--out",
        ])
        .arg(out)
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .output()
        .unwrap()
}

#[test]
fn hub_models_download_once_into_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    assert!(
        inference()
            .arg("make-tiny-model")
            .arg(&model)
            .status()
            .unwrap()
            .success()
    );
    let mut files = files_of(&model);
    let engine_files: Vec<String> = files.keys().cloned().collect();
    // Files a hub repository often has that the engine doesn't read.
    files.insert("unet/diffusion_pytorch_model.bin".into(), vec![0; 64]);
    files.insert("sd_xl_tiny.safetensors".into(), vec![0; 64]);
    files.insert("README.md".into(), b"# tiny".to_vec());
    let (endpoint, downloaded, server) = fake_hub(files);

    let hf_home = tmp.path().join("hf");
    let (first, second) = (tmp.path().join("first.png"), tmp.path().join("second.png"));
    let run = generate(&hf_home, &endpoint, &first);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut got = downloaded.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got, engine_files,
        "exactly the files the engine reads, each once"
    );
    let snapshot: PathBuf = hf_home
        .join("hub/models--test-org--tiny-sdxl/snapshots")
        .join(COMMIT);
    assert!(
        snapshot.join("unet/config.json").is_file(),
        "in the standard cache layout"
    );

    // The hub gone: the cached copy serves, and gives the same image.
    server.unblock();
    drop(server);
    let run = generate(&hf_home, "http://127.0.0.1:9", &second);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stderr).contains("using the cached copy"));
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );
}

#[test]
fn an_unreachable_hub_without_a_cache_names_the_alternative() {
    let tmp = tempfile::tempdir().unwrap();
    let run = generate(
        &tmp.path().join("hf"),
        "http://127.0.0.1:9",
        &tmp.path().join("x.png"),
    );
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("Hugging Face hub could not be reached"),
        "{err}"
    );
    assert!(err.contains("scripts/make-tiny-model"), "{err}");
    assert!(!err.contains("Stack backtrace"), "{err}");
}
