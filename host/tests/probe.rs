//! End-to-end tests: the real `edge-host` binary serving the probe component
//! (host/probe) from a spin.toml written to a temp folder, exercised over
//! real sockets.
//!
//! The probe must be built first, into the same target folder:
//! `cargo build -p host-probe --target wasm32-wasip2 --release`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::thread;
use std::time::{Duration, Instant};

const BUILD_PROBE: &str =
    "cargo build -p host-probe -p host-probe-p2 --target wasm32-wasip2 --release";

fn host_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-host"))
}

/// A probe component: `$<env>`, or `<target>/wasm32-wasip2/release/<file>`
/// next to this test's binary.
fn built_wasm(env: &str, file: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = host_exe();
    let target = exe
        .parent()
        .and_then(Path::parent)
        .expect("edge-host is in <target>/<profile>/");
    let wasm = target.join("wasm32-wasip2/release").join(file);
    assert!(
        wasm.is_file(),
        "the probe component {} is not built; build it with `{BUILD_PROBE}` \
         (with the same CARGO_TARGET_DIR as the tests), or point {env} at it",
        wasm.display()
    );
    wasm
}

/// The spin-sdk 7 (WASIp3) probe, host/probe.
fn probe_wasm() -> PathBuf {
    built_wasm("EDGE_HOST_PROBE_WASM", "host_probe.wasm")
}

/// The WASIp2 (Spin 3 style) probe, host/probe-p2.
fn probe_p2_wasm() -> PathBuf {
    built_wasm("EDGE_HOST_PROBE_P2_WASM", "host_probe_p2.wasm")
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "edge-host-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The test application: one component on several routes, and a second
/// component from the same .wasm with other variables.
fn manifest(allowed: &[String]) -> String {
    let wasm = probe_wasm();
    let allowed = allowed
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"spin_manifest_version = 2

[application]
name = "probe-test"

[variables]
greeting = {{ default = "hello" }}
secret_token = {{ required = true }}
empty = {{ default = "" }}

[[trigger.http]]
route = "/exact"
component = "probe"

[[trigger.http]]
route = "/echo/..."
component = "probe"

[[trigger.http]]
route = "/users/:id/..."
component = "probe"

[[trigger.http]]
route = "/var/:name"
component = "probe"

[[trigger.http]]
route = "/env/..."
component = "probe"

[[trigger.http]]
route = "/fetch"
component = "probe"

[[trigger.http]]
route = "/stream"
component = "probe"

[[trigger.http]]
route = "/sleep"
component = "probe"

[[trigger.http]]
route = "/panic"
component = "probe"

[[trigger.http]]
route = "/two/..."
component = "probe-two"

[component.probe]
source = '{wasm}'
allowed_outbound_hosts = [{allowed}]
environment = {{ PROBE_ENV = "from-manifest" }}

[component.probe.variables]
greeting = "{{{{ greeting }}}}"
token = "tok-{{{{ secret_token }}}}"
literal = "plain"

[component.probe-two]
source = '{wasm}'

[component.probe-two.variables]
greeting = "{{{{ greeting }}}} from two"
"#,
        wasm = wasm.display()
    )
}

/// Compile the probe once (into its cache next to the .wasm) before any
/// test starts a host, so parallel tests do not all compile it at once.
fn precompile() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = temp_dir();
        std::fs::write(dir.join("spin.toml"), manifest(&[])).unwrap();
        let out = Command::new(host_exe())
            .arg("--from")
            .arg(dir.join("spin.toml"))
            .arg("--precompile")
            .env("SPIN_VARIABLE_SECRET_TOKEN", "x")
            .output()
            .expect("run edge-host --precompile");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "edge-host --precompile failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A running edge-host.
struct Host {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl Host {
    fn start(allowed: &[String], args: &[&str], env: &[(&str, &str)]) -> Host {
        precompile();
        Host::launch(&manifest(allowed), args, env)
    }

    /// Start edge-host on a spin.toml with this text.
    fn launch(manifest_text: &str, args: &[&str], env: &[(&str, &str)]) -> Host {
        let dir = temp_dir();
        let manifest_path = dir.join("spin.toml");
        std::fs::write(&manifest_path, manifest_text).unwrap();
        let mut cmd = Command::new(host_exe());
        cmd.arg("--from")
            .arg(&manifest_path)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("SPIN_VARIABLE_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start edge-host");

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = BufReader::new(child.stderr.take().unwrap());
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut line = String::new();
            while err_pipe.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });

        let (tx, rx) = mpsc::channel();
        let out_pipe = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in out_pipe.lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("Serving http://") {
                    let _ = tx.send(url.trim().parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "edge-host did not start; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        Host {
            child,
            addr,
            stderr,
            dir,
        }
    }

    fn get(&self, path: &str) -> Resp {
        request(self.addr, "GET", path, &[], b"")
    }

    fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until the logs contain `needle` (log lines can trail a response).
    fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A `name: value` line of the probe's echo output.
    fn echoed(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}: ");
        self.text()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut stream = TcpStream::connect(addr).expect("connect to edge-host");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A local HTTP server for outbound requests: answers every request with
/// `hello from <name>` after `delay`, and counts the connections it got.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Upstream {
    fn start(name: &'static str, delay: Duration) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut byte = [0u8; 1];
                    while !buf.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => buf.push(byte[0]),
                            _ => return,
                        }
                    }
                    thread::sleep(delay);
                    let head = String::from_utf8_lossy(&buf);
                    let line = head.lines().next().unwrap_or("").to_string();
                    let body = format!("hello from {name}: {line}");
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Upstream { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn token_env() -> [(&'static str, &'static str); 1] {
    [("SPIN_VARIABLE_SECRET_TOKEN", "s3cret")]
}

#[test]
fn routing_and_spin_headers() {
    let host = Host::start(&[], &[], &token_env());

    // Exact route, with and without a trailing slash.
    let r = host.get("/exact");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echoed("spin-matched-route").as_deref(), Some("/exact"));
    assert_eq!(r.echoed("spin-path-info").as_deref(), Some(""));
    assert_eq!(r.echoed("spin-component-route").as_deref(), Some("/exact"));
    assert_eq!(host.get("/exact/").status, 200);
    assert_eq!(host.get("/exactly").status, 404);
    assert_eq!(host.get("/exact/more").status, 404);

    // Trailing wildcard: the Spin headers.
    let r = request(
        host.addr,
        "GET",
        "/echo/a/b?x=1&y=2",
        &[("spin-path-info", "/spoofed"), ("x-custom", "kept")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let origin = format!("http://{}", host.addr);
    assert_eq!(
        r.echoed("spin-full-url"),
        Some(format!("{origin}/echo/a/b?x=1&y=2"))
    );
    assert_eq!(r.echoed("uri"), Some(format!("{origin}/echo/a/b?x=1&y=2")));
    assert_eq!(r.echoed("spin-path-info").as_deref(), Some("/a/b"));
    assert_eq!(r.echoed("spin-matched-route").as_deref(), Some("/echo/..."));
    assert_eq!(
        r.echoed("spin-raw-component-route").as_deref(),
        Some("/echo/...")
    );
    assert_eq!(r.echoed("spin-component-route").as_deref(), Some("/echo"));
    assert_eq!(r.echoed("spin-base-path").as_deref(), Some("/"));
    assert!(
        r.echoed("spin-client-addr")
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{}",
        r.text()
    );
    assert_eq!(r.echoed("x-custom").as_deref(), Some("kept"));
    assert_eq!(r.text().matches("spin-path-info:").count(), 1);
    assert_eq!(
        host.get("/echo").echoed("spin-path-info").as_deref(),
        Some("")
    );
    assert_eq!(
        host.get("/echo/").echoed("spin-path-info").as_deref(),
        Some("/")
    );

    // `:name` segments.
    let r = host.get("/users/42/profile");
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("spin-path-match-id").as_deref(), Some("42"));
    assert_eq!(r.echoed("spin-path-info").as_deref(), Some("/profile"));
    assert_eq!(
        r.echoed("spin-component-route").as_deref(),
        Some("/users/:id")
    );
    assert_eq!(host.get("/users").status, 404);

    // Unmatched routes and the runtime's own endpoint.
    assert_eq!(host.get("/").status, 404);
    assert_eq!(host.get("/nope/echo").status, 404);
    let health = host.get("/.well-known/spin/health");
    assert_eq!((health.status, health.text().as_str()), (200, "OK"));

    // The second component answers its own route.
    let r = host.get("/two/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("spin-matched-route").as_deref(), Some("/two/..."));

    // Request bodies reach the component; one log line per request.
    let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 7) as u8).collect();
    let r = request(host.addr, "POST", "/echo/upload", &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echoed("method").as_deref(), Some("POST"));
    assert_eq!(r.echoed("body-bytes"), Some(body.len().to_string()));
    let sum: u64 = body.iter().map(|b| *b as u64).sum();
    assert_eq!(r.echoed("body-sum"), Some(sum.to_string()));
    assert!(
        host.wait_for_log("POST /echo/upload 200"),
        "{}",
        host.logs()
    );
    assert!(host.wait_for_log("GET /nope/echo 404"), "{}", host.logs());
    // Guest stderr reaches the host's stderr.
    assert!(host.wait_for_log("probe: echoed"), "{}", host.logs());
}

#[test]
fn variables_from_env_defaults_and_templates() {
    let host = Host::start(&[], &[], &token_env());
    let var = |name: &str| {
        let r = host.get(&format!("/var/{name}"));
        (r.status, r.text())
    };
    assert_eq!(var("greeting"), (200, "hello".into()));
    assert_eq!(var("token"), (200, "tok-s3cret".into()));
    assert_eq!(var("literal"), (200, "plain".into()));
    let (status, text) = var("nope");
    assert_eq!(status, 404, "{text}");
    assert!(text.starts_with("undefined"), "{text}");
    assert_eq!(var("Bad").0, 400);
    // Application variables are not visible unless the component maps them.
    assert_eq!(var("secret_token").0, 404);
    // Each component has its own variables.
    let r = host.get("/two/x");
    assert_eq!(r.status, 200);
    let env = host.get("/env/PROBE_ENV");
    assert_eq!((env.status, env.text().as_str()), (200, "from-manifest"));
    drop(host);

    // The environment overrides a default; --variable overrides both.
    let host = Host::start(
        &[],
        &["--variable", "secret_token=from-flag"],
        &[
            ("SPIN_VARIABLE_GREETING", "bonjour"),
            ("SPIN_VARIABLE_SECRET_TOKEN", "from-env"),
        ],
    );
    assert_eq!(host.get("/var/greeting").text(), "bonjour");
    assert_eq!(host.get("/var/token").text(), "tok-from-flag");
}

#[test]
fn required_variable_without_value_fails_startup() {
    precompile();
    let dir = temp_dir();
    std::fs::write(dir.join("spin.toml"), manifest(&[])).unwrap();
    let mut cmd = Command::new(host_exe());
    cmd.arg("--from").arg(dir.join("spin.toml"));
    cmd.args(["--listen", "127.0.0.1:0"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("SPIN_VARIABLE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("secret_token"), "{err}");
    assert!(err.contains("SPIN_VARIABLE_SECRET_TOKEN"), "{err}");
}

#[test]
fn outbound_allowed_refused_and_private_addresses() {
    let listed = Upstream::start("listed", Duration::ZERO);
    let unlisted = Upstream::start("unlisted", Duration::ZERO);
    let wildcard = Upstream::start("wildcard", Duration::ZERO);
    let named = Upstream::start("named", Duration::ZERO);
    let flagged = Upstream::start("flagged", Duration::ZERO);
    let allowed = vec![
        format!("http://127.0.0.1:{}", listed.addr.port()),
        format!("http://*:{}", wildcard.addr.port()),
        format!("http://localhost:{}", named.addr.port()),
        "{{ empty }}".to_string(),
    ];
    let flag = format!("http://127.0.0.1:{}", flagged.addr.port());
    let host = Host::start(&allowed, &["--allow-outbound", &flag], &token_env());
    let fetch = |url: String| {
        let r = host.get(&format!("/fetch?url={url}"));
        (r.status, r.text())
    };

    // Allowed by spin.toml.
    let (status, text) = fetch(format!("http://127.0.0.1:{}/hello", listed.addr.port()));
    assert_eq!(status, 200, "{text}");
    assert!(
        text.starts_with("status=200\nhello from listed: GET /hello HTTP/1.1"),
        "{text}"
    );

    // Not allowed: refused before any connection, as an error code.
    let (status, text) = fetch(format!("http://127.0.0.1:{}/", unlisted.addr.port()));
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("HttpRequestDenied"), "{text}");
    assert_eq!(unlisted.hits(), 0);
    assert!(host.wait_for_log("refused: not allowed"), "{}", host.logs());
    // Another scheme on an allowed host:port is not allowed either.
    let (_, text) = fetch(format!("https://127.0.0.1:{}/", listed.addr.port()));
    assert!(text.contains("HttpRequestDenied"), "{text}");

    // Allowed by --allow-outbound.
    let (status, text) = fetch(format!("http://127.0.0.1:{}/x", flagged.addr.port()));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("hello from flagged"), "{text}");

    // A wildcard host does not reach loopback, by name or by address.
    let (status, text) = fetch(format!("http://localhost:{}/", wildcard.addr.port()));
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("DestinationIpProhibited"), "{text}");
    let (_, text) = fetch(format!("http://127.0.0.1:{}/", wildcard.addr.port()));
    assert!(text.contains("DestinationIpProhibited"), "{text}");
    assert_eq!(wildcard.hits(), 0);
    assert!(
        host.wait_for_log("is not a public address"),
        "{}",
        host.logs()
    );

    // A host named explicitly may resolve to loopback.
    let (status, text) = fetch(format!("http://localhost:{}/named", named.addr.port()));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("hello from named"), "{text}");

    // The component stays healthy after refusals.
    assert_eq!(host.get("/exact").status, 200);
}

#[test]
fn trap_is_a_500_and_the_host_keeps_serving() {
    let host = Host::start(&[], &[], &token_env());
    for _ in 0..2 {
        let r = host.get("/panic");
        assert_eq!(r.status, 500, "{}", r.text());
        let r = host.get("/exact");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(
        host.wait_for_log("deliberate panic from the probe"),
        "{}",
        host.logs()
    );
    assert!(host.wait_for_log("GET /panic 500"), "{}", host.logs());
}

#[test]
fn concurrent_requests_and_streamed_bodies() {
    let slow = Upstream::start("slow", Duration::from_millis(400));
    let allowed = vec![format!("http://127.0.0.1:{}", slow.addr.port())];
    let host = Arc::new(Host::start(&allowed, &[], &token_env()));

    // 32 requests at once, each waiting 400 ms (half in the guest, half on a
    // slow upstream): concurrent, they take a fraction of the 12.8 s serial.
    let start = Instant::now();
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let host = host.clone();
            let port = slow.addr.port();
            thread::spawn(move || {
                if i % 2 == 0 {
                    host.get("/sleep?ms=400")
                } else {
                    host.get(&format!("/fetch?url=http://127.0.0.1:{port}/{i}"))
                }
            })
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "32 requests took {elapsed:?}"
    );
    assert_eq!(slow.hits(), 16);

    // A large streamed response arrives whole and in order.
    let size = 8 * 1024 * 1024 + 123;
    let r = host.get(&format!("/stream?bytes={size}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), size);
    assert!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8)
    );
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let mut host = Host::start(&[], &[], &token_env());
    let addr = host.addr;
    let in_flight = thread::spawn(move || request(addr, "GET", "/sleep?ms=1000", &[], b""));
    thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-TERM", &host.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "slept 1000");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = host.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "edge-host did not exit after SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}\n{}", host.logs());
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn wasip2_component_with_spin3_variables() {
    let manifest = format!(
        r#"spin_manifest_version = 2
[application]
name = "p2-test"
[variables]
greeting = {{ default = "hi" }}
[[trigger.http]]
route = "/p2/..."
component = "old"
[component.old]
source = '{}'
[component.old.variables]
greeting = "{{{{ greeting }}}} from p2"
"#,
        probe_p2_wasm().display()
    );
    let host = Host::launch(&manifest, &[], &[]);
    let r = host.get("/p2/some/where");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echoed("spin-path-info").as_deref(), Some("/some/where"));
    assert_eq!(
        r.echoed("spin-full-url"),
        Some(format!("http://{}/p2/some/where", host.addr))
    );
    let r = host.get("/p2/var/greeting");
    assert_eq!((r.status, r.text().as_str()), (200, "hi from p2"));
    assert_eq!(host.get("/p2/var/nope").status, 404);
    // One instance per request: several in a row all work.
    for _ in 0..5 {
        assert_eq!(host.get("/p2/x").status, 200);
    }
    assert!(host.wait_for_log("wasi=\"p2\""), "{}", host.logs());
}

/// An app whose `kv` component may open `default` and `extra`, and whose
/// `kv-two` component (routed at `/two/...`) only `default`.
fn key_value_manifest(kv_stores: &str) -> String {
    format!(
        r#"spin_manifest_version = 2
[application]
name = "kv-test"
[[trigger.http]]
route = "/kv/..."
component = "kv"
[[trigger.http]]
route = "/two/..."
component = "kv-two"
[component.kv]
source = '{wasm}'
key_value_stores = {kv_stores}
[component.kv-two]
source = '{wasm}'
key_value_stores = ["default"]
"#,
        wasm = probe_wasm().display()
    )
}

#[test]
fn key_value_store_persists_across_requests() {
    precompile();
    // One request per instance, so what a later request reads cannot come
    // from the instance that wrote it.
    let host = Host::launch(
        &key_value_manifest(r#"["default", "extra"]"#),
        &[
            "--key-value-store",
            "extra",
            "--key-value",
            "seeded=from-flag",
            "--max-instance-reuse-count",
            "1",
        ],
        &[],
    );
    let post = |path: &str, body: &[u8]| request(host.addr, "POST", path, &[], body);
    let get = |path: &str| {
        let r = host.get(path);
        (r.status, r.text())
    };

    // Seeded by --key-value.
    assert_eq!(get("/kv/default/get/seeded"), (200, "from-flag".into()));

    // Set by one request, read back by later ones, and by another component.
    let r = post("/kv/default/set/greeting", b"hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get("/kv/default/get/greeting"), (200, "hello".into()));
    assert_eq!(get("/two/kv/default/get/greeting"), (200, "hello".into()));
    assert_eq!(get("/kv/default/exists/greeting"), (200, "true".into()));
    assert_eq!(
        get("/kv/default/get/missing"),
        (404, "no key missing".into())
    );
    assert_eq!(get("/kv/default/exists/missing"), (200, "false".into()));
    // Overwrite.
    assert_eq!(post("/kv/default/set/greeting", b"hello again").status, 200);
    assert_eq!(get("/kv/default/get/greeting"), (200, "hello again".into()));

    // Values of several MiB (base64 images) go through whole.
    let big: Vec<u8> = (0..5 * 1024 * 1024 + 7).map(|i| (i % 253) as u8).collect();
    let r = post("/kv/default/set/big", &big);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = host.get("/kv/default/get/big");
    assert_eq!(r.status, 200);
    assert!(
        r.body == big,
        "a {}-byte value came back changed",
        big.len()
    );

    // Keys, sorted; each store has its own.
    assert_eq!(
        get("/kv/default/keys"),
        (200, "big\ngreeting\nseeded".into())
    );
    assert_eq!(post("/kv/extra/set/greeting", b"extra's").status, 200);
    assert_eq!(get("/kv/extra/get/greeting"), (200, "extra's".into()));
    assert_eq!(get("/kv/extra/keys"), (200, "greeting".into()));
    assert_eq!(get("/kv/default/get/greeting"), (200, "hello again".into()));

    // Labels the component's key_value_stores does not grant: access-denied,
    // whether or not the store exists.
    assert_eq!(
        get("/two/kv/extra/get/greeting"),
        (403, "access-denied".into())
    );
    assert_eq!(post("/two/kv/extra/set/x", b"1").status, 403);
    assert_eq!(get("/kv/nope/get/greeting"), (403, "access-denied".into()));
    assert_eq!(get("/kv/extra/get/x"), (404, "no key x".into()));

    // Delete: gone for later requests; deleting again is not an error.
    assert_eq!(
        get("/kv/default/delete/greeting"),
        (200, "deleted greeting".into())
    );
    assert_eq!(get("/kv/default/get/greeting").0, 404);
    assert_eq!(get("/kv/default/exists/greeting"), (200, "false".into()));
    assert_eq!(get("/two/kv/default/get/greeting").0, 404);
    assert_eq!(get("/kv/default/keys"), (200, "big\nseeded".into()));
    assert_eq!(get("/kv/default/delete/greeting").0, 200);
    assert_eq!(get("/kv/extra/get/greeting"), (200, "extra's".into()));

    // An instance may have 1024 stores open at once, not more.
    assert_eq!(
        get("/kv/default/open-many?n=1024"),
        (200, "opened 1024".into())
    );
    assert_eq!(
        get("/kv/default/open-many?n=1025"),
        (503, "store-table-full".into())
    );
    assert_eq!(get("/kv/default/get/seeded"), (200, "from-flag".into()));
}

#[test]
fn key_value_store_memory_cap() {
    precompile();
    let host = Host::launch(
        &key_value_manifest(r#"["default"]"#),
        &["--key-value-max-bytes", "3000"],
        &[],
    );
    let set = |key: &str, len: usize| {
        let r = request(
            host.addr,
            "POST",
            &format!("/kv/default/set/{key}"),
            &[],
            &vec![b'x'; len],
        );
        (r.status, r.text())
    };
    assert_eq!(set("a", 1000).0, 200);
    assert_eq!(set("b", 1000).0, 200);
    // Beyond the cap: refused, and what is stored stays.
    assert_eq!(set("c", 1000), (507, "other: store full".into()));
    assert_eq!(set("a", 2000), (507, "other: store full".into()));
    assert_eq!(host.get("/kv/default/get/a").body.len(), 1000);
    assert_eq!(host.get("/kv/default/keys").text(), "a\nb");
    // Deleting makes room.
    assert_eq!(host.get("/kv/default/delete/b").status, 200);
    assert_eq!(set("c", 1000).0, 200);
    assert!(
        host.wait_for_log("refused: the stores hold"),
        "{}",
        host.logs()
    );
}

#[test]
fn key_value_label_without_a_store_fails_startup() {
    precompile();
    let dir = temp_dir();
    std::fs::write(
        dir.join("spin.toml"),
        key_value_manifest(r#"["default", "missing"]"#),
    )
    .unwrap();
    let out = Command::new(host_exe())
        .arg("--from")
        .arg(dir.join("spin.toml"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"unknown key_value_stores label "missing" for component "kv""#),
        "{err}"
    );
    assert!(err.contains("--key-value-store"), "{err}");
}
