//! Step-level parity with diffusers: every scheduler runs its whole step sequence (txt2img, and
//! img2img from the begin index) on fixed tensors with a deterministic fake model instead of a
//! UNet, and the trajectory must match diffusers' (fixture from
//! `scripts/reference/make_scheduler_step_fixtures.py`, which documents the fake model). This
//! covers the multistep / second-order state, the solver formulas, `add_noise` at the begin
//! index and the order and shape of the per-step noise draws (two images, one generator each).

use candle_core::{Device, Tensor};
use inference::engine::config::SchedulerConfig;
use inference::engine::noise::NoiseSource;
use inference::engine::scheduler::{build_with, resolve};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn grid(shape: &[usize], f: impl Fn(usize) -> f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|k| f(k) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

struct Trajectory {
    timesteps: Vec<f64>,
    final_sample: Vec<f32>,
    stats: Vec<Vec<f64>>,
}

fn run(
    case: &Value,
    cfg: &SchedulerConfig,
    shape: &[usize],
    seed: u64,
) -> anyhow::Result<Trajectory> {
    let class = case["cls"].as_str().unwrap();
    let steps = case["steps"].as_u64().unwrap() as usize;
    let overrides = case["overrides"].as_object().unwrap().clone();
    let (kind, _) = resolve(class)?;
    let mut sched = build_with(kind, cfg, steps, None, &overrides)?;
    let mut noise = NoiseSource::new(seed, shape[0], &Device::Cpu);
    let base = grid(shape, |k| (0.37 * k as f64 + 0.1).sin());
    let clean = grid(shape, |k| 0.8 * (0.23 * k as f64).cos());
    let img_noise = grid(shape, |k| (0.71 * k as f64 + 0.5).sin());
    let (begin, mut x) = match case["strength"].as_f64() {
        Some(strength) => {
            let init = ((steps as f64 * strength) as usize).min(steps);
            let begin = (steps - init) * kind.order();
            (begin, sched.add_noise(&clean, &img_noise, begin)?)
        }
        None => (0, base.affine(sched.init_noise_sigma() as f32 as f64, 0.0)?),
    };
    let total = sched.timesteps().len();
    let mut stats = Vec::new();
    for i in begin..total {
        let t = sched.timesteps()[i];
        let m = sched.scale_model_input(&x, i)?;
        let a = (0.6 + 0.3 * (0.0031 * t).cos()) as f32;
        let b = (0.25 * (0.0047 * t).sin()) as f32;
        let out = (m.affine(a as f64, 0.0)? - clean.affine(b as f64, 0.0)?)?;
        x = sched.step(&out, i, &x, &mut noise)?;
        let rows = x.flatten_from(1)?.to_dtype(candle_core::DType::F64)?;
        let sums: Vec<f64> = rows.sum(1)?.to_vec1()?;
        let squares: Vec<f64> = rows.sqr()?.sum(1)?.to_vec1()?;
        stats.push(
            sums.iter()
                .zip(&squares)
                .flat_map(|(s, q)| [*s, *q])
                .collect(),
        );
    }
    Ok(Trajectory {
        timesteps: sched.timesteps()[begin..].to_vec(),
        final_sample: x.flatten_all()?.to_vec1()?,
        stats,
    })
}

#[test]
fn step_sequences_match_diffusers() {
    let data: Value = serde_json::from_str(include_str!("fixtures/scheduler_steps.json")).unwrap();
    let shape: Vec<usize> = data["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let seed = data["seed"].as_u64().unwrap();
    let mut failures = Vec::new();
    let mut worst = (0f64, String::new());
    let cases = data["cases"].as_array().unwrap();
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let cfg = SchedulerConfig {
            map: data["configs"][case["config"].as_str().unwrap()]
                .as_object()
                .unwrap()
                .clone(),
        };
        let result = run(case, &cfg, &shape, seed);
        if let Some(err) = case.get("error") {
            if result.is_ok() {
                failures.push(format!("{id}: diffusers fails ({err}), the engine accepts"));
            }
            continue;
        }
        let got = match result {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{id}: {e:#}"));
                continue;
            }
        };
        let want_t = floats(&case["timesteps"]);
        if got.timesteps.len() != want_t.len()
            || got
                .timesteps
                .iter()
                .zip(&want_t)
                .any(|(g, w)| (g - w).abs() > 0.02)
        {
            failures.push(format!(
                "{id}: timesteps {:?} vs diffusers {want_t:?}",
                got.timesteps
            ));
            continue;
        }
        let want = floats(&case["final"]);
        // Relative to the sample's scale: float32 rounding differences (torch's sqrt / exp vs
        // IEEE, summation order) grow through the steps but stay far below image precision.
        let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        let max_diff = got
            .final_sample
            .iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - w).abs())
            .fold(0f64, f64::max);
        let rel = max_diff / scale;
        if rel > worst.0 {
            worst = (rel, id.to_string());
        }
        let want_stats = case["stats"].as_array().unwrap();
        let stats_ok = want_stats.len() == got.stats.len()
            && want_stats.iter().zip(&got.stats).all(|(w, g)| {
                floats(w)
                    .iter()
                    .zip(g)
                    .all(|(w, g)| (w - g).abs() <= 1e-4 * w.abs().max(1.0))
            });
        if got.final_sample.len() != want.len() || rel > 2e-5 || !stats_ok {
            failures.push(format!(
                "{id}: final sample differs by {max_diff:e} (scale {scale}); per-step stats match: {stats_ok}\n  engine   {:?}\n  diffusers {:?}",
                &got.final_sample[..6.min(got.final_sample.len())],
                &want[..6.min(want.len())]
            ));
        }
    }
    println!(
        "{} cases; largest relative difference {:e} ({})",
        cases.len(),
        worst.0,
        worst.1
    );
    assert!(
        failures.is_empty(),
        "{} of {} step sequences differ from diffusers:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
