"""Service metrics in the Prometheus text exposition format (version 0.0.4), thread-safe.

Small on purpose: counters and histograms with labels, gauges read when scraped.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Callable

# Request latency buckets in seconds: a 256 px patchknn call takes ~20 ms, FADE ~20 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: dict[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = [*labels, extra] if extra else list(labels)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in items) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    def __init__(self, prefix: str = "anomalens"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._histograms: dict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self._gauges: dict[str, Callable[[], float]] = {}
        self._help: dict[str, str] = {}
        self._buckets: dict[str, tuple[float, ...]] = {}

    def describe(self, name: str, help_text: str) -> None:
        self._help[name] = help_text

    def inc(self, name: str, labels: dict[str, str] | None = None, value: float = 1.0) -> None:
        key = _labels(labels)
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None, buckets=LATENCY_BUCKETS) -> None:
        key = _labels(labels)
        with self._lock:
            self._buckets.setdefault(name, tuple(buckets))
            bounds = self._buckets[name]
            # [count per bucket..., +Inf count, sum]
            series = self._histograms[name].setdefault(key, [0.0] * (len(bounds) + 2))
            for i, upper in enumerate(bounds):
                if value <= upper:
                    series[i] += 1
            series[len(bounds)] += 1
            series[len(bounds) + 1] += value

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """A gauge whose value `read()` returns at scrape time."""
        self._gauges[name] = read

    def counter_value(self, name: str, labels: dict[str, str] | None = None) -> float:
        with self._lock:
            return self._counters.get(name, {}).get(_labels(labels), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        p = self.prefix

        def header(name: str, kind: str) -> None:
            if name in self._help:
                lines.append(f"# HELP {p}_{name} {self._help[name]}")
            lines.append(f"# TYPE {p}_{name} {kind}")

        with self._lock:
            for name, series in sorted(self._counters.items()):
                header(name, "counter")
                for labels, value in sorted(series.items()):
                    lines.append(f"{p}_{name}{_format_labels(labels)} {_number(value)}")
            for name, series in sorted(self._histograms.items()):
                header(name, "histogram")
                bounds = self._buckets[name]
                for labels, counts in sorted(series.items()):
                    for i, upper in enumerate(bounds):
                        le = ("le", _number(upper))
                        lines.append(f"{p}_{name}_bucket{_format_labels(labels, le)} {_number(counts[i])}")
                    inf = ("le", "+Inf")
                    lines.append(f"{p}_{name}_bucket{_format_labels(labels, inf)} {_number(counts[len(bounds)])}")
                    lines.append(f"{p}_{name}_sum{_format_labels(labels)} {_number(counts[len(bounds) + 1])}")
                    lines.append(f"{p}_{name}_count{_format_labels(labels)} {_number(counts[len(bounds)])}")
        for name, read in sorted(self._gauges.items()):
            header(name, "gauge")
            lines.append(f"{p}_{name} {_number(float(read()))}")
        return "\n".join(lines) + "\n"
