"""Several host instances on one PostgreSQL database (issue 15): two real hosts in one test,
each with its own writer and connections, real TCP, the real HSM code, a real cluster. The
guarantees one host keeps hold across them: idempotence, reversal exactly once and before its
original, refunds within the sale, one batch state, unique RRNs, keys and PIN tries shared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from host.app import HostConfig, run_host
from host.db import connect
from host.provision import add_terminal
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from specs.codes import PIN_TRIES_EXCEEDED, WRONG_PIN
from specs.pretty import mask_pan
from terminal import chipstore
from tests.conftest import MID, TID, TMK, new_pg_database, provision
from tests.hostkit import Answer, TestCard, TestTerminal
from tests.test_host_settlement import totals
from tests.test_term_cli import arun

OTHER_TID = "87654321"


@dataclass
class TwoHosts:
    url: str
    a: tuple[str, int]
    b: tuple[str, int]
    cards: dict[str, TestCard]

    def terminal(self, at: str, tid: str = TID) -> TestTerminal:
        host, port = self.a if at == "a" else self.b
        return TestTerminal(host, port, tid, MID, TMK)

    def balance_of(self, card: str) -> int:
        pan = self.cards[card].pan
        conn = connect(self.url)
        try:
            rows = conn.execute("SELECT pan_masked, balance FROM cards").fetchall()
        finally:
            conn.close()
        return next(r[1] for r in rows if r[0][:6] == pan[:6] and r[0][-4:] == pan[-4:])

    def column(self, sql: str) -> list:
        conn = connect(self.url)
        try:
            return [r[0] for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()


@pytest.fixture
async def two_hosts(nursery: trio.Nursery) -> TwoHosts:
    url = new_pg_database()
    hsm = HsmClient.in_process(HsmEngine.test())
    cards = await provision(url, hsm)
    await add_terminal(url, hsm, OTHER_TID, MID, tmk_hex=TMK)
    a = await nursery.start(run_host, HostConfig(listen_port=0, db_path=url))
    b = await nursery.start(run_host, HostConfig(listen_port=0, db_path=url))
    return TwoHosts(url, a, b, cards)


async def move(t: TestTerminal, to: tuple[str, int]) -> None:
    """The same terminal (keys, STAN, batch) now talks to the other instance."""
    t.host, t.port = to
    await t.reconnect()


async def test_repeat_on_other_instance_replays_once(two_hosts: TwoHosts) -> None:
    good = two_hosts.cards["good"]
    async with two_hosts.terminal("a") as t:
        await t.sign_on()
        sale = await t.sale(good, 1_000)
        assert sale.code == "00"
        await move(t, two_hosts.b)
        again = await t.exchange(sale.request)
    assert again.code == "00" and again["37"] == sale["37"] and again["38"] == sale["38"]
    assert two_hosts.balance_of("good") == good.balance_minor - 1_000
    assert two_hosts.column("SELECT count(*) FROM txns WHERE kind='sale'") == [1]


async def test_reversal_on_other_instance_exactly_once(two_hosts: TwoHosts) -> None:
    good = two_hosts.cards["good"]
    async with two_hosts.terminal("a") as t:
        await t.sign_on()
        sale = await t.sale(good, 2_500)
        await move(t, two_hosts.b)
        reversal = t.reversal_of(sale.request)
        first = await t.exchange(reversal)
        await move(t, two_hosts.a)
        second = await t.exchange(reversal)
    assert first.code == second.code == "00"
    assert two_hosts.balance_of("good") == good.balance_minor
    assert two_hosts.column("SELECT reversed FROM txns WHERE kind='sale'") == [1]


async def test_reversal_before_original_on_other_instance(two_hosts: TwoHosts) -> None:
    good = two_hosts.cards["good"]
    async with two_hosts.terminal("b") as t:
        await t.sign_on()
        sale_doc = t.financial("sale", good, 3_000, good.pin)
        first = await t.exchange(t.reversal_of(sale_doc))  # the sale never arrived
        assert first.code == "25" or first.code == "00"
        await move(t, two_hosts.a)
        late = await t.exchange(sale_doc)  # ... and now does, at the other instance
    assert late.code != "00"
    assert two_hosts.balance_of("good") == good.balance_minor


async def test_concurrent_refunds_on_two_instances_stay_within_sale(
        two_hosts: TwoHosts) -> None:
    good = two_hosts.cards["good"]
    hsm = HsmClient.in_process(HsmEngine.test())
    tids = [f"7777000{i}" for i in range(6)]
    for tid in tids:
        await add_terminal(two_hosts.url, hsm, tid, MID, tmk_hex=TMK)
    async with two_hosts.terminal("a") as t:
        await t.sign_on()
        sale = await t.sale(good, 1_000)
    refunders = [two_hosts.terminal("ab"[i % 2], tid) for i, tid in enumerate(tids)]
    for r in refunders:
        await r.connect()
        await r.sign_on()
    codes: list[str] = []
    go = trio.Event()

    async def refund(r: TestTerminal) -> None:
        await go.wait()
        codes.append((await r.refund(good, sale, 200)).code)

    async with trio.open_nursery() as nursery:  # six refunds of 200 at once, on both hosts
        for r in refunders:
            nursery.start_soon(refund, r)
        go.set()
    for r in refunders:
        await r.__aexit__()
    assert codes.count("00") == 5  # 5 x 200 fit in 1,000; a sixth does not
    assert two_hosts.column("SELECT refunded FROM txns WHERE kind='sale'") == [1_000]
    assert two_hosts.balance_of("good") == good.balance_minor


async def test_settlement_on_b_sees_sales_on_a_then_77_everywhere(two_hosts: TwoHosts) -> None:
    good = two_hosts.cards["good"]
    async with two_hosts.terminal("a") as t:
        await t.sign_on()
        await t.sale(good, 1_000)
        await t.sale(good, 2_000)
        stale = TestTerminal(*two_hosts.a, TID, MID, TMK, stan=500, batch=t.batch,
                             pik=t.pik, mak=t.mak)
        await move(t, two_hosts.b)
        answer = await t.settle(totals([1_000, 2_000], []))
        assert answer.code == "00"
    async with stale:
        late = await stale.sale(good, 100)
    assert late.code == "77"
    assert two_hosts.column("SELECT state FROM batches WHERE batch=1") == ["closed"]


async def test_rrns_unique_and_balance_exact_under_load_on_both(two_hosts: TwoHosts) -> None:
    good = two_hosts.cards["good"]
    answers: list[Answer] = []

    async def sell(at: str, tid: str) -> None:
        async with two_hosts.terminal(at, tid) as t:
            await t.sign_on()
            for _ in range(25):
                answers.append(await t.sale(good, 10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sell, "a", TID)
        nursery.start_soon(sell, "b", OTHER_TID)
    approved = [a for a in answers if a.code == "00"]
    assert len(approved) == 50
    rrns = two_hosts.column("SELECT rrn FROM txns")
    assert len(set(rrns)) == len(rrns) == 50
    assert two_hosts.balance_of("good") == good.balance_minor - 500


async def test_sign_on_on_a_gives_b_the_new_keys(two_hosts: TwoHosts) -> None:
    good = two_hosts.cards["good"]
    async with two_hosts.terminal("b") as t:
        await t.echo()  # B caches the terminal row (no keys yet)
        await move(t, two_hosts.a)
        await t.sign_on()  # first keys, made on A
        await move(t, two_hosts.b)
        assert (await t.sale(good, 10)).code == "00"  # B caches these keys
        old_keys = t.pik, t.mak
        await move(t, two_hosts.a)
        await t.sign_on()  # new keys, made on A
        await move(t, two_hosts.b)
        new_keys = t.pik, t.mak
        t.pik, t.mak = old_keys  # a device still holding the old keys: B knows they are gone
        assert (await t.sale(good, 10)).code == "A0"
        t.pik, t.mak = new_keys
        assert (await t.sale(good, 10)).code == "00"


async def test_pin_tries_shared(two_hosts: TwoHosts) -> None:
    good = two_hosts.cards["good"]
    codes = []
    async with two_hosts.terminal("a") as t:
        await t.sign_on()
        for at in ("a", "b", "a"):
            await move(t, two_hosts.a if at == "a" else two_hosts.b)
            codes.append((await t.sale(good, 10, pin="0000")).code)
        await move(t, two_hosts.b)
        codes.append((await t.sale(good, 10)).code)  # the right PIN, too late
    assert codes == [WRONG_PIN, WRONG_PIN, WRONG_PIN, PIN_TRIES_EXCEEDED]


async def test_posterm_fails_over_to_the_second_instance(nursery: trio.Nursery,
                                                         tmp_path: Path) -> None:
    """posterm init --host A,B: signs on at A; A dies; the next sale reaches B, which knows
    the keys A gave (one database); B's approval is on record once."""
    url = new_pg_database()
    hsm = HsmClient.in_process(HsmEngine.test())
    cards = await provision(url, hsm)
    b = await nursery.start(run_host, HostConfig(listen_port=0, db_path=url))
    state = tmp_path / "t.db"
    async with trio.open_nursery() as a_nursery:
        a = await a_nursery.start(run_host, HostConfig(listen_port=0, db_path=url))
        hosts = f"127.0.0.1:{a[1]},127.0.0.1:{b[1]}"
        r = await arun(state, "init", "--tid", TID, "--mid", MID, "--tmk", TMK, "--host",
                       hosts, "--timeout", "5", "--backoff", "0.01")
        assert r.exit_code == 0, r.output
        assert hosts in r.output
        assert (await arun(state, "signon")).exit_code == 0
        a_nursery.cancel_scope.cancel()  # host A stops: its port refuses connections
    with pytest.raises(OSError):
        await trio.open_tcp_stream(*a)
    good = cards["good"]
    r = await arun(state, "sale", "1.00", "--track2", good.track2, "--pin", good.pin)
    assert r.exit_code == 0 and "SALE  APPROVED" in r.output, r.output
    conn = connect(url)
    try:
        assert [tuple(x) for x in conn.execute(
            "SELECT kind, rc FROM txns").fetchall()] == [("sale", "00")]
    finally:
        conn.close()


async def test_worker_processes_on_postgresql_beside_another_instance(
        nursery: trio.Nursery) -> None:
    """An instance with --workers 2 (each worker numbering RRNs from the sequence) and a
    plain one, on one database: RRNs unique, every sale once."""
    url = new_pg_database()
    hsm = HsmClient.in_process(HsmEngine.test())
    cards = await provision(url, hsm)
    await add_terminal(url, hsm, OTHER_TID, MID, tmk_hex=TMK)
    a = await nursery.start(run_host, HostConfig(listen_port=0, db_path=url, workers=2))
    b = await nursery.start(run_host, HostConfig(listen_port=0, db_path=url))
    hosts = TwoHosts(url, a, b, cards)
    good = cards["good"]

    async def sell(at: str, tid: str) -> None:
        async with hosts.terminal(at, tid) as t:
            await t.sign_on()
            for _ in range(10):
                assert (await t.sale(good, 10)).code == "00"
                await t.reconnect()  # a new connection: possibly the other worker

    async with trio.open_nursery() as clients:
        clients.start_soon(sell, "a", TID)
        clients.start_soon(sell, "b", OTHER_TID)
    rrns = hosts.column("SELECT rrn FROM txns")
    assert len(rrns) == len(set(rrns)) == 20
    assert hosts.balance_of("good") == good.balance_minor - 200


async def test_chip_atc_high_water_shared(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """A chip card's highest ATC is one record: a clone replaying ATC 1 at B after the real
    card used it at A is declined (05); the balance moved once."""
    from tests.conftest import RunningHost
    from tests.test_host_chip import PAN, START, _card, _provision
    from tests.test_term_host import make_terminal
    hsm = HsmClient.in_process(HsmEngine.test())
    views = [RunningHost(*at, two_hosts.url, TID, MID, TMK, "x919", two_hosts.cards, hsm,
                         {TID: (TMK, "x919")}) for at in (two_hosts.a, two_hosts.b)]
    await _provision(views[0])
    results = []
    for i, view in enumerate(views):  # the card at A, then its clone (ATC from 1 again) at B
        t = make_terminal(view, tmp_path / f"t{i}.db")
        assert (await t.sign_on()).status == "approved"
        chipstore.add_card(t.store, _card())
        for _ in range(5 * i):  # the clone's terminal is further on: not a repeat (94)
            t.store.allocate_stan()
        results.append(await t.chip_sale("chip", 500, "1234"))
        await t.transport.aclose()
    assert results[0].status == "approved"
    assert results[1].status == "declined" and results[1].code == "05", results[1]
    conn = connect(two_hosts.url)
    try:
        assert conn.execute("SELECT atc_high FROM chip_cards").fetchone()[0] == 1
        balance = conn.execute("SELECT balance FROM cards WHERE pan_masked=?",
                               (mask_pan(PAN),)).fetchone()[0]
    finally:
        conn.close()
    assert balance == START - 500
