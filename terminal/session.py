"""One terminal doing its work online: the thin async shell around :mod:`terminal.core`.

It allocates STANs and records reversals through the :class:`Store` before sending, moves
frames through a :class:`Transport`, believes a response only after :func:`core.evaluate`
and keeps the protocol.md section 6 discipline: pending reversals first (retried with a
doubling back-off), refund advices stored and forwarded, settlement by totals with batch upload,
resumable at every step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from specs.codes import APPROVED, describe_code
from specs.composite import BALANCED, NOT_BALANCED, decode_balance
from specs.errors import SpecError
from specs.messages import Message
from specs.pretty import mask_pan
from terminal import chip, chipstore, core
from terminal.cards import Card
from terminal.core import Original, Outcome
from terminal.errors import (
    CommunicationError,
    GarbledResponse,
    HostMalfunction,
    NoResponse,
    NotReady,
    ResponseRejected,
)
from terminal.state import APPROVED as ST_APPROVED
from terminal.state import DECLINED, UNANSWERED, JournalEntry, QueuedAdvice, Store
from terminal.transport import Transport

Tracer = Callable[[str, bytes, float], None]
"""Called with ("send" | "recv", payload, seconds since the request was sent)."""
Sleep = Callable[[float], Awaitable[None]]
ADVICE_RETRY_CODES = frozenset({"96", "A0", "22", "77"})
"""Advice answers that are not final: keep the advice queued and retry it later."""
UPLOAD, TOTALS = "upload", "totals"
BATCH_MISMATCH = "77"


@dataclass
class Result:
    """What a command did, for receipts and --json."""

    command: str
    status: str  # approved, declined, accepted, queued, balanced, uploaded, done
    code: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        meaning = describe_code(self.code) if self.code else None
        return {"command": self.command, "status": self.status, "response_code": self.code,
                "meaning": meaning, **self.details, "notes": self.notes}


class Terminal:
    """An initialised terminal bound to its state file and a line to the host."""

    def __init__(self, store: Store, transport: Transport, *, tracer: Tracer | None = None,
                 sleep: Sleep = trio.sleep) -> None:
        self.store = store
        self.transport = transport
        self.config = store.config()
        self.profile = self.config.profile
        self.pinpad = store.pinpad()
        self.tracer = tracer
        self.sleep = sleep
        self.notes: list[str] = []

    # ----------------------------------------------------------------- the wire

    async def _send(self, request: Message) -> Outcome:
        """Send one request; a garbled answer becomes an undecodable outcome (reason 06)."""
        payload = core.encode_request(self.profile, request, self.pinpad)
        started = time.perf_counter()
        self._trace("send", payload, 0.0)
        try:
            answer = await self.transport.exchange(payload, self.config.timeout)
        except GarbledResponse as exc:
            return Outcome(request, None, None, core.REASON_OTHER, str(exc))
        self._trace("recv", answer, time.perf_counter() - started)
        outcome = core.evaluate(request, answer, self.pinpad)
        if outcome.sign_on_again:
            self.store.flag_sign_on_again()
        return outcome

    def _trace(self, direction: str, payload: bytes, elapsed: float) -> None:
        if self.tracer is not None:
            self.tracer(direction, payload, elapsed)

    def _note(self, text: str) -> None:
        self.notes.append(text)

    def _result(self, command: str, status: str, code: str | None = None,
                **details: Any) -> Result:
        base = {"tid": self.profile.tid, "mid": self.profile.mid}
        return Result(command, status, code, {**base, **details}, list(self.notes))

    # ----------------------------------------------------------------- management

    async def sign_on(self) -> Result:
        stan, batch = self.store.allocate_stan()
        await self.transport.connect()
        outcome = await self._send(core.management_request("sign_on", self.profile, stan, batch))
        self._believe(outcome, "sign-on")
        if outcome.code != APPROVED:
            return self._result("signon", "declined", outcome.code, stan=stan)
        assert outcome.response is not None
        self.pinpad.install_key_data(outcome.response["62"])
        new_batch = core.signon_batch(outcome.response)
        self.store.save_working_keys(self.pinpad, new_batch)
        return self._result("signon", "approved", outcome.code, stan=stan, batch=new_batch,
                            **{f"kcv_{k}": v for k, v in self.pinpad.check_values().items()})

    async def management(self, kind: str, command: str) -> Result:
        """Sign-off (0820/002) or echo test (0820/301)."""
        stan, batch = self.store.allocate_stan()
        await self.transport.connect()
        outcome = await self._send(core.management_request(kind, self.profile, stan, batch))
        self._believe(outcome, command)
        status = "approved" if outcome.approved else "declined"
        if kind == "sign_off" and outcome.approved:
            self.store.set_signed_off()
        return self._result(command, status, outcome.code, stan=stan, batch=batch)

    @staticmethod
    def _believe(outcome: Outcome, what: str) -> None:
        if outcome.malfunction:
            raise HostMalfunction(f"{what}: {outcome.problem}")
        if not outcome.believed:
            raise ResponseRejected(f"{what}: {outcome.problem}")

    # ----------------------------------------------------------------- pending work

    def _ready_for_financial(self) -> None:
        phase, _ = self.store.settlement_progress()
        if phase is not None:
            raise NotReady("a settlement is in progress: run posterm settle to finish it")

    async def _online(self) -> None:
        """Connect; sign on first when the host asked for it (22, 77, A0 or header 3)."""
        again = self.store.require_signed_on()
        await self.transport.connect()
        if again:
            result = await self.sign_on()
            if result.status != "approved":
                raise NotReady(f"the host asked for a new sign-on, which it refused: "
                               f"{result.code} {describe_code(result.code or '')}")
            self._note(f"signed on again as the host asked (batch {result.details['batch']})")

    async def send_reversals(self) -> int:
        """Send every pending reversal (oldest first); raise if one stays pending."""
        sent = 0
        for pending in self.store.reversals():
            await self._send_reversal(pending.journal_id, pending.request, pending.reason,
                                      pending.auth)
            sent += 1
        return sent

    async def _send_reversal(self, journal_id: int, stored: Message, reason: str,
                             auth: str | None) -> None:
        request = core.reversal_request(stored, reason, auth)
        delay = self.config.backoff
        for attempt in range(1, self.config.attempts + 1):
            self.store.count_attempt("reversals", journal_id)
            try:
                outcome = await self._send(request)
            except CommunicationError as exc:
                outcome = Outcome(request, None, None, core.REASON_OTHER, str(exc))
            if outcome.code is not None and outcome.reversal_reason != core.REASON_OTHER:
                self.store.reversal_done(journal_id)
                mac_note = " (0410 MAC did not verify)" if outcome.reversal_reason else ""
                self._note(f"reversal of STAN {request['11']} (reason {reason}) sent: "
                           f"{outcome.code} {describe_code(outcome.code)}{mac_note}")
                return
            if attempt < self.config.attempts:
                await self.sleep(delay)
                delay *= 2
        raise NoResponse(f"reversal of STAN {request['11']} (reason {reason}) still pending "
                         f"after {self.config.attempts} attempts: {outcome.problem}")

    async def forward_advices(self) -> tuple[int, int]:
        """Forward queued refund advices; returns (settled, still queued)."""
        done = left = 0
        for advice in self.store.advices():
            try:
                final = await self._forward(advice) is not None
            except CommunicationError as exc:
                self._note(f"advice STAN {advice.request['11']} kept queued: {exc}")
                left += 1
                continue
            done, left = (done + 1, left) if final else (done, left + 1)
        return done, left

    async def _forward(self, advice: QueuedAdvice) -> Outcome | None:
        """One 0220; its outcome when final (00/94 accepted, or a decline), else None."""
        self.store.count_attempt("advices", advice.journal_id)
        outcome = await self._send(advice.request)
        stan = advice.request["11"]
        if not outcome.believed or outcome.code in ADVICE_RETRY_CODES:
            self._note(f"advice STAN {stan} kept queued: {outcome.problem or outcome.code}")
            return None
        status = ST_APPROVED if outcome.accepted else DECLINED
        self.store.finish(advice.journal_id, status, _response_fields(outcome))
        self._note(f"advice STAN {stan} forwarded: {outcome.code} {describe_code(outcome.code)}")
        return outcome

    async def _prepare_online(self) -> None:
        """Connect, then send pending reversals (must succeed) and forward advices."""
        self._ready_for_financial()
        await self._online()
        await self.send_reversals()
        await self.forward_advices()

    # ----------------------------------------------------------------- financial

    async def sale(self, card: Card, amount: int, pin: str | None) -> Result:
        if core.batch_full(self.store.batch_entries()):
            raise NotReady("batch full: settle first (posterm settle)")
        await self._prepare_online()
        pin_block = self.pinpad.pin_block(pin, card.pan) if pin else None

        def build(stan: str, batch: str) -> Message:
            return core.sale_request(self.profile, stan, batch, card, amount, pin_block)

        return await self._reversible("sale", build, card, amount)

    async def void(self, trace: str, card: Card | None, pin: str | None) -> Result:
        await self._prepare_online()
        sale = self.store.find_sale(trace)
        if sale.status != ST_APPROVED or sale.voided:
            raise NotReady(f"sale {trace} is {'voided' if sale.voided else sale.status}: "
                           "only an approved sale can be voided")
        card = card or self._journal_card(sale)
        pin_block = self.pinpad.pin_block(pin, card.pan) if pin else None
        original = _original(sale)

        def build(stan: str, batch: str) -> Message:
            return core.void_request(self.profile, stan, batch, card, original, pin_block)

        return await self._reversible("void", build, card, sale.amount or 0, void_of=sale)

    async def _reversible(self, kind: str, build: Callable[[str, str], Message], card: Card,
                          amount: int, void_of: JournalEntry | None = None) -> Result:
        details = {"amount": amount, "pan": card.pan, "expiry": card.expiry}
        if void_of is not None:
            details.update(orig_batch=void_of.batch, orig_stan=void_of.stan)
        journal_id, request = self.store.begin(
            kind, build, details=details,
            reversal=lambda r: core.reversal_request(r, core.REASON_NO_RESPONSE))
        try:
            outcome = await self._send(request)
        except CommunicationError as exc:
            raise NoResponse(f"{exc}; reversal of STAN {request['11']} (98) pending, sent "
                             "before the next transaction") from None
        if not outcome.believed:
            auth = outcome.get("38") if outcome.code == APPROVED else None
            self.store.set_reversal_reason(journal_id, outcome.reversal_reason or "06", auth,
                                           outcome.code)
            error = HostMalfunction if outcome.malfunction else ResponseRejected
            raise error(f"{outcome.problem}; reversal of STAN {request['11']} "
                        f"(reason {outcome.reversal_reason}) pending")
        status = ST_APPROVED if outcome.approved else DECLINED
        self.store.finish(journal_id, status, _response_fields(outcome),
                          void_of=void_of.id if void_of else None)
        return self._financial_result(kind, outcome, card, amount, void_of)

    def _financial_result(self, kind: str, outcome: Outcome, card: Card, amount: int | None,
                          original: JournalEntry | None = None) -> Result:
        status = "approved" if outcome.accepted else "declined"
        details: dict[str, Any] = {
            "pan": mask_pan(card.pan), "entry": _entry_label(card),
            "amount_minor": amount, "stan": outcome.request["11"],
            "batch": outcome.request["60"][2:8], "rrn": outcome.get("37"),
            "auth_code": outcome.get("38"), "host_date": outcome.get("13"),
            "host_time": outcome.get("12"),
        }
        if original is not None:
            details.update(orig_stan=original.stan, orig_batch=original.batch)
        return self._result(kind, status, outcome.code, **details)

    async def balance(self, card: Card, pin: str | None) -> Result:
        await self._prepare_online()
        pin_block = self.pinpad.pin_block(pin, card.pan) if pin else None

        def build(stan: str, batch: str) -> Message:
            return core.balance_request(self.profile, stan, batch, card, pin_block)

        journal_id, request = self.store.begin("balance", build,
                                               details={"pan": card.pan})
        try:
            outcome = await self._send(request)
        except CommunicationError:
            self.store.finish(journal_id, UNANSWERED, {})
            raise
        if not outcome.believed:
            self.store.finish(journal_id, UNANSWERED, {})
        self._believe(outcome, "balance inquiry")
        self.store.finish(journal_id, ST_APPROVED if outcome.approved else DECLINED,
                          _response_fields(outcome))
        result = self._financial_result("balance", outcome, card, None)
        if outcome.approved and outcome.response and "54" in outcome.response:
            try:
                result.details["balance_minor"] = decode_balance(outcome.response["54"])
            except SpecError as exc:
                result.notes.append(f"field 54 unreadable: {exc}")
        return result

    # ----------------------------------------------------------------- chip (section 8)

    def _journal_card(self, entry: JournalEntry) -> Card:
        """The card of a journal line: a chip sale's void or refund goes out as a chip
        transaction (F22 05x/07x, F23, no F55); anything else as keyed."""
        card = _journal_card(entry)
        if entry.entry and entry.entry[:2] in (chip.ENTRY_CONTACT, chip.ENTRY_CONTACTLESS):
            row = chipstore.journal_chip(self.store, entry.id)
            if row is not None:
                return chip.ChipCardRead(card.pan, card.expiry, None, row["psn"], None,
                                         entry.entry[:2] == chip.ENTRY_CONTACTLESS)
        return card

    async def chip_sale(self, name: str, amount: int, pin: str | None, *,
                        contactless: bool = False, un: str | None = None) -> Result:
        """A sale by chip: ARQC from the emulated card, ARPC checked by the card; a host
        approval the card does not accept is reversed (0400/06 with the AAC)."""
        await self._prepare_online()
        return await self._chip("sale", name, amount, pin, contactless, un)

    async def chip_balance(self, name: str, pin: str | None, *,
                           contactless: bool = False) -> Result:
        await self._prepare_online()
        return await self._chip("balance", name, 0, pin, contactless, None)

    async def _chip(self, kind: str, name: str, amount: int, pin: str | None,
                    contactless: bool, un: str | None) -> Result:
        card = chipstore.load_card(self.store, name)
        atc = chipstore.take_atc(self.store, name)
        read = chip.first_generate_ac(card, amount, kind, date=time.strftime("%y%m%d"),
                                      atc=atc, un=un, contactless=contactless,
                                      pin=pin is not None)
        card_read = chip.card_read(read)
        pin_block = self.pinpad.pin_block(pin, card.pan) if pin else None
        details = {"amount": amount if kind == "sale" else None, "pan": card.pan,
                   "expiry": card.expiry}

        def build(stan: str, batch: str) -> Message:
            if kind == "sale":
                return core.sale_request(self.profile, stan, batch, card_read, amount,
                                         pin_block)
            return core.balance_request(self.profile, stan, batch, card_read, pin_block)

        reversal = ((lambda r: core.reversal_request(r, core.REASON_NO_RESPONSE))
                    if kind == "sale" else None)
        journal_id, request = self.store.begin(kind, build, details=details,
                                               reversal=reversal)
        chipstore.record_read(self.store, journal_id, read)
        outcome = await self._chip_send(kind, journal_id, request)
        tags = chip.f55_tags_of(outcome.response or {})
        second = chip.second_generate_ac(card, read, tags.get("91"), outcome.code or "")
        chipstore.record_second(self.store, journal_id, second)
        fields = _response_fields(outcome)
        declined_by_card = outcome.approved and not second.approved
        if declined_by_card and kind == "sale":
            await self._reverse_card_decline(journal_id, request, outcome, second, fields)
        else:
            status = ST_APPROVED if outcome.approved and second.approved else DECLINED
            self.store.finish(journal_id, status, fields)
        result = self._financial_result(kind, outcome, card_read,
                                        amount if kind == "sale" else None)
        result.details.update(self._chip_details(read, second, contactless))
        if declined_by_card:
            result.status = "declined by card"
            result.notes.append(f"declined by card: {second.reason}")
        elif kind == "balance" and outcome.approved and outcome.response \
                and "54" in outcome.response:
            try:
                result.details["balance_minor"] = decode_balance(outcome.response["54"])
            except SpecError as exc:
                result.notes.append(f"field 54 unreadable: {exc}")
        return result

    async def _chip_send(self, kind: str, journal_id: int, request: Message) -> Outcome:
        try:
            outcome = await self._send(request)
        except CommunicationError as exc:
            if kind != "sale":
                self.store.finish(journal_id, UNANSWERED, {})
                raise
            raise NoResponse(f"{exc}; reversal of STAN {request['11']} (98) pending, sent "
                             "before the next transaction") from None
        if not outcome.believed:
            if kind != "sale":
                self.store.finish(journal_id, UNANSWERED, {})
                self._believe(outcome, "balance inquiry")
            auth = outcome.get("38") if outcome.code == APPROVED else None
            self.store.set_reversal_reason(journal_id, outcome.reversal_reason or "06", auth,
                                           outcome.code)
            raise ResponseRejected(f"{outcome.problem}; reversal of STAN {request['11']} "
                                   f"(reason {outcome.reversal_reason}) pending")
        return outcome

    async def _reverse_card_decline(self, journal_id: int, request: Message, outcome: Outcome,
                                    second: chip.SecondAc, fields: dict[str, str | None]
                                    ) -> None:
        """Section 8: the host approved, the card did not (ARPC missing or wrong): journal
        the sale as declined and reverse it now with 0400/06 carrying the AAC."""
        auth = outcome.get("38")
        reversal = core.reversal_request(request, core.REASON_OTHER, auth)
        reversal["55"] = chip.reversal_f55(second)
        self.store.finish(journal_id, DECLINED, fields, clear_reversal=False)
        chipstore.replace_reversal(self.store, journal_id, json.dumps(reversal),
                                   core.REASON_OTHER, auth)
        try:
            await self.send_reversals()
        except CommunicationError as exc:
            self._note(f"reversal of STAN {request['11']} (06) pending: {exc}")

    @staticmethod
    def _chip_details(read: chip.ChipRead, second: chip.SecondAc,
                      contactless: bool) -> dict[str, Any]:
        return {
            "entry": "contactless" if contactless else "chip", "aid": read.card.aid,
            "app_label": read.card.label, "psn": read.card.psn, "atc": read.tags["9F36"],
            "arqc": read.tags["9F26"], "tvr": second.tags.get("95", read.tags["95"]),
            "cryptogram_type": {"40": "TC", "00": "AAC"}.get(second.cid, second.cid),
            "cryptogram": second.cryptogram,
        }

    async def refund(self, card: Card | None, amount: int, *, trace: str | None = None,
                     original: Original | None = None) -> Result:
        """A refund advice: stored first, then forwarded (and again later until final)."""
        await self._prepare_online()
        if trace is not None:
            sale = self.store.find_sale(trace)
            if sale.status != ST_APPROVED:
                raise NotReady(f"sale {trace} is {sale.status}: only an approved sale is refunded")
            original = _original(sale)
            card = card or self._journal_card(sale)
        if original is None or card is None:
            raise NotReady("refund needs --trace, or --rrn/--orig-date/--orig-batch/"
                           "--orig-trace with card data")
        ref_card, ref_original = card, original

        def build(stan: str, batch: str) -> Message:
            return core.refund_request(self.profile, stan, batch, ref_card, ref_original, amount)

        details = {"amount": amount, "pan": card.pan, "expiry": card.expiry,
                   "orig_batch": original.batch, "orig_stan": original.trace}
        journal_id, request = self.store.begin("refund", build, advice=True, details=details)
        advice = QueuedAdvice(journal_id, request, 0)
        try:
            outcome = await self._forward(advice)
        except CommunicationError as exc:
            raise NoResponse(f"{exc}; refund STAN {request['11']} stored, forwarded later "
                             "(posterm reversal --send or any online command)") from None
        if outcome is None:
            return self._result("refund", "queued", None, stan=request["11"],
                                amount_minor=amount, pan=mask_pan(card.pan))
        return self._financial_result("refund", outcome, card, amount)

    async def flush(self) -> Result:
        """``posterm reversal --send``: pending reversals, then queued advices."""
        await self._online()
        sent = await self.send_reversals()
        done, left = await self.forward_advices()
        status = "done" if left == 0 else "queued"
        return self._result("reversal", status, None, reversals_sent=sent,
                            advices_forwarded=done, advices_queued=left)

    # ----------------------------------------------------------------- settlement

    async def settle(self) -> Result:
        """Reversals and advices first, then 0500; upload when not balanced; close the batch."""
        await self._online()
        await self.send_reversals()
        _, left = await self.forward_advices()
        if left:
            raise NoResponse(f"{left} refund advice(s) still queued: settle again later")
        entries = self.store.batch_entries()
        totals = core.batch_totals(entries)
        summary = {"debit_amount_minor": totals.domestic.debit_amount + totals.foreign.debit_amount,
                   "debit_count": totals.domestic.debit_count + totals.foreign.debit_count,
                   "credit_amount_minor": (totals.domestic.credit_amount
                                           + totals.foreign.credit_amount),
                   "credit_count": totals.domestic.credit_count + totals.foreign.credit_count}
        phase, _ = self.store.settlement_progress()
        if phase != UPLOAD:
            result = await self._send_totals(totals, summary, retry=phase == TOTALS)
            if result is not None:
                return result
        return await self._upload(entries, summary)

    async def _send_totals(self, totals: Any, summary: dict[str, Any],
                           retry: bool) -> Result | None:
        """The 0500. ``retry``: an earlier 0500 of this batch went unanswered."""
        self.store.set_settlement_progress(TOTALS, 0)
        stan, batch = self.store.allocate_stan()
        outcome = await self._send(core.settlement_request(self.profile, stan, batch, totals))
        self._believe(outcome, "settlement")
        if outcome.code == BATCH_MISMATCH and retry:
            return await self._confirm_closed(batch, summary)
        if not outcome.approved or outcome.response is None:
            self.store.set_settlement_progress(None, 0)
            return self._result("settle", "declined", outcome.code, batch=batch, **summary)
        try:
            balance = core.settlement_result(outcome.response)
        except SpecError as exc:
            raise ResponseRejected(f"settlement response: {exc}") from None
        if balance == BALANCED:
            new_batch = self.store.close_batch()
            return self._result("settle", "balanced", outcome.code, batch=batch,
                                new_batch=new_batch, **summary)
        if balance != NOT_BALANCED:
            self.store.set_settlement_progress(None, 0)
            return self._result("settle", "declined", outcome.code, batch=batch,
                                host_result=balance, **summary)
        self.store.set_settlement_progress(UPLOAD, 0)
        self._note("host totals differ: uploading the batch")
        return None

    async def _confirm_closed(self, batch: str, summary: dict[str, Any]) -> Result:
        """77 to a repeated 0500: the host closed the batch when the first 0510 was lost.
        Sign on (as 77 asks); a new batch number from the host confirms the close."""
        signon = await self.sign_on()
        new_batch = signon.details.get("batch")
        if signon.status != "approved" or new_batch in (None, batch):
            self.store.set_settlement_progress(None, 0)
            return self._result("settle", "declined", BATCH_MISMATCH, batch=batch, **summary)
        self.store.close_batch(new_batch)
        self._note(f"the host had closed batch {batch} (its 0510 was lost); sign-on confirmed "
                   f"batch {new_batch}")
        return self._result("settle", "balanced", APPROVED, batch=batch, new_batch=new_batch,
                            **summary)

    async def _upload(self, entries: list[core.BatchEntry], summary: dict[str, Any]) -> Result:
        _, sent = self.store.settlement_progress()
        chunks = list(core.upload_chunks(entries))
        for index in range(sent, len(chunks)):
            stan, batch = self.store.allocate_stan()
            await self._advice(core.upload_request(self.profile, stan, batch, chunks[index]))
            self.store.set_settlement_progress(UPLOAD, index + 1)
        stan, batch = self.store.allocate_stan()
        await self._advice(core.upload_end_request(self.profile, stan, batch, len(entries)))
        new_batch = self.store.close_batch()
        return self._result("settle", "uploaded", APPROVED, batch=batch, new_batch=new_batch,
                            records_uploaded=len(entries), **summary)

    async def _advice(self, request: Message) -> None:
        outcome = await self._send(request)
        self._believe(outcome, "batch upload")
        if not outcome.accepted:
            raise ResponseRejected(f"batch upload refused: {outcome.code} "
                                   f"{describe_code(outcome.code or '')}; settle again later")


def _response_fields(outcome: Outcome) -> dict[str, str | None]:
    return {k: outcome.get(k) for k in ("12", "13", "37", "38", "39", "63")}


def _entry_label(card: Card) -> str:
    if isinstance(card, chip.ChipCardRead):
        return "contactless" if card.contactless else "chip"
    return "swipe" if card.swiped else "manual"


def _journal_card(entry: JournalEntry) -> Card:
    if not entry.pan or not entry.expiry:
        raise NotReady(f"the journal has no card data for trace {entry.stan}: give the card")
    return Card(entry.pan, entry.expiry)


def _original(sale: JournalEntry) -> Original:
    return Original(sale.batch, sale.stan, sale.rrn or "", sale.amount or 0, sale.auth,
                    sale.host_date or "")
