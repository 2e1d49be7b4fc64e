"""Tiny diffusers models of three Stable Diffusion architectures, and diffusers' reference images
on them, for the engine's parity test (inference/tests/parity.rs, `architectures_match_diffusers`).

    pip install torch diffusers transformers safetensors
    python scripts/reference/make_arch_fixtures.py --models      # rebuild the committed models
    python scripts/reference/make_arch_fixtures.py               # reference images for the default schedulers
    python scripts/reference/make_arch_fixtures.py --schedulers "Euler,Euler a,DDIM,DPM++ 2M"

Models (written to inference/tests/fixtures/models/, committed, so CI needs no Python): built by
diffusers / transformers themselves from tiny configs, randomly initialised by torch with a fixed
seed (`torch.manual_seed`, then every parameter redrawn so that each path contributes) and saved
with `save_pretrained`:

* `tiny-sd15`: StableDiffusionPipeline, SD 1.x layout (CrossAttn, CrossAttn, Down blocks; one
  attention_head_dim for all blocks; conv projections), CLIPTextModel with quick_gelu, epsilon
  prediction, SD 1.5's PNDMScheduler config, VAE scaling_factor 0.18215.
* `tiny-sd2`: StableDiffusionPipeline, SD 2.x layout (attention_head_dim per block, linear
  projections, upcast_attention; one layer per block), an OpenCLIP-like CLIPTextModel (gelu, pad "!",
  `use_attention_mask: true` so that option is exercised), SD 2.1's DDIMScheduler config with
  v_prediction; float16 weights saved as the single-file `fp16` variant.
* `tiny-sdxl`: StableDiffusionXLPipeline in the SSD-1B style (asymmetric
  `transformer_layers_per_block` with `reverse_transformer_layers_per_block`), two text encoders,
  saved with `variant="fp16"` in float16 and sharded (`*.safetensors.index.fp16.json`), so the
  engine's fp16-variant loading is exercised.

* `tiny-lcm`: LatentConsistencyModelPipeline, an LCM-distilled SD 1.5-like UNet
  (`time_cond_proj_dim`), LCM Dreamshaper's LCMScheduler config, single-file `fp16` variant.
  With schedulers other than LCMScheduler its references come from StableDiffusion(Img2Img)Pipeline
  (same guidance embedding, no CFG); with LCMScheduler from LatentConsistencyModel(Img2Img)Pipeline.

All have 4 VAE blocks (scale factor 8). `tiny-sdxl-turbo` (VARIANTS) is `tiny-sdxl` with
SDXL-Turbo's scheduler_config.json (EulerAncestralDiscreteScheduler, trailing spacing). Reference images: the diffusers pipeline (txt2img or
img2img class of the architecture) with `torch.Generator("cpu").manual_seed(seed + i)` per image,
`output_type="pil"`, for every model x scheduler x case in `cases()`; written with
`cases.json` to inference/tests/fixtures/parity_arch/.

`--schedulers` takes display names (keys of SCHEDULERS, where new scheduler classes are added:
name -> (diffusers class, config overrides)); each scheduler is built with
`cls.from_config(model_scheduler_config, **overrides)`, as the engine builds it.
"""

import argparse
import json
import os
import shutil
import tempfile

import numpy as np
import torch
from PIL import Image

import diffusers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LatentConsistencyModelImg2ImgPipeline,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from make_scheduler_parity_fixtures import KARRAS_NAMES, NAMES

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
FIXTURES = os.path.join(ROOT, "inference", "tests", "fixtures")
MODELS = os.path.join(FIXTURES, "models")
OUT = os.path.join(FIXTURES, "parity_arch")
VOCAB = os.path.join(ROOT, "inference", "src", "engine", "tiny_vocab")

# Display name -> (diffusers class, overrides of the model's scheduler config): the engine's
# names, kept in one place (make_scheduler_parity_fixtures.NAMES), plus their Karras forms.
SCHEDULERS = {name: (getattr(diffusers, cls), overrides) for name, (cls, overrides) in NAMES.items()}
SCHEDULERS.update({f"{name} Karras": (cls, dict(overrides, use_karras_sigmas=True))
                   for name, (cls, overrides) in list(SCHEDULERS.items()) if name in KARRAS_NAMES})
DEFAULT_SCHEDULERS = ["Euler", "Euler a", "DDIM"]
# v-prediction changes every scheduler's model-output conversion: the SD 2-like model runs
# every name (SWEEP_MODELS x SCHEDULERS, small images).
SWEEP_MODELS = ["tiny-sd2"]

# Longer than 77 CLIP tokens: diffusers truncates it (and warns).
LONG_PROMPT = ", ".join(["a very detailed oil painting of a lighthouse on a rocky coast at dusk"] * 6)

# --------------------------------------------------------------------------------------------
# Models


def tokenizer(pad):
    """The tiny CLIP vocabulary (first 1000 entries of the real one) as a CLIPTokenizer."""
    with tempfile.TemporaryDirectory() as d:
        for f in ["vocab.json", "merges.txt"]:
            shutil.copy(os.path.join(VOCAB, f), d)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(
                {
                    "tokenizer_class": "CLIPTokenizer",
                    "model_max_length": 77,
                    "bos_token": "<|startoftext|>",
                    "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>",
                    "pad_token": pad,
                    "do_lower_case": True,
                },
                f,
            )
        return CLIPTokenizer.from_pretrained(d)


def text_encoder(act, projection=False, **extra):
    cfg = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=5,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=1e-5,
        projection_dim=32,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        **extra,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def vae(scaling_factor):
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=True,
    )


def sd_scheduler_kwargs():
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def randomize(*modules):
    """Redraws every parameter so that every path contributes (diffusers' default init leaves
    some layers near zero): norm scales 1 + 0.1 n, other 1-D parameters 0.05 n, weights
    n / sqrt(fan_in)."""
    with torch.no_grad():
        for m in modules:
            for name, p in m.named_parameters():
                if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                elif p.ndim == 1:
                    p.copy_(0.05 * torch.randn_like(p))
                else:
                    p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5))


def build_sd15():
    torch.manual_seed(15)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        attention_head_dim=2,
        cross_attention_dim=32,
        norm_num_groups=4,
    )
    te = text_encoder("quick_gelu")
    v = vae(0.18215)
    randomize(unet, te, v)
    sched = PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **sd_scheduler_kwargs())
    pipe = StableDiffusionPipeline(
        vae=v,
        text_encoder=te,
        tokenizer=tokenizer("<|endoftext|>"),
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe, {}


def build_sd2():
    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=32,
        norm_num_groups=4,
        use_linear_projection=True,
        upcast_attention=True,
    )
    te = text_encoder("gelu", use_attention_mask=True)
    v = vae(0.18215)
    randomize(unet, te, v)
    sched = DDIMScheduler(
        clip_sample=False, set_alpha_to_one=False, prediction_type="v_prediction", **sd_scheduler_kwargs()
    )
    pipe = StableDiffusionPipeline(
        vae=v,
        text_encoder=te,
        tokenizer=tokenizer("!"),
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # float16 weights saved as the "fp16" variant (single files), to keep the fixtures small.
    pipe.to(torch.float16)
    return pipe, {"variant": "fp16"}


def build_sdxl():
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        attention_head_dim=(1, 2, 4),
        # SSD-1B style: per-layer transformer depths, and the up blocks' own list.
        transformer_layers_per_block=(1, (1, 2), (2, 1)),
        reverse_transformer_layers_per_block=((1, 2, 1), (2, 1, 1), 1),
        cross_attention_dim=64,
        norm_num_groups=4,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    te = text_encoder("quick_gelu")
    te2 = text_encoder("gelu", projection=True)
    v = vae(0.13025)
    randomize(unet, te, te2, v)
    sched = EulerDiscreteScheduler(interpolation_type="linear", use_karras_sigmas=False, **sd_scheduler_kwargs())
    pipe = StableDiffusionXLPipeline(
        vae=v,
        text_encoder=te,
        text_encoder_2=te2,
        tokenizer=tokenizer("<|endoftext|>"),
        tokenizer_2=tokenizer("!"),
        unet=unet,
        scheduler=sched,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    # float16 weights saved as the "fp16" variant, every component sharded.
    pipe.to(torch.float16)
    return pipe, {"variant": "fp16", "max_shard_size": "100KB"}


def build_lcm():
    torch.manual_seed(7)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        attention_head_dim=2,
        cross_attention_dim=32,
        norm_num_groups=4,
        time_cond_proj_dim=16,
    )
    te = text_encoder("quick_gelu")
    v = vae(0.18215)
    randomize(unet, te, v)
    # LCM Dreamshaper v7's scheduler config.
    sched = LCMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        original_inference_steps=50,
        set_alpha_to_one=True,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_scaling=10.0,
    )
    pipe = LatentConsistencyModelPipeline(
        vae=v,
        text_encoder=te,
        tokenizer=tokenizer("<|endoftext|>"),
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # float16 weights saved as the "fp16" variant, one file per component.
    pipe.to(torch.float16)
    return pipe, {"variant": "fp16"}


SD_KWARGS = {"requires_safety_checker": False}
XL_KWARGS = {"add_watermarker": False}
# name -> build, (txt2img, img2img) reference pipeline classes and their extra init kwargs, the
# weights variant, and for LCM the pipelines used with LCMScheduler.
ARCHS = {
    "tiny-sd15": dict(build=build_sd15, t2i=StableDiffusionPipeline, i2i=StableDiffusionImg2ImgPipeline,
                      kwargs=SD_KWARGS, variant=None),
    "tiny-sd2": dict(build=build_sd2, t2i=StableDiffusionPipeline, i2i=StableDiffusionImg2ImgPipeline,
                     kwargs=SD_KWARGS, variant="fp16"),
    "tiny-sdxl": dict(build=build_sdxl, t2i=StableDiffusionXLPipeline, i2i=StableDiffusionXLImg2ImgPipeline,
                      kwargs=XL_KWARGS, variant="fp16"),
    # An LCM-distilled SD 1.5-like UNet (time_cond_proj_dim). With other schedulers than LCM the
    # references come from StableDiffusion(Img2Img)Pipeline, which feeds it the same guidance
    # embedding (and no CFG); with LCMScheduler from LatentConsistencyModel(Img2Img)Pipeline.
    "tiny-lcm": dict(build=build_lcm, t2i=StableDiffusionPipeline, i2i=StableDiffusionImg2ImgPipeline,
                     kwargs=SD_KWARGS, variant="fp16",
                     lcm=(LatentConsistencyModelPipeline, LatentConsistencyModelImg2ImgPipeline)),
}


# Models that are another folder with a different scheduler_config.json (the Rust test copies the
# folder and writes this config): SDXL-Turbo is SDXL with stabilityai/sdxl-turbo's scheduler.
VARIANTS = {
    "tiny-sdxl-turbo": dict(
        base="tiny-sdxl",
        scheduler_config={
            "_class_name": "EulerAncestralDiscreteScheduler",
            "_diffusers_version": "0.24.0.dev0",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "clip_sample": False,
            "interpolation_type": "linear",
            "num_train_timesteps": 1000,
            "prediction_type": "epsilon",
            "sample_max_value": 1.0,
            "set_alpha_to_one": False,
            "skip_prk_steps": True,
            "steps_offset": 1,
            "timestep_spacing": "trailing",
            "trained_betas": None,
            "use_karras_sigmas": False,
        },
    ),
}


def build_models():
    for name, spec in ARCHS.items():
        build = spec["build"]
        out = os.path.join(MODELS, name)
        shutil.rmtree(out, ignore_errors=True)
        pipe, save_kwargs = build()
        pipe.save_pretrained(out, **save_kwargs)
        size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs)
        print(f"wrote {name}: {size / 1024:.0f} KiB")


# --------------------------------------------------------------------------------------------
# Reference images


def cases(models, schedulers):
    out = []
    for model in models:
        for sched in schedulers:
            tag = f"{model.removeprefix('tiny-')}_{sched.lower().replace(' ', '_').replace('+', 'p')}"
            base = dict(model=model, scheduler=sched, width=64, height=64)
            out.append(dict(base, id=f"{tag}_t2i_neg", prompt="a photo of a cat", negative_prompt="blurry, low quality",
                            guidance=7.5, steps=4, seed=1))
            out.append(dict(base, id=f"{tag}_t2i_long_noneg", prompt=LONG_PROMPT, negative_prompt=None, guidance=5.0,
                            steps=4, seed=2))
            out.append(dict(base, id=f"{tag}_i2i_neg", prompt="a photo of a dog", negative_prompt="ugly", guidance=6.0,
                            steps=5, seed=3, init_image="init_64.png", strength=0.6))
            out.append(dict(base, id=f"{tag}_i2i_cfg0", prompt="a photo of a dog", negative_prompt=None, guidance=0.0,
                            steps=4, seed=4, init_image="init_64.png", strength=0.75))
        # Per model: the model's own scheduler (when implemented), non-square size, two images, a resized init image.
        m = model.removeprefix("tiny-")
        s0 = schedulers[0]
        out.append(dict(model=model, id=f"{m}_t2i_80x48_samples2", scheduler=None, prompt="mountains, snow",
                        negative_prompt="", guidance=4.0, steps=5, seed=21, width=80, height=48, samples=2))
        out.append(dict(model=model, id=f"{m}_i2i_resized_init", scheduler=s0, prompt="a red car",
                        negative_prompt=None, guidance=5.0, steps=5, seed=22, width=64, height=64,
                        init_image="init_100x80.png", strength=0.5))
    return out


def sweep_cases(model):
    """Every scheduler name on one model: txt2img and img2img, 32x32."""
    m = model.removeprefix("tiny-")
    out = []
    for sched in SCHEDULERS:
        tag = f"{m}_sweep_{sched.lower().replace(' ', '_').replace('+', 'p')}"
        base = dict(model=model, scheduler=sched, width=32, height=32, prompt="a lighthouse at dusk")
        out.append(dict(base, id=f"{tag}_t2i", negative_prompt="blurry", guidance=5.0, steps=4, seed=51))
        if not sched.endswith(" Karras"):
            out.append(dict(base, id=f"{tag}_i2i", negative_prompt=None, guidance=4.0, steps=5, seed=52,
                            init_image="init_64.png", strength=0.6))
    return out


def variant_cases(name, schedulers):
    """SDXL-Turbo as it is used: its own scheduler (Euler a, trailing spacing), 1-4 steps, no
    CFG; plus the cross product's txt2img cases with the other schedulers on its config."""
    m = name.removeprefix("tiny-")
    base = dict(model=name, width=64, height=64, prompt="a cinematic photo of a fox", negative_prompt=None)
    out = [
        dict(base, id=f"{m}_default_1step", scheduler=None, guidance=0.0, steps=1, seed=31),
        dict(base, id=f"{m}_default_4steps_samples2", scheduler=None, guidance=0.0, steps=4, seed=32, samples=2),
        dict(base, id=f"{m}_default_i2i_2steps", scheduler=None, guidance=0.0, steps=2, seed=33,
             init_image="init_64.png", strength=0.5),
    ]
    for sched in schedulers:
        tag = sched.lower().replace(" ", "_").replace("+", "p")
        out.append(dict(base, id=f"{m}_{tag}_t2i_neg", scheduler=sched, negative_prompt="blurry", guidance=3.0,
                        steps=3, seed=34))
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


def default_scheduler_supported(base):
    """The engine can run a model's default scheduler only if it implements the class."""
    return any(cls.__name__ == type(base).__name__ for cls, _ in SCHEDULERS.values())


def run_case(pipes, base, case):
    """`pipes`: (txt2img, img2img, LCM pipelines or None); `base`: the scheduler the model
    folder was loaded with (its config is the one every scheduler is built from, as in the
    engine)."""
    t2i, i2i, lcm = pipes
    base_config = base.config
    if case["scheduler"] is None:
        scheduler = type(base).from_config(base_config)
    else:
        cls, overrides = SCHEDULERS[case["scheduler"]]
        scheduler = cls.from_config(base_config, **overrides)
    if lcm is not None and isinstance(scheduler, LCMScheduler):
        t2i, i2i = lcm
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
            # img2img keeps the image's size, so resize the same way first.
            init = init.resize((case["width"], case["height"]), Image.LANCZOS)
        i2i.scheduler = scheduler
        return i2i(image=init, strength=case["strength"], **common).images
    t2i.scheduler = scheduler
    return t2i(height=case["height"], width=case["width"], **common).images


def load(name):
    """The folder loaded by diffusers (the class its model_index.json names), and the reference
    pipelines over its components; plus the scheduler it was loaded with."""
    spec = ARCHS[name]
    native = DiffusionPipeline.from_pretrained(
        os.path.join(MODELS, name), variant=spec["variant"], torch_dtype=torch.float32, **spec["kwargs"]
    )
    comps = native.components

    def make(cls):
        p = cls(**comps, **spec["kwargs"])
        p.set_progress_bar_config(disable=True)
        return p

    lcm = tuple(make(c) for c in spec["lcm"]) if "lcm" in spec else None
    return (make(spec["t2i"]), make(spec["i2i"]), lcm), native.scheduler


def load_variant(name):
    """A base model whose folder has the variant's scheduler_config.json instead."""
    variant = VARIANTS[name]
    pipes, _ = load(variant["base"])
    cfg = variant["scheduler_config"]
    cls = getattr(diffusers, cfg["_class_name"])
    base = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    return pipes, base


def save_images(case, images, out):
    """Writes a case's reference images to `out` as `{id}_{i}.png` and lists them in
    `case["expected"]`."""
    files = []
    for i, img in enumerate(images):
        fname = f"{case['id']}_{i}.png"
        img.save(os.path.join(out, fname))
        files.append(fname)
    case["expected"] = files
    arr = np.asarray(images[0], dtype=np.float32)
    print(case["id"], files, f"mean {arr.mean():.1f} std {arr.std():.1f}")


def write_manifest(out, models, cases, **extra):
    """`out/cases.json`: the set's models (name -> folder under FIXTURES), its cases, the
    tolerance, and the versions the references were made with."""
    manifest = {
        "max_abs_diff": 2,
        "models": models,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": __import__("transformers").__version__,
        **extra,
        "cases": cases,
    }
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


def make_references(schedulers):
    unknown = [s for s in schedulers if s not in SCHEDULERS]
    if unknown:
        raise SystemExit(f"unknown schedulers {unknown}; known: {list(SCHEDULERS)}")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    make_init_images()
    all_cases = []
    runs = [(model, load, cases([model], schedulers) + (sweep_cases(model) if model in SWEEP_MODELS else []))
            for model in ARCHS]
    runs += [(name, load_variant, variant_cases(name, schedulers)) for name in VARIANTS]
    for model, loader, model_cases in runs:
        pipes, base = loader(model)
        for case in model_cases:
            if case["scheduler"] is None and not default_scheduler_supported(base):
                # The model's own scheduler class is not implemented (yet): use the first listed.
                case["scheduler"] = schedulers[0]
            save_images(case, run_case(pipes, base, case), OUT)
            all_cases.append(case)
    manifest = {
        "max_abs_diff": 2,
        "models": {name: os.path.relpath(os.path.join(MODELS, name), FIXTURES) for name in ARCHS},
        "variants": {
            name: {
                "base": os.path.relpath(os.path.join(MODELS, v["base"]), FIXTURES),
                "scheduler_config": v["scheduler_config"],
            }
            for name, v in VARIANTS.items()
        },
        "schedulers": schedulers,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": __import__("transformers").__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cases": all_cases,
    }
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", action="store_true", help="rebuild the committed tiny models first")
    ap.add_argument("--schedulers", default=",".join(DEFAULT_SCHEDULERS),
                    help=f"comma-separated display names from: {', '.join(SCHEDULERS)}")
    args = ap.parse_args()
    if args.models:
        build_models()
    make_references([s.strip() for s in args.schedulers.split(",") if s.strip()])


if __name__ == "__main__":
    main()
