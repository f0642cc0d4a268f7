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


async def test_pg_writer_groups_a_failing_job_rolls_back_alone() -> None:
    """The writer on PostgreSQL: jobs grouped on its thread, a failing job (after writing)
    rolled back alone, each submitter released once its group is committed."""
    import trio

    from host.writer import Writer
    url = new_pg_database()
    conn = connect(url)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    writer = Writer(url)
    seen: dict[int, object] = {}

    def insert(k: int) -> Callable[[Any], int]:
        def job(c: Any) -> int:
            c.execute("INSERT INTO t VALUES (?, ?)", (k, f"v{k}"))
            if k % 7 == 3:
                raise ValueError(f"job {k} fails after writing")
            return k
        return job

    async def one(k: int) -> None:
        try:
            seen[k] = await writer.submit(insert(k))
            assert conn.execute("SELECT v FROM t WHERE k=?", (k,)).fetchone()[0] == f"v{k}"
        except ValueError as exc:
            seen[k] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as clients:
            for k in range(40):
                clients.start_soon(one, k)
        nursery.cancel_scope.cancel()
    rows = dict(conn.execute("SELECT k, v FROM t").fetchall())
    conn.close()
    for k in range(40):
        if k % 7 == 3:
            assert isinstance(seen[k], ValueError) and k not in rows
        else:
            assert seen[k] == k and rows[k] == f"v{k}"
    assert writer.groups < 40


async def test_pg_writer_applies_a_deadlocked_group_again() -> None:
    """Two writers (two instances) locking two rows in opposite orders: PostgreSQL fails
    one group with a deadlock; that writer rolls back and applies it again; both commit."""
    import trio

    from host.writer import Writer
    url = new_pg_database()
    conn = connect(url)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    conn.execute("INSERT INTO t VALUES (1, 0), (2, 0)")
    first, second = Writer(url), Writer(url)
    barrier = threading.Barrier(2, timeout=5)
    waited: set[int] = set()

    def crosswise(a: int, b: int) -> Callable[[Any], None]:
        def job(c: Any) -> None:
            c.execute("UPDATE t SET n = n + 1 WHERE k=?", (a,))
            if a not in waited:  # the first time only: the retry runs alone
                waited.add(a)
                barrier.wait()  # both hold their first row: the second lock deadlocks
            c.execute("UPDATE t SET n = n + 1 WHERE k=?", (b,))
        return job

    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await nursery.start(second.run)
        async with trio.open_nursery() as clients:
            clients.start_soon(lambda: first.submit(crosswise(1, 2), heavy=True))
            clients.start_soon(lambda: second.submit(crosswise(2, 1), heavy=True))
        nursery.cancel_scope.cancel()
    assert dict(conn.execute("SELECT k, n FROM t").fetchall()) == {1: 2, 2: 2}
    assert first.retries + second.retries >= 1
    conn.close()
