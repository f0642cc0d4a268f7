"""A journaling bench terminal: signs on, sells with PIN + MAC, voids, refunds, reverses.

Every request is built, MACed and checked by posterm's own :mod:`terminal.core` and
:class:`terminal.pinpad.PinPad`, sent over its :class:`terminal.transport.TcpTransport`; sales
go through the same STAN-spliced :class:`terminal.load.Template` fast path as ``posterm load``.
What the bench adds is the orchestration and the journal: it keeps the protocol.md rules a
real terminal keeps (automatic reversal recorded before a reversible request is sent and sent
before anything else; refund advices retried until 00/94; sign-on again on 22/77/A0) and a
journal of everything it believes, so the crash test can hold the host's database against
what the terminals saw.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from benchlib.limits import (
    CARD_EXPIRY,
    CONNECT_TIMEOUT,
    RECONNECT_BACKOFF,
    REQUEST_TIMEOUT,
    SALE_AMOUNT,
    TEST_PIN,
)
from benchlib.stats import Recorder
from specs.codes import APPROVED, DUPLICATE, REASON_NO_RESPONSE
from specs.composite import SettlementTotals, Totals, decode_settlement_totals
from specs.messages import Message
from terminal import core
from terminal.cards import Card
from terminal.errors import ConnectFailed, GarbledResponse, NoResponse
from terminal.load import Template
from terminal.pinpad import PinPad
from terminal.transport import TcpTransport

ERROR_TEXT = 60
"""Characters of an error message kept as its key in the error counts."""
LOST = (ConnectFailed, NoResponse, GarbledResponse, OSError, trio.BrokenResourceError,
        trio.ClosedResourceError, trio.TooSlowError)
"""A line that failed: nothing believable came back (the request may have arrived)."""


class BadResponse(Exception):
    """A response that cannot be believed: ``reason`` is the reversal reason (A0 or 06)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Sale:
    """A sale the terminal saw approved."""

    batch: str
    stan: str
    amount: int
    rrn: str
    auth: str
    date: str
    voided: bool = False
    refunded: bool = False
    reversed: bool = False


@dataclass
class Journal:
    """What the terminal believes happened (the claim the host is held against)."""

    sales: list[Sale] = field(default_factory=list)
    voids: list[tuple[str, str, Sale]] = field(default_factory=list)
    """(batch, stan, original sale) of approved voids still standing."""
    refunds: list[tuple[str, str, int]] = field(default_factory=list)
    """(batch, stan, amount) of accepted refunds."""
    reversals_sent: int = 0

    def standing_sales(self, batch: str) -> list[Sale]:
        return [s for s in self.sales
                if s.batch == batch and not s.voided and not s.reversed]

    def totals(self, batch: str) -> SettlementTotals:
        sales = self.standing_sales(batch)
        refunds = [a for b, _, a in self.refunds if b == batch]
        domestic = Totals(sum(s.amount for s in sales), len(sales), sum(refunds), len(refunds), 0)
        return SettlementTotals(domestic, Totals())

    def net_debit(self) -> int:
        """Money the card lost according to the terminal (sales - refunds)."""
        return (sum(s.amount for s in self.sales if not s.voided and not s.reversed)
                - sum(a for _, _, a in self.refunds))


@dataclass
class PendingReversal:
    request: Message
    reason: str
    auth: str | None = None
    undoes: Sale | None = None
    """The sale (approved earlier) whose void this reversal undoes, if any."""
    kind: str = "sale"


class BenchTerminal:
    """One terminal on one connection (reconnects when the line is lost)."""

    def __init__(self, host: str, port: int, tid: str, mid: str, tmk: bytes, pan: str,
                 recorder: Recorder | None = None, *, pin: str = TEST_PIN,
                 timeout: float = REQUEST_TIMEOUT, rng: random.Random | None = None,
                 fast: bool = True, stan_source: Callable[[], int] | None = None,
                 alternates: tuple[tuple[str, int], ...] = ()) -> None:
        """``alternates``: hosts to fail over to (another instance on the same database)."""
        self.host, self.port = host, port
        self.tid, self.mid, self.pan = tid, mid, pan
        self.profile = core.Profile(tid, mid)
        self.pinpad = PinPad(tmk)
        self.card = Card(pan, CARD_EXPIRY)
        self.pin = pin
        self.pin_block: str | None = None
        self.timeout = timeout
        self.recorder = recorder or Recorder(recording=False)
        self.rng = rng or random.Random(tid)
        self.stan = 0
        self.batch = "000000"
        self.line = TcpTransport(host, port, connect_timeout=CONNECT_TIMEOUT,
                                 alternates=alternates)
        self.journal = Journal()
        self.reversal: PendingReversal | None = None
        self.advices: list[tuple[Message, int]] = []
        self.signed_on = False
        self.fast = fast
        self.stan_source = stan_source
        self._template: Template | None = None
        self._template_amount = -1

    # ------------------------------------------------------------------ line

    def _next_stan(self) -> int:
        self.stan = self.stan_source() if self.stan_source else self.stan % core.MAX_STAN + 1
        return self.stan

    def next_stan(self) -> str:
        """The next STAN as F11 carries it."""
        return f"{self._next_stan():06d}"

    def share_session(self, other: BenchTerminal) -> None:
        """Use ``other``'s working keys and batch (another line of the same terminal)."""
        self.pinpad, self.batch, self.pin_block = other.pinpad, other.batch, other.pin_block
        self._template = None
        self.signed_on = True

    async def _drop(self) -> None:
        await self.line.aclose()

    async def _send(self, doc: Message, payload: bytes | None = None) -> tuple[bytes, Message]:
        """Send one request (``payload`` when already encoded); its response payload."""
        if payload is None:
            payload = core.encode_request(self.profile, doc, self.pinpad)
        try:
            return await self.line.exchange(payload, self.timeout), doc
        except LOST:
            await self._drop()
            raise

    def _believe(self, doc: Message, raw: bytes, templated: bool = False) -> core.Outcome:
        """The outcome of a response; raises BadResponse when it cannot be believed. A
        plainly good answer to a templated sale is read by the template's quick check."""
        outcome = None
        if templated and self._template is not None:
            outcome = self._template.quick_evaluate(doc, raw)
        if outcome is None:
            outcome = core.evaluate(doc, raw, self.pinpad)
        if outcome.reversal_reason is not None or outcome.response is None:
            raise BadResponse(outcome.problem, outcome.reversal_reason or core.REASON_OTHER)
        return outcome

    async def _exchange(self, doc: Message) -> tuple[Message, bool]:
        """One request/response: (response, sign on again); raises LOST or BadResponse."""
        raw, _ = await self._send(doc)
        outcome = self._believe(doc, raw)
        assert outcome.response is not None
        return outcome.response, outcome.sign_on_again

    async def close(self) -> None:
        await self._drop()

    # ------------------------------------------------------------------ management

    async def sign_on(self) -> None:
        doc = core.management_request("sign_on", self.profile, self.next_stan(), self.batch)
        response, _ = await self._exchange(doc)
        if response.get("39") != APPROVED:
            raise RuntimeError(f"sign-on of {self.tid} answered {response.get('39')}")
        self.pinpad.install_key_data(response["62"])
        self.batch = core.signon_batch(response)
        self.pin_block = self.pinpad.pin_block(self.pin, self.pan) if self.pin else None
        self._template = None
        self.signed_on = True

    async def _resign(self) -> None:
        self.signed_on = False
        await self.sign_on()

    # ------------------------------------------------------------------ store and forward

    async def flush(self) -> None:
        """Send the pending reversal and refund advices (raises LOST when the line fails)."""
        if self.reversal is not None:
            pending = self.reversal
            doc = core.reversal_request(pending.request, pending.reason, pending.auth)
            try:
                response, again = await self._exchange(doc)
            except BadResponse:
                await self._drop()
                raise trio.BrokenResourceError("bad reversal response") from None
            # Any 0410 with a response code clears the reversal.
            self.reversal = None
            self.journal.reversals_sent += 1
            if pending.undoes is not None and response.get("39") == APPROVED:
                pending.undoes.voided = False
                self.journal.voids = [v for v in self.journal.voids
                                      if (v[0], v[1]) != (pending.request["60"][2:8],
                                                          pending.request["11"])]
            if again:
                await self._resign()
        while self.advices:
            doc, amount = self.advices[0]
            try:
                response, again = await self._exchange(doc)
            except BadResponse:
                await self._drop()
                raise trio.BrokenResourceError("bad advice response") from None
            code = response.get("39")
            if code in (APPROVED, DUPLICATE):
                self.advices.pop(0)
                self.journal.refunds.append((doc["60"][2:8], doc["11"], amount))
            elif again:
                await self._resign()
            else:
                self.advices.pop(0)  # declined advice: nothing to apply

    async def _reversible(self, doc: Message, payload: bytes | None = None, *,
                          undoes: Sale | None = None, kind: str = "sale") -> Message | None:
        """Send a reversible request; None when no believable response came (reversal armed)."""
        self.reversal = PendingReversal(doc, REASON_NO_RESPONSE, undoes=undoes, kind=kind)
        started = trio.current_time()
        try:
            raw, _ = await self._send(doc, payload)
            outcome = self._believe(doc, raw, templated=payload is not None)
        except LOST as exc:
            self.recorder.error(f"{type(exc).__name__}: {exc}"[:ERROR_TEXT])
            return None
        except BadResponse as exc:
            self.reversal.reason = exc.reason
            self.recorder.error(f"bad response {exc.reason}")
            await self._drop()
            return None
        self.reversal = None
        response = outcome.response
        assert response is not None
        self.recorder.record(trio.current_time() - started, response.get("39", ""))
        if outcome.sign_on_again:
            await self._resign()
        return response

    # ------------------------------------------------------------------ transactions

    async def ready(self) -> None:
        """Sign on if needed and push everything pending (raises LOST if the line fails)."""
        if not self.signed_on:
            await self.sign_on()
        await self.flush()

    def _sale_request(self, amount: int) -> tuple[Message, bytes | None]:
        """A sale with the next STAN; its payload from the template on the fast path."""
        if not self.fast:
            return core.sale_request(self.profile, self.next_stan(), self.batch, self.card,
                                     amount, self.pin_block), None
        if self._template is None or self._template_amount != amount:
            doc = core.sale_request(self.profile, "000001", self.batch, self.card, amount,
                                    self.pin_block)
            self._template = Template(self.profile, doc, self.pinpad)
            self._template_amount = amount
        return self._template.render(self.next_stan())

    async def sale(self, amount: int = SALE_AMOUNT) -> Message | None:
        await self.ready()
        batch = self.batch
        doc, payload = self._sale_request(amount)
        response = await self._reversible(doc, payload)
        if response is not None and response.get("39") == APPROVED:
            self.journal.sales.append(Sale(batch, doc["11"], amount, response["37"],
                                           response["38"], response.get("13", "")))
        return response

    async def void(self) -> Message | None:
        await self.ready()
        candidates = [s for s in self.journal.standing_sales(self.batch) if not s.refunded]
        if not candidates:
            return await self.sale()
        original = self.rng.choice(candidates)
        doc = core.void_request(
            self.profile, self.next_stan(), self.batch, self.card,
            core.Original(original.batch, original.stan, original.rrn, original.amount,
                          original.auth), self.pin_block)
        original.voided = True  # provisional: undone below when not approved
        response = await self._reversible(doc, undoes=original, kind="void")
        if response is not None and response.get("39") == APPROVED:
            self.journal.voids.append((self.batch, doc["11"], original))
        else:
            # declined, or no believable answer: the void may have been applied; its
            # reversal undoes it
            original.voided = False
        return response

    async def refund(self) -> None:
        await self.ready()
        candidates = [s for s in self.journal.standing_sales(self.batch)
                      if not s.refunded and s.date]
        if not candidates:
            await self.sale()
            return
        original = self.rng.choice(candidates)
        original.refunded = True
        doc = core.refund_request(
            self.profile, self.next_stan(), self.batch, self.card,
            core.Original(original.batch, original.stan, original.rrn, original.amount,
                          date=original.date), original.amount // 2)
        self.advices.append((doc, original.amount // 2))
        started = trio.current_time()
        try:
            await self.flush()
        except LOST as exc:
            self.recorder.error(f"{type(exc).__name__}: {exc}"[:ERROR_TEXT])
            return
        self.recorder.record(trio.current_time() - started, APPROVED)

    # ------------------------------------------------------------------ settlement

    async def settle(self) -> int:
        """0500 with the journal's totals; returns the 0510 domestic result (1 balanced)."""
        await self.ready()
        doc = core.settlement_request(self.profile, self.next_stan(), self.batch,
                                      self.journal.totals(self.batch))
        response, _ = await self._exchange(doc)
        if response.get("39") != APPROVED:
            raise RuntimeError(f"settlement of {self.tid} answered {response.get('39')}")
        return decode_settlement_totals(response["48"]).domestic.result

    async def run_until_quiet(self, deadline: float) -> None:
        """Push pending reversals/advices, reconnecting, until done or ``deadline``."""
        while self.reversal is not None or self.advices or not self.signed_on:
            if trio.current_time() > deadline:
                raise TimeoutError(f"{self.tid}: pending work not delivered in time")
            try:
                await self.ready()
            except LOST:
                await trio.sleep(RECONNECT_BACKOFF)
