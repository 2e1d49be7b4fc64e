"""Writes inference/tests/fixtures/torch_randn_<capability>.json: torch.randn values the
Rust noise module (engine/src/noise.rs) must reproduce bit for bit.

torch picks its CPU kernel by CPU capability (x86 AVX2 / AVX-512: the avx_mathfun Box-Muller;
DEFAULT: libm). Run it once per capability (ATEN_CPU_CAPABILITY can only lower it):

    python scripts/reference/make_noise_fixtures.py                      # avx512 here
    ATEN_CPU_CAPABILITY=avx2 python scripts/reference/make_noise_fixtures.py
    ATEN_CPU_CAPABILITY=default python scripts/reference/make_noise_fixtures.py
"""

import json
import os
import struct

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "inference", "tests", "fixtures")

# (seed, shape): numel < 16, == 16, not a multiple of 16, large (SD latents).
CASES = [
    (0, [1]),
    (0, [5]),
    (42, [15]),
    (1, [16]),
    (7, [17]),
    (123, [3, 7]),
    (2024, [1, 4, 9, 9]),
    (0, [1, 4, 8, 8]),
    (1, [1, 4, 16, 16]),
    (1, [1, 4, 128, 128]),
    (4294967295, [100]),
    (4294967296 + 5, [33]),
    (18446744073709551615, [40]),
]
# Several draws from one generator (the normal cache and the engine state carry over).
SEQUENCE_SEED = 99
SEQUENCE = [[3], [1], [20], [2], [16], [5]]


def bits(t):
    return [struct.unpack("<I", struct.pack("<f", float(v)))[0] for v in t.flatten().tolist()]


def fnv1a(words):
    h = 0xCBF29CE484222325
    for w in words:
        for b in struct.pack("<I", w):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def summarize(t):
    b = bits(t)
    keep = b if len(b) <= 64 else b[:24] + b[len(b) // 2 : len(b) // 2 + 8] + b[-24:]
    return {"numel": len(b), "bits": keep, "fnv1a": f"{fnv1a(b):016x}"}


def main():
    cap = torch.backends.cpu.get_cpu_capability()
    cases = []
    for seed, shape in CASES:
        g = torch.Generator("cpu").manual_seed(seed)
        t = torch.randn(shape, generator=g, dtype=torch.float32)
        cases.append({"seed": seed, "shape": shape, **summarize(t)})
    g = torch.Generator("cpu").manual_seed(SEQUENCE_SEED)
    seq = []
    for shape in SEQUENCE:
        t = torch.randn(shape, generator=g, dtype=torch.float32)
        seq.append({"shape": shape, **summarize(t)})
    data = {
        "torch_version": torch.__version__,
        "cpu_capability": cap,
        "cases": cases,
        "sequence_seed": SEQUENCE_SEED,
        "sequence": seq,
    }
    name = f"torch_randn_{cap.lower()}.json"
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    print(f"{cap}: wrote {os.path.abspath(path)}")


if __name__ == "__main__":
    main()
