//! Which device the engine runs on.

use anyhow::bail;
use candle_core::Device;

/// `auto`: the first CUDA GPU when the binary is built with the `cuda` feature
/// and one is present, else the CPU. `cpu` and `cuda` force a choice.
pub fn select(choice: &str) -> anyhow::Result<Device> {
    match choice {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !cfg!(feature = "cuda") {
                bail!("--device cuda: this binary was built without the `cuda` feature");
            }
            Ok(Device::new_cuda(0)?)
        }
        "auto" => {
            if cfg!(feature = "cuda") {
                match Device::new_cuda(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => tracing::warn!(error = %e, "no usable CUDA GPU; running on the CPU"),
                }
            }
            Ok(Device::Cpu)
        }
        other => bail!("--device {other:?}: use auto, cpu or cuda"),
    }
}
