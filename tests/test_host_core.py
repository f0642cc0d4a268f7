"""Host core over real TCP: sign-on, sale, balance, void, refund and every decline path."""

from __future__ import annotations

import pytest

from hsm_sim.crypto import generate_kcv
from specs.composite import decode_balance, decode_field60
from specs.framing import SIGN_ON_AGAIN
from tests.conftest import BOTH_STORES, RunningHost, chosen_store


@pytest.fixture(params=BOTH_STORES)
def store(request: pytest.FixtureRequest) -> str:
    """These scenarios run on SQLite and on PostgreSQL."""
    return chosen_store(request)


async def test_sign_on_gives_keys_and_batch_one(running_host: RunningHost) -> None:
    async with running_host.terminal() as t:
        answer = await t.sign_on()
        assert answer.code == "00"
        assert decode_field60(answer["60"]).batch == "000001"
        assert decode_field60(answer["60"]).network_code == "003"
        assert t.pik is not None and t.mak is not None and t.pik != t.mak
        assert len(generate_kcv(t.pik, 4)) == 4
        for key in ("12", "13", "32", "37"):
            assert key in answer.doc


async def test_approved_sale_moves_balance_once(running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        sale = await t.sale(card, 12345)
        assert sale.code == "00"
        assert len(sale["38"]) == 6 and len(sale["37"]) == 12
        for key in ("12", "13", "15", "32", "44"):
            assert key in sale.doc
        bal = await t.balance(card)
        assert bal.code == "00"
        assert decode_balance(bal["54"]) == card.balance_minor - 12345


async def test_declines(running_host: RunningHost) -> None:
    cards = running_host.cards
    async with running_host.terminal() as t:
        await t.sign_on()
        assert (await t.sale(cards["lost"], 100)).code == "41"
        assert (await t.sale(cards["stolen"], 100)).code == "43"
        assert (await t.sale(cards["expired"], 100)).code == "54"
        assert (await t.sale(cards["low"], 5_000)).code == "51"
        assert (await t.sale(cards["limited"], 60_000)).code == "61"
        assert (await t.sale(cards["limited"], 40_000)).code == "00"
        assert (await t.sale(cards["good"], 0)).code == "13"
        unknown = type(cards["good"])("6222029999999999999", "3012", "1234",
                                      "6222029999999999999D30121010000000000", 0)
        assert (await t.sale(unknown, 100)).code == "14"
        assert (await t.sale(cards["good"], 100, pin="9999")).code == "55"
        assert (await t.sale(cards["good"], 100, pin=None)).code == "55"  # PIN card, no F52
        assert (await t.sale(cards["good"], 100, manual=True)).code == "00"


async def test_three_wrong_pins_then_75(running_host: RunningHost) -> None:
    card = running_host.cards["low"]
    async with running_host.terminal() as t:
        await t.sign_on()
        assert (await t.sale(card, 100, pin="0000")).code == "55"
        assert (await t.sale(card, 100)).code == "00"  # a right PIN resets the count
        for _ in range(3):
            assert (await t.sale(card, 100, pin="0000")).code == "55"
        assert (await t.sale(card, 100)).code == "75"
        assert (await t.balance(card)).code == "75"


async def test_mac_required_and_checked(running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        # no sign-on yet: no working keys -> A0 without MAC, header asks for sign-on
        t.pik = t.mak = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
        answer = await t.sale(card, 100)
        assert answer.code == "A0"
        assert answer.frame.header.processing_requirement == SIGN_ON_AGAIN
        await t.sign_on()
        good_mak = t.mak
        t.mak = bytes(16)
        bad = await t.sale(card, 100)
        assert bad.code == "A0"
        t.mak = good_mak
        assert (await t.sale(card, 100)).code == "00"


async def test_unknown_terminal_and_wrong_merchant(running_host: RunningHost) -> None:
    async with running_host.terminal() as t:
        t.tid = "99999999"
        assert (await t.sign_on()).code == "97"
        t.tid = running_host.tid
        t.mid = "999999999999999"
        assert (await t.sign_on()).code == "03"


async def test_echo_and_sign_off(running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        assert (await t.echo()).code == "00"
        assert (await t.sign_off()).code == "00"
        assert (await t.sale(card, 100)).code == "A0"
        await t.sign_on()
        assert (await t.sale(card, 100)).code == "00"
