"""diffusers' reference images for the features beyond a prompt (issue 14) on the committed tiny
models: SDXL's second prompts, clip_skip, a replacement VAE and LoRAs in both file formats, for
the engine's parity test (inference/tests/parity.rs, set `parity_features`).

    pip install torch diffusers transformers safetensors peft
    python scripts/reference/make_feature_fixtures.py

Writes inference/tests/fixtures/parity_features/:

* `vae-sd15/`, `vae-sdxl/`: AutoencoderKL folders with the tiny models' VAE architecture and other
  random weights (`vae=AutoencoderKL.from_pretrained(...)` in diffusers).
* `lora-sd15-peft.safetensors`: made with PEFT (`unet.add_adapter`, `text_encoder.add_adapter`,
  every LoRA parameter redrawn) and written by `save_lora_weights` with the adapters' configs as
  `lora_adapter_metadata` (alpha != rank, an `alpha_pattern`), UNet attention + 1x1-conv
  projections + text encoder attention.
* `lora-sdxl-peft.safetensors`: the same for SDXL's UNet and both text encoders, without metadata
  (alpha = rank, as diffusers reads such files).
* `lora-sd15-kohya.safetensors`, `lora-sdxl-kohya.safetensors`: kohya / A1111 files written key by
  key (`lora_unet_*`, `lora_te*_*`, `.lora_down` / `.lora_up` / `.alpha`), SD 1.5 in diffusers'
  block names, SDXL in the original model's (SGM) block names, with 3x3 LoCon convolutions and a
  resnet time embedding projection.
* A1111 prompt emphasis (`emphasis: a1111` cases): the prompt embeddings made by
  `a1111_emphasis.py` from diffusers' own text encoders, given to the pipelines as
  `prompt_embeds` (A1111 has no library to call).
* reference images: diffusers' pipelines with `torch.Generator("cpu").manual_seed(seed + i)`,
  LoRAs loaded with `load_lora_weights(path, adapter_name=...)` then
  `set_adapters(names, adapter_weights=weights)`; and `cases.json`.
"""

import os
import shutil

import torch
from PIL import Image
from safetensors.torch import save_file

import diffusers
from diffusers import DiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

import a1111_emphasis
import transformers.integrations.peft as _tf_peft

# transformers 5.24 asks for peft >= 0.22, which PyPI does not have yet (0.21.2 is the newest):
# its text-encoder adapter calls work with 0.21, so the version gate is lifted here.
_tf_peft.check_peft_version = lambda *a, **k: None

from make_arch_fixtures import ARCHS, FIXTURES, MODELS, make_init_images, randomize, save_images, vae, write_manifest

OUT = os.path.join(FIXTURES, "parity_features")
LAYERS = 2  # both tiny models' layers_per_block


def pipelines(name, vae_dir=None):
    spec = ARCHS[name]
    extra = {}
    if vae_dir is not None:
        extra["vae"] = diffusers.AutoencoderKL.from_pretrained(os.path.join(OUT, vae_dir))
    native = DiffusionPipeline.from_pretrained(
        os.path.join(MODELS, name), variant=spec["variant"], torch_dtype=torch.float32, **spec["kwargs"], **extra
    )
    comps = native.components
    made = []
    for cls in (spec["t2i"], spec["i2i"]):
        p = cls(**comps, **spec["kwargs"])
        p.set_progress_bar_config(disable=True)
        made.append(p)
    return made


# --------------------------------------------------------------------------------------------
# Files


def make_vaes():
    for name, seed, scaling in [("vae-sd15", 101, 0.18215), ("vae-sdxl", 102, 0.13025)]:
        torch.manual_seed(seed)
        v = vae(scaling)
        randomize(v)
        v.save_pretrained(os.path.join(OUT, name))


def redraw_lora(*modules):
    with torch.no_grad():
        for m in modules:
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn_like(p) * 0.3)


def portable(cfg):
    """A LoRA config as metadata that does not depend on this machine or run: no local path,
    target modules sorted (PEFT keeps them as a set)."""
    d = cfg.to_dict()
    d["base_model_name_or_path"] = None
    d["target_modules"] = sorted(d["target_modules"])
    return d


def make_peft_loras():
    # SD 1.5: metadata with alpha != rank and a per-module alpha.
    torch.manual_seed(201)
    t2i, _ = pipelines("tiny-sd15")
    unet_cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"],
                          alpha_pattern={"proj_out": 2})
    te_cfg = LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    t2i.unet.add_adapter(unet_cfg)
    t2i.text_encoder.add_adapter(te_cfg)
    redraw_lora(t2i.unet, t2i.text_encoder)
    type(t2i).save_lora_weights(
        OUT,
        unet_lora_layers=get_peft_model_state_dict(t2i.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(t2i.text_encoder),
        unet_lora_adapter_metadata=portable(unet_cfg),
        text_encoder_lora_adapter_metadata=portable(te_cfg),
        weight_name="lora-sd15-peft.safetensors",
    )
    # SDXL: no metadata (alpha = rank), UNet feed-forward too, both text encoders.
    torch.manual_seed(202)
    t2i, _ = pipelines("tiny-sdxl")
    t2i.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "ff.net.2"]))
    te = LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    t2i.text_encoder.add_adapter(te)
    t2i.text_encoder_2.add_adapter(te)
    redraw_lora(t2i.unet, t2i.text_encoder, t2i.text_encoder_2)
    type(t2i).save_lora_weights(
        OUT,
        unet_lora_layers=get_peft_model_state_dict(t2i.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(t2i.text_encoder),
        text_encoder_2_lora_layers=get_peft_model_state_dict(t2i.text_encoder_2),
        weight_name="lora-sdxl-peft.safetensors",
    )


def kohya_layer(sd, name, out_shape, in_shape, rank, alpha, g):
    """One kohya layer: `out_shape` / `in_shape` of the base weight's (out, in[, k, k])."""
    out, inp = out_shape, in_shape
    if len(inp) == 1:
        down = torch.randn(rank, inp[0], generator=g) * 0.3
        up = torch.randn(out, rank, generator=g) * 0.3
    else:
        down = torch.randn(rank, *inp, generator=g) * 0.3
        up = torch.randn(out, rank, 1, 1, generator=g) * 0.3
    sd[f"{name}.lora_down.weight"] = down
    sd[f"{name}.lora_up.weight"] = up
    sd[f"{name}.alpha"] = torch.tensor(float(alpha))


def sgm_name(module):
    """diffusers' UNet module path in the original model's (SGM) block names, kohya-flattened."""
    p = module.split(".")
    resnet_inner = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
                    "conv_shortcut": "skip_connection"}

    def rest(parts, resnet):
        if resnet:
            return resnet_inner[parts[0]]
        return "_".join(parts)

    if p[0] == "down_blocks":
        b, kind = int(p[1]), p[2]
        if kind == "downsamplers":
            return f"input_blocks_{(b + 1) * (LAYERS + 1)}_0_op"
        l = int(p[3])
        j = 0 if kind == "resnets" else 1
        return f"input_blocks_{b * (LAYERS + 1) + l + 1}_{j}_{rest(p[4:], kind == 'resnets')}"
    if p[0] == "mid_block":
        i = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{p[1]}.{p[2]}"]
        return f"middle_block_{i}_{rest(p[3:], p[1] == 'resnets')}"
    if p[0] == "up_blocks":
        b, kind = int(p[1]), p[2]
        if kind == "upsamplers":
            return f"output_blocks_{b * (LAYERS + 1) + LAYERS}_2_conv"
        l = int(p[3])
        j = 0 if kind == "resnets" else 1
        return f"output_blocks_{b * (LAYERS + 1) + l}_{j}_{rest(p[4:], kind == 'resnets')}"
    raise ValueError(module)


def kohya_targets(unet, pick):
    for name, m in unet.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and pick(name):
            w = m.weight
            yield name, w.shape[0], tuple(w.shape[1:])


def make_kohya_loras():
    for arch, seed in [("tiny-sd15", 301), ("tiny-sdxl", 302)]:
        g = torch.Generator().manual_seed(seed)
        t2i, _ = pipelines(arch)
        sd = {}
        xl = arch == "tiny-sdxl"

        def pick(name):
            leaf = name.rsplit(".", 1)[-1]
            if "transformer_blocks" in name:
                return leaf in ("to_q", "to_k", "to_v", "0", "proj") or name.endswith("ff.net.2")
            if leaf in ("proj_in", "proj_out"):
                return True
            # LoCon: a few resnet convolutions and a time embedding projection.
            return name in ("down_blocks.1.resnets.0.conv1", "up_blocks.1.resnets.2.conv2",
                            "mid_block.resnets.0.time_emb_proj", "down_blocks.0.downsamplers.0.conv")

        for module, out, inp in kohya_targets(t2i.unet, pick):
            flat = sgm_name(module) if xl else module.replace(".", "_")
            kohya_layer(sd, f"lora_unet_{flat}", out, inp, rank=4, alpha=2, g=g)
        encoders = [("lora_te1" if xl else "lora_te", t2i.text_encoder)]
        if xl:
            encoders.append(("lora_te2", t2i.text_encoder_2))
        for prefix, te in encoders:
            for name, m in te.named_modules():
                if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in (
                        "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"):
                    # kohya names the text model's modules from `text_model.`.
                    full = name if name.startswith("text_model.") else f"text_model.{name}"
                    kohya_layer(sd, f"{prefix}_{full.replace('.', '_')}", m.weight.shape[0], (m.weight.shape[1],),
                                rank=2, alpha=1, g=g)
        save_file(sd, os.path.join(OUT, f"lora-{'sdxl' if xl else 'sd15'}-kohya.safetensors"))
        print(arch, "kohya layers:", len(sd) // 3)


def make_embeddings():
    """Textual-inversion files in each form diffusers' `load_textual_inversion` reads (the tiny
    text encoders' hidden size is 32)."""
    g = torch.Generator().manual_seed(401)

    def vectors(n):
        return torch.randn(n, 32, generator=g) * 0.5

    # diffusers' own form: {token: vectors}.
    save_file({"<cat-toy>": vectors(1)}, os.path.join(OUT, "ti-sd15-diffusers.safetensors"))
    # A1111's safetensors form: {"emb_params": vectors}, loaded with token="<style>".
    save_file({"emb_params": vectors(3)}, os.path.join(OUT, "ti-sd15-a1111.safetensors"))
    # A1111's pickle form, as its webui writes it.
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors(2)}, "name": "<pt-style>",
                "step": 100, "sd_checkpoint": None, "sd_checkpoint_name": None},
               os.path.join(OUT, "ti-sd15-a1111.pt"))
    # SDXL: {"clip_l": ..., "clip_g": ...}, each loaded into its encoder with token="<sdxl-emb>".
    save_file({"clip_l": vectors(2), "clip_g": vectors(2)}, os.path.join(OUT, "ti-sdxl.safetensors"))


def load_embeddings(pipe, embeddings):
    """As diffusers' documentation loads each form."""
    from safetensors.torch import load_file
    for f, token in embeddings:
        path = os.path.join(OUT, f)
        if f == "ti-sdxl.safetensors":
            sd = load_file(path)
            pipe.load_textual_inversion(sd["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                        tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(sd["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)
        else:
            pipe.load_textual_inversion(path, token=token)


# --------------------------------------------------------------------------------------------
# Cases

CAT = "a photo of a cat"
NEG = "blurry, low quality"


def cases():
    c = []

    def case(id, model, **kw):
        base = dict(id=id, model=model, prompt=CAT, negative_prompt=NEG, width=64, height=64, steps=4, seed=3,
                    guidance=5.0 if model == "tiny-sdxl" else 7.5, scheduler="Euler")
        base.update(kw)
        c.append(base)

    case("sd15_clip_skip_1", "tiny-sd15", clip_skip=1)
    case("sd15_clip_skip_3_noneg", "tiny-sd15", clip_skip=3, negative_prompt=None)
    case("sdxl_clip_skip_2", "tiny-sdxl", clip_skip=2)
    case("sdxl_prompt_2", "tiny-sdxl", prompt_2="an oil painting of a lighthouse", negative_prompt_2="grainy")
    case("sdxl_prompt_2_noneg", "tiny-sdxl", prompt_2="an oil painting", negative_prompt=None,
         negative_prompt_2="ignored by diffusers without negative_prompt")
    case("sd15_vae", "tiny-sd15", vae="vae-sd15")
    case("sdxl_vae_i2i", "tiny-sdxl", vae="vae-sdxl", init_image="init_64.png", strength=0.6)
    case("sd15_lora_peft", "tiny-sd15", loras=[["lora-sd15-peft.safetensors", 0.8]])
    case("sd15_lora_kohya", "tiny-sd15", loras=[["lora-sd15-kohya.safetensors", 1.0]])
    case("sd15_lora_both_i2i", "tiny-sd15", loras=[["lora-sd15-peft.safetensors", 0.7],
                                                   ["lora-sd15-kohya.safetensors", -0.5]],
         init_image="init_64.png", strength=0.7)
    case("sdxl_lora_peft", "tiny-sdxl", loras=[["lora-sdxl-peft.safetensors", 0.9]])
    case("sdxl_lora_kohya", "tiny-sdxl", loras=[["lora-sdxl-kohya.safetensors", 1.0]])
    case("sdxl_lora_both", "tiny-sdxl", loras=[["lora-sdxl-peft.safetensors", 0.6],
                                               ["lora-sdxl-kohya.safetensors", 1.2]], samples=2)
    case("sd15_embeddings", "tiny-sd15", prompt="a photo of <cat-toy> in <style> style, <pt-style>",
         negative_prompt="blurry, <style>",
         embeddings=[["ti-sd15-diffusers.safetensors", None], ["ti-sd15-a1111.safetensors", "<style>"],
                     ["ti-sd15-a1111.pt", None]])
    case("sdxl_embeddings_i2i", "tiny-sdxl", prompt="a photo of <sdxl-emb> at dusk",
         embeddings=[["ti-sdxl.safetensors", "<sdxl-emb>"]], init_image="init_64.png", strength=0.8)
    long_weighted = ", ".join(["a (very detailed:1.2) oil painting of a lighthouse", "[rocky] coast at ((dusk))"] * 5)
    case("sd15_emphasis", "tiny-sd15", emphasis="a1111",
         prompt="a (photo:1.3) of a ((cat)), [blurry], \\(literal\\) BREAK at dusk",
         negative_prompt="(low quality:1.4), [[grainy]]")
    case("sd15_emphasis_long_clip_skip", "tiny-sd15", emphasis="a1111", prompt=long_weighted, clip_skip=1)
    case("sd2_emphasis_long_i2i", "tiny-sd2", emphasis="a1111", prompt=long_weighted,
         negative_prompt="(ugly:0.5)", init_image="init_64.png", strength=0.75)
    case("sdxl_emphasis_long_noneg", "tiny-sdxl", emphasis="a1111", prompt=long_weighted, negative_prompt=None)
    case("sdxl_emphasis_long_negative", "tiny-sdxl", emphasis="a1111", prompt="a (cat:1.5) on a [mat]",
         negative_prompt=long_weighted)
    case("sdxl_everything", "tiny-sdxl", loras=[["lora-sdxl-kohya.safetensors", 0.8]], vae="vae-sdxl",
         clip_skip=1, prompt_2="an oil painting of a lighthouse")
    return c


def run_case(case):
    t2i, i2i = pipelines(case["model"], case.get("vae"))
    # Both pipelines share the tokenizers and text encoders the embeddings go into.
    load_embeddings(t2i, case.get("embeddings", []))
    loras = case.get("loras", [])
    for i, (f, _) in enumerate(loras):
        t2i.load_lora_weights(os.path.join(OUT, f), adapter_name=f"l{i}")
    if loras:
        t2i.set_adapters([f"l{i}" for i in range(len(loras))], adapter_weights=[w for _, w in loras])
    samples = case.get("samples", 1)
    gens = [torch.Generator("cpu").manual_seed(case["seed"] + i) for i in range(samples)]
    cls = diffusers.EulerDiscreteScheduler
    common = dict(prompt=case["prompt"], negative_prompt=case["negative_prompt"],
                  num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                  num_images_per_prompt=samples, generator=gens, output_type="pil",
                  clip_skip=case.get("clip_skip"))
    if case.get("emphasis") == "a1111":
        pipe0 = t2i
        if case["model"] == "tiny-sdxl":
            cond, uncond, pooled, upooled = a1111_emphasis.sdxl_embeds(
                pipe0, case["prompt"], case["negative_prompt"], case.get("clip_skip"))
            common.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=upooled)
        else:
            cond, uncond = a1111_emphasis.sd_embeds(pipe0, case["prompt"], case["negative_prompt"],
                                                    case.get("clip_skip"))
        del common["prompt"], common["negative_prompt"], common["clip_skip"]
        common.update(prompt_embeds=cond, negative_prompt_embeds=uncond)
    if "prompt_2" in case or "negative_prompt_2" in case:
        common.update(prompt_2=case.get("prompt_2"), negative_prompt_2=case.get("negative_prompt_2"))
    pipe = i2i if "init_image" in case else t2i
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    te = pipe.text_encoder
    shimmed = case.get("clip_skip") is not None and not hasattr(te, "text_model")
    if shimmed:
        # diffusers 0.42's SD clip_skip path calls `text_encoder.text_model.final_layer_norm`,
        # which transformers 5's flat CLIPTextModel lacks: point it at the same layer for the
        # call (outside torch's module registry; after the LoRAs are loaded, whose loader
        # looks for `text_model`).
        shim = type("TextModel", (), {})()
        shim.final_layer_norm = te.final_layer_norm
        object.__setattr__(te, "text_model", shim)
    try:
        if "init_image" in case:
            init = Image.open(os.path.join(OUT, case["init_image"])).convert("RGB")
            return pipe(image=init, strength=case["strength"], **common).images
        return pipe(height=case["height"], width=case["width"], **common).images
    finally:
        if shimmed:
            object.__delattr__(te, "text_model")


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    import make_arch_fixtures
    make_arch_fixtures.OUT = OUT  # make_init_images writes there
    make_init_images()
    os.remove(os.path.join(OUT, "init_100x80.png"))
    make_vaes()
    make_peft_loras()
    make_kohya_loras()
    make_embeddings()
    all_cases = []
    for case in cases():
        save_images(case, run_case(case), OUT)
        all_cases.append(case)
    write_manifest(OUT, {name: os.path.relpath(os.path.join(MODELS, name), FIXTURES)
                         for name in ["tiny-sd15", "tiny-sd2", "tiny-sdxl"]},
                   all_cases, peft=__import__("peft").__version__,
                   cpu_capability=torch.backends.cpu.get_cpu_capability())


if __name__ == "__main__":
    main()
