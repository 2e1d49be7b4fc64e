"""Tiny SD 1.5 and SDXL inpainting models (9-channel UNets) made by diffusers, and
diffusers' StableDiffusionInpaintPipeline / StableDiffusionXLInpaintPipeline images on them
and on the ordinary tiny models (latent blending), for the engine's parity test
(inference/tests/parity.rs, set `parity_inpaint`).

    pip install torch diffusers transformers safetensors
    python scripts/reference/make_inpaint_fixtures.py

Writes inference/tests/fixtures/models/tiny-sd15-inpaint/ (tiny-sd15's text encoder,
tokenizer, VAE and scheduler with a UNet taking latents + mask + masked-image latents),
models/tiny-sdxl-inpaint/ (the same over tiny-sdxl: its UNet's config with 9 input
channels) and
inference/tests/fixtures/parity_inpaint/ (the init image, a mask with soft edges, which the
mask processor binarizes at 0.5, cases.json and the images).
"""

import os
import shutil

import numpy as np
import torch
from PIL import Image

from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)

from make_arch_fixtures import FIXTURES, MODELS, make_init_images, randomize, write_manifest, save_images

OUT = os.path.join(FIXTURES, "parity_inpaint")
MODEL = os.path.join(MODELS, "tiny-sd15-inpaint")
XL_MODEL = os.path.join(MODELS, "tiny-sdxl-inpaint")
SCHEDULERS = {"Euler": EulerDiscreteScheduler, "Euler a": EulerAncestralDiscreteScheduler, "DDIM": DDIMScheduler}


def build():
    sd15 = DiffusionPipeline.from_pretrained(os.path.join(MODELS, "tiny-sd15"), torch_dtype=torch.float32)
    torch.manual_seed(9)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        attention_head_dim=2,
        cross_attention_dim=32,
        norm_num_groups=4,
    )
    randomize(unet)
    pipe = StableDiffusionInpaintPipeline(
        vae=sd15.vae, text_encoder=sd15.text_encoder, tokenizer=sd15.tokenizer, unet=unet,
        scheduler=sd15.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    shutil.rmtree(MODEL, ignore_errors=True)
    pipe.save_pretrained(MODEL)


def build_xl():
    """tiny-sdxl with a UNet of its config but 9 input channels, redrawn."""
    xl = DiffusionPipeline.from_pretrained(os.path.join(MODELS, "tiny-sdxl"), variant="fp16",
                                           torch_dtype=torch.float32)
    config = dict(xl.unet.config)
    config["in_channels"] = 9
    torch.manual_seed(19)
    unet = UNet2DConditionModel.from_config(config)
    randomize(unet)
    pipe = StableDiffusionXLInpaintPipeline(
        vae=xl.vae, text_encoder=xl.text_encoder, text_encoder_2=xl.text_encoder_2, tokenizer=xl.tokenizer,
        tokenizer_2=xl.tokenizer_2, unet=unet, scheduler=xl.scheduler,
    )
    shutil.rmtree(XL_MODEL, ignore_errors=True)
    pipe.save_pretrained(XL_MODEL)


def make_mask():
    """A rectangle, its edges ramping from 0 to 255 so that binarization matters."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    inside = np.minimum(np.minimum(x - 12, 52 - x), np.minimum(y - 20, 48 - y))
    m = np.clip(128 + inside * 40, 0, 255).astype(np.uint8)
    Image.fromarray(m, "L").save(os.path.join(OUT, "mask_64.png"))


def cases():
    common = dict(model="tiny-sd15-inpaint", prompt="a photo of a cat", negative_prompt="blurry, low quality",
                  width=64, height=64, guidance=7.5, seed=5, steps=4, init_image="init_64.png", mask="mask_64.png")
    plain = dict(common, model="tiny-sd15")
    xl = dict(common, model="tiny-sdxl", guidance=5.0, seed=3)
    return [
        dict(common, id="inpaint_full_euler", scheduler="Euler", strength=1.0),
        dict(common, id="inpaint_075_ddim", scheduler="DDIM", strength=0.75),
        dict(common, id="inpaint_euler_a_2", scheduler="Euler a", strength=1.0, samples=2, negative_prompt=None),
        # Ordinary UNets: the latents blended with the noised image after each step.
        dict(plain, id="blend_full_euler", scheduler="Euler", strength=1.0),
        dict(plain, id="blend_07_ddim", scheduler="DDIM", strength=0.7),
        dict(plain, id="blend_euler_a_2", scheduler="Euler a", strength=0.9, samples=2),
        # SDXL: an ordinary UNet (blending) and a 9-channel one; 0.9999 is SDXL's default.
        dict(xl, id="xl_blend_full_euler", scheduler="Euler", strength=1.0),
        dict(xl, id="xl_blend_09999_euler_a_2", scheduler="Euler a", strength=0.9999, samples=2,
             negative_prompt=None),
        dict(xl, id="xl_inpaint_full_ddim", model="tiny-sdxl-inpaint", scheduler="DDIM", strength=1.0),
        dict(xl, id="xl_inpaint_07_euler", model="tiny-sdxl-inpaint", scheduler="Euler", strength=0.7),
    ]


@torch.no_grad()
def run(pipe, case):
    samples = case.get("samples", 1)
    gens = [torch.Generator("cpu").manual_seed(case["seed"] + i) for i in range(samples)]
    pipe.scheduler = SCHEDULERS[case["scheduler"]].from_config(pipe.scheduler.config)
    image = Image.open(os.path.join(OUT, case["init_image"])).convert("RGB")
    mask = Image.open(os.path.join(OUT, case["mask"]))
    return pipe(prompt=case["prompt"], negative_prompt=case["negative_prompt"], image=image, mask_image=mask,
                height=case["height"], width=case["width"], strength=case["strength"],
                num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                num_images_per_prompt=samples, generator=gens, output_type="pil").images


def main():
    build()
    build_xl()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    import make_arch_fixtures
    make_arch_fixtures.OUT = OUT
    make_init_images()
    os.remove(os.path.join(OUT, "init_100x80.png"))
    make_mask()
    pipes = {name: StableDiffusionInpaintPipeline.from_pretrained(os.path.join(MODELS, name), torch_dtype=torch.float32)
             for name in ("tiny-sd15-inpaint", "tiny-sd15")}
    pipes["tiny-sdxl"] = StableDiffusionXLInpaintPipeline.from_pretrained(
        os.path.join(MODELS, "tiny-sdxl"), variant="fp16", torch_dtype=torch.float32)
    pipes["tiny-sdxl-inpaint"] = StableDiffusionXLInpaintPipeline.from_pretrained(XL_MODEL, torch_dtype=torch.float32)
    all_cases = []
    for case in cases():
        pipe = pipes[case["model"]]
        pipe.set_progress_bar_config(disable=True)
        save_images(case, run(pipe, case), OUT)
        all_cases.append(case)
    write_manifest(OUT, {name: f"models/{name}" for name in pipes}, all_cases)


if __name__ == "__main__":
    main()
