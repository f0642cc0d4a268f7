"""The observability site (``poshost serve --http``): ``/metrics`` (Prometheus text),
``/healthz``, ``/`` (the live dashboard, files in host/dashboard/) and ``/api/state`` (the
JSON the dashboard polls). Runs in the host's process beside the message path; every figure
it shows is read from the MetricsHub or, at most once per HTTP_STATE_TTL, from the database
on a worker thread. Shows masked PANs only (the store keeps no other kind in its rows)."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from host.errors import ConfigError
from host.http import HttpServer, Reply
from host.limits import (
    HSM_PROBE_INTERVAL,
    HTTP_HEALTH_TIMEOUT,
    HTTP_RENDER_TTL,
    HTTP_STATE_TTL,
)
from host.metrics import (
    LATENCY_BUCKETS,
    WINDOW_SECONDS,
    HostCollector,
    MetricsHub,
    quantile,
    read_store_figures,
)
from specs.pretty import mask_pan

log = logging.getLogger("poshost.http")
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8080
"""Port of ``--http`` given without a value (and of ``--http HOST:`` without one)."""
TERMINALS_SHOWN = 20
"""Terminals the dashboard lists (the most recently seen)."""
SAMPLE_INTERVAL = 1.0
"""Seconds between two samples of the totals (the chart's resolution)."""
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
                "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}


@dataclass
class HttpSettings:
    """Where ``--http`` listens; ``bound`` is the address actually bound once started
    (port 0 picks a free one)."""

    host: str = DEFAULT_HTTP_HOST
    port: int = DEFAULT_HTTP_PORT
    bound: tuple[str, int] | None = None

    @classmethod
    def parse(cls, text: str) -> HttpSettings:
        """``PORT``, ``:PORT``, ``HOST:PORT`` or ``HOST:``; loopback unless a host is given.

        >>> HttpSettings.parse("9100"), HttpSettings.parse("0.0.0.0:80").host
        (HttpSettings(host='127.0.0.1', port=9100, bound=None), '0.0.0.0')
        """
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = "", text
        port = port or str(DEFAULT_HTTP_PORT)
        if not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"--http must be [HOST:]PORT, not {text!r}")
        return cls(host.strip("[]") or DEFAULT_HTTP_HOST, int(port))


@dataclass
class Probes:
    """What the site asks the host (given by host/app.py)."""

    accepting: Callable[[], bool]
    """Whether the host accepts terminals now (listening, not draining, a worker ready)."""
    commit: Callable[[], Awaitable[Any]]
    """A no-op job through the writer: returns once a commit went through."""
    hsm_check: Callable[[], Awaitable[Any]]
    """A harmless HSM command (the LMK check value)."""


class Site:
    """The request handler and the background tasks that keep its figures fresh."""

    def __init__(self, hub: MetricsHub, db_path: Path, probes: Probes) -> None:
        self.hub = hub
        self.db_path = db_path
        self.probes = probes
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HostCollector(hub))
        ProcessCollector(registry=self.registry)
        self._store_at = -HTTP_STATE_TTL
        self._store_lock = trio.Lock()
        self._health: tuple[float, bool, str] = (-HTTP_STATE_TTL, False, "")
        self._health_lock = trio.Lock()
        self._rendered: dict[str, tuple[float, Reply]] = {}
        self._files = {path: (resources.files("host.dashboard").joinpath(name).read_bytes(),
                              kind) for path, (name, kind) in STATIC_FILES.items()}

    # ---------------------------------------------------------------- routes
    async def handle(self, target: str) -> Reply:
        path = target.split("?", 1)[0]
        if path == "/healthz":
            ok, text = await self.health()
            return Reply(200 if ok else 503, (text + "\n").encode())
        if path in ("/metrics", "/api/state"):
            at, reply = self._rendered.get(path, (-HTTP_RENDER_TTL, None))
            if reply is None or trio.current_time() - at >= HTTP_RENDER_TTL:
                reply = await self._render(path)
                self._rendered[path] = (trio.current_time(), reply)
            return reply
        if path in self._files:
            body, kind = self._files[path]
            return Reply(200, body, kind)
        return Reply(404, b"not found\n")

    async def _render(self, path: str) -> Reply:
        await self.refresh_store()
        if path == "/metrics":
            return Reply(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        ok, text = await self.health()
        body = json.dumps(self.state(ok, text), separators=(",", ":")).encode()
        return Reply(200, body, "application/json")

    # ---------------------------------------------------------------- background
    async def run(self) -> None:
        """Sample the totals every second and probe the HSM (until cancelled)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sample_loop)
            nursery.start_soon(self._hsm_loop)

    async def _sample_loop(self) -> None:
        while True:
            self.hub.sample()
            await trio.sleep(SAMPLE_INTERVAL)

    async def _hsm_loop(self) -> None:
        while True:
            try:
                with trio.fail_after(HTTP_HEALTH_TIMEOUT):
                    await self.probes.hsm_check()
                self.hub.hsm_up = True
            except Exception as exc:  # any failure means down; the reason goes to the log
                if self.hub.hsm_up is not False:
                    log.warning("HSM probe failed: %s", type(exc).__name__)
                self.hub.hsm_up = False
            self.hub.hsm_checked = time.time()
            await trio.sleep(HSM_PROBE_INTERVAL)

    async def refresh_store(self) -> None:
        """Re-read the database figures when older than HTTP_STATE_TTL (one reader at once)."""
        async with self._store_lock:
            if trio.current_time() - self._store_at < HTTP_STATE_TTL:
                return
            try:
                self.hub.store = await trio.to_thread.run_sync(read_store_figures,
                                                               self.db_path)
            except Exception as exc:  # the figures stay as they were; the page says how old
                log.warning("cannot read the store figures: %s", exc)
            self._store_at = trio.current_time()

    async def health(self) -> tuple[bool, str]:
        """(healthy, reason): accepting terminals and a commit went through; reused for
        HTTP_STATE_TTL."""
        async with self._health_lock:
            at, ok, text = self._health
            if trio.current_time() - at < HTTP_STATE_TTL:
                return ok, text
            ok, text = await self._check_health()
            self._health = (trio.current_time(), ok, text)
            return ok, text

    async def _check_health(self) -> tuple[bool, str]:
        if not self.probes.accepting():
            return False, "not accepting terminals"
        started = time.perf_counter()
        try:
            with trio.fail_after(HTTP_HEALTH_TIMEOUT):
                await self.probes.commit()
        except trio.TooSlowError:
            return False, f"no commit within {HTTP_HEALTH_TIMEOUT} s"
        except Exception as exc:  # the store refused: that is the answer
            return False, f"cannot commit: {type(exc).__name__}"
        return True, f"ok: accepting, commit in {(time.perf_counter() - started) * 1000:.1f} ms"

    # ---------------------------------------------------------------- the dashboard's JSON
    def state(self, healthy: bool, health: str) -> dict[str, Any]:
        hub, figures, now = self.hub, self.hub.total(), time.time()
        history = list(hub.history)
        rate = [[round(b.at, 1), round((b.responses - a.responses) / max(b.at - a.at, 1e-6), 2)]
                for a, b in itertools.pairwise(history)]
        last = hub.sample(now, record=False)  # the window ends now, not at the last sample
        first = next((s for s in history if last.at - s.at <= WINDOW_SECONDS), last)
        window: dict[str, Any] = {"seconds": WINDOW_SECONDS}
        if first is not last:
            counts = [b - a for a, b in zip(first.latency, last.latency, strict=True)]
            window |= {f"p{q}_ms": round(quantile(LATENCY_BUCKETS, counts, q / 100) * 1000, 2)
                       for q in (50, 95, 99)}
            financial = last.financial - first.financial
            window["financial"] = financial
            window["approval_rate"] = (round((last.approved - first.approved) / financial, 4)
                                       if financial else None)
            window["rate_per_s"] = round((last.responses - first.responses)
                                         / max(last.at - first.at, 1e-6), 2)
        codes: dict[str, int] = {}
        for (_, code), n in figures.responses.items():
            codes[code] = codes.get(code, 0) + n
        store = hub.store
        seen = sorted(hub.seen.items(), key=lambda kv: kv[1][0], reverse=True)[:TERMINALS_SHOWN]
        return {
            "now": round(now, 3),
            "uptime_s": round(now - hub.started, 1),
            "healthy": healthy, "health": health,
            "workers": hub.workers,
            "connections": figures.connections,
            "answered": sum(figures.responses.values()),
            "approved": last.approved,
            "financial": last.financial,
            "codes": dict(sorted(codes.items())),
            "kinds": {kind: n for kind, n in sorted(figures.requests.items())},
            "window": window,
            "rate": rate,
            "terminals": {
                "online": hub.online(now), "signed_on": store.signed_on,
                "registered": store.terminals,
                "recent": [{"tid": tid, "last_seen": round(at, 3),
                            "age_s": round(now - at, 1), "code": code}
                           for tid, (at, code) in seen]},
            "batches": dict(store.batches) | {"unbalanced": store.unbalanced},
            "exceptions_open": store.exceptions_open,
            "recent_exceptions": store.recent_exceptions,
            "recent_txns": [_masked(row) for row in store.recent_txns],
            "hsm": {"up": hub.hsm_up, "checked": hub.hsm_checked,
                    "commands": sum(h.count for h in figures.hsm_latency.values()),
                    "errors": sum(figures.hsm_errors.values()),
                    "by_command": {c: {"count": h.count, "p99_ms": round(
                        quantile(h.bounds, h.counts, 0.99) * 1000, 3)}
                        for c, h in sorted(figures.hsm_latency.items())}},
            "writer": {"groups": hub.group_size.count,
                       "mean_group": round(hub.group_size.total / hub.group_size.count, 2)
                       if hub.group_size.count else None},
        }


def _masked(row: dict[str, Any]) -> dict[str, Any]:
    """A transaction row with its PAN masked again (defence in depth: it is stored masked)."""
    out = dict(row)
    out["pan_masked"] = mask_pan(out.get("pan_masked") or "")
    return out


async def serve_http(settings: HttpSettings, site: Site, *,
                     task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
                     ) -> None:
    """Listen on ``settings`` and serve ``site`` until cancelled."""
    try:
        listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
    except OSError as exc:
        raise ConfigError(f"cannot listen for HTTP on {settings.host}:{settings.port}:"
                          f" {exc.strerror or exc}") from None
    bound: tuple[str, int] = listeners[0].socket.getsockname()[:2]
    settings.bound = bound
    log.info("dashboard and metrics on http://%s:%d/", *bound)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(site.run)
        nursery.start_soon(HttpServer(site.handle).serve, listeners)
        task_status.started(bound)
