"""Wiring of the running host: configuration, store, HSM, writer, service and server, all in
one nursery. ``run_host`` serves until cancelled or until ``stop`` is set (graceful)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import trio

from host.bridge import serve_serial_lines
from host.db import PanProtector, open_store
from host.hsm import check_lmk, ensure_pvk, open_hsm
from host.ledger import Ledger, RrnCounter
from host.ops import LocalStore
from host.server import Server
from host.service import HostService
from host.writer import Writer

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
            rrns = RrnCounter.load(conn)
            writer = Writer(Path(config.db_path), before_commit=rrns.persist)
            store = LocalStore(writer, Ledger(PanProtector.load(conn)))
            service = HostService(hsm, store, rrns, conn, pvk)
            listeners = await trio.open_tcp_listeners(config.listen_port,
                                                      host=config.listen_host)
            host, port = listeners[0].socket.getsockname()[:2]
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                await nursery.start(serve_serial_lines, config.serial_lines, host, port)
                log.info("listening on %s:%d (%s)", host, port, info.description)
                task_status.started((host, port))
                await Server(service).serve(listeners, stop)
                nursery.cancel_scope.cancel()  # connections drained: stop the writer
    finally:
        conn.close()

