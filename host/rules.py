"""Transaction rules as pure code: a request's facts and the stored rows in, a decision out.

Nothing here touches a socket, the HSM or SQLite. The ledger (host/ledger.py) loads the rows,
asks these functions, and applies the decision's effects in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from host.db import Card
from host.limits import MAX_PIN_TRIES
from specs.codes import (  # rules.X names kept for callers of the old constants
    AMOUNT_MISMATCH,
    APPROVED,
    BATCH_MISMATCH,  # noqa: F401
    DO_NOT_HONOUR,
    DUPLICATE,  # noqa: F401
    EXPIRED,
    INSUFFICIENT_FUNDS,
    INVALID_AMOUNT,
    INVALID_TRANSACTION,
    LOST,
    ORIGINAL_NOT_FOUND,
    OVER_LIMIT,
    PIN_TRIES_EXCEEDED,
    STOLEN,
    SYSTEM_MALFUNCTION,  # noqa: F401
    UNKNOWN_CARD,
    WRONG_PIN,
)
from specs.composite import (
    BALANCED,
    NOT_BALANCED,
    SettlementTotals,
    Totals,
)
from specs.emv import is_contactless
from specs.pretty import pan_of

ALREADY_REVERSED = INVALID_TRANSACTION
"""Code for an original that arrives after its reversal (declined, never charged)."""

REVERSAL_AFTER_REFUND = INVALID_TRANSACTION
"""Code for a reversal of a sale that already has refunds (nothing undone, DECISIONS.md)."""

STATUS_CODES = {"lost": LOST, "stolen": STOLEN}
CARD_STATUSES = ("active", "lost", "stolen", "blocked")


class PinResult(Enum):
    """What the HSM said about the request's PIN block."""

    ABSENT = "absent"
    OK = "ok"
    WRONG = "wrong"


@dataclass(frozen=True)
class Txn:
    """An acquirer transaction row, as the rules see it."""

    id: int
    tid: str
    mid: str
    batch: int
    stan: str
    kind: str
    pan_hash: str | None
    amount: int
    rc: str
    rrn: str
    voided_by: int | None
    reversed: bool
    refunded: int
    domestic: bool

    @property
    def approved(self) -> bool:
        return self.rc == APPROVED

    @property
    def live(self) -> bool:
        """Approved and neither voided nor reversed: it moves money at settlement."""
        return self.approved and not self.reversed and self.voided_by is None


@dataclass(frozen=True)
class Decision:
    """The outcome of a financial request: its code and its effects."""

    code: str
    card_delta: int = 0
    pin_tries: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def approved(self) -> bool:
        return self.code == APPROVED


def expiry_of(doc: Mapping[str, str]) -> str | None:
    """YYMM from F14 (manual entry) or from track 2 after the separator."""
    if "14" in doc:
        return doc["14"]
    track2 = doc.get("35", "")
    _, sep, rest = track2.partition("D")
    return rest[:4] if sep and len(rest) >= 4 else None


def card_pan(doc: Mapping[str, str]) -> str:
    return pan_of(doc)


def check_amount(amount: int) -> str | None:
    return INVALID_AMOUNT if amount <= 0 else None


def _expired(expiry: str, today_yymm: str) -> bool:
    return not expiry.isdigit() or len(expiry) != 4 or expiry < today_yymm


def check_pin(card: Card, pin: PinResult) -> tuple[str | None, int | None]:
    """(decline code or None, new wrong-PIN counter or None when unchanged)."""
    if pin is PinResult.ABSENT:
        return None, None
    if card.pin_tries >= MAX_PIN_TRIES:
        return PIN_TRIES_EXCEEDED, None
    if pin is PinResult.WRONG:
        return WRONG_PIN, card.pin_tries + 1
    return None, (0 if card.pin_tries else None)


CONTACTLESS_NO_CVM_LIMIT = 1000_00
"""Contactless sales up to this amount (minor units, 1,000.00 CNY: UnionPay QuickPass's
small-amount rule) need no cardholder verification, even on a PIN card."""


def no_cvm_allowed(entry_mode: str, amount: int) -> bool:
    """A contactless sale within CONTACTLESS_NO_CVM_LIMIT: approved without a PIN block.

    >>> no_cvm_allowed("071", 1000_00), no_cvm_allowed("071", 1000_01), no_cvm_allowed("051", 1)
    (True, False, False)
    """
    return is_contactless(entry_mode) and amount <= CONTACTLESS_NO_CVM_LIMIT


def authorise_card(
    card: Card | None, request_expiry: str | None, pin: PinResult, today_yymm: str,
    no_cvm: bool = False,
) -> tuple[str | None, int | None]:
    """Issuer checks common to sales and balance inquiries, in a real issuer's order.
    ``no_cvm``: the transaction needs no cardholder verification (`no_cvm_allowed`)."""
    if card is None:
        return UNKNOWN_CARD, None
    if _expired(card.expiry, today_yymm) or (
        request_expiry is not None and (_expired(request_expiry, today_yymm)
                                        or request_expiry != card.expiry)
    ):
        return EXPIRED, None
    if card.status != "active":
        return STATUS_CODES.get(card.status, DO_NOT_HONOUR), None
    if pin is PinResult.ABSENT and getattr(card, "cvm", "pin") == "pin" and not no_cvm:
        return WRONG_PIN, None  # a PIN card without a PIN block: 55, no try counted
    return check_pin(card, pin)


def decide_sale(
    amount: int, card: Card | None, request_expiry: str | None, pin: PinResult, today_yymm: str,
    no_cvm: bool = False,
) -> Decision:
    code = check_amount(amount)
    if code:
        return Decision(code)
    code, tries = authorise_card(card, request_expiry, pin, today_yymm, no_cvm)
    if code or card is None:
        return Decision(code or UNKNOWN_CARD, pin_tries=tries)
    if card.limit_minor is not None and amount > card.limit_minor:
        return Decision(OVER_LIMIT, pin_tries=tries)
    if amount > card.balance:
        return Decision(INSUFFICIENT_FUNDS, pin_tries=tries)
    return Decision(APPROVED, card_delta=-amount, pin_tries=tries)


def decide_balance(
    card: Card | None, request_expiry: str | None, pin: PinResult, today_yymm: str
) -> Decision:
    code, tries = authorise_card(card, request_expiry, pin, today_yymm)
    if code or card is None:
        return Decision(code or UNKNOWN_CARD, pin_tries=tries)
    return Decision(APPROVED, pin_tries=tries)


def decide_void(
    amount: int, pan_hash: str, original: Txn | None, rrn: str, current_batch: int,
    card: Card | None, pin: PinResult,
) -> Decision:
    """Void: a live sale of the current batch, same card, same amount (12 / 25 / 64)."""
    if original is None or original.rrn != rrn:
        return Decision(ORIGINAL_NOT_FOUND)
    if original.kind != "sale" or not original.live or original.batch != current_batch:
        return Decision(INVALID_TRANSACTION)
    if original.refunded:
        return Decision(INVALID_TRANSACTION)
    if original.pan_hash != pan_hash:
        return Decision(INVALID_TRANSACTION)
    if amount != original.amount:
        return Decision(AMOUNT_MISMATCH)
    return _credit_card(card, pin, original.amount)


def decide_refund(
    amount: int, pan_hash: str, mid: str, original: Txn | None, batch: str, trace: str,
    card: Card | None, pin: PinResult,
) -> Decision:
    """Refund advice: an approved, unreversed sale of the same merchant and card; refunds of
    one sale never exceed its amount (64)."""
    code = check_amount(amount)
    if code:
        return Decision(code)
    if (original is None or original.mid != mid or f"{original.batch:06d}" != batch
            or original.stan != trace):
        return Decision(ORIGINAL_NOT_FOUND)
    if original.kind != "sale" or not original.live:
        return Decision(INVALID_TRANSACTION)
    if original.pan_hash != pan_hash:
        return Decision(INVALID_TRANSACTION)
    if original.refunded + amount > original.amount:
        return Decision(AMOUNT_MISMATCH)
    return _credit_card(card, pin, amount)


def _credit_card(card: Card | None, pin: PinResult, amount: int) -> Decision:
    """The card side of a void or refund: known card, PIN if one was entered, then credit."""
    if card is None:
        return Decision(UNKNOWN_CARD)
    code, tries = check_pin(card, pin)
    if code:
        return Decision(code, pin_tries=tries)
    return Decision(APPROVED, card_delta=amount, pin_tries=tries)


@dataclass(frozen=True)
class ReversalDecision:
    """A reversal's answer and what it undoes. ``undo`` is the card movement (+ credits)."""

    code: str
    mark_reversed: bool = False
    undo: int = 0
    restore_sale: int | None = None


def decide_reversal(amount: int, original: Txn | None, sale: Txn | None) -> ReversalDecision:
    """Reverse an original 0200 (sale or void). ``sale`` is the voided sale for a void.

    Unknown original: 00 (the caller remembers it). Amount differs: 64, nothing undone.
    A sale with approved refunds: 12, nothing undone (the refund already credited the card).
    """
    if original is None:
        return ReversalDecision(APPROVED)
    if original.amount != amount:
        return ReversalDecision(AMOUNT_MISMATCH)
    if original.reversed:
        return ReversalDecision(APPROVED)
    if original.kind == "sale" and original.refunded:
        # the card already got (part of) the sale back by refund: undoing the sale too would
        # pay twice (money from nothing); the refund stands, the reversal is refused
        return ReversalDecision(REVERSAL_AFTER_REFUND)
    if not original.approved:
        return ReversalDecision(APPROVED, mark_reversed=True)
    if original.kind == "sale":
        undo = 0 if original.voided_by is not None else original.amount
        return ReversalDecision(APPROVED, mark_reversed=True, undo=undo)
    if sale is None or sale.reversed:
        return ReversalDecision(APPROVED, mark_reversed=True)
    return ReversalDecision(APPROVED, mark_reversed=True, undo=-sale.amount,
                            restore_sale=sale.id)


# --------------------------------------------------------------------------- settlement


def batch_totals(txns: Iterable[Txn]) -> SettlementTotals:
    """Host totals of a batch: debit = live sales, credit = approved refunds; per origin."""
    sums = {True: [0, 0, 0, 0], False: [0, 0, 0, 0]}
    for t in txns:
        s = sums[t.domestic]
        if t.kind == "sale" and t.live:
            s[0] += t.amount
            s[1] += 1
        elif t.kind == "refund" and t.approved and not t.reversed:
            s[2] += t.amount
            s[3] += 1
    return SettlementTotals(Totals(*sums[True]), Totals(*sums[False]))


def settlement_result(host: SettlementTotals, terminal: SettlementTotals) -> SettlementTotals:
    """0510 F48: the terminal's totals with the host's result per side (1 or 2)."""

    def side(h: Totals, t: Totals) -> Totals:
        same = (h.debit_amount, h.debit_count, h.credit_amount, h.credit_count) == (
            t.debit_amount, t.debit_count, t.credit_amount, t.credit_count)
        return Totals(t.debit_amount, t.debit_count, t.credit_amount, t.credit_count,
                      BALANCED if same else NOT_BALANCED)

    return SettlementTotals(side(host.domestic, terminal.domestic),
                            side(host.foreign, terminal.foreign))


def is_balanced(result: SettlementTotals) -> bool:
    return result.domestic.result == BALANCED and result.foreign.result == BALANCED


@dataclass(frozen=True)
class Record:
    """One side's view of a batch transaction for reconciliation."""

    trace: str
    pan_hash: str
    pan_masked: str
    amount: int
    kind: str = ""
    rrn: str = ""


@dataclass(frozen=True)
class Mismatch:
    kind: str  # only_at_host | only_at_terminal | amount_differs | card_differs | count_differs
    trace: str
    host: Record | None
    terminal: Record | None


def upload_records(txns: Iterable[Txn], masked: Mapping[int, str]) -> list[Record]:
    """The records the terminal should upload: live sales and approved refunds."""
    return [
        Record(t.stan, t.pan_hash or "", masked.get(t.id, ""), t.amount, t.kind)
        for t in txns
        if (t.kind == "sale" and t.live) or (t.kind == "refund" and t.approved
                                              and not t.reversed)
    ]


def reconcile(host: list[Record], terminal: list[Record]) -> list[Mismatch]:
    """Every difference between the host's ledger and the terminal's claim, by trace."""
    by_host = {r.trace: r for r in host}
    by_term = {r.trace: r for r in terminal}
    out: list[Mismatch] = []
    for trace in sorted(by_host.keys() | by_term.keys()):
        h, t = by_host.get(trace), by_term.get(trace)
        if t is None:
            out.append(Mismatch("only_at_host", trace, h, None))
        elif h is None:
            out.append(Mismatch("only_at_terminal", trace, None, t))
        elif h.amount != t.amount:
            out.append(Mismatch("amount_differs", trace, h, t))
        elif h.pan_hash != t.pan_hash:
            out.append(Mismatch("card_differs", trace, h, t))
    return out
