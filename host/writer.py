"""The one writer: every SQLite write of the message path goes through here, in groups.

Submitters hand in a job (a function of the connection, run inside the group's transaction)
and wait. The writer takes everything pending, applies each job under its own savepoint (a
failing job is rolled back alone and its submitter gets the error), commits once
(WAL, synchronous=FULL: durable when COMMIT returns), and only then releases the submitters.
So a response is never sent for an outcome that is not on disk, and one fsync serves many
transactions.

Where the jobs run: COMMIT (the fsync) always runs on a worker thread. BEGIN IMMEDIATE is
tried on the event loop without waiting (busy timeout 0); only when another process holds
the write lock (a CLI command provisioning while the host serves) is it retried on the
worker thread, which may wait up to BUSY_TIMEOUT_MS. Light jobs (one request's rows: a sale, a
sign-on) run on the event loop thread in between, yielding every few jobs: they are a few
SQLite statements each, and running them on a second Python thread cost more in GIL hand-offs
(every statement releases the GIL) than the work itself. A group with a heavy job (settlement,
batch upload) runs wholly on the worker thread. The connection is only ever used by one thread
at a time: the writer task awaits each thread hop.

On PostgreSQL (``--db postgresql://``, host/pgstore.py) every statement is a round trip to
the server, so a group always runs on the worker thread (BEGIN, the jobs, COMMIT: one thread
hop per group rather than one per statement on the event loop). Other instances write the same
database; the ledger takes a per-terminal advisory lock and row locks (cards, a refunded
sale) that are held until the group commits, so two groups on two instances can deadlock:
PostgreSQL then fails one of them, and the writer rolls that group back and applies it again
(GROUP_RETRIES), which is safe because nothing of it was committed or answered.

Intent for a later performance pass: keep the hot ledger state (open batches, idempotence
keys of the open batch, card balances) in memory and journal each group with one
``executemany`` per table on either store; jobs are already functions of one connection and
the group is the unit of durability, so that change stays inside this module and
host/ledger.py.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio

from host.db import BUSY_TIMEOUT_MS, Conn, connect, is_shared
from host.errors import StoreError
from host.limits import WRITER_MAX_GROUP, WRITER_QUEUE
from host.pgstore import Retry

log = logging.getLogger("poshost.writer")
T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]


INLINE_YIELD_EVERY = 16
"""Light jobs applied on the event loop between two yields to the other tasks."""
GROUP_RETRIES = 5
"""Times a group another instance's locks deadlocked is applied again (PostgreSQL)."""


@dataclass
class _Pending(Generic[T]):
    job: Job[T]
    inline: bool = True
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


class Writer:
    """Group-committing writer task. Start with ``await nursery.start(writer.run)``."""

    def __init__(self, db_path: Path | str, before_commit: Callable[[Conn], None]
                 | None = None) -> None:
        self.db_path = db_path
        self.before_commit = before_commit
        self._send, self._recv = trio.open_memory_channel[_Pending[Any]](WRITER_QUEUE)
        self._conn: Conn | None = None
        self._shared = False
        self._released = True
        """No job savepoint is open (PostgreSQL: see _apply_one)."""
        self.retries = 0
        """Groups applied again after a deadlock with another instance (PostgreSQL)."""
        self.groups = 0
        self.jobs = 0
        self.on_group: Callable[[int, float], None] | None = None
        """Called after each group with its size and seconds to apply and commit (metrics)."""

    async def submit(self, job: Job[T], *, heavy: bool = False) -> T:
        """Apply ``job`` in the next group; return its result once committed. A ``heavy``
        job (one that may take milliseconds) is kept off the event loop thread."""
        pending: _Pending[T] = _Pending(job, inline=not heavy)
        await self._send.send(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._conn = connect(self.db_path, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=0")  # see _begin
        self._shared = is_shared(self._conn)
        try:
            task_status.started()
            while True:
                group = [await self._recv.receive()]
                while len(group) < WRITER_MAX_GROUP:
                    try:
                        group.append(self._recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                started = time.perf_counter()
                if not self._shared and all(p.inline for p in group):
                    await self._apply_inline(group)
                else:
                    await trio.to_thread.run_sync(self._apply_group, group)
                if self.on_group is not None:
                    self.on_group(len(group), time.perf_counter() - started)
                for pending in group:
                    pending.done.set()
        finally:
            self._conn.close()

    async def _apply_inline(self, group: list[_Pending[Any]]) -> None:
        """_apply_group with BEGIN and COMMIT on a worker thread, the jobs on this one."""
        conn = self._conn
        assert conn is not None
        try:
            await self._begin(conn)
            for done, pending in enumerate(group, 1):
                self._apply_one(conn, pending)
                if done % INLINE_YIELD_EVERY == 0:
                    await trio.lowlevel.cancel_shielded_checkpoint()
            if self.before_commit is not None:
                self.before_commit(conn)
            await trio.to_thread.run_sync(conn.execute, "COMMIT")
        except sqlite3.Error as exc:
            self._fail(conn, group, exc)
            return
        self.groups += 1
        self.jobs += len(group)

    @staticmethod
    async def _begin(conn: Conn) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")  # never waits: busy timeout 0
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            await trio.to_thread.run_sync(_begin_waiting, conn)

    def _apply_group(self, group: list[_Pending[Any]]) -> None:
        conn = self._conn
        assert conn is not None
        for attempt in range(GROUP_RETRIES + 1):
            try:
                _begin_waiting(conn)
                self._released = True
                for pending in group:
                    self._apply_one(conn, pending, first=self._released)
                if self.before_commit is not None:
                    self.before_commit(conn)
                conn.execute("COMMIT")
            except Retry as exc:
                if attempt == GROUP_RETRIES:
                    self._fail(conn, group, exc)
                    return
                log.warning("group deadlocked with another instance, applied again: %s", exc)
                self.retries += 1
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                for pending in group:
                    pending.result, pending.error = None, None
                continue
            except sqlite3.Error as exc:
                self._fail(conn, group, exc)
                return
            break
        self.groups += 1
        self.jobs += len(group)

    @staticmethod
    def _fail(conn: Conn, group: list[_Pending[Any]], exc: sqlite3.Error) -> None:
        log.error("group commit failed: %s", exc)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        for pending in group:
            pending.result = None
            pending.error = StoreError(f"store failure: {exc}")

    def _apply_one(self, conn: Conn, pending: _Pending[Any], first: bool = True) -> None:
        """The job under its own savepoint. On PostgreSQL a job that succeeded leaves its
        savepoint for the next job to release in the same round trip (``RELEASE job;
        SAVEPOINT job``), and COMMIT releases the last: one round trip per job fewer."""
        shared = self._shared
        conn.execute("SAVEPOINT job" if first or not shared else "RELEASE job; SAVEPOINT job")
        try:
            pending.result = pending.job(conn)
        except Retry:
            raise  # the whole group again (another instance's locks)
        except Exception as exc:
            conn.execute("ROLLBACK TO job")
            log.exception("job failed and was rolled back")
            pending.error = exc
            if shared:
                conn.execute("RELEASE job")
                self._released = True
                return
        if shared:
            self._released = False
            return
        conn.execute("RELEASE job")

    @property
    def mean_group(self) -> float:
        return self.jobs / self.groups if self.groups else math.nan


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY or \
        "locked" in str(exc)


def _begin_waiting(conn: Conn) -> None:
    """BEGIN IMMEDIATE waiting up to BUSY_TIMEOUT_MS for another process's write lock."""
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute("PRAGMA busy_timeout=0")
