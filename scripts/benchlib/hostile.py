"""Hostile frames and the process that throws them at a host.

Frame kinds (built on :mod:`specs`, so mutations start from byte-exact valid frames):
``random`` (valid length prefix, random payload), ``random_body`` (valid TPDU + header, random
body), ``mutated`` (a valid request with bits flipped, bytes replaced, inserted, deleted or
repeated), ``truncated`` (the prefix promises more than is sent, then the write side closes),
``huge`` (length prefix above the limit), ``short`` (length prefix below the minimum) and
``raw`` (random bytes, prefix included). The host must answer each with a well-formed frame
(30 for everything but mutations, which may still be valid requests) or close the connection;
never hang and never send garbage.

    python -m benchlib.hostile --port P --frames N [--workers W] [--seed S] --out RESULT.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import trio

from benchlib.limits import (
    FUZZ_WORKERS,
    HOSTILE_ANSWER_TIMEOUT,
    RECEIVE_SIZE,
    SLOW_DRIP_INTERVAL,
)
from specs.composite import SettlementTotals, Totals, UploadRecord
from specs.errors import SpecError
from specs.framing import (
    BODY_OFFSET,
    HEADER_LENGTH,
    MAX_FRAME_LENGTH,
    MIN_FRAME_LENGTH,
    TPDU_LENGTH,
    Frame,
    TcpFrameDecoder,
)
from specs.messages import decode_message
from terminal import core
from terminal.cards import Card
from terminal.pinpad import PinPad

KINDS = (("mutated", 40), ("random", 15), ("random_body", 20), ("truncated", 10),
         ("huge", 5), ("short", 5), ("raw", 5))
"""Hostile frame kinds and their weights."""
ANY_ANSWER_KINDS = frozenset({"mutated", "slow_drip"})
"""Kinds whose frames may still be valid requests, so any well-formed answer is right."""
MAX_MUTATIONS = 4
FUZZ_TID = "Z9999999"
FUZZ_MID = "898100000000099"
FUZZ_PAN = "6222029999999999993"
PROGRESS_EVERY = 10_000


@dataclass(frozen=True)
class Hostile:
    kind: str
    data: bytes
    complete: bool
    """Whether the host receives a whole frame (else the write side is closed after data)."""


def select(kinds: list[str]) -> None:
    """Throw only these kinds (their weights kept)."""
    global KINDS
    unknown = set(kinds) - {k for k, _ in KINDS}
    if unknown:
        raise SystemExit(f"unknown frame kinds: {', '.join(sorted(unknown))}")
    KINDS = tuple((k, w) for k, w in KINDS if k in kinds)


def base_payloads(tid: str = FUZZ_TID, mid: str = FUZZ_MID) -> list[bytes]:
    """Valid request payloads (TPDU onwards) of most kinds, MACed under a throwaway MAK."""
    pad = PinPad(bytes(16), pik=bytes.fromhex("0B681FC20E62C734") * 2,
                 mak=bytes.fromhex("7962D9ECE03D1ACD4C76089DCE131543"))
    profile, batch = core.Profile(tid, mid), "000001"
    card = Card(FUZZ_PAN, "3012")
    pin_block = pad.pin_block("1234", FUZZ_PAN)
    sale = core.sale_request(profile, "000002", batch, card, 12345, pin_block)
    original = core.Original("000001", "000002", "000000000001", 12345, "123456", "1123")
    docs = [
        core.management_request("sign_on", profile, "000001", "000000"),
        core.management_request("echo_test", profile, "000003", batch),
        sale,
        core.void_request(profile, "000004", batch, card, original, pin_block),
        core.refund_request(profile, "000005", batch, card, original, 500),
        core.reversal_request(sale, "98"),
        core.settlement_request(profile, "000006", batch,
                                SettlementTotals(Totals(1, 1), Totals())),
        core.upload_request(profile, "000007", batch, [UploadRecord("000002", FUZZ_PAN, 12345)]),
        core.upload_end_request(profile, "000008", batch, 1),
    ]
    return [core.encode_request(profile, doc, pad) for doc in docs]


def _prefixed(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


def mutate(rng: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(rng.randint(1, MAX_MUTATIONS)):
        op = rng.randrange(6)
        pos = rng.randrange(len(data)) if data else 0
        if op == 0 and data:
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            data[pos] = rng.randrange(256)
        elif op == 2:
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and len(data) > 1:
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 4:
            start = BODY_OFFSET + 2  # the bitmap
            data[start : start + 8] = rng.randbytes(8)
        else:
            chunk = data[pos : pos + rng.randint(1, 16)]
            data[pos:pos] = chunk
    return bytes(data[:MAX_FRAME_LENGTH])


def make(rng: random.Random, bases: list[bytes]) -> Hostile:
    kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
    if kind == "mutated":
        payload = mutate(rng, rng.choice(bases))
        if len(payload) < MIN_FRAME_LENGTH:
            return Hostile("short", _prefixed(payload), True)
        return Hostile(kind, _prefixed(payload), True)
    if kind == "random":
        n = rng.randint(MIN_FRAME_LENGTH, 400)
        return Hostile(kind, _prefixed(rng.randbytes(n)), True)
    if kind == "random_body":
        head = rng.choice(bases)[: TPDU_LENGTH + HEADER_LENGTH]
        return Hostile(kind, _prefixed(head + rng.randbytes(rng.randint(10, 300))), True)
    if kind == "truncated":
        full = _prefixed(rng.choice(bases))
        return Hostile(kind, full[: rng.randint(1, len(full) - 1)], False)
    if kind == "huge":
        n = rng.randint(MAX_FRAME_LENGTH + 1, 0xFFFF)
        return Hostile(kind, n.to_bytes(2, "big") + rng.randbytes(rng.randint(0, 64)), False)
    if kind == "short":
        n = rng.randint(0, MIN_FRAME_LENGTH - 1)
        return Hostile(kind, n.to_bytes(2, "big") + rng.randbytes(n), True)
    return Hostile("raw", rng.randbytes(rng.randint(1, 200)), False)


def classify(payload: bytes) -> str:
    """``answer:<F39>`` for a well-formed answer, ``garbage`` otherwise."""
    try:
        frame = Frame.parse(payload)
        doc = decode_message(frame.body, offset=BODY_OFFSET)
    except SpecError:
        return "garbage"
    return f"answer:{doc.get('39', '--')}"


class Tally:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.violations: list[str] = []
        self.sent = 0

    def add(self, kind: str, outcome: str) -> None:
        self.outcomes[f"{kind}/{outcome}"] += 1
        bad = outcome in ("timeout", "garbage") or (
            outcome.startswith("answer:") and outcome != "answer:30"
            and kind not in ANY_ANSWER_KINDS)
        if bad and len(self.violations) < 50:
            self.violations.append(f"{kind}/{outcome}")
        elif bad:
            self.violations.append("...")
            del self.violations[50:]

    def result(self) -> dict[str, Any]:
        by_outcome: Counter[str] = Counter()
        for key, n in self.outcomes.items():
            by_outcome[key.split("/", 1)[1].split(":")[0] if "answer" not in key
                       else key.split("/", 1)[1]] += n
        return {"frames": self.sent, "outcomes": dict(sorted(self.outcomes.items())),
                "by_outcome": dict(sorted(by_outcome.items())),
                "violations": self.violations}


async def _answer_or_close(stream: trio.SocketStream, decoder: TcpFrameDecoder) -> str:
    """Wait for the host's reaction: one payload, a close, or nothing (timeout)."""
    with trio.move_on_after(HOSTILE_ANSWER_TIMEOUT):
        try:
            while (payload := decoder.next_payload()) is None:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return "closed"
                decoder.feed(data)
        except SpecError:
            return "garbage"
        except (trio.BrokenResourceError, OSError):
            return "reset"
        return classify(payload)
    return "timeout"


class Pacer:
    """Spaces events of all workers ``1 / rate`` seconds apart (no pacing when rate is 0)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate if rate > 0 else 0.0
        self.next_at = trio.current_time()

    async def wait(self) -> None:
        if self.interval:
            at = self.next_at = max(self.next_at + self.interval, trio.current_time())
            await trio.sleep_until(at)


async def worker(port: int, frames: itertools.count[int], total: int, rng: random.Random,
                 bases: list[bytes], tally: Tally, pacer: Pacer) -> None:
    stream: trio.SocketStream | None = None
    decoder = TcpFrameDecoder()
    try:
        while next(frames) < total:
            await pacer.wait()
            if stream is None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                decoder = TcpFrameDecoder()
            h = make(rng, bases)
            tally.sent += 1
            try:
                await stream.send_all(h.data)
                if not h.complete:
                    await stream.send_eof()
            except (trio.BrokenResourceError, OSError):
                tally.add(h.kind, "reset")
                await stream.aclose()
                stream = None
                continue
            outcome = await _answer_or_close(stream, decoder)
            tally.add(h.kind, outcome)
            if not outcome.startswith("answer") or not h.complete:
                await stream.aclose()
                stream = None
            if tally.sent % PROGRESS_EVERY == 0:
                print(f"hostile: {tally.sent} frames", file=sys.stderr, flush=True)
    finally:
        if stream is not None:
            await stream.aclose()


async def slow_drip(port: int, payload: bytes, interval: float, stall_after: int | None,
                    tally: Tally) -> None:
    """Send a frame one byte at a time (optionally stopping after ``stall_after`` bytes)."""
    data = _prefixed(payload)
    kind = "slow_drip" if stall_after is None else "stalled"
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    decoder = TcpFrameDecoder()
    async with stream:
        tally.sent += 1
        try:
            for i, byte in enumerate(data):
                if stall_after is not None and i >= stall_after:
                    break
                await stream.send_all(bytes([byte]))
                await trio.sleep(interval)
        except (trio.BrokenResourceError, OSError):
            tally.add(kind, "closed-while-sending")
            return
        tally.add(kind, await _answer_or_close(stream, decoder))


async def flood(port: int, count: int, hold: float) -> dict[str, Any]:
    """Open ``count`` connections at once, hold them, close them; count refusals."""
    streams: list[trio.SocketStream] = []
    refused = 0
    try:
        for _ in range(count):
            try:
                streams.append(await trio.open_tcp_stream("127.0.0.1", port))
            except OSError:
                refused += 1
        await trio.sleep(hold)
        alive = 0
        for s in streams:
            try:
                with trio.move_on_after(0):
                    if await s.receive_some(1) == b"":
                        continue
                alive += 1
            except (trio.BrokenResourceError, OSError):
                continue
    finally:
        for s in streams:
            await s.aclose()
    return {"opened": len(streams), "refused": refused, "alive_after_hold": alive}


async def throw(port: int, frames: int, workers: int, seed: int, drips: int,
                drip_interval: float, flood_count: int, flood_hold: float,
                rate: float = 0.0) -> dict[str, Any]:
    rng = random.Random(seed)
    pacer = Pacer(rate)
    bases = base_payloads()
    tally = Tally()
    counter = itertools.count()
    flood_result: dict[str, Any] = {}

    async def run_flood() -> None:
        flood_result.update(await flood(port, flood_count, flood_hold))

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker, port, counter, frames, random.Random(rng.random()),
                               bases, tally, pacer)
        for i in range(drips):
            stall = None if i % 2 == 0 else rng.randint(3, 20)
            nursery.start_soon(slow_drip, port, bases[1], drip_interval, stall, tally)
        if flood_count:
            nursery.start_soon(run_flood)
    result = tally.result()
    result["flood"] = flood_result
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--workers", type=int, default=FUZZ_WORKERS)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--drips", type=int, default=0)
    parser.add_argument("--drip-interval", type=float, default=SLOW_DRIP_INTERVAL)
    parser.add_argument("--flood", type=int, default=0)
    parser.add_argument("--flood-hold", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="hostile frames per second in all (0: as fast as possible)")
    parser.add_argument("--kinds", help="comma-separated frame kinds to throw (default all)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.kinds:
        select(args.kinds.split(","))
    result = trio.run(throw, args.port, args.frames, args.workers, args.seed, args.drips,
                      args.drip_interval, args.flood, args.flood_hold, args.rate)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
