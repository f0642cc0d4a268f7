"""The settlement benchmark: fill one terminal's batch, then settle it through a batch upload.

The batch is filled over several connections of the same terminal (distinct STANs from one
counter). The terminal then claims totals that are off by one sale, so the host answers
"not balanced", and uploads every transaction (8 records to a 0320) before the 0320/202 end:
the timed part runs from the 0500 to the answer of the end message.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import trio

from benchlib import wire
from benchlib.limits import SALE_AMOUNT, SETTLEMENT_FILL_CONNECTIONS
from benchlib.term import APPROVED, BenchTerminal
from specs.composite import (
    NOT_BALANCED,
    SettlementTotals,
    Totals,
    UploadRecord,
    decode_settlement_totals,
)

UPLOAD_CHUNK = 8


async def fill_batch(lines: list[BenchTerminal], count: int) -> None:
    """``count`` approved sales over all ``lines`` (the first one signs on for all)."""
    await lines[0].sign_on()
    for line in lines[1:]:
        line.share_session(lines[0])
    remaining = itertools.count()

    async def work(line: BenchTerminal) -> None:
        while next(remaining) < count:
            response = await line.sale(SALE_AMOUNT)
            if response is None or response.get("39") != APPROVED:
                raise RuntimeError(f"fill sale not approved: {response and response.get('39')}")

    async with trio.open_nursery() as nursery:
        for line in lines:
            nursery.start_soon(work, line)


async def upload_settlement(t: BenchTerminal, sales: list[tuple[str, int]]) -> dict[str, Any]:
    """Settle ``t``'s batch claiming one sale too few, upload ``sales`` (trace, amount), time it."""
    assert t.card is not None
    claimed = Totals(sum(a for _, a in sales) - SALE_AMOUNT, len(sales) - 1, 0, 0, 0)
    started = time.monotonic()
    doc = wire.settlement(t.tid, t.mid, t._next_stan(), t.batch,
                          SettlementTotals(claimed, Totals()))
    response, _ = await t._exchange(doc, None)
    answered = time.monotonic()
    result = decode_settlement_totals(response["48"]).domestic.result
    if response.get("39") != APPROVED or result != NOT_BALANCED:
        raise RuntimeError(f"settlement answered {response.get('39')} result {result}")
    messages = 0
    for i in range(0, len(sales), UPLOAD_CHUNK):
        chunk = [UploadRecord(trace, t.pan, amount) for trace, amount in sales[i:i + UPLOAD_CHUNK]]
        up, _ = await t._exchange(wire.upload(t.tid, t.mid, t._next_stan(), t.batch, chunk), None)
        messages += 1
        if up.get("39") != APPROVED:
            raise RuntimeError(f"upload answered {up.get('39')}")
    end, _ = await t._exchange(wire.upload_end(t.tid, t.mid, t._next_stan(), t.batch,
                                               len(sales)), None)
    finished = time.monotonic()
    if end.get("39") != APPROVED:
        raise RuntimeError(f"upload end answered {end.get('39')}")
    return {"transactions": len(sales), "upload_messages": messages + 1,
            "settlement_answer_s": round(answered - started, 3),
            "total_s": round(finished - started, 3)}


async def settlement_bench(host: str, port: int, tid: str, mid: str, tmk: bytes, pan: str,
                           count: int) -> dict[str, Any]:
    stans = itertools.count(1)
    lines = [BenchTerminal(host, port, tid, mid, tmk, pan, stan_source=lambda: next(stans))
             for _ in range(SETTLEMENT_FILL_CONNECTIONS)]
    t0 = time.monotonic()
    try:
        await fill_batch(lines, count)
        fill_s = time.monotonic() - t0
        sales = sorted((s.stan, s.amount) for line in lines for s in line.journal.sales)
        result = await upload_settlement(lines[0], sales)
    finally:
        for line in lines:
            await line.close()
    result["fill_s"] = round(fill_s, 3)
    return result
