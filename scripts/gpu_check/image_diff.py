"""How far two 8-bit images are apart, in 0-255 units, and whether an image is degenerate.

PSNR = 10 log10(255^2 / MSE), capped at 100 dB for identical images (JSON has no infinity).
An image counts as constant (a NaN or overflow upstream turns into a flat black or grey
picture once cast to 8 bits) when its pixel standard deviation is under 1 level.
"""

import math

import numpy as np
from PIL import Image

PSNR_CAP_DB = 100.0
CONSTANT_STD = 1.0


def load(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def compare(path_a, path_b):
    a, b = load(path_a), load(path_b)
    if a.shape != b.shape:
        return {"error": f"sizes differ: {a.shape} vs {b.shape}"}
    d = np.abs(a - b)
    mse = float(np.mean(d.astype(np.float64) ** 2))
    psnr = PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(255.0**2 / mse))
    return {"mean_abs": round(float(d.mean()), 4), "max_abs": int(d.max()), "psnr_db": round(psnr, 2)}


def sanity(path):
    std = float(load(path).std())
    return {"std": round(std, 2), "constant": std < CONSTANT_STD}
