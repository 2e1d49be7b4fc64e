//! The schedulers' timesteps, sigmas and initial noise scale must match diffusers' for a range
//! of configs and step counts (fixture from `scripts/reference/make_scheduler_fixtures.py`).

use inference::engine::config::SchedulerConfig;
use inference::engine::scheduler::{Ddim, EulerAncestralDiscrete, EulerDiscrete, Scheduler};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = abs + rel * w.abs();
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: engine {g} vs diffusers {w} (diff {})",
            (g - w).abs()
        );
    }
}

#[test]
fn schedules_match_diffusers() {
    let data: Value =
        serde_json::from_str(include_str!("fixtures/scheduler_schedules.json")).unwrap();
    let mut n = 0;
    for case in data["cases"].as_array().unwrap() {
        let cfg_name = case["config"].as_str().unwrap();
        let class = case["class"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let cfg = SchedulerConfig {
            map: data["configs"][cfg_name].as_object().unwrap().clone(),
        };
        let what = format!("{cfg_name}/{class}/{steps}");
        let want_t = floats(&case["timesteps"]);
        let want_init = case["init_noise_sigma"].as_f64().unwrap();
        // The per-step values compared: sigmas for the Euler family, alphas_cumprod for DDIM.
        let (s, values, key): (Box<dyn Scheduler>, Vec<f32>, &str) = match class {
            "EulerDiscreteScheduler" => {
                let s = EulerDiscrete::new(&cfg, steps, None).unwrap();
                let v = s.sigmas().to_vec();
                (Box::new(s), v, "sigmas")
            }
            "EulerAncestralDiscreteScheduler" => {
                let s = EulerAncestralDiscrete::new(&cfg, steps).unwrap();
                let v = s.sigmas().to_vec();
                (Box::new(s), v, "sigmas")
            }
            "DDIMScheduler" => {
                let s = Ddim::new(&cfg, steps).unwrap();
                let v = s.alphas_at_timesteps();
                (Box::new(s), v, "alphas_cumprod")
            }
            other => panic!("unknown class {other}"),
        };
        let (timesteps, init) = (s.timesteps().to_vec(), s.init_noise_sigma());
        let values: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        let want_values = floats(&case[key]);
        // Timesteps: float32 values (fractional with Karras sigmas).
        close(
            &format!("{what} timesteps"),
            &timesteps,
            &want_t,
            1e-6,
            1e-4,
        );
        // torch's CPU `sqrt` is not always correctly rounded (1 ulp off on ~18% of inputs), which
        // `rescale_betas_zero_snr` amplifies near t = 0; other configs agree to float32 rounding.
        let rel = if cfg_name == "linear_v" { 2e-5 } else { 2e-6 };
        close(
            &format!("{what} sigmas/alphas"),
            &values,
            &want_values,
            rel,
            1e-9,
        );
        close(
            &format!("{what} init_noise_sigma"),
            &[init],
            &[want_init],
            2e-6,
            0.0,
        );
        n += 1;
    }
    assert!(n > 100);
}
