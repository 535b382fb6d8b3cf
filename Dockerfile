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
# for the CUDA of CUDA_RUNTIME_IMAGE (12.6). CUDA_COMPUTE_CAP picks the GPU architecture the kernels are compiled
# for (90: Hopper, H100/H200; 89: Ada, L4/L40S; 80: Ampere, A100). The `cuda` stages are only
# built when `--target worker-cuda` asks for them.

ARG FEATURES=aws
# Every base image is pinned by digest (the tag says which, the digest is what is pulled), so a
# rebuild starts from the bytes that were reviewed. To move one, resolve its new tag's digest
# (`docker buildx imagetools inspect rust:1.95-bookworm`) and change tag and digest together.
ARG RUST_IMAGE=rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04@sha256:392c0df7b577ecae17a17f6ba7f2009c217bb4422f8431c053ae9af61a8c148a
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04@sha256:2c8193530ecc423e0f123d0c85b68a15d1395adcddabfc943e2523dbfde172e1
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

# ---- the CPU build ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS toolchain

FROM toolchain AS builder
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
FROM ${CUDA_DEVEL_IMAGE} AS builder-cuda
ARG FEATURES
ARG CUDA_COMPUTE_CAP=90
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH} \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential ca-certificates pkg-config \
    && rm -rf /var/lib/apt/lists/*
# The Rust toolchain is the one in the digest-pinned Rust image, not an installer script
# fetched at build time. (Built against Debian 12's glibc 2.36; Ubuntu 24.04 has 2.39.)
COPY --from=toolchain /usr/local/rustup /usr/local/rustup
COPY --from=toolchain /usr/local/cargo/bin /usr/local/cargo/bin
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
FROM ${CUDA_RUNTIME_IMAGE} AS worker-cuda
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
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=builder /usr/local/bin/ferry /usr/local/bin/ferry
ENV FERRY_LOG_JSON=true
# distroless's `nonroot` user, by number: Kubernetes can only verify `runAsNonRoot` against a
# numeric user.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ferry"]
