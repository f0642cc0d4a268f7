"""A journaling bench terminal: signs on, sells with PIN + MAC, voids, refunds, reverses.

It keeps the protocol.md rules a real terminal keeps (automatic reversal recorded before a
reversible request is sent and sent before anything else; refund advices retried until 00/94;
sign-on again on 22/77/A0) and a journal of everything it believes, so the crash test can hold
the host's database against what the terminals saw.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from benchlib import fastpath, wire
from benchlib.limits import (
    CARD_EXPIRY,
    CONNECT_TIMEOUT,
    RECONNECT_BACKOFF,
    REQUEST_TIMEOUT,
    SALE_AMOUNT,
    TEST_PIN,
)
from benchlib.stats import Recorder
from specs.composite import SettlementTotals, Totals, decode_settlement_totals
from specs.framing import SIGN_ON_AGAIN, Frame
from specs.messages import Message

ERROR_TEXT = 60
"""Characters of an error message kept as its key in the error counts."""
SIGN_ON_CODES = frozenset({"22", "77", "A0"})
APPROVED, DUPLICATE = "00", "94"
LOST = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)


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
                 fast: bool = True, stan_source: Callable[[], int] | None = None) -> None:
        self.host, self.port = host, port
        self.tid, self.mid, self.pan = tid, mid, pan
        self.keys = wire.Keys(tmk)
        self.pin = pin
        self.timeout = timeout
        self.recorder = recorder or Recorder(recording=False)
        self.rng = rng or random.Random(tid)
        self.stan = 0
        self.batch = "000000"
        self.conn: wire.Connection | None = None
        self.journal = Journal()
        self.reversal: PendingReversal | None = None
        self.advices: list[tuple[Message, int]] = []
        self.signed_on = False
        self.card: dict[str, str] | None = None
        self.fast = fast
        self.stan_source = stan_source
        self._template: fastpath.SaleTemplate | None = None
        self._template_doc: Message | None = None
        self._template_amount = -1

    # ------------------------------------------------------------------ line

    def _next_stan(self) -> int:
        self.stan = self.stan_source() if self.stan_source else wire.next_stan(self.stan)
        return self.stan

    def share_session(self, other: BenchTerminal) -> None:
        """Use ``other``'s working keys and batch (another line of the same terminal)."""
        self.keys, self.batch, self.card = other.keys, other.batch, other.card
        self.signed_on = True

    async def _drop(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await conn.aclose()

    async def _exchange(self, doc: Message, keys: wire.Keys | None) -> tuple[Message, bool]:
        """One request/response; raises LOST errors or wire.BadResponse."""
        if self.conn is None:
            with trio.fail_after(CONNECT_TIMEOUT):
                self.conn = await wire.Connection.open(self.host, self.port)
        frame = wire.encode_request(doc, keys)
        try:
            with trio.fail_after(self.timeout):
                payload = await self.conn.exchange(frame)
        except LOST:
            await self._drop()
            raise
        response = wire.read_response(doc, payload, keys)
        again = (Frame.parse(payload).header.processing_requirement == SIGN_ON_AGAIN
                 or response.get("39") in SIGN_ON_CODES)
        return response, again

    async def close(self) -> None:
        await self._drop()

    # ------------------------------------------------------------------ management

    async def sign_on(self) -> None:
        doc = wire.management("sign_on", self.tid, self.mid, self._next_stan(), self.batch)
        response, _ = await self._exchange(doc, None)
        if response.get("39") != APPROVED:
            raise RuntimeError(f"sign-on of {self.tid} answered {response.get('39')}")
        self.keys.install(response["62"])
        self.batch = wire.batch_of(response)
        self.card = wire.card_fields(self.pan, CARD_EXPIRY, self.keys, self.pin)
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
            doc = wire.reversal(pending.request, pending.reason, pending.auth)
            try:
                response, again = await self._exchange(doc, self.keys)
            except wire.BadResponse:
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
                response, again = await self._exchange(doc, self.keys)
            except wire.BadResponse:
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

    async def _reversible(self, doc: Message, *, undoes: Sale | None = None,
                          kind: str = "sale") -> Message | None:
        """Send a reversible request; None when no believable response came (reversal armed)."""
        self.reversal = PendingReversal(doc, "98", undoes=undoes, kind=kind)
        started = trio.current_time()
        try:
            response, again = await self._exchange(doc, self.keys)
        except LOST as exc:
            self.recorder.error(f"{type(exc).__name__}: {exc}"[:ERROR_TEXT])
            return None
        except wire.BadResponse as exc:
            self.reversal.reason = exc.reason
            self.recorder.error(f"bad response {exc.reason}")
            await self._drop()
            return None
        self.reversal = None
        code = response.get("39", "")
        self.recorder.record(trio.current_time() - started, code)
        if again:
            await self._resign()
        return response

    # ------------------------------------------------------------------ transactions

    async def ready(self) -> None:
        """Sign on if needed and push everything pending (raises LOST if the line fails)."""
        if not self.signed_on:
            await self.sign_on()
        await self.flush()

    async def sale(self, amount: int = SALE_AMOUNT) -> Message | None:
        await self.ready()
        assert self.card is not None
        if self.fast:
            return await self._fast_sale(amount)
        stan = self._next_stan()
        doc = wire.sale(self.tid, self.mid, stan, self.batch, self.card, amount)
        response = await self._reversible(doc)
        if response is not None and response.get("39") == APPROVED:
            self.journal.sales.append(Sale(self.batch, f"{stan:06d}", amount, response["37"],
                                           response["38"], response.get("13", "")))
        return response

    async def _fast_sale(self, amount: int) -> Message | None:
        """The sale of :meth:`sale` through the template fast path (same rules, same journal)."""
        assert self.card is not None
        if self._template is None or self._template_amount != amount:
            self._template_doc = wire.sale(self.tid, self.mid, 1, self.batch, self.card, amount)
            self._template = fastpath.SaleTemplate.build(self._template_doc, self.keys)
            self._template_amount = amount
        assert self._template_doc is not None
        stan = self._next_stan()
        frame, stan_bytes = self._template.frame(stan)
        doc = {**self._template_doc, "11": f"{stan:06d}"}
        self.reversal = PendingReversal(doc, "98")
        if self.conn is None:
            with trio.fail_after(CONNECT_TIMEOUT):
                self.conn = await wire.Connection.open(self.host, self.port)
        started = trio.current_time()
        try:
            with trio.fail_after(self.timeout):
                payload = await self.conn.exchange(frame)
            code, extra = self._template.check(payload, stan_bytes)
        except LOST as exc:
            await self._drop()
            self.recorder.error(f"{type(exc).__name__}: {exc}"[:ERROR_TEXT])
            return None
        except wire.BadResponse as exc:
            self.reversal.reason = exc.reason
            self.recorder.error(f"bad response {exc.reason}")
            await self._drop()
            return None
        self.reversal = None
        self.recorder.record(trio.current_time() - started, code)
        if code == APPROVED:
            self.journal.sales.append(Sale(self.batch, f"{stan:06d}", amount, extra["37"],
                                           extra["38"], extra.get("13", "")))
        if code in SIGN_ON_CODES or payload[7] & 0x0F == SIGN_ON_AGAIN:
            await self._resign()
        return {"t": "0210", "39": code, **extra}

    async def void(self) -> Message | None:
        await self.ready()
        assert self.card is not None
        candidates = [s for s in self.journal.standing_sales(self.batch) if not s.refunded]
        if not candidates:
            return await self.sale()
        original = self.rng.choice(candidates)
        stan = self._next_stan()
        doc = wire.void(self.tid, self.mid, stan, self.batch, self.card, original.amount,
                        original.rrn, original.auth, original.batch, original.stan)
        original.voided = True  # provisional: undone below when not approved
        response = await self._reversible(doc, undoes=original, kind="void")
        if response is not None and response.get("39") == APPROVED:
            self.journal.voids.append((self.batch, f"{stan:06d}", original))
        elif response is not None:
            original.voided = False
        else:
            # no believable answer: the void may have been applied; its reversal undoes it
            original.voided = False
        return response

    async def refund(self) -> None:
        await self.ready()
        assert self.card is not None
        candidates = [s for s in self.journal.standing_sales(self.batch)
                      if not s.refunded and s.date]
        if not candidates:
            await self.sale()
            return
        original = self.rng.choice(candidates)
        original.refunded = True
        stan = self._next_stan()
        doc = wire.refund(self.tid, self.mid, stan, self.batch, self.card,
                          original.amount // 2, original.rrn, original.batch, original.stan,
                          original.date)
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
        doc = wire.settlement(self.tid, self.mid, self._next_stan(), self.batch,
                              self.journal.totals(self.batch))
        response, _ = await self._exchange(doc, None)
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
