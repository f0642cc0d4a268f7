"""Routing of off-us cards as pure code: route settings and live state in, a channel out.

"Availability first, then optimality" (issue #20, protocol.md section 9 routing notes):
a route is available for a card and amount when its BINs match, it is enabled and up, not
degraded, not in its maintenance window, the amount is within its per-transaction limit and
the card's volume today on it stays within its daily limit. Among the available ones the
cheapest for this amount wins, then the highest recent success rate, then the lowest recent
p99; remaining ties go round robin. The degrade rule (consecutive failures or pending count
-> demoted for a hold that doubles while the route keeps failing) is :class:`Health`, also
pure. Nothing here touches a socket, the HSM or the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time as dtime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from host.errors import ConfigError

DEFAULT_TIMEOUT = 10.0
DEFAULT_FAIL_THRESHOLD = 20
DEFAULT_PENDING_THRESHOLD = 800
DEFAULT_DEGRADE_HOLD = 1800.0
MAX_DEGRADE_HOLD = 24 * 3600.0
RECENT_WINDOW = 200
"""Outcomes kept per route for the success rate and p99."""

NO_ROUTE = "14"
"""No route's BINs match the card (protocol.md section 9)."""
NO_CHANNEL = "91"
"""Routes match but none is available now."""


@dataclass(frozen=True)
class BinRange:
    """A BIN prefix or an inclusive range of prefixes of one length ("622203-622299")."""

    low: str
    high: str

    def matches(self, pan: str) -> bool:
        head = pan[: len(self.low)]
        return len(head) == len(self.low) and self.low <= head <= self.high


def parse_bins(text: str) -> tuple[BinRange, ...]:
    """``4761,622203-622299`` -> two ranges; ConfigError on anything else."""
    out: list[BinRange] = []
    for part in (p.strip() for p in text.split(",")):
        low, _, high = part.partition("-")
        high = high or low
        if not (low.isdigit() and high.isdigit() and 1 <= len(low) <= 11
                and len(low) == len(high) and low <= high):
            raise ConfigError(f"bad BIN or BIN range {part!r} (digits, e.g. 4761 or"
                              " 622203-622299)")
        out.append(BinRange(low, high))
    if not out:
        raise ConfigError("no BINs given")
    return tuple(out)


def format_bins(bins: Iterable[BinRange]) -> str:
    return ",".join(b.low if b.low == b.high else f"{b.low}-{b.high}" for b in bins)


@dataclass(frozen=True)
class Window:
    """A daily maintenance window, local time; may wrap midnight (23:30-00:30)."""

    start: dtime
    end: dtime

    def contains(self, now: dtime) -> bool:
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end


def parse_window(text: str) -> Window:
    """``02:00-03:00`` -> Window; ConfigError otherwise."""
    try:
        a, b = text.split("-")
        return Window(dtime.fromisoformat(a.strip()), dtime.fromisoformat(b.strip()))
    except ValueError:
        raise ConfigError(f"bad maintenance window {text!r} (HH:MM-HH:MM)") from None


def parse_rate(text: str) -> str:
    """A cost rate as a decimal fraction string (``0.0038`` = 0.38 %)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ConfigError(f"bad cost rate {text!r} (a fraction, e.g. 0.0038)") from None
    if not value.is_finite() or value < 0 or value >= 1:
        raise ConfigError(f"cost rate {text!r} must be a fraction in [0, 1)")
    return str(value)


def channel_cost(cost_fixed: int, cost_rate: str, amount: int) -> int:
    """Cost in minor units: fixed + rate x amount, rounded half-up to the minor unit.

    >>> channel_cost(10, "0.0038", 12345)  # 10 + 46.911
    57
    >>> channel_cost(0, "0.005", 100)  # 0.5 rounds up
    1
    """
    variable = (Decimal(cost_rate) * amount).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return cost_fixed + int(variable)


@dataclass(frozen=True)
class Route:
    """A channel's settings (the `routes` table)."""

    name: str
    host: str
    port: int
    bins: tuple[BinRange, ...]
    cost_fixed: int = 0
    cost_rate: str = "0"
    limit_txn: int | None = None
    limit_day: int | None = None
    maintenance: Window | None = None
    priority: int = 0
    timeout: float = DEFAULT_TIMEOUT
    enabled: bool = True
    fail_threshold: int = DEFAULT_FAIL_THRESHOLD
    pending_threshold: int = DEFAULT_PENDING_THRESHOLD
    degrade_hold: float = DEFAULT_DEGRADE_HOLD

    def serves(self, pan: str) -> bool:
        return any(b.matches(pan) for b in self.bins)

    def cost(self, amount: int) -> int:
        return channel_cost(self.cost_fixed, self.cost_rate, amount)


@dataclass
class Health:
    """A route's live health: up/down, recent outcomes, and the degrade state machine.

    ``failure``/``success``/``pending`` are the inputs; ``degraded_until`` (a monotonic
    time) is the output. Tripped (``fail_threshold`` consecutive failures, or ``pending``
    reaching ``pending_threshold``) -> demoted for ``hold``; after the hold the route is on
    probation: its first outcome decides, a success ends probation and resets the hold, a
    failure demotes it again for twice the previous hold (capped)."""

    up: bool = False
    in_flight: int = 0
    consecutive_failures: int = 0
    degraded_until: float = 0.0
    probation: bool = False
    last_hold: float = 0.0
    trips: int = 0
    outcomes: deque[tuple[bool, float]] = field(
        default_factory=lambda: deque(maxlen=RECENT_WINDOW))

    def degraded(self, now: float) -> bool:
        return now < self.degraded_until

    def success(self, latency: float, now: float) -> None:
        self.outcomes.append((True, latency))
        self.consecutive_failures = 0
        if self.probation and not self.degraded(now):
            self.probation = False
            self.last_hold = 0.0

    def failure(self, latency: float, now: float, route: Route) -> bool:
        """Count a failure; True when it (re)trips the route."""
        self.outcomes.append((False, latency))
        self.consecutive_failures += 1
        if self.degraded(now):
            return False
        if self.probation or self.consecutive_failures >= route.fail_threshold:
            self._trip(now, route)
            return True
        return False

    def check_pending(self, now: float, route: Route) -> bool:
        if not self.degraded(now) and self.in_flight >= route.pending_threshold:
            self._trip(now, route)
            return True
        return False

    def _trip(self, now: float, route: Route) -> None:
        hold = (min(self.last_hold * 2, MAX_DEGRADE_HOLD) if self.probation and self.last_hold
                else route.degrade_hold)
        self.last_hold = hold
        self.degraded_until = now + hold
        self.probation = True
        self.consecutive_failures = 0
        self.trips += 1

    def success_rate(self) -> float:
        if not self.outcomes:
            return 1.0
        return sum(1 for ok, _ in self.outcomes if ok) / len(self.outcomes)

    def p99(self) -> float:
        if not self.outcomes:
            return 0.0
        ordered = sorted(lat for _, lat in self.outcomes)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass(frozen=True)
class Ask:
    """What the choice needs about one transaction."""

    pan: str
    amount: int
    clock: dtime
    """Local wall time (maintenance windows)."""
    now: float
    """Monotonic time (degrade holds)."""
    used_today: Mapping[str, int] = field(default_factory=dict)
    """This card's approved volume today per route name (daily limits)."""


@dataclass(frozen=True)
class Choice:
    route: Route | None
    code: str | None = None
    """None when a route was chosen; else 14 (no route serves the BIN) or 91."""
    why: str = ""


def unavailable_reason(route: Route, health: Health, ask: Ask) -> str | None:
    """Why ``route`` cannot take this transaction now, or None when it can."""
    if not route.enabled:
        return "disabled"
    if not health.up:
        return "down"
    if health.degraded(ask.now):
        return "degraded"
    if route.maintenance is not None and route.maintenance.contains(ask.clock):
        return "maintenance"
    if route.limit_txn is not None and ask.amount > route.limit_txn:
        return "over per-transaction limit"
    if (route.limit_day is not None
            and ask.used_today.get(route.name, 0) + ask.amount > route.limit_day):
        return "over the card's daily limit"
    return None


def choose_route(routes: Sequence[Route], health: Mapping[str, Health], ask: Ask,
                 turn: int = 0) -> Choice:
    """The channel for this card and amount (``turn`` breaks remaining ties round robin).

    Order: lowest cost for the amount, highest success rate, lowest p99, then priority
    (lower first); equal on all of these -> the ``turn``-th of them."""
    serving = [r for r in routes if r.serves(ask.pan)]
    if not serving:
        return Choice(None, NO_ROUTE, "no route serves this BIN")
    available = [r for r in serving
                 if unavailable_reason(r, health.get(r.name) or Health(), ask) is None]
    if not available:
        why = "; ".join(f"{r.name}: {unavailable_reason(r, health.get(r.name) or Health(), ask)}"
                        for r in serving)
        return Choice(None, NO_CHANNEL, why)

    def rank(r: Route) -> tuple[int, float, float, int]:
        h = health.get(r.name) or Health()
        return (r.cost(ask.amount), -round(h.success_rate(), 3), round(h.p99(), 3), r.priority)

    best = min(rank(r) for r in available)
    tied = sorted((r for r in available if rank(r) == best), key=lambda r: r.name)
    return Choice(tied[turn % len(tied)])


def reversal_backoff(attempt: int) -> float:
    """2 s, 4 s, 8 s, ... capped at 5 minutes (protocol.md section 9)."""
    return float(min(2 ** (attempt + 1), 300))


def reconnect_backoff(attempt: int) -> float:
    """A link's reconnect delay: 0.5 s doubling to 30 s."""
    return min(0.5 * 2 ** attempt, 30.0)
