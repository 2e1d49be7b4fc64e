//! The inference server as a service, over real sockets: the queue under overload,
//! batching with each caller getting its own images, a server killed and restarted
//! under load, failover across inference URLs, the edge's token, the catalog (unknown
//! names, defaults, the memory budget), deadlines and callers that leave.

use std::io::Write as _;
use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e::{
    EdgeConfig, Process, Reply, free_port, get, post, spin_pass_skips_edgeless_test,
    start_edge_allowing, start_inference_with, start_inference_with_catalog, tiny_model,
};
use serde_json::{Value, json};

const KEY: &str = "serving-key";
const TOKEN: &str = "edge-to-server-token";

fn edge_to(inference_url: &str, variables: Vec<(&str, &str)>) -> (Process, String) {
    // Further inference servers go in spin.toml's inference_url_N slots, which the
    // runtime allows too (the more_inference_urls list alone it would refuse).
    let (more, variables): (Vec<_>, Vec<_>) = variables
        .into_iter()
        .partition(|(k, _)| *k == "MORE_INFERENCE_URLS");
    let more: Vec<&str> = more.iter().flat_map(|(_, v)| v.split(',')).collect();
    let cfg = EdgeConfig {
        inference_url,
        api_keys: KEY,
        image_hosts: "",
        variables,
        runtime_allows_image_hosts: false,
    };
    start_edge_allowing(&cfg, &more)
}

/// An Appypie text-to-image request through the edge.
fn appypie(edge: &str, prompt: &str, seed: u64, size: u32, steps: u32) -> Reply {
    let body = json!({
        "prompt": prompt, "seed": seed, "size": format!("{size}x{size}"),
        "num_inference_steps": steps,
    });
    post(
        &format!("{edge}/getImage/v1/getSDXLImage"),
        &[
            ("Ocp-Apim-Subscription-Key", KEY),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    )
}

/// A generate-request straight to the server (the contract of wit/).
fn generate(server: &str, request: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    post(&format!("{server}/v1/generate"), &all, &request.to_string())
}

fn request(prompt: &str, seed: u64, side: u32, steps: u32) -> Value {
    json!({
        "model": "stable-diffusion-xl-base-1.0", "prompt": prompt, "negative_prompt": null,
        "width": side, "height": side, "steps": steps, "guidance": 5.0, "seed": seed,
        "samples": 1, "scheduler": null, "karras": null, "init_image": null,
    })
}

fn decode_png(b64: &str) -> image::RgbImage {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    image::load_from_memory(&bytes).expect("a PNG").to_rgb8()
}

/// Largest per-channel difference (batched and alone may differ by a rounding step).
fn max_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// The value of a Prometheus sample line, e.g. `sdgate_batch_requests_sum`.
fn metric(server: &str, name: &str) -> f64 {
    let text = String::from_utf8(get(&format!("{server}/metrics")).body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// 64 clients at once against a queue of 8: every answer is an image or the
/// dialect's 503 with Retry-After; nothing crashes, and each image is the caller's own.
#[test]
fn overload_gives_only_200s_and_503s_with_each_callers_own_image() {
    if !e2e::edge_runtime_present() {
        return;
    }
    let (_server, server) = start_inference_with(&["--queue-size", "8", "--max-batch", "4"]);
    let (_edge, edge) = edge_to(&server, vec![]);
    let replies: Vec<(u64, Reply)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..64u64)
            .map(|i| {
                let edge = &edge;
                s.spawn(move || (i, appypie(edge, &format!("prompt {i}"), 1000 + i, 128, 4)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ok = Vec::new();
    let mut refused = 0;
    for (i, reply) in &replies {
        let body = reply.json();
        match reply.status {
            200 => ok.push((*i, body["image_data"].as_str().unwrap().to_string())),
            503 => {
                refused += 1;
                assert_eq!(body["code"], 503, "{body}");
                assert!(
                    body["message"].as_str().unwrap().contains("capacity"),
                    "{body}"
                );
                let retry: u32 = reply.header("retry-after").unwrap().parse().unwrap();
                assert!(retry >= 1, "{retry}");
            }
            other => panic!("request {i}: status {other}: {body}"),
        }
    }
    assert!(
        !ok.is_empty() && refused > 0,
        "{} ok, {refused} refused",
        ok.len()
    );
    // Distinct prompts and seeds give distinct images ...
    let mut images: Vec<&String> = ok.iter().map(|(_, img)| img).collect();
    images.sort();
    images.dedup();
    assert_eq!(images.len(), ok.len(), "two callers got the same image");
    // ... and each is what that request gives alone.
    for (i, image) in ok.iter().take(4) {
        let alone = appypie(&edge, &format!("prompt {i}"), 1000 + i, 128, 4);
        assert_eq!(alone.status, 200);
        let d = max_diff(
            &decode_png(image),
            &decode_png(alone.json()["image_data"].as_str().unwrap()),
        );
        assert!(
            d <= 1,
            "request {i}: differs by {d}/255 from the same request alone"
        );
    }
    // The server still serves, and counted what it refused.
    assert!(metric(&server, "sdgate_errors_total{kind=\"overloaded\"}") >= f64::from(refused));
    assert_eq!(get(&format!("{server}/health")).status, 200);
}

/// Compatible requests that queue behind a running one share a batch, and each
/// caller gets exactly the image it gets alone.
#[test]
fn queued_requests_share_a_batch_and_each_get_their_own_images() {
    if e2e::spin_pass_skips_edgeless_test() {
        return;
    }
    let (_server, server) = start_inference_with(&["--max-batch", "8"]);
    let small: Vec<Value> = (0..4u64)
        .map(|i| {
            let mut r = request(
                ["a cat", "a red boat", "", "two dogs"][i as usize],
                40 + i,
                64,
                3,
            );
            r["samples"] = json!(1 + i % 2);
            r["guidance"] = json!(3.0 + i as f64);
            r
        })
        .collect();
    let batched: Vec<Value> = std::thread::scope(|s| {
        let blocker = s.spawn(|| generate(&server, &request("slow", 1, 256, 10), &[]));
        // Queue the small ones while the blocker runs.
        std::thread::sleep(Duration::from_millis(300));
        let handles: Vec<_> = small
            .iter()
            .map(|r| s.spawn(|| generate(&server, r, &[])))
            .collect();
        let out = handles
            .into_iter()
            .map(|h| {
                let reply = h.join().unwrap();
                assert_eq!(reply.status, 200, "{}", reply.json());
                reply.json()
            })
            .collect();
        assert_eq!(blocker.join().unwrap().status, 200);
        out
    });
    let (sum, count) = (
        metric(&server, "sdgate_batch_requests_sum"),
        metric(&server, "sdgate_batch_requests_count"),
    );
    assert!(
        sum > count,
        "no batch held more than one request ({sum} requests in {count} batches)"
    );
    for (req, got) in small.iter().zip(&batched) {
        let alone = generate(&server, req, &[]).json();
        let (got, alone) = (
            got["images"].as_array().unwrap(),
            alone["images"].as_array().unwrap(),
        );
        assert_eq!(got.len(), req["samples"].as_u64().unwrap() as usize);
        for (g, a) in got.iter().zip(alone) {
            assert_eq!(g["seed"], a["seed"]);
            let d = max_diff(
                &decode_png(g["png"].as_str().unwrap()),
                &decode_png(a["png"].as_str().unwrap()),
            );
            assert!(d <= 1, "{}: differs by {d}/255 from alone", req["prompt"]);
        }
    }
}

/// Killing the server under load gives 5xx for what was in flight; once it is back,
/// the same edge serves again.
#[test]
fn killing_and_restarting_the_server_under_load() {
    if !e2e::edge_runtime_present() {
        return;
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut server, url) = start_inference_with(&["--listen", &listen]);
    let (_edge, edge) = edge_to(&url, vec![]);
    assert_eq!(appypie(&edge, "warm", 1, 64, 2).status, 200);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6u64)
            .map(|i| {
                let edge = &edge;
                s.spawn(move || appypie(edge, "slow", i, 512, 20).status)
            })
            .collect();
        // The warm-up was the first batch; wait for the load's.
        let deadline = Instant::now() + Duration::from_secs(60);
        while server
            .output()
            .iter()
            .filter(|l| l.contains("batch starts"))
            .count()
            < 2
        {
            assert!(
                Instant::now() < deadline,
                "the load never reached the server"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server.kill();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|s| (500..600).contains(s)),
        "in flight during the kill: {statuses:?}"
    );
    let (_server, _) = start_inference_with(&["--listen", &listen]);
    let reply = appypie(&edge, "after", 2, 64, 2);
    assert_eq!(reply.status, 200, "{}", reply.json());
}

/// The edge spreads requests over its inference URLs and moves on from one that
/// refuses connections; it sends the server's token, which the server requires.
#[test]
fn failover_and_the_shared_token() {
    if !e2e::edge_runtime_present() {
        return;
    }
    let (_server, server) = start_inference_with(&["--token", TOKEN]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    // No token, or a wrong one: refused, naming what is missing.
    let reply = generate(&server, &request("p", 1, 64, 2), &[]);
    assert_eq!(reply.status, 401);
    assert!(String::from_utf8_lossy(&reply.body).contains("token"));
    let reply = generate(
        &server,
        &request("p", 1, 64, 2),
        &[("Authorization", "Bearer nope")],
    );
    assert_eq!(reply.status, 401);
    assert_eq!(get(&format!("{server}/v1/models")).status, 401);
    // Probes and metrics stay open.
    assert_eq!(get(&format!("{server}/health")).status, 200);
    assert_eq!(get(&format!("{server}/metrics")).status, 200);

    let (_edge, edge) = edge_to(
        &dead,
        vec![("MORE_INFERENCE_URLS", &server), ("INFERENCE_TOKEN", TOKEN)],
    );
    // Each request starts at a random URL: several, so some start at the dead one.
    for i in 0..8 {
        let reply = appypie(&edge, "p", i, 64, 2);
        assert_eq!(reply.status, 200, "{}", reply.json());
    }
    let (_edge, edge) = edge_to(&server, vec![("INFERENCE_TOKEN", "wrong")]);
    let reply = appypie(&edge, "p", 1, 64, 2);
    assert_eq!(reply.status, 500, "{}", reply.json());
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("inference_token")
    );
}

fn weights_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            total += weights_bytes(&e.path());
        } else if e.path().extension().is_some_and(|x| x == "safetensors") {
            total += e.metadata().unwrap().len();
        }
    }
    total
}

/// A catalog of two models: unknown names are 400s listing the catalog, left-out
/// settings come from the catalog, /ready and /v1/models report states, and a
/// memory budget that holds one model unloads the least recently used.
#[test]
fn the_catalog_names_defaults_and_memory_budget() {
    if !e2e::edge_runtime_present() {
        return;
    }
    let sd15 = e2e::repo_root().join("inference/tests/fixtures/models/tiny-sd15");
    let (a, b) = (weights_bytes(tiny_model()), weights_bytes(&sd15));
    let budget_gb = (a.max(b) + a.min(b) / 2) as f64 / (1024.0 * 1024.0 * 1024.0);
    let (_server, server, _catalog) = start_inference_with_catalog(&format!(
        "default = \"tiny-xl\"\nmemory_budget_gb = {budget_gb}\n\n\
             [models.tiny-xl]\nsource = {:?}\naliases = [\"stable-diffusion-xl-base-1.0\"]\nwidth = 96\nheight = 64\nsteps = 3\n\n\
             [models.tiny-sd15]\nsource = {:?}\nsteps = 2\nguidance = 1.0\nscheduler = \"DDIM\"\n",
        tiny_model().display().to_string(),
        sd15.display().to_string()
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&format!("{server}/ready")).status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let states = |name: &str| -> Value {
        let models = get(&format!("{server}/v1/models")).json();
        models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(states("tiny-xl"), "loaded");
    assert_eq!(states("tiny-sd15"), "not_loaded");
    // The precision each runs in: the server's (auto: f32 on the CPU), loaded or not.
    let models = get(&format!("{server}/v1/models")).json();
    for m in models["models"].as_array().unwrap() {
        assert_eq!(m["dtype"], "f32", "{m}");
    }

    // Unknown names: 400 listing what is served, through the edge in HolmesAI's form too.
    let mut bad = request("p", 1, 64, 2);
    bad["model"] = json!("flux-dev");
    let reply = generate(&server, &bad, &[]);
    assert_eq!(reply.status, 400);
    let msg = reply.json()["UnknownModel"].as_str().unwrap().to_string();
    assert!(
        msg.contains("tiny-xl") && msg.contains("tiny-sd15"),
        "{msg}"
    );
    let (_edge, edge) = edge_to(&server, vec![]);
    let reply = post(
        &format!("{edge}/v1/images/generate"),
        &[
            ("Authorization", &format!("Bearer {KEY}")),
            ("Content-Type", "application/json"),
        ],
        r#"{"model":"flux-dev","prompt":"p"}"#,
    );
    assert_eq!(reply.status, 400);
    assert!(String::from_utf8_lossy(&reply.body).contains("tiny-sd15"));

    // Defaults: the catalog's, for what the request leaves out.
    let mut bare = request("p", 1, 64, 2);
    for field in ["width", "height", "steps", "guidance"] {
        bare[field] = Value::Null;
    }
    let out = generate(&server, &bare, &[]).json();
    assert_eq!(
        (out["model"].as_str(), out["steps"].as_u64()),
        (Some("tiny-xl"), Some(3))
    );
    assert_eq!(
        (
            out["images"][0]["width"].as_u64(),
            out["images"][0]["height"].as_u64()
        ),
        (Some(96), Some(64))
    );
    bare["model"] = json!("TINY-SD15");
    let out = generate(&server, &bare, &[]).json();
    assert_eq!(out["steps"], 2);
    assert_eq!(out["scheduler"], "DDIMScheduler");
    // The budget holds one of the two: loading tiny-sd15 unloaded tiny-xl.
    assert_eq!(states("tiny-sd15"), "loaded");
    assert_eq!(states("tiny-xl"), "not_loaded");
    assert_eq!(metric(&server, "sdgate_models_loaded"), 1.0);
    // And it comes back on the next request that names it.
    assert_eq!(generate(&server, &request("p", 1, 64, 2), &[]).status, 200);
    assert_eq!(states("tiny-xl"), "loaded");
}

/// A request past its deadline is a 504 and its work stops at the next step; a caller
/// that disconnects leaves the queue the same way. Either way the next request runs at once.
#[test]
fn deadlines_and_callers_that_leave() {
    if e2e::spin_pass_skips_edgeless_test() {
        return;
    }
    let (_server, server) = start_inference_with(&[]);
    // Minutes of work at 512x512 x 50 steps on the tiny model.
    let long = request("long", 1, 512, 50);
    let started = Instant::now();
    let reply = generate(&server, &long, &[("x-timeout-ms", "1500")]);
    assert_eq!(
        reply.status,
        504,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        reply.json()["Timeout"]
            .as_str()
            .unwrap()
            .contains("deadline")
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The next request is served at once: the stopped work no longer holds the worker
    // (it would for minutes).
    let next_is_prompt = |seed: u64| {
        let next = generate(&server, &request("next", seed, 64, 2), &[]);
        assert_eq!(next.status, 200);
        let queued = next.json()["timings"]["queued_ms"].as_u64().unwrap();
        assert!(
            queued < 20_000,
            "abandoned work held the next request for {queued} ms"
        );
    };
    next_is_prompt(2);

    // A caller that sends the request and hangs up.
    let addr = server.trim_start_matches("http://").to_string();
    let body = long.to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /v1/generate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&server, "sdgate_errors_total{kind=\"cancelled\"}") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the server never noticed the caller leave"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    next_is_prompt(3);
}

#[test]
fn a_full_queue_refuses_before_reading_an_init_image() {
    if e2e::spin_pass_skips_edgeless_test() {
        return;
    }
    let (_server, server) = start_inference_with(&["--queue-size", "1", "--max-batch", "1"]);
    let generate = format!("{server}{}", contract::GENERATE_PATH);
    // One long request runs and one waits: the queue (of 1) is full. The second is
    // sent until the queue takes it (while the first still waits there, it is refused).
    let long = json!({"model": "", "prompt": "long", "width": 1024, "height": 1024,
                      "steps": 20, "samples": 1})
    .to_string();
    let busy: Vec<_> = (0..2)
        .map(|i| {
            let (url, body) = (generate.clone(), long.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200 * i));
                loop {
                    let reply = post(&url, &[("Content-Type", "application/json")], &body);
                    if reply.status != 503 {
                        return reply;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let queue = e2e::get(&format!("{server}{}", contract::QUEUE_PATH)).json();
        if queue["queued"].as_u64() == Some(1) {
            break;
        }
        assert!(Instant::now() < end, "the queue never filled: {queue}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not an image at all: refused as overloaded, not as a broken image, because the
    // server decodes nothing when it has no room.
    let body = json!({"model": "", "prompt": "p", "samples": 1,
                      "init_image": {"image": "bm90IGFuIGltYWdl", "strength": 0.5}})
    .to_string();
    let reply = post(&generate, &[("Content-Type", "application/json")], &body);
    assert_eq!(
        reply.status,
        503,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.header("retry-after").is_some());
    for t in busy {
        assert_eq!(t.join().unwrap().status, 200);
    }
}

#[test]
fn the_server_cuts_off_clients_that_never_finish() {
    if e2e::spin_pass_skips_edgeless_test() {
        return;
    }
    let flags: Vec<String> = e2e::slow_clients::LIMITS_ENV
        .iter()
        .flat_map(|(k, v)| {
            [
                format!("--{}", k.to_ascii_lowercase().replace('_', "-")),
                v.to_string(),
            ]
        })
        .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (_server, server) = start_inference_with(&flags);
    e2e::slow_clients::check(
        server.strip_prefix("http://").unwrap(),
        contract::HEALTH_PATH,
        contract::GENERATE_PATH,
    );
}

/// SIGTERM drains the server: it stops accepting connections at once, lets the running
/// batch and the queued requests finish and answer, then exits 0 (a Kubernetes rollout's
/// preStop and terminationGracePeriod rely on this).
#[test]
fn sigterm_lets_queued_and_running_work_finish() {
    if spin_pass_skips_edgeless_test() {
        return;
    }
    let (mut server_proc, server) = start_inference_with(&["--max-batch", "1"]);
    let addr = server.trim_start_matches("http://").to_string();
    // Three requests, one batch at a time: one runs while two wait.
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let server = server.clone();
            std::thread::spawn(move || generate(&server, &request("drain", 40 + i, 256, 8), &[]))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&server, "sdgate_queue_depth") < 2.0 {
        assert!(Instant::now() < deadline, "the requests never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    server_proc.terminate();
    // No new connections once the signal is handled.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    for t in threads {
        let reply = t.join().unwrap();
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["images"].as_array().unwrap().len(), 1);
    }
    let exit = server_proc
        .wait_exit(Duration::from_secs(30))
        .expect("the server exits once drained");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn progress_of_queued_and_running_requests() {
    if spin_pass_skips_edgeless_test() {
        return;
    }
    let (_server_proc, server) = start_inference_with(&["--max-batch", "1"]);
    let progress = |trace: &str| get(&format!("{server}/v1/progress/{trace}")).json();
    assert_eq!(progress("never-sent")["state"], "Unknown");
    // Three requests, one batch at a time: one runs while two wait.
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let server = server.clone();
            std::thread::spawn(move || {
                let trace = format!("progress-{i}");
                let req = request("progress", 50 + i, 256, 8);
                generate(&server, &req, &[("x-trace-id", trace.as_str())])
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&server, "sdgate_queue_depth") < 2.0 {
        assert!(Instant::now() < deadline, "the requests never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut queued, mut running) = (Vec::new(), None);
    while running.is_none() || queued.is_empty() {
        assert!(
            Instant::now() < deadline,
            "never saw one queued and one past its first step: {queued:?} {running:?}"
        );
        for i in 0..3 {
            let p = progress(&format!("progress-{i}"));
            match p["state"].as_str() {
                Some("Queued") => {
                    assert!(p["ahead"].as_u64().unwrap() <= 1, "{p}");
                    assert!(p["eta_secs"].as_f64().unwrap() > 0.0, "{p}");
                    queued.push(p);
                }
                Some("Running") if p["step"].as_u64() >= Some(1) => {
                    assert_eq!(p["steps"], 8, "{p}");
                    assert!(p["step"].as_u64().unwrap() <= 8, "{p}");
                    running = Some(p);
                }
                Some("Running" | "Unknown") => {}
                _ => panic!("{p}"),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for t in threads {
        assert_eq!(t.join().unwrap().status, 200);
    }
    for i in 0..3 {
        assert_eq!(progress(&format!("progress-{i}"))["state"], "Unknown");
    }
}
