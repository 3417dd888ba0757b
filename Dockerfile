#
# mhaserve images: `make image` (cpu) and `make image-gpu` (gpu) build them; docs/images.md says
# how, with and without Docker Hub, and what each one holds.
#
#   cpu   slim Python, the runtime lock with onnxruntime's CPU wheel of the same version in place
#         of onnxruntime-gpu (no CUDA or TensorRT libraries), the package, the model artifact
#         without its fp16 graph (CUDA only).
#   gpu   the same base, the runtime lock as CI installs it (onnxruntime-gpu), and CUDA 13 and
#         cuDNN 9 from their PyPI wheels, which onnxruntime-gpu preloads: no NVIDIA base image.
#
# No `# syntax=` line: the engine's built-in BuildKit frontend builds this file, so nothing is
# fetched from Docker Hub but the base (PYTHON_IMAGE), which `make image` makes from Debian
# packages when it cannot be pulled. Needs BuildKit (RUN --mount): DOCKER_BUILDKIT=1.
#
# The artifact: by default the directory `make image` stages at build/image-model from
# `make model`'s output (or IMAGE_MODEL_DIR), checked against its manifest before and during the
# build. MODEL_SOURCE=export exports it inside the build instead (`make install`, torch and all,
# then `python -m model export`: large and slow, for sites that want the image built from sources
# alone).
#
# Build secrets, never layers: `pip.conf` (a pip configuration: a private index, a proxy) and
# `pip-cert` (the CA bundle pip must trust), e.g. --secret id=pip-cert,src=/etc/ssl/certs/ca.crt.
#
# At run time the image writes only under /tmp, so it runs with a read-only root filesystem
# (mount a tmpfs or emptyDir at /tmp), as user 10001.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG MODEL_NAME=all-minilm-l6-v2
ARG MODEL_SOURCE=context

# Optional build contexts for MODEL_SOURCE=export (engines with `--build-context`): each is an
# empty stage unless the build names a context of the same name, which replaces the stage.
FROM scratch AS sts
FROM scratch AS checkpoint


# ---- the base of every stage: one interpreter for the venv and the image that runs it -------
FROM ${PYTHON_IMAGE} AS base
RUN groupadd --system --gid 10001 mhaserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin mhaserve


# ---- the model artifact ----------------------------------------------------------------------
# staged by `make image` (a copy of the exported directory), verified again here
FROM base AS model-context
ARG MODEL_NAME
COPY build/image-model /artifact/${MODEL_NAME}
COPY deploy/docker/verify_artifact.py /usr/local/lib/mhaserve/verify_artifact.py
RUN python3 /usr/local/lib/mhaserve/verify_artifact.py "/artifact/${MODEL_NAME}"

# exported in the build: what CI installs (`make install`), then what `make model` runs
FROM base AS model-export
# Debian package versions are left to the base image's release, so a rebuild picks up its
# security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG MODEL_NAME
ARG EXPORT_ARGS=""
ENV HF_HUB_OFFLINE=1
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=pip-cert \
    . deploy/docker/pip-secrets.sh \
 && make install PYTHON=python3
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
    .venv/bin/python -m model export "$@" ${EXPORT_ARGS} \
 && install -D deploy/docker/verify_artifact.py /usr/local/lib/mhaserve/verify_artifact.py \
 && python3 /usr/local/lib/mhaserve/verify_artifact.py "/artifact/${MODEL_NAME}"

# hadolint ignore=DL3006
FROM model-${MODEL_SOURCE} AS model

# the CPU image's graphs: all but fp16, which onnxruntime's CPU provider cannot run
FROM model AS cpu-model
ARG MODEL_NAME
RUN python3 /usr/local/lib/mhaserve/verify_artifact.py --drop-precision fp16 "/artifact/${MODEL_NAME}"


# ---- runtime virtual environments: hashed locks, --no-deps, no torch -------------------------
# The locks are installed before the sources are copied, so a source change reuses this layer.
FROM base AS cpu-venv
WORKDIR /src
COPY requirements/runtime.txt requirements/image-cpu.txt requirements/
COPY deploy/docker/image_requirements.py deploy/docker/pip-secrets.sh deploy/docker/
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=pip-cert \
    . deploy/docker/pip-secrets.sh \
 && python3 -m venv /opt/mhaserve/venv \
 && python3 deploy/docker/image_requirements.py cpu > /tmp/image-requirements.txt \
 && /opt/mhaserve/venv/bin/pip install --quiet --require-hashes --no-deps -r /tmp/image-requirements.txt
COPY . .
RUN /opt/mhaserve/venv/bin/pip install --quiet --no-deps --no-build-isolation . \
 && python3 deploy/docker/image_requirements.py check-cpu /opt/mhaserve/venv/bin/python \
 && deploy/docker/slim-venv.sh /opt/mhaserve/venv

FROM base AS gpu-venv
WORKDIR /src
COPY requirements/runtime.txt requirements/image-gpu.txt requirements/
COPY deploy/docker/image_requirements.py deploy/docker/pip-secrets.sh deploy/docker/
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=pip-cert \
    . deploy/docker/pip-secrets.sh \
 && python3 -m venv /opt/mhaserve/venv \
 && python3 deploy/docker/image_requirements.py gpu > /tmp/image-requirements.txt \
 && /opt/mhaserve/venv/bin/pip install --quiet --require-hashes --no-deps -r /tmp/image-requirements.txt
COPY . .
RUN /opt/mhaserve/venv/bin/pip install --quiet --no-deps --no-build-isolation . \
 && /opt/mhaserve/venv/bin/pip check \
 && deploy/docker/slim-venv.sh /opt/mhaserve/venv


# ---- cpu target ----------------------------------------------------------------------------------
FROM base AS cpu
ARG MODEL_NAME
COPY --from=cpu-venv /opt/mhaserve/venv /opt/mhaserve/venv
COPY --from=cpu-model /artifact/${MODEL_NAME} /opt/mhaserve/models/${MODEL_NAME}
COPY deploy/docker/healthcheck.py /opt/mhaserve/healthcheck.py
# HOME=/tmp: the only writable place under a read-only root filesystem.
# No bytecode writes; offline tokenizers; the same TOKENIZERS_PARALLELISM as `make run`
# (DL3064 reads the word TOKEN in that name as a secret: it is none). This onnxruntime has only
# the CPU provider: where a GPU is visible to the container, run it with --device cpu.
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
# At the lowest priority: a check is a Python process (about 0.2 s of CPU) that would otherwise
# take a core from inference every 15 s (docs/images.md).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["nice", "-n", "19", "python", "/opt/mhaserve/healthcheck.py"]
ENTRYPOINT ["mhaserve", "serve"]


# ---- gpu target (the default: last stage) --------------------------------------------------------
FROM base AS gpu
ARG MODEL_NAME
COPY --from=gpu-venv /opt/mhaserve/venv /opt/mhaserve/venv
COPY --from=model /artifact/${MODEL_NAME} /opt/mhaserve/models/${MODEL_NAME}
COPY deploy/docker/healthcheck.py /opt/mhaserve/healthcheck.py
# As in the cpu target; NVIDIA_* ask the NVIDIA container runtime for the driver's compute
# libraries (libcuda), the one part of CUDA the image cannot carry.
# hadolint ignore=DL3064
ENV PATH=/opt/mhaserve/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MHASERVE_MODEL_DIR=/opt/mhaserve/models/${MODEL_NAME}
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000 50051
# At the lowest priority: a check is a Python process (about 0.2 s of CPU) that would otherwise
# take a core from inference every 15 s (docs/images.md).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["nice", "-n", "19", "python", "/opt/mhaserve/healthcheck.py"]
ENTRYPOINT ["mhaserve", "serve"]
