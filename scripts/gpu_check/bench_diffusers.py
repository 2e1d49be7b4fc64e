"""The diffusers side of `inference bench`: the same options, the same measurements, the same
JSON shape (with "engine": "diffusers"), so that summary.py reads both alike.

    python -m gpu_check.bench_diffusers --model DIR --device cuda --dtype bf16 --prompt P \
        --width W --height H --steps S --guidance G --seed 0 --runs 3 --warmup 1 \
        --batches 1,2,4 --unet-steps 10 --save DIR --json FILE [--vae-dtype f32]

What is measured, as our engine measures it:
* load_s: DiffusionPipeline.from_pretrained in the run dtype, moved to the device (import of
  torch/diffusers not included; reported as import_s).
* pipeline: for each batch b, b images of one prompt in one call (num_images_per_prompt=b,
  image i drawn from torch.Generator("cpu").manual_seed(seed + i)), from the call to the PIL
  images, device synchronised. At batch 1, `warmup` untimed runs then `runs` timed ones; at
  each larger batch `warmup_batched` then `runs_batched` (a first call at a new shape pays for
  allocator growth and kernel choice: our engine warms each batch size too). denoise_s: from the
  first UNet call (a forward pre-hook, synchronised) to the latents, i.e. the denoising loop
  without prompt encoding, as our engine times it.
* unet_step: one UNet forward at batch 2 (the CFG pair) at the run's latent size, synchronised
  around each call.
* The VAE: the pipeline returns latents (output_type="latent") and this script decodes them
  with the VAE held in --vae-dtype, then postprocesses with pipe.image_processor exactly as the
  pipelines do. The default is diffusers' own rule, which our engine follows: f32 for SDXL in
  float16 when the VAE config has force_upcast, else the run dtype (bf16 has f32's range).
  gpu-check passes the vae_dtype our engine reported, so both sides decode alike whatever
  either rule becomes; and the VAE stays in that dtype instead of being cast to f32 and back
  on every call, as diffusers' SDXL pipeline does for f16.
Images of the first timed batch-1 run are saved as SAVE/diffusers_b1_<i>.png. The JSON file
is rewritten after each batch size, so a run cut short by its time limit still leaves results.
"""

import argparse
import json
import os
import statistics
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16", "f16"])
    ap.add_argument("--vae-dtype", default="auto", choices=["auto", "f32", "bf16", "f16"])
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--negative-prompt")
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--height", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--guidance", type=float, required=True)
    ap.add_argument("--scheduler", help="a diffusers scheduler class (default: the folder's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=3, help="timed runs at batch 1")
    ap.add_argument("--runs-batched", type=int, default=1, help="timed runs at each batch > 1")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before batch 1")
    ap.add_argument("--warmup-batched", type=int, default=1, help="untimed runs before each batch > 1")
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--unet-steps", type=int, default=10, help="timed UNet forwards at batch 2 (0: none)")
    ap.add_argument("--save", help="folder for the first timed batch-1 run's images")
    ap.add_argument("--json", help="also write the result here")
    return ap.parse_args()


def main():
    a = parse_args()
    t = time.perf_counter()
    import torch
    import diffusers
    import transformers
    import_s = time.perf_counter() - t

    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    dtype = dtypes[a.dtype]
    device = torch.device(a.device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    t = time.perf_counter()
    pipe = diffusers.DiffusionPipeline.from_pretrained(a.model, dtype=dtype)
    pipe.to(device)
    if a.scheduler:
        pipe.scheduler = getattr(diffusers, a.scheduler).from_config(pipe.scheduler.config)
    is_xl = "XL" in type(pipe).__name__
    vae = pipe.vae
    if a.vae_dtype == "auto":
        vae_dtype = torch.float32 if is_xl and vae.config.force_upcast and dtype == torch.float16 else dtype
    else:
        vae_dtype = dtypes[a.vae_dtype]
    vae.to(vae_dtype)
    sync()
    load_s = time.perf_counter() - t
    pipe.set_progress_bar_config(disable=True)

    def decode(latents):
        """The pipelines' own decode (SDXL: latents_mean/std when configured), in vae_dtype."""
        latents = latents.to(vae_dtype)
        cfg = vae.config
        if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(cfg.latents_std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / cfg.scaling_factor + mean
        else:
            latents = latents / cfg.scaling_factor
        return vae.decode(latents, return_dict=False)[0]

    nan_seen = []
    loop = {"on": False, "start": None}

    def first_unet_call(_module, _args):
        if loop["on"] and loop["start"] is None:
            sync()
            loop["start"] = time.perf_counter()

    pipe.unet.register_forward_pre_hook(first_unet_call)

    def generate(batch):
        gens = [torch.Generator("cpu").manual_seed(a.seed + i) for i in range(batch)]
        sync()
        t0 = time.perf_counter()
        loop.update(on=True, start=None)
        with torch.inference_mode():
            latents = pipe(prompt=a.prompt, negative_prompt=a.negative_prompt, width=a.width,
                           height=a.height, num_inference_steps=a.steps, guidance_scale=a.guidance,
                           num_images_per_prompt=batch, generator=gens, output_type="latent").images
            sync()
            t1 = time.perf_counter()
            loop["on"] = False
            image = decode(latents)
            nan_seen.append(bool(torch.isnan(image).any()))
            images = pipe.image_processor.postprocess(image, output_type="pil")
        sync()
        return images, time.perf_counter() - t0, t1 - (loop["start"] or t0)

    to_name = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
    saved = []
    pipeline = []
    res = {
        "engine": "diffusers", "model": a.model, "device": a.device, "dtype": a.dtype,
        "vae_dtype": to_name[vae_dtype], "width": a.width, "height": a.height, "steps": a.steps,
        "guidance": a.guidance, "scheduler": type(pipe.scheduler).__name__, "load_s": round(load_s, 3),
        "import_s": round(import_s, 3), "pipeline": pipeline, "unet_step": None, "images": saved,
        "nan": False, "attention_processor": next(
            (type(m.processor).__name__ for m in pipe.unet.modules() if hasattr(m, "processor")), None),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
    }

    def write(final=False):
        res["nan"] = any(nan_seen)
        if cuda:
            res["torch_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
            res["torch_max_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20)
        res["complete"] = final
        line = json.dumps(res)
        if final:
            print(line, flush=True)
        if a.json:
            with open(a.json + ".tmp", "w") as f:
                f.write(line + "\n")
            os.replace(a.json + ".tmp", a.json)

    write()
    for batch in [int(b) for b in a.batches.split(",") if b]:
        for _ in range(a.warmup if batch == 1 else a.warmup_batched):
            generate(batch)
        runs, denoise = [], []
        for r in range(a.runs if batch == 1 else a.runs_batched):
            images, total_s, denoise_s = generate(batch)
            runs.append(total_s)
            denoise.append(denoise_s)
            if batch == 1 and r == 0 and a.save:
                os.makedirs(a.save, exist_ok=True)
                for i, img in enumerate(images):
                    path = os.path.join(a.save, f"diffusers_b1_{i}.png")
                    img.save(path)
                    saved.append(path)
        if runs:
            med = statistics.median(runs)
            pipeline.append({"batch": batch, "runs_s": [round(x, 4) for x in runs], "median_s": round(med, 4),
                             "images_per_s": round(batch / med, 4),
                             "denoise_median_s": round(statistics.median(denoise), 4)})
        write()

    if a.unet_steps > 0:
        unet = pipe.unet
        g = torch.Generator("cpu").manual_seed(a.seed)
        h, w = a.height // pipe.vae_scale_factor, a.width // pipe.vae_scale_factor
        sample = torch.randn(2, unet.config.in_channels, h, w, generator=g).to(device, dtype)
        context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g).to(device, dtype)
        kwargs = {}
        if is_xl:  # pooled text embedding + (original size, crop, target size), as SDXL feeds them
            pooled = pipe.text_encoder_2.config.projection_dim
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.randn(2, pooled, generator=g).to(device, dtype),
                "time_ids": torch.tensor([[a.height, a.width, 0, 0, a.height, a.width]] * 2, device=device,
                                         dtype=dtype),
            }
        t_step = torch.tensor(500.0, device=device)

        def step():
            sync()
            t0 = time.perf_counter()
            with torch.inference_mode():
                unet(sample, t_step, encoder_hidden_states=context, return_dict=False, **kwargs)
            sync()
            return time.perf_counter() - t0

        step()  # warm-up
        runs = [step() for _ in range(a.unet_steps)]
        res["unet_step"] = {"batch": 2, "runs_s": [round(x, 5) for x in runs],
                            "median_s": round(statistics.median(runs), 5)}
    write(final=True)


if __name__ == "__main__":
    main()
