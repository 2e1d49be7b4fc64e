//! Pipeline-level scheduler parity with diffusers: txt2img and img2img with every scheduler name
//! the engine accepts (and Karras / SDE / several-image variants) on the tiny SDXL model must
//! reproduce diffusers' images within 2/255 per pixel.
//!
//! References in `tests/fixtures/scheduler_parity/` come from
//! `scripts/reference/make_scheduler_parity_fixtures.py` (diffusers'
//! `Class.from_config(pipe.scheduler.config, **overrides)` for the name,
//! `torch.Generator("cpu").manual_seed(seed + i)` per image). Run in release:
//! `cargo test --release -p inference --test scheduler_parity`.

use std::path::Path;

use candle_core::{DType, Device};
use inference::parity;

#[test]
fn scheduler_images_match_diffusers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let report = parity::run_set(&root, "scheduler_parity", &Device::Cpu, DType::F32).unwrap();
    for r in &report.images {
        println!(
            "{}[{}] ({}): max abs diff {}, mean {:.5}",
            r.id, r.image, r.scheduler, r.max_abs_diff, r.mean_abs_diff
        );
    }
    assert!(
        report.failures.is_empty(),
        "scheduler parity failures:\n{}",
        report.failures.join("\n")
    );
}
