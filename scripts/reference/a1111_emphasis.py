"""A1111's prompt emphasis on diffusers' text encoders: the reference the engine's `emphasis =
a1111` mode is checked against (make_feature_fixtures.py feeds the result to diffusers'
pipelines as `prompt_embeds`).

A1111 (stable-diffusion-webui, modules/prompt_parser.py `parse_prompt_attention` and
modules/sd_hijack_clip.py, emphasis "Original") as it reads a prompt:

* `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1, `(text:1.3)`
  multiplies it by 1.3; they nest; `\\(`, `\\)`, `\\[`, `\\]` are literal brackets; an unclosed
  bracket applies to the end; `BREAK` starts a new chunk.
* each fragment is tokenized alone (no BOS / EOS); tokens go into chunks of 75, a chunk that
  fills up moves what follows its last comma (if within 20 tokens) to the next chunk;
* each chunk is `BOS + 75 tokens (padded with EOS) + EOS`, everything after the first EOS the
  tokenizer's pad token, encoded as the pipeline encodes a prompt (here: diffusers' hidden
  state for the model and clip_skip), then multiplied by its tokens' weights and rescaled
  to the mean it had before; chunks are concatenated along the tokens;
* SDXL: each text encoder does this on its own and the results are concatenated; the
  pooled embedding is text_encoder_2's for the first chunk;
* the prompt and negative prompt are made the same length by appending the encoding of
  the empty prompt to the shorter.
"""

import re

import torch

RE_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)

RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text):
    res = []
    round_brackets = []
    square_brackets = []

    def multiply_range(start, multiplier):
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in RE_ATTENTION.finditer(text):
        text = m.group(0)
        weight = m.group(1)
        if text.startswith("\\"):
            res.append([text[1:], 1.0])
        elif text == "(":
            round_brackets.append(len(res))
        elif text == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif text == ")" and round_brackets:
            multiply_range(round_brackets.pop(), 1.1)
        elif text == "]" and square_brackets:
            multiply_range(square_brackets.pop(), 1 / 1.1)
        else:
            parts = re.split(RE_BREAK, text)
            for i, part in enumerate(parts):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for pos in round_brackets:
        multiply_range(pos, 1.1)
    for pos in square_brackets:
        multiply_range(pos, 1 / 1.1)
    if len(res) == 0:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


def chunks(tokenizer, text, length=75, backtrack=20):
    """[(tokens, multipliers)], each 77 long."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    comma = tokenizer.get_vocab().get(",</w>")
    parsed = parse_prompt_attention(text)
    out = []
    tokens, mults = [], []
    last_comma = -1

    def next_chunk():
        nonlocal tokens, mults, last_comma
        fill = length - len(tokens)
        t = [bos] + tokens + [eos] * fill + [eos]
        m = [1.0] + mults + [1.0] * fill + [1.0]
        first_eos = t.index(eos)
        t = t[: first_eos + 1] + [pad] * (len(t) - first_eos - 1)
        out.append((t, m))
        tokens, mults, last_comma = [], [], -1

    for frag, weight in parsed:
        if frag == "BREAK" and weight == -1:
            next_chunk()
            continue
        ids = tokenizer(frag, truncation=False, add_special_tokens=False)["input_ids"]
        for tok in ids:
            if tok == comma:
                last_comma = len(tokens)
            elif backtrack and len(tokens) == length and last_comma != -1 and len(tokens) - last_comma <= backtrack:
                cut = last_comma + 1
                moved_t, moved_m = tokens[cut:], mults[cut:]
                tokens, mults = tokens[:cut], mults[:cut]
                next_chunk()
                tokens, mults = moved_t, moved_m
            if len(tokens) == length:
                next_chunk()
            tokens.append(tok)
            mults.append(weight)
    if tokens or not out:
        next_chunk()
    return out


def encode_chunk(encoder, ids, hidden_index, final_norm, mask_len=None):
    """One chunk as diffusers' pipeline encodes a prompt: the hidden state `hidden_index`
    (None: last_hidden_state), `final_norm` applied to it when set."""
    t = torch.tensor([ids])
    attention = None
    if mask_len is not None:
        attention = torch.zeros_like(t)
        attention[0, :mask_len] = 1
    out = encoder(t, attention_mask=attention, output_hidden_states=True)
    if hidden_index is None:
        z = out.last_hidden_state
    else:
        z = out.hidden_states[hidden_index]
        if final_norm is not None:
            z = final_norm(z)
    pooled = out[0] if out[0].ndim == 2 else None
    return z, pooled


def weighted(z, mults):
    m = torch.tensor(mults, dtype=z.dtype).reshape(1, -1, 1)
    original = z.mean()
    z = z * m.expand(z.shape)
    return z * (original / z.mean())


def encode(tokenizer, encoder, text, hidden_index, final_norm, use_mask):
    zs, pooled = [], None
    for ids, mults in chunks(tokenizer, text):
        mask_len = ids.index(tokenizer.eos_token_id) + 1 if use_mask else None
        z, p = encode_chunk(encoder, ids, hidden_index, final_norm, mask_len)
        zs.append(weighted(z, mults))
        if pooled is None:
            pooled = p
    return zs, pooled


def pad_to(a, b, empty):
    """The chunk lists of a prompt and a negative prompt, the shorter filled up with the
    empty prompt's chunk."""
    while len(a) < len(b):
        a.append(empty)
    while len(b) < len(a):
        b.append(empty)
    return a, b


@torch.no_grad()
def sd_embeds(pipe, prompt, negative, clip_skip=None):
    te, tok = pipe.text_encoder, pipe.tokenizer
    use_mask = bool(getattr(te.config, "use_attention_mask", False))
    norm = getattr(te, "final_layer_norm", None) or te.text_model.final_layer_norm
    index, final = (None, None) if clip_skip is None else (-(clip_skip + 1), norm)
    cond, _ = encode(tok, te, prompt, index, final, use_mask)
    uncond, _ = encode(tok, te, negative or "", None, None, use_mask)
    empty, _ = encode(tok, te, "", None, None, use_mask)
    cond, uncond = pad_to(cond, uncond, empty[0])
    return torch.cat(cond, 1), torch.cat(uncond, 1)


@torch.no_grad()
def sdxl_embeds(pipe, prompt, negative, clip_skip=None):
    """prompt_embeds, negative (None: zeros, as SDXL's force_zeros_for_empty_prompt), and
    both pooled."""
    index = -2 if clip_skip is None else -(clip_skip + 2)
    parts, uparts, eparts = [], [], []
    pooled = upooled = None
    for tok, te in [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]:
        c, p = encode(tok, te, prompt, index, None, False)
        u, up = encode(tok, te, negative or "", -2, None, False)
        e, _ = encode(tok, te, "", -2, None, False)
        parts.append(c)
        uparts.append(u)
        eparts.append(e[0])
        pooled, upooled = p, up
    n = max(len(parts[0]), len(uparts[0]))
    cond = torch.cat([torch.cat(c + [e] * (n - len(c)), 1) for c, e in zip(parts, eparts)], -1)
    uncond = torch.cat([torch.cat(u + [e] * (n - len(u)), 1) for u, e in zip(uparts, eparts)], -1)
    if negative is None:
        uncond, upooled = torch.zeros_like(cond), torch.zeros_like(pooled)
    return cond, uncond, pooled, upooled
