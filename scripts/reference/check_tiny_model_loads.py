"""Checks that diffusers / transformers load the folder written by `inference make-tiny-model`
exactly: every component's weights match its class (no missing, unexpected or mismatched
tensors) and loading the pipeline logs no warning.

    python scripts/reference/check_tiny_model_loads.py --bin target/release/inference [--arch sdxl|sd15|sd2|all]
"""

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import warnings

from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


def check(bin_path, seed, arch):
    xl = arch == "sdxl"
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "tiny")
        subprocess.run([bin_path, "make-tiny-model", model, "--seed", seed, "--arch", arch], check=True)
        components = [
            (UNet2DConditionModel, "unet"),
            (AutoencoderKL, "vae"),
            (CLIPTextModel, "text_encoder"),
        ]
        if xl:
            components.append((CLIPTextModelWithProjection, "text_encoder_2"))
        for cls, sub in components:
            _, info = cls.from_pretrained(model, subfolder=sub, output_loading_info=True)
            bad = {k: v for k, v in info.items() if v}
            print(f"{sub:15s} {cls.__name__:28s} loading info: {bad or 'clean'}")
            if bad:
                problems.append(f"{sub}: {bad}")
        for sub in ["tokenizer", "tokenizer_2"] if xl else ["tokenizer"]:
            tok = CLIPTokenizer.from_pretrained(model, subfolder=sub)
            ids = tok("a photo of a cat", padding="max_length", max_length=tok.model_max_length).input_ids
            print(f"{sub:15s} pad {tok.pad_token!r} -> {tok.pad_token_id}, ids {ids[:8]}...")
        handler = Collect()
        for name in ["diffusers", "transformers"]:
            logging.getLogger(name).addHandler(handler)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if xl:
                pipe = StableDiffusionXLPipeline.from_pretrained(model, add_watermarker=False)
            else:
                pipe = StableDiffusionPipeline.from_pretrained(model)
        msgs = handler.records + [str(w.message) for w in caught]
        print(f"pipeline {type(pipe).__name__}: scheduler {type(pipe.scheduler).__name__}, "
              f"{len(msgs)} warnings")
        for m in msgs:
            print("  warning:", m)
        problems += msgs
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "..", "target", "release", "inference"))
    ap.add_argument("--seed", default="0")
    ap.add_argument("--arch", default="all", choices=["sdxl", "sd15", "sd2", "all"])
    args = ap.parse_args()
    problems = []
    for arch in ["sdxl", "sd15", "sd2"] if args.arch == "all" else [args.arch]:
        print(f"== {arch}")
        problems += check(args.bin, args.seed, arch)
    if problems:
        print("FAILED")
        sys.exit(1)
    print("OK: diffusers loads the tiny models without missing/unexpected weights or warnings")


if __name__ == "__main__":
    main()
