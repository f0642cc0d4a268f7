"""Wiring of the running host: configuration, store, HSM, writer, service and server, all in
one nursery. ``run_host`` serves until cancelled or until ``stop`` is set (graceful)."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import trio

from host.bridge import serve_serial_lines
from host.db import PanProtector, open_store
from host.errors import ConfigError
from host.hsm import check_lmk, ensure_pvk, open_hsm
from host.ledger import Ledger, RrnCounter
from host.metrics import MeasuredHsm, MetricsHub, ProcessMetrics
from host.observe import HttpSettings, Probes, Site, serve_http
from host.ops import LocalStore
from host.server import Server
from host.service import HostService
from host.workers import RrnHighWater, WorkerPool, reserve_port
from host.writer import Writer
from hsm_sim.client import HsmClient

log = logging.getLogger("poshost")


@dataclass
class HostConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 5000
    db_path: Path = Path("poshost.db")
    hsm: str = "embedded"
    lmk: str = "test"
    serial_lines: tuple[str, ...] = ()
    """Serial line specs (host.serialline.LineSettings) served as terminal connections."""
    workers: int = 0
    """Worker processes for the message path (host/workers.py); 0: all in this process."""
    http: HttpSettings | None = None
    """The observability site (metrics, dashboard, health; host/observe.py); None: off."""


async def run_host(config: HostConfig, *,
                   task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
                   stop: trio.Event | None = None) -> None:
    """Serve until cancelled (abrupt) or until ``stop`` is set (drain, then return).

    ``task_status.started((host, port))`` once listening; port 0 picks a free port.
    """
    stop = stop if stop is not None else trio.Event()
    conn = open_store(config.db_path)
    try:
        async with open_hsm(config.hsm, config.lmk) as (hsm, info):
            await check_lmk(conn, hsm)
            pvk = await ensure_pvk(conn, hsm)
            if config.workers:
                await _run_pool(config, conn, stop, task_status, hsm=hsm)
                return
            try:
                listeners = await trio.open_tcp_listeners(config.listen_port,
                                                          host=config.listen_host)
            except OSError as exc:
                raise _cannot_listen(config, exc) from None
            host, port = listeners[0].socket.getsockname()[:2]
            rrns = RrnCounter.load(conn)
            writer = Writer(Path(config.db_path), before_commit=rrns.persist)
            store = LocalStore(writer, Ledger(PanProtector.load(conn)))
            metrics = ProcessMetrics() if config.http else None
            service = HostService(MeasuredHsm(hsm, metrics) if metrics else hsm, store, rrns,
                                  conn, pvk, metrics=metrics)
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                if metrics is not None:
                    await _start_http(config, nursery, MetricsHub(metrics), writer, Probes(
                        lambda: not stop.is_set(), lambda: writer.submit(_noop),
                        hsm.lmk_check_value))
                await nursery.start(serve_serial_lines, config.serial_lines, host, port)
                log.info("listening on %s:%d (%s)", host, port, info.description)
                task_status.started((host, port))
                await Server(service).serve(listeners, stop)
                nursery.cancel_scope.cancel()  # connections drained: stop the writer
    finally:
        conn.close()


async def _run_pool(config: HostConfig, conn: sqlite3.Connection, stop: trio.Event,
                    task_status: trio.TaskStatus[tuple[str, int]], *,
                    hsm: HsmClient | None = None) -> None:
    """The writer here; the message path in ``config.workers`` processes listening on the
    same port (host/workers.py)."""
    try:
        held = reserve_port(config.listen_host, config.listen_port)
    except OSError as exc:
        raise _cannot_listen(config, exc) from None
    with held:
        bound: tuple[str, int] = held.getsockname()[:2]
        await _serve_pool(config, conn, bound, stop, task_status, hsm=hsm)


async def _serve_pool(config: HostConfig, conn: sqlite3.Connection, bound: tuple[str, int],
                      stop: trio.Event, task_status: trio.TaskStatus[tuple[str, int]],
                      *, hsm: HsmClient | None = None) -> None:
    high_water = RrnHighWater()
    writer = Writer(Path(config.db_path), before_commit=high_water.persist)
    pool = WorkerPool(
        config.workers, LocalStore(writer, Ledger(PanProtector.load(conn))),
        bound,
        {"db_path": str(config.db_path), "hsm": config.hsm, "lmk": config.lmk,
         "log_level": logging.getLogger().getEffectiveLevel(), "metrics": bool(config.http)},
        RrnCounter.restart_base(conn), high_water)
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
        task_status.started(bound)
        await stop.wait()
        await pool.stop()  # each worker drains its connections
        nursery.cancel_scope.cancel()


async def _start_http(config: HostConfig, nursery: trio.Nursery, hub: MetricsHub,
                      writer: Writer, probes: Probes) -> None:
    assert config.http is not None
    writer.on_group = hub.writer_group
    await nursery.start(serve_http, config.http, Site(hub, Path(config.db_path), probes))


def _noop(conn: sqlite3.Connection) -> None:
    """The health check's job: an empty transaction, committed like any other."""


def _cannot_listen(config: HostConfig, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot listen on {config.listen_host}:{config.listen_port}:"
                       f" {exc.strerror or exc}")
