//! Test component for edge-host (Spin 4 / spin-sdk 7, WASIp3).
//!
//! Build: `cargo build -p host-probe --target wasm32-wasip2 --release`.
//! On any other target this crate is empty.
//!
//! Dispatches on the first path segment (after a leading `two/`, which is
//! skipped so that a second component routed at `/two/...` serves the same
//! operations):
//! - `echo`, `exact`, `users`, `two`: method, URI, headers and the size of
//!   the request body, one `name: value` line each
//! - `var/<name>` (or the `spin-path-match-name` header): a variable
//! - `env/<NAME>`: an environment variable of the component
//! - `fetch?url=<url>`: an outbound GET; `status=<code>` then the body, or a
//!   502 with `error: <ErrorCode>`
//! - `stream?bytes=<n>`: a streamed body of n bytes, byte i = i % 251
//! - `sleep?ms=<n>`: answers after n milliseconds
//! - `panic`: panics
//! - `kv/<label>/<op>[/<key>]`: `spin_sdk::key_value` on the store `label`:
//!   `set/<key>` (the request body is the value), `get/<key>` (the value, or
//!   404), `exists/<key>`, `delete/<key>`, `keys` (one per line), and
//!   `open-many?n=<n>` (opens n handles at once). Store errors are answered
//!   with their WIT name (`access-denied`, `no-such-store`,
//!   `store-table-full`, `other: <message>`).

#![cfg(target_arch = "wasm32")]

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{FullBody, IntoResponse, Request, Response};
use spin_sdk::http_service;

type Reply = Response<spin_sdk::http::BoxBody>;

fn reply(status: u16, text: impl Into<String>) -> Reply {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(spin_sdk::http::box_body(FullBody::new(Bytes::from(
            text.into(),
        ))))
        .unwrap()
}

fn query_param(req: &Request, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let path = req.uri().path().to_string();
    let path = path.trim_start_matches('/');
    let path = path.strip_prefix("two/").unwrap_or(path);
    let mut segments = path.split('/');
    let first = segments.next().unwrap_or("");
    let second = segments.next().unwrap_or("").to_string();
    match first {
        "var" => {
            let name = req
                .headers()
                .get("spin-path-match-name")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or(second);
            match spin_sdk::variables::get(&name).await {
                Ok(value) => reply(200, value),
                Err(spin_sdk::variables::Error::Undefined(m)) => {
                    reply(404, format!("undefined: {m}"))
                }
                Err(spin_sdk::variables::Error::InvalidName(m)) => {
                    reply(400, format!("invalid name: {m}"))
                }
                Err(e) => reply(500, format!("error: {e:?}")),
            }
        }
        "env" => match std::env::var(&second) {
            Ok(v) => reply(200, v),
            Err(_) => reply(404, format!("no env var {second}")),
        },
        "fetch" => {
            let Some(url) = query_param(&req, "url") else {
                return reply(400, "missing url");
            };
            match spin_sdk::http::get(&url).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.into_body().bytes().await {
                        Ok(body) => reply(
                            200,
                            format!("status={status}\n{}", String::from_utf8_lossy(&body)),
                        ),
                        Err(e) => reply(502, format!("error: body: {e:?}")),
                    }
                }
                Err(e) => {
                    eprintln!("probe: outbound GET {url} failed: {e:?}");
                    reply(502, format!("error: {e:?}"))
                }
            }
        }
        "stream" => {
            let total = query_param(&req, "bytes")
                .and_then(|b| b.parse().ok())
                .unwrap_or(1 << 20);
            http::Response::builder()
                .status(200)
                .header("content-type", "application/octet-stream")
                .body(spin_sdk::http::box_body(Pattern { sent: 0, total }))
                .unwrap()
        }
        "sleep" => {
            let ms = query_param(&req, "ms")
                .and_then(|b| b.parse().ok())
                .unwrap_or(100);
            spin_sdk::time::sleep(Duration::from_millis(ms)).await;
            reply(200, format!("slept {ms}"))
        }
        "kv" => {
            let label = second;
            let op = segments.next().unwrap_or("").to_string();
            let key = segments.collect::<Vec<_>>().join("/");
            let n = query_param(&req, "n").and_then(|n| n.parse().ok());
            let body = match req.into_body().bytes().await {
                Ok(b) => b,
                Err(e) => return reply(500, format!("error reading body: {e:?}")),
            };
            match key_value(&label, &op, &key, body.to_vec(), n).await {
                Ok(reply) => reply,
                Err(e) => kv_error(e),
            }
        }
        "panic" => {
            eprintln!("probe: about to panic on purpose");
            panic!("deliberate panic from the probe");
        }
        _ => echo(req).await,
    }
}

async fn key_value(
    label: &str,
    op: &str,
    key: &str,
    body: Vec<u8>,
    n: Option<usize>,
) -> Result<Reply, spin_sdk::key_value::Error> {
    use spin_sdk::key_value::Store;
    if op == "open-many" {
        let mut open = Vec::new();
        for _ in 0..n.unwrap_or(1) {
            open.push(Store::open(label).await?);
        }
        return Ok(reply(200, format!("opened {}", open.len())));
    }
    let store = Store::open(label).await?;
    Ok(match op {
        "set" => {
            store.set(key, &body).await?;
            reply(200, format!("set {key} ({} bytes)", body.len()))
        }
        "get" => match store.get(key).await? {
            Some(value) => http::Response::builder()
                .status(200)
                .header("content-type", "application/octet-stream")
                .body(spin_sdk::http::box_body(FullBody::new(Bytes::from(value))))
                .unwrap(),
            None => reply(404, format!("no key {key}")),
        },
        "exists" => reply(200, store.exists(key).await?.to_string()),
        "delete" => {
            store.delete(key).await?;
            reply(200, format!("deleted {key}"))
        }
        "keys" => {
            let keys = store.get_keys().await.collect().await?;
            reply(200, keys.join("\n"))
        }
        _ => reply(400, format!("unknown key-value operation {op:?}")),
    })
}

/// A store error as its WIT case name, with a status that tells them apart.
fn kv_error(e: spin_sdk::key_value::Error) -> Reply {
    use spin_sdk::key_value::Error;
    match e {
        Error::AccessDenied => reply(403, "access-denied"),
        Error::NoSuchStore => reply(404, "no-such-store"),
        Error::StoreTableFull => reply(503, "store-table-full"),
        Error::Other(m) => reply(507, format!("other: {m}")),
    }
}

async fn echo(req: Request) -> Reply {
    let mut lines = vec![
        format!("method: {}", req.method()),
        format!("uri: {}", req.uri()),
    ];
    let mut headers: Vec<String> = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("<binary>")))
        .collect();
    headers.sort();
    lines.extend(headers);
    let body = match req.into_body().bytes().await {
        Ok(b) => b,
        Err(e) => return reply(500, format!("error reading body: {e:?}")),
    };
    lines.push(format!("body-bytes: {}", body.len()));
    let sum: u64 = body.iter().map(|b| *b as u64).sum();
    lines.push(format!("body-sum: {sum}"));
    eprintln!("probe: echoed {}", lines[1]);
    reply(200, lines.join("\n") + "\n")
}

/// A body of `total` bytes, byte i = i % 251, produced 64 KiB at a time.
struct Pattern {
    sent: u64,
    total: u64,
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.sent >= self.total {
            return Poll::Ready(None);
        }
        let n = (self.total - self.sent).min(64 * 1024);
        let start = self.sent;
        let chunk: Vec<u8> = (start..start + n).map(|i| (i % 251) as u8).collect();
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}
