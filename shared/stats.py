"""The one percentile and latency summary of load runs (``posterm load`` and the benches).

>>> latency_summary([i / 1000 for i in range(1, 101)])
{'p50': 50.0, 'p95': 95.0, 'p99': 99.0, 'max': 100.0, 'mean': 50.5}
"""

from __future__ import annotations

import math

QUANTILES = (0.5, 0.95, 0.99)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0..1) of an ascending list (0 for an empty one).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([], 0.99)
    (2.0, 0.0)
    """
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds (3 decimals) of latencies in seconds."""
    ordered = sorted(values)
    ms = {f"p{round(q * 100)}": round(percentile(ordered, q) * 1000, 3) for q in QUANTILES}
    ms["max"] = round(ordered[-1] * 1000, 3) if ordered else 0.0
    ms["mean"] = round(sum(ordered) / len(ordered) * 1000, 3) if ordered else 0.0
    return ms
