//! The harness of the end-to-end tests: starts the real processes (the inference
//! server on a tiny model, the real edge .wasm in edge-host or in the Spin CLI as
//! EDGE_RUNTIME says, an HTTP server for input images) on loopback ports and talks
//! to them over real sockets. The binaries come from `scripts/build` (the tests say
//! so if missing).

pub mod images;
pub mod process;
pub mod runtime;
pub mod slow_clients;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use process::Process;
pub use runtime::{RuntimeOptions, edge_runtime_present, spin_pass_skips_edgeless_test};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target folder this test binary was built into (…/target/release/deps/e2e-… → …/target).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lies in <target>/<profile>/deps")
        .to_path_buf()
}

fn built(path: PathBuf) -> PathBuf {
    assert!(
        path.is_file(),
        "{} is missing: build everything first with `scripts/build` (scripts/test does)",
        path.display()
    );
    path
}

/// A native binary of this workspace, built in release.
pub fn binary(name: &str) -> PathBuf {
    built(target_dir().join("release").join(name))
}

/// The edge component.
pub fn edge_wasm() -> PathBuf {
    built(target_dir().join("wasm32-wasip2/release/edge.wasm"))
}

static TINY_MODEL: OnceLock<PathBuf> = OnceLock::new();

/// A tiny random SDXL-architecture model made by `inference make-tiny-model`,
/// once per test binary, and removed when it exits.
pub fn tiny_model() -> &'static Path {
    TINY_MODEL.get_or_init(|| {
        let dir = target_dir().join(format!("e2e-tiny-model-{}", std::process::id()));
        extern "C" fn remove_tiny_model() {
            if let Some(dir) = TINY_MODEL.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // The test harness ends with exit(), which runs atexit handlers.
        unsafe { libc::atexit(remove_tiny_model) };
        let status = std::process::Command::new(binary("inference"))
            .arg("make-tiny-model")
            .arg(&dir)
            .status()
            .expect("running inference make-tiny-model");
        assert!(status.success(), "inference make-tiny-model failed");
        dir
    })
}

/// The inference server on the tiny model, on a free loopback port.
pub fn start_inference() -> (Process, String) {
    start_inference_with(&[])
}

/// The inference server serving every catalog name with the tiny model, with extra
/// `serve` arguments (e.g. `--queue-size 8`); a `--listen` among them replaces the
/// free port.
pub fn start_inference_with(args: &[&str]) -> (Process, String) {
    let mut cmd = std::process::Command::new(binary("inference"));
    cmd.arg("serve");
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    if !args.contains(&"--catalog") && !args.contains(&"--model") {
        cmd.arg("--model").arg(tiny_model());
    }
    let mut p = Process::start("inference", cmd.args(args));
    let addr = p.wait_for_listen_address();
    (p, format!("http://{addr}"))
}

/// The inference server on the catalog `toml` (written to a temporary folder, which
/// lives as long as the returned handle).
pub fn start_inference_with_catalog(toml: &str) -> (Process, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, toml).unwrap();
    let (p, url) = start_inference_with(&["--catalog", catalog.to_str().unwrap()]);
    (p, url, dir)
}

/// Catalog entries: "canny", a tiny ControlNet per architecture (SD 1.5, SDXL) that
/// preprocesses photos with the canny edge detector.
pub fn canny_controlnets() -> String {
    let models = repo_root().join("inference/tests/fixtures/models");
    let entry = |arch: &str, model: &str| {
        format!(
            "[controlnets.canny-{model}]\nsource = \"{}\"\naliases = [\"canny\"]\n\
             architecture = \"stable-diffusion-{arch}\"\npreprocess = \"canny\"\n",
            models.join(format!("tiny-controlnet-{model}")).display()
        )
    };
    entry("1", "sd15") + &entry("xl", "sdxl")
}

/// The inference server on the committed tiny SDXL and SD 1.5 models, with the fixture
/// LoRAs, VAE, embeddings, refiner, safety checker and "canny" ControlNets (one per
/// architecture) in its catalog under names the APIs' own examples use: everything
/// the examples name is here, nothing comes from the hub.
pub fn start_inference_with_add_ons() -> (Process, String, tempfile::TempDir) {
    let models = repo_root().join("inference/tests/fixtures/models");
    let f = repo_root().join("inference/tests/fixtures/parity_features");
    start_inference_with_catalog(&format!(
        r#"default = "SDXL1.0-base"
safety_checker = "{checker}"
[models."SDXL1.0-base"]
source = "{sdxl}"
aliases = ["stable-diffusion-xl-base-1.0"]
refiner = "sdxl-refiner"
[models.sdxl-refiner]
source = "{refiner}"
[models."SD1.5"]
source = "{sd15}"
[models.SD2]
source = "{sd2}"
[loras.pixel-art]
source = "{f}/lora-sdxl-kohya.safetensors"
aliases = ["Pixel_Art"]
architecture = "stable-diffusion-xl"
[loras.logo]
source = "{f}/lora-sdxl-peft.safetensors"
aliases = ["Logo"]
[loras.contrast-fix]
source = "{f}/lora-sd15-peft.safetensors"
architecture = "stable-diffusion-1"
[loras.sd15-kohya]
source = "{f}/lora-sd15-kohya.safetensors"
[vaes.vae-sd15]
source = "{f}/vae-sd15"
[embeddings.cat-toy]
source = "{f}/ti-sd15-diffusers.safetensors"
[embeddings.style]
source = "{f}/ti-sd15-a1111.safetensors"
token = "<style>"
[embeddings.pt-style]
source = "{f}/ti-sd15-a1111.pt"
{canny}"#,
        sdxl = models.join("tiny-sdxl").display(),
        sd15 = models.join("tiny-sd15").display(),
        sd2 = models.join("tiny-sd2").display(),
        refiner = models.join("tiny-sdxl-refiner").display(),
        checker = repo_root()
            .join("inference/tests/fixtures/safety_checker")
            .display(),
        f = f.display(),
        canny = canny_controlnets(),
    ))
}

/// The value after `name` in a benchmark's arguments, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a value")),
        None => default,
    }
}

/// A loopback port nothing listens on (free when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// How to configure the edge for one test.
pub struct EdgeConfig<'a> {
    pub inference_url: &'a str,
    pub api_keys: &'a str,
    pub image_hosts: &'a str,
    /// Extra SPIN_VARIABLE_* settings, e.g. ("INFERENCE_TIMEOUT_SECS", "2").
    pub variables: Vec<(&'a str, &'a str)>,
    /// Whether the runtime also allows the image hosts as outbound hosts: they go in
    /// spin.toml's image_host_X slots (as scripts/up puts them) instead of only the
    /// edge's image_hosts list, which the runtime does not read.
    pub runtime_allows_image_hosts: bool,
}

impl<'a> EdgeConfig<'a> {
    /// An edge on `inference_url` taking these API keys, with no image hosts.
    pub fn keyed(inference_url: &'a str, api_keys: &'a str) -> EdgeConfig<'a> {
        EdgeConfig {
            inference_url,
            api_keys,
            image_hosts: "",
            variables: vec![],
            runtime_allows_image_hosts: false,
        }
    }
}

/// The edge runtime this run uses ([`runtime::runtime`]) serving the real spin.toml
/// and edge.wasm.
pub fn start_edge(cfg: &EdgeConfig) -> (Process, String) {
    start_edge_allowing(cfg, &[])
}

/// [`start_edge`] with further inference servers, in spin.toml's more_inference_url_X
/// slots (allowed by the runtime and used by the edge).
pub fn start_edge_allowing(cfg: &EdgeConfig, more_inference: &[&str]) -> (Process, String) {
    start_edge_with(cfg, more_inference, &RuntimeOptions::default())
}

/// [`start_edge_allowing`] with runtime options (Spin's runtime-config file).
pub fn start_edge_with(
    cfg: &EdgeConfig,
    more_inference: &[&str],
    opts: &RuntimeOptions,
) -> (Process, String) {
    let mut vars: Vec<(String, String)> = vec![
        ("INFERENCE_URL".into(), cfg.inference_url.into()),
        ("API_KEYS".into(), cfg.api_keys.into()),
        ("IMAGE_HOSTS".into(), cfg.image_hosts.into()),
    ];
    if cfg.runtime_allows_image_hosts {
        let hosts: Vec<&str> = cfg
            .image_hosts
            .split(',')
            .filter(|s| !s.is_empty())
            .collect();
        vars.extend(slots("IMAGE_HOST", 4, &hosts));
    }
    vars.extend(slots("MORE_INFERENCE_URL", 3, more_inference));
    for (name, value) in &cfg.variables {
        vars.push((name.to_string(), value.to_string()));
    }
    runtime::start(runtime::runtime(), &vars, opts)
}

/// spin.toml's outbound slots `PREFIX_A`, `PREFIX_B`, .. (`count` of them) for `origins`.
fn slots(prefix: &str, count: usize, origins: &[&str]) -> Vec<(String, String)> {
    assert!(
        origins.len() <= count,
        "spin.toml has {count} {prefix}_X slots"
    );
    let names = (b'A'..).map(|c| format!("{prefix}_{}", c as char));
    names.zip(origins.iter().map(|o| o.to_string())).collect()
}

/// A response, whatever its status.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// POSTs `body` with `headers` and returns the reply, whatever its status.
pub fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    post_bytes(url, headers, body.as_bytes())
}

/// POSTs a Hyperbolic request with API key `key` to the edge at `edge`: the status and
/// the JSON answer.
pub fn post_hyperbolic(
    edge: &str,
    key: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let reply = post(
        &format!("{edge}/v1/image/generation"),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {key}")),
        ],
        &body.to_string(),
    );
    (reply.status, reply.json())
}

/// POSTs raw bytes (multipart forms, broken bodies).
pub fn post_bytes(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = agent().post(url);
    for (name, value) in headers {
        req = req.set(name, value);
    }
    reply(url, req.send_bytes(body))
}

/// GETs `url`.
pub fn get(url: &str) -> Reply {
    reply(url, agent().get(url).call())
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(600))
        .build()
}

fn reply(url: &str, result: Result<ureq::Response, ureq::Error>) -> Reply {
    let resp = match result {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = resp.status();
    let headers = resp.headers_names().into_iter().map(|n| {
        let v = resp.header(&n).unwrap_or_default().to_string();
        (n, v)
    });
    let headers = headers.collect();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).expect("reading the body");
    Reply {
        status,
        headers,
        body,
    }
}
