"""RS-232 lines from trio: line specs, pyserial ports, and :class:`SerialLink`, the thin I/O
shell around the sans-IO :class:`specs.seriallink.LinkProtocol`.

How the port is driven without blocking the event loop: on POSIX the port's file descriptor is
non-blocking (pyserial opens it so; VMIN is set to 1 so an empty read means EAGAIN and a zero-byte
read means hang-up) and trio waits on it with ``trio.lowlevel.wait_readable`` /
``wait_writable``. No thread is involved, so cancellation is immediate and exact (a
``trio.to_thread`` read cannot be interrupted: it would keep the port and swallow bytes after
the task that wanted them was cancelled), the ACK timer and the reader share one clock
(``trio.current_time``, so tests run on ``autojump_clock``), and the same code drives a USB
adapter, a motherboard UART or a pseudo-terminal. Where there is no pollable descriptor
(Windows), :class:`PollingPort` asks pyserial for what has arrived every
:data:`POLL_INTERVAL` seconds: still no thread, still cancel-safe.

A :class:`SerialLink` only moves bytes while :meth:`SerialLink.run` (the pump: one task that
reads the port and fires the ACK / inter-byte timers) is running in some nursery;
:func:`open_serial_link` does both for the common case.
"""

from __future__ import annotations

import logging
import math
import os
import termios
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from typing import Protocol

import serial
import trio

from shared.errors import SharedError
from specs.framing import MIN_FRAME_LENGTH, Frame
from specs.messages import decode_message
from specs.pretty import summarize
from specs.seriallink import (
    MAX_RETRANSMITS,
    AckReceived,
    DuplicateDiscarded,
    Event,
    FrameReceived,
    FrameRejected,
    Framing,
    GarbageDiscarded,
    LinkProtocol,
    NakReceived,
    Retransmitted,
    SendFailed,
    SendFailedError,
    Step,
)

log = logging.getLogger("poshost.serial")

DEFAULT_BAUD = 9600
BAUD_RANGE = (50, 4_000_000)
BYTESIZES = (5, 6, 7, 8)
PARITIES = ("N", "E", "O", "M", "S")
STOPBITS = (1.0, 1.5, 2.0)
READ_CHUNK = 4096
"""Most bytes taken from the port per read."""
MAX_RECEIVE_BACKLOG = 16
"""Received frames not yet taken by ``receive()``; beyond it the pump stops reading (the
OS buffer, then RTS/CTS if enabled, hold the peer back) instead of dropping ACKed frames."""
POLL_INTERVAL = 0.01
"""Fallback port without a pollable descriptor: seconds between looks at pyserial's buffer."""
START_BIT = 1


class SerialLineError(SharedError):
    """A serial line that cannot be used: bad spec, port not openable, line gone."""


class LineSpecError(SerialLineError, ValueError):
    """A line spec that does not parse."""


class LineClosedError(SerialLineError):
    """The port hung up (adapter unplugged, pty closed) or the link stopped."""


# --- line specs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineSettings:
    """``PORT[,baud=9600][,bytesize=8][,parity=N][,stopbits=1][,rtscts=0][,framing=stx|length]``.

    >>> s = LineSettings.parse("/dev/ttyUSB0,baud=115200,parity=e,framing=length")
    >>> s.baud, s.parity, s.framing.value
    (115200, 'E', 'length')
    >>> str(LineSettings.parse("COM3"))
    'COM3,baud=9600,bytesize=8,parity=N,stopbits=1,rtscts=0,framing=stx'
    """

    port: str
    baud: int = DEFAULT_BAUD
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1.0
    rtscts: bool = False
    framing: Framing = Framing.STX

    @classmethod
    def parse(cls, spec: str) -> LineSettings:
        port, *options = (part.strip() for part in spec.split(","))
        if not port or "=" in port:
            raise LineSpecError(f"line spec {spec!r} must start with the port")
        known = {f.name for f in fields(cls)} - {"port"}
        values: dict[str, str] = {}
        for option in options:
            key, sep, value = option.partition("=")
            key = key.strip().lower()
            if not sep or key not in known:
                raise LineSpecError(f"unknown line option {option!r} (known: {sorted(known)})")
            if key in values:
                raise LineSpecError(f"line option {key!r} given twice")
            values[key] = value.strip()
        try:
            return cls(port=port, **_convert(values))
        except (ValueError, KeyError) as exc:
            raise LineSpecError(f"bad line spec {spec!r}: {exc}") from None

    def __post_init__(self) -> None:
        if not BAUD_RANGE[0] <= self.baud <= BAUD_RANGE[1]:
            raise LineSpecError(f"baud {self.baud} outside {BAUD_RANGE[0]}..{BAUD_RANGE[1]}")
        if self.bytesize not in BYTESIZES:
            raise LineSpecError(f"bytesize must be one of {BYTESIZES}")
        if self.parity not in PARITIES:
            raise LineSpecError(f"parity must be one of {PARITIES}")
        if self.stopbits not in STOPBITS:
            raise LineSpecError(f"stopbits must be one of {STOPBITS}")

    @property
    def byte_time(self) -> float:
        """Seconds one character takes on the wire: start + data + parity + stop bits."""
        bits = START_BIT + self.bytesize + (self.parity != "N") + self.stopbits
        return bits / self.baud

    def __str__(self) -> str:
        stop = f"{self.stopbits:g}"
        return (
            f"{self.port},baud={self.baud},bytesize={self.bytesize},parity={self.parity},"
            f"stopbits={stop},rtscts={int(self.rtscts)},framing={self.framing.value}"
        )


_FLAGS = {"0": False, "1": True, "off": False, "on": True, "no": False, "yes": True}


def _convert(values: dict[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in values.items():
        if key in ("baud", "bytesize"):
            out[key] = int(value)
        elif key == "stopbits":
            out[key] = float(value)
        elif key == "parity":
            out[key] = value.upper()[:1]
        elif key == "rtscts":
            out[key] = _FLAGS[value.lower()]
        elif key == "framing":
            out[key] = Framing(value.lower())
    return out


def parse_line_spec(spec: str | LineSettings) -> LineSettings:
    """A :class:`LineSettings` from its text form (settings pass through)."""
    return spec if isinstance(spec, LineSettings) else LineSettings.parse(spec)


# --- ports --------------------------------------------------------------------------------------


class Port(Protocol):
    """The byte pipe a :class:`SerialLink` drives."""

    async def read(self) -> bytes:
        """Some bytes (never empty); raise :class:`LineClosedError` on hang-up."""

    async def write(self, data: bytes) -> None:
        """All of ``data``; raise :class:`LineClosedError` on hang-up."""

    def discard_input(self) -> None:
        """Drop bytes received but not read yet."""

    def close(self) -> None:
        """Release the port (idempotent)."""


class FdPort:
    """A non-blocking file descriptor (serial device or pty) driven by trio readiness."""

    def __init__(
        self, fd: int, *, name: str = "", close: Callable[[], None] | None = None
    ) -> None:
        self.fd = fd
        self.name = name or f"fd {fd}"
        self._close = close if close is not None else (lambda: os.close(fd))
        self._closed = False
        os.set_blocking(fd, False)
        if os.isatty(fd):
            attrs = termios.tcgetattr(fd)
            attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
            termios.tcsetattr(fd, termios.TCSANOW, attrs)

    async def read(self) -> bytes:
        while True:
            if self._closed:
                raise LineClosedError(f"{self.name} is closed")
            try:
                data = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_readable)
                continue
            except OSError as exc:  # EIO: the other end of a pty, or the USB adapter, is gone
                raise LineClosedError(f"{self.name}: {exc.strerror}") from None
            if not data:
                raise LineClosedError(f"{self.name} hung up")
            return data

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._closed:
                raise LineClosedError(f"{self.name} is closed")
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_writable)
            except OSError as exc:
                raise LineClosedError(f"{self.name}: {exc.strerror}") from None

    async def _wait(self, wait: Callable[[int], Awaitable[None]]) -> None:
        try:
            await wait(self.fd)
        except trio.ClosedResourceError:  # closed by another task meanwhile
            raise LineClosedError(f"{self.name} is closed") from None

    def discard_input(self) -> None:
        if os.isatty(self.fd):
            termios.tcflush(self.fd, termios.TCIFLUSH)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.fd)
            self._close()


class PollingPort:
    """Fallback for platforms without pollable serial descriptors (Windows): polls pyserial."""

    def __init__(self, port: serial.Serial) -> None:
        self._serial = port
        self._serial.timeout = 0
        self.name = port.port or "serial"

    async def read(self) -> bytes:
        while True:
            try:
                data = self._serial.read(max(self._serial.in_waiting, 1))
            except (serial.SerialException, OSError) as exc:
                raise LineClosedError(f"{self.name}: {exc}") from None
            if data:
                return data
            await trio.sleep(POLL_INTERVAL)

    async def write(self, data: bytes) -> None:
        try:
            self._serial.write(data)
        except (serial.SerialException, OSError) as exc:
            raise LineClosedError(f"{self.name}: {exc}") from None
        await trio.lowlevel.checkpoint()

    def discard_input(self) -> None:
        self._serial.reset_input_buffer()

    def close(self) -> None:
        self._serial.close()


def open_port(settings: LineSettings) -> Port:
    """Open the serial device with pyserial and the given line settings."""
    options: dict[str, object] = {"exclusive": True} if os.name == "posix" else {}
    try:
        port = serial.Serial(
            port=settings.port,
            baudrate=settings.baud,
            bytesize=settings.bytesize,
            parity=settings.parity,
            stopbits=settings.stopbits,
            rtscts=settings.rtscts,
            timeout=None,
            **options,
        )
    except (serial.SerialException, ValueError, OSError) as exc:
        raise SerialLineError(f"cannot open {settings.port}: {exc}") from None
    if os.name != "posix":
        return PollingPort(port)
    return FdPort(port.fileno(), name=settings.port, close=port.close)


# --- the link -----------------------------------------------------------------------------------


def describe_payload(payload: bytes) -> str:
    """A masked one-line summary of a frame payload for traces (never the card data)."""
    try:
        frame = Frame.parse(payload)
        return summarize(decode_message(frame.body)) + f" tpdu={frame.tpdu.to_bytes().hex()}"
    except Exception:  # a trace must never fail: undecodable payloads are shown by size only
        return f"undecodable {len(payload)} bytes"


Trace = Callable[[str], None]


class SerialLink:
    """Frames over a :class:`Port`: ``await send(payload)`` returns once the peer ACKed it
    (raises :class:`SendFailedError` after every retransmission failed), ``await receive()``
    returns the next frame (already ACKed). Only works while :meth:`run` is running.

    ``trace`` gets one masked line per link event (frames by MTI/STAN/TID, ACK, NAK,
    retransmissions, garbage), which is what ``--trace`` shows.
    """

    def __init__(
        self,
        port: Port,
        *,
        framing: Framing | str = Framing.STX,
        byte_time: float = 0.0,
        min_length: int = MIN_FRAME_LENGTH,
        name: str = "serial",
        trace: Trace | None = None,
    ) -> None:
        self.port = port
        self.name = name
        self.protocol = LinkProtocol(framing, byte_time=byte_time, min_length=min_length)
        self._trace = trace
        self._write_lock = trio.Lock()
        self._send_lock = trio.Lock()
        self._received: deque[bytes] = deque()
        self._received_changed = trio.Event()
        self._send_done = trio.Event()
        self._send_error: str | None = None
        self._read_scope: trio.CancelScope | None = None
        self._stopped: str | None = "link not running"

    @classmethod
    def for_settings(
        cls,
        port: Port,
        settings: LineSettings,
        *,
        trace: Trace | None = None,
        min_length: int = MIN_FRAME_LENGTH,
    ) -> SerialLink:
        return cls(
            port,
            framing=settings.framing,
            byte_time=settings.byte_time,
            min_length=min_length,
            name=settings.port,
            trace=trace,
        )

    # --- public API ---------------------------------------------------------------------------

    @property
    def framing(self) -> Framing:
        return self.protocol.framing

    @property
    def running(self) -> bool:
        return self._stopped is None

    async def send(self, payload: bytes) -> None:
        """Write one frame and, in STX framing, wait for its ACK (retransmitting as needed).

        Raises :class:`SendFailedError` when every retransmission went unacknowledged and
        :class:`LineClosedError` when the link is not running or stops meanwhile.
        """
        async with self._send_lock:
            self._check_running()
            self._send_done, self._send_error = trio.Event(), None
            data = self.protocol.send(payload, trio.current_time())
            self._emit(f"-> frame {len(payload)} bytes: {describe_payload(payload)}")
            self._rearm()
            try:
                await self._write(data)
                if self.framing is Framing.LENGTH:
                    return
                await self._send_done.wait()
            finally:
                self.protocol.abandon()  # no-op once ACKed; frees the link if we were cancelled
            self._check_running()
            if self._send_error is not None:
                raise SendFailedError(f"{self.name}: {self._send_error}")

    async def receive(self) -> bytes:
        """The next frame from the peer (ACKed already)."""
        while not self._received:
            self._check_running()
            self._received_changed = trio.Event()
            await self._received_changed.wait()
        payload = self._received.popleft()
        self._received_changed.set()  # room in the backlog: wake the pump if it waits
        return payload

    def discard_received(self) -> int:
        """Drop frames received but not taken, and bytes the OS holds unread (stale answers)."""
        count = len(self._received)
        self._received.clear()
        self.port.discard_input()
        return count

    def close(self) -> None:
        self.port.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pump: read the port and fire the timers until cancelled, or until the line hangs up
        (raises :class:`LineClosedError`). Waiters in send/receive are woken when it stops."""
        if self._stopped is None:
            raise SerialLineError(f"{self.name}: link already running")
        self._stopped = None
        task_status.started()
        try:
            await self._pump()
        except LineClosedError as exc:
            self._stopped = str(exc)
            raise
        finally:
            self._stopped = self._stopped or "link stopped"
            self._read_scope = None
            self._send_done.set()
            self._received_changed.set()

    # --- pump ---------------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._stopped is not None:
            raise LineClosedError(f"{self.name}: {self._stopped}")

    def _rearm(self) -> None:
        """Make the pump wake at the protocol's next deadline (it may have moved earlier)."""
        if self._read_scope is not None:
            deadline = self.protocol.deadline()
            self._read_scope.deadline = math.inf if deadline is None else deadline

    async def _pump(self) -> None:
        while True:
            data: bytes | None = None
            self._read_scope = trio.CancelScope()
            self._rearm()
            with self._read_scope:
                if len(self._received) >= MAX_RECEIVE_BACKLOG:
                    self._received_changed = trio.Event()
                    await self._received_changed.wait()
                else:
                    data = await self.port.read()  # cancel-safe: cancelled only while waiting
            now = trio.current_time()
            if data is not None:
                await self._handle(self.protocol.feed(data, now))
            deadline = self.protocol.deadline()
            if deadline is not None and now >= deadline:
                await self._handle(self.protocol.timeout(now))

    async def _handle(self, step: Step) -> None:
        if step.to_write:  # ACK/NAK first: a frame is handed out only once it is acknowledged
            await self._write(step.to_write)
        for event in step.events:
            self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        match event:
            case FrameReceived(payload):
                self._emit(f"<- frame {len(payload)} bytes: {describe_payload(payload)}")
                self._received.append(payload)
                self._received_changed.set()
            case DuplicateDiscarded(payload):
                self._emit(f"<- duplicate frame {len(payload)} bytes (our ACK was lost), ACKed")
            case FrameRejected(reason):
                nak = ", NAK" if self.framing is Framing.STX else ""
                self._emit(f"<- bad frame: {reason}{nak}")
            case GarbageDiscarded(count):
                self._emit(f"<- {count} bytes of garbage skipped")
            case AckReceived():
                self._emit("<- ACK")
                self._send_done.set()
            case NakReceived():
                self._emit("<- NAK")
            case Retransmitted(attempt, reason):
                self._emit(f"-> retransmission {attempt} ({reason})")
            case SendFailed(payload, reason):
                self._emit(f"-- gave up on frame {len(payload)} bytes ({reason})")
                self._send_error = f"no ACK after {MAX_RETRANSMITS} retransmissions ({reason})"
                self._send_done.set()

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            await self.port.write(data)

    def _emit(self, text: str) -> None:
        line = f"{self.name} {text}"
        log.debug(line)
        if self._trace is not None:
            self._trace(line)


async def run_quietly(
    link: SerialLink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """:meth:`SerialLink.run` for a background task whose line may hang up: the hang-up is not
    raised here (it would arrive wrapped in an ExceptionGroup) but from the link's waiters."""
    try:
        await link.run(task_status=task_status)
    except LineClosedError as exc:
        log.info("%s", exc)


@asynccontextmanager
async def open_serial_link(
    spec: str | LineSettings, *, trace: Trace | None = None, min_length: int = MIN_FRAME_LENGTH
) -> AsyncIterator[SerialLink]:
    """Open the port, pump the link in the background, close both on exit.

    The body's exceptions come out as themselves, not wrapped in an ExceptionGroup (the pump
    never raises; a hang-up surfaces as :class:`LineClosedError` from send/receive).
    """
    settings = parse_line_spec(spec)
    port = open_port(settings)
    try:
        link = SerialLink.for_settings(port, settings, trace=trace, min_length=min_length)
        async with trio.open_nursery() as nursery:
            await nursery.start(run_quietly, link)
            yield link
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        port.close()
