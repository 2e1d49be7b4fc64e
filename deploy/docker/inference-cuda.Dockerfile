# The inference server on NVIDIA GPUs (CUDA kernels, cuBLAS, cuDNN), for compute
# capability CUDA_COMPUTE_CAP (90: H100/H200). Build from the repository root:
#   docker build -f deploy/docker/inference-cuda.Dockerfile --build-arg CUDA_COMPUTE_CAP=90 \
#     -t sdgate-inference-cuda .
#   docker run --gpus all -p 8081:8081 -v sdgate-models:/models sdgate-inference-cuda
FROM nvidia/cuda:13.0.0-cudnn-devel-ubuntu24.04 AS build
ARG CUDA_COMPUTE_CAP=90
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo PATH=/opt/cargo/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
WORKDIR /src
COPY . .
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} CUDARC_CUDA_VERSION=13000
RUN cargo build --release --locked -p inference --bin inference --features inference/cuda,inference/cudnn

FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/sdgate sdgate \
    && mkdir /models && chown sdgate /models
COPY --from=build /src/target/release/inference /usr/local/bin/inference
USER 10001
ENV HF_HOME=/models INFERENCE_LISTEN=0.0.0.0:8081 INFERENCE_DEVICE=cuda LOG_FORMAT=json
VOLUME ["/models"]
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8081/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["inference", "serve"]
