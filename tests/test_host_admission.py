"""Fairness under hostile load: admission pacing of unproven connections (real TCP, real host),
the token bucket and log budget behind it, and one request at a time per terminal ID."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import host.server
from host.app import HostConfig, run_host
from host.service import TerminalLanes
from host.throttle import LogBudget, TokenBucket
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from specs.framing import encode_frame_tcp
from tests.conftest import TID, TMK, RunningHost, provision
from tests.hostkit import TestTerminal, read_frame

GARBAGE = encode_frame_tcp(b"\x60\x00\x03\x00\x00" + b"\xff" * 30)
RATE = 4.0
"""Unproven connections per second in these tests (one every 0.25 s once the burst is spent)."""
BURST = 3


@pytest.fixture
async def paced_host(tmp_path: Path, nursery: trio.Nursery,
                     monkeypatch: pytest.MonkeyPatch) -> RunningHost:
    monkeypatch.setattr(host.server, "UNPROVEN_PER_SECOND", RATE)
    monkeypatch.setattr(host.server, "UNPROVEN_BURST", BURST)
    db_path = tmp_path / "host.db"
    hsm = HsmClient.in_process(HsmEngine.test())
    cards = await provision(db_path, hsm)
    h, port = await nursery.start(run_host, HostConfig(listen_port=0, db_path=db_path))
    running = RunningHost(h, port, db_path, TID, "123456789012345", TMK, "x919", cards, hsm)
    running.terminals[TID] = (TMK, "x919")
    return running


async def _garbage(h: RunningHost) -> None:
    """Connect, send a frame the host cannot identify, and wait until the host closes."""
    stream = await trio.open_tcp_stream(h.host, h.port)
    with trio.fail_after(10):
        await stream.send_all(GARBAGE)
        with contextlib.suppress(trio.BrokenResourceError):
            assert await read_frame(stream) is None
    await stream.aclose()


async def test_garbage_flood_paces_new_connections_not_connected_terminals(
        paced_host: RunningHost) -> None:
    card = paced_host.cards["good"]
    async with paced_host.terminal() as good:  # connected (and proven) before the flood
        await good.sign_on()
        started = time.monotonic()
        for _ in range(BURST + 4):
            await _garbage(paced_host)
        flood_s = time.monotonic() - started
        # the burst goes through at once; each further bad peer waits for a token
        assert flood_s >= 3 / RATE
        sale_started = time.monotonic()
        assert (await good.sale(card, 100)).code == "00"
        assert time.monotonic() - sale_started < 1 / RATE  # not paced: already proven
        # a new connection waits for a token, and is served
        fresh = TestTerminal(paced_host.host, paced_host.port, TID, paced_host.mid, TMK, "x919")
        async with fresh:
            assert (await fresh.echo()).code == "00"


async def test_clean_connection_churn_is_never_paced(paced_host: RunningHost) -> None:
    started = time.monotonic()
    for _ in range(4 * BURST):
        async with paced_host.terminal() as t:  # one exchange per connection, then close
            assert (await t.echo()).code == "00"
    for _ in range(2 * BURST):  # connect and leave without a word: not held against anyone
        stream = await trio.open_tcp_stream(paced_host.host, paced_host.port)
        await stream.aclose()
    async with paced_host.terminal() as t:
        assert (await t.echo()).code == "00"
    assert time.monotonic() - started < 2 / RATE


def test_token_bucket_bursts_then_paces() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.1)
    assert bucket.take(100.05) == pytest.approx(0.05)  # waiting takes nothing
    assert bucket.take(100.1) == 0.0
    bucket.give(100.1)
    bucket.give(100.1)
    bucket.give(100.1)
    bucket.give(100.1)  # never above the burst
    assert [bucket.take(100.1) for _ in range(4)][-1] > 0.0


@given(st.lists(st.tuples(st.floats(0, 2), st.booleans()), max_size=60))
def test_token_bucket_never_lends_more_than_burst_plus_refill(
        steps: list[tuple[float, bool]]) -> None:
    rate, burst = 5.0, 4
    bucket, now, taken = TokenBucket(rate, burst), 0.0, 0
    for dt, give in steps:
        now += dt
        if give:
            bucket.give(now)
            taken = max(0, taken - 1)
        wait = bucket.take(now)
        assert wait >= 0.0
        taken += wait == 0.0
    assert taken <= burst + now * rate + 1e-9


def test_log_budget_counts_what_it_leaves_out() -> None:
    budget = LogBudget(per_second=2.0, burst=2)
    admitted = [budget.admit(0.0) for _ in range(5)]
    assert admitted == [0, 0, None, None, None]
    assert budget.admit(0.5) == 3
    assert budget.admit(0.5) is None


async def test_terminal_lanes_serialise_one_tid_and_leave_nothing_behind() -> None:
    lanes = TerminalLanes()
    inside: dict[str, int] = {"A": 0, "B": 0}
    most: dict[str, int] = {"A": 0, "B": 0}
    order: list[int] = []

    async def request(tid: str, n: int) -> None:
        async with lanes.hold(tid):
            inside[tid] += 1
            most[tid] = max(most[tid], inside[tid])
            order.append(n) if tid == "A" else None
            await trio.sleep(0.01)
            inside[tid] -= 1

    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(request, "A", n)
            await trio.sleep(0)  # arrival order
            nursery.start_soon(request, "B", n)
        await trio.sleep(0.005)
        assert len(lanes) == 2
    assert most == {"A": 1, "B": 1}
    assert order == sorted(order)  # first come, first served
    assert len(lanes) == 0


async def test_terminal_lane_waiter_cancelled_leaves_nothing_behind(autojump_clock) -> None:
    lanes = TerminalLanes()
    entered: list[str] = []

    async def holder(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with lanes.hold("A"):
            task_status.started()
            await trio.sleep(1)
            entered.append("holder")

    async with trio.open_nursery() as nursery:
        await nursery.start(holder)
        with trio.move_on_after(0.1):
            async with lanes.hold("A"):
                entered.append("waiter")  # never: the lane is busy until cancelled
        assert len(lanes) == 1
    assert entered == ["holder"]
    assert len(lanes) == 0
