"""The host's figures (sans-IO): what the message path counts, how worker processes' counts
add up in the parent, and their Prometheus exposition.

Every process on the message path keeps a :class:`ProcessMetrics` of plain counters and
fixed-bucket histograms (a dict increment and a bisect per request: no locks, no files). A
worker ships a copy of its figures to the parent every METRICS_PUSH_INTERVAL over the channel
it already has (host/workers.py); the parent's :class:`MetricsHub` adds up the latest copy of
each worker, its own, and the last copy of every worker that ended (so counters never go
back when a worker is restarted). ``/metrics`` renders the sum through a prometheus_client
collector; store figures (batches, exceptions, terminals signed on) are read from the
database, which every process shares.

>>> h = Histogram((0.01, 0.1))
>>> for v in (0.005, 0.05, 0.05, 2.0):
...     h.observe(v)
>>> h.counts, round(h.total, 3)
([1, 2, 1], 2.105)
>>> round(quantile((0.01, 0.1), [1, 2, 1], 0.5), 3)
0.055
"""

from __future__ import annotations

import bisect
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hsm_sim.errors import HsmError
from specs.catalog import KINDS

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
"""Upper bounds (seconds) of the request latency histogram, frame in to frame out."""
HSM_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
               1.0, 5.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
GROUP_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
"""Jobs per writer group (WRITER_MAX_GROUP is the last bound)."""
METRICS_PUSH_INTERVAL = 1.0
"""Seconds between two copies of a worker's figures sent to the parent."""
HISTORY_SECONDS = 600
"""Seconds of per-second samples the dashboard's chart keeps (10 minutes)."""
WINDOW_SECONDS = 60
"""Seconds over which the dashboard's percentiles and approval rate are taken."""
ONLINE_SECONDS = 300.0
"""A terminal answered within this many seconds counts as online."""
FINANCIAL = frozenset(name for name, kind in KINDS.items() if kind.mac)
"""Kinds whose answers make the approval rate (those that move money or read a balance)."""
APPROVED = "00"
UNKNOWN_KIND = "unknown"


@dataclass
class Histogram:
    """Counts per bucket (the last one is +Inf) and the sum of the values."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.total += other.total

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self, name: str, documentation: str, labels: Mapping[str, str] | None = None,
               into: HistogramMetricFamily | None = None) -> HistogramMetricFamily:
        """This histogram as a Prometheus family (cumulative buckets)."""
        keys = list(labels or {})
        family = into or HistogramMetricFamily(name, documentation, labels=keys)
        cumulative, buckets = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += n
            buckets.append((_le(bound), cumulative))
        family.add_metric([(labels or {})[k] for k in keys], buckets, self.total)
        return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def quantile(bounds: tuple[float, ...], counts: list[int], q: float) -> float:
    """The q-quantile of bucket counts, interpolated within its bucket (as Prometheus'
    histogram_quantile); the highest finite bound when it falls in +Inf; 0 with no data."""
    total = sum(counts)
    if not total:
        return 0.0
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i else 0.0
            return low + (bounds[i] - low) * (rank - seen) / n
        seen += n
    return bounds[-1]


@dataclass
class Figures:
    """Counters and gauges of one process (or the sum of several)."""

    requests: Counter[str] = field(default_factory=Counter)
    responses: Counter[tuple[str, str]] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    hsm_latency: dict[str, Histogram] = field(default_factory=dict)
    hsm_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    dropped: int = 0
    """Connections closed for bad input (undecodable frames, timeouts mid-frame)."""
    connections: int = 0
    """Open connections (a gauge: not carried over from a worker that ended)."""
    peer_alerts: Counter[str] = field(default_factory=Counter)
    """Management messages (by kind) for a TID from an unexpected peer (host/peers.py)."""

    def add(self, other: Figures, *, gauges: bool = True) -> None:
        self.requests.update(other.requests)
        self.responses.update(other.responses)
        self.latency.add(other.latency)
        for command, histogram in other.hsm_latency.items():
            self.hsm_latency.setdefault(command, Histogram(HSM_BUCKETS)).add(histogram)
        self.hsm_errors.update(other.hsm_errors)
        self.dropped += other.dropped
        self.peer_alerts.update(other.peer_alerts)
        if gauges:
            self.connections += other.connections

    def copy(self) -> Figures:
        out = Figures()
        out.add(self)
        return out


class ProcessMetrics(Figures):
    """What the message path of one process records (HostService, Server, MeasuredHsm)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, tuple[float, str]] = {}
        """Terminal ID -> (wall-clock time, response code) of its last answer."""
        self._seen_since: dict[str, tuple[float, str]] = {}

    def request(self, kind: str | None) -> None:
        """One request decoded and handled (before its answer is encoded)."""
        self.requests[kind or UNKNOWN_KIND] += 1

    def answered(self, kind: str | None, code: str, tid: str | None) -> None:
        """One answer left; ``tid`` only for a registered terminal (bounded set)."""
        self.responses[kind or UNKNOWN_KIND, code] += 1
        if tid is not None:
            self.seen[tid] = self._seen_since[tid] = (time.time(), code)

    def take_seen(self) -> dict[str, tuple[float, str]]:
        """Terminals seen since the last call (what a worker ships to the parent)."""
        out, self._seen_since = self._seen_since, {}
        return out

    def hsm_call(self, command: str, seconds: float, error: str | None) -> None:
        histogram = self.hsm_latency.get(command)
        if histogram is None:
            histogram = self.hsm_latency[command] = Histogram(HSM_BUCKETS)
        histogram.observe(seconds)
        if error is not None:
            self.hsm_errors[command, error] += 1


class MeasuredHsm:
    """An HsmClient whose calls are timed and whose errors are counted per command (the
    client's method name); everything else passes through."""

    def __init__(self, client: Any, metrics: ProcessMetrics) -> None:
        self._client = client
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._client, name)
        if not name.startswith("_") and callable(target) and _is_async(target):
            measured = _measure(name, target, self._metrics)
            setattr(self, name, measured)  # built once per method
            return measured
        return target


def _is_async(fn: Callable[..., Any]) -> bool:
    import inspect
    return inspect.iscoroutinefunction(fn)


def _measure(name: str, target: Callable[..., Any], metrics: ProcessMetrics,
             ) -> Callable[..., Any]:
    async def measured(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await target(*args, **kwargs)
        except HsmError as exc:
            metrics.hsm_call(name, time.perf_counter() - started, str(exc.code or "error"))
            raise
        metrics.hsm_call(name, time.perf_counter() - started, None)
        return result
    return measured


# --------------------------------------------------------------------------- the parent


@dataclass
class StoreFigures:
    """Figures read from the database (shared by every process)."""

    batches: dict[str, int] = field(default_factory=dict)
    unbalanced: int = 0
    exceptions_open: int = 0
    terminals: int = 0
    signed_on: int = 0
    recent_exceptions: list[dict[str, Any]] = field(default_factory=list)
    recent_txns: list[dict[str, Any]] = field(default_factory=list)


RECENT_ROWS = 10
"""Latest transactions and open exceptions the dashboard lists."""


def read_store_figures(db_path: Path) -> StoreFigures:
    """Batch, exception and terminal figures, and the latest rows (masked PANs only), over a
    read-only connection of its own (run it on a worker thread)."""
    from host.pgstore import is_pg, pooled
    if is_pg(db_path):  # a pooled connection (psycopg_pool): the site renders often
        with pooled(str(db_path)) as pg:
            return _store_figures(pg)
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1.0)
    conn.row_factory = sqlite3.Row
    try:
        return _store_figures(conn)
    finally:
        conn.close()


def _store_figures(conn: Any) -> StoreFigures:
    """The figures over an open connection (either store)."""
    out = StoreFigures()
    for row in conn.execute("SELECT state, count(*) FROM batches GROUP BY state"):
        out.batches[row[0]] = row[1]
    out.unbalanced = conn.execute("SELECT count(*) FROM batches WHERE result ="
                                  " 'not balanced'").fetchone()[0]
    out.exceptions_open = conn.execute(
        "SELECT count(*) FROM exceptions WHERE state = 'open'").fetchone()[0]
    out.terminals, out.signed_on = conn.execute(
        "SELECT count(*), count(mak_lmk) FROM terminals").fetchone()
    out.recent_exceptions = [
        {"id": r["id"], "tid": r["tid"], "batch": r["batch"], "kind": r["kind"],
         "trace": r["trace"], "created": r["created"]}
        for r in conn.execute("SELECT id, tid, batch, kind, trace, created FROM exceptions"
                              " WHERE state = 'open' ORDER BY id DESC LIMIT ?",
                              (RECENT_ROWS,))]
    out.recent_txns = [
        dict(r) for r in conn.execute(
            "SELECT created, tid, kind, pan_masked, amount, rc FROM txns"
            " ORDER BY id DESC LIMIT ?", (RECENT_ROWS,))]
    return out


@dataclass
class Sample:
    """The running totals at one moment (for rates and windowed percentiles)."""

    at: float
    responses: int
    financial: int
    approved: int
    latency: list[int]


class MetricsHub:
    """The parent's view: its own figures, the latest copy from each live worker, and the
    sum of those from workers that ended; the writer's figures; per-second samples."""

    def __init__(self, local: ProcessMetrics, workers: int = 0) -> None:
        self.local = local
        self.workers = workers
        self._live: dict[int, Figures] = {}
        self._retired = Figures()
        self.seen: dict[str, tuple[float, str]] = local.seen
        self.group_size = Histogram(GROUP_BUCKETS)
        self.commit_latency = Histogram(COMMIT_BUCKETS)
        self.history: deque[Sample] = deque(maxlen=HISTORY_SECONDS + 1)
        self.started = time.time()
        self.store = StoreFigures()
        self.hsm_up: bool | None = None
        self.hsm_description = ""
        self.hsm_checked: float | None = None

    # ---- inputs
    def worker_figures(self, index: int, figures: Figures,
                       seen: Mapping[str, tuple[float, str]]) -> None:
        self._live[index] = figures
        self.seen.update(seen)

    def retire(self, index: int) -> None:
        """Worker ``index`` ended: keep its last counters, drop its gauges."""
        figures = self._live.pop(index, None)
        if figures is not None:
            self._retired.add(figures, gauges=False)

    def writer_group(self, jobs: int, seconds: float) -> None:
        self.group_size.observe(jobs)
        self.commit_latency.observe(seconds)

    # ---- outputs
    def total(self) -> Figures:
        out = self._retired.copy()
        out.add(self.local)
        for figures in self._live.values():
            out.add(figures)
        return out

    def sample(self, now: float | None = None, *, record: bool = True) -> Sample:
        """The current totals, appended to the history when ``record`` (once a second)."""
        figures = self.total()
        financial = approved = 0
        for (kind, code), n in figures.responses.items():
            if kind in FINANCIAL:
                financial += n
                if code == APPROVED:
                    approved += n
        sample = Sample(time.time() if now is None else now, sum(figures.responses.values()),
                        financial, approved, list(figures.latency.counts))
        if record:
            self.history.append(sample)
        return sample

    def online(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return sum(1 for at, _ in self.seen.values() if now - at <= ONLINE_SECONDS)


class HostCollector(Collector):
    """The hub's figures as Prometheus metric families."""

    def __init__(self, hub: MetricsHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub, figures = self.hub, self.hub.total()
        requests = CounterMetricFamily(
            "poshost_requests", "Requests handled, by message kind", labels=["kind"])
        responses = CounterMetricFamily(
            "poshost_responses", "Responses sent, by message kind and response code (F39)",
            labels=["kind", "code"])
        for (kind, code), n in sorted(figures.responses.items()):
            responses.add_metric([kind, code], n)
        for kind, n in sorted(figures.requests.items()):
            requests.add_metric([kind], n)
        yield requests
        yield responses
        yield figures.latency.family(
            "poshost_request_duration_seconds",
            "Time from a request frame complete to its answer written, in seconds")
        yield CounterMetricFamily(
            "poshost_connections_closed_bad_input",
            "Connections closed for bad input (undecodable or incomplete frames)",
            value=figures.dropped)
        yield GaugeMetricFamily("poshost_connections_open", "Terminal connections open",
                                value=figures.connections)
        alerts = CounterMetricFamily(
            "poshost_peer_alerts", "Sign-ons, sign-offs, settlements and uploads for a TID from"
            " an unexpected peer address (ALERT lines), by message kind", labels=["kind"])
        for kind, n in sorted(figures.peer_alerts.items()):
            alerts.add_metric([kind], n)
        yield alerts
        hsm = HistogramMetricFamily("poshost_hsm_command_duration_seconds",
                                    "HSM command latency, in seconds", labels=["command"])
        for command, histogram in sorted(figures.hsm_latency.items()):
            histogram.family("", "", {"command": command}, into=hsm)
        yield hsm
        errors = CounterMetricFamily("poshost_hsm_errors", "HSM commands that failed,"
                                     " by command and error code", labels=["command", "code"])
        for (command, code), n in sorted(figures.hsm_errors.items()):
            errors.add_metric([command, code], n)
        yield errors
        if hub.hsm_up is not None:
            yield GaugeMetricFamily("poshost_hsm_up", "1 when the HSM answered the last probe",
                                    value=int(hub.hsm_up))
        yield hub.group_size.family("poshost_writer_group_jobs",
                                    "Jobs committed together by the writer (group commit)")
        yield hub.commit_latency.family("poshost_writer_commit_duration_seconds",
                                        "Time to apply and commit one writer group, in seconds")
        yield from self._store_families()
        from host.router import route_families  # the links of this process (#20)

        yield from route_families()
        yield GaugeMetricFamily("poshost_terminals_online",
                                f"Terminals answered within the last {ONLINE_SECONDS:g} s",
                                value=hub.online())
        yield GaugeMetricFamily("poshost_workers", "Worker processes on the message path"
                                " (0: one process)", value=hub.workers)

    def _store_families(self) -> Iterator[Metric]:
        store = self.hub.store
        batches = GaugeMetricFamily("poshost_batches", "Terminal batches by state",
                                    labels=["state"])
        for state in sorted({"open", "uploading", "closed", *store.batches}):
            batches.add_metric([state], store.batches.get(state, 0))
        yield batches
        yield GaugeMetricFamily("poshost_batches_unbalanced",
                                "Batches whose settlement did not balance (uploaded or not)",
                                value=store.unbalanced)
        yield GaugeMetricFamily("poshost_reconciliation_exceptions_open",
                                "Reconciliation exceptions not yet resolved",
                                value=store.exceptions_open)
        yield GaugeMetricFamily("poshost_terminals_signed_on",
                                "Terminals holding working keys (signed on)",
                                value=store.signed_on)
        yield GaugeMetricFamily("poshost_terminals_registered", "Terminals registered",
                                value=store.terminals)
