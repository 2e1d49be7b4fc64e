# Shared by the scripts: repository root, toolchain checks, GPU detection.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"
  if command -v rustup >/dev/null; then
    rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || {
      say "adding the wasm32-wasip2 target (the edge component's)"
      rustup target add wasm32-wasip2
    }
  fi
}

# The cargo features of the inference server: CUDA when an NVIDIA GPU and the
# CUDA compiler are both here, CPU otherwise.
inference_features() {
  if [ "${INFERENCE_DEVICE:-auto}" = cpu ]; then return; fi
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    if command -v nvcc >/dev/null; then echo "--features inference/cuda"; return; fi
    say "an NVIDIA GPU is present but nvcc (the CUDA toolkit) is not: building for CPU" 
  fi
}
