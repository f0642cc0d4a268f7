"""SerialLink over pseudo-terminal pairs: pyserial on the pty's slave path, the other end raw on
the master fd (a POS, or a second SerialLink). No hardware."""

from __future__ import annotations

import os
import tty
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
import trio
import trio.testing

from shared.serialline import (
    FdPort,
    LineClosedError,
    LineSettings,
    LineSpecError,
    SerialLineError,
    SerialLink,
    open_serial_link,
)
from specs.framing import ACK, NAK, encode_frame_serial
from specs.seriallink import MAX_RETRANSMITS, Framing, SendFailedError

TEST_TIMEOUT = 10
"""Seconds (on whatever clock the test runs) before a stuck test fails instead of hanging."""
JUMP_THRESHOLD = 0.05
"""Real seconds all tasks must be idle before the mock clock jumps: pty bytes in flight land
well within it, so only genuine waits (ACK timers, back-off) are skipped."""


@pytest.fixture
def io_clock() -> trio.testing.MockClock:
    """Like autojump_clock, but safe with real I/O in flight."""
    return trio.testing.MockClock(autojump_threshold=JUMP_THRESHOLD)


@contextmanager
def pty_pair() -> Iterator[tuple[int, str]]:
    """(master fd, slave path). The master end is non-blocking; the slave is raw and kept
    open here too, so the master never reads EIO while the subject has the slave closed."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.set_blocking(master, False)
    try:
        yield master, path
    finally:
        os.close(slave)
        with suppress(OSError):  # the test may have closed it already (a hang-up)
            os.close(master)


class RawEnd:
    """The master end of a pty as raw bytes: what a POS would put on the wire."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.wait_writable(self.fd)
        os.write(self.fd, data)

    async def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                self.buffer += os.read(self.fd, 4096)
            except BlockingIOError:
                continue
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def read_frame(self) -> bytes:
        """One STX frame (whole, as on the wire)."""
        head = await self.read_exactly(3)
        assert head[0] == 0x02, head.hex()
        length = int(head[1:3].hex())
        return head + await self.read_exactly(length + 2)

    async def nothing_more(self, seconds: float = 0.2) -> bool:
        with trio.move_on_after(seconds):
            await self.read_exactly(len(self.buffer) + 1)
            return False
        return True


def master_link(fd: int, framing: Framing = Framing.STX) -> SerialLink:
    return SerialLink(FdPort(fd, close=lambda: None), framing=framing, min_length=1, name="pos")


# --- line specs ---------------------------------------------------------------------------------


def test_line_spec_defaults_and_options() -> None:
    s = LineSettings.parse("/dev/ttyS0")
    assert (s.baud, s.bytesize, s.parity, s.stopbits, s.rtscts, s.framing) == (
        9600, 8, "N", 1.0, False, Framing.STX)
    s = LineSettings.parse("/dev/ttyUSB1, baud=19200, bytesize=7, parity=E, stopbits=2, "
                           "rtscts=1, framing=LENGTH")
    assert (s.baud, s.bytesize, s.parity, s.stopbits, s.rtscts, s.framing) == (
        19200, 7, "E", 2.0, True, Framing.LENGTH)
    assert LineSettings.parse(str(s)) == s
    assert s.byte_time == pytest.approx((1 + 7 + 1 + 2) / 19200)


@pytest.mark.parametrize("spec", [
    "", "baud=9600", "/dev/x,speed=9600", "/dev/x,baud=fast", "/dev/x,baud=9600,baud=1200",
    "/dev/x,parity=X", "/dev/x,bytesize=9", "/dev/x,stopbits=3", "/dev/x,framing=xmodem",
    "/dev/x,rtscts=maybe", "/dev/x,baud",
])
def test_bad_line_specs(spec: str) -> None:
    with pytest.raises(LineSpecError) as info:
        LineSettings.parse(spec)
    assert isinstance(info.value, SerialLineError) and isinstance(info.value, ValueError)


async def test_missing_port_is_a_serial_line_error() -> None:
    with pytest.raises(SerialLineError, match="cannot open"):
        async with open_serial_link("/dev/no-such-serial-port"):
            pass


# --- links over a pty ---------------------------------------------------------------------------


@pytest.mark.parametrize("framing", list(Framing))
async def test_link_round_trip_over_pty(framing: Framing) -> None:
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        async with open_serial_link(f"{path},baud=115200,framing={framing}", min_length=1) as a:
            pos = master_link(master, framing)
            async with trio.open_nursery() as nursery:
                await nursery.start(pos.run)
                big = bytes(range(256)) * 8  # 2048 bytes, every byte value
                await a.send(b"hello")
                assert await pos.receive() == b"hello"
                await pos.send(big)
                assert await a.receive() == big
                await a.send(b"again")
                assert await pos.receive() == b"again"
                nursery.cancel_scope.cancel()


async def test_corrupted_byte_nak_retransmit_delivers_once() -> None:
    lines: list[str] = []
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        async with open_serial_link(path, min_length=1, trace=lines.append) as link:
            pos = RawEnd(master)
            frame = encode_frame_serial(b"sale request")
            bad = bytearray(frame)
            bad[6] ^= 0x01
            await pos.write(bytes(bad))
            assert await pos.read_exactly(1) == bytes([NAK])
            await pos.write(frame)
            assert await pos.read_exactly(1) == bytes([ACK])
            assert await link.receive() == b"sale request"
            with trio.move_on_after(0.3) as scope:
                await link.receive()
            assert scope.cancelled_caught, "delivered twice"
    assert any("LRC mismatch, NAK" in line for line in lines)


async def test_lost_ack_retransmission_is_not_delivered_twice() -> None:
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        async with open_serial_link(path, min_length=1) as link:
            pos = RawEnd(master)
            frame = encode_frame_serial(b"request")
            await pos.write(frame)
            assert await pos.read_exactly(1) == bytes([ACK])
            await pos.write(frame)  # as if that ACK had been lost
            assert await pos.read_exactly(1) == bytes([ACK])
            assert await link.receive() == b"request"
            with trio.move_on_after(0.3) as scope:
                await link.receive()
            assert scope.cancelled_caught


async def test_send_retransmits_then_fails_without_ack(io_clock: trio.abc.Clock) -> None:
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT * 10):
        async with open_serial_link(path, min_length=1) as link:
            pos = RawEnd(master)
            with pytest.raises(SendFailedError):
                await link.send(b"nobody listens")
            copies = [await pos.read_frame() for _ in range(1 + MAX_RETRANSMITS)]
            assert set(copies) == {encode_frame_serial(b"nobody listens")}
            assert await pos.nothing_more()
            # the link is free again: the next frame is sent and acknowledged
            async with trio.open_nursery() as nursery:

                async def ack_it() -> None:
                    await pos.read_frame()
                    await pos.write(bytes([ACK]))

                nursery.start_soon(ack_it)
                await link.send(b"next")


async def test_nak_then_ack_over_pty(io_clock: trio.abc.Clock) -> None:
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        async with open_serial_link(path, min_length=1) as link:
            pos = RawEnd(master)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.send, b"x" * 30)
                first = await pos.read_frame()
                await pos.write(bytes([NAK]))
                assert await pos.read_frame() == first
                await pos.write(bytes([ACK]))


async def test_frame_cut_short_then_line_recovers(io_clock: trio.abc.Clock) -> None:
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        async with open_serial_link(path, min_length=1) as link:
            pos = RawEnd(master)
            await pos.write(encode_frame_serial(b"half of this is lost")[:9])
            assert await pos.read_exactly(1) == bytes([NAK])  # after the inter-byte timeout
            await pos.write(encode_frame_serial(b"whole"))
            assert await pos.read_exactly(1) == bytes([ACK])
            assert await link.receive() == b"whole"


async def test_hang_up_wakes_receivers_and_senders() -> None:
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        with pytest.raises(LineClosedError):
            async with open_serial_link(path, min_length=1) as link:
                os.close(master)
                await link.receive()
        with pytest.raises(SerialLineError):
            async with open_serial_link(path, min_length=1):
                pass  # the pty is gone


async def test_length_framing_bad_prefix_is_dropped() -> None:
    with pty_pair() as (master, path), trio.fail_after(TEST_TIMEOUT):
        async with open_serial_link(f"{path},framing=length", min_length=1) as link:
            pos = RawEnd(master)
            await pos.write(b"\xff\xffjunk")
            await trio.sleep(0.05)
            await pos.write(b"\x00\x03abc")
            assert await link.receive() == b"abc"
