//! `scripts/soak`: sustained mixed traffic at the whole stack (the real edge.wasm in
//! edge-host, the inference server on the tiny model) while both processes' memory
//! is sampled. Prints one JSON line of results and exits non-zero if a rule broke:
//!
//! - both processes are alive and healthy at the end;
//! - every valid request was served (200) or refused with 503 and Retry-After;
//! - every invalid or oversized request got a 4xx (or, from a full inference server,
//!   which refuses before reading a body, 503 with Retry-After);
//! - every slow client was cut off (closed within the servers' time limits);
//! - each process's peak memory (VmRSS) stayed within its bound.
//!
//! Usage: `soak [--seconds S] [--clients C] [--slow-clients N] [--max-edge-mb M]
//! [--max-inference-mb M]` (defaults: 120 s, 6, 2, 300, 1500).
//!
//! The inference server runs with a queue of 4, so that the 503 path is exercised.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e::images::{ImageServer, Route, encode, test_picture};
use e2e::{EdgeConfig, Process, arg, start_edge, start_inference_with};
use image::ImageFormat;

const KEY: &str = "soak";
/// Bodies over each server's cap (the edge reads 16 MiB, the server 96 MiB), made once.
static EDGE_OVERSIZED: LazyLock<Vec<u8>> = LazyLock::new(|| vec![b' '; 40 << 20]);
static INFERENCE_OVERSIZED: LazyLock<Vec<u8>> = LazyLock::new(|| vec![b' '; 100 << 20]);

/// What a request is expected to get.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Class {
    /// 200, or 503 with Retry-After.
    Valid,
    /// A 4xx; or 503 with Retry-After from a full inference server, which refuses
    /// before it reads a body at all.
    Invalid,
    /// A 4xx (413 as a rule), or the connection closed while sending.
    Oversized,
}

struct Request {
    name: &'static str,
    class: Class,
    url: String,
    method: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Cow<'static, [u8]>,
}

/// Counts per request name and status, and what broke a rule.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<(&'static str, String), u64>,
    valid_ms: Vec<f64>,
    broken: Vec<String>,
}

fn post(
    name: &'static str,
    class: Class,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: impl Into<Cow<'static, [u8]>>,
) -> Request {
    Request {
        name,
        class,
        url,
        method: "POST",
        headers,
        body: body.into(),
    }
}

fn json(
    name: &'static str,
    class: Class,
    url: String,
    key_header: Option<(&'static str, String)>,
    body: serde_json::Value,
) -> Request {
    let mut headers = vec![("content-type", "application/json".to_string())];
    headers.extend(key_header);
    post(name, class, url, headers, body.to_string().into_bytes())
}

/// Every kind of request the soak sends, in the order the clients cycle through.
fn requests(edge: &str, inference: &str, image_url: &str, seed: u64) -> Vec<Request> {
    let png = encode(&test_picture(64, 64, (seed % 200) as u8), ImageFormat::Png);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let appypie_key = Some(("ocp-apim-subscription-key", KEY.to_string()));
    let bearer = Some(("authorization", format!("Bearer {KEY}")));
    let boundary = format!("soak{seed}");
    let mut form = Vec::new();
    for (name, value) in [
        ("prompt", "add an apple"),
        ("steps", "10"),
        ("width", "64"),
        ("height", "64"),
    ] {
        write!(
            form,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .unwrap();
    }
    write!(form, "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").unwrap();
    form.extend_from_slice(&png);
    write!(form, "\r\n--{boundary}--\r\n").unwrap();
    // A WebP whose container says 64x64 and whose frame says 12000x12000.
    let mut bomb = encode(&test_picture(64, 64, 1), ImageFormat::WebP);
    if let Some(i) = bomb.windows(4).position(|w| w == b"VP8L") {
        // VP8L: signature byte, then 14-bit width-1 and height-1.
        let bits: u32 = 11999 | (11999 << 14);
        bomb[i + 9..i + 13].copy_from_slice(&bits.to_le_bytes());
    }
    let bomb_b64 = base64::engine::general_purpose::STANDARD.encode(&bomb);
    vec![
        json(
            "appypie_txt2img",
            Class::Valid,
            format!("{edge}/getImage/v1/getSDXLImage"),
            appypie_key.clone(),
            serde_json::json!({"prompt": "soak", "size": "64x64", "num_inference_steps": 2, "seed": seed}),
        ),
        json(
            "hyperbolic_img2img",
            Class::Valid,
            format!("{edge}/v1/image/generation"),
            bearer.clone(),
            serde_json::json!({"model_name": "SDXL1.0-base", "prompt": "soak", "image": b64, "strength": 0.6, "steps": 3, "width": 64, "height": 64, "seed": seed}),
        ),
        json(
            "modelslab_img2img_url",
            Class::Valid,
            format!("{edge}/api/v6/images/img2img"),
            None,
            serde_json::json!({"key": KEY, "prompt": "soak", "init_image": image_url, "width": "64", "height": "64", "num_inference_steps": "2", "strength": 0.5, "seed": seed}),
        ),
        post(
            "holmesai_control_multipart",
            Class::Valid,
            format!("{edge}/v1/images/control"),
            vec![
                (
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                ),
                ("authorization", format!("Bearer {KEY}")),
            ],
            form,
        ),
        json(
            "inference_direct",
            Class::Valid,
            format!("{inference}/v1/generate"),
            None,
            serde_json::json!({"model": "SD1.5", "prompt": "soak", "width": 64, "height": 64, "steps": 2, "seed": seed, "samples": 1}),
        ),
        post(
            "bad_json",
            Class::Invalid,
            format!("{edge}/getImage/v1/getSDXLImage"),
            vec![
                ("content-type", "application/json".into()),
                ("ocp-apim-subscription-key", KEY.into()),
            ],
            b"{\"prompt\": ".to_vec(),
        ),
        json(
            "wrong_key",
            Class::Invalid,
            format!("{edge}/v1/image/generation"),
            Some(("authorization", "Bearer nope".into())),
            serde_json::json!({"prompt": "soak"}),
        ),
        json(
            "too_many_steps",
            Class::Invalid,
            format!("{edge}/getImage/v1/getSDXLImage"),
            appypie_key.clone(),
            serde_json::json!({"prompt": "soak", "num_inference_steps": 1000}),
        ),
        json(
            "webp_frame_bomb",
            Class::Invalid,
            format!("{edge}/v1/image/generation"),
            bearer.clone(),
            serde_json::json!({"prompt": "soak", "image": bomb_b64}),
        ),
        json(
            "inference_too_big",
            Class::Invalid,
            format!("{inference}/v1/generate"),
            None,
            serde_json::json!({"model": "SD1.5", "prompt": "soak", "width": 4096, "height": 4096, "steps": 1000, "samples": 8}),
        ),
        Request {
            name: "unknown_path",
            class: Class::Invalid,
            url: format!("{edge}/v2/nothing"),
            method: "POST",
            headers: vec![],
            body: Cow::Borrowed(b"{}"),
        },
        Request {
            name: "wrong_method",
            class: Class::Invalid,
            url: format!("{edge}/v1/image/generation"),
            method: "GET",
            headers: vec![],
            body: Cow::Borrowed(b""),
        },
        post(
            "oversized_edge",
            Class::Oversized,
            format!("{edge}/v1/image/generation"),
            vec![
                ("content-type", "application/json".into()),
                ("authorization", format!("Bearer {KEY}")),
            ],
            &EDGE_OVERSIZED[..],
        ),
        post(
            "oversized_inference",
            Class::Oversized,
            format!("{inference}/v1/generate"),
            vec![("content-type", "application/json".into())],
            &INFERENCE_OVERSIZED[..],
        ),
    ]
}

/// Sends one request and checks its answer against its class.
fn send(agent: &ureq::Agent, req: &Request, tally: &Mutex<Tally>) {
    let started = Instant::now();
    let mut call = agent.request(req.method, &req.url);
    for (name, value) in &req.headers {
        call = call.set(name, value);
    }
    let result = if req.body.is_empty() {
        call.call()
    } else {
        call.send_bytes(&req.body)
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, retry_after, outcome) = match result {
        Ok(r) => (
            r.status(),
            r.header("retry-after").is_some(),
            r.status().to_string(),
        ),
        Err(ureq::Error::Status(code, r)) => {
            let retry_after = r.header("retry-after").is_some();
            let mut body = r.into_string().unwrap_or_default();
            body.truncate(160);
            (code, retry_after, format!("{code} {body}"))
        }
        Err(e) => (0, false, format!("transport: {}", e.kind())),
    };
    let ok = match req.class {
        Class::Valid => status == 200 || (status == 503 && retry_after),
        Class::Invalid => (400..500).contains(&status) || (status == 503 && retry_after),
        // The server may answer 413 and close before the client has sent it all.
        Class::Oversized => (400..500).contains(&status) || status == 0,
    };
    let mut t = tally.lock().unwrap();
    let label = match status {
        0 => "closed".to_string(),
        503 if retry_after => "503+retry-after".to_string(),
        code => code.to_string(),
    };
    *t.statuses.entry((req.name, label)).or_default() += 1;
    if req.class == Class::Valid && status == 200 {
        t.valid_ms.push(ms);
    }
    if !ok && t.broken.len() < 20 {
        t.broken
            .push(format!("{} got {outcome} after {ms:.0} ms", req.name));
    }
}

/// A client that never finishes: a head without its end, or a body that stops. The
/// server must close the connection; how long it took is returned.
fn slow_client(addr: &str, path: &str, head_only: bool) -> Result<Duration, String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let started = Instant::now();
    let sent = if head_only {
        conn.write_all(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    } else {
        conn.write_all(format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"prompt\"").as_bytes())
    };
    sent.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(started.elapsed());
            }
            Err(e) => return Err(format!("still open after {:?}: {e}", started.elapsed())),
        }
    }
}

/// VmRSS of a process, in MiB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

fn alive_and_healthy(p: &mut Process, health: &str) -> bool {
    p.is_running()
        && ureq::get(health)
            .timeout(Duration::from_secs(10))
            .call()
            .is_ok()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = arg(&args, "--seconds", 120);
    let clients: usize = arg(&args, "--clients", 6);
    let slow_clients: usize = arg(&args, "--slow-clients", 2);
    let max_edge_mb: f64 = arg(&args, "--max-edge-mb", 300.0);
    let max_inference_mb: f64 = arg(&args, "--max-inference-mb", 1500.0);

    let photo = encode(&test_picture(96, 64, 7), ImageFormat::Png);
    let images = ImageServer::start(HashMap::from([(
        "/photo.png".to_string(),
        Route::Ok {
            content_type: "image/png",
            body: photo,
        },
    )]));
    let (mut inference, inference_url) = start_inference_with(&["--queue-size", "4"]);
    let (mut edge, edge_url) = start_edge(&EdgeConfig {
        inference_url: &inference_url,
        api_keys: KEY,
        image_hosts: &images.origin,
        // Stored ModelsLab results would reach the per-key caps in a long soak.
        variables: vec![
            ("KEY_MAX_IMAGES", "1000000"),
            ("KEY_MAX_STORED_MB", "100000"),
        ],
        runtime_allows_image_hosts: true,
    });
    let (edge_pid, inference_pid) = (edge.pid(), inference.pid());
    let image_url = images.url("/photo.png");

    let tally = Arc::new(Mutex::new(Tally::default()));
    let samples: Arc<Mutex<Vec<(f64, f64, f64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);

    let mut threads = Vec::new();
    {
        let (samples, stop) = (samples.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = started.elapsed().as_secs_f64();
                let (e, i) = (
                    rss_mb(edge_pid).unwrap_or(f64::NAN),
                    rss_mb(inference_pid).unwrap_or(f64::NAN),
                );
                samples.lock().unwrap().push((t, e, i));
                thread::sleep(Duration::from_millis(500));
            }
        }));
    }
    for c in 0..clients {
        let (tally, edge_url, inference_url, image_url) = (
            tally.clone(),
            edge_url.clone(),
            inference_url.clone(),
            image_url.clone(),
        );
        threads.push(thread::spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(300))
                .build();
            let mut n = c as u64;
            while Instant::now() < deadline {
                let all = requests(&edge_url, &inference_url, &image_url, n);
                let req = &all[(n as usize) % all.len()];
                send(&agent, req, &tally);
                n += clients as u64;
            }
        }));
    }
    let slow_counts: Arc<Mutex<(u64, Vec<f64>)>> = Arc::default();
    for s in 0..slow_clients {
        let (tally, slow_counts) = (tally.clone(), slow_counts.clone());
        let targets = [
            (
                edge_url.trim_start_matches("http://").to_string(),
                "/v1/image/generation",
            ),
            (
                inference_url.trim_start_matches("http://").to_string(),
                "/v1/generate",
            ),
        ];
        threads.push(thread::spawn(move || {
            let mut n = s;
            while Instant::now() < deadline {
                let (addr, path) = &targets[n % 2];
                match slow_client(addr, path, n % 4 < 2) {
                    Ok(took) => {
                        let mut c = slow_counts.lock().unwrap();
                        c.0 += 1;
                        c.1.push(took.as_secs_f64());
                    }
                    Err(e) => tally
                        .lock()
                        .unwrap()
                        .broken
                        .push(format!("slow client on {addr}: {e}")),
                }
                n += 1;
            }
        }));
    }
    let workers = threads.split_off(1);
    for t in workers {
        t.join().expect("a client thread panicked");
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    let mut t = tally.lock().unwrap();
    let inference_ok = alive_and_healthy(&mut inference, &format!("{inference_url}/health"));
    let edge_ok = edge.is_running();
    if !inference_ok {
        t.broken
            .push("the inference server is down or unhealthy".into());
    }
    if !edge_ok {
        t.broken.push("the edge runtime exited".into());
    }
    let samples = samples.lock().unwrap();
    let peak = |f: fn(&(f64, f64, f64)) -> f64| samples.iter().map(f).fold(0.0, f64::max);
    let (edge_peak, inference_peak) = (peak(|s| s.1), peak(|s| s.2));
    // After the first 10% of the run (start-up, first loads) to the end.
    let settled = samples
        .iter()
        .find(|s| s.0 >= seconds as f64 * 0.1)
        .copied()
        .unwrap_or((0.0, f64::NAN, f64::NAN));
    let last = samples.last().copied().unwrap_or((0.0, f64::NAN, f64::NAN));
    if edge_peak > max_edge_mb {
        t.broken.push(format!(
            "edge-host peaked at {edge_peak:.0} MiB (bound {max_edge_mb})"
        ));
    }
    if inference_peak > max_inference_mb {
        t.broken.push(format!(
            "the inference server peaked at {inference_peak:.0} MiB (bound {max_inference_mb})"
        ));
    }
    // Both processes' memory at each tenth of the run, to show its trend.
    let series: Vec<_> = (1..=10)
        .filter_map(|k| {
            let t = seconds as f64 * k as f64 / 10.0;
            let s = samples.iter().rev().find(|s| s.0 <= t)?;
            Some(serde_json::json!([s.0.round(), s.1.round(), s.2.round()]))
        })
        .collect();
    let (slow_n, mut slow_secs) = slow_counts.lock().unwrap().clone();
    let statuses: BTreeMap<String, u64> = t
        .statuses
        .iter()
        .map(|((n, s), c)| (format!("{n} {s}"), *c))
        .collect();
    let total: u64 = statuses.values().sum();
    let mut valid_ms = t.valid_ms.clone();
    let report = serde_json::json!({
        "seconds": seconds,
        "clients": clients,
        "slow_clients": slow_clients,
        "requests": total,
        "statuses": statuses,
        "valid_served_p50_ms": percentile(&mut valid_ms, 0.5),
        "valid_served_p99_ms": percentile(&mut valid_ms, 0.99),
        "slow_clients_cut_off": slow_n,
        "slow_cut_off_p50_s": percentile(&mut slow_secs, 0.5),
        "slow_cut_off_max_s": percentile(&mut slow_secs, 1.0),
        "edge_rss_mb": {"settled": settled.1, "peak": edge_peak, "end": last.1, "bound": max_edge_mb},
        "inference_rss_mb": {"settled": settled.2, "peak": inference_peak, "end": last.2, "bound": max_inference_mb},
        "rss_mb_series_t_edge_inference": series,
        "broken": t.broken,
    });
    println!("{report}");
    if !t.broken.is_empty() {
        std::process::exit(1);
    }
}
