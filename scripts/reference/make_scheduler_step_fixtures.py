"""Writes inference/tests/fixtures/scheduler_steps.json: full denoising trajectories of
diffusers' schedulers driven by a deterministic fake model instead of a UNet, which the
engine's schedulers must reproduce (inference/tests/scheduler_steps.rs). This checks the
multistep / multi-evaluation state, the solver formulas, the img2img begin index and add_noise,
and the order and shape of the per-step noise draws, without a model.

The fake model, the inputs and the loop are defined identically in the Rust test:

* sample shape (2, 4, 2, 3); image i draws its noise from torch.Generator("cpu").manual_seed(100 + i)
  (diffusers called with a list of generators);
* base[k] = sin(0.37 k + 0.1), clean[k] = 0.8 cos(0.23 k), img_noise[k] = sin(0.71 k + 0.5)
  (float64, then float32), k the flat index;
* txt2img: x = base * init_noise_sigma; img2img with strength s: begin = (steps - int(steps s)) * order,
  set_begin_index(begin), x = add_noise(clean, img_noise, timesteps[begin]);
* for each timestep t from begin: m = scale_model_input(x, t);
  out = m * (0.6 + 0.3 cos(0.0031 t)) - clean * (0.25 sin(0.0047 t)); x = step(out, t, x, generator).

Recorded: the final sample and, per step, each image's sum and sum of squares.

    pip install torch diffusers scipy
    python scripts/reference/make_scheduler_step_fixtures.py
"""

import inspect
import json
import math
import os

import diffusers
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "inference", "tests", "fixtures", "scheduler_steps.json")

SHAPE = (2, 4, 2, 3)
SEED = 100

SDXL = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}
SD15 = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}
SD2V = dict(SD15, _class_name="DDIMScheduler", prediction_type="v_prediction")
TURBO = dict(SDXL, _class_name="EulerAncestralDiscreteScheduler", timestep_spacing="trailing")
LCM = {
    "_class_name": "LCMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "original_inference_steps": 50,
    "prediction_type": "epsilon", "set_alpha_to_one": True, "steps_offset": 1, "timestep_scaling": 10.0,
    "timestep_spacing": "leading", "trained_betas": None,
}
CONFIGS = {
    "sdxl": SDXL,
    "sd15": SD15,
    "sd2_v": SD2V,
    "sdxl_turbo": TURBO,
    "lcm_sdxl": LCM,
    "linear_v_zsnr": {"beta_schedule": "linear", "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                      "rescale_betas_zero_snr": True},
    "sample_pred": dict(SDXL, prediction_type="sample"),
}

ALL = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
       "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
       "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
       "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler"]
KARRAS = ["LMSDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
          "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
          "UniPCMultistepScheduler", "DEISMultistepScheduler"]
DPM = "DPMSolverMultistepScheduler"
DPMS = "DPMSolverSinglestepScheduler"
UNIPC = "UniPCMultistepScheduler"
DEIS = "DEISMultistepScheduler"


def cases():
    out = []

    def add(config, cls, steps, overrides=None, strength=None):
        tag = f"{config}_{cls}_{steps}" + "".join(f"_{k}={v}" for k, v in (overrides or {}).items())
        if strength is not None:
            tag += f"_i2i{strength}"
        out.append(dict(id=tag, config=config, cls=cls, steps=steps, overrides=overrides or {}, strength=strength))

    for cls in ALL:
        add("sdxl", cls, 6)
        add("sdxl", cls, 7, strength=0.6)
        add("sd2_v", cls, 5)
    for cls in KARRAS:
        add("sdxl", cls, 5, {"use_karras_sigmas": True})
    for cls in ["EulerDiscreteScheduler", DPM, UNIPC, "HeunDiscreteScheduler"]:
        add("sdxl", cls, 5, {"use_exponential_sigmas": True})
    for cls in ["EulerDiscreteScheduler", DPM, "KDPM2DiscreteScheduler", DEIS]:
        add("sdxl", cls, 5, {"use_beta_sigmas": True})
    for cls in ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", DPM, UNIPC, "DDIMScheduler", "LCMScheduler"]:
        add("linear_v_zsnr", cls, 4)
    for cls in ["EulerDiscreteScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler", DPM, DPMS, UNIPC, DEIS,
                "DDPMScheduler", "DDIMScheduler", "LCMScheduler"]:
        add("sample_pred", cls, 4)
    # SDXL-Turbo style: 1-4 steps, trailing.
    for cls in ["EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", DPM, "LCMScheduler"]:
        add("sdxl_turbo", cls, 1)
        add("sdxl_turbo", cls, 2)
    add("sdxl_turbo", "EulerAncestralDiscreteScheduler", 4, strength=0.5)
    # DPM-Solver variants.
    add("sdxl", DPM, 8, {"algorithm_type": "sde-dpmsolver++"})
    add("sdxl", DPM, 8, {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True})
    add("sdxl", DPM, 6, {"algorithm_type": "sde-dpmsolver++"}, strength=0.5)
    add("sdxl", DPM, 6, {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"})
    add("sdxl", DPM, 6, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3})
    add("sdxl", DPM, 6, {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"})
    add("sdxl", DPM, 6, {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun"})
    add("sdxl", DPM, 6, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"})
    add("sdxl", DPM, 7, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3})
    add("sdxl", DPM, 7, {"solver_order": 3})
    add("sdxl", DPM, 16, {"solver_order": 3})
    add("sdxl", DPM, 6, {"solver_type": "heun"})
    add("sdxl", DPM, 6, {"solver_order": 1})
    add("sdxl", DPM, 6, {"euler_at_final": True, "final_sigmas_type": "sigma_min"})
    add("sdxl", DPM, 6, {"lower_order_final": False, "final_sigmas_type": "sigma_min"})
    add("sdxl", DPM, 6, {"use_lu_lambdas": True})
    add("sdxl", DPM, 6, {"lambda_min_clipped": -5.1})
    add("sdxl", DPMS, 6, {"algorithm_type": "sde-dpmsolver++"})
    add("sdxl", DPMS, 7, {"solver_order": 3})
    add("sdxl", DPMS, 9, {"solver_order": 3, "solver_type": "heun"})
    add("sdxl", DPMS, 8, {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"})
    add("sdxl", DPMS, 6, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"})
    add("sdxl", DPMS, 6, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3})
    add("sdxl", DPMS, 6, {"lower_order_final": False, "final_sigmas_type": "sigma_min"})
    add("sdxl", DPMS, 7, {"solver_order": 3}, strength=0.7)
    add("sdxl", UNIPC, 7, {"solver_order": 3})
    add("sdxl", UNIPC, 16, {"solver_order": 3})
    add("sdxl", UNIPC, 6, {"solver_type": "bh1"})
    add("sdxl", UNIPC, 6, {"predict_x0": False})
    add("sdxl", UNIPC, 6, {"predict_x0": False, "solver_order": 3})
    add("sdxl", UNIPC, 6, {"solver_type": "bh1", "final_sigmas_type": "sigma_min"})
    add("sdxl", UNIPC, 6, {"predict_x0": False, "final_sigmas_type": "sigma_min"})
    add("sdxl", UNIPC, 6, {"predict_x0": False, "solver_order": 3, "final_sigmas_type": "sigma_min"})
    add("sdxl", UNIPC, 6, {"disable_corrector": [0, 2]})
    add("sdxl", UNIPC, 6, {"lower_order_final": False, "final_sigmas_type": "sigma_min"})
    add("sdxl", UNIPC, 6, {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"})
    add("sdxl", UNIPC, 7, {"solver_order": 3}, strength=0.6)
    add("sdxl", DEIS, 7, {"solver_order": 3})
    add("sdxl", DEIS, 16, {"solver_order": 3})
    add("sdxl", DEIS, 6, {"solver_order": 1})
    # PNDM with the Runge-Kutta warm-up, and img2img with it.
    add("sd15", "PNDMScheduler", 6, {"skip_prk_steps": False})
    add("sd15", "PNDMScheduler", 8, {"skip_prk_steps": False}, strength=0.5)
    add("sd15", "PNDMScheduler", 6, strength=0.5)
    add("sd2_v", "PNDMScheduler", 6, {"skip_prk_steps": False})
    # DDPM variances, clipping.
    add("sdxl", "DDPMScheduler", 5, {"variance_type": "fixed_small_log"})
    add("sdxl", "DDPMScheduler", 5, {"variance_type": "fixed_large"})
    add("sdxl", "DDPMScheduler", 5, {"clip_sample": True})
    add("sdxl", "DDPMScheduler", 5, {"timestep_spacing": "linspace"})
    add("sdxl", "DDIMScheduler", 5, {"clip_sample": True, "clip_sample_range": 0.5})
    add("sdxl", "HeunDiscreteScheduler", 5, {"clip_sample": True})
    # LCM, its own config, img2img.
    add("lcm_sdxl", "LCMScheduler", 4)
    add("lcm_sdxl", "LCMScheduler", 8, strength=0.5)
    add("lcm_sdxl", "LCMScheduler", 4, {"original_inference_steps": 20, "timestep_scaling": 5.0})
    # LMS: img2img starts with one derivative but the order of step_index + 1.
    add("sdxl", "LMSDiscreteScheduler", 10, strength=0.5)
    add("sdxl", "HeunDiscreteScheduler", 5, {"use_karras_sigmas": True}, strength=0.6)
    add("sdxl", "KDPM2AncestralDiscreteScheduler", 5, {"use_karras_sigmas": True}, strength=0.6)
    return out


def g(x, digits=9):
    return float("%.*g" % (digits, x))


def grid(fn):
    n = int(np.prod(SHAPE))
    return torch.tensor(np.array([fn(k) for k in range(n)], dtype=np.float64).astype(np.float32)).reshape(SHAPE)


def run(case):
    cls = getattr(diffusers, case["cls"])
    sched = cls.from_config(CONFIGS[case["config"]], **case["overrides"])
    sched.set_timesteps(case["steps"])
    gens = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(SHAPE[0])]
    base = grid(lambda k: math.sin(0.37 * k + 0.1))
    clean = grid(lambda k: 0.8 * math.cos(0.23 * k))
    img_noise = grid(lambda k: math.sin(0.71 * k + 0.5))
    timesteps = sched.timesteps
    if case["strength"] is not None:
        steps = case["steps"]
        init = min(int(steps * case["strength"]), steps)
        begin = max(steps - init, 0) * sched.order
        timesteps = timesteps[begin:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(begin)
        x = sched.add_noise(clean, img_noise, timesteps[:1].repeat(SHAPE[0]))
    else:
        x = base * sched.init_noise_sigma
    accepts_gen = "generator" in inspect.signature(sched.step).parameters
    stats = []
    for t in timesteps:
        m = sched.scale_model_input(x, t)
        tf = float(t)
        out = m * (0.6 + 0.3 * math.cos(0.0031 * tf)) - clean * (0.25 * math.sin(0.0047 * tf))
        kw = {"generator": gens} if accepts_gen else {}
        x = sched.step(out, t, x, **kw, return_dict=False)[0]
        rows = x.reshape(SHAPE[0], -1).double()
        stats.append([g(v, 10) for i in range(SHAPE[0]) for v in (float(rows[i].sum()), float((rows[i] ** 2).sum()))])
    if torch.isnan(x).any():
        # diffusers produces NaN (e.g. UniPC bh1 with a zero final sigma): the engine refuses.
        return {"error": "NaN in diffusers' trajectory"}
    return {
        "timesteps": [g(t) for t in timesteps],
        "final": [g(v) for v in x.flatten()],
        "stats": stats,
    }


def main():
    all_cases = []
    for case in cases():
        try:
            case.update(run(case))
        except Exception as e:
            raise SystemExit(f"{case['id']}: {type(e).__name__}: {e}")
        all_cases.append(case)
    meta = {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with open(OUT, "w") as f:
        json.dump({"versions": meta, "shape": SHAPE, "seed": SEED, "configs": CONFIGS, "cases": all_cases}, f,
                  separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(all_cases)} cases to {os.path.abspath(OUT)}")


if __name__ == "__main__":
    main()
