from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guard.policies import (
    ACTIONS,
    CAUTION,
    DEFAULT_BANDS,
    UNCERTAIN_ACTIONS,
    Band,
    PolicyError,
    audit_rate,
    audit_sampled,
    decide,
    default_policy,
    parse_policy,
    policy_document,
    validate,
)

POLICY = default_policy()


@pytest.mark.parametrize(
    ("score", "action", "band"),
    [
        (0.0, "escalate", "[0.0,0.4)"),
        (0.3999999, "escalate", "[0.0,0.4)"),
        (0.4, "review", "[0.4,0.5)"),
        (0.4999, "review", "[0.4,0.5)"),
        (0.5, "follow_up", "[0.5,0.6)"),
        (0.56, "follow_up", "[0.5,0.6)"),
        (0.6, "follow_up", "[0.6,0.7)"),
        (0.6999, "follow_up", "[0.6,0.7)"),
        (0.7, "send", "[0.7,1.0]"),
        (0.95, "send", "[0.7,1.0]"),
        (1.0, "send", "[0.7,1.0]"),
    ],
)
def test_default_policy_bands(score: float, action: str, band: str) -> None:
    verdict = decide(POLICY, score)
    assert (verdict.action, verdict.band, verdict.degraded) == (action, band, False)


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf, -0.01, 1.0000001, None])
def test_unusable_scores_take_on_error(score: float | None) -> None:
    verdict = decide(POLICY, score)
    assert verdict.action == "escalate"
    assert verdict.degraded
    assert verdict.band is None
    assert verdict.reason in {"scorer_unavailable", "invalid_score"}


def test_on_error_action_is_configurable() -> None:
    doc = policy_document(POLICY) | {"on_error": "review"}
    policy = parse_policy(doc)
    assert decide(policy, math.nan).action == "review"
    assert decide(policy, None).reason == "scorer_unavailable"


@given(st.floats(min_value=0.0, max_value=1.0, allow_nan=False))
def test_every_score_in_unit_interval_lands_in_exactly_one_band(score: float) -> None:
    containing = [
        b
        for i, b in enumerate(DEFAULT_BANDS)
        if b.lo <= score < b.hi or (i == len(DEFAULT_BANDS) - 1 and score == 1.0)
    ]
    assert len(containing) == 1
    verdict = decide(POLICY, score)
    assert verdict.action == containing[0].action
    assert not verdict.degraded


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_gives_an_action_never_an_exception(score: float) -> None:
    verdict = decide(POLICY, score)
    assert verdict.action in ACTIONS
    assert verdict.degraded == (not (math.isfinite(score) and 0.0 <= score <= 1.0))


@given(
    st.lists(st.floats(min_value=0.01, max_value=0.99, allow_nan=False), min_size=0, max_size=6, unique=True),
    st.lists(st.sampled_from(ACTIONS), min_size=7, max_size=7),
)
def test_any_partition_of_unit_interval_is_valid(cuts: list[float], actions: list[str]) -> None:
    edges = [0.0, *sorted(cuts), 1.0]
    pairs = itertools.pairwise(edges)
    bands = tuple(Band(lo, hi, actions[i]) for i, (lo, hi) in enumerate(pairs))  # type: ignore[arg-type]
    assert validate(bands) == []
    policy = parse_policy({"bands": [{"lo": b.lo, "hi": b.hi, "action": b.action} for b in bands]})
    for b in bands:
        assert decide(policy, b.lo).action == b.action


@pytest.mark.parametrize(
    ("bands", "expected"),
    [
        ([(0.0, 0.4, "escalate"), (0.5, 1.0, "send")], "gap: no band covers [0.4,0.5)"),
        ([(0.1, 1.0, "send")], "gap: no band covers [0.0,0.1)"),
        ([(0.0, 0.9, "send")], "gap: no band covers [0.9,1.0]"),
        (
            [(0.0, 0.6, "escalate"), (0.5, 1.0, "send")],
            "overlap: [0.0,0.6) and [0.5,1.0) both cover [0.5,0.6)",
        ),
        ([(0.0, 0.5, "escalate"), (0.5, 0.5, "review"), (0.5, 1.0, "send")], "band [0.5,0.5) is empty"),
        ([(0.0, 1.2, "send")], "a band ends at 1.2, above 1"),
        ([(-0.1, 1.0, "send")], "starts below 0"),
    ],
)
def test_validation_names_the_problem(bands: list[tuple[float, float, str]], expected: str) -> None:
    doc = {"bands": [{"lo": lo, "hi": hi, "action": a} for lo, hi, a in bands]}
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    assert any(expected in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"bands": [{"lo": 0, "hi": 1, "action": "shout"}]}, "unknown action 'shout'"),
        ({"bands": [{"lo": 0, "hi": 1}]}, "must have the keys lo, hi and action"),
        ({"bands": [{"lo": "0", "hi": 1, "action": "send"}]}, "must be numbers"),
        ({"bands": []}, "non-empty list"),
        ({"bands": [{"lo": 0, "hi": 1, "action": "send"}], "on_error": "ignore"}, "on_error 'ignore'"),
        ({"bands": [{"lo": 0, "hi": 1, "action": "send"}], "colour": "red"}, "unknown key 'colour'"),
        ({"bands": [{"lo": 0, "hi": 1, "action": "send"}], "templates": {"x.zh": "hi"}}, "unknown template"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_parse_rejects_malformed_documents(doc: object, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    assert expected in str(info.value)


def test_document_round_trip() -> None:
    policy = parse_policy(policy_document(POLICY) | {"templates": {"followup.en": "Logged: {{ issue }}."}})
    assert parse_policy(policy_document(policy)) == policy
    assert policy.bands == DEFAULT_BANDS


def test_bands_are_sorted_whatever_order_they_come_in() -> None:
    doc = {"bands": [{"lo": 0.5, "hi": 1.0, "action": "send"}, {"lo": 0.0, "hi": 0.5, "action": "escalate"}]}
    policy = parse_policy(doc)
    assert [b.lo for b in policy.bands] == [0.0, 0.5]
    assert decide(policy, 1.0).band == "[0.5,1.0]"


UNCERTAIN_TABLE = [
    # (uncertain_action, score, uncertain, action, reason)
    ("review", 0.95, True, "review", "issue_not_stated"),
    ("review", 0.65, True, "review", "issue_not_stated"),
    ("review", 0.45, True, "review", None),
    ("review", 0.10, True, "escalate", None),
    ("review", 0.95, False, "send", None),
    ("escalate", 0.95, True, "escalate", "issue_not_stated"),
    ("escalate", 0.45, True, "escalate", "issue_not_stated"),
    ("follow_up", 0.95, True, "follow_up", "issue_not_stated"),
    ("follow_up", 0.55, True, "follow_up", None),
    ("follow_up", 0.45, True, "review", None),
    ("review", None, True, "escalate", "scorer_unavailable"),
    ("review", math.nan, True, "escalate", "invalid_score"),
]


@pytest.mark.parametrize(("uncertain_action", "score", "uncertain", "action", "reason"), UNCERTAIN_TABLE)
def test_uncertain_cases_take_at_least_the_uncertain_action(
    uncertain_action: str, score: float | None, uncertain: bool, action: str, reason: str | None
) -> None:
    policy = parse_policy(policy_document(POLICY) | {"uncertain_action": uncertain_action})
    verdict = decide(policy, score, uncertain=uncertain)
    assert (verdict.action, verdict.reason, verdict.uncertain) == (action, reason, uncertain)


def test_the_default_policy_reviews_uncertain_cases() -> None:
    assert POLICY.uncertain_action == "review"
    assert parse_policy({"bands": [{"lo": 0, "hi": 1, "action": "send"}]}).uncertain_action == "review"
    assert decide(POLICY, 1.0, uncertain=True, uncertain_reason="photo_only").reason == "photo_only"


@given(st.floats(allow_nan=True, allow_infinity=True) | st.none(), st.sampled_from(UNCERTAIN_ACTIONS))
def test_an_uncertain_case_is_never_sent(score: float | None, uncertain_action: str) -> None:
    policy = parse_policy(policy_document(POLICY) | {"uncertain_action": uncertain_action})
    uncertain, certain = decide(policy, score, uncertain=True), decide(policy, score)
    assert uncertain.action != "send"
    # Uncertainty only ever makes the action more cautious, and never past what it asks for.
    assert CAUTION.index(uncertain.action) >= CAUTION.index(certain.action)
    assert uncertain.action in (certain.action, uncertain_action)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("send", "never sent as it is"), ("ignore", "uncertain_action 'ignore'"), (["review"], "not one of")],
)
def test_uncertain_action_is_validated(value: object, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(policy_document(POLICY) | {"uncertain_action": value})
    assert expected in str(info.value)


def test_uncertain_action_round_trips_and_old_documents_get_the_default() -> None:
    policy = parse_policy(policy_document(POLICY) | {"uncertain_action": "escalate"})
    assert policy_document(policy)["uncertain_action"] == "escalate"
    assert parse_policy(policy_document(policy)) == policy
    old = {k: v for k, v in policy_document(POLICY).items() if k != "uncertain_action"}
    assert parse_policy(old).uncertain_action == "review"


# Audit sampling -------------------------------------------------------------------------------


def test_audit_sample_defaults_by_action() -> None:
    rates = {b.action: b.audit_rate for b in POLICY.bands}
    assert rates == {"send": 0.02, "follow_up": 0.05, "review": 0.0, "escalate": 0.0}
    assert "audit_sample" not in str(policy_document(POLICY))  # the default is not written out


def test_audit_sample_round_trips_and_is_validated() -> None:
    doc = policy_document(POLICY)
    doc["bands"][-1]["audit_sample"] = 0.5
    policy = parse_policy(doc)
    assert policy.bands[-1].audit_sample == 0.5 and policy.bands[-1].audit_rate == 0.5
    assert parse_policy(policy_document(policy)) == policy
    for bad, expected in (
        (1.5, "must be a share between 0 and 1"),
        (-0.1, "must be a share between 0 and 1"),
        ("2%", "audit_sample must be a number"),
        (True, "audit_sample must be a number"),
    ):
        doc["bands"][-1]["audit_sample"] = bad
        with pytest.raises(PolicyError, match=expected):
            parse_policy(doc)
    doc["bands"][-1]["audit_sample"] = 0.0
    doc["bands"][0]["audit_sample"] = 0.1  # the escalate band
    with pytest.raises(PolicyError, match=r"\[0.0,0.4\): audit_sample must be 0 for a escalate band"):
        parse_policy(doc)


def test_audit_sampling_is_deterministic_and_near_its_rate() -> None:
    ids = [f"d{i:06d}" for i in range(20_000)]
    picked = [i for i in ids if audit_sampled(i, 0.05)]
    assert picked == [i for i in ids if audit_sampled(i, 0.05)]
    assert 0.045 < len(picked) / len(ids) < 0.055
    assert set(i for i in ids if audit_sampled(i, 0.02)) <= set(picked)  # a smaller sample is inside
    assert not any(audit_sampled(i, 0.0) for i in ids[:100]) and all(audit_sampled(i, 1.0) for i in ids[:100])


def test_audit_rate_of_a_verdict() -> None:
    doc = policy_document(POLICY)
    doc["bands"][-1]["audit_sample"] = 0.3
    policy = parse_policy(doc)
    assert audit_rate(policy, decide(policy, 0.9)) == 0.3
    assert audit_rate(policy, decide(policy, 0.65)) == 0.05
    assert audit_rate(policy, decide(policy, 0.45)) == 0.0
    assert audit_rate(policy, decide(policy, None)) == 0.0  # degraded: escalated
    uncertain = decide(
        policy.__class__(**{**policy.__dict__, "uncertain_action": "follow_up"}), 0.9, uncertain=True
    )
    assert uncertain.action == "follow_up" and audit_rate(policy, uncertain) == 0.05
