//! The edge: a Spin component that serves the hosted image APIs' request formats
//! (the dialects), validates requests, fetches input images and calls the
//! inference server over the contract in wit/.
//!
//! Everything but `component` is plain Rust that also compiles natively, so the
//! parsing, validation and mapping have fast unit tests; `component` is the thin
//! layer that does Spin I/O (variables, inbound and outbound HTTP).

pub mod api_error;
pub mod auth;
pub mod dialects;
pub mod fields;
pub mod image_url;
pub mod input_image;
pub mod job;
pub mod jobs;
pub mod models;
pub mod multipart;
pub mod openapi;
pub mod quota;
pub mod settings;
pub mod stash;
pub mod trace;

#[cfg(target_arch = "wasm32")]
mod component;
