pub mod bench;
pub mod generate;
pub mod make_tiny;
pub mod parity;
pub mod sampling;

/// Logs to stderr; `RUST_LOG` overrides the default `info` level, and `LOG_FORMAT=json`
/// writes one JSON object per line (with the span fields, e.g. `trace_id`) for log
/// collectors.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = if json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
}
