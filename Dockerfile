# syntax=docker/dockerfile:1.7
#
# Ferry's image: one `ferry` binary that runs every role (`ferry function gateway|admin|billing`,
# `ferry scaler`, `ferry worker`, `ferry serve`, ...). Needs BuildKit (the default builder of
# Docker ≥ 23) for the cache mounts.
#
#   docker build -t REGISTRY/ferry:TAG .
#
# The default target is the last stage, `runtime`: a CPU build on distroless (no shell, no
# Python). It is what the Knative functions run (knative/functions/). A CPU `ferry worker` in
# it cannot pull models (pulling runs `python3 -m pip download`): give it a models directory
# that already holds them.
#
# The GPU pool's worker, built with the `cuda` feature against the CUDA toolkit:
#
#   docker build --target worker-cuda --build-arg FEATURES=aws,cuda \
#       -t REGISTRY/ferry-worker-cuda:TAG .
#
# It runs on nvidia/cuda's runtime image (the CUDA libraries the binary links; the driver,
# libcuda, comes from the node through the NVIDIA container toolkit) and needs a node driver
# for CUDA ≥ CUDA_VERSION. CUDA_COMPUTE_CAP picks the GPU architecture the kernels are compiled
# for (90: Hopper, H100/H200; 89: Ada, L4/L40S; 80: Ampere, A100). The `cuda` stages are only
# built when `--target worker-cuda` asks for them.

ARG FEATURES=aws
ARG CUDA_VERSION=12.6.3

# ---- the CPU build ---------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
ARG FEATURES
WORKDIR /src
COPY . .
# The registry and the target directory live in cache mounts (kept between builds, not in any
# layer), so the binary is copied out of the mount within the same step.
RUN --mount=type=cache,id=ferry-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=ferry-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=ferry-target,target=/src/target \
    cargo build --release --locked --features "${FEATURES}" --bin ferry \
    && cp target/release/ferry /usr/local/bin/ferry

# ---- the CUDA build (only for --target worker-cuda) -----------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS builder-cuda
ARG FEATURES
ARG RUST_VERSION=1.95
ARG CUDA_COMPUTE_CAP=90
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH} \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential ca-certificates curl pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
       | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}"
WORKDIR /src
COPY . .
# nvcc (on PATH in the devel image) compiles candle's kernels, and its version picks cudarc's
# CUDA bindings; libcuda links against the toolkit's stub. `cuda` is always on here.
RUN --mount=type=cache,id=ferry-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=ferry-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=ferry-target-cuda,target=/src/target \
    cargo build --release --locked --features "cuda,${FEATURES}" --bin ferry \
    && cp target/release/ferry /usr/local/bin/ferry

# ---- the CUDA worker image -------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04 AS worker-cuda
# python3 and pip: `ferry worker` pulls its pinned models with `pip download` unless
# FERRY_MODELS_DIR already holds them. /data is the writable data directory the pool's
# manifests use (`--data-dir /data`); mount a volume there to keep models across restarts.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/nonroot nonroot \
    && mkdir -p /data \
    && chown 65532:65532 /data
COPY --from=builder-cuda /usr/local/bin/ferry /usr/local/bin/ferry
ENV FERRY_LOG_JSON=true
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ferry"]

# ---- the default image (last, so a plain `docker build` makes it) ---------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /usr/local/bin/ferry /usr/local/bin/ferry
ENV FERRY_LOG_JSON=true
# distroless's `nonroot` user, by number: Kubernetes can only verify `runAsNonRoot` against a
# numeric user.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ferry"]
