"""GUARD_METRICS_KEY: /metrics and /readyz answer only with ``Authorization: Bearer <key>`` when it
is set; unset they stay open (documented in docs/deployment.md); /healthz is always open."""

from __future__ import annotations

import pytest

from tests.apptools import guard_client


@pytest.mark.parametrize("path", ["/metrics", "/readyz"])
def test_a_metrics_key_is_required_when_set(sqlite_url: str, path: str) -> None:
    with guard_client(sqlite_url, metrics_key="scrape-secret-123") as client:
        r = client.get(path)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert "GUARD_METRICS_KEY" in r.json()["error"]["message"]
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, headers={"Authorization": "Basic scrape-secret-123"}).status_code == 401
        assert client.get(path, headers={"X-Guard-Key": "scrape-secret-123"}).status_code == 401
        ok = client.get(path, headers={"Authorization": "Bearer scrape-secret-123"})
        assert ok.status_code == 200, ok.text
        assert client.get("/healthz").status_code == 200


def test_without_a_metrics_key_monitoring_is_open(sqlite_url: str) -> None:
    with guard_client(sqlite_url) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/readyz").status_code == 200
