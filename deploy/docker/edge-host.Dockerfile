# The edge: the Spin component (edge.wasm) on the project's Spin-compatible runtime,
# edge-host (for Spin itself or SpinKube, deploy spin.toml and edge.wasm instead). Build
# from the repository root:
#   docker build -f deploy/docker/edge-host.Dockerfile -t sdgate-edge .
#   docker run -p 3000:3000 -v sdgate-edge:/data \
#     -e SPIN_VARIABLE_INFERENCE_URL=http://inference:8081 -e SPIN_VARIABLE_API_KEYS=key1 sdgate-edge
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip2 \
    && cargo build --release --locked --target wasm32-wasip2 -p edge \
    && cargo build --release --locked -p edge-host --bin edge-host

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/sdgate sdgate \
    && mkdir -p /app/target/wasm32-wasip2/release /data && chown sdgate /data
COPY --from=build /src/target/release/edge-host /usr/local/bin/edge-host
COPY --from=build /src/spin.toml /app/spin.toml
COPY --from=build /src/target/wasm32-wasip2/release/edge.wasm /app/target/wasm32-wasip2/release/edge.wasm
USER 10001
WORKDIR /app
# The key-value store (ModelsLab's jobs and output links) is an SQLite file in /data.
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:3000/.well-known/spin/health"]
# SIGTERM: in-flight requests finish (up to --shutdown-timeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["edge-host", "--from", "/app/spin.toml", "--listen", "0.0.0.0:3000", "--state-dir", "/data"]
