"""Tiny Stable Diffusion 3 / 3.5 models in diffusers' folder layout, and diffusers' reference images
on them, for the engine's SD3 parity fixtures.

    pip install torch diffusers transformers safetensors sentencepiece protobuf accelerate
    python3 scripts/reference/make_sd3_fixtures.py

Writes (everything is rebuilt on each run, deterministically):

* inference/tests/fixtures/models/tiny-sd3/, tiny-sd35/ (committed): StableDiffusion3Pipeline
  folders written by diffusers' `save_pretrained` (fp32 safetensors, one file per component):
  - transformer: SD3Transformer2DModel, 3 MMDiT blocks of 4 heads x 8; `tiny-sd3` is SD3-Medium-like
    (no qk norm, no dual attention), `tiny-sd35` SD3.5-Medium-like (`qk_norm="rms_norm"`,
    `dual_attention_layers=(0, 1)`);
  - text_encoder / text_encoder_2: CLIPTextModelWithProjection (CLIP-L-like quick_gelu, hidden 16;
    CLIP-G-like gelu, hidden 24), tokenizer / tokenizer_2: copies of tiny-sdxl's tiny CLIP tokenizers
    (pad "<|endoftext|>" and "!", as SD3's);
  - text_encoder_3: T5EncoderModel (T5 v1.1-like gated-gelu, d_model 48), tokenizer_3: a 300-piece
    sentencepiece unigram model trained here on generated English, saved as a T5 tokenizer
    (tokenizer.json; <pad> 0, </s> 1, <unk> 2, no extra ids) with a small custom normalisation
    table (so tokenizer.json has a Precompiled normaliser, like T5's);
  - vae: AutoencoderKL with 16 latent channels, 2 blocks (scale factor 2), no quant convs, SD3's
    scaling/shift factors; scheduler: FlowMatchEulerDiscreteScheduler(shift=3.0).
  Random weights: `torch.manual_seed(0)`, then every parameter redrawn (`randomize`) so that every
  path contributes.
* inference/tests/fixtures/parity_sd3/ (committed): `init_64.png`, reference PNGs and `cases.json`
  (the format of parity_arch/cases.json, plus "no_t5_models": the same folders loaded with
  `text_encoder_3=None, tokenizer_3=None`, for which diffusers uses zeros in place of T5's output,
  and "variants": a model folder with another scheduler_config.json).
* /tmp/sd3_debug/ (not committed): intermediate tensors of the first tiny-sd35 txt2img case
  (token ids, each text encoder's outputs, prompt embeddings, timesteps/sigmas, latents, the
  first transformer call) and a transformer forward with `skip_layers=[1]`, as safetensors, with a
  README listing names and shapes.

References: the diffusers pipeline (StableDiffusion3Pipeline or StableDiffusion3Img2ImgPipeline
over the same components), fp32 on CPU, `torch.Generator("cpu").manual_seed(seed + i)` per image,
`output_type="pil"`.
"""

import io
import json
import logging
import os
import random
import shutil
import tempfile
import warnings

import numpy as np
import sentencepiece as spm
import torch
from PIL import Image
from safetensors.torch import save_file
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Tokenizer

import diffusers
import transformers
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "inference", "tests", "fixtures")
MODELS = os.path.join(FIXTURES, "models")
OUT = os.path.join(FIXTURES, "parity_sd3")
DEBUG = "/tmp/sd3_debug"
# The tiny CLIP tokenizers (first 1000 entries of the real CLIP BPE), reused as-is.
CLIP_TOKENIZERS = os.path.join(MODELS, "tiny-sdxl")

# Longer than 77 CLIP tokens (CLIP truncates it) but under 256 T5 tokens.
LONG_PROMPT = ", ".join(["a very detailed oil painting of a lighthouse on a rocky coast at dusk"] * 6)
# Longer than 256 T5 tokens as well: T5's input is truncated too.
VERY_LONG_PROMPT = ", ".join(["a cinematic photo of a red fox walking in the snow under a bright moon"] * 22)

# Diffusers' defaults for skip-layer guidance (StableDiffusion3Pipeline.__call__).
SLG_DEFAULTS = dict(skip_layer_guidance_scale=2.8, skip_layer_guidance_start=0.01, skip_layer_guidance_stop=0.2)

# --------------------------------------------------------------------------------------------
# Tokenizers

WORDS = """the a an of and in on at with under over near by from to for beside behind above
photo picture painting drawing sketch portrait landscape illustration render image scene view
cat dog fox bird horse cow sheep fish owl wolf bear deer rabbit lion tiger mouse duck frog
red blue green yellow orange purple pink black white gray brown golden silver dark bright pale
big small tall short old young tiny huge happy sad calm quiet loud soft warm cold wet dry
house city street road bridge tower castle garden forest mountain mountains river lake sea ocean
beach sky cloud sun moon star rain snow storm wind fog night morning evening sunset sunrise dusk
dawn tree flower grass leaf rock stone sand water fire ice light shadow window door wall roof
man woman child girl boy people friend family farmer sailor king queen knight robot
car boat ship train plane bicycle lamp chair table book cup bottle hat coat shoe
detailed beautiful cinematic realistic sharp blurry low high quality ugly lovely simple
watercolor oil acrylic pencil ink digital studio lighting soft focus wide angle close up
lighthouse rocky coast harbor village valley hill field meadow desert island cave
walking running sitting standing flying swimming sleeping reading looking playing
very slightly highly best masterpiece style art artist colorful vivid moody dramatic
kitchen bedroom library museum market station airport school church temple palace
apple bread cake coffee tea wine cheese lemon cherry
spring summer autumn winter weather thunder lightning rainbow mist frost
ancient modern future vintage retro gothic baroque minimal abstract surreal
one two three four five six seven eight nine ten 1 2 3 4 5 6 7 8 9 0
glass metal wood paper cloth velvet marble copper bronze crystal
The A An In On At""".split()


def t5_corpus(prompts):
    """A few hundred lines of simple English: the cases' prompts plus random word sequences."""
    rng = random.Random(0)
    lines = [p for p in prompts if p]
    for _ in range(600):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        lines.append(" ".join(words) + rng.choice(["", ",", ".", "!", ", 4k"]))
    return lines


def normalization_rules():
    """A small sentencepiece normalisation table (fullwidth ASCII and the ideographic space to
    ASCII, curly quotes to straight), instead of nmt_nfkc's 240 KB one: tokenizer.json still gets a
    Precompiled normaliser, as T5's has."""
    rules = [f"{0xFF00 + c - 0x20:04X}\t{c:02X}" for c in range(0x21, 0x7F)]
    rules += ["3000\t20", "2018\t27", "2019\t27", "201C\t22", "201D\t22"]
    return "\n".join(rules) + "\n"


def make_t5_tokenizer(prompts):
    """Trains a 300-piece sentencepiece unigram model (T5's special ids: <pad> 0, </s> 1, <unk> 2,
    no <s>) and wraps it as transformers' T5 tokenizer (the tokenizers-backed one; no extra ids)."""
    model = io.BytesIO()
    with tempfile.TemporaryDirectory() as d:
        rules = os.path.join(d, "rules.tsv")
        with open(rules, "w") as f:
            f.write(normalization_rules())
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(t5_corpus(prompts)),
            model_writer=model,
            vocab_size=300,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
            normalization_rule_tsv=rules,
            num_threads=1,
            shuffle_input_sentence=False,
            minloglevel=2,
        )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    tok = T5Tokenizer(
        vocab=[(p.piece, p.score) for p in proto.pieces],
        _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap,
        extra_ids=0,
        model_max_length=512,
    )
    # The wrapped tokenizer must tokenise as sentencepiece itself does (plus the </s> it appends).
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    for text in prompts + ["Ａ ｃａｔ　“quoted” it’s", "  lots   of  space  "]:
        assert tok(text).input_ids == sp.encode(text) + [1], text
    return tok


def clip_tokenizers():
    return (CLIPTokenizer.from_pretrained(os.path.join(CLIP_TOKENIZERS, "tokenizer")),
            CLIPTokenizer.from_pretrained(os.path.join(CLIP_TOKENIZERS, "tokenizer_2")))


# --------------------------------------------------------------------------------------------
# Models


def clip_encoder(vocab_size, hidden, projection, act):
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=1e-5,
        projection_dim=projection,
        # As in the repo's other tiny CLIPs (and openai's configs): eos_token_id 2 selects the
        # legacy pooling (argmax of the ids = the first <|endoftext|>).
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )
    return CLIPTextModelWithProjection(cfg)


def t5_encoder(vocab_size):
    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=48,
        d_kv=8,
        d_ff=40,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(cfg)


def vae():
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
    )


def transformer(joint_attention_dim, pooled_projection_dim, **extra):
    return SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=joint_attention_dim,
        caption_projection_dim=32,
        pooled_projection_dim=pooled_projection_dim,
        pos_embed_max_size=48,
        **extra,
    )


def randomize(*modules):
    """Redraws every parameter so that every path contributes (the default inits leave some
    layers near zero): norm scales 1 + 0.1 n, other 1-D parameters 0.05 n, weights
    n / sqrt(fan_in). Buffers (the transformer's sincos pos_embed) are left as they are."""
    with torch.no_grad():
        for m in modules:
            for name, p in m.named_parameters():
                if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                elif p.ndim == 1:
                    p.copy_(0.05 * torch.randn_like(p))
                else:
                    p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5))


# name -> transformer options and scheduler config.
ARCHS = {
    "tiny-sd3": dict(transformer={}, scheduler=dict(num_train_timesteps=1000, shift=3.0)),
    "tiny-sd35": dict(transformer=dict(qk_norm="rms_norm", dual_attention_layers=(0, 1)),
                      scheduler=dict(num_train_timesteps=1000, shift=3.0)),
}

# The same folders loaded without T5 (diffusers then feeds zeros for its part of the context).
NO_T5_MODELS = {"tiny-sd3-no-t5": "tiny-sd3", "tiny-sd35-no-t5": "tiny-sd35"}


def dynamic_scheduler_config():
    """SD3.5's scheduler with resolution-dependent shifting (as Flux-style configs use it)."""
    cfg = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
        max_image_seq_len=4096, base_shift=0.5, max_shift=1.15,
    ).config
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": diffusers.__version__,
            **{k: v for k, v in cfg.items() if not k.startswith("_")}}


# Models that are another folder with a different scheduler_config.json (the Rust test copies the
# folder and writes this config).
VARIANTS = {"tiny-sd35-dynamic": dict(base="tiny-sd35", scheduler_config=dynamic_scheduler_config())}


def build(name, t5_tokenizer):
    spec = ARCHS[name]
    torch.manual_seed(0)
    tok, tok2 = clip_tokenizers()
    te = clip_encoder(len(tok), 16, 16, "quick_gelu")
    te2 = clip_encoder(len(tok2), 24, 24, "gelu")
    te3 = t5_encoder(len(t5_tokenizer))
    v = vae()
    t = transformer(
        joint_attention_dim=te3.config.d_model,
        pooled_projection_dim=te.config.projection_dim + te2.config.projection_dim,
        **spec["transformer"],
    )
    randomize(te, te2, te3, v, t)
    return StableDiffusion3Pipeline(
        transformer=t,
        scheduler=FlowMatchEulerDiscreteScheduler(**spec["scheduler"]),
        vae=v,
        text_encoder=te,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tok2,
        text_encoder_3=te3,
        tokenizer_3=t5_tokenizer,
    )


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_checked(path, **kwargs):
    """`StableDiffusion3Pipeline.from_pretrained`, failing on any log record or warning about
    missing / unexpected / newly initialised weights; returns the pipeline and every message."""
    records = _Records()
    loggers = [logging.getLogger("diffusers"), logging.getLogger("transformers")]
    for lg in loggers:
        lg.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = StableDiffusion3Pipeline.from_pretrained(path, torch_dtype=torch.float32, **kwargs)
    finally:
        for lg in loggers:
            lg.removeHandler(records)
    messages = records.messages + [str(w.message) for w in caught]
    bad = [m for m in messages
           if any(k in m.lower() for k in ("missing", "unexpected", "newly initialized", "not initialized", "not used"))]
    assert not bad, f"{path}: {bad}"
    return pipe, messages


def folder_size(path):
    return sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(path) for f in fs)


def build_models(t5_tokenizer):
    for name in ARCHS:
        out = os.path.join(MODELS, name)
        shutil.rmtree(out, ignore_errors=True)
        pipe = build(name, t5_tokenizer)
        pipe.save_pretrained(out, safe_serialization=True)
        # The CLIP tokenizers are tiny-sdxl's files, byte for byte.
        for sub in ["tokenizer", "tokenizer_2"]:
            shutil.rmtree(os.path.join(out, sub))
            shutil.copytree(os.path.join(CLIP_TOKENIZERS, sub), os.path.join(out, sub))
        loaded, messages = load_checked(out)
        for comp in ["transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"]:
            a, b = getattr(pipe, comp).state_dict(), getattr(loaded, comp).state_dict()
            assert a.keys() == b.keys(), (name, comp, set(a) ^ set(b))
            assert all(torch.equal(a[k], b[k]) for k in a), (name, comp)
        # tokenizer_3/tokenizer.json, read by the `tokenizers` library as the engine reads it,
        # gives the ids the pipeline's tokenizer gives.
        tj = Tokenizer.from_file(os.path.join(out, "tokenizer_3", "tokenizer.json"))
        for text in ["a photo of a cat", LONG_PROMPT, ""]:
            assert tj.encode(text).ids == loaded.tokenizer_3(text).input_ids, text
        load_checked(out, text_encoder_3=None, tokenizer_3=None)
        print(f"wrote {name}: {folder_size(out) / 1024:.0f} KiB; load messages: {messages}")


# --------------------------------------------------------------------------------------------
# Reference images


def cases():
    out = []
    for model in ["tiny-sd3", "tiny-sd35", "tiny-sd3-no-t5", "tiny-sd35-no-t5"]:
        tag = model.removeprefix("tiny-").replace("-", "_")
        base = dict(model=model, width=64, height=64)
        out.append(dict(base, id=f"{tag}_t2i_neg", prompt="a photo of a cat", negative_prompt="blurry, low quality",
                        guidance=5.0, steps=4, seed=1))
        out.append(dict(base, id=f"{tag}_t2i_nocfg", prompt="a watercolor painting of a fox", negative_prompt=None,
                        guidance=1.0, steps=3, seed=2))
        out.append(dict(base, id=f"{tag}_i2i_neg", prompt="a photo of a dog", negative_prompt="ugly", guidance=4.5,
                        steps=5, seed=3, init_image="init_64.png", strength=0.6))
    out += [
        dict(model="tiny-sd35", id="sd35_t2i_64x48_samples2", prompt="mountains, snow", negative_prompt="",
             guidance=4.0, steps=4, seed=21, width=64, height=48, samples=2),
        dict(model="tiny-sd35", id="sd35_t2i_slg", prompt="a lighthouse at dusk", negative_prompt="blurry",
             guidance=4.0, steps=12, seed=22, width=64, height=64, skip_guidance_layers=[1], **SLG_DEFAULTS),
        dict(model="tiny-sd3", id="sd3_t2i_long_prompt", prompt=LONG_PROMPT, negative_prompt=None, guidance=5.0,
             steps=4, seed=23, width=64, height=64),
        dict(model="tiny-sd35", id="sd35_t2i_very_long_prompt", prompt=VERY_LONG_PROMPT, negative_prompt=None,
             guidance=5.0, steps=4, seed=24, width=64, height=64),
        # 64x64: 256 image tokens = base_image_seq_len, so mu = base_shift; 96x64: 384 tokens.
        dict(model="tiny-sd35-dynamic", id="sd35_dynamic_t2i", prompt="a cinematic photo of a fox",
             negative_prompt="blurry", guidance=4.0, steps=4, seed=31, width=64, height=64),
        dict(model="tiny-sd35-dynamic", id="sd35_dynamic_t2i_96x64", prompt="a cinematic photo of a fox",
             negative_prompt=None, guidance=4.0, steps=4, seed=32, width=96, height=64),
    ]
    return out


def make_init_image():
    """A deterministic 64x64 RGB picture (gradients and a disc; the same as parity_arch's)."""
    w = h = 64
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 127 + 120 * np.sin(x / w * 6.0)
    g = 255 * (y / (h - 1))
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3) ** 2, 230.0, 40.0)
    Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8), "RGB").save(os.path.join(OUT, "init_64.png"))


def load(model):
    """(txt2img, img2img) pipelines for a case's model name."""
    if model in ARCHS:
        pipe, _ = load_checked(os.path.join(MODELS, model))
    elif model in NO_T5_MODELS:
        pipe, _ = load_checked(os.path.join(MODELS, NO_T5_MODELS[model]), text_encoder_3=None, tokenizer_3=None)
    else:
        variant = VARIANTS[model]
        pipe, _ = load_checked(os.path.join(MODELS, variant["base"]))
        cfg = {k: v for k, v in variant["scheduler_config"].items() if not k.startswith("_")}
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    pipe.set_progress_bar_config(disable=True)
    i2i = StableDiffusion3Img2ImgPipeline(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    return pipe, i2i


def call_kwargs(case):
    samples = case.get("samples", 1)
    kwargs = dict(
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"],
        num_inference_steps=case["steps"],
        guidance_scale=case["guidance"],
        num_images_per_prompt=samples,
        generator=[torch.Generator("cpu").manual_seed(case["seed"] + i) for i in range(samples)],
        height=case["height"],
        width=case["width"],
        output_type="pil",
    )
    for k in ["skip_guidance_layers", *SLG_DEFAULTS]:
        if k in case:
            kwargs[k] = case[k]
    return kwargs


def run_case(pipes, case, **extra):
    t2i, i2i = pipes
    kwargs = dict(call_kwargs(case), **extra)
    with torch.no_grad():
        if "init_image" in case:
            init = Image.open(os.path.join(OUT, case["init_image"])).convert("RGB")
            return i2i(image=init, strength=case["strength"], **kwargs).images
        return t2i(**kwargs).images


def save_images(case, images):
    files = []
    for i, img in enumerate(images):
        fname = f"{case['id']}_{i}.png"
        img.save(os.path.join(OUT, fname))
        files.append(fname)
    case["expected"] = files
    arr = np.asarray(images[0], dtype=np.float32)
    print(case["id"], files, f"mean {arr.mean():.1f} std {arr.std():.1f}")


def make_references():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    make_init_image()
    all_cases = cases()
    by_model = {}
    for case in all_cases:
        by_model.setdefault(case["model"], []).append(case)
    for model, model_cases in by_model.items():
        pipes = load(model)
        for case in model_cases:
            save_images(case, run_case(pipes, case))
        if model == "tiny-sd35":
            dump_debug(pipes[0], model_cases[0])
    manifest = {
        "max_abs_diff": 2,
        "models": {name: f"models/{name}" for name in ARCHS},
        "no_t5_models": {name: f"models/{base}" for name, base in NO_T5_MODELS.items()},
        "variants": {name: {"base": f"models/{v['base']}", "scheduler_config": v["scheduler_config"]}
                     for name, v in VARIANTS.items()},
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cases": all_cases,
    }
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# Debug tensors (not committed)


def dump_debug(pipe, case):
    """Runs `case` again with hooks on the pipeline's components and writes what it computed to
    DEBUG (the run's image must equal the reference written for the case)."""
    os.makedirs(DEBUG, exist_ok=True)
    calls = {"text_encoder": [], "text_encoder_2": [], "text_encoder_3": [], "transformer": []}
    hooks = []

    def recorder(name):
        def hook(module, args, kwargs, output):
            calls[name].append((args, kwargs, output))
        return hook

    for name in calls:
        hooks.append(getattr(pipe, name).register_forward_hook(recorder(name), with_kwargs=True))
    returned = {}

    def wrap(method):
        original = getattr(pipe, method)

        def wrapped(*args, **kwargs):
            returned[method] = original(*args, **kwargs)
            return returned[method]
        setattr(pipe, method, wrapped)
        return original

    originals = {m: wrap(m) for m in ["encode_prompt", "prepare_latents"]}
    step_latents = {}

    def on_step_end(p, i, t, kw):
        step_latents[i] = kw["latents"].clone()
        return {}

    try:
        images = run_case((pipe, None), case, callback_on_step_end=on_step_end)
    finally:
        for h in hooks:
            h.remove()
        for m in originals:
            delattr(pipe, m)
    reference = Image.open(os.path.join(OUT, case["expected"][0]))
    assert np.array_equal(np.asarray(images[0]), np.asarray(reference)), "debug run differs from the reference"

    t = {}
    # Text encoders: the pipeline calls each CLIP once for the prompt and once for the negative
    # prompt, T5 likewise.
    for key, name in [("clip_l", "text_encoder"), ("clip_g", "text_encoder_2")]:
        for (args, _, out), suffix in zip(calls[name], ["", "_neg"]):
            t[f"{key}_input_ids{suffix}"] = args[0]
            t[f"{key}_penultimate{suffix}"] = out.hidden_states[-2]
            t[f"{key}_last_hidden_state{suffix}"] = out.last_hidden_state
            t[f"{key}_pooled{suffix}"] = out.text_embeds
    for (args, _, out), suffix in zip(calls["text_encoder_3"], ["", "_neg"]):
        t[f"t5_input_ids{suffix}"] = args[0]
        t[f"t5_last_hidden_state{suffix}"] = out[0]
    pe, npe, ppe, nppe = returned["encode_prompt"]
    t.update(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
             negative_pooled_prompt_embeds=nppe)
    save_file({k: v.detach().contiguous() for k, v in t.items()}, os.path.join(DEBUG, "text.safetensors"))

    _, kwargs, out = calls["transformer"][0]
    g = case["guidance"]
    uncond, cond = out[0].chunk(2)
    s = {
        "timesteps": pipe.scheduler.timesteps,
        "sigmas": pipe.scheduler.sigmas,
        "initial_latents": returned["prepare_latents"],
        "step0_transformer_hidden_states": kwargs["hidden_states"],
        "step0_transformer_timestep": kwargs["timestep"],
        "step0_transformer_encoder_hidden_states": kwargs["encoder_hidden_states"],
        "step0_transformer_pooled_projections": kwargs["pooled_projections"],
        "step0_transformer_output": out[0],
        "step0_noise_pred_cfg": uncond + g * (cond - uncond),
        "latents_after_step0": step_latents[0],
        "final_latents": step_latents[max(step_latents)],
    }
    save_file({k: v.detach().contiguous() for k, v in s.items()}, os.path.join(DEBUG, "sampling.safetensors"))

    # One transformer forward on a fixed input, with and without skip_layers=[1] (what
    # skip-layer guidance runs on the conditional half).
    gen = torch.Generator("cpu").manual_seed(1234)
    x = torch.randn((1, 16, 32, 32), generator=gen)
    ts = pipe.scheduler.timesteps[1:2].clone()
    with torch.no_grad():
        full = pipe.transformer(hidden_states=x, timestep=ts, encoder_hidden_states=pe, pooled_projections=ppe,
                                return_dict=False)[0]
        skip = pipe.transformer(hidden_states=x, timestep=ts, encoder_hidden_states=pe, pooled_projections=ppe,
                                return_dict=False, skip_layers=[1])[0]
    k = {"hidden_states": x, "timestep": ts, "encoder_hidden_states": pe, "pooled_projections": ppe,
         "output": full, "output_skip_layers_1": skip}
    save_file({n: v.detach().contiguous() for n, v in k.items()}, os.path.join(DEBUG, "skip_layers.safetensors"))

    lines = [
        f"# SD3 debug tensors (make_sd3_fixtures.py; not committed)\n",
        f"tiny-sd35, case `{case['id']}`: prompt {case['prompt']!r}, negative {case['negative_prompt']!r}, "
        f"guidance {case['guidance']}, steps {case['steps']}, seed {case['seed']}, {case['width']}x{case['height']}.",
        "Suffix `_neg`: the negative prompt's. CFG batches are [negative, positive]. "
        "`skip_layers.safetensors`: the transformer on a fixed input (randn, seed 1234; timestep = timesteps[1]; "
        "the positive prompt_embeds / pooled) with and without `skip_layers=[1]`.\n",
    ]
    for fname, tensors in [("text.safetensors", t), ("sampling.safetensors", s), ("skip_layers.safetensors", k)]:
        lines.append(f"## {fname}\n")
        lines += [f"- `{n}`: {list(v.shape)} {str(v.dtype).removeprefix('torch.')}" for n, v in tensors.items()]
        lines.append("")
    with open(os.path.join(DEBUG, "README.md"), "w") as f:
        f.write("\n".join(lines))
    print(f"wrote debug tensors to {DEBUG}")


def main():
    prompts = sorted({c["prompt"] for c in cases()} | {c["negative_prompt"] for c in cases() if c["negative_prompt"]})
    build_models(make_t5_tokenizer(prompts))
    make_references()


if __name__ == "__main__":
    main()
