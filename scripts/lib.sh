# Shared by the scripts: repository root, toolchain checks, GPU detection.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_DIR="$PWD"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

# A path the user gave, made absolute against where they ran the script.
from_caller() { case "$1" in /*) echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac; }

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

# The native binaries (edge-host, inference), always built with the same
# arguments so that cargo's feature resolution, and so its cache, stays the same.
build_native() {
  # shellcheck disable=SC2046
  cargo build --release --workspace --bins $(inference_features)
}
