#!/usr/bin/env bash
# Build an mhaserve image: `build.sh cpu` (make image) or `build.sh gpu` (make image-gpu);
# `build.sh engine` only says whether a container engine that can build is reachable.
#
# Environment (docs/images.md):
#   DOCKER           the docker CLI; default /usr/bin/docker when present (Debian's docker.io:
#                    it builds with the engine's BuildKit), else `docker` on PATH
#   PYTHON_IMAGE     base image (python:3.11-slim-bookworm); made from Debian packages by
#                    base-image.sh when it is neither present nor pullable
#   MODEL_DIR        the exported model directory to package (artifacts/all-minilm-l6-v2)
#   MODEL_SOURCE     context (default: package MODEL_DIR) or export (export inside the build)
#   IMAGE_REPO       image name (mhaserve): tags IMAGE_REPO:TARGET and IMAGE_REPO:VERSION-TARGET
#   PIP_CERT         CA bundle pip trusts, passed as the build secret pip-cert (when the file exists)
#   PIP_CONFIG_FILE  pip configuration, passed as the build secret pip.conf (when set)
#   BUILD_ARGS       more `docker build` arguments, split on spaces
set -euo pipefail
cd "$(dirname "$0")/../.."

target=${1:?usage: build.sh cpu|gpu|engine}
if [ -z "${DOCKER:-}" ]; then
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
export DOCKER DOCKER_BUILDKIT=1

if ! command -v "$DOCKER" >/dev/null; then
    echo "no docker CLI ($DOCKER): apt-get install docker.io (or set DOCKER)" >&2
    exit 1
fi
if ! server=$("$DOCKER" version --format '{{.Server.Version}}' 2>&1); then
    echo "no container engine answers $DOCKER: ${server##*$'\n'}" >&2
    echo "start one: dockerd --bridge=none --iptables=false (as root), or see docs/images.md" >&2
    exit 1
fi
case $target in
    engine) echo "container engine $server ($DOCKER)"; exit 0 ;;
    cpu | gpu) ;;
    *) echo "usage: build.sh cpu|gpu|engine" >&2; exit 2 ;;
esac

repo=${IMAGE_REPO:-mhaserve}
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
model_dir=${MODEL_DIR:-artifacts/all-minilm-l6-v2}
model_source=${MODEL_SOURCE:-context}
base=$(deploy/docker/base-image.sh "${PYTHON_IMAGE:-python:3.11-slim-bookworm}")

args=(--network host --target "$target" --build-arg "PYTHON_IMAGE=$base" --build-arg "MODEL_SOURCE=$model_source"
      --label "org.opencontainers.image.base.name=$base" --label "org.opencontainers.image.version=$version"
      -t "$repo:$target" -t "$repo:$version-$target")
if [ "$model_source" = context ]; then
    python3 deploy/docker/verify_artifact.py "$model_dir"
    model_name=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["name"])' "$model_dir/manifest.json")
    rm -rf build/image-model
    mkdir -p build
    # hard links when the artifact is on this file system (no copy of the graphs), else a copy
    cp -rl "$model_dir" build/image-model 2>/dev/null || { rm -rf build/image-model; cp -r "$model_dir" build/image-model; }
    args+=(--build-arg "MODEL_NAME=$model_name")
fi
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then args+=(--secret "id=pip-cert,src=$PIP_CERT"); fi
if [ -n "${PIP_CONFIG_FILE:-}" ]; then args+=(--secret "id=pip.conf,src=$PIP_CONFIG_FILE"); fi
# BUILD_ARGS is a list of arguments, split on spaces on purpose
# shellcheck disable=SC2206
args+=(${BUILD_ARGS:-})

echo "building $repo:$target ($repo:$version-$target) on $base with $DOCKER (engine $server)"
start=$(date +%s)
"$DOCKER" build "${args[@]}" .
seconds=$(($(date +%s) - start))
image_bytes=$("$DOCKER" image inspect --format '{{.Size}}' "$repo:$target")
base_bytes=$("$DOCKER" image inspect --format '{{.Size}}' "$base")
echo "built $repo:$target in ${seconds} s: $((image_bytes / 1000000)) MB, $(((image_bytes - base_bytes) / 1000000)) MB on its base $base ($((base_bytes / 1000000)) MB)"
