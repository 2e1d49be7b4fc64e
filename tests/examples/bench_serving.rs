//! Throughput for `scripts/bench-serving`: images per second from the real inference
//! server at 1, 4 and 8 concurrent clients, with batching off (`--max-batch 1`) and on
//! (`--max-batch 8`), in one run. Each client sends its requests one after another
//! (txt2img, one image each, distinct prompts and seeds) straight to the server.
//!
//!   bench_serving [--model DIR] [--side 256] [--steps 4] [--per-client 6] [--runs 3]
//!                 [--device auto]
//!
//! Without --model it uses the tiny random model (CPU-sized work); with a full-size
//! model folder and a GPU build it measures the real thing. Prints one JSON line per
//! measurement, then a table of medians and the batching-on / batching-off ratio.

use std::time::Instant;

use e2e::{arg, post, start_inference_with, tiny_model};
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model: String = arg(&args, "--model", tiny_model().display().to_string());
    let side: u32 = arg(&args, "--side", 256);
    let steps: u32 = arg(&args, "--steps", 4);
    let per_client: usize = arg(&args, "--per-client", 6);
    let runs: usize = arg(&args, "--runs", 3);
    let device: String = arg(&args, "--device", "auto".to_string());
    let mut table = Vec::new();
    for max_batch in [1usize, 8] {
        let (_server, url) = start_inference_with(&[
            "--model",
            &model,
            "--device",
            &device,
            "--max-batch",
            &max_batch.to_string(),
            "--queue-size",
            "64",
        ]);
        let one = |client: usize, i: usize| {
            let body = json!({
                "model": "", "prompt": format!("a lighthouse, client {client}, request {i}"),
                "negative_prompt": null, "width": side, "height": side, "steps": steps,
                "guidance": 5.0, "seed": (client * 1000 + i) as u64, "samples": 1,
                "scheduler": "Euler", "karras": null, "init_image": null,
            });
            let reply = post(
                &format!("{url}/v1/generate"),
                &[("Content-Type", "application/json")],
                &body.to_string(),
            );
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
        };
        // Warm-up: loads the model, fills caches.
        one(0, 0);
        for clients in [1usize, 4, 8] {
            let mut rates = Vec::new();
            for run in 0..runs {
                let started = Instant::now();
                std::thread::scope(|s| {
                    for c in 0..clients {
                        s.spawn(move || (0..per_client).for_each(|i| one(c + 1, run * 100 + i)));
                    }
                });
                let secs = started.elapsed().as_secs_f64();
                let rate = (clients * per_client) as f64 / secs;
                println!(
                    "{}",
                    json!({"max_batch": max_batch, "clients": clients, "run": run,
                           "images": clients * per_client, "secs": secs, "images_per_s": rate})
                );
                rates.push(rate);
            }
            table.push((max_batch, clients, median(rates)));
        }
    }
    println!(
        "\nimages/s, median of {runs} runs ({side}x{side}, {steps} steps, {per_client} requests per client, model {model}):"
    );
    println!(
        "{:>8} {:>16} {:>16} {:>8}",
        "clients", "batching off", "batching on", "on/off"
    );
    for clients in [1usize, 4, 8] {
        let get = |b: usize| table.iter().find(|t| t.0 == b && t.1 == clients).unwrap().2;
        let (off, on) = (get(1), get(8));
        println!("{clients:>8} {off:>16.2} {on:>16.2} {:>8.2}", on / off);
    }
}
