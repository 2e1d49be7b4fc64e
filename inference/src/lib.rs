#![recursion_limit = "256"]
//! The inference side: the engine (models, schedulers, pipelines on candle), where
//! models come from, the HTTP server that carries the contract of wit/, and the runner of
//! the diffusers parity fixtures.

pub mod device;
pub mod engine;
pub mod model_source;
pub mod parity;
pub mod server;

/// A seed for requests that don't bring one: below 2^32, because torch's
/// generator seeds its state from the low 32 bits only, and such seeds survive
/// every API's seed field (and JavaScript numbers).
pub fn random_seed() -> u64 {
    rand::random_range(1..=u64::from(u32::MAX))
}
