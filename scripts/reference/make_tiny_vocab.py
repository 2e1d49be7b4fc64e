"""Writes the tiny CLIP vocabulary committed under engine/src/tiny_vocab/.

It is the real CLIP BPE vocabulary cut down to VOCAB_SIZE entries, built the way CLIP builds
its own (open_clip's SimpleTokenizer / OpenAI CLIP): the 256 byte-level symbols, the same with
"</w>", the first merges of bpe_simple_vocab_16e6.txt.gz, then <|startoftext|>, <|endoftext|>.
Written as Hugging Face's CLIPTokenizer saves it (vocab.json + merges.txt).

    pip install open_clip_torch
    python scripts/reference/make_tiny_vocab.py
"""

import gzip
import json
import os

import open_clip.tokenizer as oct

VOCAB_SIZE = 1000
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "engine", "src", "tiny_vocab")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def main():
    bpe_path = oct.default_bpe()
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    n_merges = VOCAB_SIZE - 512 - 2
    merges = [tuple(m.split()) for m in lines[1 : 1 + n_merges]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == VOCAB_SIZE
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(OUT, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(" ".join(m) + "\n")
    print(f"wrote {len(vocab)} tokens, {len(merges)} merges to {os.path.abspath(OUT)}")


if __name__ == "__main__":
    main()
