"""Worker processes: ``poshost serve --workers N`` runs the message path (framing, decoding,
MAC and PIN checks through the HSM, encoding) in N processes, each with its own listening
socket on the host's port (SO_REUSEPORT: the kernel spreads new connections evenly; one
shared socket let the first worker to wake take nearly all), in front of the one writer,
which stays in the parent with the store. The parent holds the port with a socket that is
bound but never listens, so no connection waits on it.

Each worker asks the writer for store operations by name (host/ops.py) over a socketpair
(host/ipc.py) and answers its terminal only once the writer has committed, exactly as in one
process. The parent tells every worker to forget a terminal's cached keys when a sign-on or
sign-off changes them. RRNs: worker ``i`` of ``N`` numbers the residue ``i`` mod ``N`` from
the restart base, and reports its high-water mark with each job, which the writer persists.

Failure: a worker that loses the writer (kill -9 of the parent) sees end-of-file on its
channel and exits at once without answering what it holds, so a terminal never sees an
answer that was not committed; it reverses, as in one process. A worker that dies is
started again after WORKER_RESTART_DELAY. (Not PR_SET_PDEATHSIG: trio starts processes from
a cached thread, and that signal fires when the thread ends, not the parent.)

    python -m host.workers '<json config>'   (started by the parent only)
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from host.db import connect
from host.errors import ConfigError, StoreError
from host.hsm import apply_key_type_setting, ensure_pvk, open_hsm
from host.ipc import IPC_RECEIVE_CHUNK, IpcDecoder, IpcError, encode_ipc
from host.ledger import RrnCounter, SharedRrnCounter, persist_rrn_high_water
from host.metrics import METRICS_PUSH_INTERVAL, MeasuredHsm, MetricsHub, ProcessMetrics
from host.ops import KEY_CHANGES, LocalStore
from host.peers import guard_for
from host.pgstore import is_pg
from host.server import Server
from host.service import HostService, TerminalCache
from specs.tls import server_context

log = logging.getLogger("poshost.workers")

WORKER_START_TIMEOUT = 30.0
"""Seconds a worker process gets to say it is ready."""
WORKER_RESTART_DELAY = 1.0
"""Seconds before a worker that died is started again."""
WORKER_STOP_TIMEOUT = 15.0
"""Seconds workers get to drain after SIGTERM before they are killed."""
WORKER_EXIT_GRACE = 5.0
"""Seconds a worker whose channel closed gets to exit by itself before it is killed."""
LISTEN_BACKLOG = 4096
"""Pending connections each worker's listening socket holds (the kernel may cap it)."""
EXIT_WRITER_LOST = 3
"""Exit status of a worker whose writer (the parent) went away."""


class Outbox:
    """Messages for one channel, sent by one task: everything put while it was sending goes
    out in the next single write (a group commit's answers leave together)."""

    def __init__(self, channel: trio.SocketStream) -> None:
        self._channel = channel
        self._pending = bytearray()
        self._wake = trio.Event()

    def put(self, message: tuple[Any, ...]) -> None:
        self._pending += encode_ipc(message)
        self._wake.set()

    async def run(self) -> None:
        """Send until the channel breaks (then return)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            data = bytes(self._pending)
            self._pending.clear()
            try:
                await self._channel.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


# --------------------------------------------------------------------------- the parent


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: the kernel picks one) with SO_REUSEPORT, never
    listening: it holds the port for the workers' listeners across their restarts."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    _share_port(sock)
    sock.bind(address)
    return sock


def _share_port(sock: socket.socket | trio.socket.SocketType) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--workers needs SO_REUSEPORT, which this platform lacks")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


@dataclass
class RrnHighWater:
    """The highest RRN counter value any worker reported; persisted at each commit."""

    value: int = 0

    def seen(self, value: int) -> None:
        self.value = max(self.value, value)

    def persist(self, conn: sqlite3.Connection) -> None:
        if self.value:
            persist_rrn_high_water(conn, self.value)


@dataclass
class WorkerPool:
    """Starts, feeds and stops the worker processes (the parent's side)."""

    count: int
    store: LocalStore
    listen: tuple[str, int]
    """Numeric address and port every worker listens on."""
    settings: dict[str, Any]
    rrn_base: int
    high_water: RrnHighWater
    _outboxes: dict[int, Outbox] = field(default_factory=dict)
    _procs: dict[int, trio.Process] = field(default_factory=dict)
    _stopping: bool = False
    _all_ready: trio.Event = field(default_factory=trio.Event)
    _ready: set[int] = field(default_factory=set)
    _all_listening: trio.Event = field(default_factory=trio.Event)
    _listening: set[int] = field(default_factory=set)
    metrics: MetricsHub | None = None
    """Where the workers' figures add up (``--http``); they send them when set."""

    @property
    def ready_count(self) -> int:
        """Workers running and ready (for the health check)."""
        return len(self._ready)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Start every worker; once all are ready, let them listen at the same moment (a
        worker that listened early would be handed every connection of a starting fleet)."""
        async with trio.open_nursery() as nursery:
            for index in range(self.count):
                await nursery.start(self._keep_running, index)
            self._all_ready.set()
            with trio.fail_after(WORKER_START_TIMEOUT):
                await self._all_listening.wait()  # "ready" means terminals can connect
            task_status.started()

    async def stop(self) -> None:
        """SIGTERM every worker (each drains its connections), wait, then kill stragglers."""
        self._stopping = True
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(WORKER_STOP_TIMEOUT):
            for proc in list(self._procs.values()):
                await proc.wait()
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.kill()

    async def _keep_running(self, index: int, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                            ) -> None:
        first = True
        while not self._stopping:
            ready = False
            try:
                ready = await self._run_one(
                    index, task_status if first else trio.TASK_STATUS_IGNORED)
            except OSError as exc:  # could not start the process
                log.error("worker %d: %s", index, exc)
            if first and not ready:
                raise ConfigError(f"worker {index} did not start (see the lines above)")
            first = False
            if self._stopping:
                return
            log.error("worker %d exited; starting it again in %g s", index,
                      WORKER_RESTART_DELAY)
            await trio.sleep(WORKER_RESTART_DELAY)

    async def _run_one(self, index: int, task_status: trio.TaskStatus[None]) -> bool:
        """Run one worker process until it ends; whether it got as far as ready."""
        ours, theirs = socket.socketpair()
        config = dict(self.settings, index=index, count=self.count, rrn_base=self.rrn_base,
                      listen=list(self.listen), channel_fd=theirs.fileno())
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "host.workers", json.dumps(config)],
                pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        channel = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        self._procs[index] = proc
        outbox = self._outboxes[index] = Outbox(channel)
        try:
            async with trio.open_nursery() as jobs:
                jobs.start_soon(outbox.run)
                ready = await self._serve_channel(index, channel, jobs, task_status)
                jobs.cancel_scope.cancel()  # the worker is gone: its jobs' answers too
        finally:
            self._outboxes.pop(index, None)
            self._ready.discard(index)
            if self.metrics is not None:
                self.metrics.retire(index)  # its counters stay in the totals
            with trio.CancelScope(shield=True):
                await channel.aclose()
                with trio.move_on_after(WORKER_EXIT_GRACE):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
            log.info("worker %d (pid %d) ended with status %s", index, proc.pid,
                     proc.returncode)
        return ready

    async def _serve_channel(self, index: int, channel: trio.SocketStream,
                             jobs: trio.Nursery, task_status: trio.TaskStatus[None]) -> bool:
        """Dispatch the worker's messages until its channel closes; whether it was ready."""
        try:
            return await self._dispatch(index, channel, jobs, task_status)
        except (trio.TooSlowError, IpcError) as exc:  # not ready in time, or a garbled channel
            log.error("worker %d: %s; stopping it", index, exc or "not ready in time")
            return index in self._ready

    async def _dispatch(self, index: int, channel: trio.SocketStream, jobs: trio.Nursery,
                        task_status: trio.TaskStatus[None]) -> bool:
        decoder = IpcDecoder()
        started = False
        self._ready.discard(index)
        with trio.fail_after(WORKER_START_TIMEOUT) as start_scope:
            while True:
                try:
                    data = await channel.receive_some(IPC_RECEIVE_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    return started
                decoder.feed(data)
                for message in decoder:
                    if message[0] == "job":
                        jobs.start_soon(self._job, index, message)
                    elif message[0] == "listening":
                        self._listening.add(index)
                        if len(self._listening) == self.count:
                            self._all_listening.set()
                    elif message[0] == "metrics" and self.metrics is not None:
                        self.metrics.worker_figures(index, message[1], message[2])
                    elif message[0] == "ready" and not started:
                        started = True
                        self._ready.add(index)
                        start_scope.deadline = float("inf")
                        log.info("worker %d ready (pid %d)", index, self._procs[index].pid)
                        jobs.start_soon(self._let_listen, index)
                        task_status.started()

    async def _let_listen(self, index: int) -> None:
        await self._all_ready.wait()
        self._send(index, ("listen",))

    async def _job(self, index: int, message: tuple[Any, ...]) -> None:
        _, job_id, op, args, high_water = message
        self.high_water.seen(high_water)
        try:
            reply: tuple[Any, ...] = ("done", job_id, await self.store.apply(op, *args))
        except Exception as exc:
            reply = ("fail", job_id, f"{type(exc).__name__}: {exc}")
        if op in KEY_CHANGES and reply[0] == "done":
            for other in list(self._outboxes):
                if other != index:
                    self._send(other, ("forget", args[0]))
        self._send(index, reply)

    def _send(self, index: int, message: tuple[Any, ...]) -> None:
        outbox = self._outboxes.get(index)
        if outbox is not None:  # else that worker is gone; its terminals will reverse
            outbox.put(message)


# --------------------------------------------------------------------------- a worker


async def open_shared_listener(host: str, port: int) -> trio.SocketListener:
    """This worker's own listening socket on the host's port (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    _share_port(sock)
    await sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    return trio.SocketListener(sock)


class RemoteStore:
    """The worker's side of the channel: store operations by name, answered by the writer."""

    def __init__(self, channel: trio.SocketStream, rrns: RrnCounter) -> None:
        self._channel = channel
        self._rrns = rrns
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[Any]]] = {}
        self.outbox = Outbox(channel)
        self.may_listen = trio.Event()

    async def apply(self, op: str, *args: Any) -> Any:
        job_id = next(self._ids)
        done, outcome = trio.Event(), []
        self._waiting[job_id] = (done, outcome)
        try:
            self.outbox.put(("job", job_id, op, args, self._rrns.high_water))
            await done.wait()
        finally:
            self._waiting.pop(job_id, None)
        kind, value = outcome
        if kind == "fail":
            raise StoreError(f"writer: {value}")
        return value

    def say_ready(self, index: int) -> None:
        self.outbox.put(("ready", index))

    def say_listening(self, index: int) -> None:
        self.outbox.put(("listening", index))

    async def receive(self, terminals: TerminalCache) -> None:
        """Deliver answers and invalidations until the writer goes away, then exit the
        process at once: what this worker holds must not be answered."""
        decoder = IpcDecoder()
        while True:
            try:
                data = await self._channel.receive_some(IPC_RECEIVE_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                log.error("the writer process went away; exiting without answering")
                os._exit(EXIT_WRITER_LOST)
            decoder.feed(data)
            for message in decoder:
                if message[0] == "forget":
                    terminals.forget(message[1])
                    continue
                if message[0] == "listen":
                    self.may_listen.set()
                    continue
                waiting = self._waiting.get(message[1])
                if waiting is not None:
                    waiting[1].extend((message[0], message[2]))
                    waiting[0].set()


async def _send_metrics(outbox: Outbox, metrics: ProcessMetrics) -> None:
    """A copy of this worker's figures to the parent every METRICS_PUSH_INTERVAL."""
    while True:
        await trio.sleep(METRICS_PUSH_INTERVAL)
        outbox.put(("metrics", metrics.copy(), metrics.take_seen()))


async def _stop_on_signal(stop: trio.Event) -> None:
    """SIGTERM (from the parent) drains this worker. SIGINT is ignored: a Ctrl-C reaches the
    whole process group, and the parent decides when its workers stop."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


async def serve_worker(config: dict[str, Any]) -> None:
    """A worker's life: HSM, read connection, service, and the shared listeners."""
    channel = trio.SocketStream(trio.socket.from_stdlib_socket(
        socket.socket(fileno=config["channel_fd"])))
    conn = connect(config["db_path"] if is_pg(config["db_path"]) else Path(config["db_path"]))
    try:
        async with open_hsm(config["hsm"], config["lmk"]) as (hsm, _):
            apply_key_type_setting(conn, hsm)
            pvk = await ensure_pvk(conn, hsm)  # the parent made it: this only reads
            rrns = SharedRrnCounter(config["db_path"]) if is_pg(config["db_path"]) else \
                RrnCounter(config["rrn_base"], step=config["count"], offset=config["index"])
            store = RemoteStore(channel, rrns)
            guard = guard_for(config.get("allow_peers", ()), config.get("terminal_peers", ()),
                              config.get("serial_lines", ()),
                              config.get("enforce_terminal_peers", False))
            metrics = ProcessMetrics() if config.get("metrics") else None
            service = HostService(MeasuredHsm(hsm, metrics) if metrics else hsm, store, rrns,
                                  conn, pvk, guard, metrics=metrics)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                if metrics is not None:
                    nursery.start_soon(_send_metrics, store.outbox, metrics)
                nursery.start_soon(store.receive, service.terminals)
                nursery.start_soon(store.outbox.run)  # a broken channel: receive() exits
                nursery.start_soon(_stop_on_signal, stop)
                store.say_ready(config["index"])
                await store.may_listen.wait()
                listener = await open_shared_listener(*config["listen"])
                tls = config.get("tls")
                tls_listeners = [await open_shared_listener(*tls["listen"])] if tls else []
                context = server_context(tls["cert"], tls["key"], tls["client_ca"]) if tls \
                    else None
                server = Server(service, admission_share=1 / config["count"], guard=guard,
                                bind_tls_tid=bool(tls and tls.get("bind_tid")))
                store.say_listening(config["index"])
                await server.serve([listener], stop, tls_listeners=tls_listeners,
                                   tls_context=context)  # returns once drained
                nursery.cancel_scope.cancel()
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = json.loads((argv if argv is not None else sys.argv[1:])[0])
    logging.basicConfig(level=config.get("log_level", logging.INFO),
                        format=f"%(asctime)s %(levelname)s %(name)s[w{config['index']}]"
                               " %(message)s")
    logging.getLogger("hsm_sim.audit").setLevel(logging.WARNING)
    trio.run(serve_worker, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
