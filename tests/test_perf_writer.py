"""The group-commit writer after its fast path: light jobs on the event loop thread, heavy ones
and BEGIN/COMMIT on a worker thread. Same promises: a submitter is released only once its
group is committed (visible to another connection), a failing job is rolled back alone, a
failing commit fails the whole group."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from host.db import connect
from host.errors import StoreError
from host.writer import Writer


def _store(tmp_path: Path) -> Path:
    db = tmp_path / "w.db"
    conn = connect(db)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    conn.close()
    return db


def _rows(db: Path) -> dict[int, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT k, v FROM t").fetchall())
    finally:
        conn.close()


async def test_jobs_commit_before_release_and_a_failing_job_rolls_back_alone(
        tmp_path: Path) -> None:
    db = _store(tmp_path)
    writer = Writer(db)
    seen: dict[int, object] = {}
    threads: dict[str, set[int]] = {"light": set(), "heavy": set(), "mixed": set()}

    def insert(k: int, heavy: bool = False):
        def job(c: sqlite3.Connection) -> int:
            phase = "heavy" if heavy else "light" if k < 40 else "mixed"
            threads[phase].add(threading.get_ident())
            c.execute("INSERT INTO t VALUES (?, ?)", (k, f"v{k}"))
            if k % 7 == 3:
                raise ValueError(f"job {k} fails after writing")
            return k
        return job

    async def one(k: int, heavy: bool = False) -> None:
        try:
            seen[k] = await writer.submit(insert(k, heavy), heavy=heavy)
            assert k in _rows(db)  # committed before the submitter is released
        except ValueError as exc:
            seen[k] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as clients:  # light jobs only
            for k in range(40):
                clients.start_soon(one, k)
        async with trio.open_nursery() as clients:  # groups with a heavy job
            for k in range(40, 60):
                clients.start_soon(one, k, k % 5 == 0)
        nursery.cancel_scope.cancel()
    rows = _rows(db)
    for k in range(60):
        if k % 7 == 3:
            assert isinstance(seen[k], ValueError) and k not in rows
        else:
            assert seen[k] == k and rows[k] == f"v{k}"
    assert threads["light"] == {threading.get_ident()}
    assert threading.get_ident() not in threads["heavy"]
    assert writer.groups < 60  # grouped


@pytest.mark.parametrize("heavy", [False, True])
async def test_a_failing_commit_fails_the_whole_group(tmp_path: Path, heavy: bool) -> None:
    db = _store(tmp_path)

    def refuse(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    writer = Writer(db, before_commit=refuse)
    outcomes: list[BaseException | None] = []

    async def one(k: int) -> None:
        try:
            await writer.submit(lambda c: c.execute("INSERT INTO t VALUES (?, 'x')", (k,)),
                                heavy=heavy)
            outcomes.append(None)
        except StoreError as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as clients:
            for k in range(10):
                clients.start_soon(one, k)
        nursery.cancel_scope.cancel()
    assert len(outcomes) == 10 and all(isinstance(o, StoreError) for o in outcomes)
    assert _rows(db) == {}


async def test_another_process_holding_the_write_lock_delays_the_writer_not_the_loop(
        tmp_path: Path) -> None:
    db = _store(tmp_path)
    writer = Writer(db)
    blocker = sqlite3.connect(db, isolation_level=None)  # a CLI command writing meanwhile
    blocker.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def loop_alive() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        nursery.start_soon(loop_alive)

        async def submit() -> None:
            await writer.submit(lambda c: c.execute("INSERT INTO t VALUES (1, 'x')"))

        nursery.start_soon(submit)
        await trio.sleep(0.3)
        assert _rows(db) == {}  # still waiting for the lock ...
        assert ticks >= 10  # ... without blocking the event loop
        blocker.execute("COMMIT")
        with trio.fail_after(5):
            while _rows(db) != {1: "x"}:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    blocker.close()
