"""Regenerates the diffusers reference images for the engine's parity test
(inference/tests/parity.rs): inference/tests/fixtures/parity/{cases.json, init_*.png, *.png}.

The tiny model is written by the engine itself (`inference make-tiny-model DIR --seed 0`);
diffusers then runs every case on it with `torch.Generator("cpu").manual_seed(seed + i)` per
image and `output_type="pil"`. The Rust test regenerates the same tiny model, runs the same
cases and requires every pixel to be within 2/255 of these references.

    pip install torch diffusers transformers safetensors
    cargo build --release -p inference
    python scripts/reference/make_parity_fixtures.py [--bin target/release/inference]
"""

import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
import torch
from PIL import Image

from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "inference", "tests", "fixtures", "parity")
TINY_SEED = 0

SCHEDULERS = {
    "Euler": EulerDiscreteScheduler,
    "Euler a": EulerAncestralDiscreteScheduler,
    "DDIM": DDIMScheduler,
}

LONG_PROMPT = " ".join(["a very detailed painting of a lighthouse on a rocky coast at dusk"] * 8)


def cases():
    out = []
    for sched in SCHEDULERS:
        tag = sched.lower().replace(" ", "_")
        base = dict(prompt="a photo of a cat", width=64, height=64, steps=4, seed=1, scheduler=sched)
        out.append(dict(base, id=f"t2i_{tag}_cfg5_noneg", guidance=5.0, negative_prompt=None))
        out.append(dict(base, id=f"t2i_{tag}_cfg5_neg", guidance=5.0, negative_prompt="blurry, low quality"))
        out.append(dict(base, id=f"t2i_{tag}_cfg5_emptyneg", guidance=5.0, negative_prompt=""))
        out.append(dict(base, id=f"t2i_{tag}_cfg0", guidance=0.0, negative_prompt=None, seed=7))
        out.append(
            dict(base, id=f"i2i_{tag}_cfg5_neg", guidance=5.0, negative_prompt="ugly", init_image="init_64.png",
                 strength=0.6, steps=5, seed=3)
        )
        out.append(
            dict(base, id=f"i2i_{tag}_cfg0", guidance=0.0, negative_prompt=None, init_image="init_64.png",
                 strength=0.75, steps=4, seed=4)
        )
    # Larger, non-square, several images, Karras sigmas, long (truncated) prompt, resize.
    out.append(dict(id="t2i_euler_128x96_samples2", prompt="a red car", width=128, height=96, steps=5, seed=11,
                    scheduler="Euler", guidance=5.0, negative_prompt=None, samples=2))
    out.append(dict(id="t2i_euler_karras", prompt="a red car", width=64, height=64, steps=6, seed=12,
                    scheduler="Euler", karras=True, guidance=4.0, negative_prompt="dark"))
    out.append(dict(id="t2i_euler_a_long_prompt", prompt=LONG_PROMPT, width=64, height=64, steps=4, seed=13,
                    scheduler="Euler a", guidance=5.0, negative_prompt=None))
    out.append(dict(id="t2i_default_scheduler_128", prompt="mountains, snow", width=128, height=128, steps=8,
                    seed=14, scheduler=None, guidance=5.0, negative_prompt=None))
    out.append(dict(id="i2i_euler_resized_init", prompt="a photo of a dog", width=64, height=64, steps=5, seed=15,
                    scheduler="Euler", guidance=5.0, negative_prompt=None, init_image="init_100x80.png",
                    strength=0.5))
    # Latent 9x7: the UNet's upsamplers get explicit sizes (diffusers' forward_upsample_size).
    out.append(dict(id="t2i_euler_a_72x56_odd_latent", prompt="a photo of a cat", width=72, height=56, steps=4,
                    seed=16, scheduler="Euler a", guidance=5.0, negative_prompt=None))
    # int(5 * 0.3) = 1 step; full-strength img2img.
    out.append(dict(id="i2i_ddim_strength_low", prompt="a photo of a dog", width=64, height=64, steps=5, seed=17,
                    scheduler="DDIM", guidance=5.0, negative_prompt=None, init_image="init_64.png", strength=0.3))
    out.append(dict(id="i2i_euler_strength_full", prompt="a photo of a dog", width=64, height=64, steps=4, seed=18,
                    scheduler="Euler", guidance=3.0, negative_prompt="ugly", init_image="init_64.png", strength=1.0))
    return out


def make_init_images():
    """Deterministic synthetic init images (gradients and shapes)."""
    def draw(w, h, phase):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        r = 127 + 120 * np.sin(x / w * 6.0 + phase)
        g = 255 * (y / max(h - 1, 1))
        b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3) ** 2, 230.0, 40.0)
        return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8), "RGB")

    draw(64, 64, 0.0).save(os.path.join(OUT, "init_64.png"))
    draw(100, 80, 1.0).save(os.path.join(OUT, "init_100x80.png"))


def run_case(t2i, i2i, base_sched_config, case):
    sched_name = case.get("scheduler")
    cls = SCHEDULERS[sched_name] if sched_name else EulerDiscreteScheduler
    overrides = {}
    if case.get("karras"):
        overrides["use_karras_sigmas"] = True
    scheduler = cls.from_config(base_sched_config, **overrides)
    samples = case.get("samples", 1)
    gens = [torch.Generator("cpu").manual_seed(case["seed"] + i) for i in range(samples)]
    common = dict(
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"],
        num_inference_steps=case["steps"],
        guidance_scale=case["guidance"],
        num_images_per_prompt=samples,
        generator=gens,
        output_type="pil",
    )
    if "init_image" in case:
        init = Image.open(os.path.join(OUT, case["init_image"])).convert("RGB")
        if init.size != (case["width"], case["height"]):
            # The engine resizes init images to the requested size with Lanczos; diffusers'
            # img2img keeps the image size, so resize the same way first.
            init = init.resize((case["width"], case["height"]), Image.LANCZOS)
        i2i.scheduler = scheduler
        return i2i(image=init, strength=case["strength"], **common).images
    t2i.scheduler = scheduler
    return t2i(height=case["height"], width=case["width"], **common).images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "..", "target", "release", "inference"))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    make_init_images()
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "tiny")
        subprocess.run([args.bin, "make-tiny-model", model, "--seed", str(TINY_SEED)], check=True)
        t2i = StableDiffusionXLPipeline.from_pretrained(model, add_watermarker=False)
        t2i.set_progress_bar_config(disable=True)
        i2i = StableDiffusionXLImg2ImgPipeline(**t2i.components, add_watermarker=False)
        i2i.set_progress_bar_config(disable=True)
        base_config = t2i.scheduler.config
        all_cases = cases()
        for case in all_cases:
            images = run_case(t2i, i2i, base_config, case)
            files = []
            for i, img in enumerate(images):
                name = f"{case['id']}_{i}.png"
                img.save(os.path.join(OUT, name))
                files.append(name)
            case["expected"] = files
            print(case["id"], files)
    manifest = {
        "tiny_model_seed": TINY_SEED,
        "max_abs_diff": 2,
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "transformers": __import__("transformers").__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cases": all_cases,
    }
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
