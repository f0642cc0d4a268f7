"""Void, refund, idempotence, reversal and restart over real TCP and a real SQLite file (and
the same scenarios on PostgreSQL)."""

from __future__ import annotations

import pytest
import trio

from host.app import HostConfig, run_host
from host.db import connect
from specs.composite import decode_balance
from specs.pretty import mask_pan
from tests.conftest import BOTH_STORES, RunningHost, chosen_store


@pytest.fixture(params=BOTH_STORES)
def store(request: pytest.FixtureRequest) -> str:
    """These scenarios run on SQLite and on PostgreSQL."""
    return chosen_store(request)


def balance_of(running_host: RunningHost, name: str) -> int:
    conn = connect(running_host.db_path)
    try:
        pan = running_host.cards[name].pan
        return conn.execute("SELECT balance FROM cards WHERE pan_masked=?",
                            (mask_pan(pan),)).fetchone()[0]
    finally:
        conn.close()


async def test_void_restores_and_only_once(running_host: RunningHost) -> None:
    card, other = running_host.cards["good"], running_host.cards["limited"]
    async with running_host.terminal() as t:
        await t.sign_on()
        sale = await t.sale(card, 5_000)
        assert balance_of(running_host, "good") == card.balance_minor - 5_000
        assert (await t.void(card, sale, amount=4_000)).code == "64"
        assert (await t.void(other, sale)).code == "12"
        void = await t.void(card, sale)
        assert void.code == "00" and len(void["38"]) == 6
        assert balance_of(running_host, "good") == card.balance_minor
        assert (await t.void(card, sale)).code == "12"
        declined = await t.sale(card, 100, pin="0000")
        assert (await t.void(card, declined)).code == "12"
        ghost = await t.sale(card, 100)
        ghost.request["11"] = "999999"
        assert (await t.void(card, ghost)).code == "25"


async def test_refunds_up_to_the_sale_then_64(running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        sale = await t.sale(card, 10_000)
        assert (await t.refund(card, sale, 6_000)).code == "00"
        assert (await t.refund(card, sale, 5_000)).code == "64"
        assert (await t.refund(card, sale, 4_000)).code == "00"
        assert (await t.refund(card, sale, 1)).code == "64"
        assert (await t.refund(card, sale, 0)).code == "13"
        assert balance_of(running_host, "good") == card.balance_minor


async def test_duplicates_both_ways(running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        first = await t.sale(card, 777)
        again = await t.exchange(dict(first.request))
        assert again.code == "00"
        for key in ("37", "38", "39", "4", "11", "15"):
            assert again[key] == first[key]
        assert balance_of(running_host, "good") == card.balance_minor - 777
        changed = dict(first.request)
        changed["4"] = f"{778:012d}"
        assert (await t.exchange(changed)).code == "94"
        assert balance_of(running_host, "good") == card.balance_minor - 777
        # a repeat after a new sign-on (new PIK/MAK) is still the same request
        await t.sign_on()
        repeat = t.financial("sale", card, 777, card.pin)
        repeat["11"] = first.request["11"]
        again = await t.exchange(repeat)
        assert again.code == "00" and again["37"] == first["37"]


async def test_reversal_of_sale_and_duplicate_reversal(running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        sale = await t.sale(card, 3_000)
        rev = await t.reverse(sale.request)
        assert rev.code == "00" and rev["37"] == sale["37"]
        assert balance_of(running_host, "good") == card.balance_minor
        rev2 = await t.reverse(sale.request)
        assert rev2.code == "00" and rev2["37"] == rev["37"]
        assert balance_of(running_host, "good") == card.balance_minor
        assert (await t.void(card, sale)).code == "12"


async def test_reversal_before_its_original(running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        sale_doc = t.financial("sale", card, 2_500, card.pin)
        rev = await t.reverse(sale_doc, reason="06")
        assert rev.code == "00"
        late = await t.exchange(sale_doc)
        assert late.code != "00"
        assert balance_of(running_host, "good") == card.balance_minor
        assert (await t.exchange(sale_doc)).code == late.code


async def test_reversal_of_a_void_restores_the_sale(running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        sale = await t.sale(card, 4_000)
        void = await t.void(card, sale)
        assert balance_of(running_host, "good") == card.balance_minor
        assert (await t.reverse(void.request, reason="A0")).code == "00"
        assert balance_of(running_host, "good") == card.balance_minor - 4_000
        assert (await t.void(card, sale)).code == "00"
        assert balance_of(running_host, "good") == card.balance_minor


async def test_restart_keeps_everything(running_host: RunningHost, tmp_path) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        sales = [await t.sale(card, 100 + i) for i in range(5)]
    # a second host on the same file (the first keeps running: WAL readers/writers coexist)
    async with trio.open_nursery() as nursery:
        config = HostConfig(listen_port=0, db_path=running_host.db_path)
        host, port = await nursery.start(run_host, config)
        t2 = running_host.terminal()
        t2.host, t2.port = host, port
        async with t2:
            t2.pik, t2.mak, t2.batch = t.pik, t.mak, t.batch
            again = await t2.exchange(dict(sales[2].request))
            assert again["37"] == sales[2]["37"]
            bal = await t2.balance(card)
            assert decode_balance(bal["54"]) == card.balance_minor - sum(100 + i for i in range(5))
        nursery.cancel_scope.cancel()
