"""Reading ``/metrics`` in tests with prometheus_client's own parser (never by matching text)."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


def families(text: str) -> dict[str, Metric]:
    """Every metric family of an exposition, by name (a counter's name is without ``_total``)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` whose labels are exactly ``labels``; an AssertionError if
    there is none (a sample never written is absent, not 0)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels or ''} in /metrics")
