"""Checks that diffusers / transformers load the folder written by `inference make-tiny-model`
exactly: every component's weights match its class (no missing, unexpected or mismatched
tensors) and loading the pipeline logs no warning.

    python scripts/reference/check_tiny_model_loads.py --bin target/release/inference
"""

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import warnings

from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "..", "target", "release", "inference"))
    ap.add_argument("--seed", default="0")
    args = ap.parse_args()
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "tiny")
        subprocess.run([args.bin, "make-tiny-model", model, "--seed", args.seed], check=True)
        for cls, sub in [
            (UNet2DConditionModel, "unet"),
            (AutoencoderKL, "vae"),
            (CLIPTextModel, "text_encoder"),
            (CLIPTextModelWithProjection, "text_encoder_2"),
        ]:
            _, info = cls.from_pretrained(model, subfolder=sub, output_loading_info=True)
            bad = {k: v for k, v in info.items() if v}
            print(f"{sub:15s} {cls.__name__:28s} loading info: {bad or 'clean'}")
            if bad:
                problems.append(f"{sub}: {bad}")
        for sub in ["tokenizer", "tokenizer_2"]:
            tok = CLIPTokenizer.from_pretrained(model, subfolder=sub)
            ids = tok("a photo of a cat", padding="max_length", max_length=tok.model_max_length).input_ids
            print(f"{sub:15s} pad {tok.pad_token!r} -> {tok.pad_token_id}, ids {ids[:8]}...")
        handler = Collect()
        for name in ["diffusers", "transformers"]:
            logging.getLogger(name).addHandler(handler)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = StableDiffusionXLPipeline.from_pretrained(model, add_watermarker=False)
        msgs = handler.records + [str(w.message) for w in caught]
        print(f"pipeline {type(pipe).__name__}: scheduler {type(pipe.scheduler).__name__}, "
              f"{len(msgs)} warnings")
        for m in msgs:
            print("  warning:", m)
        problems += msgs
    if problems:
        print("FAILED")
        sys.exit(1)
    print("OK: diffusers loads the tiny model without missing/unexpected weights or warnings")


if __name__ == "__main__":
    main()
