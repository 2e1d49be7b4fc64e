//! edge-host: a small Spin-compatible runtime for the project's HTTP
//! components, on wasmtime 48.
//!
//! It reads the same `spin.toml` as `spin up` (manifest version 2): routes
//! from `[[trigger.http]]`, application and component variables (values from
//! `SPIN_VARIABLE_<NAME>`), `allowed_outbound_hosts` and
//! `key_value_stores`; and serves Spin 4 (WASIp3,
//! `wasi:http/handler@0.3.0`) components, and Spin 3 (WASIp2) ones, with the
//! request headers Spin sets, Spin variables and Spin's key-value store (in
//! memory).

pub mod bindings;
pub mod cli;
pub mod key_value;
pub mod outbound;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod stdio;
pub mod variables;

/// spin.toml and the allowed-hosts syntax: their own crate (host/manifest), which
/// needs no wasmtime, so the fuzzer and other tools read them as edge-host does.
pub use spin_manifest as manifest;
