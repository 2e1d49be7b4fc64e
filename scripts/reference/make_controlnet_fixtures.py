"""Tiny ControlNets made by diffusers for the committed tiny SD 1.5 and SDXL models, and
diffusers' ControlNet pipelines' images on them, for the engine's parity test
(inference/tests/parity.rs, set `parity_controlnet`); and OpenCV's Canny edges of the
init images, which the engine's canny preprocessor must reproduce.

    pip install torch diffusers transformers safetensors opencv-python-headless
    python scripts/reference/make_depth_fixtures.py       # first: the depth map used here
    python scripts/reference/make_controlnet_fixtures.py

Writes inference/tests/fixtures/models/tiny-controlnet-sd15/ and tiny-controlnet-sdxl/
(`ControlNetModel.from_unet` of the tiny UNets with a 4-level conditioning embedding, as
the VAEs' scale factor 8 needs, every parameter redrawn: `from_unet` leaves the zero
convolutions at zero, which would make the control image do nothing), a second SD 1.5
ControlNet (tiny-controlnet-sd15-b, BGR channel order) and
inference/tests/fixtures/parity_controlnet/ (the control images, the canny references,
cases.json and the images): StableDiffusionControlNetPipeline /
StableDiffusionControlNetImg2ImgPipeline / StableDiffusionXLControlNetPipeline /
StableDiffusionXLControlNetImg2ImgPipeline with one and two ControlNets, scales,
guidance windows and guess mode, `torch.Generator("cpu").manual_seed(seed + i)` per image.
"""

import os
import shutil

import cv2
import numpy as np
import torch
from PIL import Image

from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetPipeline,
)

from make_arch_fixtures import FIXTURES, MODELS, make_init_images, randomize, save_images, write_manifest

OUT = os.path.join(FIXTURES, "parity_controlnet")
SCHEDULERS = {"Euler": EulerDiscreteScheduler, "Euler a": EulerAncestralDiscreteScheduler, "DDIM": DDIMScheduler}
# name: (model, variant, seed, channel order, gain of the control image's embedding)
NETS = {
    "tiny-controlnet-sd15": ("tiny-sd15", None, 21, "rgb", 500.0),
    "tiny-controlnet-sd15-b": ("tiny-sd15", None, 22, "bgr", 500.0),
    "tiny-controlnet-sdxl": ("tiny-sdxl", "fp16", 23, "rgb", 150.0),
}


def base(name, variant):
    return DiffusionPipeline.from_pretrained(os.path.join(MODELS, name), variant=variant, torch_dtype=torch.float32)


def build_nets():
    for net, (model, variant, seed, order, gain) in NETS.items():
        unet = base(model, variant).unet
        torch.manual_seed(seed)
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16),
                                       controlnet_conditioning_channel_order=order)
        randomize(cn)
        with torch.no_grad():
            # Make the control image matter as much as the latents: the redrawn weights
            # leave its embedding small next to conv_in's output, and the images of two
            # control images would then differ by a level or two only.
            for p in cn.controlnet_cond_embedding.conv_out.parameters():
                p.mul_(gain)
        path = os.path.join(MODELS, net)
        shutil.rmtree(path, ignore_errors=True)
        cn.save_pretrained(path)


def make_control_images():
    """OpenCV's Canny (100, 200: diffusers' documented use) of each init image, three
    equal channels; and a synthetic control image of lines and a ring."""
    for name in ("init_64.png", "init_100x80.png"):
        rgb = np.asarray(Image.open(os.path.join(OUT, name)).convert("RGB"))
        edges = cv2.Canny(rgb, 100, 200)
        Image.fromarray(np.stack([edges] * 3, -1)).save(os.path.join(OUT, "canny_" + name))
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    ring = np.abs(np.hypot(x - 32, y - 30) - 18) < 2
    lines = (x.astype(int) % 16 == 3) | (y.astype(int) % 20 == 7)
    img = np.where(ring | lines, 255, 0).astype(np.uint8)
    Image.fromarray(np.stack([img, img // 2, 255 - img], -1), "RGB").save(os.path.join(OUT, "control_64.png"))
    # transformers' depth-estimation pipeline's map of init_64.png with the tiny depth
    # model, for the depth preprocessor's case.
    shutil.copy(os.path.join(FIXTURES, "depth", "depth_init_64.png"), os.path.join(OUT, "depth_init_64.png"))


def cases():
    sd = dict(model="tiny-sd15", prompt="a photo of a cat", negative_prompt="blurry, low quality",
              width=64, height=64, guidance=7.5, seed=5, steps=4, scheduler="Euler")
    xl = dict(sd, model="tiny-sdxl", guidance=5.0, seed=3)
    one = [dict(name="tiny-controlnet-sd15", image="control_64.png", scale=1.0, start=0.0, end=1.0)]
    return [
        dict(sd, id="sd15_cn", controlnets=one),
        dict(sd, id="sd15_cn_canny_scale_window", scheduler="DDIM", steps=5,
             controlnets=[dict(name="tiny-controlnet-sd15", image="canny_init_64.png", scale=0.6, start=0.2,
                               end=0.8)]),
        dict(sd, id="sd15_two_cn", scheduler="Euler a", samples=2,
             controlnets=one + [dict(name="tiny-controlnet-sd15-b", image="canny_init_64.png", scale=0.5, start=0.0,
                                     end=0.5)]),
        dict(sd, id="sd15_cn_guess", controlnets=one, guess_mode=True),
        # The edge's requests (tests/tests/controlnets.rs): canny of a photo, scale 1.
        dict(sd, id="sd15_cn_canny", controlnets=[dict(one[0], image="canny_init_64.png")]),
        dict(xl, id="sdxl_cn_canny", controlnets=[dict(name="tiny-controlnet-sdxl", image="canny_init_64.png",
                                                       scale=1.0, start=0.0, end=1.0)]),
        dict(sd, id="sd15_cn_depth", controlnets=[dict(one[0], image="depth_init_64.png")]),
        dict(sd, id="sd15_cn_i2i", init_image="init_64.png", strength=0.75,
             controlnets=[dict(one[0], scale=0.8)]),
        dict(xl, id="sdxl_cn", controlnets=[dict(name="tiny-controlnet-sdxl", image="control_64.png", scale=1.0,
                                                 start=0.0, end=1.0)]),
        dict(xl, id="sdxl_cn_i2i_euler_a", scheduler="Euler a", samples=2, negative_prompt=None,
             init_image="init_64.png", strength=0.6,
             controlnets=[dict(name="tiny-controlnet-sdxl", image="canny_init_64.png", scale=0.7, start=0.0,
                               end=1.0)]),
    ]


@torch.no_grad()
def run(pipes, nets, case):
    samples = case.get("samples", 1)
    gens = [torch.Generator("cpu").manual_seed(case["seed"] + i) for i in range(samples)]
    comps = pipes[case["model"]].components
    xl = case["model"] == "tiny-sdxl"
    units = case["controlnets"]
    cn = [nets[u["name"]] for u in units]
    images = [Image.open(os.path.join(OUT, u["image"])).convert("RGB") for u in units]
    single = len(units) == 1
    kwargs = dict(
        prompt=case["prompt"], negative_prompt=case["negative_prompt"], num_inference_steps=case["steps"],
        guidance_scale=case["guidance"], num_images_per_prompt=samples, generator=gens, output_type="pil",
        controlnet_conditioning_scale=units[0]["scale"] if single else [u["scale"] for u in units],
        control_guidance_start=units[0]["start"] if single else [u["start"] for u in units],
        control_guidance_end=units[0]["end"] if single else [u["end"] for u in units],
        guess_mode=case.get("guess_mode", False),
    )
    if "init_image" in case:
        cls = StableDiffusionXLControlNetImg2ImgPipeline if xl else StableDiffusionControlNetImg2ImgPipeline
        init = Image.open(os.path.join(OUT, case["init_image"])).convert("RGB")
        kwargs.update(image=init, control_image=images[0] if single else images, strength=case["strength"],
                      height=case["height"], width=case["width"])
    else:
        cls = StableDiffusionXLControlNetPipeline if xl else StableDiffusionControlNetPipeline
        kwargs.update(image=images[0] if single else images, height=case["height"], width=case["width"])
    extra = {} if xl else dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    comps = {k: v for k, v in comps.items() if k in ("vae", "text_encoder", "text_encoder_2", "tokenizer",
                                                     "tokenizer_2", "unet", "scheduler")}
    pipe = cls(**comps, controlnet=cn[0] if single else cn, **extra)
    pipe.scheduler = SCHEDULERS[case["scheduler"]].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(**kwargs).images


def main():
    build_nets()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    import make_arch_fixtures
    make_arch_fixtures.OUT = OUT
    make_init_images()
    make_control_images()
    pipes = {"tiny-sd15": base("tiny-sd15", None), "tiny-sdxl": base("tiny-sdxl", "fp16")}
    nets = {name: ControlNetModel.from_pretrained(os.path.join(MODELS, name), torch_dtype=torch.float32)
            for name in NETS}
    all_cases = []
    for case in cases():
        save_images(case, run(pipes, nets, case), OUT)
        all_cases.append(case)
    write_manifest(OUT, {name: f"models/{name}" for name in pipes}, all_cases, opencv=cv2.__version__,
                   controlnets={name: f"models/{name}" for name in NETS})


if __name__ == "__main__":
    main()
