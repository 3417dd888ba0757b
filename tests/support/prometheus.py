"""The server's /metrics exposition, read by prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(metrics_text: str, name: str | None = None, labels: dict[str, str] | None = None) -> list[Sample]:
    """Every sample, or those named `name` (as written in the exposition: `mhaserve_requests_total`,
    `mhaserve_batch_size_count`) whose labels include `labels`."""
    return [
        sample
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if (name is None or sample.name == name) and all(sample.labels.get(k) == v for k, v in (labels or {}).items())
    ]


def metric_value(metrics_text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of the first sample named `name` whose labels include `labels`."""
    found = samples(metrics_text, name, labels)
    if not found:
        raise KeyError(f"{name} {labels or ''} not in the exposition")
    return found[0].value
