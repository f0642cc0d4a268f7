"""Latency and outcome statistics of a load run (percentiles from :mod:`shared.stats`).

>>> s = Recorder()
>>> for ms in range(1, 101):
...     s.record(ms / 1000, "00")
>>> r = s.summary(elapsed=1.0)
>>> r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["approved_per_s"]
(50.0, 99.0, 100.0)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared.stats import latency_summary, percentile
from specs.codes import APPROVED

__all__ = ["Recorder", "latency_summary", "percentile"]


@dataclass
class Recorder:
    """Latencies (seconds) and response codes; errors are failures without a response code."""

    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    recording: bool = True

    def record(self, latency: float, code: str) -> None:
        if self.recording:
            self.latencies.append(latency)
            self.codes[code] += 1

    def error(self, what: str) -> None:
        if self.recording:
            self.errors[what] += 1

    def reset(self) -> None:
        self.latencies.clear()
        self.codes.clear()
        self.errors.clear()

    def summary(self, elapsed: float) -> dict[str, Any]:
        values = self.latencies
        approved = self.codes.get(APPROVED, 0)
        declined = sum(self.codes.values()) - approved
        lat = latency_summary(values)
        return {
            "elapsed_s": round(elapsed, 3),
            "transactions": len(values),
            "approved": approved,
            "approved_per_s": round(approved / elapsed, 1) if elapsed else 0.0,
            "throughput_per_s": round(len(values) / elapsed, 1) if elapsed else 0.0,
            "latency_ms": lat,
            "response_codes": dict(sorted(self.codes.items())),
            "declined": declined,
            "errors": dict(sorted(self.errors.items())),
            "error_count": sum(self.errors.values()),
        }
