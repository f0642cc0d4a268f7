"""What the cross-instance guarantees rest on, shown deterministically: two ledgers on two
connections to one real PostgreSQL database (as two host instances have), the first one's
transaction left open while the second applies a conflicting request on a thread. The second
must wait for the first to commit and then decide on what it committed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from host.db import PanProtector, connect, load_card
from host.hsm import load_pan_keys
from host.ledger import Ledger, Request
from host.responses import request_digest
from host.rules import PinResult
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from specs.catalog import identify_request
from specs.codes import INSUFFICIENT_FUNDS
from tests.conftest import MID, TID, TMK, new_pg_database, provision
from tests.hostkit import TestCard, TestTerminal

OTHER_TID = "87654321"
BLOCKED_FOR = 0.5
"""How long the second transaction must stay blocked behind the first (seconds)."""
KEYS = {"pik_lmk": "U" + "0" * 32, "pik_kcv": "000000", "mak_lmk": "U" + "1" * 32,
        "mak_kcv": "000000"}


class Blocked(threading.Thread):
    """Runs ``job`` on its own connection in a transaction it commits."""

    def __init__(self, url: str, job: Callable[[Any], Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.job = url, job
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = connect(self.url)
        try:
            conn.execute("BEGIN")
            self.result = self.job(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()


async def _setup() -> tuple[str, Ledger, dict[str, TestCard], dict[str, str]]:
    url = new_pg_database()
    hsm = HsmClient.in_process(HsmEngine.test())
    cards = await provision(url, hsm)
    from host.provision import add_terminal
    await add_terminal(url, hsm, OTHER_TID, MID, tmk_hex=TMK)
    conn = connect(url)
    try:
        ledger = Ledger(PanProtector.load(conn))
        keys = load_pan_keys(conn)
        assert keys is not None
        hashes = {n: await hsm.hash_pan(keys.hash_key, c.pan) for n, c in cards.items()}
        for tid in (TID, OTHER_TID):
            conn.execute("BEGIN")
            ledger.sign_on(conn, tid, KEYS, datetime.now())
            conn.execute("COMMIT")
    finally:
        conn.close()
    return url, ledger, cards, hashes


def _sale(tid: str, card: TestCard, amount: int, pan_hash: str, stan: int = 1,
          rrn: str = "000000000001") -> Request:
    t = TestTerminal("127.0.0.1", 0, tid, MID, TMK, stan=stan - 1, batch="000001",
                     pik=bytes(range(16)))
    doc = t.financial("sale", card, amount, card.pin)
    return Request(identify_request(doc), doc, request_digest(doc), datetime.now(), rrn,
                   PinResult.OK, pan_hash)


async def test_second_instance_waits_for_the_cards_balance() -> None:
    url, ledger, cards, hashes = await _setup()
    low = cards["low"]  # balance 10.00
    first = connect(url)
    first.execute("BEGIN")
    answer = ledger.financial(first, _sale(TID, low, 800, hashes["low"]))
    assert answer["39"] == "00"
    other = Blocked(url, lambda c: ledger.financial(
        c, _sale(OTHER_TID, low, 800, hashes["low"], rrn="000000000002")))
    other.start()
    other.join(BLOCKED_FOR)
    assert other.is_alive(), "the other instance did not wait for the card's row"
    first.execute("COMMIT")
    other.join(10)
    assert other.error is None and other.result["39"] == INSUFFICIENT_FUNDS
    card = load_card(first, hashes["low"])
    assert card is not None and card.balance == low.balance_minor - 800
    first.close()


async def test_repeat_on_second_instance_waits_then_replays() -> None:
    url, ledger, cards, hashes = await _setup()
    good = cards["good"]
    request = _sale(TID, good, 500, hashes["good"])
    first = connect(url)
    first.execute("BEGIN")
    answer = ledger.financial(first, request)
    other = Blocked(url, lambda c: ledger.financial(c, request))
    other.start()
    other.join(BLOCKED_FOR)
    assert other.is_alive(), "the other instance did not wait for the terminal's lock"
    first.execute("COMMIT")
    other.join(10)
    assert other.error is None
    assert other.result["39"] == answer["39"] == "00"
    assert other.result["37"] == answer["37"] and other.result["38"] == answer["38"]
    card = load_card(first, hashes["good"])
    assert card is not None and card.balance == good.balance_minor - 500
    first.close()
