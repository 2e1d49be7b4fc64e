"""A tiny random Depth Anything (V2 layout: a DINOv2 backbone and a DPT head) made by
transformers, and transformers' depth-estimation pipeline's depth images on it, for the
engine's depth preprocessor (inference/tests/parity.rs, `depth_matches_transformers`).

    pip install torch transformers safetensors pillow
    python scripts/reference/make_depth_fixtures.py

Writes inference/tests/fixtures/models/tiny-depth-anything/ (config.json,
model.safetensors, preprocessor_config.json: DPTImageProcessor as Depth Anything V2's
checkpoints configure it, at 56 instead of 518) and
inference/tests/fixtures/depth/ (the input images, the pipeline's `depth` images and
`cases.json`). The pipeline resizes to a multiple of 14 keeping the aspect ratio
(bicubic), normalizes with ImageNet's mean and std, runs the model, resizes the
prediction back to the image's size (bicubic) and maps its range to 0-255 (truncated),
as ControlNet depth images are made.
"""

import json
import os
import shutil

import sys

import numpy as np
import torch
from PIL import Image

import transformers
from transformers import (
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    DPTImageProcessor,
    pipeline,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "inference", "tests", "fixtures")
MODEL = os.path.join(ROOT, "models", "tiny-depth-anything")
OUT = os.path.join(ROOT, "depth")


def build():
    torch.manual_seed(31)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=14,
                            image_size=56, out_indices=[1, 2, 3, 4], apply_layernorm=True,
                            reshape_hidden_states=False, layerscale_value=1.0, initializer_range=0.2)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                                 initializer_range=0.2)
    model = DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():
        # Every parameter redrawn (layer scales and norms included), so each path counts.
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "lambda" in name) and name.endswith(("weight", "lambda1")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5))
    shutil.rmtree(MODEL, ignore_errors=True)
    model.save_pretrained(MODEL)
    processor = DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                  do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                                  image_std=[0.229, 0.224, 0.225], resample=Image.BICUBIC)
    processor.save_pretrained(MODEL)


def images():
    """The parity sets' init images (one resized, one whose patch grid is not square: the
    position embeddings are interpolated) and a crop at the processor's size."""
    import make_arch_fixtures
    make_arch_fixtures.OUT = OUT
    make_arch_fixtures.make_init_images()
    out = {name: Image.open(os.path.join(OUT, name)).convert("RGB") for name in ("init_64.png", "init_100x80.png")}
    out["crop_56.png"] = out["init_64.png"].crop((4, 4, 60, 60))
    return out


def main():
    build()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    estimator = pipeline("depth-estimation", model=MODEL, device="cpu")
    cases = []
    for name, img in images().items():
        img.save(os.path.join(OUT, name))
        out = estimator(img)
        depth = out["depth"]
        expected = "depth_" + name
        depth.save(os.path.join(OUT, expected))
        pred = out["predicted_depth"]
        print(name, depth.size, depth.mode, np.asarray(depth).min(), np.asarray(depth).max(), tuple(pred.shape))
        cases.append({"image": name, "expected": expected})
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"model": "models/tiny-depth-anything", "torch": torch.__version__,
                   "transformers": transformers.__version__, "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
