# The inference server on the CPU. Build from the repository root:
#   docker build -f deploy/docker/inference.Dockerfile -t sdgate-inference .
#   docker run -p 8081:8081 -v sdgate-models:/models -e INFERENCE_TOKEN=secret sdgate-inference
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p inference --bin inference

FROM debian:bookworm-slim
# curl: the health check's client.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/sdgate sdgate \
    && mkdir /models && chown sdgate /models
COPY --from=build /src/target/release/inference /usr/local/bin/inference
USER 10001
# Hugging Face downloads (the catalog's hub ids) are cached in the /models volume.
ENV HF_HOME=/models INFERENCE_LISTEN=0.0.0.0:8081 LOG_FORMAT=json
VOLUME ["/models"]
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8081/health"]
# SIGTERM drains: the running batch and queued requests finish first.
STOPSIGNAL SIGTERM
ENTRYPOINT ["inference", "serve"]
