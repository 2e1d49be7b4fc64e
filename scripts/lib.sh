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

# The Spin CLI: $SPIN_BIN, or spin on PATH; fails when there is none.
spin_cli() {
  if [ -n "${SPIN_BIN:-}" ]; then [ -x "$SPIN_BIN" ] && echo "$SPIN_BIN"; else command -v spin; fi
}

# Installs Debian packages (as root, or through sudo); fails when it can't.
apt_install() {
  local sudo=()
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo=(sudo -n); } || return 1
  say "installing $* (apt-get)"
  { "${sudo[@]}" apt-get install -y -q "$@" || { "${sudo[@]}" apt-get update -q && "${sudo[@]}" apt-get install -y -q "$@"; }; } >/dev/null
}

# Whether an NVIDIA GPU is here (and not turned off with INFERENCE_DEVICE=cpu).
gpu_present() {
  [ "${INFERENCE_DEVICE:-auto}" != cpu ] && command -v nvidia-smi >/dev/null &&
    nvidia-smi -L >/dev/null 2>&1
}

# The cargo features of the inference server: CUDA when an NVIDIA GPU and the
# CUDA compiler are both here (with cuDNN's convolutions when its library is installed),
# CPU otherwise (a GPU without a toolkit: scripts/up uses scripts/build-cuda).
inference_features() {
  if gpu_present && command -v nvcc >/dev/null; then
    if ldconfig -p 2>/dev/null | grep -q 'libcudnn\.so\b' ||
      ls "${CUDA_HOME:-/usr/local/cuda}"/lib*/libcudnn.so >/dev/null 2>&1; then
      echo "--features inference/cuda,inference/cudnn"
    else
      echo "--features inference/cuda"
    fi
  fi
}

# The native binaries (edge-host, inference), always built with the same
# arguments so that cargo's feature resolution, and so its cache, stays the same.
build_native() {
  # shellcheck disable=SC2046
  cargo build --release --workspace --bins $(inference_features)
}
