"""Off-us routing end to end (protocol.md section 9): an acquirer host and network hosts
(``--h2h-listen``), each a real host on real TCP with its own SQLite file and HSM: the
foreign card's sale goes upstream with its PIN translated to the ZPK and MACs under the ZAK,
the cheapest channel is taken, both books record it, and a killed upstream's traffic moves."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import trio

from host.app import HostConfig, run_host
from host.db import open_store
from host.provision import add_card, add_merchant, add_terminal
from host.routestore import insert_link, insert_route
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from tests.conftest import FAR_EXPIRY, MID, TID, TMK
from tests.hostkit import TestCard, TestTerminal, track2_of

ZMK = "0123456789ABCDEFFEDCBA9876543210"
ACQUIRER_ID = "48020000"
FOREIGN = TestCard("4761739001010010", FAR_EXPIRY, "4321",
                   track2_of("4761739001010010", FAR_EXPIRY), 5_000_000)
ONUS = TestCard("6222021234567890128", FAR_EXPIRY, "1234",
                track2_of("6222021234567890128", FAR_EXPIRY), 1_000_000)


@dataclass
class Network:
    db: Path
    address: tuple[str, int]
    cancel: trio.CancelScope

    def balance(self) -> int:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute("SELECT balance FROM cards").fetchone()[0]
        finally:
            conn.close()


async def _zmk(db: Path, hsm: HsmClient) -> tuple[str, str]:
    key = await hsm.import_clear_key("000", ZMK)
    return key.key, key.kcv


async def start_network(tmp_path: Path, nursery: trio.Nursery, name: str) -> Network:
    db = tmp_path / f"{name}.db"
    hsm = HsmClient.in_process(HsmEngine.test())
    await add_card(db, hsm, FOREIGN.pan, FOREIGN.expiry, FOREIGN.pin, FOREIGN.balance_minor,
                   domestic=False)
    zmk, kcv = await _zmk(db, hsm)
    conn = open_store(db)
    insert_link(conn, "ACQ1", ACQUIRER_ID, zmk, kcv)
    conn.close()
    config = HostConfig(listen_port=0, db_path=db, h2h_listen=("127.0.0.1", 0))
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await run_host(config, task_status=task_status)

    await nursery.start(run)
    assert config.h2h_bound is not None
    return Network(db, config.h2h_bound, scope)


async def start_acquirer(tmp_path: Path, nursery: trio.Nursery,
                         routes: list[tuple[str, Network, dict]]) -> tuple[Path, TestTerminal]:
    db = tmp_path / "acq.db"
    hsm = HsmClient.in_process(HsmEngine.test())
    await add_merchant(db, MID, "Lab Coffee Shop")
    await add_terminal(db, hsm, TID, MID, tmk_hex=TMK)
    await add_card(db, hsm, ONUS.pan, ONUS.expiry, ONUS.pin, ONUS.balance_minor)
    zmk, kcv = await _zmk(db, hsm)
    conn = open_store(db)
    for name, net, settings in routes:
        insert_route(conn, name=name, host=net.address[0], port=net.address[1],
                     bins="4761,622203-622299", zmk_lmk=zmk, zmk_kcv=kcv,
                     acquirer_id=ACQUIRER_ID, **settings)
    conn.close()
    host, port = await nursery.start(run_host, HostConfig(listen_port=0, db_path=db))
    return db, TestTerminal(host, port, TID, MID, TMK)


async def wait_up(db: Path, names: list[str]) -> None:
    path = db.with_name(db.name + ".routes.json")
    with trio.fail_after(15):
        while True:
            try:
                state = json.loads(path.read_text())
                if all(state.get(n, {}).get("state") == "up" for n in names):
                    return
            except (OSError, ValueError):
                pass
            await trio.sleep(0.1)


def txns(db: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM txns ORDER BY id").fetchall()
    finally:
        conn.close()


async def test_foreign_sale_goes_upstream_cheapest_channel(tmp_path: Path,
                                                           nursery: trio.Nursery) -> None:
    net_a = await start_network(tmp_path / "a", nursery, "neta") if (
        (tmp_path / "a").mkdir() is None) else None
    net_b = await start_network(tmp_path / "b", nursery, "netb") if (
        (tmp_path / "b").mkdir() is None) else None
    assert net_a is not None and net_b is not None
    db, term = await start_acquirer(tmp_path, nursery, [
        ("NET-A", net_a, {"cost_fixed": 10, "cost_rate": "0.0038"}),
        ("NET-B", net_b, {"cost_fixed": 50, "cost_rate": "0"})])
    await wait_up(db, ["NET-A", "NET-B"])
    async with term:
        await term.sign_on()
        sale = await term.sale(FOREIGN, 12345)  # A: 10 + 46.91 -> 57; B: 50
        assert sale.code == "00" and "38" in sale.doc
        wrong_pin = await term.sale(FOREIGN, 100, pin="9999")  # A: 10 + 0.38 -> 10; B: 50
        assert wrong_pin.code == "55"
        onus = await term.sale(ONUS, 500)
        assert onus.code == "00"
        inquiry = await term.balance(FOREIGN)
        assert inquiry.code == "00"  # NET-A (cheaper at 0), whose card has not been charged
        assert inquiry["54"].endswith(f"{FOREIGN.balance_minor:012d}")
    rows = txns(db)
    assert [(r["route"], r["rc"]) for r in rows] == [("NET-B", "00"), ("NET-A", "55"),
                                                     (None, "00"), ("NET-A", "00")]
    assert rows[0]["channel_cost"] == 50 and rows[2]["channel_cost"] == 0
    assert net_b.balance() == FOREIGN.balance_minor - 12345
    assert net_a.balance() == FOREIGN.balance_minor
    conn = sqlite3.connect(net_b.db)
    assert conn.execute("SELECT rrn, amount, rc FROM h2h_txns").fetchall() == [
        (rows[0]["rrn"], 12345, "00")]
    conn = sqlite3.connect(net_a.db)
    assert conn.execute("SELECT rrn, amount, rc FROM h2h_txns").fetchall() == [
        (rows[1]["rrn"], 100, "55"), (rows[3]["rrn"], 0, "00")]


class Proxy:
    """A TCP relay between the acquirer and a network that can swallow the network's answers
    (an upstream that stops answering, while it still acts on requests)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.drop = False

    async def serve(self, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(*self.target)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, False, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, client, True, nursery.cancel_scope)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, answers: bool,
                    scope: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                if not (answers and self.drop):
                    await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


class ProxiedNetwork:
    def __init__(self, net: Network, proxy: Proxy, address: tuple[str, int]) -> None:
        self.net, self.proxy, self.address = net, proxy, address


async def proxied(nursery: trio.Nursery, net: Network) -> ProxiedNetwork:
    proxy = Proxy(net.address)
    address = await nursery.start(proxy.serve)
    return ProxiedNetwork(net, proxy, address)


def outbox(db: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM h2h_outbox ORDER BY id").fetchall()
    finally:
        conn.close()


async def networks(tmp_path: Path, nursery: trio.Nursery, *names: str) -> list[Network]:
    out = []
    for name in names:
        (tmp_path / name).mkdir()
        out.append(await start_network(tmp_path / name, nursery, name))
    return out


async def two_routes(tmp_path: Path, nursery: trio.Nursery, a: dict | None = None
                     ) -> tuple[Network, Network, Path, TestTerminal]:
    """Networks A and B, an acquirer routing to both (A the cheaper: 5 against 9, plus ``a``
    settings for A), both links up."""
    net_a, net_b = await networks(tmp_path, nursery, "neta", "netb")
    db, term = await start_acquirer(tmp_path, nursery, [
        ("NET-A", net_a, {"cost_fixed": 5, **(a or {})}), ("NET-B", net_b, {"cost_fixed": 9})])
    await wait_up(db, ["NET-A", "NET-B"])
    return net_a, net_b, db, term


async def test_timeout_answers_91_and_reverses_upstream_exactly_once(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    (net,) = await networks(tmp_path, nursery, "neta")
    relay = await proxied(nursery, net)
    db, term = await start_acquirer(tmp_path, nursery, [
        ("NET-A", Network(net.db, relay.address, net.cancel), {"timeout": 0.5})])
    await wait_up(db, ["NET-A"])
    async with term:
        await term.sign_on()
        relay.proxy.drop = True
        sale = await term.sale(FOREIGN, 2500)
        assert sale.code == "91"
        assert net.balance() == FOREIGN.balance_minor - 2500  # the network approved it
        with trio.fail_after(10):  # the 0420 is retried while answers are lost ...
            while not outbox(db) or outbox(db)[0]["attempts"] < 1:
                await trio.sleep(0.1)
        relay.proxy.drop = False  # ... and acknowledged once they flow again
        with trio.fail_after(15):
            while outbox(db)[0]["state"] != "done":
                await trio.sleep(0.1)
    assert net.balance() == FOREIGN.balance_minor
    row = outbox(db)[0]
    assert row["reason"] == "98" and row["attempts"] >= 2
    conn = sqlite3.connect(net.db)
    assert conn.execute("SELECT COUNT(*), MIN(reason) FROM h2h_reversals").fetchone() == (1, "98")
    assert conn.execute("SELECT reversed FROM h2h_txns").fetchone() == (1,)
    assert [(r["route"], r["rc"], r["channel_cost"]) for r in txns(db)] == [("NET-A", "91", 0)]


async def test_terminal_reversal_of_routed_sale_goes_to_same_channel(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    net_a, net_b, db, term = await two_routes(tmp_path, nursery)
    async with term:
        await term.sign_on()
        sale = await term.sale(FOREIGN, 7000)
        assert sale.code == "00"
        assert net_a.balance() == FOREIGN.balance_minor - 7000
        reversal = await term.reverse(sale.request, "06")
        assert reversal.code == "00"
        again = await term.exchange(term.reversal_of(sale.request, "06"))  # a repeat
        assert again.code == "00"
        with trio.fail_after(10):
            while [r["state"] for r in outbox(db)] != ["done", "done"]:
                await trio.sleep(0.1)
    assert net_a.balance() == FOREIGN.balance_minor
    assert net_b.balance() == FOREIGN.balance_minor
    assert [r["reason"] for r in outbox(db)] == ["", "06"]
    assert txns(db)[0]["reversed"] == 1


async def test_void_follows_its_sale_and_its_reversal_too(tmp_path: Path,
                                                          nursery: trio.Nursery) -> None:
    net_a, net_b, db, term = await two_routes(tmp_path, nursery)
    async with term:
        await term.sign_on()
        sale = await term.sale(FOREIGN, 4000)
        assert sale.code == "00"
        conn = open_store(db)
        conn.execute("UPDATE routes SET cost_fixed=99 WHERE name='NET-A'")  # A now dearer
        conn.close()
        await trio.sleep(1.5)
        assert (await term.void(FOREIGN, sale, amount=3999)).code == "64"
        void = await term.void(FOREIGN, sale)
        assert void.code == "00"  # on NET-A, the sale's channel, though B is now cheaper
        assert net_a.balance() == FOREIGN.balance_minor
        assert (await term.void(FOREIGN, sale)).code == "12"  # voided already
        undo = await term.reverse(void.request, "06")
        assert undo.code == "00"
        with trio.fail_after(10):
            while any(r["state"] != "done" for r in outbox(db)):
                await trio.sleep(0.1)
    assert net_a.balance() == FOREIGN.balance_minor - 4000  # the void undone: sale stands
    assert net_b.balance() == FOREIGN.balance_minor
    rows = txns(db)
    assert [(r["kind"], r["route"], r["rc"]) for r in rows] == [
        ("sale", "NET-A", "00"), ("void", "NET-A", "64"), ("void", "NET-A", "00"),
        ("void", "NET-A", "12")]
    assert rows[0]["voided_by"] is None and rows[2]["reversed"] == 1


async def test_refund_of_routed_sale_is_advised_to_its_channel(tmp_path: Path,
                                                               nursery: trio.Nursery) -> None:
    (net,) = await networks(tmp_path, nursery, "neta")
    relay = await proxied(nursery, net)
    db, term = await start_acquirer(tmp_path, nursery, [
        ("NET-A", Network(net.db, relay.address, net.cancel), {"timeout": 0.5})])
    await wait_up(db, ["NET-A"])
    async with term:
        await term.sign_on()
        sale = await term.sale(FOREIGN, 9000)
        assert sale.code == "00"
        relay.proxy.drop = True  # the advice waits for the network: the terminal does not
        refund = await term.refund(FOREIGN, sale, 3000)
        assert refund.code == "00"
        assert (await term.refund(FOREIGN, sale, 6001)).code == "64"
        await trio.sleep(1.0)
        relay.proxy.drop = False
        with trio.fail_after(15):
            while any(r["state"] != "done" for r in outbox(db)):
                await trio.sleep(0.1)
    assert net.balance() == FOREIGN.balance_minor - 9000 + 3000
    rows = txns(db)
    assert [(r["kind"], r["route"], r["rc"]) for r in rows] == [
        ("sale", "NET-A", "00"), ("refund", "NET-A", "00"), ("refund", "NET-A", "64")]
    assert rows[0]["refunded"] == 3000 and rows[1]["orig_id"] == rows[0]["id"]
    advice = outbox(db)[-1]
    assert advice["reason"] == "advice" and advice["attempts"] >= 2
    conn = sqlite3.connect(net.db)
    assert conn.execute("SELECT kind, amount, rc FROM h2h_txns ORDER BY id").fetchall() == [
        ("sale", 9000, "00"), ("refund", 3000, "00")]


async def test_killed_upstream_traffic_moves(tmp_path: Path, nursery: trio.Nursery) -> None:
    net_a, _net_b, db, term = await two_routes(tmp_path, nursery, {"timeout": 1.0})
    codes = []
    async with term:
        await term.sign_on()
        for i in range(12):
            if i == 4:
                net_a.cancel.cancel()  # the cheap network dies
            codes.append((await term.sale(FOREIGN, 100 + i)).code)
    rows = txns(db)
    assert codes.count("91") <= 1, codes
    assert [r["route"] for r in rows[:4]] == ["NET-A"] * 4
    assert {r["route"] for r in rows[6:]} == {"NET-B"}
    assert all(c == "00" for c in codes[6:])


async def test_failing_upstream_demoted_after_20_and_restored(tmp_path: Path,
                                                              nursery: trio.Nursery) -> None:
    net_a, net_b = await networks(tmp_path, nursery, "neta", "netb")
    relay = await proxied(nursery, net_a)
    db, term = await start_acquirer(tmp_path, nursery, [
        ("NET-A", Network(net_a.db, relay.address, net_a.cancel),
         {"cost_fixed": 5, "timeout": 0.05, "degrade_hold": 3.0}),
        ("NET-B", net_b, {"cost_fixed": 9})])
    await wait_up(db, ["NET-A", "NET-B"])
    async with term:
        await term.sign_on()
        relay.proxy.drop = True
        failed = [(await term.sale(FOREIGN, 100)).code for _ in range(20)]
        assert failed == ["91"] * 20
        moved = await term.sale(FOREIGN, 100)
        assert moved.code == "00"
        assert txns(db)[-1]["route"] == "NET-B"
        with trio.fail_after(3):  # shown to `route list` (and the metrics)
            while True:
                state = json.loads(db.with_name(db.name + ".routes.json").read_text())["NET-A"]
                if state["state"] == "degraded":
                    break
                await trio.sleep(0.1)
        assert state["trips"] == 1 and state["degraded_until"] is not None
        from host.router import route_families

        demotions = {m.name: m.samples for m in route_families()}["poshost_route_demotions"]
        assert [(s.labels["route"], s.value) for s in demotions] == [("NET-A", 1), ("NET-B", 0)]
        relay.proxy.drop = False
        await trio.sleep(3.5)  # the hold passes
        back = await term.sale(FOREIGN, 100)
        assert back.code == "00"
    assert txns(db)[-1]["route"] == "NET-A"
    with trio.fail_after(20):  # every timed-out sale is reversed at NET-A
        while any(r["state"] != "done" for r in outbox(db)):
            await trio.sleep(0.2)
    assert net_a.balance() == FOREIGN.balance_minor - 100
    assert net_b.balance() == FOREIGN.balance_minor - 100


async def test_limits_respected(tmp_path: Path, nursery: trio.Nursery) -> None:
    net_a, net_b = await networks(tmp_path, nursery, "neta", "netb")
    db, term = await start_acquirer(tmp_path, nursery, [
        ("NET-A", net_a, {"cost_fixed": 1, "limit_txn": 5000, "limit_day": 8000}),
        ("NET-B", net_b, {"cost_fixed": 9})])
    await wait_up(db, ["NET-A", "NET-B"])
    async with term:
        await term.sign_on()
        for amount in (6000, 4000, 3000, 2000, 1000):
            assert (await term.sale(FOREIGN, amount)).code == "00"
    assert [(r["amount"], r["route"]) for r in txns(db)] == [
        (6000, "NET-B"), (4000, "NET-A"), (3000, "NET-A"), (2000, "NET-B"), (1000, "NET-A")]


async def test_upstream_refuses_strangers_and_unkeyed_requests(tmp_path: Path,
                                                              nursery: trio.Nursery) -> None:
    from specs.h2h import H2hFrameDecoder, decode_h2h, encode_h2h, field60_management, frame_h2h

    (net,) = await networks(tmp_path, nursery, "neta")
    stream = await trio.open_tcp_stream(*net.address)
    decoder = H2hFrameDecoder()

    async def ask(doc: dict[str, str]) -> dict[str, str]:
        await stream.send_all(frame_h2h(encode_h2h(doc)))
        with trio.fail_after(5):
            while True:
                bodies = decoder.feed(await stream.receive_some(4096))
                if bodies:
                    return decode_h2h(bodies[0])

    base = {"7": "1130120000", "11": "000001", "33": "99999999"}
    stranger = await ask({"t": "0800", **base, "32": "99999999",
                          "60": field60_management("001")})
    assert stranger["t"] == "0810" and stranger["39"] == "03"
    unkeyed = await ask({"t": "0200", "2": FOREIGN.pan, "3": "000000", "4": "000000000100",
                         "7": "1130120000", "11": "000002", "32": ACQUIRER_ID,
                         "37": "000000000001", "41": TID, "42": MID, "49": "156",
                         "64": "0000000000000000"})
    assert unkeyed["t"] == "0210" and unkeyed["39"] == "A0" and "64" not in unkeyed
    await stream.send_all(b"\x00\x0dnot a message")  # undecodable: ignored, link stays
    signed = await ask({"t": "0800", **base, "11": "000003", "32": ACQUIRER_ID,
                        "60": field60_management("001")})
    assert signed["39"] == "00"
    assert net.balance() == FOREIGN.balance_minor
    await stream.aclose()


async def test_upstream_answering_96_is_demoted_after_20(tmp_path: Path,
                                                         nursery: trio.Nursery) -> None:
    net_a, net_b = await networks(tmp_path, nursery, "neta", "netb")
    db, term = await start_acquirer(tmp_path, nursery, [
        ("NET-A", net_a, {"cost_fixed": 5, "degrade_hold": 2.0}),
        ("NET-B", net_b, {"cost_fixed": 9})])
    await wait_up(db, ["NET-A", "NET-B"])
    conn = sqlite3.connect(net_a.db, isolation_level=None)
    key = conn.execute("SELECT value FROM meta WHERE key='pan_hash_key_lmk'").fetchone()[0]
    conn.execute("DELETE FROM meta WHERE key='pan_hash_key_lmk'")  # NET-A's HSM work fails
    async with term:
        await term.sign_on()
        codes = [(await term.sale(FOREIGN, 100)).code for _ in range(21)]
        assert codes == ["91"] * 20 + ["00"]
        assert txns(db)[-1]["route"] == "NET-B"
        conn.execute("INSERT INTO meta VALUES ('pan_hash_key_lmk', ?)", (key,))
        await trio.sleep(2.5)
        assert (await term.sale(FOREIGN, 100)).code == "00"
    assert txns(db)[-1]["route"] == "NET-A"
    with trio.fail_after(20):  # each 96 was answered by a 0420/98, acknowledged
        while any(r["state"] != "done" for r in outbox(db)):
            await trio.sleep(0.2)
    assert [r["reason"] for r in outbox(db)].count("98") == 20
    assert net_a.balance() == FOREIGN.balance_minor - 100


async def test_hostile_link_frames_cost_only_their_connection(tmp_path: Path,
                                                              nursery: trio.Nursery) -> None:
    """Anyone who reaches --h2h-listen, unsigned: an MTI that is not digits, a 0800 with a
    garbled F70, a 0420 without its RRN. Each is dropped or answered; the host lives on and
    the next acquirer's sale goes through."""
    from specs.h2h import H2hFrameDecoder, decode_h2h, encode_h2h, frame_h2h

    net = await start_network(tmp_path, nursery, "net")
    stream = await trio.open_tcp_stream(*net.address)
    echo = encode_h2h({"t": "0800", "11": "000001", "32": ACQUIRER_ID})
    await stream.send_all(frame_h2h(b"\xab\xcd" + echo[2:]))  # MTI "ABCD"
    await stream.send_all(frame_h2h(b"\x04\x20" + b"\xff" * 16))
    await stream.send_all(frame_h2h(encode_h2h({"t": "0420", "11": "000001", "32": ACQUIRER_ID})))
    decoder = H2hFrameDecoder()
    with trio.fail_after(5):
        answers: list[dict[str, str]] = []
        while not answers:
            data = await stream.receive_some(4096)
            assert data, "the network closed instead of answering the 0420"
            answers = [decode_h2h(body) for body in decoder.feed(data)]
    assert answers[0]["t"] == "0430" and answers[0]["39"] != "00"
    await stream.aclose()
    db, term = await start_acquirer(tmp_path, nursery, [("NET-A", net, {})])
    await wait_up(db, ["NET-A"])
    async with term:
        await term.sign_on()
        assert (await term.sale(FOREIGN, 100)).code == "00"


def test_stale_inflight_rows_are_reversed_young_ones_left_to_their_request(
        tmp_path: Path) -> None:
    """A host alone on its store reverses every inflight row at start (its process died
    between send and record); while running, and on a shared store, only rows older than the
    handler limit: a younger one may be another instance's request still out upstream."""
    from datetime import datetime, timedelta

    from host.router import INFLIGHT_STALE, release_inflight

    conn = open_store(tmp_path / "acq.db")
    old = (datetime.now() - INFLIGHT_STALE - timedelta(seconds=5)).isoformat(timespec="seconds")
    young = datetime.now().isoformat(timespec="seconds")
    for stan, created in (("000001", old), ("000002", young)):
        conn.execute("INSERT INTO h2h_outbox (route, rrn, stan, doc, reason, state, created)"
                     " VALUES ('NET-A', ?, ?, '{}', '', 'inflight', ?)",
                     (f"00000000{stan[-4:]}", stan, created))

    def states() -> list[str]:
        return [r[0] for r in conn.execute("SELECT state FROM h2h_outbox ORDER BY stan")]

    release_inflight(conn, startup=False)
    assert states() == ["pending", "inflight"]
    release_inflight(conn, startup=True)
    assert states() == ["pending", "pending"]
    conn.close()
