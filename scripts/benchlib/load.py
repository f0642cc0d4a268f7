"""The built-in load generator: N bench terminals selling with PIN + MAC, closed or paced loop.

Closed loop (``rate=None``): every terminal sends its next sale as soon as the last answer
arrived, which finds the host's capacity. Paced (``rate`` = aggregate sales/s): each terminal
sends on its own schedule, which gives latencies comparable across terminal counts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import trio

from benchlib.limits import BENCH_MID, BENCH_TMK_HEX, SALE_AMOUNT
from benchlib.stats import Recorder
from benchlib.term import ERROR_TEXT, LOST, BenchTerminal

SIGN_ON_CONCURRENCY = 50
"""Terminals signing on at once when a run starts (no connect storm on the host's backlog)."""


@dataclass(frozen=True)
class Fleet:
    """Who the terminals are: TIDs, their cards, merchant and TMK (as provisioned)."""

    tids: list[str]
    pans: list[str]
    mid: str = BENCH_MID
    tmk_hex: str = BENCH_TMK_HEX

    def terminals(self, host: str, port: int, count: int, recorder: Recorder,
                  ports: tuple[int, ...] = ()) -> list[BenchTerminal]:
        """``ports``: host instances on one database; terminal i talks to ports[i % len]."""
        if count > len(self.tids):
            raise ValueError(f"{count} terminals asked, {len(self.tids)} provisioned")
        tmk = bytes.fromhex(self.tmk_hex)
        ports = ports or (port,)
        return [BenchTerminal(host, ports[i % len(ports)], self.tids[i], self.mid, tmk,
                              self.pans[i], recorder) for i in range(count)]


async def sign_on_all(terminals: list[BenchTerminal]) -> None:
    limiter = trio.CapacityLimiter(SIGN_ON_CONCURRENCY)

    async def one(t: BenchTerminal) -> None:
        async with limiter:
            await t.sign_on()

    async with trio.open_nursery() as nursery:
        for t in terminals:
            nursery.start_soon(one, t)


async def _drive(t: BenchTerminal, stop_at: float, interval: float | None,
                 rng: random.Random) -> None:
    next_at = trio.current_time() + (rng.random() * interval if interval else 0.0)
    while trio.current_time() < stop_at:
        if interval:
            await trio.sleep_until(next_at)
            next_at = max(next_at + interval, trio.current_time() - interval)
        try:
            await t.sale(SALE_AMOUNT)
        except LOST as exc:
            t.recorder.error(f"{type(exc).__name__}: {exc}"[:ERROR_TEXT])
            await trio.sleep(0.01)


async def run_load(host: str, port: int, fleet: Fleet, count: int, duration: float,
                   warmup: float, rate: float | None = None,
                   ports: tuple[int, ...] = ()) -> dict[str, Any]:
    """Sign on ``count`` terminals, run ``warmup`` + ``duration`` seconds, then summarise
    (``ports``: spread the terminals over several host instances)."""
    recorder = Recorder(recording=False)
    terminals = fleet.terminals(host, port, count, recorder, ports)
    await sign_on_all(terminals)
    interval = count / rate if rate else None
    rng = random.Random(count)
    start = trio.current_time()
    stop_at = start + warmup + duration
    measured_from = start + warmup
    try:
        async with trio.open_nursery() as nursery:
            for t in terminals:
                nursery.start_soon(_drive, t, stop_at, interval, rng)
            await trio.sleep_until(measured_from)
            recorder.reset()
            recorder.recording = True
            await trio.sleep_until(stop_at)
            recorder.recording = False
            elapsed = trio.current_time() - measured_from
    finally:
        with trio.CancelScope(shield=True):
            for t in terminals:
                await t.close()
    summary = recorder.summary(elapsed)
    summary.update(terminals=count, mode="paced" if rate else "closed-loop",
                   offered_rate=rate,
                   generator="builtin")
    return summary
