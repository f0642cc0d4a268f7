"""posterm against the real host over real TCP (the ``running_host`` fixture).

A frame-aware proxy sits between terminal and host where a test needs the line to misbehave:
swallow a response, corrupt a response MAC, or be down (connection refused).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from specs.framing import TcpFrameDecoder, encode_frame_tcp
from specs.pretty import mask_pan
from terminal.cards import Card
from terminal.errors import ConnectFailed, NoResponse, NotReady, ResponseRejected
from terminal.session import Terminal
from terminal.state import Config, Store
from terminal.transport import TcpTransport

MTI_AT = 11  # TPDU + header: where the MTI starts in a payload

Action = Callable[[bytes], bytes | None]


class Proxy:
    """TCP proxy host <- proxy <- terminal that can tamper with responses by MTI."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.rules: list[tuple[str, Action]] = []
        self.seen: list[bytes] = []  # request payloads, in order
        self._scope: trio.CancelScope | None = None

    def on_next(self, mti: str, action: Action) -> None:
        """Apply ``action`` to the next response with this MTI (None swallows it)."""
        self.rules.append((mti, action))

    def sent_mtis(self) -> list[str]:
        return [p[MTI_AT:MTI_AT + 2].hex() for p in self.seen]

    async def start(self, nursery: trio.Nursery) -> None:
        self.port = (await nursery.start(self._serve, self.port))

    def down(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _serve(self, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream(*self.target) as upstream, \
                trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, True, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, client, False, nursery.cancel_scope)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, request: bool,
                    scope: trio.CancelScope) -> None:
        decoder = TcpFrameDecoder()
        try:
            while data := await src.receive_some(4096):
                decoder.feed(data)
                while (payload := decoder.next_payload()) is not None:
                    if request:
                        self.seen.append(payload)
                    else:
                        payload = self._apply(payload)
                    if payload is not None:
                        await dst.send_all(encode_frame_tcp(payload))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def _apply(self, payload: bytes) -> bytes | None:
        mti = payload[MTI_AT:MTI_AT + 2].hex()
        for i, (want, action) in enumerate(self.rules):
            if want == mti:
                del self.rules[i]
                return action(payload)
        return payload


def swallow(_: bytes) -> None:
    return None


def corrupt_mac(payload: bytes) -> bytes:
    return payload[:-1] + bytes([payload[-1] ^ 0x01])


def make_terminal(host: Any, path: Path, *, tid: str | None = None, mac: str = "x919",
                  timeout: float = 5.0, port: int | None = None) -> Terminal:
    store = Store(path)
    tid = tid or host.tid
    tmk = host.terminals[tid][0]
    store.initialise(Config(tid, host.mid, host.host, port or host.port, mac=mac,
                            timeout=timeout, backoff=0.01, attempts=2), bytes.fromhex(tmk))
    return reopen(store)


def reopen(store: Store) -> Terminal:
    config = store.config()
    return Terminal(store, TcpTransport(config.host, config.port))


def card_balance(host: Any, name: str) -> int:
    conn = sqlite3.connect(host.db_path)
    try:
        return conn.execute("SELECT balance FROM cards WHERE pan_masked = ?",
                            (mask_pan(host.cards[name].pan),)).fetchone()[0]
    finally:
        conn.close()


def host_rows(host: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(host.db_path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def swipe(host: Any, name: str = "good") -> Card:
    return Card.from_track2(host.cards[name].track2)


def keyed(host: Any, name: str = "good") -> Card:
    c = host.cards[name]
    return Card.keyed(c.pan, c.expiry)


async def signed_on(host: Any, path: Path, **kw: Any) -> Terminal:
    t = make_terminal(host, path, **kw)
    assert (await t.sign_on()).status == "approved"
    await t.transport.aclose()
    return reopen(t.store)


# --------------------------------------------------------------------------- a full day


async def test_full_day(running_host: Any, tmp_path: Path) -> None:
    host = running_host
    t = make_terminal(host, tmp_path / "t.db")
    r = await t.sign_on()
    assert r.status == "approved" and r.details["kcv_mak"] != "-"
    before = card_balance(host, "good")

    sale1 = await t.sale(swipe(host), 12345, "1234")
    assert sale1.status == "approved" and sale1.code == "00"
    assert sale1.details["rrn"] and sale1.details["auth_code"]
    sale2 = await t.sale(keyed(host), 5000, "1234")  # a PIN card: no PIN is 55
    assert sale2.status == "approved"
    sale3 = await t.sale(swipe(host), 700, "1234")
    assert card_balance(host, "good") == before - 12345 - 5000 - 700

    bal = await t.balance(swipe(host), "1234")
    assert bal.status == "approved" and bal.details["balance_minor"] == card_balance(host, "good")

    declined = await t.sale(swipe(host, "good"), 100, "9999")
    assert declined.status == "declined" and declined.code == "55"

    void = await t.void(sale2.details["stan"], None, None)
    assert void.status == "approved", void
    assert card_balance(host, "good") == before - 12345 - 700

    refund = await t.refund(None, 300, trace=sale3.details["stan"])
    assert refund.status == "approved", refund
    assert card_balance(host, "good") == before - 12345 - 700 + 300

    assert not t.store.reversals() and not t.store.advices()
    entries = t.store.batch_entries()
    assert sorted(e.amount for e in entries) == [300, 700, 12345]

    settle = await t.settle()
    assert settle.status == "balanced", settle
    assert settle.details["debit_count"] == 2 and settle.details["credit_amount_minor"] == 300
    assert t.store.journal() == []  # archived
    assert t.store.row()["batch"] == settle.details["new_batch"]
    await t.transport.aclose()

    # the next sale goes into the new batch, which the host accepts
    t = reopen(t.store)
    nxt = await t.sale(swipe(host), 100, "1234")
    assert nxt.status == "approved" and nxt.details["batch"] == settle.details["new_batch"]
    await t.transport.aclose()


async def test_cup_ecb_terminal(running_host: Any, tmp_path: Path) -> None:
    await running_host.add_terminal("CUPECB01", mac="cup-ecb")
    t = await signed_on(running_host, tmp_path / "c.db", tid="CUPECB01", mac="cup-ecb")
    r = await t.sale(swipe(running_host), 100, "1234")
    assert r.status == "approved"
    await t.transport.aclose()


# --------------------------------------------------------------------------- reversals


@pytest.fixture
async def proxy(running_host: Any, nursery: trio.Nursery) -> Proxy:
    p = Proxy(running_host.host, running_host.port)
    await p.start(nursery)
    return p


@pytest.mark.parametrize("entry", ["keyed", "swipe"])
async def test_swallowed_response_is_reversed_first_next_time(
        running_host: Any, proxy: Proxy, tmp_path: Path, entry: str) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db", port=proxy.port, timeout=0.5)
    before = card_balance(host, "good")
    proxy.on_next("0210", swallow)
    card = swipe(host) if entry == "swipe" else keyed(host)
    with pytest.raises(NoResponse, match="reversal"):
        await t.sale(card, 4200, "1234")
    assert card_balance(host, "good") == before - 4200  # the host did approve it
    [pending] = t.store.reversals()
    assert pending.reason == "98"
    await t.transport.aclose()

    proxy.seen.clear()
    t = reopen(t.store)
    r = await t.balance(swipe(host), "1234")
    assert r.status == "approved"
    assert proxy.sent_mtis() == ["0400", "0200"]
    assert card_balance(host, "good") == before
    assert not t.store.reversals()
    [sale] = [e for e in t.store.journal() if e.kind == "sale"]
    assert sale.status == "reversed"
    assert any("reason 98" in n for n in r.notes)
    await t.transport.aclose()


@pytest.mark.parametrize("entry", ["keyed", "swipe"])
async def test_corrupted_mac_gives_a0_reversal(running_host: Any, proxy: Proxy,
                                               tmp_path: Path, entry: str) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db", port=proxy.port)
    before = card_balance(host, "good")
    proxy.on_next("0210", corrupt_mac)
    card = swipe(host) if entry == "swipe" else keyed(host)
    with pytest.raises(ResponseRejected, match="MAC"):
        await t.sale(card, 999, "1234")
    [pending] = t.store.reversals()
    assert pending.reason == "A0" and pending.auth  # the auth code we did receive
    proxy.seen.clear()
    sent = await t.send_reversals()
    assert sent == 1 and proxy.sent_mtis() == ["0400"]
    assert card_balance(host, "good") == before
    assert not t.store.reversals()
    await t.transport.aclose()


async def test_reversal_retried_with_backoff_and_kept(running_host: Any, proxy: Proxy,
                                                      tmp_path: Path) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db", port=proxy.port, timeout=0.3)
    proxy.on_next("0210", swallow)
    with pytest.raises(NoResponse):
        await t.sale(swipe(host), 100, "1234")
    proxy.on_next("0410", swallow)
    proxy.on_next("0410", swallow)
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    t.sleep = fake_sleep
    with pytest.raises(NoResponse, match="still pending"):
        await t.sale(swipe(host), 100, "1234")
    assert delays == [0.01]  # attempts=2: one back-off between them
    assert len(t.store.reversals()) == 1  # never dropped
    assert [e.kind for e in t.store.journal()] == ["sale"]  # the second sale was not sent
    t.sleep = trio.sleep
    await t.send_reversals()
    assert not t.store.reversals()
    await t.transport.aclose()


async def test_void_reversal_restores_the_sale(running_host: Any, proxy: Proxy,
                                               tmp_path: Path) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db", port=proxy.port, timeout=0.5)
    before = card_balance(host, "good")
    sale = await t.sale(swipe(host), 2500, "1234")
    proxy.on_next("0210", swallow)
    with pytest.raises(NoResponse):
        await t.void(sale.details["stan"], None, None)
    assert card_balance(host, "good") == before  # void applied on the host
    await t.send_reversals()
    assert card_balance(host, "good") == before - 2500  # the void was undone
    assert [e.amount for e in t.store.batch_entries()] == [2500]
    await t.transport.aclose()


# --------------------------------------------------------------------------- store and forward


async def test_refund_stored_while_host_down_then_forwarded(
        running_host: Any, proxy: Proxy, tmp_path: Path, nursery: trio.Nursery) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db", port=proxy.port, timeout=0.5)
    sale = await t.sale(swipe(host), 3000, "1234")
    before = card_balance(host, "good")
    proxy.on_next("0230", swallow)
    with pytest.raises(NoResponse, match="stored"):
        await t.refund(None, 1000, trace=sale.details["stan"])
    assert len(t.store.advices()) == 1
    assert card_balance(host, "good") == before + 1000  # the host took it
    await t.transport.aclose()
    t = reopen(t.store)
    result = await t.flush()
    assert result.details["advices_forwarded"] == 1 and not t.store.advices()
    assert any("94" in n or ": 00" in n for n in result.notes)
    assert card_balance(host, "good") == before + 1000  # applied once
    [refund] = [e for e in t.store.journal() if e.kind == "refund"]
    assert refund.status == "approved"
    await t.transport.aclose()


# --------------------------------------------------------------------------- settlement


async def test_host_down_during_settlement_then_settle_completes(
        running_host: Any, proxy: Proxy, tmp_path: Path, nursery: trio.Nursery) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db", port=proxy.port, timeout=0.5)
    for amount in (100, 200):
        assert (await t.sale(swipe(host), amount, "1234")).status == "approved"
    await t.transport.aclose()
    proxy.down()
    t = reopen(t.store)
    with pytest.raises(ConnectFailed):
        await t.settle()
    await proxy.start(nursery)  # back up on the same port
    t = reopen(t.store)
    r = await t.settle()
    assert r.status == "balanced"
    assert t.store.journal() == []
    await t.transport.aclose()


async def test_forced_mismatch_uploads_the_batch(running_host: Any, proxy: Proxy,
                                                 tmp_path: Path) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db", port=proxy.port)
    stans = []
    for i in range(10):
        r = await t.sale(swipe(host), 100 + i, "1234")
        stans.append(r.details["stan"])
    # force a mismatch: the terminal believes one sale was for a different amount
    with t.store.transaction() as db:
        db.execute("UPDATE journal SET amount = 555 WHERE stan = ?", (stans[3],))
    proxy.seen.clear()
    r = await t.settle()
    assert r.status == "uploaded" and r.details["records_uploaded"] == 10
    assert proxy.sent_mtis() == ["0500", "0320", "0320", "0320"]
    assert t.store.journal() == [] and t.store.settlement_progress() == (None, 0)
    exceptions = host_rows(host, "SELECT * FROM exceptions")
    assert exceptions, "the host should record the mismatch"
    await t.transport.aclose()


async def test_settlement_interrupted_during_upload_resumes(
        running_host: Any, proxy: Proxy, tmp_path: Path) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db", port=proxy.port, timeout=0.5)
    for i in range(9):
        await t.sale(swipe(host), 100 + i, "1234")
    with t.store.transaction() as db:
        db.execute("UPDATE journal SET amount = 1 WHERE id = (SELECT MIN(id) FROM journal)")
    proxy.on_next("0330", lambda p: p)  # first upload answered
    proxy.on_next("0330", swallow)      # second lost
    with pytest.raises(NoResponse):
        await t.settle()
    assert t.store.settlement_progress() == ("upload", 1)
    with pytest.raises(NotReady, match="settlement is in progress"):
        await t.sale(swipe(host), 100, "1234")
    await t.transport.aclose()
    proxy.seen.clear()
    t = reopen(t.store)
    r = await t.settle()
    assert r.status == "uploaded"
    assert proxy.sent_mtis() == ["0320", "0320"]  # resumed: no second 0500
    await t.transport.aclose()


# --------------------------------------------------------------------------- counters


async def test_stan_wraps(running_host: Any, tmp_path: Path) -> None:
    host = running_host
    t = make_terminal(host, tmp_path / "t.db")
    t.store.set_stan("999998")
    assert (await t.sign_on()).details["stan"] == "999999"
    r = await t.sale(swipe(host), 100, "1234")
    assert r.status == "approved" and r.details["stan"] == "000001"
    r = await t.sale(swipe(host), 100, "1234")
    assert r.details["stan"] == "000002"
    await t.transport.aclose()


async def test_key_check_failure_refuses_keys(running_host: Any, tmp_path: Path) -> None:
    host = running_host
    t = make_terminal(host, tmp_path / "t.db")
    with t.store.transaction() as db:  # a wrong TMK on the terminal
        db.execute("UPDATE terminal SET tmk = ?", (bytes.fromhex("11" * 16),))
    t = reopen(t.store)
    from terminal.errors import KeyCheckFailed
    with pytest.raises(KeyCheckFailed):
        await t.sign_on()
    assert t.store.pinpad().pik is None
    with pytest.raises(NotReady, match="not signed on"):
        await t.sale(swipe(host), 100, "1234")
    await t.transport.aclose()


async def test_lost_settlement_response_then_settle_again(running_host: Any, proxy: Proxy,
                                                          tmp_path: Path) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db", port=proxy.port, timeout=0.5)
    await t.sale(swipe(host), 100, "1234")
    proxy.on_next("0510", swallow)
    with pytest.raises(NoResponse):
        await t.settle()
    await t.transport.aclose()
    t = reopen(t.store)
    r = await t.settle()
    assert r.status == "balanced", r
    assert r.details["new_batch"] == "000002" and t.store.row()["batch"] == "000002"
    assert t.store.journal() == [] and t.store.settlement_progress() == (None, 0)
    assert (await t.sale(swipe(host), 100, "1234")).status == "approved"
    await t.transport.aclose()


def ask_sign_on(payload: bytes) -> bytes:
    """Set the header's processing requirement to 3 (outside the MAC)."""
    at = 5 + 2
    return payload[:at] + bytes([(payload[at] & 0xF0) | 0x03]) + payload[at + 1:]


async def test_header_sign_on_request_signs_on_before_next(running_host: Any, proxy: Proxy,
                                                            tmp_path: Path) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db", port=proxy.port)
    proxy.on_next("0210", ask_sign_on)
    assert (await t.sale(swipe(host), 100, "1234")).status == "approved"
    assert t.store.row()["sign_on_again"] == 1
    proxy.seen.clear()
    r = await t.sale(swipe(host), 100, "1234")
    assert r.status == "approved" and proxy.sent_mtis() == ["0800", "0200"]
    assert any("signed on again" in n for n in r.notes)
    assert t.store.row()["sign_on_again"] == 0
    await t.transport.aclose()


async def test_host_a0_after_key_loss_then_recovers(running_host: Any, proxy: Proxy,
                                                    tmp_path: Path) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db", port=proxy.port)
    with t.store.transaction() as db:  # the terminal's MAK no longer matches the host's
        db.execute("UPDATE terminal SET mak = ?", (bytes.fromhex("22" * 16),))
    t = reopen(t.store)
    r = await t.sale(swipe(host), 100, "1234")
    assert r.status == "declined" and r.code == "A0"
    assert not t.store.reversals()  # a believed decline: nothing to reverse
    proxy.seen.clear()
    assert (await t.sale(swipe(host), 100, "1234")).status == "approved"
    assert proxy.sent_mtis() == ["0800", "0200"]
    await t.transport.aclose()


async def test_two_cli_processes_share_one_state_safely(running_host: Any,
                                                       tmp_path: Path) -> None:
    from tests.test_term_cli import arun, init_args

    state = tmp_path / "t.db"
    card = running_host.cards["good"]
    await arun(state, *init_args(running_host.port))
    await arun(state, "signon")
    results: list[Any] = []
    posterm = str(Path(sys.executable).parent / "posterm")

    async def one() -> None:
        results.append(await trio.run_process(
            [posterm, "--state", str(state), "sale", "1.00", "--track2", card.track2,
             "--pin", "1234", "--json"], capture_stdout=True, check=False))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
    stans = {json.loads(r.stdout)["stan"] for r in results}
    assert all(r.returncode == 0 for r in results) and len(stans) == 4


async def test_foreign_card_batch_balances(running_host: Any, tmp_path: Path) -> None:
    host = running_host
    t = await signed_on(host, tmp_path / "t.db")
    assert (await t.sale(swipe(host, "foreign"), 100, "4321")).status == "approved"
    r = await t.settle()
    assert r.status == "balanced"
    await t.transport.aclose()
