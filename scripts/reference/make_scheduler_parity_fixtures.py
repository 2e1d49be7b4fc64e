"""Regenerates the diffusers reference images of the scheduler parity test
(inference/tests/scheduler_parity.rs): inference/tests/fixtures/scheduler_parity/{cases.json,
init_32.png, *.png}: txt2img and img2img with every scheduler name the engine accepts (and
Karras / SDE / several-image variants) on the tiny SDXL model.

The tiny model is written by the engine itself (`inference make-tiny-model DIR --seed 0`);
diffusers' StableDiffusionXLPipeline / StableDiffusionXLImg2ImgPipeline then run every case with
`Class.from_config(pipe.scheduler.config, **overrides)` (the overrides a name stands for, e.g.
"DPM++ 2M SDE Karras" = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++",
solver_order=2, use_karras_sigmas=True)), `torch.Generator("cpu").manual_seed(seed + i)` per
image and `output_type="pil"`. The Rust test regenerates the same tiny model, runs the same
cases by name and requires every pixel to be within 2/255 of these references.

    pip install torch diffusers transformers safetensors scipy
    CARGO_TARGET_DIR=/work/target-sched cargo build --release -p inference
    python scripts/reference/make_scheduler_parity_fixtures.py --bin /work/target-sched/release/inference
"""

import argparse
import json
import os
import subprocess
import tempfile

import diffusers
import numpy as np
import torch
from PIL import Image

from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "inference", "tests", "fixtures", "scheduler_parity")
TINY_SEED = 0

# Engine name -> (diffusers class, the config options the name fixes). Mirrors
# engine/src/scheduler/mod.rs (SchedulerKind::overrides).
NAMES = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPMSolverMultistepScheduler": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2S": ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPMSolverSinglestepScheduler": ("DPMSolverSinglestepScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "LCM": ("LCMScheduler", {}),
}


# Names that take a " Karras" suffix (use_karras_sigmas).
KARRAS_NAMES = ["DPM++ 2M", "DPM++ 2M SDE", "DPM2", "DPM2 a", "LMS", "Heun", "UniPC", "DEIS", "DPM++ 2S"]


def cases():
    out = []
    for name in NAMES:
        tag = name.lower().replace("+", "p").replace(" ", "_")
        base = dict(prompt="a photo of a cat", width=32, height=32, seed=21, scheduler=name, guidance=5.0,
                    negative_prompt=None)
        out.append(dict(base, id=f"t2i_{tag}", steps=5))
        out.append(dict(base, id=f"i2i_{tag}", steps=6, strength=0.6, init_image="init_32.png", seed=22,
                        negative_prompt="blurry"))
    # Several images: every image's per-step noise comes from its own generator.
    for name in ["Euler a", "DPM2 a", "DPM++ 2M SDE", "DDPM", "LCM"]:
        tag = name.lower().replace("+", "p").replace(" ", "_")
        out.append(dict(id=f"t2i_{tag}_samples2", prompt="a red car", width=32, height=32, steps=4, seed=31,
                        scheduler=name, guidance=4.0, negative_prompt=None, samples=2))
    # Karras sigmas (by name suffix and by the karras option).
    for name in [f"{n} Karras" for n in KARRAS_NAMES]:
        tag = name.lower().replace("+", "p").replace(" ", "_")
        out.append(dict(id=f"t2i_{tag}", prompt="mountains, snow", width=32, height=32, steps=6, seed=41,
                        scheduler=name, guidance=5.0, negative_prompt=None))
    out.append(dict(id="i2i_dpmpp_2m_sde_karras", prompt="mountains, snow", width=32, height=32, steps=8, seed=42,
                    scheduler="DPM++ 2M SDE", karras=True, guidance=5.0, negative_prompt=None,
                    init_image="init_32.png", strength=0.5))
    # Full-strength img2img with a second-order scheduler, one step of img2img, guidance off.
    out.append(dict(id="i2i_heun_strength_full", prompt="a dog", width=32, height=32, steps=4, seed=43,
                    scheduler="Heun", guidance=3.0, negative_prompt=None, init_image="init_32.png", strength=1.0))
    out.append(dict(id="i2i_dpm2_a_strength_low", prompt="a dog", width=32, height=32, steps=5, seed=44,
                    scheduler="DPM2 a", guidance=5.0, negative_prompt=None, init_image="init_32.png", strength=0.3))
    out.append(dict(id="t2i_unipc_cfg0_64", prompt="a dog", width=64, height=64, steps=8, seed=45,
                    scheduler="UniPC", guidance=0.0, negative_prompt=None))
    return out


def make_init_image():
    """A deterministic synthetic init image (gradients and a disc)."""
    w = h = 32
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 127 + 120 * np.sin(x / w * 6.0)
    g = 255 * (y / (h - 1))
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3) ** 2, 230.0, 40.0)
    Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8), "RGB").save(
        os.path.join(OUT, "init_32.png"))


def scheduler_for(base_config, case):
    name = case["scheduler"]
    karras = case.get("karras")
    if name.endswith(" Karras"):
        name, karras = name[: -len(" Karras")], True
    cls_name, overrides = NAMES[name]
    overrides = dict(overrides)
    if karras:
        overrides["use_karras_sigmas"] = True
    return getattr(diffusers, cls_name).from_config(base_config, **overrides)


def run_case(t2i, i2i, base_config, case):
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
    scheduler = scheduler_for(base_config, case)
    if "init_image" in case:
        init = Image.open(os.path.join(OUT, case["init_image"])).convert("RGB")
        i2i.scheduler = scheduler
        return i2i(image=init, strength=case["strength"], **common).images
    t2i.scheduler = scheduler
    return t2i(height=case["height"], width=case["width"], **common).images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "..", "target", "release", "inference"))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".png") or f == "cases.json":
            os.remove(os.path.join(OUT, f))
    make_init_image()
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
                img.save(os.path.join(OUT, name), optimize=True)
                files.append(name)
            case["expected"] = files
            print(case["id"], files)
    manifest = {
        "tiny_model_seed": TINY_SEED,
        "max_abs_diff": 2,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": __import__("transformers").__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cases": all_cases,
    }
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
