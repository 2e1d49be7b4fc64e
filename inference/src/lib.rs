#![recursion_limit = "256"]
//! The inference side on top of the engine crate (models, schedulers, pipelines on
//! candle): where models come from, the HTTP server that carries the contract of wit/,
//! the command line, and the runner of the diffusers parity fixtures.

pub mod device;
/// The engine crate (engine/), here under the name the server, CLI and tests use.
pub use engine;
pub mod model_source;
pub mod parity;
pub mod server;

/// A seed for requests that don't bring one: below 2^32, because torch's
/// generator seeds its state from the low 32 bits only, and such seeds survive
/// every API's seed field (and JavaScript numbers).
pub fn random_seed() -> u64 {
    rand::random_range(1..=u64::from(u32::MAX))
}
