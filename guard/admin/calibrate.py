"""Fitting a channel's score map from its labels, for ``guard calibrate`` and the policy owners'
button (blocking: SQL and a small Newton fit). The fit itself is ``guard.calibration.fit_channel``."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from guard.admin.queries import AdminQueries
from guard.admin.records import CalibrationRow
from guard.calibration import ChannelMap, Fit, collect_labels, fit_channel, map_in_scorer_version
from guard.pipeline import decide_case
from guard.policies import ACTIONS, Policy
from guard.store import Store


def fit_from_labels(
    store: Store, queries: AdminQueries, channel: str, actor: str, *, save: bool = True
) -> tuple[Fit, int | None]:
    """Fit ``channel``'s map on every label it has; keep it as the channel's draft when it fitted and
    ``save``. Returns the fit (its report says how many more labels it needs when it did not) and the
    draft's id."""
    policy, _own = store.policy_in_force(channel)
    maps = store.score_maps(channel)
    current = store.active_score_map(channel)
    labels, skipped = collect_labels(queries.outcome_rows(channel), maps, channel)
    fit = fit_channel(channel, labels, policy, current, skipped=skipped)
    draft_id = None
    if save and fit.document is not None:
        draft_id = queries.save_score_map_draft(channel, fit.document, fit.report.to_json(), actor)
    return fit, draft_id


@dataclass(frozen=True)
class MapPreview:
    """Logged decisions of a channel decided again under the policy in force, with the map in force
    (``old``) and with the draft (``new``); no re-scoring."""

    total: int
    old_counts: dict[str, int]
    new_counts: dict[str, int]
    transitions: list[tuple[str, str, int]]
    """(action with the map in force, action with the draft, decisions), most first."""
    skipped: int
    scores: list[float]
    """The draft's scores (for the histogram)."""

    @property
    def changed(self) -> int:
        return sum(n for _, _, n in self.transitions)


def preview_map(
    rows: list[CalibrationRow],
    maps: dict[int, ChannelMap],
    current: ChannelMap | None,
    draft: ChannelMap | None,
    policy: Policy,
) -> MapPreview:
    """Each decision's score taken back to the scorer's own (through the map it was scored under),
    then mapped with ``current`` and with ``draft`` (None: no map) and decided under ``policy``."""
    old: Counter[str] = Counter()
    new: Counter[str] = Counter()
    moves: Counter[tuple[str, str]] = Counter()
    skipped = 0
    scores: list[float] = []
    for row in rows:
        raw = row.score
        if raw is not None:
            if not math.isfinite(raw):
                raw = None
            else:
                named = map_in_scorer_version(row.scorer_version)
                if named is not None:
                    used = maps.get(named[1])
                    if used is None:
                        skipped += 1
                        continue
                    raw = used.invert(raw)
        before = None if raw is None else current.apply(raw) if current is not None else raw
        after = None if raw is None else draft.apply(raw) if draft is not None else raw
        a = decide_case(policy, before, row.uncertain_reason).action
        b = decide_case(policy, after, row.uncertain_reason).action
        old[a] += 1
        new[b] += 1
        if a != b:
            moves[(a, b)] += 1
        if after is not None:
            scores.append(after)
    return MapPreview(
        total=sum(old.values()),
        old_counts={a: old.get(a, 0) for a in ACTIONS},
        new_counts={a: new.get(a, 0) for a in ACTIONS},
        transitions=[(a, b, n) for (a, b), n in moves.most_common()],
        skipped=skipped,
        scores=scores,
    )
