//! ModelsLab's queued jobs over the real processes: a request with a webhook is
//! answered "processing" and fetched later; its webhook gets the answer (retried
//! when refused); jobs live in the key-value store, so restarting the edge in the
//! middle of one, or killing the inference server under it, never leaves it
//! "processing" forever.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use e2e::images::loopback_server;
use e2e::{
    EdgeConfig, RuntimeOptions, edge_runtime_present, free_port, get, post, start_edge,
    start_edge_with, start_inference, start_inference_with,
};
use serde_json::{Value, json};

const KEY: &str = "jobs-key";
const OTHER_KEY: &str = "other-key";
const KEYS: &str = "jobs-key,other-key";
const T2I: &str = "/api/v6/images/text2img";

/// A webhook receiver: records each POSTed body; refuses the first with a 500.
struct Hooks {
    origin: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hooks {
    fn start() -> Hooks {
        let server = Arc::new(loopback_server());
        let origin = format!("http://{}", server.server_addr().to_ip().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let mut text = String::new();
                let _ = req.as_reader().read_to_string(&mut text);
                let mut seen = seen.lock().unwrap();
                seen.push(serde_json::from_str(&text).unwrap_or(Value::Null));
                let status = if seen.len() == 1 { 500 } else { 200 };
                let _ = req.respond(tiny_http::Response::empty(status));
            }
        });
        Hooks { origin, bodies }
    }

    fn wait_for(&self, n: usize, within: Duration) -> Vec<Value> {
        let end = Instant::now() + within;
        loop {
            let got = self.bodies.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > end {
                return got;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn config<'a>(
    inference_url: &'a str,
    hosts: &'a str,
    vars: Vec<(&'a str, &'a str)>,
) -> EdgeConfig<'a> {
    EdgeConfig {
        inference_url,
        api_keys: KEYS,
        image_hosts: hosts,
        variables: vars,
        runtime_allows_image_hosts: true,
    }
}

fn submit(edge: &str, body: Value) -> Value {
    let reply = post(
        &format!("{edge}{T2I}"),
        &[("Content-Type", "application/json")],
        &body.to_string(),
    );
    let answer = reply.json();
    assert_eq!(reply.status, 200, "{answer}");
    answer
}

fn fetch(url: &str, key: &str) -> (u16, Value) {
    let reply = post(
        url,
        &[("Content-Type", "application/json")],
        &json!({ "key": key }).to_string(),
    );
    (reply.status, reply.json())
}

/// Fetches until the job is no longer "processing".
fn fetch_until_done(url: &str, within: Duration) -> (u16, Value) {
    let end = Instant::now() + within;
    loop {
        let (status, body) = fetch(url, KEY);
        if body["status"] != "processing" {
            return (status, body);
        }
        assert!(
            Instant::now() < end,
            "still processing after {within:?}: {body}"
        );
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_webhook_job_is_processing_then_fetched_and_delivered() {
    if !edge_runtime_present() {
        return;
    }
    let hooks = Hooks::start();
    let (_inference, inference_url) = start_inference();
    let (_edge_proc, edge) = start_edge(&config(&inference_url, &hooks.origin, vec![]));
    let queued = submit(
        &edge,
        json!({"key": KEY, "prompt": "a lighthouse", "width": 64, "height": 64,
               "num_inference_steps": 2, "seed": 7, "samples": 2,
               "webhook": format!("{}/hook", hooks.origin), "track_id": "t-1"}),
    );
    assert_eq!(queued["status"], "processing", "{queued}");
    assert_eq!(queued["track_id"], "t-1");
    let id = queued["id"].as_u64().expect("a numeric id");
    let fetch_url = queued["fetch_result"].as_str().unwrap();
    assert_eq!(fetch_url, format!("{edge}/api/v6/images/fetch/{id}"));
    let links: Vec<Value> = queued["future_links"].as_array().unwrap().clone();
    assert_eq!(links.len(), 2);
    assert!(queued["eta"].as_f64().is_some_and(|e| e >= 1.0), "{queued}");

    let (status, done) = fetch_until_done(fetch_url, Duration::from_secs(60));
    assert_eq!(
        (status, &done["status"]),
        (200, &json!("success")),
        "{done}"
    );
    assert_eq!(done["id"], id);
    assert_eq!(
        done["output"].as_array().unwrap(),
        &links,
        "the links promised"
    );
    for link in &links {
        let got = get(link.as_str().unwrap());
        assert_eq!(got.status, 200, "{link}");
        assert!(got.body.starts_with(b"\x89PNG"));
    }
    // Another key does not see the job; a made-up id is not found.
    assert_eq!(fetch(fetch_url, OTHER_KEY).0, 404);
    assert_eq!(
        fetch(&format!("{edge}/api/v6/images/fetch/12345"), KEY).0,
        404
    );

    // The webhook: refused once, then delivered with the same body.
    let bodies = hooks.wait_for(2, Duration::from_secs(30));
    assert!(bodies.len() >= 2, "webhook calls: {bodies:?}");
    let last = bodies.last().unwrap();
    assert_eq!(last["status"], "success", "{last}");
    assert_eq!(last["track_id"], "t-1");
    assert_eq!(last["id"], id);
    assert_eq!(last["output"], done["output"]);
}

#[test]
fn webhooks_obey_the_image_host_rules() {
    if !edge_runtime_present() {
        return;
    }
    let (_inference, inference_url) = start_inference();
    let (_edge_proc, edge) = start_edge(&config(&inference_url, "", vec![]));
    let reply = post(
        &format!("{edge}{T2I}"),
        &[("Content-Type", "application/json")],
        &json!({"key": KEY, "prompt": "p", "webhook": "http://127.0.0.1:9/hook"}).to_string(),
    );
    let body = reply.json();
    assert_eq!(reply.status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("webhook: "),
        "{body}"
    );
}

#[test]
fn jobs_outlast_restarts_of_the_edge_and_of_the_inference_server() {
    if !edge_runtime_present() {
        return;
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut inference, inference_url) = start_inference_with(&["--listen", &listen]);
    let state = tempfile::tempdir().unwrap();
    let opts = RuntimeOptions {
        state_dir: Some(state.path().to_path_buf()),
        ..Default::default()
    };
    // Every request runs after the reply (any expected wait exceeds 0 s).
    let vars = vec![("ASYNC_AFTER_SECS", "0")];
    // A job long enough to interrupt: 1024x1024 on the tiny model takes seconds.
    let long = json!({"key": KEY, "prompt": "a long job", "width": 1024, "height": 1024,
                      "num_inference_steps": 20, "seed": 3});

    // 1. The edge stops in the middle of a job; a new one takes the job over.
    let (first, edge) = start_edge_with(&config(&inference_url, "", vars.clone()), &[], &opts);
    let queued = submit(&edge, long.clone());
    assert_eq!(queued["status"], "processing", "{queued}");
    let id = queued["id"].as_u64().unwrap();
    thread::sleep(Duration::from_millis(500));
    drop(first);
    let (second, edge) = start_edge_with(&config(&inference_url, "", vars.clone()), &[], &opts);
    let url = format!("{edge}/api/v6/images/fetch/{id}");
    let (status, done) = fetch_until_done(&url, Duration::from_secs(120));
    assert_eq!(
        (status, &done["status"]),
        (200, &json!("success")),
        "{done}"
    );
    let link = done["output"][0].as_str().unwrap().to_string();

    // 2. The inference server is killed under a job and started again: the job
    //    ends (done or failed), never "processing" for ever.
    let mut other = long.clone();
    other["seed"] = 4.into();
    let queued = submit(&edge, other);
    let id2 = queued["id"].as_u64().unwrap();
    thread::sleep(Duration::from_millis(500));
    inference.kill();
    let (_inference, _) = start_inference_with(&["--listen", &listen]);
    let (status, ended) = fetch_until_done(
        &format!("{edge}/api/v6/images/fetch/{id2}"),
        Duration::from_secs(120),
    );
    assert!(
        matches!(ended["status"].as_str(), Some("success" | "error")),
        "{status} {ended}"
    );

    // 3. After the edge restarts again, the finished job and its link still answer.
    drop(second);
    let (_third, edge) = start_edge_with(&config(&inference_url, "", vars), &[], &opts);
    let (status, again) = fetch(&format!("{edge}/api/v6/images/fetch/{id}"), KEY);
    assert_eq!(
        (status, &again["output"]),
        (200, &done["output"]),
        "{again}"
    );
    let path = link.splitn(4, '/').nth(3).unwrap();
    assert_eq!(get(&format!("{edge}/{path}")).status, 200, "{link}");
}

/// The images the inference server has made, from its metrics.
fn images_made(inference_url: &str) -> f64 {
    let text = String::from_utf8(get(&format!("{inference_url}/metrics")).body).unwrap();
    text.lines()
        .filter(|l| l.starts_with("sdgate_images_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn each_key_has_its_share_of_the_store() {
    if !edge_runtime_present() {
        return;
    }
    let (_inference, inference_url) = start_inference();
    let vars = vec![("KEY_MAX_STORED_MB", "1"), ("KEY_MAX_IMAGES", "2")];
    let (_edge_proc, edge) = start_edge(&config(&inference_url, "", vars));
    let ask = |key: &str, side: u32, samples: u32| {
        post(
            &format!("{edge}{T2I}"),
            &[("Content-Type", "application/json")],
            &json!({"key": key, "prompt": "p", "width": side, "height": side,
                    "num_inference_steps": 2, "samples": samples})
            .to_string(),
        )
    };
    let first = ask(KEY, 64, 2);
    assert_eq!(first.status, 200, "{}", first.json());
    let made = images_made(&inference_url);

    // Bytes: a 1024x1024 image may need more than the 1 MiB left.
    let big = ask(KEY, 1024, 1);
    assert_eq!(big.status, 429, "{}", big.json());
    assert!(big.header("retry-after").is_some());
    // Images: two kept, two allowed.
    let more = ask(KEY, 64, 1);
    assert_eq!(more.status, 429, "{}", more.json());
    let message = more.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("2 images of the 1 MiB and 2 images"),
        "{message}"
    );
    // Refused before anything ran.
    assert_eq!(images_made(&inference_url), made);
    // Another key has its own share.
    assert_eq!(ask(OTHER_KEY, 64, 1).status, 200);
}

#[test]
fn a_failed_job_reaches_fetch_and_the_webhook_as_an_error() {
    if !edge_runtime_present() {
        return;
    }
    let hooks = Hooks::start();
    // No inference server listens there.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (_edge_proc, edge) = start_edge(&config(&dead, &hooks.origin, vec![]));
    let queued = submit(
        &edge,
        json!({"key": KEY, "prompt": "p", "width": 64, "height": 64,
               "webhook": format!("{}/hook", hooks.origin), "track_id": "t-2"}),
    );
    assert_eq!(queued["status"], "processing", "{queued}");
    let (status, ended) = fetch_until_done(
        queued["fetch_result"].as_str().unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(
        (status, &ended["status"]),
        (503, &json!("error")),
        "{ended}"
    );
    assert!(
        ended["message"]
            .as_str()
            .unwrap()
            .contains("inference server"),
        "{ended}"
    );
    let bodies = hooks.wait_for(2, Duration::from_secs(30));
    let last = bodies.last().expect("a webhook call");
    assert_eq!(
        (&last["status"], &last["track_id"], &last["id"]),
        (&json!("error"), &json!("t-2"), &queued["id"]),
        "{last}"
    );
}

#[test]
fn links_are_never_built_on_a_foreign_host_header() {
    if !edge_runtime_present() {
        return;
    }
    use std::io::{Read as _, Write as _};
    let (_inference, inference_url) = start_inference();
    let (_edge_proc, edge) = start_edge(&config(&inference_url, "", vec![]));
    let body = json!({"key": KEY, "prompt": "p", "width": 64, "height": 64,
                      "num_inference_steps": 2})
    .to_string();
    let addr = edge.strip_prefix("http://").unwrap();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "POST {T2I} HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 500"), "{reply}");
    assert!(reply.contains("public_url"), "{reply}");
    assert!(!reply.contains("evil.example"), "{reply}");
}
