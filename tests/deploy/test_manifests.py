"""Every variant renders with `kubectl kustomize` and validates strictly against the Kubernetes
schemas (kubernetes-validate: unknown fields are errors); the custom resources, which have no
schema there, are checked for what they must hold."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import ADAPTER_VALUES, VARIANTS, every, load_kserve, one, server_container

# The oldest Kubernetes the manifests support and the newest the validator knows, which catches
# removed APIs.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# KServe's predictor is a pod spec plus these fields of its own (ComponentExtensionSpec).
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
}


def validate_strictly(doc: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {path}: {exc.message}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_renders_and_validates_strictly(rendered, variant, version):
    docs = rendered[variant]
    kinds = {doc["kind"] for doc in docs}
    expected = {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "NetworkPolicy",
    }
    assert kinds == expected, f"{variant}: unexpected kinds {kinds ^ expected}"
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
            continue
        validate_strictly(doc, version)


def test_a_schema_violation_is_caught(rendered):
    # The check above must be able to fail: an unknown field and a wrong type are errors.
    deployment = one(rendered["gpu"], "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    server_container(broken["spec"]["template"]["spec"])["readinessProbe"]["httpGet"]["pathh"] = "/health/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "forty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_service_monitor_scrapes_each_pod_once_through_a_named_port(rendered, variant):
    docs = rendered[variant]
    monitor = one(docs, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in every(docs, "Service") if wanted.items() <= s["metadata"].get("labels", {}).items()]
    # Both Services front the same pods: selecting both would scrape every pod twice.
    assert [s["metadata"]["name"] for s in selected] == ["mhaserve"]
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_selectors_match_the_pods(rendered, variant):
    docs = rendered[variant]
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for service in every(docs, "Service"):
        assert service["spec"]["selector"].items() <= pod_labels.items(), service["metadata"]["name"]
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        doc = one(docs, kind)
        selector = doc["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), kind
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mhaserve"}
    assert hpa["spec"]["minReplicas"] >= 2, "one replica alone can't survive a rollout or a drain"


def test_kserve_predictor_is_a_valid_pod_spec():
    isvc = load_kserve()
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
    assert server_container(pod_spec)["name"] == "kserve-container"
    # The predictor's pod spec becomes a pod's spec: validate it as one.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": isvc["metadata"]["name"]}, "spec": pod_spec}
    for version in KUBERNETES_VERSIONS:
        validate_strictly(pod, version)


def test_adapter_rules_serve_every_metric_the_hpa_asks_for(rendered):
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    served = {rule["name"]["as"] for rule in rules}
    for rule in rules:
        # per pod: the HPA's Pods metrics are looked up by namespace and pod
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    for variant in ("cpu", "gpu"):
        hpa = one(rendered[variant], "HorizontalPodAutoscaler")
        asked = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
        assert asked and asked <= served, f"{variant}: HPA asks for {asked - served}, which no adapter rule serves"
