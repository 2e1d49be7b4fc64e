//! The edge-inference contract. The types are generated from `inference.wit`
//! (never written by hand); this file adds only what HTTP.md says about carrying
//! them: the route, the headers and the status of each error case; `wire`, the
//! request body (JSON, or multipart with the init image's own bytes); and
//! `image_header`, what an image in the contract may be, checked from its header;
//! and, with the `decode` feature (the server's), `init_image`: its decoding and fit.

pub mod image_header;
#[cfg(feature = "decode")]
pub mod init_image;
pub mod limits;
pub mod wire;

wit_bindgen::generate!({
    path: ".",
    world: "contract",
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    // No function uses these types: they travel over HTTP, not a component call.
    generate_unused_types: true,
});

pub use sdgate::inference::types::{
    Controlnet, Error, GenerateRequest, GenerateResult, GeneratedImage, ImageBase64, InitImage,
    Lora, Progress, ProgressState, Timings,
};

impl Default for GenerateRequest {
    /// One image of the default model from an empty prompt, everything else the model's.
    fn default() -> Self {
        GenerateRequest {
            model: String::new(),
            prompt: String::new(),
            negative_prompt: None,
            prompt_2: None,
            negative_prompt_2: None,
            clip_skip: None,
            vae: None,
            loras: None,
            embeddings: None,
            emphasis: None,
            safety_checker: None,
            refiner_start: None,
            width: None,
            height: None,
            steps: None,
            guidance: None,
            seed: None,
            samples: 1,
            scheduler: None,
            karras: None,
            algorithm_type: None,
            init_image: None,
            controlnets: None,
            guess_mode: None,
        }
    }
}

/// The route of a generation request.
pub const GENERATE_PATH: &str = "/v1/generate";
/// The liveness route.
pub const HEALTH_PATH: &str = "/health";
/// The header that carries the edge's trace id to the server and back.
pub const TRACE_HEADER: &str = "x-trace-id";
/// The header with the milliseconds the caller will wait for an answer.
pub const TIMEOUT_HEADER: &str = "x-timeout-ms";
/// Readiness: 200 once the default model is loaded.
pub const READY_PATH: &str = "/ready";
/// The model catalog and each model's state.
pub const MODELS_PATH: &str = "/v1/models";
/// How busy the server is: queued requests and the expected wait.
pub const QUEUE_PATH: &str = "/v1/queue";
/// Where a request stands, by trace id: `GET /v1/progress/{trace_id}`.
pub const PROGRESS_PATH: &str = "/v1/progress";
/// On `GET /v1/queue`: a model name to check.
pub const MODEL_HEADER: &str = "x-model";
/// Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

impl Error {
    /// The HTTP status this error travels with (HTTP.md).
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidRequest(_) | Error::UnknownModel(_) => 400,
            Error::Overloaded(_) => 503,
            Error::Timeout(_) => 504,
            Error::Internal(_) => 500,
        }
    }

    /// The human-readable part of the error.
    pub fn message(&self) -> String {
        match self {
            Error::InvalidRequest(m) | Error::UnknownModel(m) => m.clone(),
            Error::Overloaded(secs) => format!("the server is at capacity; retry in {secs} s"),
            Error::Timeout(m) | Error::Internal(m) => m.clone(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_json() {
        let req = GenerateRequest {
            model: "sdxl-turbo".into(),
            prompt: "a cat".into(),
            negative_prompt: None,
            width: Some(512),
            height: None,
            steps: Some(4),
            guidance: None,
            seed: Some(u64::MAX),
            samples: 1,
            scheduler: Some("Euler a".into()),
            loras: Some(vec![Lora {
                name: "pixel-art".into(),
                strength: 0.7,
            }]),
            init_image: Some(InitImage {
                image: "iVBORw0KGgo=".into(),
                strength: 0.5,
                mask: None,
            }),
            ..GenerateRequest::default()
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains("\"negative_prompt\":null"), "{json}");
        let back: GenerateRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn errors_are_externally_tagged_and_map_to_statuses() {
        let e: Error = serde_json::from_str(r#"{"InvalidRequest":"steps: must be 1-50"}"#).unwrap();
        assert_eq!(e.status(), 400);
        assert_eq!(e.to_string(), "steps: must be 1-50");
        assert_eq!(
            serde_json::to_string(&Error::Overloaded(3)).unwrap(),
            r#"{"Overloaded":3}"#
        );
        assert_eq!(Error::Overloaded(3).status(), 503);
        assert_eq!(Error::Timeout("x".into()).status(), 504);
    }
}
