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
import signal
import ssl
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import trio

from shared import naming
from shared.errors import NamingError
from shared.stats import latency_summary, percentile
from specs.catalog import ECHO_FIELDS, identify_request
from specs.codes import APPROVED, NO_MAC_CODES
from specs.composite import BALANCED, NOT_BALANCED
from specs.errors import SpecError
from specs.framing import BODY_OFFSET, TPDU_LENGTH, Frame
from specs.messages import Message, encode_message, field_spans
from specs.pretty import mask_pan
from terminal import chip, core
from terminal.cards import Card, check_pin, parse_amount
from terminal.chip import parse_key as chip_key
from terminal.core import Original, Outcome, Profile
from terminal.errors import (
    BadInput,
    CommunicationError,
    ConnectFailed,
    TerminalError,
)
from terminal.pinpad import PinPad, parse_key_hex
from terminal.transport import TcpTransport, parse_addresses, tls_context

OPERATIONS = ("sale", "balance", "void", "refund")
REVERSIBLE = frozenset({"sale", "void"})
PROGRESS_SECONDS = 1.0
STAN_BYTES = 3
CONNECT_TIMEOUT = 10.0
RETRY_PAUSE = 0.5
ATC_COUNTERS: dict[str, list[int]] = {}
"""Chip load: the ATC of each emulated card (by PAN), shared by the terminals of this run."""


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
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    """Every terminal connects over TLS with this context (posterm load --tls)."""
    chip_imk: bytes | None = field(default=None, repr=False)
    """With an issuer MK-AC the cards are emulated chip cards (PSN ``chip_psn``, keys derived
    by option A): sales and balance inquiries go by chip, ARQC in, ARPC checked."""
    chip_psn: str = "01"
    atc_start: int = 1
    secondaries: tuple[tuple[str, int], ...] = ()
    """Hosts a terminal fails over to when host:port refuses a connection (in order)."""

    @classmethod
    def from_cli(cls, *, address: str, terminals: int, duration: float, rate: float, mix: str,
                 report: str | None, tid_prefix: str, mid: str, tmk: str,
                 track2: tuple[str, ...], pin: str | None, mac: str, timeout: float,
                 amount: str = "1.00", settle: bool = True, tls: bool = False,
                 tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, chip: bool = False,
                 imk_ac: str | None = None, atc_start: int = 1) -> LoadSettings:
        try:
            (host, port), *others = parse_addresses(address)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        if not tls and (tls_ca or tls_cert or tls_key):
            raise BadInput("--ca, --cert and --key go with --tls")
        context = tls_context(tls_ca, tls_cert, tls_key) if tls else None
        if chip and not imk_ac:
            raise BadInput("--chip needs --imk-ac (the issuer key of the cards' BIN)")
        chip_imk = chip_key(imk_ac, "--imk-ac") if chip and imk_ac else None
        return cls(host, port, terminals, duration, rate, parse_mix(mix),
                   terminal_ids(tid_prefix, terminals), mid, parse_key_hex(tmk),
                   [Card.from_track2(t) for t in track2], check_pin(pin) if pin else None,
                   mac, timeout, parse_amount(amount), report, settle, ssl_context=context,
                   chip_imk=chip_imk, atc_start=atc_start, secondaries=tuple(others))


def terminal_ids(prefix: str, count: int) -> list[str]:
    """:func:`shared.naming.terminal_ids`, refusals as :class:`BadInput`.

    >>> terminal_ids("LT", 2)
    ['LT000001', 'LT000002']
    """
    try:
        return naming.terminal_ids(prefix, count)
    except NamingError as exc:
        raise BadInput(str(exc)) from None


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
    interrupted: bool = False
    """Stopped early (Ctrl-C): in-flight requests reversed, batches still settled."""

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
        self.line = TcpTransport(settings.host, settings.port, connect_timeout=CONNECT_TIMEOUT,
                                 ssl_context=settings.ssl_context,
                                 alternates=settings.secondaries)
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
        self.chip_card: chip.ChipCard | None = None
        self.reads: dict[str, chip.ChipRead] = {}
        if settings.chip_imk is not None:
            mk = chip.icc_mk_from_issuer_key(settings.chip_imk, card.pan, settings.chip_psn)
            self.chip_card = chip.ChipCard(card.pan, card.pan, settings.chip_psn, card.expiry,
                                           mk)

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
        self.pin_block = pin_block
        if self.chip_card is not None:  # every chip request has its own ARQC: no templates
            self.templates = {}
            self.stats.signed_on += 1
            return
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
        while trio.current_time() < deadline and not self.stopping:
            with trio.CancelScope() as self.scope:
                await self.drive(deadline, interval)
            self.scope = None
            if self.inflight is not None:
                self.timed_out(*self.inflight)
        if self.s.settle:
            await self.settle()
        await self.line.aclose()

    stopping = False
    """Set on an early stop: finish the exchange in flight (or reverse it), then settle."""

    def stop(self) -> None:
        self.stopping = True
        if self.scope is not None:
            self.scope.cancel()

    async def drive(self, deadline: float, interval: float) -> None:
        while trio.current_time() < deadline and not self.stopping:
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
        if op in ("sale", "refund") and core.batch_full(self.batch_entries.values()):
            await self.settle_full_batch()
            return
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
        if self.chip_card is not None and op in ("sale", "balance"):
            return self.chip_request(op, stan), None
        sold = self.sold.popleft()
        original = Original(sold.batch, sold.stan, sold.rrn, sold.amount, sold.auth, sold.date)
        if op == "void":
            return core.void_request(self.profile, stan, self.batch, self.card, original), None
        return core.refund_request(self.profile, stan, self.batch, self.card, original,
                                   sold.amount), None

    def chip_request(self, op: str, stan: str) -> Message:
        """A chip sale or balance inquiry: the card's next ATC (shared by every terminal that
        reads the same card, in this process) and a fresh ARQC."""
        assert self.chip_card is not None
        atcs = ATC_COUNTERS.setdefault(self.chip_card.pan, [self.s.atc_start - 1])
        atcs[0] += 1
        amount = self.s.amount if op == "sale" else 0
        read = chip.first_generate_ac(self.chip_card, amount, op, date=time.strftime("%y%m%d"),
                                      atc=atcs[0], pin=self.pin_block is not None)
        self.reads = {stan: read}
        card_read = chip.card_read(read)
        if op == "sale":
            return core.sale_request(self.profile, stan, self.batch, card_read, amount,
                                     self.pin_block)
        return core.balance_request(self.profile, stan, self.batch, card_read, self.pin_block)

    def card_accepts(self, op: str, doc: Message, outcome: Outcome) -> bool:
        """The chip card's second GENERATE AC; a host approval it refuses (ARPC missing or
        wrong) is reversed with 0400/06 carrying the AAC."""
        read = self.reads.pop(doc["11"], None)
        if self.chip_card is None or read is None:
            return True
        tags = chip.f55_tags_of(outcome.response or {})
        second = chip.second_generate_ac(self.chip_card, read, tags.get("91"),
                                         outcome.code or "")
        if not outcome.approved or second.approved:
            return True
        self.stats.errors[f"{op}: declined by card"] += 1
        if op == "sale":
            reversal = core.reversal_request(doc, core.REASON_OTHER, outcome.get("38"))
            reversal["55"] = chip.reversal_f55(second)
            self.reversal = reversal
        return False

    def after(self, op: str, doc: Message, outcome: Outcome) -> None:
        stan = doc["11"]
        if not self.card_accepts(op, doc, outcome):
            return
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

    async def settle_full_batch(self) -> None:
        """The batch holds all that F48 can count: settle it, then sign on for the next one."""
        await self.settle()
        self.batch_entries.clear()
        self.sold.clear()
        await self.sign_on()

    async def upload(self, entries: list[core.BatchEntry]) -> None:
        for chunk in core.upload_chunks(entries):
            await self.exchange(core.upload_request(self.profile, self.next_stan(), self.batch,
                                                    chunk))
        await self.exchange(core.upload_end_request(self.profile, self.next_stan(), self.batch,
                                                    len(entries)))


def build_report(settings: LoadSettings, stats: Stats, elapsed: float) -> dict[str, Any]:
    every = [v for values in stats.latencies.values() for v in values]
    return {
        "settings": {k: v for k, v in asdict(replace(settings, ssl_context=None)).items()
                     if k not in ("tmk", "cards", "pin", "tids", "ssl_context", "chip_imk")}
        | {"cards": [mask_pan(c.pan) for c in settings.cards],
           "tls": settings.ssl_context is not None, "chip": settings.chip_imk is not None},
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
        "interrupted": stats.interrupted,
    }


async def run_load(settings: LoadSettings,
                   progress: Callable[[str], None] | None = None,
                   stop: trio.Event | None = None) -> dict[str, Any]:
    """Run the load and return the report. ``stop`` set early (Ctrl-C in the CLI) ends the
    run cleanly: each terminal's request in flight is given up and reversed, its batch
    settled, so the next run starts from closed batches; the report says ``interrupted``."""
    stop = stop if stop is not None else trio.Event()
    ATC_COUNTERS.clear()
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
    deadline = started + (settings.duration if ready else 0.0)  # nobody signed on: done
    with trio.CancelScope() as watching:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_when, stop, stats, ready)
            async with trio.open_nursery() as running:
                for t in ready:
                    running.start_soon(t.run, deadline, interval)
                if progress is not None:
                    running.start_soon(_progress, stats, started, deadline, progress, stop)
            watching.cancel()
    elapsed = min(trio.current_time(), deadline) - started
    return build_report(settings, stats, max(elapsed, 1e-9))


async def _stop_when(stop: trio.Event, stats: Stats, terminals: list[LoadTerminal]) -> None:
    await stop.wait()
    stats.interrupted = True
    for t in terminals:
        t.stop()


async def _progress(stats: Stats, started: float, deadline: float,
                    show: Callable[[str], None], stop: trio.Event | None = None) -> None:
    last, last_at = 0, started
    stats.take_recent()
    while trio.current_time() < deadline and not (stop is not None and stop.is_set()):
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
    if report.get("interrupted"):
        lines.append("interrupted (Ctrl-C): stopped early; requests in flight reversed,"
                     " batches settled")
    return "\n".join(lines)


async def _interruptible(settings: LoadSettings,
                         progress: Callable[[str], None] | None) -> dict[str, Any]:
    """run_load where the first Ctrl-C stops the run cleanly (summary, report, settled
    batches); a second one stops at once."""
    stop = trio.Event()

    async def on_interrupt(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                           ) -> None:
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                if stop.is_set():
                    raise KeyboardInterrupt
                print("interrupted: settling and writing the report (Ctrl-C again to quit"
                      " at once)", file=sys.stderr, flush=True)
                stop.set()

    async with trio.open_nursery() as nursery:
        if threading.current_thread() is threading.main_thread():  # signals: main thread only
            await nursery.start(on_interrupt)
        report = await run_load(settings, progress, stop)
        nursery.cancel_scope.cancel()
    return report


def run_load_cli(settings: LoadSettings) -> dict[str, Any]:
    """Run under trio with a progress line on stderr; print and write the report."""
    live = sys.stderr.isatty()

    def show(line: str) -> None:
        if live:  # one line, rewritten in place
            print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    report = trio.run(_interruptible, settings, show if settings.progress else None)
    if live and settings.progress:
        print(file=sys.stderr)
    print(render_report(report), file=sys.stderr)
    if settings.report:
        with open(settings.report, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, sort_keys=True)
    return report
