"""A tiny random StableDiffusionSafetyChecker and diffusers' scores on a few images, for the
engine's safety checker (inference/tests/parity.rs, `safety_checker_scores_match_diffusers`).

    pip install torch diffusers transformers safetensors
    python scripts/reference/make_safety_fixtures.py

Writes inference/tests/fixtures/safety_checker/:

* `safety_checker/` (config.json + model.safetensors, `save_pretrained`) and
  `feature_extractor/preprocessor_config.json` (a CLIPImageProcessor for 32-pixel images):
  the components a diffusers model folder has, random weights, the concept thresholds set
  from these images' own similarities so that some are flagged and some are not, and no
  score lies within 0.01 of its threshold;
* `scores.json`: for each image (the parity_features references and the set's init image),
  diffusers' result: `special_scores`, `concept_scores` (as StableDiffusionSafetyChecker
  computes them, rounded to 3 decimals, with its 0.01 adjustment once a special concept
  is hit) and `nsfw`, the flag `forward` returns (its images replaced with black).

The feature extractor is transformers' PIL one (`CLIPImageProcessorPil`: PIL bicubic resize
of the shortest side, center crop, rescale, normalize); with torchvision installed,
transformers picks a torchvision resize instead, whose pixels differ slightly.
"""

import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor

from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker, cosine_distance

from make_arch_fixtures import FIXTURES, randomize

OUT = os.path.join(FIXTURES, "safety_checker")
IMAGES = os.path.join(FIXTURES, "parity_features")


def build():
    torch.manual_seed(501)
    config = CLIPConfig(
        text_config=dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        projection_dim=24,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    randomize(checker)
    with torch.no_grad():
        checker.concept_embeds.copy_(torch.randn(17, 24))
        checker.special_care_embeds.copy_(torch.randn(3, 24))
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, extractor


def embeds(checker, extractor, images):
    pixels = extractor(images, return_tensors="pt").pixel_values
    pooled = checker.vision_model(pixels)[1]
    return pixels, checker.visual_projection(pooled)


def scores(checker, image_embeds):
    """StableDiffusionSafetyChecker.forward's scores, step for step."""
    special_cos = cosine_distance(image_embeds, checker.special_care_embeds).cpu().float().numpy()
    cos = cosine_distance(image_embeds, checker.concept_embeds).cpu().float().numpy()
    out = []
    for i in range(image_embeds.shape[0]):
        adjustment = 0.0
        special, concept = [], []
        for j in range(len(special_cos[0])):
            s = round(special_cos[i][j] - checker.special_care_embeds_weights[j].item() + adjustment, 3)
            special.append(float(s))
            if s > 0:
                adjustment = 0.01
        for j in range(len(cos[0])):
            concept.append(float(round(cos[i][j] - checker.concept_embeds_weights[j].item() + adjustment, 3)))
        out.append(dict(special_scores=special, concept_scores=concept, nsfw=any(c > 0 for c in concept)))
    return out, special_cos, cos


@torch.no_grad()
def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    checker, extractor = build()
    names = sorted(f for f in os.listdir(IMAGES) if f.endswith(".png"))[:12]
    # A non-square image too (resize of the shortest side, then the center crop).
    wide = Image.open(os.path.join(IMAGES, names[0])).convert("RGB").resize((96, 64), Image.LANCZOS)
    wide.save(os.path.join(OUT, "wide_96x64.png"))
    files = [os.path.join(IMAGES, n) for n in names] + [os.path.join(OUT, "wide_96x64.png")]
    images = [Image.open(f).convert("RGB") for f in files]
    _, emb = embeds(checker, extractor, images)
    # Thresholds: each concept's similarity median over these images, moved off every
    # image's value by at least 0.02 (so no score is within a rounding step of 0).
    special_cos = cosine_distance(emb, checker.special_care_embeds).numpy()
    cos = cosine_distance(emb, checker.concept_embeds).numpy()

    def threshold(column, shift):
        t = float(np.median(column)) + shift
        while np.min(np.abs(column - t)) < 0.02:
            t += 0.013
        return t

    # Special concepts high (rarely hit), ordinary ones at the median.
    checker.special_care_embeds_weights.copy_(torch.tensor([threshold(special_cos[:, j], 0.2 if j else -0.05)
                                                            for j in range(3)]))
    checker.concept_embeds_weights.copy_(torch.tensor([threshold(cos[:, j], 0.1 + 0.02 * j) for j in range(17)]))
    result, _, _ = scores(checker, emb)
    # The flags as forward() returns them must be ours.
    pixels = extractor(images, return_tensors="pt").pixel_values
    blank = [np.ones((8, 8, 3)) for _ in images]
    _, has_nsfw = checker(images=blank, clip_input=pixels)
    assert [r["nsfw"] for r in result] == list(has_nsfw), (result, has_nsfw)
    assert any(has_nsfw) and not all(has_nsfw), has_nsfw
    checker.save_pretrained(os.path.join(OUT, "safety_checker"))
    extractor.save_pretrained(os.path.join(OUT, "feature_extractor"))
    manifest = {
        "tolerance": 0.002,
        "images": {os.path.relpath(f, FIXTURES): r for f, r in zip(files, result)},
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "diffusers": __import__("diffusers").__version__,
    }
    with open(os.path.join(OUT, "scores.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print("flagged:", [os.path.basename(f) for f, r in zip(files, result) if r["nsfw"]])


if __name__ == "__main__":
    main()
