"""The serial-to-TCP bridge over a pty, against a tiny canned TCP host (the subject here is the
bridge, not the host): a real cup-pos sign-on goes through with its TPDU, corrupted bytes and
cut frames are recovered, a host that is down or drops the connection gets every ACKed frame
exactly once after reconnecting."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from host import bridge as bridge_module
from host.bridge import connectable, run_bridge, serve_serial_lines
from shared.serialline import SerialLineError
from specs.catalog import KINDS
from specs.framing import ACK, NAK, Frame, Header, TcpFrameDecoder, Tpdu, encode_frame_serial
from specs.messages import (
    build_request,
    build_response,
    decode_message,
    encode_message,
    field60_for,
)
from specs.seriallink import INTER_BYTE_TIMEOUT, Framing
from tests.test_serial_io import TEST_TIMEOUT, RawEnd, io_clock, master_link, pty_pair

__all__ = ["io_clock"]  # the fixture, re-used from test_serial_io

TID, MID = "12345678", "123456789012345"


def sign_on(stan: int) -> tuple[dict[str, str], bytes]:
    kind = KINDS["sign_on"]
    doc = build_request(kind, {"11": f"{stan:06d}", "41": TID, "42": MID,
                               "60": field60_for(kind, "000001"), "63": "01 "})
    return doc, Frame(Tpdu("0003", "0000"), Header(), encode_message(doc)).payload()


def canned_answer(payload: bytes) -> bytes:
    """The canned host's answer: 0810 with response code 97, TPDU swapped, header echoed."""
    frame = Frame.parse(payload)
    request = decode_message(frame.body)
    response = build_response(KINDS["sign_on"], request, {
        "12": "120000", "13": "0101", "32": "12345678", "37": "000000000001", "39": "97",
        "60": request["60"]})
    return frame.answer(encode_message(response)).payload()


@dataclass
class CannedHost:
    """A TCP host that records every payload and answers each with :func:`canned_answer`."""

    received: list[bytes] = field(default_factory=list)
    connections: int = 0
    hang_up_after_first: bool = False
    arrived: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        decoder = TcpFrameDecoder()
        async with stream:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                decoder.feed(data)
                while (payload := decoder.next_payload()) is not None:
                    self.received.append(payload)
                    self.arrived.set()
                    self.arrived = trio.Event()
                    if self.hang_up_after_first and len(self.received) == 1:
                        return  # the request arrived, then the host dies before answering
                    await stream.send_all(len(canned_answer(payload)).to_bytes(2, "big")
                                          + canned_answer(payload))

    async def wait_for(self, count: int) -> None:
        while len(self.received) < count:
            await self.arrived.wait()


@asynccontextmanager
async def canned_host(port: int = 0) -> AsyncIterator[tuple[CannedHost, int]]:
    host = CannedHost()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host.handle, port, host="127.0.0.1"))
        yield host, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def pos_exchange(pos: RawEnd, payload: bytes) -> bytes:
    """A POS sending one request: frame, wait for ACK, read the response frame, ACK it."""
    await pos.write(encode_frame_serial(payload))
    assert await pos.read_exactly(1) == bytes([ACK])
    return await pos_answer(pos)


async def pos_answer(pos: RawEnd) -> bytes:
    frame = await pos.read_frame()
    await pos.write(bytes([ACK]))
    return frame[3:-2]


def check_answer(answer: bytes, stan: int) -> None:
    frame = Frame.parse(answer)
    assert frame.tpdu == Tpdu("0000", "0003")  # the host swapped it; the bridge kept it
    doc = decode_message(frame.body)
    assert (doc["t"], doc["11"], doc["39"]) == ("0810", f"{stan:06d}", "97")


async def test_sign_on_through_the_bridge_keeps_the_tpdu() -> None:
    lines: list[str] = []
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        async with canned_host() as (host, port), trio.open_nursery() as nursery:
            await nursery.start(functools.partial(run_bridge, path, "127.0.0.1", port,
                                                  trace=lines.append))
            pos = RawEnd(master)
            _doc, payload = sign_on(1)
            check_answer(await pos_exchange(pos, payload), 1)
            assert host.received == [payload]  # byte for byte, TPDU 60 0003 0000 included
            nursery.cancel_scope.cancel()
    text = "\n".join(lines)
    assert "<- frame 60 bytes: mti=0800 stan=000001" in text
    assert "-> frame 79 bytes: mti=0810 stan=000001" in text


async def test_length_framing_line() -> None:
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        async with canned_host() as (host, port), trio.open_nursery() as nursery:
            await nursery.start(run_bridge, f"{path},framing=length", "127.0.0.1", port)
            pos = master_link(master, Framing.LENGTH)
            await nursery.start(pos.run)
            _doc, payload = sign_on(7)
            await pos.send(payload)
            check_answer(await pos.receive(), 7)
            assert host.received == [payload]
            nursery.cancel_scope.cancel()


async def test_corrupted_byte_is_one_transaction_not_two() -> None:
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        async with canned_host() as (host, port), trio.open_nursery() as nursery:
            await nursery.start(run_bridge, path, "127.0.0.1", port)
            pos = RawEnd(master)
            _doc, payload = sign_on(2)
            bad = bytearray(encode_frame_serial(payload))
            bad[20] ^= 0x10
            await pos.write(bytes(bad))
            assert await pos.read_exactly(1) == bytes([NAK])
            check_answer(await pos_exchange(pos, payload), 2)
            # and the POS's ACK got lost: it sends the frame again, the bridge ACKs, drops it
            await pos.write(encode_frame_serial(payload))
            assert await pos.read_exactly(1) == bytes([ACK])
            assert await pos.nothing_more(0.3)
            assert host.received == [payload]
            nursery.cancel_scope.cancel()


async def test_frame_cut_mid_way_then_recovery(io_clock: trio.abc.Clock) -> None:
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        async with canned_host() as (host, port), trio.open_nursery() as nursery:
            await nursery.start(run_bridge, path, "127.0.0.1", port)
            pos = RawEnd(master)
            _doc, first = sign_on(3)
            await pos.write(encode_frame_serial(first)[:25])  # the cable is pulled here
            assert await pos.read_exactly(1) == bytes([NAK])  # after INTER_BYTE_TIMEOUT
            assert trio.current_time() >= INTER_BYTE_TIMEOUT
            _doc, second = sign_on(4)
            check_answer(await pos_exchange(pos, second), 4)
            assert host.received == [second]
            nursery.cancel_scope.cancel()


async def test_line_hang_up_mid_frame_then_adapter_replugged(
    io_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    link_path = tmp_path / "ttyPOS"
    with trio.fail_after(TEST_TIMEOUT * 10):
        async with canned_host() as (host, port), trio.open_nursery() as nursery:
            with pty_pair() as (master, path):
                link_path.symlink_to(path)
                await nursery.start(run_bridge, str(link_path), "127.0.0.1", port)
                _doc, first = sign_on(5)
                await RawEnd(master).write(encode_frame_serial(first)[:30])
                os.close(master)  # USB adapter unplugged mid-frame
            await trio.sleep(0.5)
            with pty_pair() as (master, path):  # ... and plugged in again
                link_path.unlink()
                link_path.symlink_to(path)
                await trio.sleep(bridge_module.LINE_REOPEN_INITIAL * 2)  # bridge backs off
                _doc, second = sign_on(6)
                check_answer(await pos_exchange(RawEnd(master), second), 6)
                assert host.received == [second]
                nursery.cancel_scope.cancel()


async def test_host_down_frames_held_and_delivered_once_in_order(
    io_clock: trio.abc.Clock,
) -> None:
    port = free_port()
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT * 10):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_bridge, path, "127.0.0.1", port)
            pos = RawEnd(master)
            payloads = [sign_on(stan)[1] for stan in (10, 11)]
            for payload in payloads:  # ACKed at once although the host is down
                await pos.write(encode_frame_serial(payload))
                assert await pos.read_exactly(1) == bytes([ACK])
            started = trio.current_time()
            await trio.sleep(bridge_module.CONNECT_BACKOFF_INITIAL * 5)  # a few failed connects
            async with canned_host(port) as (host, _port):
                await host.wait_for(2)
                assert host.received == payloads
                assert host.connections == 1
                for stan in (10, 11):
                    check_answer(await pos_answer(pos), stan)
            assert trio.current_time() - started >= bridge_module.CONNECT_BACKOFF_INITIAL * 5
            nursery.cancel_scope.cancel()


async def test_host_drops_the_connection_bridge_reconnects() -> None:
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        async with canned_host() as (host, port), trio.open_nursery() as nursery:
            host.hang_up_after_first = True
            await nursery.start(run_bridge, path, "127.0.0.1", port)
            pos = RawEnd(master)
            _doc, first = sign_on(20)
            await pos.write(encode_frame_serial(first))
            assert await pos.read_exactly(1) == bytes([ACK])
            await host.wait_for(1)
            await trio.sleep(0.1)  # the bridge sees the connection close
            _doc, second = sign_on(21)
            check_answer(await pos_exchange(pos, second), 21)
            # the first was written to a live connection: never sent again (no duplicate)
            assert host.received == [first, second]
            assert host.connections == 2
            nursery.cancel_scope.cancel()


async def test_bad_port_fails_before_started() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            with pytest.raises(SerialLineError, match="cannot open"):
                await nursery.start(run_bridge, "/dev/no-such-tty", "127.0.0.1", 1)
            with pytest.raises(SerialLineError, match="parity"):
                await nursery.start(run_bridge, "/dev/tty0,parity=Q", "127.0.0.1", 1)


async def test_serve_serial_lines_bridges_every_line() -> None:
    with pty_pair() as (m1, p1), pty_pair() as (m2, p2), trio.fail_after(TEST_TIMEOUT):
        async with canned_host() as (host, port), trio.open_nursery() as nursery:
            await nursery.start(serve_serial_lines, [p1, f"{p2},framing=stx"], "0.0.0.0", port)
            for stan, master in ((30, m1), (31, m2)):
                check_answer(await pos_exchange(RawEnd(master), sign_on(stan)[1]), stan)
            assert len(host.received) == 2
            nursery.cancel_scope.cancel()


async def test_serve_serial_lines_with_no_lines_returns() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_serial_lines, [], "127.0.0.1", 1)


def test_connectable() -> None:
    assert connectable("") == "127.0.0.1"
    assert connectable("localhost") == "localhost"
