"""Chart geometry for the server-rendered SVG charts. Pure: numbers in, shapes out.

The templates in templates/admin/_charts.html draw these shapes; colours come from CSS classes
(``a-send``, ``a-follow_up``, ``a-review``, ``a-escalate``), so no style is inlined.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from guard.policies import ACTIONS, Policy

ACTION_LABELS = {"send": "send", "follow_up": "follow-up", "review": "review", "escalate": "escalate"}


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    css: str
    title: str


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    css: str
    title: str = ""


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"
    css: str = "tick"


@dataclass(frozen=True)
class Chart:
    width: float
    height: float
    title: str
    rects: tuple[Rect, ...] = ()
    lines: tuple[Line, ...] = ()
    labels: tuple[Label, ...] = ()
    legend: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    """(css class, text) pairs."""


def _fmt(x: float) -> str:
    return f"{x:g}"


def score_bar(
    policy: Policy, score: float | None, band: str | None, *, width: float = 600, height: float = 70
) -> Chart:
    """The 0..1 bar with the policy's bands in their action colours, the decision's band outlined
    and its score marked."""
    pad, top, bar_h = 10.0, 8.0, 28.0
    inner = width - 2 * pad
    rects: list[Rect] = []
    lines: list[Line] = []
    labels: list[Label] = []
    last = len(policy.bands) - 1
    for i, b in enumerate(policy.bands):
        label = b.label(top=i == last)
        marked = band is not None and label == band
        css = f"a-{b.action}" + (" marked" if marked else "")
        rects.append(
            Rect(
                pad + b.lo * inner,
                top,
                (b.hi - b.lo) * inner,
                bar_h,
                css,
                f"{label} {ACTION_LABELS[b.action]}",
            )
        )
        labels.append(Label(pad + b.lo * inner, top + bar_h + 14, _fmt(b.lo), "middle"))
    labels.append(Label(pad + inner, top + bar_h + 14, "1", "middle"))
    if score is not None and math.isfinite(score):
        x = pad + min(max(score, 0.0), 1.0) * inner
        lines.append(Line(x, top - 6, x, top + bar_h + 4, "marker", f"score {score:.3f}"))
        # Anchored so the label stays inside the chart near 0 and 1 ("score 0.025", not "core 0.025").
        anchor = "start" if x < pad + 50 else "end" if x > pad + inner - 50 else "middle"
        labels.append(Label(x, height - 2, f"score {score:.3f}", anchor, "marker-label"))
    legend = tuple((f"a-{a}", ACTION_LABELS[a]) for a in ACTIONS)
    return Chart(width, height, "score and policy bands", tuple(rects), tuple(lines), tuple(labels), legend)


def histogram(
    scores: Sequence[float],
    *,
    bins: int = 20,
    old_edges: Sequence[float] = (),
    new_edges: Sequence[float] = (),
    width: float = 600,
    height: float = 180,
) -> Chart:
    """Score histogram over [0, 1] with the old (dashed) and new (solid) band edges drawn on it."""
    pad_l, pad_r, pad_t, pad_b = 34.0, 10.0, 10.0, 22.0
    inner_w, inner_h = width - pad_l - pad_r, height - pad_t - pad_b
    counts = [0] * bins
    for s in scores:
        if s is None or not math.isfinite(s):
            continue
        counts[min(int(max(s, 0.0) * bins), bins - 1)] += 1
    peak = max(counts, default=0) or 1
    bw = inner_w / bins
    rects = tuple(
        Rect(
            pad_l + i * bw + 1,
            pad_t + inner_h - c / peak * inner_h,
            bw - 2,
            c / peak * inner_h,
            "bar",
            f"[{i / bins:g},{(i + 1) / bins:g}): {c}",
        )
        for i, c in enumerate(counts)
    )
    lines: list[Line] = [Line(pad_l, pad_t + inner_h, pad_l + inner_w, pad_t + inner_h, "axis")]
    for css, edges in (("edge-old", old_edges), ("edge-new", new_edges)):
        for e in edges:
            if 0.0 < e < 1.0:
                x = pad_l + e * inner_w
                lines.append(Line(x, pad_t, x, pad_t + inner_h, css, f"edge {e:g}"))
    labels = [Label(pad_l + t * inner_w, height - 6, _fmt(t)) for t in (0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    labels.append(Label(pad_l - 4, pad_t + 8, str(peak if any(counts) else 0), "end"))
    labels.append(Label(pad_l - 4, pad_t + inner_h, "0", "end"))
    legend: tuple[tuple[str, str], ...] = ()
    if old_edges or new_edges:
        legend = (("edge-old", "published edges"), ("edge-new", "draft edges"))
    return Chart(width, height, "score distribution", rects, tuple(lines), tuple(labels), legend)


def stacked_bars(
    buckets: Sequence[tuple[str, Mapping[str, int]]], *, width: float = 600, height: float = 200
) -> Chart:
    """Decisions per action over time: one stacked bar per (label, counts by action)."""
    pad_l, pad_r, pad_t, pad_b = 34.0, 10.0, 10.0, 22.0
    inner_w, inner_h = width - pad_l - pad_r, height - pad_t - pad_b
    n = max(len(buckets), 1)
    peak = max((sum(c.values()) for _, c in buckets), default=0) or 1
    bw = inner_w / n
    rects: list[Rect] = []
    labels: list[Label] = []
    step = max(1, math.ceil(n / 8))
    for i, (name, counts) in enumerate(buckets):
        y = pad_t + inner_h
        for action in ("escalate", "review", "follow_up", "send"):
            c = counts.get(action, 0)
            if not c:
                continue
            h = c / peak * inner_h
            y -= h
            rects.append(
                Rect(pad_l + i * bw + 1, y, max(bw - 2, 1), h, f"a-{action}", f"{name}: {c} {action}")
            )
        if i % step == 0:
            labels.append(Label(pad_l + i * bw + bw / 2, height - 6, name))
    labels.append(Label(pad_l - 4, pad_t + 8, str(peak), "end"))
    labels.append(Label(pad_l - 4, pad_t + inner_h, "0", "end"))
    lines = (Line(pad_l, pad_t + inner_h, pad_l + inner_w, pad_t + inner_h, "axis"),)
    legend = tuple((f"a-{a}", ACTION_LABELS[a]) for a in ACTIONS)
    return Chart(width, height, "decisions per action", tuple(rects), lines, tuple(labels), legend)


def paired_bars(
    old: Mapping[str, int], new: Mapping[str, int], *, width: float = 600, height: float = 170
) -> Chart:
    """Counts per action, published policy (light) next to the draft (full colour)."""
    pad_l, pad_r, pad_t, pad_b = 34.0, 10.0, 16.0, 22.0
    inner_w, inner_h = width - pad_l - pad_r, height - pad_t - pad_b
    peak = max([*old.values(), *new.values(), 0]) or 1
    group = inner_w / len(ACTIONS)
    bw = group / 3
    rects: list[Rect] = []
    labels: list[Label] = []
    for i, action in enumerate(ACTIONS):
        for j, (which, counts) in enumerate((("published", old), ("draft", new))):
            c = counts.get(action, 0)
            h = c / peak * inner_h
            x = pad_l + i * group + bw * (0.5 + j)
            css = f"a-{action}" + (" old" if which == "published" else "")
            rects.append(Rect(x, pad_t + inner_h - h, bw - 2, h, css, f"{action} {which}: {c}"))
            labels.append(Label(x + bw / 2 - 1, pad_t + inner_h - h - 3, str(c), "middle", "count"))
        labels.append(Label(pad_l + i * group + group / 2, height - 6, ACTION_LABELS[action]))
    lines = (Line(pad_l, pad_t + inner_h, pad_l + inner_w, pad_t + inner_h, "axis"),)
    legend = (("old", "published"), ("new", "draft"))
    return Chart(
        width, height, "decisions per action: published vs draft", tuple(rects), lines, tuple(labels), legend
    )


def rate_per_day(
    days: Sequence[tuple[str, float | None, tuple[float, float] | None, str]],
    *,
    title: str,
    width: float = 600,
    height: float = 180,
) -> Chart:
    """A share per day: one bar per (day, share, 95% interval, tooltip), the interval as a whisker.
    A day without a measurement (share None) has no bar."""
    pad_l, pad_r, pad_t, pad_b = 44.0, 10.0, 12.0, 22.0
    inner_w, inner_h = width - pad_l - pad_r, height - pad_t - pad_b
    n = max(len(days), 1)
    tops = [iv[1] for _, s, iv, _ in days if s is not None and iv is not None]
    tops += [s for _, s, _, _ in days if s is not None]
    peak = max(tops, default=0.0) or 0.01
    peak = math.ceil(peak * 100) / 100 if peak > 0.01 else 0.01
    bw = inner_w / max(n, 14)  # a few days do not make bars half the chart wide
    rects: list[Rect] = []
    lines: list[Line] = [Line(pad_l, pad_t + inner_h, pad_l + inner_w, pad_t + inner_h, "axis")]
    labels: list[Label] = []
    step = max(1, math.ceil(n / 8))

    def y(v: float) -> float:
        return pad_t + inner_h - min(v, peak) / peak * inner_h

    for i, (day, share, bounds, tip) in enumerate(days):
        x = pad_l + i * bw
        if share is not None:
            rects.append(
                Rect(x + bw * 0.2, y(share), max(bw * 0.6, 1), pad_t + inner_h - y(share), "a-escalate", tip)
            )
            if bounds is not None:
                mid = x + bw / 2
                lines.append(Line(mid, y(bounds[0]), mid, y(bounds[1]), "interval", f"95% interval: {tip}"))
        if i % step == 0:
            labels.append(Label(x + bw / 2, height - 6, day[5:]))
    labels.append(Label(pad_l - 4, pad_t + 8, f"{peak * 100:g}%", "end"))
    labels.append(Label(pad_l - 4, pad_t + inner_h, "0%", "end"))
    return Chart(width, height, title, tuple(rects), tuple(lines), tuple(labels))


def band_edges(policy: Policy) -> list[float]:
    return sorted({b.lo for b in policy.bands} - {0.0})


def mini_bar(policy: Policy, score: float | None, *, width: float = 160, height: float = 16) -> Chart:
    """A small 0..1 bar for one row of a ranking: the policy's bands faint, the band the score falls
    in at full colour, and the score marked."""
    value = score if score is not None and math.isfinite(score) and 0.0 <= score <= 1.0 else None
    rects: list[Rect] = []
    last = len(policy.bands) - 1
    for i, b in enumerate(policy.bands):
        hit = value is not None and (b.lo <= value < b.hi or (i == last and value == b.hi))
        css = f"a-{b.action}" + ("" if hit else " old")
        rects.append(Rect(b.lo * width, 2, (b.hi - b.lo) * width, height - 4, css, b.label(top=i == last)))
    if value is None:
        return Chart(width, height, "no score", tuple(rects))
    line = Line(value * width, 0, value * width, height, "marker", f"score {value:.3f}")
    return Chart(width, height, f"score {value:.3f}", tuple(rects), (line,))
