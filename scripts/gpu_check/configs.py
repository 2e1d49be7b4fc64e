"""The published configs of Stable Diffusion XL base 1.0 and Stable Diffusion 1.5, written out
here so that gpu-check needs nothing from the hub, and the tiny dry-run versions of them.

Each model is {component: config dict}, as in the published repositories' unet/config.json,
vae/config.json, text_encoder(_2)/config.json and scheduler/scheduler_config.json (keys that only
record provenance, such as _name_or_path, left out). Two deliberate changes, both also in the
committed tiny fixtures: bos/pad/eos token ids are those of the fixtures' text encoders (which
happen to be the published ones: 0, 1, 2), and the tokenizers are the fixtures' 1000-entry CLIP
vocabulary (copied by make_models), while vocab_size stays 49408 so the embedding tables have the
real size.

DRY_RUN: per-component overrides that keep each model's structure (block types, attention layout,
text_time embedding, two text encoders) but shrink channels, layers and resolution so the whole
check runs on a CPU in minutes. (Image sizes, steps and guidance are the run plan's, in
scripts/gpu-check.)
"""

SDXL = {
    "pipeline": "StableDiffusionXLPipeline",
    "unet": {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "class_embed_type": None,
        "class_embeddings_concat": False,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 2048,
        "cross_attention_norm": None,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": None,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": None,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False,
        "resnet_time_scale_shift": "default",
        "sample_size": 128,
        "time_cond_proj_dim": None,
        "time_embedding_act_fn": None,
        "time_embedding_dim": None,
        "time_embedding_type": "positional",
        "timestep_post_act": None,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "upcast_attention": None,
        "use_linear_projection": True,
    },
    "vae": {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 1024,
        "scaling_factor": 0.13025,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    },
    # CLIP ViT-L/14's text tower.
    "text_encoder": {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "projection_dim": 768,
        "vocab_size": 49408,
    },
    # OpenCLIP ViT-bigG/14's text tower, with its projection.
    "text_encoder_2": {
        "architectures": ["CLIPTextModelWithProjection"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": 1280,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 5120,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 20,
        "num_hidden_layers": 32,
        "pad_token_id": 1,
        "projection_dim": 1280,
        "vocab_size": 49408,
    },
    "scheduler": {
        "_class_name": "EulerDiscreteScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
    },
    # Fixture folders the tokenizers are copied from (inference/tests/fixtures/models/...).
    "tokenizers": {"tokenizer": "tiny-sdxl/tokenizer", "tokenizer_2": "tiny-sdxl/tokenizer_2"},
}

SD15 = {
    "pipeline": "StableDiffusionPipeline",
    "unet": {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": [
            "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D",
        ],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": [
            "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
        ],
    },
    "vae": {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 512,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    },
    "text_encoder": SDXL["text_encoder"],  # the same CLIP ViT-L/14 text tower
    "scheduler": {
        "_class_name": "PNDMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    "tokenizers": {"tokenizer": "tiny-sd15/tokenizer"},
}

MODELS = {"sdxl": SDXL, "sd15": SD15}

# Dry run: the same structure, shrunk. Text-encoder widths must add up to the SDXL UNet's
# cross_attention_dim (32 + 64 = 96), and its projection_class_embeddings_input_dim is
# 6 * addition_time_embed_dim + text_encoder_2's projection_dim (6 * 8 + 64 = 112).
_TINY_TE = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
            "projection_dim": 32}
_TINY_VAE = {"block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8}
DRY_RUN = {
    "sdxl": {
        "unet": {"block_out_channels": [32, 64, 64], "attention_head_dim": [2, 4, 4],
                 "transformer_layers_per_block": [1, 1, 2], "norm_num_groups": 8,
                 "cross_attention_dim": 96, "addition_time_embed_dim": 8,
                 "projection_class_embeddings_input_dim": 112, "sample_size": 16},
        "vae": dict(_TINY_VAE, sample_size=128),
        "text_encoder": _TINY_TE,
        "text_encoder_2": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                           "num_hidden_layers": 3, "projection_dim": 64},
    },
    "sd15": {
        "unet": {"block_out_channels": [32, 32, 64, 64], "attention_head_dim": 4, "norm_num_groups": 8,
                 "cross_attention_dim": 32, "layers_per_block": 1, "sample_size": 12},
        "vae": dict(_TINY_VAE, sample_size=96),
        "text_encoder": _TINY_TE,
    },
}


def model_spec(name, dry_run=False):
    """The configs of model `name` ("sdxl" or "sd15"), shrunk when dry_run."""
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in MODELS[name].items()}
    if dry_run:
        for component, overrides in DRY_RUN[name].items():
            spec[component].update(overrides)
    return spec
