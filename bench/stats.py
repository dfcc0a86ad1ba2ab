"""Percentiles and summaries, without numpy (the client process stays light)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), interpolated linearly between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Iterable[float], *, digits: int = 1) -> dict[str, float | int | None]:
    """n, p50, p95, p99, min, max and mean, rounded."""
    data = [float(v) for v in values]

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, digits)

    return {
        "n": len(data),
        "p50": r(percentile(data, 50)),
        "p95": r(percentile(data, 95)),
        "p99": r(percentile(data, 99)),
        "min": r(min(data)) if data else None,
        "max": r(max(data)) if data else None,
        "mean": r(sum(data) / len(data)) if data else None,
    }


def ms(seconds: float) -> float:
    return seconds * 1000.0
