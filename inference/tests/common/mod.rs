//! Shared by the parity tests: a fixture case (cases.json) as engine parameters.

use std::path::Path;

use inference::engine::GenerateParams;
use serde_json::Value;

/// The case's parameters; `side` is the width and height when the case gives none.
pub fn params_of(case: &Value, dir: &Path, side: u64) -> GenerateParams {
    let s = |k: &str| case.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let u = |k: &str, d: u64| case.get(k).and_then(|v| v.as_u64()).unwrap_or(d);
    let init_image = s("init_image").map(|name| {
        let img = image::open(dir.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        (img, case["strength"].as_f64().expect("strength"))
    });
    GenerateParams {
        prompt: s("prompt").expect("prompt"),
        negative_prompt: s("negative_prompt"),
        width: u("width", side) as usize,
        height: u("height", side) as usize,
        steps: u("steps", 4) as usize,
        guidance: case["guidance"].as_f64().expect("guidance"),
        seed: u("seed", 0),
        samples: u("samples", 1) as usize,
        scheduler: s("scheduler"),
        karras: case.get("karras").and_then(|v| v.as_bool()),
        init_image,
    }
}
