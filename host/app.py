"""Wiring of the running host: configuration, store, HSM, writer, service and server, all in
one nursery. ``run_host`` serves until cancelled or until ``stop`` is set (graceful)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from host.bridge import serve_serial_lines
from host.db import PanProtector, is_shared, open_store
from host.errors import ConfigError
from host.exclusive import claim_address, probe_free
from host.hsm import check_lmk, ensure_pvk, open_hsm
from host.ledger import Ledger, RrnCounter, rrn_counter_for
from host.metrics import MeasuredHsm, MetricsHub, ProcessMetrics
from host.observe import HttpSettings, Probes, Site, serve_http
from host.ops import LocalStore
from host.pcap import open_tap
from host.peers import PeerGuard, guard_for
from host.server import Server
from host.service import HostService
from host.workers import RrnHighWater, WorkerPool, reserve_port
from host.writer import Writer
from hsm_sim.client import HsmClient
from specs.tls import TlsError, server_context

log = logging.getLogger("poshost")


@dataclass
class TlsListen:
    """A TLS listener for terminals (``serve --listen-tls``), beside the plain one."""

    host: str
    port: int
    cert: Path
    key: Path
    client_ca: Path | None = None
    """With a client CA, terminals must present a certificate it issued (mutual TLS)."""
    bind_tid: bool = False
    """Each connection's requests must be for the TID its client certificate names (CN)."""
    bound: tuple[str, int] | None = None
    """Filled by ``run_host`` once listening (port 0 picks a free port)."""

    def context(self) -> ssl.SSLContext:
        try:
            return server_context(self.cert, self.key, self.client_ca)
        except TlsError as exc:
            raise ConfigError(f"TLS: {exc}") from None


@dataclass
class HostConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 5000
    db_path: Path = Path("poshost.db")
    hsm: str = "embedded"
    lmk: str = "test"
    serial_lines: tuple[str, ...] = ()
    """Serial line specs (shared.serialline.LineSettings) served as terminal connections."""
    workers: int = 0
    """Worker processes for the message path (host/workers.py); 0: all in this process."""
    tls: TlsListen | None = None
    """A TLS listener beside the plain one (served by every worker with --workers N)."""
    pcap: Path | None = None
    """Write every frame of every terminal connection to this pcap file (serve --pcap)."""
    allow_peers: tuple[str, ...] = ()
    """Terminal source addresses/networks allowed to connect (empty: any; host/peers.py)."""
    terminal_peers: tuple[str, ...] = ()
    """``TID=CIDR`` declarations: management traffic for TID from elsewhere is alerted."""
    enforce_terminal_peers: bool = False
    """... and, when set, not answered (the connection is closed)."""

    def peer_guard(self) -> PeerGuard | None:
        """The peer guard for these settings, or None when the operator set none."""
        return guard_for(self.allow_peers, self.terminal_peers, self.serial_lines,
                         self.enforce_terminal_peers)
    http: HttpSettings | None = None
    """The observability site (metrics, dashboard, health; host/observe.py); None: off."""
    h2h_listen: tuple[str, int] | None = None
    """Upstream role: accept host-to-host links from acquirers here (host/upstream.py)."""
    h2h_bound: tuple[str, int] | None = None
    """Filled by ``run_host`` once the h2h listener is up (port 0 picks a free port)."""


async def run_host(config: HostConfig, *,
                   task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
                   stop: trio.Event | None = None) -> None:
    """Serve until cancelled (abrupt) or until ``stop`` is set (drain, then return).

    ``task_status.started((host, port))`` once listening; port 0 picks a free port.
    """
    stop = stop if stop is not None else trio.Event()
    if config.workers and config.h2h_listen is not None:
        raise ConfigError("--h2h-listen works with --workers 0 only, for now")
    if config.workers and config.pcap is not None:
        raise ConfigError("--pcap works with --workers 0 only, for now")
    with contextlib.ExitStack() as claims:  # one host per address, TLS address included
        claims.enter_context(claim_address(config.listen_host, config.listen_port))
        if config.tls is not None:
            claims.enter_context(claim_address(config.tls.host, config.tls.port))
        await _run_host(config, task_status, stop)


async def _run_host(config: HostConfig, task_status: trio.TaskStatus[tuple[str, int]],
                    stop: trio.Event) -> None:
    tls_context = config.tls.context() if config.tls is not None else None
    conn = open_store(config.db_path)
    try:
        async with open_hsm(config.hsm, config.lmk) as (hsm, info):
            await check_lmk(conn, hsm)
            pvk = await ensure_pvk(conn, hsm)
            if config.workers:
                from host.routestore import load_routes

                if load_routes(conn):
                    log.warning("routes are not used with --workers N yet: off-us cards are"
                                " answered by this host's issuer simulator (14)")
                await _run_pool(config, conn, stop, task_status, hsm=hsm)
                return
            try:
                listeners = await trio.open_tcp_listeners(config.listen_port,
                                                          host=config.listen_host)
            except OSError as exc:
                raise _cannot_listen(config, exc) from None
            host, port = listeners[0].socket.getsockname()[:2]
            tls_listeners = await _open_tls_listeners(config.tls)
            rrns = rrn_counter_for(config.db_path, conn)
            writer = Writer(config.db_path, before_commit=rrns.persist)
            store = LocalStore(writer, Ledger(PanProtector.load(conn)))
            guard = config.peer_guard()
            metrics = ProcessMetrics() if config.http else None
            service = HostService(MeasuredHsm(hsm, metrics) if metrics else hsm, store, rrns,
                                  conn, pvk, guard, metrics=metrics)
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                if metrics is not None:
                    await _start_http(config, nursery, MetricsHub(metrics), writer, Probes(
                        lambda: not stop.is_set(), lambda: writer.submit(_noop),
                        hsm.lmk_check_value))
                await nursery.start(serve_serial_lines, config.serial_lines, host, port)
                await _start_routing(config, nursery, service, hsm, writer, store, conn, pvk)
                log.info("listening on %s:%d (%s)", host, port, info.description)
                if config.tls is not None and config.tls.bound is not None:
                    log.info("listening for TLS on %s:%d%s", *config.tls.bound,
                             " (mutual TLS)" if config.tls.client_ca else "")
                task_status.started((host, port))
                bind = config.tls is not None and config.tls.bind_tid
                with open_tap(config.pcap) as tap:
                    await Server(service, tap=tap, guard=guard, bind_tls_tid=bind).serve(
                        listeners, stop, tls_listeners=tls_listeners, tls_context=tls_context)
                nursery.cancel_scope.cancel()  # connections drained: stop the writer
    finally:
        conn.close()


async def _run_pool(config: HostConfig, conn: sqlite3.Connection, stop: trio.Event,
                    task_status: trio.TaskStatus[tuple[str, int]], *,
                    hsm: HsmClient | None = None) -> None:
    """The writer here; the message path in ``config.workers`` processes listening on the
    same port (host/workers.py)."""
    probe_free(config.listen_host, config.listen_port)  # SO_REUSEPORT would join another host
    try:
        held = reserve_port(config.listen_host, config.listen_port)
    except OSError as exc:
        raise _cannot_listen(config, exc) from None
    with contextlib.ExitStack() as holding:
        holding.enter_context(held)
        bound: tuple[str, int] = held.getsockname()[:2]
        if config.tls is not None:
            probe_free(config.tls.host, config.tls.port)
            try:
                held_tls = reserve_port(config.tls.host, config.tls.port)
            except OSError as exc:
                raise ConfigError(f"cannot listen for TLS on {config.tls.host}:"
                                  f"{config.tls.port}: {exc.strerror or exc}") from None
            holding.enter_context(held_tls)
            config.tls.bound = held_tls.getsockname()[:2]
        await _serve_pool(config, conn, bound, stop, task_status, hsm=hsm)


async def _serve_pool(config: HostConfig, conn: sqlite3.Connection, bound: tuple[str, int],
                      stop: trio.Event, task_status: trio.TaskStatus[tuple[str, int]],
                      *, hsm: HsmClient | None = None) -> None:
    high_water = RrnHighWater()
    writer = Writer(config.db_path, before_commit=high_water.persist)
    pool = WorkerPool(
        config.workers, LocalStore(writer, Ledger(PanProtector.load(conn))),
        bound,
        {"db_path": str(config.db_path), "hsm": config.hsm, "lmk": config.lmk,
         "allow_peers": config.allow_peers, "terminal_peers": config.terminal_peers,
         "enforce_terminal_peers": config.enforce_terminal_peers,
         "serial_lines": config.serial_lines,
         "log_level": logging.getLogger().getEffectiveLevel(), "tls": _tls_settings(config),
         "metrics": bool(config.http)},
        0 if is_shared(conn) else RrnCounter.restart_base(conn), high_water)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        if config.http and hsm is not None:
            pool.metrics = MetricsHub(ProcessMetrics(), config.workers)
            await _start_http(config, nursery, pool.metrics, writer, Probes(
                lambda: not stop.is_set() and pool.ready_count > 0,
                lambda: writer.submit(_noop), hsm.lmk_check_value))
        await nursery.start(pool.run)
        await nursery.start(serve_serial_lines, config.serial_lines, *bound)
        log.info("listening on %s:%d with %d worker processes", *bound, config.workers)
        if config.tls is not None and config.tls.bound is not None:
            log.info("listening for TLS on %s:%d%s", *config.tls.bound,
                     " (mutual TLS)" if config.tls.client_ca else "")
        task_status.started(bound)
        await stop.wait()
        await pool.stop()  # each worker drains its connections
        nursery.cancel_scope.cancel()


async def _start_routing(config: HostConfig, nursery: trio.Nursery, service: HostService,
                         hsm: HsmClient, writer: Writer, store: LocalStore,
                         conn: sqlite3.Connection, pvk: str) -> None:
    """Links to the configured routes (acquirer side) and the h2h listener (upstream)."""
    from host.router import Router
    from host.upstream import UpstreamService

    router = Router(hsm, writer, store.ledger, conn, config.db_path)
    await nursery.start(router.run)  # routes added later are picked up within a second
    service.router = router
    if config.h2h_listen is not None:
        upstream = UpstreamService(hsm, writer, conn, pvk)
        config.h2h_bound = await nursery.start(upstream.serve, *config.h2h_listen)


def _tls_settings(config: HostConfig) -> dict[str, Any] | None:
    """What a worker process needs to serve the TLS listener (paths, not the context)."""
    tls = config.tls
    if tls is None or tls.bound is None:
        return None
    return {"listen": list(tls.bound), "cert": str(tls.cert), "key": str(tls.key),
            "client_ca": str(tls.client_ca) if tls.client_ca else None,
            "bind_tid": tls.bind_tid}


async def _open_tls_listeners(tls: TlsListen | None) -> list[trio.SocketListener]:
    if tls is None:
        return []
    try:
        listeners = await trio.open_tcp_listeners(tls.port, host=tls.host)
    except OSError as exc:
        raise ConfigError(f"cannot listen for TLS on {tls.host}:{tls.port}:"
                          f" {exc.strerror or exc}") from None
    tls.bound = listeners[0].socket.getsockname()[:2]
    return listeners


async def _start_http(config: HostConfig, nursery: trio.Nursery, hub: MetricsHub,
                      writer: Writer, probes: Probes) -> None:
    assert config.http is not None
    writer.on_group = hub.writer_group
    await nursery.start(serve_http, config.http, Site(hub, _site_db(config.db_path), probes))


def _site_db(db_path: Path | str) -> Path | str:
    from host.pgstore import is_pg
    return db_path if is_pg(db_path) else Path(db_path)


def _noop(conn: sqlite3.Connection) -> None:
    """The health check's job: an empty transaction, committed like any other."""


def _cannot_listen(config: HostConfig, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot listen on {config.listen_host}:{config.listen_port}:"
                       f" {exc.strerror or exc}")
