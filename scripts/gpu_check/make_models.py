"""Writes a random-weight model folder (diffusers layout) from the configs in configs.py, so that
our engine and diffusers load the very same weights.

    python -m gpu_check.make_models --model sdxl --out DIR [--dry-run] [--seed 0] [--device cuda]

diffusers and transformers build each component from its config; every parameter is then
redrawn from a seeded torch generator the way the committed tiny fixtures were
(scripts/reference/make_arch_fixtures.py, `randomize`: default inits leave some layers near zero,
so some paths would contribute nothing to the image); the pipeline is cast to float16 and saved
with save_pretrained (safetensors). The tokenizer folders are then replaced by byte-exact copies of
the committed fixtures' (a 1000-entry slice of the real CLIP vocabulary).

Components are built on the GPU when there is one (parameters created and drawn there: seconds
for SDXL's 3.5 B parameters instead of most of a minute of CPU random numbers). A folder that
already holds a stamp.json of the same configs, seed and writer is reused as it is.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time

from .configs import model_spec

WRITER_VERSION = 1  # bump when the way weights are drawn or saved changes


def randomize(module, torch):
    """Every parameter redrawn (as make_arch_fixtures.randomize): norm scales 1 + 0.1 n, other
    1-D parameters 0.05 n, weights n / sqrt(fan_in)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5))


def stamp_of(spec, seed, device, fixtures):
    """What identifies a written folder: the configs, the seed and the device whose generator drew
    the weights (CPU and CUDA draw differently), the writer, the tokenizers."""
    h = hashlib.sha256(json.dumps({"spec": spec, "seed": seed, "device": device, "writer": WRITER_VERSION},
                                  sort_keys=True).encode())
    for sub in sorted(spec["tokenizers"].values()):
        d = os.path.join(fixtures, sub)
        for f in sorted(os.listdir(d)):
            with open(os.path.join(d, f), "rb") as fh:
                h.update(f.encode() + fh.read())
    return h.hexdigest()


def build(spec, device, torch):
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text_encoder(cfg):
        cls = CLIPTextModelWithProjection if cfg["architectures"] == ["CLIPTextModelWithProjection"] \
            else CLIPTextModel
        return cls(CLIPTextConfig.from_dict(cfg))

    # Parameters are created (and default-initialised) directly on `device`.
    with torch.device(device):
        parts = {
            "unet": diffusers.UNet2DConditionModel.from_config(spec["unet"]),
            "vae": diffusers.AutoencoderKL.from_config(spec["vae"]),
        }
        for name in ("text_encoder", "text_encoder_2"):
            if name in spec:
                parts[name] = text_encoder(spec[name])
    for part in parts.values():
        randomize(part.eval(), torch)
    return parts


def write(name, out, seed, dry_run, device, fixtures):
    spec = model_spec(name, dry_run)
    stamp = stamp_of(spec, seed, device, fixtures)
    stamp_path = os.path.join(out, "stamp.json")
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if json.load(f).get("stamp") == stamp:
                return {"reused": True}

    import torch
    import diffusers
    from transformers import CLIPTokenizer

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("make_models: --device cuda but torch sees no GPU")
    t = time.perf_counter()
    try:
        torch.manual_seed(seed)  # seeds the CPU and every CUDA generator
        parts = build(spec, device, torch)
    except Exception as e:  # noqa: BLE001 - building on the GPU is an optimisation: fall back
        if device == "cpu":
            raise
        print(f"make_models: building on {device} failed ({e!r}); building on the CPU", file=sys.stderr)
        device = "cpu"
        stamp = stamp_of(spec, seed, device, fixtures)
        torch.manual_seed(seed)
        parts = build(spec, device, torch)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    for m in parts.values():
        m.to("cpu", torch.float16)  # saved as float16; moved to the CPU to serialise
    built_s = time.perf_counter() - t

    tokenizers = {k: CLIPTokenizer.from_pretrained(os.path.join(fixtures, sub))
                  for k, sub in spec["tokenizers"].items()}
    scheduler_cfg = spec["scheduler"]
    scheduler = getattr(diffusers, scheduler_cfg["_class_name"]).from_config(scheduler_cfg)
    if spec["pipeline"] == "StableDiffusionXLPipeline":
        pipe = diffusers.StableDiffusionXLPipeline(
            scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False,
            **parts, **tokenizers)
    else:
        pipe = diffusers.StableDiffusionPipeline(
            scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, **parts, **tokenizers)

    shutil.rmtree(out, ignore_errors=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # Byte-exact copies of the fixtures' tokenizer folders, whatever save_pretrained wrote.
    for k, sub in spec["tokenizers"].items():
        shutil.rmtree(os.path.join(out, k))
        shutil.copytree(os.path.join(fixtures, sub), os.path.join(out, k))
    with open(stamp_path, "w") as f:
        json.dump({"stamp": stamp, "model": name, "seed": seed, "device": device, "dry_run": dry_run}, f)
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs)
    return {"reused": False, "device": device, "build_s": round(built_s, 2), "params": params, "bytes": size}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["sdxl", "sd15"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="the tiny versions of the configs")
    ap.add_argument("--device", default="cuda", help="where parameters are drawn (cuda or cpu)")
    ap.add_argument("--fixtures", default="inference/tests/fixtures/models")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args()
    t = time.perf_counter()
    res = {"model": a.model, "dir": a.out, "seed": a.seed, "dry_run": a.dry_run}
    res.update(write(a.model, a.out, a.seed, a.dry_run, a.device, a.fixtures))
    res["seconds"] = round(time.perf_counter() - t, 2)
    line = json.dumps(res)
    print(line, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
