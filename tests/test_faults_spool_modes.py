"""GUARD_SPOOL_ON_ERROR on a spool disk that is really full (a tmpfs filled to ENOSPC; root only, else
skipped), each mode through the check API and the OpenAI-compatible proxy of a served guard:

- ``503`` (the default): nothing is answered that is not durable: 503 ``spool_unavailable``;
- ``hold``: the reply is held with the policy's ``on_error`` action and holding message, the decision
  marked ``durable: false`` and still recorded in SQL (with its queue item) while the guard lives;
- ``memory``: answered as decided, marked ``durable: false``, recorded in SQL.

In every mode ``/readyz`` answers 503 with the spool's state and ``/metrics`` shows it; once the disk
has room again the next decision is durable and ``/readyz`` is 200."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from guard.app import create_app
from guard.settings import Settings, SpoolOnError
from guard.store import migrate
from tests.fakes import FakeScorer
from tests.serving import serve
from tests.test_faults_spool_full import fill
from tests.test_proxy import upstream_chat
from tests.test_spool_faults import tiny_disk

pytestmark = pytest.mark.integration

LONG = "口袋开线了，" * 400
"""Over 12 KB as a spool line (ASCII JSON), more than the slack a full tmpfs leaves in a segment's page."""
CHECK = {"question": LONG, "reply": "我们会为您补寄一条新的 [score=0.9]", "conversation_id": "c-1"}
ASK = LONG + " My pocket seam came open [score=0.9]"
CHAT = {"model": "m", "messages": [{"role": "user", "content": ASK}]}


def _metrics(base: str) -> dict[str, float]:
    out = {}
    for line in httpx2.get(base + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _stored(base: str, decision_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        got = httpx2.get(f"{base}/v1/decisions/{decision_id}", timeout=10)
        if got.status_code == 200:
            return dict(got.json())
        assert time.monotonic() < deadline, f"decision {decision_id} never reached SQL: {got.text}"
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["503", "hold", "memory"])
def test_each_spool_on_error_mode_through_the_check_api_and_the_proxy(
    mode: SpoolOnError, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'guard.db'}"  # SQL on another disk: it keeps working
    migrate(url)
    upstream_app = Starlette(routes=[Route("/v1/chat/completions", upstream_chat, methods=["POST"])])
    with tiny_disk(tmp_path, "1m") as disk, serve(upstream_app) as upstream:
        settings = Settings(
            database_url=url,
            spool_dir=str(disk / "spool"),
            spool_on_error=mode,
            ocr="off",
            upstream_url=upstream + "/v1",
        )
        with serve(create_app(settings, scorer=FakeScorer())) as base:
            before = httpx2.post(base + "/v1/guard", json=CHECK, timeout=10).json()
            assert (before["action"], before["durable"]) == ("send", True)
            filler = fill(disk)

            checked = httpx2.post(base + "/v1/guard", json=CHECK, timeout=10)
            proxied = httpx2.post(base + "/v1/chat/completions", json=CHAT, timeout=10)
            ready = httpx2.get(base + "/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["spool"]["state"] == "failing"
            assert "No space left" in ready.json()["spool"]["error"]
            seen = _metrics(base)
            assert seen["guard_spool_failing"] == 1 and seen["guard_spool_errors_total"] >= 2

            if mode == "503":
                for refused in (checked, proxied):
                    assert refused.status_code == 503, refused.text
                    assert refused.json()["error"]["code"] == "spool_unavailable"
                assert seen["guard_spool_refused_total"] == 2
            else:
                assert checked.status_code == 200 and proxied.status_code == 200, proxied.text
                body, guard = checked.json(), proxied.json()["guard"]
                content = proxied.json()["choices"][0]["message"]["content"]
                assert body["durable"] is False and guard["durable"] is False
                assert seen["guard_decisions_not_durable_total"] == 2
                if mode == "hold":  # held with the policy's on_error action (escalate) and its message
                    assert (body["action"], body["reason"], body["degraded"]) == (
                        "escalate",
                        "spool_unavailable",
                        True,
                    )
                    assert body["reply"] is None and body["holding_message"] and body["escalation_id"]
                    assert (guard["action"], guard["reason"]) == ("escalate", "spool_unavailable")
                    assert "seam" not in content and content, "the customer gets the holding message"
                    assert seen["guard_spool_refused_total"] == 2
                else:  # answered as decided
                    assert (body["action"], body["reason"], body["reply"]) == ("send", None, CHECK["reply"])
                    assert guard["action"] == "send" and "seam" in content
                    assert seen.get("guard_spool_refused_total", 0) == 0
                for decision_id in (body["decision_id"], guard["decision_id"]):
                    row = _stored(base, decision_id)  # recorded in SQL while the guard lives
                    assert (row["action"], row["durable"]) == (body["action"], False)
                    if mode == "hold":
                        assert row["state"] == "pending" and row["escalation_id"], "a supervisor sees it"

            filler.unlink()  # room again: durable again, ready again
            assert httpx2.get(base + "/readyz", timeout=10).status_code == 200
            after = httpx2.post(base + "/v1/guard", json=CHECK, timeout=10).json()
            assert (after["action"], after["durable"]) == ("send", True)
            assert _stored(base, after["decision_id"])["durable"] is True
