//! UNet options the tiny SDXL model does not use (conv projections, only_cross_attention,
//! upcast_attention, freq_shift / flip_sin_to_cos variants, LCM's timestep_cond, per-sample
//! timesteps, an odd latent size): one forward pass against diffusers' output (fixture from
//! `scripts/reference/make_unet_variant_fixture.py`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use inference::engine::unet::UNet;

#[test]
fn unet_variant_matches_diffusers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet_variant");
    let unet = UNet::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let timesteps = io["timesteps"].to_vec1::<f32>().unwrap();
    let out = unet
        .forward(
            &io["sample"],
            &timesteps,
            &io["context"],
            None,
            Some(&io["cond"]),
        )
        .unwrap();
    let want = &io["out"];
    assert_eq!(out.dims(), want.dims());
    let diff = max_abs(&(out - want).unwrap());
    let scale = max_abs(want);
    println!("max abs diff {diff} (output max {scale})");
    assert!(diff <= 1e-4 * scale.max(1.0), "max abs diff {diff}");
}

/// The largest absolute value in `t`.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
