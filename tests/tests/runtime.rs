//! What the edge needs of its runtime's key-value store, checked the same way under
//! Spin and edge-host: ModelsLab's output links outlast a restart of the edge (both
//! keep the store in Spin's SQLite file in the state folder), and, under Spin, the
//! store runs on a real Redis from the runtime-config file the project documents.

use std::path::Path;
use std::process::Command;

use e2e::runtime::{Runtime, on_path, runtime, skip};
use e2e::{
    EdgeConfig, Process, RuntimeOptions, edge_runtime_present, free_port, get, post, repo_root,
    start_edge_with, start_inference,
};

const KEY: &str = "runtime-key";
const ML_T2I: &str = "/api/v1/enterprise/text2img";

fn config(inference_url: &str) -> EdgeConfig<'_> {
    EdgeConfig {
        inference_url,
        api_keys: KEY,
        image_hosts: "",
        variables: vec![],
        runtime_allows_image_hosts: false,
    }
}

/// A ModelsLab text-to-image request; returns its output link's path and the PNG
/// the link serves.
fn modelslab_image(edge: &str) -> (String, Vec<u8>) {
    let reply = post(
        &format!("{edge}{ML_T2I}"),
        &[("Content-Type", "application/json")],
        &format!(
            r#"{{"key":"{KEY}","prompt":"a lighthouse","width":"64","height":"64","num_inference_steps":"2","seed":"7"}}"#
        ),
    );
    let body = reply.json();
    assert_eq!(body["status"], "success", "{body}");
    let link = body["output"][0].as_str().expect("an output link");
    let path = link
        .strip_prefix(edge)
        .unwrap_or_else(|| panic!("{link} is not on {edge}"))
        .to_string();
    let got = get(link);
    assert_eq!(got.status, 200, "{link}");
    (path, got.body)
}

#[test]
fn modelslab_links_outlast_a_restart_of_the_edge() {
    if !edge_runtime_present() {
        return;
    }
    let (_inference, inference_url) = start_inference();
    let state = tempfile::tempdir().unwrap();
    let opts = RuntimeOptions {
        state_dir: Some(state.path().to_path_buf()),
        ..Default::default()
    };
    let (first, edge) = start_edge_with(&config(&inference_url), &[], &opts);
    let (path, png) = modelslab_image(&edge);
    drop(first);

    let (_second, edge) = start_edge_with(&config(&inference_url), &[], &opts);
    let again = get(&format!("{edge}{path}"));
    assert_eq!(again.status, 200, "{path} after the restart");
    assert_eq!(again.body, png);
    // Where `spin up` keeps its default store: either runtime reads the other's.
    assert!(state.path().join("sqlite_key_value.db").is_file());
}

/// redis-server on a free loopback port, without persistence.
fn start_redis(server: &Path) -> (Process, u16) {
    let port = free_port();
    let mut cmd = Command::new(server);
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--port")
        .arg(port.to_string());
    let mut redis = Process::start("redis-server", &mut cmd);
    redis.wait_for_line(
        "Ready to accept connections",
        std::time::Duration::from_secs(30),
        |l| l.contains("Ready to accept connections"),
    );
    (redis, port)
}

#[test]
fn the_key_value_store_on_redis_from_the_documented_runtime_config() {
    if !edge_runtime_present() {
        return;
    }
    if matches!(runtime(), Runtime::EdgeHost) {
        skip("edge-host reads no runtime-config file; this runs under Spin");
        return;
    }
    let Some(server) = on_path("redis-server") else {
        // scripts/test installs it where it can.
        skip("no redis-server on PATH for the Spin key-value store on Redis");
        return;
    };
    let (_redis, port) = start_redis(&server);

    // The documented file, pointed at this Redis.
    let documented =
        std::fs::read_to_string(repo_root().join("deploy/spin-runtime-config.redis.toml")).unwrap();
    let url = "redis://127.0.0.1:6379";
    assert!(
        documented.contains(url),
        "the example no longer names {url}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runtime-config.toml");
    std::fs::write(
        &file,
        documented.replace(url, &format!("redis://127.0.0.1:{port}")),
    )
    .unwrap();

    let (_inference, inference_url) = start_inference();
    let opts = |state: &Path| RuntimeOptions {
        runtime_config: Some(file.clone()),
        state_dir: Some(state.to_path_buf()),
        ..Default::default()
    };
    let first_state = tempfile::tempdir().unwrap();
    let (first, edge) = start_edge_with(&config(&inference_url), &[], &opts(first_state.path()));
    let (path, png) = modelslab_image(&edge);
    drop(first);

    // The image is in Redis ...
    let keys = Command::new(server.with_file_name("redis-cli"))
        .args(["-p", &port.to_string(), "--raw", "KEYS", "*"])
        .output()
        .expect("running redis-cli");
    let keys = String::from_utf8_lossy(&keys.stdout);
    let id = path.rsplit('/').next().unwrap().trim_end_matches(".png");
    assert!(keys.contains(id), "{id} not among Redis' keys:\n{keys}");
    // ... so an edge with a fresh state folder (another machine) serves it too.
    let other_state = tempfile::tempdir().unwrap();
    let (_second, edge) = start_edge_with(&config(&inference_url), &[], &opts(other_state.path()));
    let again = get(&format!("{edge}{path}"));
    assert_eq!(
        again.status, 200,
        "{path} from a second edge on the same Redis"
    );
    assert_eq!(again.body, png);
}

/// The runtime's own conventions the edge's routes rely on, identical under both:
/// its health endpoint, 404 for paths spin.toml doesn't route, a trailing slash and
/// `:service_id` segments reaching the component, and wildcard routes.
#[test]
fn routes_and_the_runtimes_own_endpoint() {
    if !edge_runtime_present() {
        return;
    }
    let (_edge, edge) = e2e::start_edge(&config("http://127.0.0.1:9"));
    let health = get(&format!("{edge}/.well-known/spin/health"));
    assert_eq!((health.status, health.body.as_slice()), (200, &b"OK"[..]));
    for unrouted in ["/", "/nope", "/GETIMAGE/v1/getSDXLImage", "/v1/images"] {
        let reply = post(&format!("{edge}{unrouted}"), &[], "{}");
        assert_eq!((reply.status, reply.body.len()), (404, 0), "{unrouted}");
    }
    // Routed to the component, which answers in the dialect's shape.
    let reply = post(&format!("{edge}/svc-42/v1/images/generate"), &[], "{}");
    assert_eq!(
        reply.status,
        401,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = post(&format!("{edge}/v1/image/generation/"), &[], "{}");
    assert_eq!(
        reply.json()["message"],
        "no API is served at /v1/image/generation/"
    );
    let reply = get(&format!("{edge}/generations/nothing-here.png"));
    assert_eq!(reply.status, 404);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("no stored image")
    );
}

#[test]
fn edge_host_cuts_off_clients_that_never_finish() {
    if !edge_runtime_present() {
        return;
    }
    if !matches!(runtime(), Runtime::EdgeHost) {
        skip("these are edge-host's own limits (Spin has its own)");
        return;
    }
    let (_inference, inference_url) = start_inference();
    let opts = RuntimeOptions {
        env: e2e::slow_clients::LIMITS_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let (_edge, edge) = start_edge_with(&config(&inference_url), &[], &opts);
    e2e::slow_clients::check(
        edge.strip_prefix("http://").unwrap(),
        "/.well-known/spin/health",
        "/api/v6/images/text2img",
    );
}
