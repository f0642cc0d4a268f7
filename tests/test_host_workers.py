"""``poshost serve --workers N``: the message path in worker processes (real processes on a
shared listening socket) in front of the one writer (in this test's process), over real TCP
and a real SQLite file."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest
import trio

from host.app import HostConfig, run_host
from host.errors import ConfigError
from host.ipc import IpcDecoder, IpcError, encode_ipc
from host.workers import RrnHighWater, WorkerPool
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from specs.pretty import mask_pan
from tests.conftest import MID, TID, TMK, provision
from tests.hostkit import TestCard, TestTerminal

WORKERS = 2
CONNECTIONS = 12
"""New connections per round: the kernel spreads them over the workers."""


def _pids(db_path: Path) -> set[str]:
    """This process's children running host.workers on ``db_path`` (from /proc)."""
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        ppid = next(line.split()[1] for line in status.splitlines()
                    if line.startswith("PPid:"))
        if b"host.workers" in cmdline and str(db_path).encode() in cmdline \
                and ppid == str(os.getpid()):
            out.add(pid)
    return out


async def _round(t: TestTerminal, card: TestCard, sign_on: bool) -> list[str]:
    """Optionally sign on, then one sale per new connection; the RRNs."""
    rrns = []
    if sign_on:
        await t.reconnect()
        assert (await t.sign_on()).code == "00"
    for _ in range(CONNECTIONS):
        await t.reconnect()
        answer = await t.sale(card, 100)
        assert answer.code == "00", answer.code
        rrns.append(answer["37"])
    return rrns


async def test_workers_serve_sign_on_and_sales_with_unique_rrns(tmp_path: Path) -> None:
    db_path = tmp_path / "host.db"
    hsm = HsmClient.in_process(HsmEngine.test())
    cards = await provision(db_path, hsm)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(
            lambda task_status: run_host(HostConfig(listen_port=0, db_path=db_path,
                                                    workers=WORKERS),
                                         task_status=task_status, stop=stop))
        assert len(_pids(db_path)) == WORKERS
        t = TestTerminal(host, port, TID, MID, TMK, "x919")
        rrns = await _round(t, cards["good"], sign_on=True)
        # fresh keys through one worker; the next sales land on both, and all verify
        rrns += await _round(t, cards["good"], sign_on=True)
        # a worker killed outright is started again, and the host keeps answering
        victim = sorted(_pids(db_path))[0]
        os.kill(int(victim), signal.SIGKILL)
        with trio.fail_after(20):
            while victim in _pids(db_path) or len(_pids(db_path)) < WORKERS:
                await trio.sleep(0.1)
        rrns += await _round(t, cards["good"], sign_on=False)
        await t.__aexit__()
        stop.set()
    assert not _pids(db_path)  # drained and gone
    assert len(set(rrns)) == len(rrns) == 3 * CONNECTIONS
    with sqlite3.connect(db_path) as conn:
        sold = conn.execute("SELECT COUNT(*), COUNT(DISTINCT rrn) FROM txns WHERE kind='sale'"
                            " AND rc='00'").fetchone()
        balance = conn.execute("SELECT balance FROM cards WHERE pan_masked=?",
                               (mask_pan(cards["good"].pan),)).fetchone()[0]
        high_water = int(conn.execute("SELECT value FROM meta WHERE key='rrn'").fetchone()[0])
    assert sold == (3 * CONNECTIONS, 3 * CONNECTIONS)
    assert balance == cards["good"].balance_minor - 3 * CONNECTIONS * 100
    assert high_water >= max(int(r) for r in rrns) - WORKERS  # persisted for restarts


async def test_a_worker_that_cannot_start_fails_the_host_start(tmp_path: Path) -> None:
    db_path = tmp_path / "host.db"
    await provision(db_path, HsmClient.in_process(HsmEngine.test()))
    pool = WorkerPool(1, None, ("127.0.0.1", 0),  # type: ignore[arg-type]
                      {"db_path": str(tmp_path), "hsm": "embedded", "lmk": "test"},
                      1, RrnHighWater())  # a directory is no database: the worker dies
    with pytest.raises(BaseExceptionGroup) as caught, trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
    failures, _ = caught.value.split(ConfigError)
    assert failures is not None
    leaves: list[BaseException] = [failures]
    while isinstance(leaves[0], BaseExceptionGroup):
        leaves = list(leaves[0].exceptions)
    assert "worker 0 did not start" in str(leaves[0])


def test_ipc_frames_round_trip_and_refuse_garbage() -> None:
    decoder = IpcDecoder()
    messages = [("job", 1, "financial", ({"t": "0200"},), 5), ("forget", "12345678")]
    data = b"".join(encode_ipc(m) for m in messages)
    for i in range(0, len(data), 7):  # in pieces
        decoder.feed(data[i : i + 7])
    assert list(decoder) == messages
    garbled = IpcDecoder()
    garbled.feed(b"\x00\x00\x00\x03abc")
    with pytest.raises(IpcError, match="undecodable"):
        garbled.next()
    decoder.feed(b"\xff\xff\xff\xff")
    try:
        decoder.next()
    except IpcError as exc:
        assert "limit" in str(exc)
    else:
        raise AssertionError("an oversized length must be refused")
