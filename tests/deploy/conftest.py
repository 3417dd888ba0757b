"""Deployment checks, offline: the manifests as `kubectl kustomize` renders them, the Dockerfile
as its instructions, and the truth they must agree with, read from the code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.containers import IMAGE, docker_cli, docker_run, unavailable

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
COMPONENTS = ("hpa-cpu-fallback", "grpc-probes")
KSERVE = DEPLOY / "kserve" / "inferenceservice.yaml"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
DOCKERFILE = REPO / "Dockerfile"

# Every variant: each overlay alone, and each overlay with every optional component.
VARIANTS = {name: (name, ()) for name in OVERLAYS} | {f"{name}+components": (name, COMPONENTS) for name in OVERLAYS}


def venv_tool(name: str) -> str | None:
    """A console script of this environment (pip-installed tools), else one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        # Debian's kubernetes-client (1.20) is too old: its kustomize lacks components and `labels`.
        pytest.skip("kubectl is not on PATH; install kubectl >= 1.27 (kustomize v5) to render the overlays")
    return path


def kustomize(directory: Path) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_variant(overlay: str, components: tuple[str, ...], workdir: Path) -> list[dict]:
    if not components:
        return kustomize(K8S / "overlays" / overlay)
    # An overlay of the overlay, as a user would write it to add components. kustomize wants
    # relative paths.
    workdir.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / overlay, workdir)],
        "components": [os.path.relpath(K8S / "components" / name, workdir) for name in components],
    }
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(workdir)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Variant name -> its rendered documents."""
    root = tmp_path_factory.mktemp("kustomize")
    return {name: render_variant(overlay, parts, root / name) for name, (overlay, parts) in VARIANTS.items()}


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def every(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def server_container(pod_spec: dict) -> dict:
    """The mhaserve container of a pod spec (Deployment template or KServe predictor)."""
    containers = pod_spec["containers"]
    assert len(containers) == 1, "one container per pod: the server"
    return containers[0]


def load_kserve() -> dict:
    return yaml.safe_load(KSERVE.read_text())


# the container engine and the image (make test-image, make test-rollout) ------------------------


@pytest.fixture(scope="session")
def docker() -> str:
    cli = docker_cli()
    if cli is None:
        unavailable("no docker CLI: apt-get install docker.io (as root), or set DOCKER")
    version = subprocess.run([cli, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    if version.returncode != 0:
        unavailable(f"no container engine answers {cli}: {version.stderr.strip().splitlines()[-1:]}")
    return cli


@pytest.fixture(scope="session")
def image(docker) -> dict:
    """The image's configuration (`docker image inspect`), built by `make image` when missing."""
    if docker_run(docker, "image", "inspect", IMAGE, check=False).returncode != 0:
        if IMAGE != "mhaserve:cpu":
            pytest.fail(f"{IMAGE} (MHASERVE_TEST_IMAGE) is not present")
        subprocess.run([REPO / "deploy/docker/build.sh", "cpu"], check=True, timeout=3600)
    (inspected,) = json.loads(docker_run(docker, "image", "inspect", IMAGE).stdout)
    return inspected


@pytest.fixture(scope="session")
def image_artifact(docker, image, tmp_path_factory) -> Path:
    """The model directory the image serves, copied out of it."""
    env = dict(e.split("=", 1) for e in image["Config"]["Env"])
    out = tmp_path_factory.mktemp("image-artifact")
    name = f"mhaserve-test-copy-{os.getpid()}"
    docker_run(docker, "create", "--name", name, IMAGE)
    try:
        docker_run(docker, "cp", f"{name}:{env['MHASERVE_MODEL_DIR']}", str(out / "model"))
    finally:
        docker_run(docker, "rm", name, check=False)
    return out / "model"
