"""Pure parts of the admin pages: replay under a draft policy, agreement, percentiles, chart geometry,
the policy form and cookie signing. Table-driven."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from guard.admin import auth, charts, diffs, traffic
from guard.admin.diffs import Change
from guard.admin.forms import PolicyForm, band_op
from guard.admin.records import ReplayRow, TrafficRow
from guard.admin.views.policies import move_summary
from guard.followups import Messages
from guard.policies import Band, Policy, default_policy, policy_document
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


# The bands table: rows as the user sees them, and the Split / Merge / Remove buttons -------------------

ROWS = [("0", "0.4", "escalate"), ("0.4", "0.5", "review"), ("0.5", "0.7", "follow_up"), ("0.7", "1", "send")]


def form_data(rows: list[tuple[str, str, str]], **extra: str) -> dict[str, str]:
    data = {"on_error": "escalate", "uncertain_action": "review", "instruction": "Judge.", **extra}
    for i, (lo, hi, action) in enumerate(rows):
        data |= {f"band_lo_{i}": lo, f"band_hi_{i}": hi, f"band_action_{i}": action}
    return data


def edited(op: str, row: int, rows: list[tuple[str, str, str]] = ROWS) -> tuple[PolicyForm, str]:
    form = PolicyForm.from_form("default", form_data(rows), Messages())
    message = form.edit_bands(op, row)
    form.validate(Messages())
    return form, message


@pytest.mark.parametrize(
    ("op", "row", "rows", "words"),
    [
        (
            "remove",
            1,
            [("0", "0.5", "escalate"), ("0.5", "0.7", "follow_up"), ("0.7", "1", "send")],
            "band 1 below it now reaches 0.5",
        ),
        (
            "remove",
            0,
            [("0", "0.5", "review"), ("0.5", "0.7", "follow_up"), ("0.7", "1", "send")],
            "the next band now starts at 0",
        ),
        (
            "merge",
            1,
            [("0", "0.4", "escalate"), ("0.4", "0.7", "review"), ("0.7", "1", "send")],
            "Bands 2 and 3 are merged",
        ),
        (
            "split",
            2,
            [
                ("0", "0.4", "escalate"),
                ("0.4", "0.5", "review"),
                ("0.5", "0.6", "follow_up"),
                ("0.6", "0.7", "follow_up"),
                ("0.7", "1", "send"),
            ],
            "split at 0.6 into bands 3 and 4",
        ),
    ],
)
def test_band_buttons_keep_zero_to_one_covered(
    op: str, row: int, rows: list[tuple[str, str, str]], words: str
) -> None:
    form, message = edited(op, row)
    assert form.rows == rows and words in message
    assert form.problems == [] and form.policy is not None, "the result is a valid policy"


@pytest.mark.parametrize(
    ("op", "row", "rows", "words"),
    [
        ("merge", 3, ROWS, "the last band"),
        ("remove", 0, [("0", "1", "send")], "The only band cannot be removed"),
        ("split", 1, [("0", "x", "escalate"), ("x", "1", "send")], "was not split"),
        ("remove", 7, ROWS, "There is no such band"),
    ],
)
def test_band_buttons_that_cannot_apply_say_why_and_change_nothing(
    op: str, row: int, rows: list[tuple[str, str, str]], words: str
) -> None:
    form, message = edited(op, row, rows)
    assert words in message and form.rows == rows


def test_band_op_values() -> None:
    assert band_op("split:2") == ("split", 2) and band_op("remove:0") == ("remove", 0)
    assert band_op("publish") is None and band_op("split:x") is None and band_op("drop:1") is None
    assert band_op("merge:99") is None


def test_an_emptied_row_stays_in_place_and_problems_name_the_rows_as_shown() -> None:
    """The issue's case: row 2 cleared the documented way, and row 3's lower edge blanked too (by the
    old script): the problem names row 3, the row on the page, not "band #2" of the rows left."""
    rows = [("0", "0.4", "escalate"), ("", "", "review"), ("", "0.7", "follow_up"), ("0.7", "1", "send")]
    form = PolicyForm.from_form("default", form_data(rows), Messages())
    assert form.rows == rows and form.bands == [rows[0], rows[2], rows[3]]
    assert form.problems == ["row 3: the lower edge is empty"] and form.bad_rows == {2}
    fixed = [rows[0], ("", "", "review"), ("0.4", "0.7", "follow_up"), rows[3]]
    ok = PolicyForm.from_form("default", form_data(fixed), Messages())
    assert ok.problems == [] and ok.policy is not None and len(ok.policy.bands) == 3


@pytest.mark.parametrize(
    ("rows", "problem", "bad"),
    [
        (
            [("0", "0.4", "escalate"), ("0.5", "1", "send")],
            "gap: no band covers [0.4,0.5): row 1 ends at 0.4 but row 2 starts at 0.5",
            {0, 1},
        ),
        (
            [("0", "0.6", "escalate"), ("0.5", "1", "send")],
            "overlap: row 1 ends at 0.6 but row 2 starts at 0.5, so both cover [0.5,0.6)",
            {0, 1},
        ),
        (
            [("0.1", "1", "send")],
            "gap: no band covers [0.0,0.1): row 1, the first band, must start at 0",
            {0},
        ),
        ([("0", "0.9", "send")], "gap: no band covers [0.9,1.0]: row 1, the last band, must end at 1", {0}),
        (
            [("0", "0.5", "send"), ("0.5", "0.5", "send"), ("0.5", "1", "send")],
            "row 2: band [0.5,0.5) is empty",
            {1},
        ),
        ([("0", "1", "shout")], "row 1: unknown action 'shout'", {0}),
        ([("0", "x", "send")], "row 1: the upper edge 'x' is not a number", {0}),
    ],
)
def test_band_problems_name_the_row(rows: list[tuple[str, str, str]], problem: str, bad: set[int]) -> None:
    form = PolicyForm.from_form("default", form_data(rows), Messages())
    assert form.policy is None and any(p.startswith(problem) for p in form.problems), form.problems
    assert form.bad_rows == bad


# Readable differences ------------------------------------------------------------------------------


def doc(bands: list[tuple[float, float, str]], **extra: object) -> dict[str, object]:
    policy = Policy("default", tuple(Band(lo, hi, a) for lo, hi, a in bands))  # type: ignore[arg-type]
    return {"version": 1, **policy_document(policy), **extra}


DEFAULT = [
    (0.0, 0.4, "escalate"),
    (0.4, 0.5, "review"),
    (0.5, 0.6, "follow_up"),
    (0.6, 0.7, "follow_up"),
    (0.7, 1.0, "send"),
]


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (  # the review band now ends at 0.44: scores in [0.44,0.5) move to follow-up
            [(0.0, 0.4, "escalate"), (0.4, 0.44, "review"), (0.44, 0.7, "follow_up"), (0.7, 1.0, "send")],
            [Change("scores [0.44,0.5)", "review", "follow-up")],
        ),
        (  # one edge moved down: two stretches change, each named once
            [(0.0, 0.5, "escalate"), (0.5, 0.9, "follow_up"), (0.9, 1.0, "send")],
            [
                Change("scores [0.4,0.5)", "review", "escalate"),
                Change("scores [0.7,0.9)", "send", "follow-up"),
            ],
        ),
        (  # merged without changing any score's action
            [(0.0, 0.4, "escalate"), (0.4, 0.5, "review"), (0.5, 0.7, "follow_up"), (0.7, 1.0, "send")],
            [
                Change(
                    "bands (same action for every score)",
                    "[0.0,0.4) escalate, [0.4,0.5) review, [0.5,0.6) follow-up, [0.6,0.7) follow-up, "
                    "[0.7,1.0] send",
                    "[0.0,0.4) escalate, [0.4,0.5) review, [0.5,0.7) follow-up, [0.7,1.0] send",
                ),
            ],
        ),
        (
            [(0.0, 1.0, "send")],
            [
                Change("scores [0.0,0.4)", "escalate", "send"),
                Change("scores [0.4,0.5)", "review", "send"),
                Change("scores [0.5,0.7)", "follow-up", "send"),
            ],
        ),
    ],
)
def test_policy_changes_say_which_scores_get_which_action(
    after: list[tuple[float, float, str]], expected: list[Change]
) -> None:
    assert diffs.changes(doc(DEFAULT), doc(after, version=2)) == expected


def test_policy_changes_of_the_other_fields_and_templates() -> None:
    old = doc(DEFAULT)
    new = {**doc(DEFAULT, version=2), "on_error": "review", "instruction": "Be strict."}
    instruction = str(old["instruction"])
    new["templates"] = {"followup.en": "We logged {{ issue or 'it' }}."}
    assert diffs.changes(old, new) == [
        Change("when the score is unusable", "escalate", "review"),
        Change(
            "scoring instruction",
            instruction,
            "Be strict.",
        ),
        Change("template followup.en", "(the built-in text)", "We logged {{ issue or 'it' }}."),
    ]
    assert diffs.changes(old, {**old, "version": 7}) == [], "a new version number alone is no change"
    first = diffs.changes(None, doc([(0.0, 1.0, "send")]))  # a channel's first version: all of it
    assert first[:3] == [
        Change("scores [0.0,1.0]", None, "send"),
        Change("when the score is unusable", None, "escalate"),
        Change("when the guard cannot judge a case", None, "review"),
    ]


def test_changes_of_users_and_cases_key_by_key() -> None:
    assert diffs.changes(
        {"role": "supervisor", "active": True}, {"role": "admin", "active": False, "password": "changed"}
    ) == [
        Change("role", "supervisor", "admin"),
        Change("active", "yes", "no"),
        Change("password", None, "changed"),
    ]
    assert diffs.changes(
        {"state": "pending"}, {"state": "edited", "final_reply": "已为您修补", "note": None}
    ) == [Change("state", "pending", "edited"), Change("final_reply", None, "已为您修补")]
    assert diffs.changes(None, {"role": "supervisor", "active": True}) == [
        Change("role", None, "supervisor"),
        Change("active", None, "yes"),
    ]


def test_move_summary_reads_like_the_issue() -> None:
    rows = [ReplayRow(0.45, "review")] * 9 + [ReplayRow(0.8, "send")] * 2 + [ReplayRow(0.1, "escalate")]
    draft = Policy("default", (Band(0.0, 0.5, "escalate"), Band(0.5, 1.0, "send")))
    assert move_summary(traffic.replay(rows, draft), "24h") == (
        "9 cases move from review to escalate (of 12 decisions logged)."
    )
    two = Policy("default", (Band(0.0, 0.5, "escalate"), Band(0.5, 0.9, "follow_up"), Band(0.9, 1.0, "send")))
    assert move_summary(traffic.replay(rows, two), "24h") == (
        "9 cases move from review to escalate; 2 from send to follow-up (of 12 decisions logged)."
    )
    assert move_summary(traffic.replay(rows[:1], Policy("d", (Band(0.0, 1.0, "review"),))), "1h") == (
        "none of the 1 decisions logged would be decided differently."
    )
    assert move_summary(traffic.replay([], draft), "1h") == (
        "no decision was logged in the last 1h, so nothing can be compared."
    )
