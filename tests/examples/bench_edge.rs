//! Timings for `scripts/bench-edge`: what the edge itself costs for one img2img
//! request, without inference, and how many text-to-image requests the edge
//! validates and passes on per second. Prints one JSON line per measurement, then a
//! summary.
//!
//!   bench_edge [--runs N] [--clients C] [--seconds S] [--save-inputs DIR]
//!              (default 20 runs after 2 warm-ups; 8 clients for 5 s; DIR gets the
//!              input PNGs, for the server's own decode + fit timing:
//!              inference/examples/bench_init_image.rs)
//!
//! In one run, on loopback:
//! - an image server (the harness's) serves photo-like PNGs;
//! - an "instant backend" speaks the inference contract (POST /v1/generate) and
//!   answers every valid request at once with one precomputed 1024x1024 PNG;
//! - the real edge-host runs the real spin.toml and edge.wasm against both.
//!
//! "via edge" is one Appypie img2img request from the client's side: the edge
//! parses and validates it, checks the key, fetches the image from loopback,
//! reads its size from the header, puts the bytes as they are into the contract's
//! multipart body (wit/HTTP.md), calls the backend, reads its answer and renders Appypie's. (The inference
//! server decodes and fits the image; bench_init_image times that.)
//! "direct" is the same client doing the transport alone: fetching the same image
//! from the image server, then POSTing the very body the edge sent to the backend
//! and reading the answer. The difference is the edge's work plus its runtime.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e::images::{ImageServer, Route, respond_at_once};
use e2e::{EdgeConfig, Process, arg, start_edge};
use image::{ImageFormat, Rgb, RgbImage};

const KEY: &str = "bench";
const IMG2IMG: &str = "/img2img/getImage/v1/getSDXLImage";
const WARMUPS: usize = 2;
/// The size every request asks for (Appypie's default) and the backend answers.
const OUT: u32 = 1024;
/// The PNG signature: what an init image must start with.
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A photo-like picture: smooth light (gradients, soft waves, a vignette) under
/// sensor-like noise, so that its PNG is about as large as a photo's. A flat test
/// card would compress to almost nothing and make fetching and decoding look free.
fn photo(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut noise = move || {
        // xorshift64*: deterministic, no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((r >> 59) as i32) - 16 // -16..=15
    };
    RgbImage::from_fn(width, height, |x, y| {
        let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
        let wave = (u * 9.0 + v * 4.0).sin() * 28.0 + (v * 13.0 - u * 3.0).cos() * 18.0;
        let (du, dv) = (u - 0.5, v - 0.45);
        let vignette = 1.0 - 0.9 * (du * du + dv * dv);
        let base = [
            40.0 + 150.0 * u + wave,
            70.0 + 110.0 * (1.0 - v) + 0.6 * wave,
            150.0 - 90.0 * u * v - 0.4 * wave,
        ];
        Rgb(base.map(|c| (c * vignette + noise() as f32 * 0.5).clamp(0.0, 255.0) as u8))
    })
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .expect("encoding a PNG in memory");
    out.into_inner()
}

/// A request as the backend got it.
#[derive(Clone)]
struct Captured {
    content_type: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct Seen {
    valid: usize,
    invalid: Vec<String>,
    /// The last valid request: its Content-Type and body (moved in, not copied).
    last: Option<Captured>,
}

/// The "instant backend": a benchmark fixture, not a test mock. It speaks the
/// inference contract (wit/HTTP.md: POST /v1/generate) so that the edge does all
/// of its real work, checks that each request is a valid img2img generate-request
/// (anything else gets the contract's InvalidRequest, and the bench stops), and
/// answers with a precomputed generate-result, so inference costs about nothing
/// and what is timed is the edge. The same checks run for the direct requests, so
/// they cost the same on both sides.
struct InstantBackend {
    origin: String,
    seen: Arc<Mutex<Seen>>,
    server: Arc<tiny_http::Server>,
}

impl InstantBackend {
    fn start(result_png: &[u8]) -> InstantBackend {
        let result = contract::GenerateResult {
            model: "bench-instant".into(),
            steps: 20,
            guidance: 5.0,
            scheduler: "EulerDiscreteScheduler".into(),
            images: vec![contract::GeneratedImage {
                png: base64::engine::general_purpose::STANDARD.encode(result_png),
                seed: 42,
                width: OUT,
                height: OUT,
                nsfw: None,
            }],
            timings: contract::Timings {
                queued_ms: 0,
                prepare_ms: 0,
                denoise_ms: 0,
                decode_ms: 0,
                total_ms: 0,
            },
        };
        let result = Arc::new(serde_json::to_vec(&result).expect("serialising the result"));
        let server = Arc::new(e2e::images::loopback_server());
        let origin = format!(
            "http://{}",
            server.server_addr().to_ip().expect("an IP address")
        );
        let seen = Arc::new(Mutex::new(Seen::default()));
        for _ in 0..4 {
            let (server, seen, result) = (server.clone(), seen.clone(), result.clone());
            thread::spawn(move || {
                for mut req in server.incoming_requests() {
                    if req.url() != contract::GENERATE_PATH
                        || *req.method() != tiny_http::Method::Post
                    {
                        let _ = req.respond(tiny_http::Response::empty(404));
                        continue;
                    }
                    let header = |name: &'static str| {
                        req.headers()
                            .iter()
                            .find(|h| h.field.equiv(name))
                            .map(|h| h.value.to_string())
                    };
                    let trace_id = header(contract::TRACE_HEADER).unwrap_or_default();
                    let content_type = header("Content-Type").unwrap_or_default();
                    let mut body = Vec::new();
                    let checked = req
                        .as_reader()
                        .read_to_end(&mut body)
                        .map_err(|e| format!("reading the body: {e}"))
                        .and_then(|_| check_request(&content_type, &body));
                    let headers = [
                        ("Content-Type", "application/json"),
                        (contract::TRACE_HEADER, trace_id.as_str()),
                    ];
                    let _ = match checked {
                        Ok(()) => {
                            {
                                let mut seen = seen.lock().unwrap();
                                seen.valid += 1;
                                seen.last = Some(Captured { content_type, body });
                            }
                            respond_at_once(req, 200, &headers, &result)
                        }
                        Err(message) => {
                            seen.lock().unwrap().invalid.push(message.clone());
                            let error = contract::Error::InvalidRequest(message);
                            let body = serde_json::to_vec(&error).expect("serialising an error");
                            respond_at_once(req, 400, &headers, &body)
                        }
                    };
                }
            });
        }
        InstantBackend {
            origin,
            seen,
            server,
        }
    }

    fn valid(&self) -> usize {
        self.seen.lock().unwrap().valid
    }

    fn last_request(&self) -> Captured {
        let seen = self.seen.lock().unwrap();
        assert!(
            seen.invalid.is_empty(),
            "the edge sent invalid requests: {:?}",
            seen.invalid
        );
        seen.last.clone().expect("the backend got a request")
    }
}

impl Drop for InstantBackend {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// What every request must be for the bench to count: a generate-request (read with
/// the contract's own reader, as the inference server reads it) for one image of a
/// given size; with an init image, a PNG.
fn check_request(content_type: &str, body: &[u8]) -> Result<(), String> {
    let got = contract::wire::read(Some(content_type), body.to_vec().into())
        .map_err(|e| format!("not a generate-request: {e}"))?;
    let req = got.request;
    if req.width.is_none() || req.height.is_none() || req.samples != 1 {
        return Err(format!(
            "asked for {} image(s) of {:?}x{:?}",
            req.samples, req.width, req.height
        ));
    }
    if req.prompt.is_empty() || req.steps == Some(0) {
        return Err(format!("prompt {:?}, steps {:?}", req.prompt, req.steps));
    }
    let (Some(init), Some(image)) = (req.init_image.as_ref(), got.images.init_image) else {
        return Ok(());
    };
    if !(init.strength > 0.0 && init.strength <= 1.0) {
        return Err(format!("strength {}", init.strength));
    }
    if !image.starts_with(PNG_MAGIC) || image.len() < 4096 {
        return Err(format!(
            "the init image is not a PNG ({} bytes)",
            image.len()
        ));
    }
    Ok(())
}

/// The init image's bytes inside a captured request (outside the timed part).
fn init_image_of(request: &Captured) -> Vec<u8> {
    let got = contract::wire::read(Some(&request.content_type), request.body.clone().into())
        .expect("checked before");
    got.images.init_image.expect("checked before").to_vec()
}

struct Reply {
    status: u16,
    trace_id: Option<String>,
    body: Vec<u8>,
}

fn read(resp: Result<ureq::Response, ureq::Error>, what: &str) -> Reply {
    let resp = match resp {
        Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => panic!("{what}: {e}"),
    };
    let status = resp.status();
    let trace_id = resp.header("x-trace-id").map(str::to_string);
    let mut body = Vec::new();
    resp.into_reader()
        .read_to_end(&mut body)
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
    Reply {
        status,
        trace_id,
        body,
    }
}

struct Bench<'a> {
    agent: ureq::Agent,
    edge: &'a Process,
    edge_url: String,
    images: &'a ImageServer,
    backend: &'a InstantBackend,
    /// What the backend answers with, as the client must get it back.
    result_b64: String,
    runs: usize,
}

struct Timed {
    edge_s: Vec<f64>,
    direct_s: Vec<f64>,
    /// The edge's own time for each timed request (its log line's `ms`).
    component_s: Vec<f64>,
    input_bytes: usize,
    request_bytes: usize,
    response_bytes: usize,
}

impl Bench<'_> {
    /// One Appypie img2img request through the edge: (seconds, reply).
    fn via_edge(&self, body: &str) -> (f64, Reply) {
        let t = Instant::now();
        let reply = read(
            self.agent
                .post(&self.edge_url)
                .set("Content-Type", "application/json")
                .set("Ocp-Apim-Subscription-Key", KEY)
                .send_string(body),
            "POST to the edge",
        );
        let secs = t.elapsed().as_secs_f64();
        (secs, reply)
    }

    /// The transport alone: the image from the image server, then the edge's own
    /// request body straight to the backend. (seconds, image reply, backend reply).
    fn direct(&self, image_url: &str, request: &Captured) -> (f64, Reply, Reply) {
        let t = Instant::now();
        let image = read(self.agent.get(image_url).call(), "GET of the image");
        let generated = read(
            self.agent
                .post(&format!(
                    "{}{}",
                    self.backend.origin,
                    contract::GENERATE_PATH
                ))
                .set("Content-Type", &request.content_type)
                .send_bytes(&request.body),
            "POST to the backend",
        );
        let secs = t.elapsed().as_secs_f64();
        (secs, image, generated)
    }

    fn check_edge_reply(&self, reply: &Reply) {
        assert_eq!(
            reply.status,
            200,
            "the edge answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        let body: serde_json::Value =
            serde_json::from_slice(&reply.body).expect("the edge answers JSON");
        assert_eq!(
            body["image_data"].as_str(),
            Some(self.result_b64.as_str()),
            "the edge's answer does not carry the backend's image"
        );
    }

    /// The edge's log line for a request: `{"traceId": ..., "ms": N, ...}`.
    fn component_secs(&self, trace_id: &str) -> Option<f64> {
        let needle = format!("\"traceId\":\"{trace_id}\"");
        let line = self
            .edge
            .output()
            .into_iter()
            .find(|l| l.contains(&needle))?;
        let json: serde_json::Value = serde_json::from_str(&line[line.find('{')?..]).ok()?;
        Some(json["ms"].as_f64()? / 1000.0)
    }

    fn scenario(&mut self, path: &str, source_png: &[u8]) -> Timed {
        let image_url = self.images.url(path);
        let body = serde_json::json!({
            "prompt": "a lighthouse at dusk, oil painting",
            "inputImage": image_url,
            "size": format!("{OUT}x{OUT}"),
        })
        .to_string();

        let hits_before = self.images.hits().len();
        let valid_before = self.backend.valid();
        for _ in 0..WARMUPS {
            let (_, reply) = self.via_edge(&body);
            self.check_edge_reply(&reply);
        }
        // The JSON the edge sent, checked in full here (the backend's per-request
        // check is cheaper): it carries the source's own bytes, for 1024x1024.
        let request = self.backend.last_request();
        assert!(
            init_image_of(&request) == source_png,
            "the init image is not the source's bytes"
        );
        for _ in 0..WARMUPS {
            self.direct(&image_url, &request);
        }

        let (mut edge_s, mut direct_s, mut trace_ids) = (Vec::new(), Vec::new(), Vec::new());
        let mut response_bytes = 0;
        for _ in 0..self.runs {
            let (secs, image, generated) = self.direct(&image_url, &request);
            assert_eq!(
                (image.status, image.body.len()),
                (200, source_png.len()),
                "the direct image fetch"
            );
            assert_eq!(
                generated.status,
                200,
                "the backend refused the edge's own request: {}",
                String::from_utf8_lossy(&generated.body)
            );
            direct_s.push(secs);

            let (secs, reply) = self.via_edge(&body);
            self.check_edge_reply(&reply);
            response_bytes = reply.body.len();
            trace_ids.push(reply.trace_id.expect("the edge sends x-trace-id"));
            edge_s.push(secs);
        }

        // Nothing was answered from a cache: every edge request fetched the image
        // and made a valid backend call, as did every direct one.
        let requests = 2 * (WARMUPS + self.runs);
        assert_eq!(self.images.hits().len() - hits_before, requests);
        assert_eq!(self.backend.valid() - valid_before, requests);
        self.backend.last_request(); // no invalid ones either

        // The component's log lines come on stderr, maybe a moment after the reply.
        thread::sleep(Duration::from_millis(200));
        for l in self.edge.output() {
            if l.contains("T ") {
                eprintln!("{l}");
            }
        }
        let component_s = trace_ids
            .iter()
            .filter_map(|id| self.component_secs(id))
            .collect();
        Timed {
            edge_s,
            direct_s,
            component_s,
            input_bytes: source_png.len(),
            request_bytes: request.body.len(),
            response_bytes,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = arg(&args, "--runs", 20);
    assert!(runs > 0, "--runs must be at least 1");
    let clients: usize = arg(&args, "--clients", 8);
    let seconds: f64 = arg(&args, "--seconds", 5.0);
    let save_inputs: Option<String> = args.iter().position(|a| a == "--save-inputs").map(|i| {
        args.get(i + 1)
            .expect("--save-inputs needs a folder")
            .clone()
    });
    let load_before = loadavg();

    // (what, route, source width, source height)
    let cases = [
        (
            "img2img_1024_from_1024x1024_png",
            "/photo-1024.png",
            1024,
            1024,
        ),
        (
            "img2img_1024_from_1600x1200_png",
            "/photo-1600.png",
            1600,
            1200,
        ),
    ];
    let sources: Vec<Vec<u8>> = cases
        .iter()
        .enumerate()
        .map(|(i, &(_, _, w, h))| png(&photo(w, h, i as u64 + 1)))
        .collect();
    let routes: HashMap<String, Route> = cases
        .iter()
        .zip(&sources)
        .map(|(&(_, path, _, _), bytes)| {
            let route = Route::Ok {
                content_type: "image/png",
                body: bytes.clone(),
            };
            (path.to_string(), route)
        })
        .collect();
    let images = ImageServer::start(routes);

    let result_png = png(&photo(OUT, OUT, 99));
    let backend = InstantBackend::start(&result_png);
    let (edge, edge_origin) = start_edge(&EdgeConfig {
        inference_url: &backend.origin,
        api_keys: KEY,
        image_hosts: &images.origin,
        variables: vec![],
        runtime_allows_image_hosts: true,
    });

    let mut bench = Bench {
        agent: ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build(),
        edge: &edge,
        edge_url: format!("{edge_origin}{IMG2IMG}"),
        images: &images,
        backend: &backend,
        result_b64: base64::engine::general_purpose::STANDARD.encode(&result_png),
        runs,
    };

    let mut summary = Vec::new();
    for (&(what, path, w, h), bytes) in cases.iter().zip(&sources) {
        let t = bench.scenario(path, bytes);
        let (e, d) = (median(t.edge_s.clone()), median(t.direct_s.clone()));
        let c = (!t.component_s.is_empty()).then(|| median(t.component_s.clone()));
        let sizes = format!(
            r#""input_png_bytes":{},"backend_request_bytes":{},"response_bytes":{}"#,
            t.input_bytes, t.request_bytes, t.response_bytes
        );
        println!(
            r#"{{"bench":"edge","what":"{what}","path":"direct","median_s":{d:.4},"runs_s":{:?},{sizes}}}"#,
            t.direct_s
        );
        println!(
            r#"{{"bench":"edge","what":"{what}","path":"via_edge","median_s":{e:.4},"runs_s":{:?},{sizes}}}"#,
            t.edge_s
        );
        if let Some(c) = c {
            println!(
                r#"{{"bench":"edge","what":"{what}","path":"edge_component_log","median_s":{c:.4},"runs_s":{:?}}}"#,
                t.component_s
            );
        }
        let label = format!(
            "{w}x{h} PNG ({:.1} MB) -> {OUT}x{OUT}",
            t.input_bytes as f64 / 1e6
        );
        let own = c.map_or(String::new(), |c| {
            format!("; in the component {:.0} ms", c * 1000.0)
        });
        summary.push(format!(
            "{label:54} direct {:6.1} ms   via edge {:6.1} ms   ratio {:5.2}   (+{:.0} ms{own}; median of {runs})",
            d * 1000.0,
            e * 1000.0,
            e / d,
            (e - d) * 1000.0,
        ));
    }
    drop(bench);

    if let Some(dir) = &save_inputs {
        std::fs::create_dir_all(dir).expect("creating the --save-inputs folder");
        for (&(what, ..), bytes) in cases.iter().zip(&sources) {
            std::fs::write(format!("{dir}/{what}.png"), bytes).expect("saving an input");
        }
    }

    summary.push(throughput(&edge_origin_for_txt2img(), clients, seconds));

    println!();
    println!(
        "Appypie img2img to {OUT}x{OUT}, inference answered instantly; load average {load_before} before, {} after",
        loadavg()
    );
    for line in summary {
        println!("{line}");
    }
}

/// An edge whose backend answers instantly with a small image: only the edge's
/// own work for a text-to-image request is left to time. (origin)
fn edge_origin_for_txt2img() -> String {
    let backend = Box::leak(Box::new(InstantBackend::start(&png(&photo(64, 64, 7)))));
    let (edge, origin) = start_edge(&EdgeConfig {
        inference_url: &backend.origin,
        api_keys: KEY,
        image_hosts: "",
        variables: vec![],
        runtime_allows_image_hosts: false,
    });
    // Lives as long as the bench.
    Box::leak(Box::new(edge));
    origin
}

/// Validated Appypie text-to-image requests per second through the edge, from
/// `clients` keep-alive clients for `seconds`, with p50 and p99 latency.
fn throughput(edge_origin: &str, clients: usize, seconds: f64) -> String {
    let url = format!("{edge_origin}/getImage/v1/getSDXLImage");
    let body = r#"{"prompt":"a lighthouse at dusk, oil painting","size":"64x64","seed":3}"#;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let latencies: Vec<f64> = thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let url = url.clone();
                s.spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(30))
                        .build();
                    let mut times = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let reply = read(
                            agent
                                .post(&url)
                                .set("Content-Type", "application/json")
                                .set("Ocp-Apim-Subscription-Key", KEY)
                                .send_string(body),
                            "POST to the edge",
                        );
                        assert_eq!(
                            reply.status,
                            200,
                            "{}",
                            String::from_utf8_lossy(&reply.body)
                        );
                        times.push(t.elapsed().as_secs_f64());
                    }
                    times
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a client thread"))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let rate = latencies.len() as f64 / elapsed;
    println!(
        r#"{{"bench":"edge","what":"txt2img_64_throughput","clients":{clients},"seconds":{elapsed:.2},"requests":{},"per_s":{rate:.1},"p50_s":{:.4},"p99_s":{:.4}}}"#,
        latencies.len(),
        pct(0.5),
        pct(0.99)
    );
    format!(
        "{:54} {rate:6.0} req/s   p50 {:5.1} ms   p99 {:5.1} ms   ({clients} clients, {elapsed:.0} s)",
        "txt2img through the edge, instant backend",
        pct(0.5) * 1000.0,
        pct(0.99) * 1000.0
    )
}
