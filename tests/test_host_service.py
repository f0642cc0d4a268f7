"""HostService.handle in memory, the way h11 tests a connection pair: posterm's terminal side
(through the test kit) hands its frame payloads straight to the host's message path. Real
in-process HSM on the test LMK, a real temporary SQLite store and its writer; no socket."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from host.db import PanProtector, open_store
from host.errors import CloseConnection
from host.hsm import check_lmk, ensure_pvk
from host.ledger import Ledger, RrnCounter
from host.ops import LocalStore
from host.service import HostService
from host.writer import Writer
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from specs import codes
from specs.framing import Frame, Header, TcpFrameDecoder, Tpdu
from specs.messages import decode_message, encode_message
from specs.pretty import mask_pan
from tests.conftest import CARDS, MID, TID, TMK, provision
from tests.hostkit import TestCard, TestTerminal


class PairedTerminal(TestTerminal):
    """The kit terminal wired to a HostService: a payload in, the service's framed answer out
    (unframed here as the terminal's transport would)."""

    def __init__(self, service: HostService, **kwargs: Any) -> None:
        super().__init__("in-memory", 0, **kwargs)
        self.service = service

    async def __aenter__(self) -> PairedTerminal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send_payload(self, payload: bytes) -> bytes | None:
        try:
            framed = await self.service.handle(payload)
        except CloseConnection:
            return None
        decoder = TcpFrameDecoder()
        decoder.feed(framed)
        answer = decoder.next_payload()
        assert answer is not None and decoder.next_payload() is None  # exactly one frame
        return answer


@asynccontextmanager
async def host_service(db_path: Path) -> AsyncIterator[tuple[HostService, dict[str, TestCard]]]:
    """The message path of ``poshost serve`` (as host.app wires it) on a fresh store."""
    hsm = HsmClient.in_process(HsmEngine.test())
    cards = await provision(db_path, hsm)
    conn = open_store(db_path)
    try:
        await check_lmk(conn, hsm)
        pvk = await ensure_pvk(conn, hsm)
        rrns = RrnCounter.load(conn)
        writer = Writer(db_path, before_commit=rrns.persist)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            yield HostService(hsm, LocalStore(writer, Ledger(PanProtector.load(conn))), rrns,
                              conn, pvk), cards
            nursery.cancel_scope.cancel()
    finally:
        conn.close()
        await hsm.aclose()


@pytest.fixture
async def paired(tmp_path: Path) -> AsyncIterator[tuple[PairedTerminal, dict[str, TestCard],
                                                        Path]]:
    db_path = tmp_path / "host.db"
    async with host_service(db_path) as (service, cards):
        yield PairedTerminal(service, tid=TID, mid=MID, tmk=TMK), cards, db_path


def balance_of(db_path: Path, pan: str) -> int:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT balance FROM cards WHERE pan_masked=?",
                            (mask_pan(pan),)).fetchone()[0]


async def test_sign_on_sale_void_and_replay(paired: Any) -> None:
    t, cards, db_path = paired
    good = cards["good"]
    assert (await t.sign_on()).code == codes.APPROVED and t.mak is not None
    sale = await t.sale(good, 2_500)
    assert sale.code == codes.APPROVED and sale["63"].startswith("CUP")
    assert balance_of(db_path, good.pan) == CARDS["good"][3] - 2_500  # committed before the answer
    again = await t.exchange(dict(sale.request))  # the same request again: the same answer
    assert again.code == codes.APPROVED and again["37"] == sale["37"]
    assert balance_of(db_path, good.pan) == CARDS["good"][3] - 2_500  # applied once
    assert (await t.void(good, sale)).code == codes.APPROVED
    assert balance_of(db_path, good.pan) == CARDS["good"][3]


@pytest.mark.parametrize(("card", "pin", "amount", "code"), [
    ("good", "same", 100, codes.APPROVED),
    ("good", "9999", 100, codes.WRONG_PIN),
    ("low", "same", 1_001, codes.INSUFFICIENT_FUNDS),
    ("limited", "same", 50_001, codes.OVER_LIMIT),
    ("lost", "same", 100, codes.LOST),
    ("stolen", "same", 100, codes.STOLEN),
    ("expired", "same", 100, codes.EXPIRED),
])
async def test_sale_codes(paired: Any, card: str, pin: str, amount: int, code: str) -> None:
    t, cards, _ = paired
    await t.sign_on()
    assert (await t.sale(cards[card], amount, pin=pin)).code == code


async def test_bad_mac_unknown_terminal_and_wrong_merchant(paired: Any) -> None:
    t, cards, _ = paired
    await t.sign_on()
    good_mak, t.mak = t.mak, bytes(16)
    request = t.financial("sale", cards["good"], 100, cards["good"].pin)
    payload = Frame(Tpdu(), Header(), t.encode(request)).payload()
    answer = decode_message(Frame.parse(await t.send_payload(payload)).body)
    assert answer["39"] == codes.MAC_ERROR and "64" not in answer
    t.mak = good_mak
    stranger = PairedTerminal(t.service, tid="87654321", mid=MID, tmk=TMK)
    assert (await stranger.sign_on()).code == codes.UNKNOWN_TERMINAL
    other_merchant = PairedTerminal(t.service, tid=TID, mid="999999999999999", tmk=TMK)
    assert (await other_merchant.sign_on()).code == codes.INVALID_MERCHANT


async def test_undecodable_requests(paired: Any) -> None:
    t, _, _ = paired
    body = encode_message({"t": "0200", "3": "000000", "11": "000001", "41": TID, "42": MID,
                           "60": "22000001000"})  # no amount, no card, no MAC
    raw = await t.send_payload(Frame(Tpdu(), Header(), body).payload())
    assert raw is not None
    answer = decode_message(Frame.parse(raw).body)
    assert answer["39"] == codes.FORMAT_ERROR and answer["41"] == TID and "64" not in answer
    assert await t.send_payload(b"\x61garbage") is None  # no TPDU: the connection is dropped
