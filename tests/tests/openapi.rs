//! schemathesis (pinned, scripts/schemathesis) against the live stack: each dialect's
//! document as the edge serves it (`/openapi/<name>.json`), and the inference
//! contract's against the inference server. Generated requests, valid and invalid,
//! a bounded number per operation: no answer may be a 5xx, and every answer's status,
//! content type, headers and body must be the ones its document gives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use e2e::images::{ImageServer, Route, encode, test_picture};
use e2e::runtime::{Runtime, runtime};
use e2e::{
    EdgeConfig, edge_runtime_present, get, repo_root, spin_pass_skips_edgeless_test, start_edge,
    start_inference_with_add_ons, target_dir,
};
use image::ImageFormat;

const KEY: &str = "openapi-key";

/// What every answer is held to.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection";

fn schemathesis() -> PathBuf {
    let bin = target_dir().join("schemathesis/bin/schemathesis");
    assert!(
        bin.is_file(),
        "schemathesis is missing: run scripts/schemathesis (scripts/test does)"
    );
    bin
}

/// The test image, served for URL fields and written for the hooks' uploads.
fn image_server() -> (ImageServer, PathBuf) {
    let png = encode(&test_picture(64, 64, 40), ImageFormat::Png);
    let file = target_dir().join(format!("openapi-test-{}.png", std::process::id()));
    std::fs::write(&file, &png).unwrap();
    let mut routes = HashMap::new();
    routes.insert(
        "/in.png".to_string(),
        Route::Ok {
            content_type: "image/png",
            body: png,
        },
    );
    (ImageServer::start(routes), file)
}

/// What one schemathesis run covers.
struct Scope {
    phases: &'static str,
    /// Generated cases per operation at most.
    examples: u32,
    /// Only the paths this regex matches (none: every path).
    paths: Option<&'static str>,
}

/// Every phase but the stateful one (the APIs keep no state a link could follow but
/// ModelsLab's job ids, whose fetch is in its examples).
const FULL: &str = "examples,coverage,fuzzing";

/// Each operation's examples only.
const EXAMPLES: Scope = Scope {
    phases: "examples",
    examples: 1,
    paths: None,
};

/// Every phase, `examples` generated cases per operation at most.
fn full(examples: u32) -> Scope {
    Scope {
        phases: FULL,
        examples,
        paths: None,
    }
}

/// Runs schemathesis on the document at `location` against `base`.
fn run(
    location: &str,
    base: &str,
    headers: &[String],
    scope: &Scope,
    images: &(ImageServer, PathBuf),
) {
    // Its own folder for what schemathesis keeps between runs (a crash cache): each
    // run starts clean, as on CI, and nothing lands in the checkout.
    let workdir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(schemathesis());
    cmd.current_dir(workdir.path())
        .arg("--config-file")
        .arg(repo_root().join("tests/clients/schemathesis.toml"))
        .args(["run", location, "--url", base])
        .args(["--checks", CHECKS])
        .args(["--phases", scope.phases])
        .args(["--mode", "all"])
        .args(["--max-examples", &scope.examples.to_string()])
        .args(["--seed", "16"])
        .args(["--workers", "1"])
        .args(["--generation-with-security-parameters", "false"])
        .args(["--suppress-health-check", "all"])
        .args(["--request-timeout", "60"])
        .args(["--no-color", "--warnings", "off"])
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", repo_root().join("tests/clients"))
        .env("SDGATE_TEST_KEY", KEY)
        .env("SDGATE_TEST_IMAGE_URL", images.0.url("/in.png"))
        .env("SDGATE_TEST_PNG", &images.1);
    for h in headers {
        cmd.args(["--header", h]);
    }
    if let Some(paths) = scope.paths {
        cmd.args(["--include-path-regex", paths]);
    }
    let out = cmd.output().expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis on {location}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The count of cases and the verdict, for the log.
    let cases = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .unwrap_or_default()
        .trim();
    let verdict = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" in "))
        .unwrap_or_default();
    eprintln!(
        "{location} ({}): {cases} {}",
        scope.phases,
        verdict.trim_matches(['=', ' '])
    );
}

#[test]
fn every_dialect_answers_as_its_document_says() {
    if !edge_runtime_present() {
        return;
    }
    let images = image_server();
    let (_inference, inference_url, _catalog) = start_inference_with_add_ons();
    let (_edge_proc, edge) = start_edge(&EdgeConfig {
        inference_url: &inference_url,
        api_keys: KEY,
        image_hosts: &images.0.origin,
        variables: vec![],
        runtime_allows_image_hosts: true,
    });
    let index = get(&format!("{edge}/openapi")).json();
    assert_eq!(index["documents"].as_array().unwrap().len(), 5, "{index}");
    let bearer = format!("Authorization: Bearer {KEY}");
    let appypie = vec![format!("Ocp-Apim-Subscription-Key: {KEY}")];
    let runs = if matches!(runtime(), Runtime::Spin(_)) {
        // The same component serves the same documents under Spin: what this pass
        // adds is Spin's routes, proven by every operation's example.
        vec![
            ("appypie", appypie, EXAMPLES),
            ("holmesai", vec![bearer.clone()], EXAMPLES),
            ("hyperbolic", vec![bearer], EXAMPLES),
            ("modelslab", vec![], EXAMPLES),
        ]
    } else {
        vec![
            ("appypie", appypie, full(12)),
            ("holmesai", vec![bearer.clone()], full(8)),
            ("hyperbolic", vec![bearer], full(20)),
            // About forty paths share five request bodies: every phase on one
            // family's paths (each body once), and every path's example.
            (
                "modelslab",
                vec![],
                Scope {
                    paths: Some("^/api/v6/images/"),
                    ..full(6)
                },
            ),
            ("modelslab", vec![], EXAMPLES),
        ]
    };
    for (name, headers, scope) in &runs {
        let doc = format!("{edge}/openapi/{name}.json");
        run(&doc, &edge, headers, scope, &images);
    }
}

#[test]
fn the_inference_server_answers_as_its_document_says() {
    if spin_pass_skips_edgeless_test() {
        return;
    }
    let images = image_server();
    let (_inference, inference_url, _catalog) = start_inference_with_add_ons();
    let doc = repo_root().join("edge/openapi/inference.json");
    run(
        doc.to_str().unwrap(),
        &inference_url,
        &[],
        &full(12),
        &images,
    );
}
