//! What a generate-request may ask for, the widest any dialect accepts: the edge's
//! dialects stay within these, and the inference server refuses anything wider
//! before it decodes or queues, whoever calls it.

/// Longest image side, pixels (Appypie, HolmesAI and Hyperbolic allow 2048).
pub const MAX_SIDE: u32 = 2048;
/// Most denoising steps (Hyperbolic allows 100).
pub const MAX_STEPS: u32 = 100;
/// Most images per request (ModelsLab allows 4).
pub const MAX_SAMPLES: u32 = 4;
/// Longest prompt or negative prompt, characters.
pub const MAX_PROMPT_CHARS: usize = 10_000;
/// Longest model name, characters.
pub const MAX_MODEL_CHARS: usize = 200;
/// Largest init image, pixels (its header's size, checked before it is decoded).
pub const MAX_INIT_PIXELS: u64 = 16_000_000;
/// Most ControlNets per request.
pub const MAX_CONTROLNETS: usize = 4;
