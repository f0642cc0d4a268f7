"""host.rules as tables: the state a request meets -> the response code (and effects) it gets.

Pure functions, no socket, HSM or database: each row names the state it sets up."""

from __future__ import annotations

from dataclasses import replace

import pytest

from host import rules
from host.db import Card
from host.limits import MAX_PIN_TRIES
from host.rules import PinResult, Txn
from specs import codes
from specs.composite import BALANCED, NOT_BALANCED, SettlementTotals, Totals

TODAY = "2611"
CARD = Card(pan="6222021234567890128", expiry="3012", pvv="1234", pvki=1, balance=10_000,
            limit_minor=None, status="active", pin_tries=0, domestic=True)
SALE = Txn(id=1, tid="12345678", mid="123456789012345", batch=1, stan="000007", kind="sale",
           pan_hash="h1", amount=2_500, rc=codes.APPROVED, rrn="000000000042", voided_by=None,
           reversed=False, refunded=0, domestic=True)
OK, WRONG, ABSENT = PinResult.OK, PinResult.WRONG, PinResult.ABSENT


def card(**changes: object) -> Card:
    return replace(CARD, **changes)


def sale(**changes: object) -> Txn:
    return replace(SALE, **changes)


# amount, card, expiry in the request, PIN result -> code, card movement, new PIN tries
SALE_TABLE = [
    ("approved", 1_000, CARD, "3012", OK, codes.APPROVED, -1_000, None),
    ("PIN card without PIN", 1_000, CARD, None, ABSENT, codes.WRONG_PIN, 0, None),
    ("signature card without PIN", 1_000, replace(CARD, cvm="signature"), None, ABSENT,
     codes.APPROVED, -1_000, None),
    ("whole balance", 10_000, CARD, "3012", OK, codes.APPROVED, -10_000, None),
    ("zero amount", 0, CARD, "3012", OK, codes.INVALID_AMOUNT, 0, None),
    ("unknown card", 1_000, None, "3012", OK, codes.UNKNOWN_CARD, 0, None),
    ("card expired", 1_000, card(expiry="2610"), None, OK, codes.EXPIRED, 0, None),
    ("request expiry past", 1_000, CARD, "2601", OK, codes.EXPIRED, 0, None),
    ("request expiry differs", 1_000, CARD, "2912", OK, codes.EXPIRED, 0, None),
    ("lost", 1_000, card(status="lost"), "3012", OK, codes.LOST, 0, None),
    ("stolen", 1_000, card(status="stolen"), "3012", OK, codes.STOLEN, 0, None),
    ("blocked", 1_000, card(status="blocked"), "3012", OK, codes.DO_NOT_HONOUR, 0, None),
    ("wrong PIN", 1_000, CARD, "3012", WRONG, codes.WRONG_PIN, 0, 1),
    ("wrong PIN again", 1_000, card(pin_tries=1), "3012", WRONG, codes.WRONG_PIN, 0, 2),
    ("tries exhausted", 1_000, card(pin_tries=MAX_PIN_TRIES), "3012", OK,
     codes.PIN_TRIES_EXCEEDED, 0, None),
    ("right PIN resets tries", 1_000, card(pin_tries=1), "3012", OK, codes.APPROVED, -1_000, 0),
    ("over the card limit", 5_001, card(limit_minor=5_000), "3012", OK, codes.OVER_LIMIT, 0,
     None),
    ("insufficient funds", 10_001, CARD, "3012", OK, codes.INSUFFICIENT_FUNDS, 0, None),
    ("wrong PIN before funds", 10_001, CARD, "3012", WRONG, codes.WRONG_PIN, 0, 1),
    ("expiry before status", 1_000, card(expiry="2001", status="lost"), None, OK, codes.EXPIRED,
     0, None),
]


@pytest.mark.parametrize(("amount", "card_row", "expiry", "pin", "code", "delta", "tries"),
                         [row[1:] for row in SALE_TABLE], ids=[row[0] for row in SALE_TABLE])
def test_sale(amount: int, card_row: Card | None, expiry: str | None, pin: PinResult,
              code: str, delta: int, tries: int | None) -> None:
    decision = rules.decide_sale(amount, card_row, expiry, pin, TODAY)
    assert (decision.code, decision.card_delta, decision.pin_tries) == (code, delta, tries)


BALANCE_TABLE = [
    ("approved", CARD, OK, codes.APPROVED),
    ("unknown card", None, OK, codes.UNKNOWN_CARD),
    ("lost", card(status="lost"), OK, codes.LOST),
    ("wrong PIN", CARD, WRONG, codes.WRONG_PIN),
    ("expired", card(expiry="2501"), ABSENT, codes.EXPIRED),
]


@pytest.mark.parametrize(("card_row", "pin", "code"), [r[1:] for r in BALANCE_TABLE],
                         ids=[r[0] for r in BALANCE_TABLE])
def test_balance(card_row: Card | None, pin: PinResult, code: str) -> None:
    decision = rules.decide_balance(card_row, None, pin, TODAY)
    assert decision.code == code and decision.card_delta == 0


# amount, card hash, original, RRN, current batch, card, PIN -> code, card movement
VOID_TABLE = [
    ("approved", 2_500, "h1", SALE, "000000000042", 1, CARD, ABSENT, codes.APPROVED, 2_500),
    ("no original", 2_500, "h1", None, "000000000042", 1, CARD, ABSENT,
     codes.ORIGINAL_NOT_FOUND, 0),
    ("other RRN", 2_500, "h1", SALE, "000000000043", 1, CARD, ABSENT, codes.ORIGINAL_NOT_FOUND,
     0),
    ("already voided", 2_500, "h1", sale(voided_by=9), "000000000042", 1, CARD, ABSENT,
     codes.INVALID_TRANSACTION, 0),
    ("reversed", 2_500, "h1", sale(reversed=True), "000000000042", 1, CARD, ABSENT,
     codes.INVALID_TRANSACTION, 0),
    ("declined sale", 2_500, "h1", sale(rc=codes.INSUFFICIENT_FUNDS), "000000000042", 1, CARD,
     ABSENT, codes.INVALID_TRANSACTION, 0),
    ("earlier batch", 2_500, "h1", SALE, "000000000042", 2, CARD, ABSENT,
     codes.INVALID_TRANSACTION, 0),
    ("refunded", 2_500, "h1", sale(refunded=100), "000000000042", 1, CARD, ABSENT,
     codes.INVALID_TRANSACTION, 0),
    ("other card", 2_500, "h2", SALE, "000000000042", 1, CARD, ABSENT,
     codes.INVALID_TRANSACTION, 0),
    ("other amount", 2_000, "h1", SALE, "000000000042", 1, CARD, ABSENT, codes.AMOUNT_MISMATCH,
     0),
    ("card gone", 2_500, "h1", SALE, "000000000042", 1, None, ABSENT, codes.UNKNOWN_CARD, 0),
    ("wrong PIN", 2_500, "h1", SALE, "000000000042", 1, CARD, WRONG, codes.WRONG_PIN, 0),
]


@pytest.mark.parametrize(("amount", "pan_hash", "original", "rrn", "batch", "card_row", "pin",
                          "code", "delta"),
                         [r[1:] for r in VOID_TABLE], ids=[r[0] for r in VOID_TABLE])
def test_void(amount: int, pan_hash: str, original: Txn | None, rrn: str, batch: int,
              card_row: Card | None, pin: PinResult, code: str, delta: int) -> None:
    decision = rules.decide_void(amount, pan_hash, original, rrn, batch, card_row, pin)
    assert (decision.code, decision.card_delta) == (code, delta)


MID = SALE.mid
# amount, card hash, merchant, original, batch, trace -> code, card movement
REFUND_TABLE = [
    ("approved", 1_000, "h1", MID, SALE, "000001", "000007", codes.APPROVED, 1_000),
    ("whole amount", 2_500, "h1", MID, SALE, "000001", "000007", codes.APPROVED, 2_500),
    ("rest after a refund", 1_500, "h1", MID, sale(refunded=1_000), "000001", "000007",
     codes.APPROVED, 1_500),
    ("more than the rest", 1_501, "h1", MID, sale(refunded=1_000), "000001", "000007",
     codes.AMOUNT_MISMATCH, 0),
    ("zero", 0, "h1", MID, SALE, "000001", "000007", codes.INVALID_AMOUNT, 0),
    ("no original", 1_000, "h1", MID, None, "000001", "000007", codes.ORIGINAL_NOT_FOUND, 0),
    ("other merchant", 1_000, "h1", "999999999999999", SALE, "000001", "000007",
     codes.ORIGINAL_NOT_FOUND, 0),
    ("other batch", 1_000, "h1", MID, SALE, "000002", "000007", codes.ORIGINAL_NOT_FOUND, 0),
    ("other trace", 1_000, "h1", MID, SALE, "000001", "000008", codes.ORIGINAL_NOT_FOUND, 0),
    ("voided sale", 1_000, "h1", MID, sale(voided_by=3), "000001", "000007",
     codes.INVALID_TRANSACTION, 0),
    ("other card", 1_000, "h2", MID, SALE, "000001", "000007", codes.INVALID_TRANSACTION, 0),
]


@pytest.mark.parametrize(("amount", "pan_hash", "mid", "original", "batch", "trace", "code",
                          "delta"),
                         [r[1:] for r in REFUND_TABLE], ids=[r[0] for r in REFUND_TABLE])
def test_refund(amount: int, pan_hash: str, mid: str, original: Txn | None, batch: str,
                trace: str, code: str, delta: int) -> None:
    decision = rules.decide_refund(amount, pan_hash, mid, original, batch, trace, CARD, ABSENT)
    assert (decision.code, decision.card_delta) == (code, delta)


VOID = sale(id=2, kind="void", stan="000008")
# amount, original, voided sale -> code, mark reversed, undo (card movement), sale restored
REVERSAL_TABLE = [
    ("unknown original", 2_500, None, None, codes.APPROVED, False, 0, None),
    ("sale", 2_500, SALE, None, codes.APPROVED, True, 2_500, None),
    ("other amount", 2_400, SALE, None, codes.AMOUNT_MISMATCH, False, 0, None),
    ("reversed twice", 2_500, sale(reversed=True), None, codes.APPROVED, False, 0, None),
    ("declined sale", 2_500, sale(rc=codes.WRONG_PIN), None, codes.APPROVED, True, 0, None),
    ("voided sale", 2_500, sale(voided_by=2), None, codes.APPROVED, True, 0, None),
    ("void", 2_500, VOID, SALE, codes.APPROVED, True, -2_500, SALE.id),
    ("void of a reversed sale", 2_500, VOID, sale(reversed=True), codes.APPROVED, True, 0,
     None),
]


@pytest.mark.parametrize(("amount", "original", "voided", "code", "mark", "undo", "restore"),
                         [r[1:] for r in REVERSAL_TABLE], ids=[r[0] for r in REVERSAL_TABLE])
def test_reversal(amount: int, original: Txn | None, voided: Txn | None, code: str, mark: bool,
                  undo: int, restore: int | None) -> None:
    decision = rules.decide_reversal(amount, original, voided)
    assert (decision.code, decision.mark_reversed, decision.undo, decision.restore_sale) == (
        code, mark, undo, restore)


def test_settlement_totals_and_result() -> None:
    txns = [SALE, sale(id=2, amount=100, voided_by=5), sale(id=3, amount=700, reversed=True),
            sale(id=4, kind="refund", amount=300), sale(id=5, amount=900, domestic=False)]
    host = rules.batch_totals(txns)
    assert host == SettlementTotals(Totals(2_500, 1, 300, 1), Totals(900, 1, 0, 0))
    agreed = rules.settlement_result(host, host)
    assert rules.is_balanced(agreed)
    claimed = SettlementTotals(Totals(2_600, 2, 300, 1), Totals(900, 1, 0, 0))
    result = rules.settlement_result(host, claimed)
    assert (result.domestic.result, result.foreign.result) == (NOT_BALANCED, BALANCED)
    assert result.domestic.debit_amount == 2_600  # the terminal's claim, judged
