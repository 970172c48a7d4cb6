"""The fitted issue-kind model: a multinomial logistic regression over sparse text features.

Features are the issue cues found (guard.issues.lexicon), character bigrams/trigrams of Chinese
text and word unigrams/bigrams of English text, question and photo text apart. Weights live in
``guard/issues/model.json`` (refit it with ``python -m guard.issues.eval fit``); fitting is plain
full-batch gradient descent from zero, so the same cases always give the same file.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from guard.issues.lexicon import KINDS, POINTERS, cue_matches

MODEL_PATH = Path(__file__).resolve().parent / "model.json"
MODEL_FORMAT = 1

_WORD = re.compile(r"[a-z0-9$¥￥]+(?:['.][a-z0-9]+)*")
_HAN_RUN = re.compile(r"[\u3400-\u9fffA-Za-z0-9¥￥]+")
_MAX_FEATURE_CHARS = 600
NGRAM_VALUE = 0.3
SPECIFIC: Mapping[str, tuple[str, ...]] = {
    "late_delivery": ("not_received", "refund_delay"),
    "not_working": ("broken_zipper_button",),
    "wrong_charge": ("app_error",),
    "damaged_parcel": ("broken_item", "missing_item"),
    "broken_item": ("broken_zipper_button", "open_seam", "hole_tear"),
    "missing_item": ("not_working",),
}
"""When both cues are there, the customer's problem is the more specific one ("显示已签收，可我没收到")."""


def features(
    question: str,
    image_text: str,
    locale: str,
    cues: tuple[Mapping[str, object], Mapping[str, object], Mapping[str, object]] | None = None,
) -> list[str]:
    """The model's features for a question and its photo's text (both already plain text).

    ``cues`` are the cue matches of the question and of the photo's text and the question's
    pointers at the photo, when already found.
    """
    out: list[str] = []
    q_cues, i_cues, pointers = (
        cues
        if cues is not None
        else (
            cue_matches(question, locale),
            cue_matches(image_text, locale),
            cue_matches(question, locale, POINTERS),
        )
    )
    out.extend(f"ptr:{k}" for k in pointers)
    out.extend(f"cue:{k}" for k in q_cues)
    out.extend(f"cue:{a}+{b}" for a in q_cues for b in q_cues if a < b)
    out.extend(f"icue:{k}" for k in i_cues)
    if not q_cues and not i_cues:
        out.append("no_cue")
    if image_text:
        out.append("has_image_text")
    out.extend(_ngrams(question[:_MAX_FEATURE_CHARS], locale, "q"))
    if image_text:
        out.extend(_ngrams(image_text[:_MAX_FEATURE_CHARS], locale, "i"))
    return sorted(set(out))


def feature_value(name: str) -> float:
    """Cues count in full; each n-gram counts for less, so that many weak ones do not outvote a cue."""
    return 1.0 if ":" not in name or name.startswith(("cue:", "icue:", "ptr:")) else NGRAM_VALUE


def _ngrams(text: str, locale: str, prefix: str) -> list[str]:
    if locale == "zh":
        grams: list[str] = []
        for run in _HAN_RUN.findall(text.lower()):
            grams.extend(f"{prefix}2:{run[i : i + 2]}" for i in range(len(run) - 1))
            grams.extend(f"{prefix}3:{run[i : i + 3]}" for i in range(len(run) - 2))
        return grams
    words = [_stem(w) for w in _WORD.findall(text.lower())]
    return [f"{prefix}w:{w}" for w in words] + [f"{prefix}b:{a}_{b}" for a, b in itertools.pairwise(words)]


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


@dataclass(frozen=True)
class IssueModel:
    classes: tuple[str, ...]
    bias: tuple[float, ...]
    weights: Mapping[str, tuple[float, ...]]

    def probabilities(self, feats: Sequence[str]) -> dict[str, float]:
        logits = list(self.bias)
        for f in feats:
            w = self.weights.get(f)
            if w is not None:
                v = feature_value(f)
                logits = [a + v * b for a, b in zip(logits, w, strict=True)]
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        total = sum(exps)
        return {c: e / total for c, e in zip(self.classes, exps, strict=True)}

    def to_json(self) -> dict[str, object]:
        return {
            "format": MODEL_FORMAT,
            "classes": list(self.classes),
            "bias": [round(b, 4) for b in self.bias],
            "weights": {f: [round(v, 4) for v in w] for f, w in sorted(self.weights.items())},
        }


@dataclass(frozen=True, slots=True)
class Example:
    features: tuple[str, ...]
    kind: str


def fit(
    examples: Sequence[Example], *, l2: float = 0.0003, steps: int = 1000, rate: float = 30.0
) -> IssueModel:
    """Multinomial logistic regression by full-batch gradient descent from zero weights (deterministic).

    Features seen in fewer than two examples are left out, except cues (they name a kind by design).
    Each kind's cues also enter as one example of that kind each (the lexicon as a prior), so that a
    kind with few or no examples is still recognised by its words; and so does each pair of a
    general and a more specific cue (SPECIFIC), labelled with the specific kind.
    """
    examples = [
        *examples,
        *(Example((f"{prefix}:{kind}",), kind) for kind in KINDS for prefix in ("cue", "icue")),
        *(
            Example(
                tuple(
                    sorted(
                        (
                            f"cue:{general}",
                            f"cue:{specific}",
                            f"cue:{min(general, specific)}+{max(general, specific)}",
                        )
                    )
                ),
                specific,
            )
            for general, specifics in SPECIFIC.items()
            for specific in specifics
        ),
    ]
    counts: dict[str, int] = {}
    for ex in examples:
        for f in ex.features:
            counts[f] = counts.get(f, 0) + 1
    vocab = sorted(f for f, n in counts.items() if n >= 2 or f.startswith(("cue:", "icue:", "ptr:")))
    index = {f: i for i, f in enumerate(vocab)}
    classes = KINDS
    x = np.zeros((len(examples), len(vocab)), dtype=np.float64)
    y = np.zeros((len(examples), len(classes)), dtype=np.float64)
    for row, ex in enumerate(examples):
        for f in ex.features:
            if f in index:
                x[row, index[f]] = feature_value(f)
        y[row, classes.index(ex.kind)] = 1.0
    w = np.zeros((len(vocab), len(classes)))
    b = np.zeros(len(classes))
    n = max(1, len(examples))
    for _ in range(steps):
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        err = (p - y) / n
        w -= rate * (x.T @ err + l2 * w)
        b -= rate * err.sum(axis=0)
    weights = {
        f: tuple(float(v) for v in w[i]) for f, i in index.items() if float(np.abs(w[i]).max()) >= 1e-3
    }
    return IssueModel(classes=classes, bias=tuple(float(v) for v in b), weights=weights)


def parse_model(doc: object) -> IssueModel:
    """An IssueModel from its JSON document; ValueError when it is not one."""
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise ValueError(f"not an issue model of format {MODEL_FORMAT}")
    classes = tuple(str(c) for c in doc["classes"])
    bias = tuple(float(v) for v in doc["bias"])
    weights = {str(f): tuple(float(v) for v in w) for f, w in doc["weights"].items()}
    if len(bias) != len(classes) or any(len(w) != len(classes) for w in weights.values()):
        raise ValueError("issue model: every weight vector must have one value per class")
    return IssueModel(classes=classes, bias=bias, weights=weights)


@lru_cache(maxsize=1)
def bundled_model() -> IssueModel:
    """The model shipped in guard/issues/model.json."""
    return parse_model(json.loads(MODEL_PATH.read_text(encoding="utf-8")))
