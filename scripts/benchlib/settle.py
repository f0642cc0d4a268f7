"""The settlement benchmark: fill batches, then settle them all through batch uploads.

The wire contract bounds one batch: settlement counts are n3 (at most 999 sales) and the
upload-end total is n4. So a 10,000-transaction upload settlement is an end of day of several
terminals, each with a batch of ``SETTLEMENT_BATCH`` sales, settling at the same time. Each
terminal claims totals that are off by one sale, so the host answers "not balanced", and
uploads every transaction (8 records to a 0320) before the 0320/202 end. The timed part runs
from the first 0500 to the last answer of an end message.
"""

from __future__ import annotations

import math
import time
from typing import Any

import trio

from benchlib.limits import SALE_AMOUNT, SETTLEMENT_BATCH
from benchlib.term import BenchTerminal
from specs.codes import APPROVED
from specs.composite import NOT_BALANCED, SettlementTotals, Totals, UploadRecord
from specs.composite import decode_settlement_totals as decode_totals
from terminal import core

UPLOAD_CHUNK = 8
"""Records per 0320 (protocol.md section 3)."""


def terminals_for(count: int) -> int:
    """Terminals needed to hold ``count`` transactions in batches of ``SETTLEMENT_BATCH``.

    >>> terminals_for(10_000), terminals_for(200)
    (20, 1)
    """
    return max(1, math.ceil(count / SETTLEMENT_BATCH))


async def fill_batch(t: BenchTerminal, count: int) -> None:
    """``count`` approved sales in ``t``'s open batch."""
    await t.sign_on()
    for _ in range(count):
        response = await t.sale(SALE_AMOUNT)
        if response is None or response.get("39") != APPROVED:
            raise RuntimeError(f"fill sale not approved: {response and response.get('39')}")


async def upload_settlement(t: BenchTerminal) -> dict[str, Any]:
    """Settle ``t``'s batch claiming one sale too few, upload every sale, time it."""
    sales = sorted((s.stan, s.amount) for s in t.journal.standing_sales(t.batch))
    claimed = Totals(sum(a for _, a in sales) - SALE_AMOUNT, len(sales) - 1, 0, 0, 0)
    started = time.monotonic()
    doc = core.settlement_request(t.profile, t.next_stan(), t.batch,
                                  SettlementTotals(claimed, Totals()))
    response, _ = await t._exchange(doc)
    answered = time.monotonic()
    result = decode_totals(response["48"]).domestic.result
    if response.get("39") != APPROVED or result != NOT_BALANCED:
        raise RuntimeError(f"settlement answered {response.get('39')} result {result}")
    for i in range(0, len(sales), UPLOAD_CHUNK):
        chunk = [UploadRecord(trace, t.pan, amount) for trace, amount in sales[i:i + UPLOAD_CHUNK]]
        up, _ = await t._exchange(core.upload_request(t.profile, t.next_stan(), t.batch, chunk))
        if up.get("39") != APPROVED:
            raise RuntimeError(f"upload answered {up.get('39')}")
    end, _ = await t._exchange(core.upload_end_request(t.profile, t.next_stan(), t.batch,
                                                       len(sales)))
    if end.get("39") != APPROVED:
        raise RuntimeError(f"upload end answered {end.get('39')}")
    return {"transactions": len(sales), "messages": 2 + math.ceil(len(sales) / UPLOAD_CHUNK),
            "settlement_answer_s": answered - started, "done_at": time.monotonic()}


async def settlement_bench(host: str, port: int, tids: list[str], pans: list[str], mid: str,
                           tmk: bytes, count: int) -> dict[str, Any]:
    """Fill ``count`` sales over as many terminals as the batch limit needs, then settle all
    of them at once through batch uploads."""
    n = terminals_for(count)
    if n > len(tids):
        raise ValueError(f"{n} terminals needed for {count} transactions, {len(tids)} given")
    per = [count // n + (1 if i < count % n else 0) for i in range(n)]
    terminals = [BenchTerminal(host, port, tids[i], mid, tmk, pans[i]) for i in range(n)]
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        async with trio.open_nursery() as nursery:
            for t, k in zip(terminals, per, strict=True):
                nursery.start_soon(fill_batch, t, k)
        fill_s = time.monotonic() - t0
        started = time.monotonic()

        async def settle(t: BenchTerminal) -> None:
            results.append(await upload_settlement(t))

        async with trio.open_nursery() as nursery:
            for t in terminals:
                nursery.start_soon(settle, t)
    finally:
        for t in terminals:
            await t.close()
    return {"transactions": sum(r["transactions"] for r in results), "terminals": n,
            "messages": sum(r["messages"] for r in results),
            "total_s": round(max(r["done_at"] for r in results) - started, 3),
            "slowest_settlement_answer_s": round(max(r["settlement_answer_s"] for r in results),
                                                 3),
            "fill_s": round(fill_s, 3)}
