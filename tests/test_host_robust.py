"""Hostile input and durability: malformed frames, oversized and half-sent frames, silent
clients, abrupt disconnects (other terminals keep transacting), kill -9 and restart."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import host.server
from specs.framing import Frame, Header, Tpdu, encode_frame_tcp
from specs.messages import encode_message
from specs.pretty import mask_pan
from tests.conftest import MID, TID, TMK, RunningHost, provision
from tests.hostkit import TestTerminal, read_frame


async def _raw(running_host: RunningHost) -> trio.SocketStream:
    return await trio.open_tcp_stream(running_host.host, running_host.port)


async def _closed(stream: trio.SocketStream) -> bool:
    with trio.fail_after(5):
        try:
            return await read_frame(stream) is None
        except trio.BrokenResourceError:
            return True


async def test_format_error_with_readable_tid_gets_30(running_host: RunningHost) -> None:
    body = encode_message({"t": "0200", "3": "000000", "11": "000001", "41": TID,
                           "42": MID, "60": "22000001000"})  # no amount, no card, no MAC
    async with running_host.terminal() as t:
        raw = await t.send_payload(Frame(Tpdu(), Header(), body).payload())
        assert raw is not None
        from specs.messages import decode_message
        answer = decode_message(Frame.parse(raw).body)
        assert answer["39"] == "30" and answer["41"] == TID and "64" not in answer
        # broken BCD after F41: TID still readable -> 30
        broken = bytearray(encode_message({"t": "0800", "11": "000002", "41": TID, "42": MID,
                                           "60": "00000000003"}))
        broken[-3] = 0xAB
        raw = await t.send_payload(Frame(Tpdu(), Header(), bytes(broken)).payload())
        assert raw is not None and decode_message(Frame.parse(raw).body)["39"] == "30"
        assert (await t.sign_on()).code == "00"  # the connection still works


async def test_unidentifiable_frames_close_only_their_connection(
        running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as good:
        await good.sign_on()
        garbage = await _raw(running_host)
        await garbage.send_all(encode_frame_tcp(b"\x60\x00\x03\x00\x00" + b"\xff" * 30))
        assert await _closed(garbage)
        oversized = await _raw(running_host)
        await oversized.send_all(b"\x08\x01" + b"\x00" * 100)
        assert await _closed(oversized)
        short = await _raw(running_host)
        await short.send_all(b"\x00\x05abcde")
        assert await _closed(short)
        half = await _raw(running_host)
        await half.send_all(b"\x00\x40\x60\x00")  # half-sent, then vanish
        await half.aclose()
        assert (await good.sale(card, 100)).code == "00"


async def test_silent_and_slow_clients(running_host: RunningHost,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host.server, "IDLE_TIMEOUT", 0.3)
    monkeypatch.setattr(host.server, "FRAME_TIMEOUT", 0.3)
    card = running_host.cards["good"]
    silent = await _raw(running_host)
    slow = await _raw(running_host)
    await slow.send_all(b"\x00\x40\x60")
    async with running_host.terminal() as good:
        await good.sign_on()
        for _ in range(3):
            assert (await good.sale(card, 100)).code == "00"
        assert await _closed(silent)
        assert await _closed(slow)


async def test_many_terminals_concurrently(running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    kits = [await running_host.add_terminal(f"T{i:07d}", mac="cup-ecb" if i % 2 else "x919")
            for i in range(8)]
    codes: list[str] = []

    async def run(t: TestTerminal) -> None:
        async with t:
            await t.sign_on()
            for _ in range(10):
                codes.append((await t.sale(card, 1)).code)

    async with trio.open_nursery() as nursery:
        for t in kits:
            nursery.start_soon(run, t)
    assert codes == ["00"] * 80


def _serve(db: Path, port_file: Path) -> subprocess.Popen[bytes]:
    code = (
        "import sys, trio\n"
        "from pathlib import Path\n"
        "from host.app import HostConfig, run_host\n"
        "async def main():\n"
        "    async with trio.open_nursery() as n:\n"
        "        config = HostConfig(listen_port=0, db_path=Path(sys.argv[1]))\n"
        "        h, p = await n.start(run_host, config)\n"
        "        Path(sys.argv[2]).write_text(str(p))\n"
        "trio.run(main)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(db), str(port_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _port(port_file: Path) -> int:
    with trio.fail_after(20):
        while not port_file.exists() or not port_file.read_text():
            await trio.sleep(0.05)
    return int(port_file.read_text())


async def test_kill_9_loses_no_approval_and_applies_nothing_twice(tmp_path: Path) -> None:
    from hsm_sim.client import HsmClient
    from hsm_sim.commands import HsmEngine
    db = tmp_path / "k.db"
    cards = await provision(db, HsmClient.in_process(HsmEngine.test()))
    card = cards["good"]
    port_file = tmp_path / "port"
    proc = _serve(db, port_file)
    approved: list[str] = []
    try:
        t = TestTerminal("127.0.0.1", await _port(port_file), TID, MID, TMK)
        async with t:
            await t.sign_on()
            for _ in range(30):
                answer = await t.sale(card, 100)
                approved.append(answer["37"])
            pending = t.financial("sale", card, 100, card.pin)
            await t.stream.send_all(encode_frame_tcp(
                Frame(Tpdu(), Header(), t.encode(pending)).payload()))
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    port_file.unlink()
    proc = _serve(db, port_file)
    try:
        t.port = await _port(port_file)
        async with t:
            again = await t.exchange(pending)  # the in-flight one, repeated: applied once
            assert again.code == "00"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    conn = sqlite3.connect(db)
    rrns = {r[0] for r in conn.execute("SELECT rrn FROM txns WHERE rc='00' AND kind='sale'")}
    balance = conn.execute("SELECT balance FROM cards WHERE pan_masked=?",
                           (mask_pan(card.pan),)).fetchone()[0]
    conn.close()
    assert set(approved) <= rrns
    assert len(rrns) == 31
    assert balance == card.balance_minor - 31 * 100
