"""The diffusers side of scripts/bench-engine: the same measurements as
`inference bench` (ours), with PyTorch on the CPU, printed as JSON lines.

    python scripts/reference/bench_diffusers.py unet [--runs N]
    python scripts/reference/bench_diffusers.py pipeline --model DIR [--runs N] [--size PX] [--steps N]
"""

import argparse
import json
import os
import statistics
import time

import torch

SD15_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False, cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)


def report(what, runs):
    print(json.dumps({"engine": "diffusers", "what": what, "median_s": round(statistics.median(runs), 4),
                      "runs_s": [round(r, 4) for r in runs]}), flush=True)


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_unet(runs):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    sample = torch.randn(2, 4, 64, 64)
    context = torch.randn(2, 77, 768)
    t = torch.tensor([500, 500])

    def step():
        with torch.inference_mode():
            unet(sample, t, encoder_hidden_states=context).sample.sum().item()

    step()  # warm-up
    report("unet_step_b2_64x64", [timed(step) for _ in range(runs)])


def bench_pipeline(model, runs, size, steps):
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def once():
        with torch.inference_mode():
            pipe(prompt="a lighthouse at dusk", width=size, height=size, num_inference_steps=steps,
                 guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(42), output_type="pil")

    once()  # warm-up
    report(f"txt2img_{size}x{size}_{steps}steps_b1", [timed(once) for _ in range(runs)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["unet", "pipeline"])
    ap.add_argument("--model")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    # Same cores as ours: every core of the machine (or what OMP_NUM_THREADS says).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    if a.what == "unet":
        bench_unet(a.runs)
    else:
        bench_pipeline(a.model, a.runs, a.size, a.steps)


if __name__ == "__main__":
    main()
