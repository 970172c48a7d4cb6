"""Pure parts of the admin pages: replay under a draft policy, agreement, percentiles, chart geometry,
the policy form and cookie signing. Table-driven."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from guard.admin import auth, charts, traffic
from guard.admin.forms import PolicyForm
from guard.admin.records import ReplayRow, TrafficRow
from guard.followups import Messages
from guard.policies import Band, Policy, default_policy
from guard.tables import utcnow


@pytest.mark.parametrize(
    ("action", "outcome", "expected"),
    [
        ("escalate", "taken_over", True),
        ("review", "edited", True),
        ("review", "approved", False),
        ("send", "approved", True),
        ("follow_up", "edited", False),
        ("escalate", "dismissed", None),
        ("send", None, None),
        ("review", "pending", None),
    ],
)
def test_agreement_with_a_supervisors_outcome(
    action: str, outcome: str | None, expected: bool | None
) -> None:
    assert traffic.agrees(action, outcome) is expected


def test_replay_decides_from_recorded_scores_and_degraded_takes_on_error() -> None:
    rows = [
        ReplayRow(score=0.45, action="review", outcome="approved"),
        ReplayRow(score=0.1, action="escalate", outcome="taken_over"),
        ReplayRow(score=None, action="escalate", outcome=None),
        ReplayRow(score=0.95, action="send", outcome=None),
    ]
    draft = Policy("default", (Band(0.0, 0.4, "escalate"), Band(0.4, 1.0, "send")), on_error="review")
    result = traffic.replay(rows, draft)
    assert result.total == 4 and result.changed == 2
    assert result.new_counts == {"send": 2, "follow_up": 0, "review": 1, "escalate": 1}
    assert result.old_counts == {"send": 1, "follow_up": 0, "review": 1, "escalate": 2}
    assert sorted(result.transitions) == [("escalate", "review", 1), ("review", "send", 1)]
    assert (result.old_agreement.labelled, result.old_agreement.agreed) == (2, 1)
    assert (result.new_agreement.labelled, result.new_agreement.agreed) == (2, 2)
    assert sorted(result.scores) == [0.1, 0.45, 0.95]


@pytest.mark.parametrize("uncertain_action", ["follow_up", "review", "escalate"])
@pytest.mark.parametrize("score", [0.0, 0.2, 0.39, 0.4, 0.45, 0.5, 0.65, 0.7, 0.95, 1.0, None])
def test_replay_keeps_an_uncertain_decision_uncertain_under_the_drafts_action(
    uncertain_action: str, score: float | None
) -> None:
    draft = dataclasses.replace(default_policy(), uncertain_action=uncertain_action)

    def replayed(reason: str | None) -> str:
        row = ReplayRow(score=score, action="review", outcome=None, uncertain_reason=reason)
        (action,) = [a for a, n in traffic.replay([row], draft).new_counts.items() if n]
        return action

    certain, uncertain = replayed(None), replayed("issue_not_stated")
    caution = ("send", "follow_up", "review", "escalate")
    assert uncertain != "send"
    assert caution.index(uncertain) == max(caution.index(certain), caution.index(uncertain_action)) or (
        score is None and uncertain == draft.on_error
    )


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([5.0], 95, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([float(i) for i in range(101)], 95, 95.0),
    ],
)
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    assert traffic.percentile(values, q) == expected


def test_dashboard_buckets_and_rates() -> None:
    now = utcnow()
    rows = [
        TrafficRow(
            created_at=now - timedelta(minutes=m),
            action=a,
            score=s,
            cached=c,
            latency_ms=10.0 * (i + 1),
            timings_ms={"score": 5.0 * (i + 1)},
        )
        for i, (m, a, s, c) in enumerate(
            [(1, "send", 0.9, False), (2, "send", 0.8, True), (30, "escalate", 0.1, False)]
        )
    ]
    d = traffic.dashboard(rows, now, timedelta(hours=1))
    assert d.total == 3 and d.per_action["send"] == 2 and d.per_action["escalate"] == 1
    assert d.cache_hit_rate == pytest.approx(1 / 3)
    assert d.scorer_p50 == 10.0, "cached decisions do not count toward scorer latency"
    assert sum(sum(c.values()) for _, c in d.buckets) == 3 and len(d.buckets) == 12


@pytest.mark.parametrize(
    ("score", "band", "marked"),
    [(0.45, "[0.4,0.5)", "a-review marked"), (0.99, "[0.7,1.0]", "a-send marked")],
)
def test_score_bar_marks_the_decisions_band(score: float, band: str, marked: str) -> None:
    bar = charts.score_bar(default_policy(), score, band)
    assert [r.css for r in bar.rects if "marked" in r.css] == [marked]
    assert [r.css.split()[0] for r in bar.rects] == [
        "a-escalate",
        "a-review",
        "a-follow_up",
        "a-follow_up",
        "a-send",
    ]
    (marker,) = bar.lines
    assert marker.x1 == pytest.approx(10 + score * 580)


def test_histogram_counts_and_edges() -> None:
    h = charts.histogram([0.0, 0.44, 0.45, 1.0], bins=10, old_edges=[0.4, 0.5], new_edges=[0.44])
    titles = [r.title for r in h.rects]
    assert titles[4] == "[0.4,0.5): 2" and titles[9] == "[0.9,1): 1" and titles[0] == "[0,0.1): 1"
    assert [ln.css for ln in h.lines if ln.css.startswith("edge")] == ["edge-old", "edge-old", "edge-new"]


def test_policy_form_round_trip_and_problems() -> None:
    messages = Messages()
    policy = dataclasses.replace(default_policy(), uncertain_action="escalate")
    form = PolicyForm.from_policy("default", policy)
    assert form.policy == policy and form.uncertain_action == "escalate"
    data = {
        "on_error": form.on_error,
        "uncertain_action": form.uncertain_action,
        "instruction": form.instruction,
    }
    for i, (lo, hi, action) in enumerate(form.bands):
        data |= {f"band_lo_{i}": lo, f"band_hi_{i}": hi, f"band_action_{i}": action}
    parsed = PolicyForm.from_form("default", data, messages)
    assert parsed.problems == [] and parsed.policy == policy
    data["band_lo_1"] = "0.41"
    broken = PolicyForm.from_form("default", data, messages)
    assert broken.policy is None and any("gap" in p for p in broken.problems)


def test_signed_values_cannot_be_forged_or_reused_for_another_purpose() -> None:
    signer = auth.Signer(b"k1")
    signed = signer.sign("session", "token")
    assert signer.unsign("session", signed) == "token"
    assert signer.unsign("login", signed) is None
    assert auth.Signer(b"k2").unsign("session", signed) is None
    assert signer.unsign("session", "token.AAAA") is None and signer.unsign("session", None) is None
