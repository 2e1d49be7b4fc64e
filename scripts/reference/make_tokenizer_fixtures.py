"""Writes inference/tests/fixtures/tokenizer_ids.json (and tokenizer_json_v5/, tokenizer_2 as
transformers 5 saves it: tokenizer.json only): what transformers' CLIPTokenizer gives
(padding="max_length", max_length=77, truncation=True, as diffusers calls it) for tricky
prompts, with the tiny vocabulary's `tokenizer` (pad <|endoftext|>) and `tokenizer_2` (pad "!").

    python scripts/reference/make_tokenizer_fixtures.py --bin target/release/inference
"""

import argparse
import json
import os
import subprocess
import tempfile

from transformers import CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "inference", "tests", "fixtures", "tokenizer_ids.json")

PROMPTS = [
    "",
    "a photo of a cat",
    "A Photo  of\tTHE\nCat!!",
    "astronaut riding a horse, 4k, (masterpiece:1.2), ultra-detailed",
    "it's what we'd've done; they'll see",
    "café naïve résumé — ÆØÅ ß 東京 🚀",
    "numbers 1234567 and 3.14159",
    "<|startoftext|>inline special<|endoftext|> tokens",
    "   leading and trailing spaces   ",
    " ".join(["word"] * 100),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "..", "target", "release", "inference"))
    args = ap.parse_args()
    out = {"prompts": PROMPTS}
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "tiny")
        subprocess.run([args.bin, "make-tiny-model", model], check=True)
        for sub in ["tokenizer", "tokenizer_2"]:
            tok = CLIPTokenizer.from_pretrained(model, subfolder=sub)
            if sub == "tokenizer_2":
                # transformers 5 saves tokenizer.json + tokenizer_config.json only.
                tok.save_pretrained(os.path.join(os.path.dirname(OUT), "tokenizer_json_v5"))
            out[sub] = [
                tok(p, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
                for p in PROMPTS
            ]
    with open(OUT, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print("wrote", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
