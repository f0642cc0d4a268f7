"""Chip (EMV) cards end to end, protocol.md section 8: posterm's emulated card against the real
host (real TCP, SQLite file, the HSM's KW), with a proxy where the line must misbehave."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from host import reports
from host.db import connect
from host.provision import add_card, add_issuer_key
from hsm_sim.emv import derive_icc_mk_option_a
from specs.emv import decode_f55
from specs.framing import BODY_OFFSET, Frame
from specs.messages import decode_message, encode_for_mac
from specs.pretty import mask_pan
from specs.tlv import encode_tlv
from terminal import chip, chipstore, core
from terminal.errors import NoResponse
from tests.test_term_host import (
    MTI_AT,
    Proxy,
    reopen,
    signed_on,
    swallow,
)

IMK = "9E15204313F7318ACB79B90BD986AD29"
PAN, PSN, EXPIRY = "6222021111222233334", "01", "3012"
START = 1_000_00


async def _provision(host: Any) -> None:
    await add_issuer_key(host.db_path, host.hsm, "622202", IMK)
    await add_card(host.db_path, host.hsm, PAN, EXPIRY, "1234", START, chip_psn=PSN)


def _card(name: str = "chip", imk: str = IMK) -> chip.ChipCard:
    mk = derive_icc_mk_option_a(bytes.fromhex(imk), PAN, PSN)
    return chip.ChipCard(name, PAN, PSN, EXPIRY, mk)


def _balance(host: Any) -> int:
    with sqlite3.connect(host.db_path) as conn:
        return conn.execute("SELECT balance FROM cards WHERE pan_masked=?",
                            (mask_pan(PAN),)).fetchone()[0]


def _atc_high(host: Any) -> int:
    with sqlite3.connect(host.db_path) as conn:
        return conn.execute("SELECT atc_high FROM chip_cards").fetchone()[0]


@pytest.fixture
async def chip_host(running_host: Any) -> Any:
    await _provision(running_host)
    return running_host


@pytest.fixture
async def proxy(chip_host: Any, nursery: trio.Nursery) -> Proxy:
    p = Proxy(chip_host.host, chip_host.port)
    await p.start(nursery)
    return p


async def _terminal(host: Any, path: Path, **kw: Any) -> Any:
    t = await signed_on(host, path, **kw)
    chipstore.add_card(t.store, _card())
    return t


def _sent(proxy: Proxy, mti: str) -> list[dict[str, str]]:
    return [decode_message(p[BODY_OFFSET:]) for p in proxy.seen if p[MTI_AT:MTI_AT + 2].hex()
            == mti]


async def test_chip_sale_balance_and_void(chip_host: Any, proxy: Proxy, tmp_path: Path) -> None:
    t = await _terminal(chip_host, tmp_path / "t.db", port=proxy.port)
    proxy.seen.clear()
    sale = await t.chip_sale("chip", 12345, "1234")
    assert sale.status == "approved", sale
    assert sale.details["cryptogram_type"] == "TC" and sale.details["atc"] == "0001"
    assert _balance(chip_host) == START - 12345 and _atc_high(chip_host) == 1
    [request] = _sent(proxy, "0200")
    assert request["22"] == "051" and request["23"] == "001"
    assert [p[5] for p in proxy.seen] == [0x61]  # header application category: IC
    assert chipstore.load_card(t.store, "chip").atc == 1

    contactless = await t.chip_sale("chip", 100, None, contactless=True)
    assert contactless.status == "approved" and contactless.details["entry"] == "contactless"
    balance = await t.chip_balance("chip", "1234")
    assert balance.status == "approved" and balance.details["balance_minor"] == \
        START - 12345 - 100

    void = await t.void(sale.details["stan"], None, None)
    assert void.status == "approved", void
    assert _balance(chip_host) == START - 100
    void_request = _sent(proxy, "0200")[-1]
    assert void_request["22"] == "052" and void_request["23"] == "001"
    assert "55" not in void_request

    refund = await t.refund(None, 40, trace=contactless.details["stan"])
    assert refund.status == "approved", refund
    refund_request = _sent(proxy, "0220")[-1]
    assert refund_request["22"] == "072" and refund_request["23"] == "001"
    assert _balance(chip_host) == START - 100 + 40

    rows = reports.list_txns(connect(chip_host.db_path))
    by_kind = {(r["kind"], r["entry_mode"]): r for r in rows}
    assert by_kind[("sale", "051")]["atc"] == "0001"
    assert by_kind[("sale", "072")]["tvr"] == "0000000000"
    assert by_kind[("balance", "051")]["atc"] == "0003"
    assert all("EEA5" not in str(r) and PAN not in str(r) for r in rows)
    await t.transport.aclose()


async def test_replayed_atc_and_wrong_arqc_are_05(chip_host: Any, tmp_path: Path) -> None:
    t = await _terminal(chip_host, tmp_path / "t.db")
    assert (await t.chip_sale("chip", 500, "1234")).status == "approved"
    with t.store.transaction() as db:  # a cloned card: its ATC starts over
        db.execute("UPDATE chip_cards SET atc = 0")
    replay = await t.chip_sale("chip", 700, "1234")
    assert replay.status == "declined" and replay.code == "05"
    assert replay.details["cryptogram_type"] == "AAC"
    chipstore.add_card(t.store, _card("forged", "0123456789ABCDEFFEDCBA9876543210"))
    forged = await t.chip_sale("forged", 700, "1234")
    assert forged.code == "05"
    assert _balance(chip_host) == START - 500 and _atc_high(chip_host) == 1
    await t.transport.aclose()


async def _raw(t: Any, doc: dict[str, str]) -> core.Outcome:
    payload = core.encode_request(t.profile, doc, t.pinpad)
    answer = await t.transport.exchange(payload, 5.0)
    return core.evaluate(doc, answer, t.pinpad)


def _chip_doc(t: Any, amount: int, f4: int, drop: str | None = None) -> dict[str, str]:
    card = _card()
    read = chip.first_generate_ac(card, amount, "sale", date="261129", atc=9)
    tags = dict(read.tags)
    if drop:
        tags.pop(drop)
    stan, batch = t.store.allocate_stan()
    read_card = chip.ChipCardRead(PAN, EXPIRY, None, PSN, encode_tlv(tags))
    # contactless (07x) within the no-CVM limit: the PIN card needs no PIN block here
    doc = {"t": "0200", "3": "000000", "4": f"{f4:012d}", "11": stan, "22": "072", "23": "001",
           "25": "00", "41": t.profile.tid, "42": t.profile.mid, "49": "156",
           "60": f"22{batch}000", **read_card.fields()}
    return doc


async def test_amount_mismatch_is_13_and_missing_tag_is_30(chip_host: Any,
                                                           tmp_path: Path) -> None:
    t = await _terminal(chip_host, tmp_path / "t.db")
    mismatch = await _raw(t, _chip_doc(t, 100, 200))
    assert mismatch.code == "13" and mismatch.believed
    assert "91" in decode_f55(mismatch.response["55"])  # the ARQC did verify
    missing = await _raw(t, _chip_doc(t, 100, 100, drop="9F36"))
    assert missing.code == "30" and "55" not in (missing.response or {})
    garbled = _chip_doc(t, 100, 100)
    garbled["55"] = garbled["55"][:-4]  # the last tag's value cut short
    assert (await _raw(t, garbled)).code == "30"
    assert _balance(chip_host) == START
    await t.transport.aclose()


async def test_swallowed_0210_is_one_reversal(chip_host: Any, proxy: Proxy,
                                              tmp_path: Path) -> None:
    t = await _terminal(chip_host, tmp_path / "t.db", port=proxy.port, timeout=0.5)
    proxy.on_next("0210", swallow)
    with pytest.raises(NoResponse, match="reversal"):
        await t.chip_sale("chip", 4200, "1234")
    assert _balance(chip_host) == START - 4200
    await t.transport.aclose()
    t = reopen(t.store)
    assert (await t.chip_balance("chip", "1234")).status == "approved"
    [reversal] = _sent(proxy, "0400")
    assert reversal["39"] == "98" and reversal["23"] == "001"
    assert _balance(chip_host) == START and not t.store.reversals()
    await t.transport.aclose()


def _remac_with_bad_arpc(t: Any, f55: str | None = None) -> Any:
    def action(payload: bytes) -> bytes:
        frame = Frame.parse(payload)
        doc = decode_message(frame.body)
        arpc = bytearray(bytes.fromhex(decode_f55(doc["55"])["91"]))
        arpc[0] ^= 0xFF
        doc["55"] = f55 if f55 is not None else encode_tlv({"91": arpc.hex().upper()})
        block = encode_for_mac(doc)
        body = block + t.pinpad.mac(block)
        return Frame(frame.tpdu, frame.header, body).payload()
    return action


@pytest.mark.parametrize("f55", [None, "910A01", "9F36020001"])
async def test_wrong_arpc_is_declined_by_card_and_reversed_with_the_aac(
        chip_host: Any, proxy: Proxy, tmp_path: Path, f55: str | None) -> None:
    """A MAC-valid 0210 whose tag 91 is wrong, cut short or missing."""
    t = await _terminal(chip_host, tmp_path / "t.db", port=proxy.port)
    proxy.on_next("0210", _remac_with_bad_arpc(t, f55))
    result = await t.chip_sale("chip", 3000, "1234")
    assert result.status == "declined by card" and result.details["cryptogram_type"] == "AAC"
    [reversal] = _sent(proxy, "0400")
    tags = decode_f55(reversal["55"])
    assert reversal["39"] == "06" and tags["9F27"] == "00"
    assert tags["9F26"] == result.details["cryptogram"] and tags["9F36"] == "0001"
    assert bytes.fromhex(tags["95"])[4] & 0x40 and set(tags) == {"9F26", "9F27", "9F36",
                                                                  "95", "9F10"}
    assert _balance(chip_host) == START and not t.store.reversals()
    [entry] = t.store.journal()
    assert entry.status in ("declined", "reversed")
    await t.transport.aclose()


async def test_corrupted_tag_91_bytes_fail_the_mac_and_reverse_once(
        chip_host: Any, proxy: Proxy, tmp_path: Path) -> None:
    t = await _terminal(chip_host, tmp_path / "t.db", port=proxy.port)

    def flip_tag_91(payload: bytes) -> bytes:
        at = payload.find(bytes.fromhex("910A"))
        return payload[:at + 2] + bytes([payload[at + 2] ^ 1]) + payload[at + 3:]

    proxy.on_next("0210", flip_tag_91)
    with pytest.raises(Exception, match="MAC"):
        await t.chip_sale("chip", 3000, "1234")
    assert await t.send_reversals() == 1
    assert [r["39"] for r in _sent(proxy, "0400")] == ["A0"]
    assert _balance(chip_host) == START
    await t.transport.aclose()


async def test_chip_through_worker_processes(tmp_path: Path) -> None:
    """``serve --workers 2``: the chip facts travel from a worker to the writer; the ATC
    replay rule holds across processes."""
    from types import SimpleNamespace

    from host.app import HostConfig, run_host
    from hsm_sim.client import HsmClient
    from hsm_sim.commands import HsmEngine
    from tests.conftest import MID, TID, TMK, provision

    db_path = tmp_path / "host.db"
    hsm = HsmClient.in_process(HsmEngine.test())
    await provision(db_path, hsm)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: run_host(HostConfig(listen_port=0, db_path=db_path, workers=2),
                                         task_status=task_status, stop=stop))
        host = SimpleNamespace(host=bound[0], port=bound[1], db_path=db_path, hsm=hsm, tid=TID,
                               mid=MID, terminals={TID: (TMK, "x919")})
        await _provision(host)
        t = await _terminal(host, tmp_path / "t.db")
        assert (await t.chip_sale("chip", 200, "1234")).status == "approved"
        with t.store.transaction() as db:
            db.execute("UPDATE chip_cards SET atc = 0")
        await t.transport.aclose()
        t = reopen(t.store)
        assert (await t.chip_sale("chip", 300, "1234")).code == "05"
        await t.transport.aclose()
        stop.set()
    assert _balance(host) == START - 200 and _atc_high(host) == 1


async def test_load_chip_sales(chip_host: Any) -> None:
    """posterm load --chip: one card per terminal, every sale and balance inquiry by chip,
    every ARPC accepted by the card, settlements balanced."""
    from terminal.cards import Card
    from terminal.load import LoadSettings, parse_mix, run_load, terminal_ids

    tids = terminal_ids("LC", 2)
    pans = ["6222021111222233342", "6222021111222233359"]
    for tid in tids:
        await chip_host.add_terminal(tid)
    for pan in pans:
        await add_card(chip_host.db_path, chip_host.hsm, pan, EXPIRY, "1234", START,
                       chip_psn=PSN)
    settings = LoadSettings(
        chip_host.host, chip_host.port, 2, 1.0, 0.0, parse_mix("sale=80,balance=10,void=10"),
        tids, chip_host.mid, bytes.fromhex(chip_host.terminals[chip_host.tid][0]),
        [Card.keyed(p, EXPIRY) for p in pans], "1234", chip_imk=bytes.fromhex(IMK))
    report = await run_load(settings)
    assert report["completed"] > 10 and not report["errors"], report["errors"]
    assert report["response_codes"] == {"00": report["completed"]}
    assert report["settlements"] == {"balanced": 2} and report["settings"]["chip"]
    rows = sqlite3.connect(chip_host.db_path).execute(
        "SELECT count(*) FROM txn_entry WHERE entry_mode='051' AND arqc='ok'").fetchone()
    assert rows[0] >= report["operations"]["sale"]["count"]


def _serve(db_path: Path, port: int, log: Path) -> Any:
    import subprocess
    import sys
    import time

    exe = Path(sys.executable).parent / "poshost"
    command = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                                 "from host.cli import main; main()"]
    proc = subprocess.Popen(
        [*command, "serve", "--db", str(db_path), "--listen",
         f"127.0.0.1:{port}", "--no-demo"], stdout=log.open("ab"), stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 30
    while b"ready on" not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc


def test_kill_9_cannot_let_an_atc_replay_through(tmp_path: Path) -> None:
    """The highest ATC is committed with the approval: a host killed -9 right after
    answering, restarted, still refuses the same ATC (05) and charges nothing."""
    import os
    import signal
    import socket
    from types import SimpleNamespace

    from hsm_sim.client import HsmClient
    from hsm_sim.commands import HsmEngine
    from tests.conftest import MID, TID, TMK, provision

    db_path, log = tmp_path / "host.db", tmp_path / "host.log"
    hsm = HsmClient.in_process(HsmEngine.test())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = SimpleNamespace(host="127.0.0.1", port=port, db_path=db_path, hsm=hsm, tid=TID,
                           mid=MID, terminals={TID: (TMK, "x919")})

    async def setup_and_sell() -> Any:
        await provision(db_path, hsm)
        await _provision(host)

    trio.run(setup_and_sell)
    proc = _serve(db_path, port, log)

    async def first() -> Any:
        t = await _terminal(host, tmp_path / "t.db")
        sale = await t.chip_sale("chip", 900, "1234")
        await t.transport.aclose()
        return t, sale

    try:
        t, sale = trio.run(first)
        os.kill(proc.pid, signal.SIGKILL)  # at once, after the answer
        proc.wait()
        assert sale.status == "approved"
        proc = _serve(db_path, port, tmp_path / "host2.log")
        with t.store.transaction() as db:
            db.execute("UPDATE chip_cards SET atc = 0")

        async def replay() -> Any:
            again = reopen(t.store)
            result = await again.chip_sale("chip", 900, "1234")
            await again.transport.aclose()
            return result

        assert trio.run(replay).code == "05"
    finally:
        proc.kill()
        proc.wait()
    assert _balance(host) == START - 900 and _atc_high(host) == 1


async def test_identical_repeat_is_answered_from_the_record_with_tag_91(
        chip_host: Any, tmp_path: Path) -> None:
    t = await _terminal(chip_host, tmp_path / "t.db")
    doc = _chip_doc(t, 250, 250)
    first, again = await _raw(t, doc), await _raw(t, doc)
    assert first.code == again.code == "00" and first.get("37") == again.get("37")
    assert first.response["55"] == again.response["55"]
    assert decode_f55(first.response["55"])["91"].endswith("3030")
    assert _balance(chip_host) == START - 250 and _atc_high(chip_host) == 9
    await t.transport.aclose()


async def test_an_arpc_the_hsm_cannot_make_leaves_the_committed_answer_without_tag_91() -> None:
    """After the commit, an HSM refusal of KW mode 2 must not turn an approval into 96: the
    answer goes without tag 91, the card declines it and the terminal reverses (section 8)."""
    from host.chip import ARQC_OK, ChipFacts, with_issuer_auth
    from hsm_sim.client import HsmClient
    from hsm_sim.commands import HsmEngine

    hsm = HsmClient.in_process(HsmEngine.test())
    facts = ChipFacts(ARQC_OK, 9, PSN, True, "0000000000", "80", "051",
                      mk_ac_lmk="U" + "0" * 32, y=bytes(8), atc_bytes=b"\x00\x09",
                      un=bytes(4), data=b"", arqc=bytes(8))
    approved = {"t": "0210", "39": "00", "41": "12345678"}
    assert await with_issuer_auth(hsm, facts, approved) == approved
