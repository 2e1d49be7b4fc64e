"""A tiny SDXL refiner made by diffusers, and diffusers' ensemble-of-experts images (the base
denoises until `denoising_end`, the refiner from `denoising_start` on the same latents and
generators), for the engine's parity test (inference/tests/parity.rs, set `parity_refiner`).

    pip install torch diffusers transformers safetensors
    python scripts/reference/make_refiner_fixtures.py

Writes inference/tests/fixtures/models/tiny-sdxl-refiner/ (StableDiffusionXLImg2ImgPipeline
with text_encoder_2 only, `requires_aesthetics_score`, `force_zeros_for_empty_prompt` false,
the base's VAE and text_encoder_2 so that the pair fits as SDXL's does) and
inference/tests/fixtures/parity_refiner/ (cases.json and the images): the base
(models/tiny-sdxl) with `output_type="latent"` and `denoising_end`, then the refiner with
`image=latents` and `denoising_start`, `torch.Generator("cpu").manual_seed(seed + i)` per
image shared by both calls; and the refiner alone as img2img.
"""

import os
import shutil

import torch
from PIL import Image

from diffusers import (
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from make_arch_fixtures import FIXTURES, MODELS, make_init_images, randomize, write_manifest, sd_scheduler_kwargs

OUT = os.path.join(FIXTURES, "parity_refiner")
REFINER = os.path.join(MODELS, "tiny-sdxl-refiner")


def base():
    p = DiffusionPipeline.from_pretrained(os.path.join(MODELS, "tiny-sdxl"), variant="fp16",
                                          torch_dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


def build_refiner():
    b = base()
    torch.manual_seed(11)
    # SDXL's refiner: text_encoder_2's width as cross-attention, 5 time ids (no target size,
    # an aesthetic score), its own block layout.
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        attention_head_dim=(1, 2, 4),
        transformer_layers_per_block=(1, 1, 1),
        cross_attention_dim=32,
        norm_num_groups=4,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=5 * 8 + 32,
    )
    randomize(unet)
    sched = EulerDiscreteScheduler(interpolation_type="linear", use_karras_sigmas=False, **sd_scheduler_kwargs())
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=b.vae,
        text_encoder=None,
        text_encoder_2=b.text_encoder_2,
        tokenizer=None,
        tokenizer_2=b.tokenizer_2,
        unet=unet,
        scheduler=sched,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    shutil.rmtree(REFINER, ignore_errors=True)
    refiner.save_pretrained(REFINER)


def ensemble(start):
    return dict(model="tiny-sdxl", refiner="tiny-sdxl-refiner", refiner_start=start)


def cases():
    common = dict(prompt="a photo of a cat", negative_prompt="blurry, low quality", width=64, height=64,
                  guidance=5.0, seed=3)
    return [
        dict(common, id="ensemble_euler", scheduler="Euler", steps=6, **ensemble(0.8)),
        dict(common, id="ensemble_euler_a_2", scheduler="Euler a", steps=5, samples=2, **ensemble(0.7)),
        dict(common, id="ensemble_noneg", scheduler="Euler", steps=6, negative_prompt=None, **ensemble(0.8)),
        dict(common, id="refiner_i2i", model="tiny-sdxl-refiner", scheduler="Euler", steps=6,
             init_image="init_64.png", strength=0.5),
    ]


SCHEDULERS = {"Euler": EulerDiscreteScheduler, "Euler a": EulerAncestralDiscreteScheduler}


@torch.no_grad()
def run(case, b, r):
    samples = case.get("samples", 1)
    gens = [torch.Generator("cpu").manual_seed(case["seed"] + i) for i in range(samples)]
    for p in (b, r):
        p.scheduler = SCHEDULERS[case["scheduler"]].from_config(p.scheduler.config)
    kw = dict(prompt=case["prompt"], negative_prompt=case["negative_prompt"],
              num_inference_steps=case["steps"], guidance_scale=case["guidance"],
              num_images_per_prompt=samples, generator=gens)
    if "init_image" in case:
        init = Image.open(os.path.join(OUT, case["init_image"])).convert("RGB")
        return r(image=init, strength=case["strength"], output_type="pil", **kw).images
    latents = b(height=case["height"], width=case["width"], denoising_end=case["refiner_start"],
                output_type="latent", **kw).images
    return r(image=latents, denoising_start=case["refiner_start"], output_type="pil", **kw).images


def main():
    build_refiner()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    import make_arch_fixtures
    make_arch_fixtures.OUT = OUT
    make_init_images()
    os.remove(os.path.join(OUT, "init_100x80.png"))
    b = base()
    r = DiffusionPipeline.from_pretrained(REFINER, torch_dtype=torch.float32)
    r.set_progress_bar_config(disable=True)
    all_cases = []
    for case in cases():
        make_arch_fixtures.save_images(case, run(case, b, r), OUT)
        all_cases.append(case)
    write_manifest(OUT, {"tiny-sdxl": "models/tiny-sdxl", "tiny-sdxl-refiner": "models/tiny-sdxl-refiner"}, all_cases)


if __name__ == "__main__":
    main()
