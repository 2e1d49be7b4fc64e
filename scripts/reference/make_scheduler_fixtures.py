"""Writes inference/tests/fixtures/scheduler_schedules.json: timesteps, sigmas and
init_noise_sigma of diffusers' schedulers for a range of configs and step counts, which the
engine's schedulers must reproduce (inference/tests/schedulers.rs).

    python scripts/reference/make_scheduler_fixtures.py
"""

import json
import os

import numpy as np
import torch

from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

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

CONFIGS = {
    "sdxl": SDXL,
    "sdxl_trailing": dict(SDXL, timestep_spacing="trailing"),
    "sdxl_linspace": dict(SDXL, timestep_spacing="linspace"),
    "sdxl_karras": dict(SDXL, use_karras_sigmas=True),
    "linear_v": {"beta_schedule": "linear", "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                 "rescale_betas_zero_snr": True},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
    "sdxl_sigma_min_final": dict(SDXL, final_sigmas_type="sigma_min"),
}

CLASSES = {
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "DDIMScheduler": DDIMScheduler,
}

STEPS = [1, 3, 4, 7, 20, 33, 50]


def main():
    cases = []
    for cname, cfg in CONFIGS.items():
        for cls_name, cls in CLASSES.items():
            sched = cls.from_config(cfg)
            for steps in STEPS:
                sched.set_timesteps(steps)
                case = {
                    "config": cname,
                    "class": cls_name,
                    "steps": steps,
                    "timesteps": [float(t) for t in sched.timesteps.tolist()],
                    "init_noise_sigma": float(sched.init_noise_sigma),
                }
                if hasattr(sched, "sigmas"):
                    case["sigmas"] = [float(s) for s in sched.sigmas.tolist()]
                else:
                    case["alphas_cumprod"] = [float(sched.alphas_cumprod[int(t)]) for t in sched.timesteps]
                cases.append(case)
    with open(OUT, "w") as f:
        json.dump({"configs": CONFIGS, "cases": cases}, f)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {os.path.abspath(OUT)}")


if __name__ == "__main__":
    main()
