//! WASIp2 test component for edge-host, the shape of a Spin 3 (spin-sdk 5)
//! HTTP component: exports `wasi:http/incoming-handler@0.2`, imports
//! `fermyon:spin/variables@2.0.0`.
//!
//! Build: `cargo build -p host-probe-p2 --target wasm32-wasip2 --release`.
//! On any other target this crate is empty.
//!
//! `.../var/<name>` answers a variable (404 when undefined); any other path
//! answers `method`, `spin-path-info` and `spin-full-url` lines.

#![cfg(target_arch = "wasm32")]

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wit_bindgen::generate!({
    path: "wit",
    world: "edge-host:probe-p2/probe",
    generate_all,
});

use fermyon::spin::variables;

struct Probe;

impl wasip2::exports::http::incoming_handler::Guest for Probe {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .first()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let (status, text) = if let Some((_, name)) = path.split_once("/var/") {
            match variables::get(name) {
                Ok(value) => (200, value),
                Err(variables::Error::Undefined(m)) => (404, format!("undefined: {m}")),
                Err(e) => (500, format!("error: {e:?}")),
            }
        } else {
            let method = match request.method() {
                Method::Get => "GET".to_string(),
                Method::Post => "POST".to_string(),
                other => format!("{other:?}"),
            };
            (
                200,
                format!(
                    "method: {method}\nspin-path-info: {}\nspin-full-url: {}\n",
                    header("spin-path-info"),
                    header("spin-full-url")
                ),
            )
        };
        let response = OutgoingResponse::new(Fields::new());
        response.set_status_code(status).unwrap();
        let body = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().unwrap();
        stream.blocking_write_and_flush(text.as_bytes()).unwrap();
        drop(stream);
        OutgoingBody::finish(body, None).unwrap();
    }
}

wasip2::http::proxy::export!(Probe);
