//! The names clients give schedulers: diffusers' class names and A1111's, each
//! with a " Karras" form where the class has Karras sigmas; the classes refused
//! with the reason; and their resolution to a [`SchedulerKind`].

use anyhow::Result;

use super::SchedulerKind;
use crate::error::EngineError;

/// (kind, display name, accepted names). Names compare case-insensitively, ignoring spaces,
/// `_` and `-`; a trailing "Karras" asks for Karras sigmas where the class has them.
pub const SUPPORTED: &[(SchedulerKind, &str, &[&str])] = &[
    (
        SchedulerKind::EulerDiscrete,
        "Euler",
        &[
            "EulerDiscreteScheduler",
            "Euler",
            "k_euler",
            "EulerDiscrete",
        ],
    ),
    (
        SchedulerKind::EulerAncestralDiscrete,
        "Euler a",
        &[
            "EulerAncestralDiscreteScheduler",
            "Euler a",
            "Euler Ancestral",
            "k_euler_ancestral",
            "euler_a",
            "EulerAncestralDiscrete",
        ],
    ),
    (
        SchedulerKind::Heun,
        "Heun",
        &["HeunDiscreteScheduler", "Heun", "k_heun", "HeunDiscrete"],
    ),
    (
        SchedulerKind::Lms,
        "LMS",
        &["LMSDiscreteScheduler", "LMS", "k_lms", "LMSDiscrete"],
    ),
    (
        SchedulerKind::KDpm2,
        "DPM2",
        &[
            "KDPM2DiscreteScheduler",
            "DPM2",
            "k_dpm_2",
            "KDPM2",
            "KDPM2Discrete",
        ],
    ),
    (
        SchedulerKind::KDpm2Ancestral,
        "DPM2 a",
        &[
            "KDPM2AncestralDiscreteScheduler",
            "DPM2 a",
            "DPM2 Ancestral",
            "k_dpm_2_ancestral",
            "dpm2_a",
            "KDPM2 a",
            "KDPM2AncestralDiscrete",
        ],
    ),
    (
        SchedulerKind::DpmPlusPlus2M,
        "DPM++ 2M",
        &["DPM++ 2M", "dpmpp_2m", "k_dpmpp_2m", "DPMPP2M"],
    ),
    (
        SchedulerKind::DpmPlusPlus2MSde,
        "DPM++ 2M SDE",
        &[
            "DPM++ 2M SDE",
            "dpmpp_2m_sde",
            "k_dpmpp_2m_sde",
            "DPMPP2MSDE",
        ],
    ),
    (
        SchedulerKind::DpmSolverMultistep,
        "DPMSolverMultistep",
        &[
            "DPMSolverMultistepScheduler",
            "DPMSolverMultistep",
            "DPM Solver Multistep",
        ],
    ),
    (
        SchedulerKind::DpmPlusPlus2S,
        "DPM++ 2S",
        &["DPM++ 2S", "dpmpp_2s", "DPMPP2S"],
    ),
    (
        SchedulerKind::DpmSolverSinglestep,
        "DPMSolverSinglestep",
        &[
            "DPMSolverSinglestepScheduler",
            "DPMSolverSinglestep",
            "DPM Solver Singlestep",
        ],
    ),
    (
        SchedulerKind::UniPc,
        "UniPC",
        &[
            "UniPCMultistepScheduler",
            "UniPC",
            "uni_pc",
            "UniPCMultistep",
        ],
    ),
    (
        SchedulerKind::Deis,
        "DEIS",
        &["DEISMultistepScheduler", "DEIS", "DEISMultistep"],
    ),
    (SchedulerKind::Ddim, "DDIM", &["DDIMScheduler", "DDIM"]),
    (SchedulerKind::Ddpm, "DDPM", &["DDPMScheduler", "DDPM"]),
    (SchedulerKind::Pndm, "PNDM", &["PNDMScheduler", "PNDM"]),
    (SchedulerKind::Plms, "PLMS", &["PLMS"]),
    (SchedulerKind::Lcm, "LCM", &["LCMScheduler", "LCM"]),
    (
        SchedulerKind::FlowMatchEuler,
        "Flow Euler",
        &[
            "FlowMatchEulerDiscreteScheduler",
            "Flow Euler",
            "FlowMatchEuler",
            "FlowMatchEulerDiscrete",
        ],
    ),
];

/// Names that are refused with a reason rather than "unknown": (accepted spellings, reason).
pub const REFUSED: &[(&[&str], &str)] = &[
    (
        &["DDIMInverseScheduler", "DDIM Inverse", "DDIMInverse"],
        "DDIMInverseScheduler runs the DDIM process backwards (image to noise, for inversion); it does not generate images",
    ),
    (
        &["KarrasVeScheduler", "KarrasVe"],
        "KarrasVeScheduler samples variance-exploding (VE) models with their own sigma range; Stable Diffusion models are variance-preserving (use \"Euler\", \"Heun\" or \"DPM2\" with Karras sigmas for Karras-style sampling)",
    ),
    (
        &["ScoreSdeVeScheduler", "ScoreSdeVe"],
        "ScoreSdeVeScheduler is the predictor-corrector sampler of variance-exploding score-SDE models (NCSN++); Stable Diffusion models are variance-preserving",
    ),
    (
        &["IPNDMScheduler", "IPNDM"],
        "IPNDMScheduler works on continuous timesteps in [0, 1] with its own noise schedule (v-diffusion / Dance Diffusion models) and has no add_noise; a Stable Diffusion UNet expects training timesteps 0..999 (\"PLMS\" is the pseudo linear multistep method for these models)",
    ),
    (
        &[
            "DPM++ 2S a",
            "dpmpp_2s_a",
            "dpmpp_2s_ancestral",
            "k_dpmpp_2s_a",
        ],
        "A1111's ancestral \"DPM++ 2S a\" has no diffusers scheduler (the non-ancestral \"DPM++ 2S\" is DPMSolverSinglestepScheduler)",
    ),
    (
        &[
            "DPM++ SDE",
            "dpmpp_sde",
            "k_dpmpp_sde",
            "DPMSolverSDEScheduler",
        ],
        "\"DPM++ SDE\" is diffusers' DPMSolverSDEScheduler, whose Brownian-tree noise (torchsde) is not reproducible from a seed here; use \"DPM++ 2M SDE\"",
    ),
    (
        &["DPM fast", "DPM adaptive", "dpm_fast", "dpm_adaptive"],
        "this k-diffusion sampler has no diffusers scheduler",
    ),
];

fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-'))
        .flat_map(|c| c.to_lowercase())
        .collect()
}

/// The list of supported names for error messages.
pub fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|(k, display, _)| {
            let karras = if k.supports_karras() {
                format!(", \"{display} Karras\"")
            } else {
                String::new()
            };
            let only = if k.is_flow_matching() {
                ", SD 3 models only"
            } else {
                ""
            };
            format!("\"{display}\" ({}{only}){karras}", k.class_name())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn refused(n: &str) -> Option<&'static str> {
    REFUSED
        .iter()
        .find(|(names, _)| names.iter().any(|a| normalize(a) == n))
        .map(|(_, why)| *why)
}

/// Resolves a scheduler name. A trailing "Karras" (A1111 style, e.g. "DPM++ 2M Karras") asks
/// for Karras sigmas and is returned as `Some(true)`.
pub fn resolve(name: &str) -> Result<(SchedulerKind, Option<bool>)> {
    let full = normalize(name);
    let mut n = full.clone();
    let mut karras = None;
    if let Some(stripped) = n.strip_suffix("karras")
        && !stripped.is_empty()
    {
        n = stripped.to_string();
        karras = Some(true);
    }
    for (kind, _, names) in SUPPORTED {
        if names.iter().any(|a| normalize(a) == n) {
            if karras == Some(true) && !kind.supports_karras() {
                return Err(EngineError::invalid(
                    "scheduler",
                    format!(
                        "\"{name}\": {} does not support Karras sigmas; supported: {}",
                        kind.class_name(),
                        supported_list()
                    ),
                ));
            }
            return Ok((*kind, karras));
        }
    }
    if let Some(why) = refused(&full).or_else(|| refused(&n)) {
        return Err(EngineError::invalid(
            "scheduler",
            format!(
                "\"{name}\" is not supported: {why}; supported: {}",
                supported_list()
            ),
        ));
    }
    Err(EngineError::invalid(
        "scheduler",
        format!(
            "unknown scheduler \"{name}\"; supported: {}",
            supported_list()
        ),
    ))
}
