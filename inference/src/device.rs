//! Which device the engine runs on, and in what precision.

use std::str::FromStr;

use anyhow::{Context, bail};
use candle_core::{DType, Device};

/// `auto`: the first CUDA GPU when the binary is built with the `cuda` feature
/// and one is present, else the CPU. `cpu` and `cuda` force a choice.
pub fn select(choice: &str) -> anyhow::Result<Device> {
    match choice {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !cfg!(feature = "cuda") {
                bail!("--device cuda: this binary was built without the `cuda` feature");
            }
            let device = Device::new_cuda(0).context("--device cuda: no usable CUDA GPU")?;
            Ok(single_stream(device))
        }
        "auto" => {
            if cfg!(feature = "cuda") {
                match Device::new_cuda(0) {
                    Ok(d) => return Ok(single_stream(d)),
                    Err(e) => tracing::warn!(error = %e, "no usable CUDA GPU; running on the CPU"),
                }
            }
            Ok(Device::Cpu)
        }
        other => bail!("--device {other:?}: use auto, cpu or cuda"),
    }
}

/// `cpu` or `cuda:N`, for reports.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

/// Turns off cudarc's per-tensor CUDA events, which order uses of a tensor across streams:
/// every kernel of ours runs on the device's one stream, which orders them already, and the
/// events cost a record per operand of each of the thousands of launches a step makes.
fn single_stream(device: Device) -> Device {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &device {
        // SAFETY: the engine uses only this device's own stream (candle's), so no tensor is
        // used on another stream before its allocation, or freed while one still reads it.
        unsafe { d.disable_event_tracking() };
    }
    device
}

/// The precision the UNet and text encoders run in (`--dtype`, the catalog's `dtype`).
/// `auto` is the device's own ([`crate::engine::pipeline::model_dtype`]: f32 on the CPU,
/// bf16 on a GPU). In f16 the SDXL VAE runs in f32 when its config has `force_upcast` (see
/// `Pipeline::load`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub const ACCEPTED: &str = "auto, f32, f16 or bf16";

    pub fn dtype(self, device: &Device) -> DType {
        match self {
            Precision::Auto => crate::engine::pipeline::model_dtype(device),
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Precision::Auto,
            "f32" | "fp32" | "float32" => Precision::F32,
            "f16" | "fp16" | "float16" => Precision::F16,
            "bf16" | "bfloat16" => Precision::Bf16,
            other => bail!("dtype {other:?}: use {}", Self::ACCEPTED),
        })
    }
}
