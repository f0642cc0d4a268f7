"""Load mode: N emulated terminals in one process, each signed on, driving a host.

Every terminal keeps its state in memory (STAN, batch, keys, approved sales for voids and
refunds, a pending reversal) and speaks the same contract as the CLI terminal, built from
:mod:`terminal.core`. Sales and balance inquiries are rendered from per-terminal templates
(encode once, then splice the STAN and MAC), so the generator costs little per request. At the
end each terminal settles its batch (uploading it when the host disagrees), so the next run
starts in a fresh batch with no duplicate STANs.
"""

from __future__ import annotations

import json
import math
import random
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from specs.catalog import ECHO_FIELDS, identify_request
from specs.codes import APPROVED, NO_MAC_CODES
from specs.composite import BALANCED, NOT_BALANCED
from specs.errors import FramingError, SpecError
from specs.framing import BODY_OFFSET, TPDU_LENGTH, Frame, TcpFrameDecoder, encode_frame_tcp
from specs.messages import Message, encode_message, field_spans
from specs.pretty import mask_pan
from terminal import core
from terminal.cards import Card, check_pin, parse_amount
from terminal.core import Original, Outcome, Profile
from terminal.errors import (
    BadInput,
    CommunicationError,
    ConnectFailed,
    NoResponse,
    TerminalError,
)
from terminal.pinpad import PinPad, parse_key_hex
from terminal.transport import parse_address

OPERATIONS = ("sale", "balance", "void", "refund")
REVERSIBLE = frozenset({"sale", "void"})
PROGRESS_SECONDS = 1.0
STAN_BYTES = 3
CONNECT_TIMEOUT = 10.0
RETRY_PAUSE = 0.5
RECEIVE_SIZE = 65536


def parse_mix(text: str) -> dict[str, int]:
    """``sale=80,balance=10`` -> weights; unknown operations and bad numbers are refused.

    >>> parse_mix("sale=80,balance=20")
    {'sale': 80, 'balance': 20}
    """
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        if not sep or name not in OPERATIONS or not weight.isdigit():
            raise BadInput(f"bad --mix item {part!r}: use {','.join(OPERATIONS)} with weights")
        mix[name] = int(weight)
    if not mix or sum(mix.values()) == 0:
        raise BadInput("--mix needs at least one operation with a weight above 0")
    return mix


@dataclass(frozen=True)
class LoadSettings:
    host: str
    port: int
    terminals: int
    duration: float
    rate: float
    mix: dict[str, int]
    tids: list[str]
    mid: str
    tmk: bytes = field(repr=False)
    cards: list[Card] = field(repr=False)
    pin: str | None = field(default=None, repr=False)
    mac: str = "x919"
    timeout: float = 10.0
    amount: int = 100
    report: str | None = None
    settle: bool = True
    progress: bool = True

    @classmethod
    def from_cli(cls, *, address: str, terminals: int, duration: float, rate: float, mix: str,
                 report: str | None, tid_prefix: str, mid: str, tmk: str,
                 track2: tuple[str, ...], pin: str | None, mac: str, timeout: float,
                 amount: str = "1.00", settle: bool = True) -> LoadSettings:
        try:
            host, port = parse_address(address)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        return cls(host, port, terminals, duration, rate, parse_mix(mix),
                   terminal_ids(tid_prefix, terminals), mid, parse_key_hex(tmk),
                   [Card.from_track2(t) for t in track2], check_pin(pin) if pin else None,
                   mac, timeout, parse_amount(amount), report, settle)


def terminal_ids(prefix: str, count: int) -> list[str]:
    """TIDs PREFIX + zero-filled index, 8 characters: ``LT000001`` ...

    >>> terminal_ids("LT", 2)
    ['LT000001', 'LT000002']
    """
    width = 8 - len(prefix)
    if width < 1 or count >= 10**width:
        raise BadInput(f"TID prefix {prefix!r} leaves no room for {count} terminals")
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


@dataclass
class Stats:
    """Shared by all load terminals (one trio thread: no locks needed)."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)
    by_operation: dict[str, Counter[str]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    signed_on: int = 0
    settlements: Counter[str] = field(default_factory=Counter)
    completed: int = 0

    recent: list[float] = field(default_factory=list)
    """Latencies since the progress line last read them (:meth:`take_recent`)."""

    def record(self, op: str, code: str, seconds: float) -> None:
        self.latencies.setdefault(op, []).append(seconds)
        self.recent.append(seconds)
        self.codes[code] += 1
        self.by_operation.setdefault(op, Counter())[code] += 1
        self.completed += 1

    def take_recent(self) -> list[float]:
        out, self.recent = self.recent, []
        return out


def scan_fields(body: bytes) -> dict[int, bytes]:
    """Raw field bytes of a body (MTI onwards), located by :func:`specs.messages.field_spans`.

    Only for load mode's fast path: anything unusual raises ValueError, and the caller then
    falls back to the full decoder and checks of :func:`core.evaluate`.
    """
    try:
        spans = field_spans(body)
    except SpecError as exc:
        raise ValueError(str(exc)) from None
    return {number: body[start:end] for number, (start, end) in spans.items()}


_ECHO = tuple(int(k) for k in ECHO_FIELDS)
_QUICK_FIELDS = {37: "37", 38: "38", 63: "63"}


class Template:
    """A request encoded once; :meth:`render` splices a STAN and appends a fresh MAC."""

    def __init__(self, profile: Profile, doc: Message, pinpad: PinPad) -> None:
        self.doc = doc
        self.pinpad = pinpad
        self.kind = identify_request(doc)
        self.response_mti = bytes.fromhex(self.kind.response_mti)
        self.on_approval = tuple(int(k) for k in self.kind.response_on_approval)
        self.head = Frame(profile.tpdu, profile.header, b"").payload()
        body = encode_message({**doc, "11": "000000", "64": "00" * 8})
        other = encode_message({**doc, "11": "999999", "64": "00" * 8})
        diff = [i for i, (a, b) in enumerate(zip(body, other, strict=True)) if a != b]
        if len(diff) != STAN_BYTES or diff[-1] - diff[0] != STAN_BYTES - 1:
            raise TerminalError("cannot locate the STAN in a request template")
        self.at = diff[0]
        self.before, self.after = body[: self.at], body[self.at + STAN_BYTES : -8]
        raw = scan_fields(body)
        self.echo = {n: raw[n] for n in _ECHO if n in raw and n != 11}

    def render(self, stan: str) -> tuple[Message, bytes]:
        body = self.before + bytes.fromhex(stan) + self.after
        doc = dict(self.doc)
        doc["11"] = stan
        return doc, self.head + body + self.pinpad.mac(body)

    def quick_evaluate(self, doc: Message, payload: bytes) -> Outcome | None:
        """The outcome of a plainly good response (MTI, echoes, approval fields, MAC all
        right, no sign-on request); None when anything is unusual (use core.evaluate)."""
        body = payload[BODY_OFFSET:]
        if body[:2] != self.response_mti or payload[TPDU_LENGTH + 2] & 0x0F:
            return None
        try:
            raw = scan_fields(body)
        except (ValueError, KeyError):
            return None
        if raw.get(11) != bytes.fromhex(doc["11"]) or any(
                raw.get(n) != v for n, v in self.echo.items()):
            return None
        code_raw = raw.get(39)
        code = code_raw.decode("ascii", "replace") if code_raw else ""
        if not code or code in core.SIGN_ON_CODES or code in NO_MAC_CODES or 64 not in raw:
            return None
        if code == APPROVED and any(n not in raw for n in self.on_approval):
            return None
        if not self.pinpad.verify_mac(body[:-8], body[-8:]):
            return None
        response = {k: raw[n].decode("ascii", "replace") for n, k in _QUICK_FIELDS.items()
                    if n in raw}
        if 13 in raw:
            response["13"] = raw[13].hex()
        response["39"] = code
        return Outcome(doc, response, code)


@dataclass
class Sold:
    stan: str
    batch: str
    rrn: str
    auth: str | None
    date: str
    amount: int


class FastLine:
    """A bare trio socket to the host for load mode.

    :meth:`send_receive` has no timeout of its own: the load terminal bounds it with one
    long-lived cancel scope whose deadline it moves (a cancel scope per request costs more
    than the rest of the request). :meth:`exchange` is the ordinary Transport call.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._sock: trio.socket.SocketType | None = None
        self._decoder = TcpFrameDecoder()

    async def connect(self) -> None:
        if self._sock is not None:
            return
        sock = trio.socket.socket()
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                await sock.connect((self.host, self.port))
        except (OSError, trio.TooSlowError) as exc:
            sock.close()
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._decoder = sock, TcpFrameDecoder()

    async def send_receive(self, payload: bytes) -> bytes:
        await self.connect()
        sock = self._sock
        assert sock is not None
        data = encode_frame_tcp(payload)
        try:
            while data:
                data = data[await sock.send(data):]
            while (answer := self._decoder.next_payload()) is None:
                chunk = await sock.recv(RECEIVE_SIZE)
                if not chunk:
                    raise NoResponse("host closed the connection")
                self._decoder.feed(chunk)
        except (OSError, FramingError) as exc:
            self.close()
            raise NoResponse(f"connection to {self.host}:{self.port} lost: {exc}") from None
        return answer

    async def exchange(self, payload: bytes, timeout: float) -> bytes:
        try:
            with trio.fail_after(timeout):
                return await self.send_receive(payload)
        except trio.TooSlowError:
            self.close()
            raise NoResponse(f"no response in {timeout:g} s") from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def aclose(self) -> None:
        self.close()


class LoadTerminal:
    """One emulated terminal with in-memory state."""

    def __init__(self, settings: LoadSettings, tid: str, card: Card, stats: Stats,
                 rng: random.Random) -> None:
        self.s = settings
        self.profile = Profile(tid, settings.mid)
        self.card = card
        self.stats = stats
        self.rng = rng
        self.pinpad = PinPad(settings.tmk, settings.mac)
        self.line = FastLine(settings.host, settings.port)
        self.scope: trio.CancelScope | None = None
        self.inflight: tuple[str, Message] | None = None
        self.stan = f"{rng.randrange(1, 900_000):06d}"
        self.batch = "000000"
        self.sold: deque[Sold] = deque(maxlen=1000)
        self.reversal: Message | None = None
        self.templates: dict[str, Template] = {}
        self.batch_entries: dict[str, core.BatchEntry] = {}
        weights = settings.mix
        self.plan = [op for op in OPERATIONS for _ in range(weights.get(op, 0))]
        rng.shuffle(self.plan)

    def next_stan(self) -> str:
        self.stan = core.next_stan(self.stan)
        return self.stan

    async def exchange(self, doc: Message, payload: bytes | None = None,
                       template: Template | None = None, op: str = "") -> Outcome:
        payload = payload or core.encode_request(self.profile, doc, self.pinpad)
        scope = self.scope
        if scope is None:
            answer = await self.line.exchange(payload, self.s.timeout)
        else:
            self.inflight = (op or doc["t"], doc)
            scope.deadline = trio.current_time() + self.s.timeout
            try:
                answer = await self.line.send_receive(payload)
            finally:
                scope.deadline = math.inf
            self.inflight = None
        if template is not None and (quick := template.quick_evaluate(doc, answer)) is not None:
            return quick
        return core.evaluate(doc, answer, self.pinpad)

    async def sign_on(self) -> None:
        doc = core.management_request("sign_on", self.profile, self.next_stan(), self.batch)
        outcome = await self.exchange(doc)
        if not outcome.approved or outcome.response is None:
            raise TerminalError(f"{self.profile.tid} sign-on: {outcome.problem or outcome.code}")
        self.pinpad.install_key_data(outcome.response["62"])
        self.batch = core.signon_batch(outcome.response)
        pin_block = self.pinpad.pin_block(self.s.pin, self.card.pan) if self.s.pin else None
        self.templates = {
            "sale": Template(self.profile, core.sale_request(
                self.profile, "000000", self.batch, self.card, self.s.amount, pin_block),
                self.pinpad),
            "balance": Template(self.profile, core.balance_request(
                self.profile, "000000", self.batch, self.card, pin_block), self.pinpad),
        }
        self.stats.signed_on += 1

    async def start(self) -> bool:
        """Sign on; False (the failure counted, the line closed) when it cannot."""
        try:
            await self.sign_on()
        except (TerminalError, CommunicationError) as exc:
            self.stats.errors[f"sign-on: {type(exc).__name__}"] += 1
            await self.line.aclose()
            return False
        return True

    async def run(self, deadline: float, interval: float) -> None:
        """Drive the mix until ``deadline`` (signed on already), then settle if asked."""
        self.next_at = trio.current_time() + self.rng.random() * interval
        self.index = 0
        while trio.current_time() < deadline:
            with trio.CancelScope() as self.scope:
                await self.drive(deadline, interval)
            self.scope = None
            if self.inflight is not None:
                self.timed_out(*self.inflight)
        if self.s.settle:
            await self.settle()
        await self.line.aclose()

    async def drive(self, deadline: float, interval: float) -> None:
        while trio.current_time() < deadline:
            if interval:
                await trio.sleep_until(self.next_at)
                self.next_at = max(self.next_at + interval, trio.current_time() - interval)
                if trio.current_time() >= deadline:
                    return
            op = self.plan[self.index % len(self.plan)]
            self.index += 1
            await self.one(op)

    def timed_out(self, op: str, doc: Message) -> None:
        """The moving deadline fired during an exchange: no response in time."""
        self.inflight = None
        self.line.close()
        self.stats.errors[f"{op}: NoResponse"] += 1
        if op in REVERSIBLE:
            self.reversal = core.reversal_request(doc, core.REASON_NO_RESPONSE)

    async def one(self, op: str) -> None:
        if self.reversal is not None:
            await self.send_reversal()
            if self.reversal is not None:
                return
        if op in ("void", "refund") and not self.sold:
            op = "sale"
        doc, payload = self.request(op)
        started = time.perf_counter()
        try:
            outcome = await self.exchange(doc, payload, self.templates.get(op), op)
        except CommunicationError as exc:
            self.inflight = None
            self.stats.errors[f"{op}: {type(exc).__name__}"] += 1
            if op in REVERSIBLE and not isinstance(exc, ConnectFailed):
                self.reversal = core.reversal_request(doc, core.REASON_NO_RESPONSE)
            await trio.sleep(RETRY_PAUSE)
            return
        elapsed = time.perf_counter() - started
        if not outcome.believed:
            self.stats.errors[f"{op}: rejected {outcome.reversal_reason}"] += 1
            if op in REVERSIBLE:
                self.reversal = core.reversal_request(doc, outcome.reversal_reason or "06")
            return
        self.stats.record(op, outcome.code or "??", elapsed)
        self.after(op, doc, outcome)
        if outcome.sign_on_again:
            await self.sign_on()

    def request(self, op: str) -> tuple[Message, bytes | None]:
        stan = self.next_stan()
        if op in self.templates:
            return self.templates[op].render(stan)
        sold = self.sold.popleft()
        original = Original(sold.batch, sold.stan, sold.rrn, sold.amount, sold.auth, sold.date)
        if op == "void":
            return core.void_request(self.profile, stan, self.batch, self.card, original), None
        return core.refund_request(self.profile, stan, self.batch, self.card, original,
                                   sold.amount), None

    def after(self, op: str, doc: Message, outcome: Outcome) -> None:
        stan = doc["11"]
        if op == "sale" and outcome.approved:
            self.sold.append(Sold(stan, self.batch, outcome.get("37") or "", outcome.get("38"),
                                  outcome.get("13") or "", int(doc["4"])))
            self.batch_entries[stan] = core.BatchEntry(
                "sale", stan, self.card.pan, int(doc["4"]), core.is_domestic(outcome.get("63")))
        elif op == "void" and outcome.approved:
            self.batch_entries.pop(doc["61"][6:12], None)
        elif op == "refund" and outcome.accepted:
            self.batch_entries[stan] = core.BatchEntry(
                "refund", stan, self.card.pan, int(doc["4"]), core.is_domestic(outcome.get("63")))

    async def send_reversal(self) -> None:
        assert self.reversal is not None
        started = time.perf_counter()
        try:
            outcome = await self.exchange(self.reversal, op="reversal")
        except CommunicationError:
            self.inflight = None
            self.stats.errors["reversal: no response"] += 1
            await trio.sleep(RETRY_PAUSE)
            return
        if outcome.code is not None:
            # The reversed request was never believed, so it never entered batch_entries.
            self.stats.record("reversal", outcome.code, time.perf_counter() - started)
            self.reversal = None

    async def settle(self) -> None:
        """Close the batch: 0500 with this run's totals, batch upload when not balanced."""
        try:
            if self.reversal is not None:
                await self.send_reversal()
            entries = list(self.batch_entries.values())
            totals = core.batch_totals(entries)
            doc = core.settlement_request(self.profile, self.next_stan(), self.batch, totals)
            outcome = await self.exchange(doc)
            if not outcome.approved or outcome.response is None:
                self.stats.settlements[f"declined {outcome.code}"] += 1
                return
            result = core.settlement_result(outcome.response)
            if result == NOT_BALANCED:
                await self.upload(entries)
            self.stats.settlements[{BALANCED: "balanced", NOT_BALANCED: "uploaded"}.get(
                result, "error")] += 1
        except (TerminalError, CommunicationError) as exc:
            self.stats.settlements[f"failed: {type(exc).__name__}"] += 1

    async def upload(self, entries: list[core.BatchEntry]) -> None:
        for chunk in core.upload_chunks(entries):
            await self.exchange(core.upload_request(self.profile, self.next_stan(), self.batch,
                                                    chunk))
        await self.exchange(core.upload_end_request(self.profile, self.next_stan(), self.batch,
                                                    len(entries)))


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    ms = {f"p{int(q * 100)}": round(percentile(ordered, q) * 1000, 3) for q in (0.5, 0.95, 0.99)}
    ms["max"] = round(ordered[-1] * 1000, 3) if ordered else 0.0
    ms["mean"] = round(sum(ordered) / len(ordered) * 1000, 3) if ordered else 0.0
    return ms


def build_report(settings: LoadSettings, stats: Stats, elapsed: float) -> dict[str, Any]:
    every = [v for values in stats.latencies.values() for v in values]
    return {
        "settings": {k: v for k, v in asdict(settings).items()
                     if k not in ("tmk", "cards", "pin", "tids")}
        | {"cards": [mask_pan(c.pan) for c in settings.cards]},
        "elapsed_s": round(elapsed, 3),
        "completed": stats.completed,
        "throughput_per_s": round(stats.completed / elapsed, 1) if elapsed else 0.0,
        "latency_ms": latency_summary(every),
        "operations": {op: {"count": len(v), "latency_ms": latency_summary(v),
                            "codes": dict(stats.by_operation.get(op, {}))}
                       for op, v in sorted(stats.latencies.items())},
        "response_codes": dict(stats.codes),
        "errors": dict(stats.errors),
        "terminals_signed_on": stats.signed_on,
        "settlements": dict(stats.settlements),
    }


async def run_load(settings: LoadSettings,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the load and return the report."""
    stats = Stats()
    seed = random.Random()
    interval = settings.terminals / settings.rate if settings.rate else 0.0
    terminals = [LoadTerminal(settings, tid, settings.cards[i % len(settings.cards)], stats,
                              random.Random(seed.random()))
                 for i, tid in enumerate(settings.tids)]
    ready: list[LoadTerminal] = []

    async def start(t: LoadTerminal) -> None:
        if await t.start():
            ready.append(t)

    async with trio.open_nursery() as nursery:  # every sign-on first: the clock starts after
        for t in terminals:
            nursery.start_soon(start, t)
    started = trio.current_time()
    deadline = started + settings.duration
    async with trio.open_nursery() as nursery:
        for t in ready:
            nursery.start_soon(t.run, deadline, interval)
        if progress is not None:
            nursery.start_soon(_progress, stats, started, deadline, progress)
    elapsed = min(trio.current_time(), deadline) - started
    return build_report(settings, stats, max(elapsed, 1e-9))


async def _progress(stats: Stats, started: float, deadline: float,
                    show: Callable[[str], None]) -> None:
    last, last_at = 0, started
    stats.take_recent()
    while trio.current_time() < deadline:
        await trio.sleep(PROGRESS_SECONDS)
        show(progress_line(stats, trio.current_time() - started,
                           stats.completed - last, trio.current_time() - last_at))
        last, last_at = stats.completed, trio.current_time()


def progress_line(stats: Stats, elapsed: float, done: int, seconds: float) -> str:
    """One progress line: totals, the last interval's rate and p99, response codes so far.

    >>> s = Stats()
    >>> for ms in (2, 3, 40):
    ...     s.record("sale", "00" if ms < 40 else "51", ms / 1000)
    >>> progress_line(s, 1.0, 3, 1.0)
    't=  1.0s  done=3  rate=3/s  p99=40.0ms  codes 00:2 51:1  signed on=0  errors=0'
    """
    recent = sorted(stats.take_recent())
    codes = " ".join(f"{c}:{n}" for c, n in sorted(stats.codes.items())) or "-"
    return (f"t={elapsed:5.1f}s  done={stats.completed}  rate={done / max(seconds, 1e-9):.0f}/s"
            f"  p99={percentile(recent, 0.99) * 1000:.1f}ms  codes {codes}"
            f"  signed on={stats.signed_on}  errors={sum(stats.errors.values())}")


def render_report(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    lines = [
        f"completed {report['completed']} in {report['elapsed_s']} s: "
        f"{report['throughput_per_s']} /s from {report['terminals_signed_on']} terminals",
        f"latency ms  p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}",
    ]
    for op, data in report["operations"].items():
        codes = " ".join(f"{c}:{n}" for c, n in sorted(data["codes"].items()))
        lines.append(f"  {op:<9} {data['count']:>8}  p95 {data['latency_ms']['p95']} ms  {codes}")
    if report["errors"]:
        lines.append("errors: " + ", ".join(f"{k} x{v}" for k, v in report["errors"].items()))
    if report["settlements"]:
        lines.append("settlements: " + ", ".join(
            f"{k} x{v}" for k, v in report["settlements"].items()))
    return "\n".join(lines)


def run_load_cli(settings: LoadSettings) -> dict[str, Any]:
    """Run under trio with a progress line on stderr; print and write the report."""
    live = sys.stderr.isatty()

    def show(line: str) -> None:
        if live:  # one line, rewritten in place
            print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    report = trio.run(run_load, settings, show if settings.progress else None)
    if live and settings.progress:
        print(file=sys.stderr)
    print(render_report(report), file=sys.stderr)
    if settings.report:
        with open(settings.report, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, sort_keys=True)
    return report
