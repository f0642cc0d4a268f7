"""Rate limits as pure arithmetic over a clock reading (sans-IO): the token bucket that paces
new connections while earlier ones have not proved themselves, and the log budget that keeps
a flood of bad peers from turning into a flood of log lines. The caller passes ``now``; nothing here
sleeps or reads a clock.

>>> bucket = TokenBucket(rate=2.0, burst=2)
>>> [bucket.take(0.0) for _ in range(3)]
[0.0, 0.0, 0.5]
>>> bucket.take(0.5)
0.0
"""

from __future__ import annotations

_EPSILON = 1e-9
"""Tokens short of one that still count as one (float refill arithmetic)."""


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second; one token per event."""

    def __init__(self, rate: float, burst: int, now: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def give(self, now: float) -> None:
        """Return a token taken earlier (never above ``burst``)."""
        self._refill(now)
        self._tokens = min(self.burst, self._tokens + 1.0)

    def take(self, now: float) -> float:
        """Take a token and return 0.0, or take nothing and return the seconds until one
        is there."""
        self._refill(now)
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate


class LogBudget:
    """At most ``per_second`` lines (bursts up to ``burst``) of one kind of event; the rest
    are counted, and the next line that gets through says how many were left out.

    >>> budget = LogBudget(per_second=1.0, burst=1)
    >>> budget.admit(0.0), budget.admit(0.1), budget.admit(0.2)
    (0, None, None)
    >>> budget.admit(1.5)
    2
    """

    def __init__(self, per_second: float, burst: int) -> None:
        self._bucket = TokenBucket(per_second, burst)
        self._left_out = 0

    def admit(self, now: float) -> int | None:
        """None: leave this line out. Otherwise log it, with the returned count of lines
        left out since the last one that got through."""
        if self._bucket.take(now) > 0.0:
            self._left_out += 1
            return None
        left_out, self._left_out = self._left_out, 0
        return left_out
