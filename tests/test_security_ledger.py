"""Money from nothing (issue 19 a): every ordering of sale, void, refund and the reversals of
the sale and the void, over real TCP and a real SQLite file. The card may never end above where
it started, and it must move exactly as the host will settle the batch."""

from __future__ import annotations

import itertools
import sqlite3

from host.provision import add_card
from specs.composite import Field61, decode_field60, encode_field61
from specs.pretty import mask_pan
from tests.conftest import FAR_EXPIRY, RunningHost
from tests.hostkit import TestCard, TestTerminal, track2_of

SALE = 10_000
START = 1_000_000
EVENTS = ("sale", "void", "refund", "reverse_sale", "reverse_void")
NEEDS_SALE = ("void", "refund", "reverse_void")


def orderings() -> list[tuple[str, ...]]:
    """Every order in which a terminal (or an attacker) can send the five messages: void,
    refund and the void's reversal need the sale's RRN, so they follow the sale; the sale's
    reversal may come at any point, even before it."""
    return [p for p in itertools.permutations(EVENTS)
            if all(p.index("sale") < p.index(e) for e in NEEDS_SALE)]


def card_state(db: object, pan: str) -> tuple[int, int]:
    """(balance, what settlement moves for this card: -live sales + live refunds)."""
    conn = sqlite3.connect(str(db))
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT balance, pan_hash FROM cards WHERE pan_masked=?",
                           (mask_pan(pan),)).fetchone()
        settled = 0
        for t in conn.execute("SELECT * FROM txns WHERE pan_hash=?", (row["pan_hash"],)):
            approved = t["rc"] == "00" and not t["reversed"]
            if t["kind"] == "sale" and approved and t["voided_by"] is None:
                settled -= t["amount"]
            elif t["kind"] == "refund" and approved:
                settled += t["amount"]
        return row["balance"], settled
    finally:
        conn.close()


def void_doc(t: TestTerminal, card: TestCard, sale_request: dict, sale_answer: dict) -> dict:
    batch = decode_field60(sale_request["60"]).batch
    extra = {"37": sale_answer["37"], "38": sale_answer.get("38", "000000"),
             "61": encode_field61(Field61(batch, sale_request["11"]))}
    return t.financial("void", card, SALE, None, extra)


async def play(t: TestTerminal, card: TestCard, order: tuple[str, ...],
               refund_amount: int) -> dict[str, str]:
    sale_doc = t.financial("sale", card, SALE, card.pin)
    sale = void = None
    codes: dict[str, str] = {}
    for event in order:
        if event == "sale":
            sale = await t.exchange(sale_doc)
            codes[event] = sale.code
        elif event == "reverse_sale":
            codes[event] = (await t.reverse(sale_doc)).code
        elif event == "void":
            assert sale is not None
            if void is None:
                void = void_doc(t, card, sale_doc, sale.doc)
            codes[event] = (await t.exchange(void)).code
        elif event == "reverse_void":
            assert sale is not None
            if void is None:  # reversal of a void not sent yet: its STAN is taken now
                void = void_doc(t, card, sale_doc, sale.doc)
            codes[event] = (await t.reverse(void)).code
        elif event == "refund":
            assert sale is not None
            if sale.code != "00":
                codes[event] = "--"  # no RRN to refund against
                continue
            codes[event] = (await t.refund(card, sale, refund_amount)).code
    return codes


async def test_every_ordering_moves_the_card_exactly_as_settlement(
        running_host: RunningHost) -> None:
    cases = [(order, amount) for order in orderings() for amount in (SALE, 4_000)]
    assert len(cases) == 60
    async with running_host.terminal() as t:
        await t.sign_on()
        for n, (order, refund_amount) in enumerate(cases):
            pan = f"62220277{n:010d}"
            pan += str(_luhn_digit(pan))
            await add_card(running_host.db_path, running_host.hsm, pan, FAR_EXPIRY, "1234",
                           START, None, "active", True)
            card = TestCard(pan, FAR_EXPIRY, "1234", track2_of(pan, FAR_EXPIRY), START)
            codes = await play(t, card, order, refund_amount)
            balance, settled = card_state(running_host.db_path, pan)
            where = f"{' -> '.join(order)} (refund {refund_amount}): {codes}"
            assert balance <= START, f"money from nothing: {where}"
            assert balance - START == settled, f"books and card disagree: {where}"
            if codes.get("refund") == "00" and (order.index("refund")
                                               < order.index("reverse_sale")):
                assert codes["reverse_sale"] == "12", where


async def test_the_reported_attack_sale_refund_then_reversal(running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        sale = await t.sale(card, SALE)
        assert (await t.refund(card, sale, SALE)).code == "00"
        assert (await t.reverse(sale.request)).code == "12"
        balance, settled = card_state(running_host.db_path, card.pan)
        assert balance == card.balance_minor and settled == 0
        # a repeat of the refused reversal gets the same answer, still nothing undone
        assert (await t.reverse(sale.request)).code == "12"
        assert card_state(running_host.db_path, card.pan)[0] == card.balance_minor


def _luhn_digit(body: str) -> int:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return (10 - total % 10) % 10
