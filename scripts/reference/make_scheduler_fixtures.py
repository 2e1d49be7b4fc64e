"""Writes inference/tests/fixtures/scheduler_schedules.json: timesteps, sigmas (or
alphas_cumprod at the timesteps) and init_noise_sigma of diffusers' schedulers for a range of
model configs (SD 1.5, SD 2.x v-prediction, SDXL base, SDXL-Turbo, LCM-SDXL and option
variants), config overrides and step counts, which the engine's schedulers must reproduce
(inference/tests/schedulers.rs). Each case is `Class.from_config(configs[config], **overrides)`
followed by `set_timesteps(steps)`; a case where diffusers raises is recorded as an error the
engine must also report.

    pip install torch diffusers scipy
    python scripts/reference/make_scheduler_fixtures.py
"""

import json
import math
import os

import diffusers
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "inference", "tests", "fixtures", "scheduler_schedules.json")

SDXL = {
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
}
# runwayml/stable-diffusion-v1-5
SD15 = {
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
}
# stabilityai/stable-diffusion-2-1 (768, v-prediction)
SD2V = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# stabilityai/sdxl-turbo
TURBO = dict(SDXL, _class_name="EulerAncestralDiscreteScheduler", timestep_spacing="trailing")
# latent-consistency/lcm-sdxl
LCM = {
    "_class_name": "LCMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

CONFIGS = {
    "sdxl": SDXL,
    "sd15": SD15,
    "sd2_v": SD2V,
    "sdxl_turbo": TURBO,
    "lcm_sdxl": LCM,
    "sdxl_trailing": dict(SDXL, timestep_spacing="trailing"),
    "sdxl_linspace": dict(SDXL, timestep_spacing="linspace"),
    "sdxl_karras": dict(SDXL, use_karras_sigmas=True),
    "sdxl_exponential": dict(SDXL, use_exponential_sigmas=True),
    "sdxl_beta": dict(SDXL, use_beta_sigmas=True),
    "linear_v": {"beta_schedule": "linear", "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                 "rescale_betas_zero_snr": True},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
    "sdxl_sigma_min_final": dict(SDXL, final_sigmas_type="sigma_min"),
    "sdxl_karras_bounds": dict(SDXL, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0),
}

ALL = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
       "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
       "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
       "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler"]
KARRAS = ["LMSDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
          "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
          "UniPCMultistepScheduler", "DEISMultistepScheduler"]
SOLVERS = ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
           "DEISMultistepScheduler"]

# (config, classes, overrides)
SETUPS = (
    [(c, ALL, {}) for c in ["sdxl", "sd15", "sd2_v", "sdxl_turbo", "cosine"]]
    + [("sdxl_linspace", ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler"] + SOLVERS, {})]
    + [("lcm_sdxl", ["LCMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler"], {})]
    + [(c, KARRAS, {}) for c in ["sdxl_karras", "sdxl_exponential", "sdxl_beta", "sdxl_karras_bounds"]]
    + [("sdxl_beta", KARRAS, {"use_karras_sigmas": True})]
    + [("linear_v", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler", "DDPMScheduler",
                     "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "LCMScheduler", "HeunDiscreteScheduler"], {})]
    + [("sdxl_sigma_min_final", ["EulerDiscreteScheduler"] + SOLVERS, {})]
    + [("sdxl_karras", ["UniPCMultistepScheduler"], {"final_sigmas_type": "sigma_min"})]
    + [("sd15", ["PNDMScheduler"], {"skip_prk_steps": False})]
    + [("sdxl", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"], {"lambda_min_clipped": -5.1})]
    + [("cosine", ["DPMSolverMultistepScheduler"], {"use_karras_sigmas": True})]
    + [("sdxl", ["DPMSolverMultistepScheduler"], {"use_lu_lambdas": True})]
    + [("sdxl", ["DPMSolverMultistepScheduler"], {"algorithm_type": "dpmsolver"})]
    + [("sdxl", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"],
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"})]
    + [("sdxl", ["DDPMScheduler"], {"beta_schedule": "sigmoid"})]
    + [("sdxl", ["HeunDiscreteScheduler"], {"beta_schedule": "exp"})]
    + [("sdxl_trailing", ["EulerDiscreteScheduler"], {"interpolation_type": "log_linear"})]
)

# The model configs as shipped get more step counts than the variants (the fixture stays small).
BASE = {"sdxl", "sd15", "sd2_v", "sdxl_turbo", "sdxl_karras", "lcm_sdxl"}
STEPS_BASE = [1, 2, 3, 4, 20, 50]
STEPS_VARIANT = [1, 2, 3, 20]


def f9(x):
    """Float rounded to 9 significant digits (float32 values survive), NaN/inf as strings."""
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return float("%.9g" % x)


def main():
    cases = []
    for cname, classes, overrides in SETUPS:
        for cls_name in classes:
            cls = getattr(diffusers, cls_name)
            for steps in STEPS_BASE if cname in BASE and not overrides else STEPS_VARIANT:
                case = {"config": cname, "class": cls_name, "overrides": overrides, "steps": steps}
                try:
                    sched = cls.from_config(CONFIGS[cname], **overrides)
                    sched.set_timesteps(steps)
                except Exception as e:  # diffusers refuses this combination
                    case["error"] = f"{type(e).__name__}: {e}"[:200]
                    cases.append(case)
                    continue
                case["timesteps"] = [f9(t) for t in sched.timesteps.tolist()]
                case["init_noise_sigma"] = f9(sched.init_noise_sigma)
                sigmas = getattr(sched, "sigmas", None)
                if cls_name in ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LCMScheduler"):
                    case["alphas_cumprod"] = [f9(sched.alphas_cumprod[int(t)]) for t in sched.timesteps]
                elif sigmas is not None:
                    case["sigmas"] = [f9(s) for s in sigmas.tolist()]
                cases.append(case)
    meta = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    with open(OUT, "w") as f:
        json.dump({"versions": meta, "configs": CONFIGS, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    errors = sum(1 for c in cases if "error" in c)
    print(f"wrote {len(cases)} cases ({errors} errors) to {os.path.abspath(OUT)}")


if __name__ == "__main__":
    main()
