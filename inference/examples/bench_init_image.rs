//! The inference server's own decode + fit of init images (contract::init_image), for
//! `scripts/bench-edge`, which saves its inputs for this:
//!
//!   bench_init_image [--runs N] [--size S] FILE...   (default 20 runs, 1024)
//!
//! Prints one JSON line per file, then a summary line each.

use std::time::Instant;

use contract::init_image::{decode, fit};

/// The server's pixel cap for init images.
const MAX_PIXELS: u64 = 64_000_000;
const WARMUPS: usize = 2;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut runs, mut size, mut files) = (20usize, 1024u32, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--size" => size = args.next().and_then(|v| v.parse().ok()).expect("--size S"),
            _ => files.push(a),
        }
    }
    assert!(
        runs > 0 && !files.is_empty(),
        "usage: bench_init_image [--runs N] [--size S] FILE..."
    );
    let mut summary = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut times = Vec::new();
        let mut source = (0, 0);
        for i in 0..WARMUPS + runs {
            let t = Instant::now();
            let img = decode(&bytes, MAX_PIXELS).unwrap_or_else(|e| panic!("{file}: {e:?}"));
            source = img.dimensions();
            let fitted = fit(img, size, size);
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(fitted.dimensions(), (size, size));
            if i >= WARMUPS {
                times.push(secs);
            }
        }
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        println!(
            r#"{{"bench":"init_image","file":"{file}","source":[{},{}],"size":{size},"median_s":{median:.4},"runs_s":{times:?}}}"#,
            source.0, source.1
        );
        let what = if source == (size, size) {
            "a copy"
        } else {
            "crop + Lanczos3"
        };
        summary.push(format!(
            "{:54} server decode + fit ({what}) {:6.1} ms (median of {runs})",
            format!("{}x{} PNG -> {size}x{size}", source.0, source.1),
            median * 1000.0
        ));
    }
    for line in summary {
        println!("{line}");
    }
}
