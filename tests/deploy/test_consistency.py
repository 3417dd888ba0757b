"""The manifests and the image agree with what the server really serves and reads.

One source of truth, the code: setting names and defaults from service.config.Settings (via
env_name), routes from the REST app that service.http.app.create_app builds, metric names from
service.metrics.Metrics. Nothing here is a second hand-written list of them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from service.backends.fake import FakeBackend
from service.config import Settings, env_name, load_settings
from service.core.engine import Engine
from service.core.models import Models
from service.http.app import create_app
from service.metrics import Metrics
from tests.deploy.conftest import (
    ADAPTER_VALUES,
    VARIANTS,
    load_kserve,
    one,
    server_container,
)
from tests.deploy.test_dockerfile import dockerfile_env, dockerfile_stages

SETTING_VARIABLES = {env_name(name) for name in Settings.model_fields}
DEFAULTS = Settings()


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    """Paths the REST app answers to GET, read from the app's own OpenAPI schema."""
    engine = Engine(DEFAULTS, FakeBackend)
    app = create_app(DEFAULTS, Models(DEFAULTS, [engine], engine.metrics))
    return {path for path, operations in app.openapi()["paths"].items() if "get" in operations}


def pod_spec_of(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container_env(container: dict, docs: list[dict]) -> dict[str, str]:
    """The variables the container gets from its ConfigMaps (envFrom) and env, as Kubernetes merges them."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        assert "value" in item, f"{item['name']}: only literal values here"
        env[item["name"]] = item["value"]
    return env


def image_env() -> dict[str, str]:
    """MHASERVE_* variables the served image sets itself (gpu and cpu targets)."""
    stages = dockerfile_stages()
    gpu, cpu = dockerfile_env(stages["gpu"]), dockerfile_env(stages["cpu"])
    assert {k: v for k, v in gpu.items() if k.startswith("MHASERVE_")} == {
        k: v for k, v in cpu.items() if k.startswith("MHASERVE_")
    }
    return {k: v for k, v in gpu.items() if k.startswith("MHASERVE_")}


def effective_settings(env: dict[str, str], tmp_path: Path) -> Settings:
    """What the server would run with: the image's variables, then the pod's, as load_settings reads them.

    Unknown names, unparsable values and values outside a setting's choices raise here, as
    they would at the pod's start. The key file exists only in the pod; a stand-in is used.
    """
    environ = image_env() | env
    if "MHASERVE_API_KEY_FILE" in environ:
        stand_in = tmp_path / "keys"
        stand_in.write_text("a-key\n")
        environ["MHASERVE_API_KEY_FILE"] = str(stand_in)
    return load_settings(cli={}, environ=environ)


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def check_pod(pod_spec: dict, env: dict[str, str], routes: set[str], tmp_path: Path) -> None:
    """Everything the server needs of its pod, for a Deployment's template and KServe's predictor alike."""
    container = server_container(pod_spec)
    unknown = sorted(name for name in env if name.startswith("MHASERVE_") and name not in SETTING_VARIABLES)
    assert not unknown, f"variables the server does not read (it refuses to start): {unknown}"
    settings = effective_settings(env, tmp_path)

    # ports: what the server binds is what the pod declares
    ports = {p.get("name", ""): p["containerPort"] for p in container["ports"]}
    assert settings.http_port in ports.values()
    if "grpc" in ports or len(ports) > 1:
        assert ports == {"http": settings.http_port, "grpc": settings.grpc_port}

    # probes: served paths, on declared ports
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        if "httpGet" in probe:
            assert probe["httpGet"]["path"] in routes, f"{kind}: {probe['httpGet']['path']} is not served"
            port = probe["httpGet"]["port"]
            assert (ports[port] if isinstance(port, str) else port) == settings.http_port, kind
        else:
            assert probe["grpc"]["port"] == settings.grpc_port, kind
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", "liveness must not follow readiness"
    if "httpGet" in container["readinessProbe"]:
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"

    # after SIGTERM the server serves on, unready, until a balancer following the readiness probe
    # has stopped routing to it (two misses), and only then drains; all of it (and any preStop
    # pause before the SIGTERM) fits in the grace period
    readiness = container["readinessProbe"]
    assert settings.shutdown_delay_s >= readiness["periodSeconds"] * readiness["failureThreshold"] + 1
    pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain_s = pause + settings.shutdown_delay_s + settings.shutdown_grace_s
    assert pod_spec["terminationGracePeriodSeconds"] >= drain_s + 5

    # Service links would inject MHASERVE_<SERVICE>_* variables, which the server refuses
    assert pod_spec["enableServiceLinks"] is False

    # read-only root, non-root, and the one writable place the image uses (HOME=/tmp)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]

    # the API key file is a file of a mounted Secret
    key_file = PurePosixPath(env["MHASERVE_API_KEY_FILE"])
    assert "secret" in volumes[mounts[str(key_file.parent)]], "MHASERVE_API_KEY_FILE must lie in the Secret's mount"

    # onnxruntime threads, all workers together: at most the cores the pod asks for (0 would count
    # the node's); workers left at auto count as 1, what an explicit --intra-op-threads implies
    cores = cpu_cores(container["resources"]["requests"]["cpu"])
    assert 1 <= settings.intra_op_threads * max(1, settings.inference_workers) <= math.ceil(cores)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_deployment_matches_the_server(rendered, variant, get_routes, tmp_path):
    docs = rendered[variant]
    pod_spec = pod_spec_of(docs)
    container = server_container(pod_spec)
    check_pod(pod_spec, container_env(container, docs), get_routes, tmp_path)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_services_and_policies_use_the_named_ports(rendered, variant):
    docs = rendered[variant]
    container = server_container(pod_spec_of(docs))
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for service in (d for d in docs if d["kind"] == "Service"):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named, f"{service['metadata']['name']}: {port['targetPort']}"
            assert port["port"] == named[port["targetPort"]], "the Service keeps the server's port numbers"
            assert port["appProtocol"] == {"http": "http", "grpc": "grpc"}[port["targetPort"]]
    headless = one(docs, "Service", "mhaserve-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["targetPort"] for p in headless["spec"]["ports"]] == ["grpc"]
    policy = one(docs, "NetworkPolicy")
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == set(named), "ingress: the server's two ports, nothing else"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_service_monitor_scrapes_the_served_metrics_path(rendered, variant, get_routes):
    endpoints = one(rendered[variant], "ServiceMonitor")["spec"]["endpoints"]
    assert [e["path"] for e in endpoints] == ["/metrics"]
    assert "/metrics" in get_routes


def test_the_variants_set_their_device():
    # the gpu variant must fail rather than fall back to the CPU, and the reverse
    for overlay, device in (("cpu", "cpu"), ("gpu", "cuda")):
        text = (Path(__file__).resolve().parents[2] / "deploy/k8s/overlays" / overlay / "settings.env").read_text()
        assert re.search(rf"^{env_name('device')}={device}$", text, re.MULTILINE), overlay


def test_gpu_variant_asks_for_one_gpu(rendered):
    for variant in ("gpu", "gpu+components"):
        resources = server_container(pod_spec_of(rendered[variant]))["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1
    for variant in ("cpu", "cpu+components"):
        assert "nvidia.com/gpu" not in str(server_container(pod_spec_of(rendered[variant]))["resources"])


def test_kserve_predictor_matches_the_server(get_routes, tmp_path):
    predictor = load_kserve()["spec"]["predictor"]
    container = server_container(predictor)
    check_pod(predictor, container_env(container, []), get_routes, tmp_path)
    assert container["ports"] == [{"name": "http1", "containerPort": DEFAULTS.http_port, "protocol": "TCP"}]
    # KServe's own services must not inject MHASERVE_* variables either
    assert not load_kserve()["metadata"]["name"].startswith("mhaserve")


def test_autoscaling_metrics_are_gauges_the_server_exports():
    families = {family.name: family.type for family in Metrics().registry.collect()}
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    for rule in rules:
        series = re.match(r"^'?([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"]).group(1)
        assert families.get(series) == "gauge", f"{series}: not a gauge the server exports"
        # the averaged value of a gauge; a counter would need rate()
        assert "avg_over_time(<<.Series>>" in rule["metricsQuery"]


def test_the_image_runs_as_the_user_the_pods_require(rendered):
    stages = dockerfile_stages()
    for target in ("gpu", "cpu"):
        user = [args for instruction, args in stages[target] if instruction == "USER"][-1]
        uid, _, gid = user.partition(":")
        pod_security = pod_spec_of(rendered[target])["securityContext"]
        assert (int(uid), int(gid)) == (pod_security["runAsUser"], pod_security["runAsGroup"])
        assert load_kserve()["spec"]["predictor"]["securityContext"]["runAsUser"] == int(uid)
