"""Writes inference/tests/fixtures/unet_variant/: a small random diffusers UNet2DConditionModel
using the options the SDXL tiny model does not (conv projections as in SD 1.x, only_cross_attention,
upcast_attention, freq_shift / flip_sin_to_cos variants, LCM's time_cond_proj_dim, per-sample
timesteps, an odd latent size) plus inputs and diffusers' output, for
inference/tests/unet_variant.rs.

    python scripts/reference/make_unet_variant_fixture.py
"""

import os

import torch
from safetensors.torch import save_file

from diffusers import UNet2DConditionModel

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "inference", "tests", "fixtures", "unet_variant")


def main():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        attention_head_dim=2,
        norm_num_groups=4,
        use_linear_projection=False,
        only_cross_attention=[True, False],
        upcast_attention=True,
        flip_sin_to_cos=False,
        freq_shift=1,
        time_cond_proj_dim=6,
    )
    # Random (not the default near-zero) init so every path contributes.
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5))
    unet.eval()
    os.makedirs(OUT, exist_ok=True)
    unet.save_pretrained(OUT)
    sample = torch.randn(2, 4, 9, 7)
    timesteps = torch.tensor([999.0, 10.5])
    context = torch.randn(2, 5, 12)
    cond = torch.randn(2, 6)
    with torch.no_grad():
        out = unet(sample, timesteps, encoder_hidden_states=context, timestep_cond=cond).sample
    save_file(
        {"sample": sample, "timesteps": timesteps, "context": context, "cond": cond, "out": out.contiguous()},
        os.path.join(OUT, "io.safetensors"),
    )
    print("wrote", os.path.abspath(OUT), "output std", out.std().item())


if __name__ == "__main__":
    main()
