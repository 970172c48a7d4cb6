"""Process-local counters and latency histograms, rendered in the Prometheus text format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._hist: dict[str, list[int]] = {}
        self._hist_sum: dict[str, float] = {}
        self._gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += amount

    def observe_ms(self, name: str, value_ms: float) -> None:
        buckets = self._hist.setdefault(name, [0] * (len(_BUCKETS_MS) + 1))
        for i, edge in enumerate(_BUCKETS_MS):
            if value_ms <= edge:
                buckets[i] += 1
                break
        else:
            buckets[-1] += 1
        self._hist_sum[name] = self._hist_sum.get(name, 0.0) + value_ms

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self._gauges[name] = read

    def render(self) -> str:
        lines: list[str] = []
        for (name, labels), value in sorted(self.counters.items()):
            label_text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {value}" if labels else f"{name} {value}")
        for name, buckets in sorted(self._hist.items()):
            lines.append(f"# TYPE {name} histogram")
            running = 0
            for edge, count in zip(_BUCKETS_MS, buckets, strict=False):
                running += count
                lines.append(f'{name}_bucket{{le="{edge}"}} {running}')
            running += buckets[-1]
            lines.append(f'{name}_bucket{{le="+Inf"}} {running}')
            lines.append(f"{name}_sum {self._hist_sum[name]:.3f}")
            lines.append(f"{name}_count {running}")
        for name, read in sorted(self._gauges.items()):
            lines.append(f"{name} {read()}")
        return "\n".join(lines) + "\n"
