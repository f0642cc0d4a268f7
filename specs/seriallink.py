"""Serial line link protocol of protocol.md section 1, sans-IO (in the manner of h11).

A :class:`LinkProtocol` holds the state of one end of an RS-232 line. It never reads, writes or
sleeps: the caller hands it received bytes and the current time, and gets back events and the
bytes to write. Two framings:

* ``Framing.STX``: ``STX | LEN (2 bytes BCD) | payload | ETX | LRC``, acknowledged. The receiver
  answers ``ACK`` for a good frame and ``NAK`` for a bad length, missing ETX or bad LRC; the
  sender keeps one frame outstanding (stop-and-wait) and retransmits it up to
  :data:`MAX_RETRANSMITS` times on ``NAK`` or when no ``ACK`` arrives within
  :data:`ACK_TIMEOUT` seconds, then gives up (:class:`SendFailed`).
* ``Framing.LENGTH``: the TCP framing (2-byte big-endian length) on the line; no ACK/NAK.

Clock: every call takes ``now`` (seconds, any monotonic origin). :meth:`LinkProtocol.deadline`
says when :meth:`LinkProtocol.timeout` must next be called (ACK overdue, or a frame that stopped
arriving half-way).

Receiving, STX framing:

* Bytes outside a frame that are neither STX, ACK nor NAK are garbage, skipped to the next STX.
* A frame that starts but stops arriving for :data:`INTER_BYTE_TIMEOUT` (a line closed or
  unplugged mid-frame) is dropped and NAKed; scanning restarts after its STX.
* A good frame whose payload equals the previous one received, within
  :data:`DUPLICATE_WINDOW` of our ACK of it, is the sender's retransmission after our ACK was
  lost: it is ACKed again and reported as :class:`DuplicateDiscarded`, not delivered twice. The
  contract has no sequence numbers, so this is how a real terminal/NAC pair tells them apart;
  two legitimate ISO 8583 messages are never byte-identical (the STAN moves on).

>>> a, b = LinkProtocol(min_length=1), LinkProtocol(min_length=1)
>>> wire = a.send(b"hi", now=0.0)
>>> step = b.feed(wire, now=0.0)
>>> step.events, step.to_write
([FrameReceived(payload=b'hi')], b'\\x06')
>>> a.feed(step.to_write, now=0.1).events
[AckReceived()]
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from specs.errors import FramingError, SpecError
from specs.framing import (
    ACK,
    ETX,
    LENGTH_PREFIX,
    MAX_FRAME_LENGTH,
    MIN_FRAME_LENGTH,
    NAK,
    STX,
    TcpFrameDecoder,
    compute_lrc,
    decode_frame_serial,
    encode_frame_serial,
    encode_frame_tcp,
)

ACK_TIMEOUT = 2.0
"""Seconds the sender waits for ACK/NAK after the last byte of a frame left the line."""
MAX_RETRANSMITS = 3
"""Retransmissions after the first transmission: a frame goes out at most 1 + 3 times."""
INTER_BYTE_TIMEOUT = 1.0
"""Seconds of silence inside a frame after which the partial frame is dropped and NAKed.
Shorter than ACK_TIMEOUT, so the sender hears the NAK before it would time out itself."""
DUPLICATE_WINDOW = (MAX_RETRANSMITS + 1) * ACK_TIMEOUT
"""Seconds after our ACK during which an identical frame counts as a retransmission."""
SERIAL_OVERHEAD = 5
"""STX + 2 length bytes + ETX + LRC around a payload."""
RESYNC_QUIET = 0.1
"""After a NAKed frame, bytes arriving before the line has been quiet this long are treated as
the rest of that frame: an ACK/NAK byte among them is not taken as a control character, and a
bad frame inside them is not NAKed again (one NAK per bad transmission)."""
_LEN_END = 3
"""Offset just after STX + LEN."""
_LRC_MISMATCH = "LRC mismatch"


class Framing(enum.StrEnum):
    """How frames are delimited on the line."""

    STX = "stx"
    LENGTH = "length"


class LinkError(SpecError):
    """Root of serial link errors."""


class LinkBusyError(LinkError):
    """``send`` while a frame is still waiting for its ACK (the link is stop-and-wait)."""


class SendFailedError(LinkError):
    """A frame was not acknowledged after every retransmission (raised by I/O shells)."""


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameReceived:
    """A good frame, delivered once (already ACKed in STX framing)."""

    payload: bytes


@dataclass(frozen=True)
class DuplicateDiscarded:
    """A retransmission of the frame last delivered (our ACK was lost); ACKed again."""

    payload: bytes


@dataclass(frozen=True)
class FrameRejected:
    """A frame with a bad length, ETX or LRC, or cut short; NAKed in STX framing."""

    reason: str


@dataclass(frozen=True)
class GarbageDiscarded:
    """Bytes outside any frame, skipped while looking for STX."""

    count: int


@dataclass(frozen=True)
class AckReceived:
    """The peer acknowledged our outstanding frame; ``send`` may be called again."""


@dataclass(frozen=True)
class NakReceived:
    """The peer rejected our outstanding frame (a retransmission or SendFailed follows)."""


@dataclass(frozen=True)
class Retransmitted:
    """Our outstanding frame went out again; ``attempt`` counts retransmissions from 1."""

    attempt: int
    reason: str


@dataclass(frozen=True)
class SendFailed:
    """Our frame was not acknowledged after MAX_RETRANSMITS retransmissions."""

    payload: bytes
    reason: str


Event = (
    FrameReceived
    | DuplicateDiscarded
    | FrameRejected
    | GarbageDiscarded
    | AckReceived
    | NakReceived
    | Retransmitted
    | SendFailed
)


class Step(NamedTuple):
    """What one call produced: events in order, and bytes to write to the line (maybe empty)."""

    events: list[Event]
    to_write: bytes


@dataclass
class _Outstanding:
    payload: bytes
    wire: bytes
    deadline: float
    retransmits: int = 0


@dataclass
class _Scanner:
    """Receive buffer. The first ``tainted`` bytes may belong to a frame already NAKed: while
    resyncing through them an ACK/NAK byte is payload and a bad frame is not NAKed again."""

    buffer: bytearray = field(default_factory=bytearray)
    tainted: int = 0
    last_byte_at: float = 0.0
    resyncing: bool = False

    def append(self, data: bytes, now: float) -> None:
        if self.resyncing and now - self.last_byte_at >= RESYNC_QUIET:
            self.resyncing = False
        self.buffer += data
        self.last_byte_at = now
        if self.resyncing:
            self.tainted = len(self.buffer)

    def consume(self, count: int) -> None:
        del self.buffer[:count]
        self.tainted = max(self.tainted - count, 0)

    def taint_all(self, now: float) -> None:
        self.tainted = len(self.buffer)
        self.resyncing = True


class LinkProtocol:
    """One end of a serial link; see the module docstring.

    ``byte_time`` is the seconds one character takes on the wire (start + data + parity + stop
    bits over the baud rate): the ACK timer starts when the frame's last byte has left, so a
    2 KB frame at 9600 baud is not retransmitted while it is still being sent. ``min_length``
    is the shortest payload accepted (defaults to TPDU + header + MTI + bitmap).
    """

    def __init__(
        self,
        framing: Framing | str = Framing.STX,
        *,
        byte_time: float = 0.0,
        min_length: int = MIN_FRAME_LENGTH,
        max_length: int = MAX_FRAME_LENGTH,
    ) -> None:
        self.framing = Framing(framing)
        self._byte_time = byte_time
        self._min = min_length
        self._max = max_length
        self._outstanding: _Outstanding | None = None
        self._rx = _Scanner()
        self._tcp = TcpFrameDecoder(max_length=max_length, min_length=min_length)
        self._last_delivered: bytes | None = None
        self._last_acked_at = 0.0

    # --- sending ------------------------------------------------------------------------------

    @property
    def awaiting_ack(self) -> bool:
        """Whether a frame is outstanding (``send`` would raise :class:`LinkBusyError`)."""
        return self._outstanding is not None

    def send(self, payload: bytes, now: float) -> bytes:
        """The bytes to write for ``payload``; in STX framing it becomes the outstanding frame."""
        if self.framing is Framing.LENGTH:
            return encode_frame_tcp(payload)
        if self._outstanding is not None:
            raise LinkBusyError("a frame is still waiting for its ACK")
        wire = encode_frame_serial(payload)
        self._outstanding = _Outstanding(payload, wire, self._ack_deadline(wire, now))
        return wire

    def abandon(self) -> bytes | None:
        """Stop waiting for the ACK of the outstanding frame (the sender gave up or was
        cancelled); returns its payload, or ``None`` if nothing was outstanding."""
        out, self._outstanding = self._outstanding, None
        return None if out is None else out.payload

    def _ack_deadline(self, wire: bytes, now: float) -> float:
        return now + len(wire) * self._byte_time + ACK_TIMEOUT

    def _retransmit(self, reason: str, now: float, events: list[Event]) -> bytes:
        out = self._outstanding
        assert out is not None
        if out.retransmits >= MAX_RETRANSMITS:
            self._outstanding = None
            events.append(SendFailed(out.payload, reason))
            return b""
        out.retransmits += 1
        out.deadline = self._ack_deadline(out.wire, now)
        events.append(Retransmitted(out.retransmits, reason))
        return out.wire

    # --- timers -------------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """When :meth:`timeout` must next be called, or ``None`` if nothing is pending."""
        deadlines = []
        if self._outstanding is not None:
            deadlines.append(self._outstanding.deadline)
        if self._mid_frame():
            deadlines.append(self._rx.last_byte_at + INTER_BYTE_TIMEOUT)
        return min(deadlines, default=None)

    def timeout(self, now: float) -> Step:
        """Act on whatever is due at ``now``: retransmit, give up, or drop a stalled frame."""
        events: list[Event] = []
        out = bytearray()
        if self._outstanding is not None and now >= self._outstanding.deadline:
            out += self._retransmit("no ACK", now, events)
        if self._stalled(now):
            out += self._drop_partial(events)
            out += self._scan(now, events)
        return Step(events, bytes(out))

    def _stalled(self, now: float) -> bool:
        return self._mid_frame() and now >= self._rx.last_byte_at + INTER_BYTE_TIMEOUT

    def _mid_frame(self) -> bool:
        if self.framing is Framing.LENGTH:
            return self._tcp.pending > 0
        return bool(self._rx.buffer) and self._rx.buffer[0] == STX

    def _drop_partial(self, events: list[Event]) -> bytes:
        if self.framing is Framing.LENGTH:
            events.append(FrameRejected(f"frame cut short after {self._tcp.pending} bytes"))
            self._tcp = TcpFrameDecoder(max_length=self._max, min_length=self._min)
            return b""
        rx = self._rx
        tainted = rx.tainted > 0
        rx.consume(1)  # resync from the byte after this STX
        rx.tainted = len(rx.buffer)
        if tainted:
            return b""  # a false STX inside a frame already NAKed
        events.append(FrameRejected(f"frame cut short after {len(rx.buffer) + 1} bytes"))
        return bytes([NAK])

    # --- receiving ----------------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> Step:
        """Take bytes read from the line; return the events and the ACK/NAK/retransmissions."""
        events: list[Event] = []
        out = bytearray()
        if self._stalled(now):  # timeout() was not called in time: drop the stale part first
            out += self._drop_partial(events)
            out += self._scan(now, events)
        if self.framing is Framing.LENGTH:
            self._feed_length(data, now, events)
            return Step(events, bytes(out))
        if data:
            self._rx.append(data, now)
        out += self._scan(now, events)
        return Step(events, bytes(out))

    def _feed_length(self, data: bytes, now: float, events: list[Event]) -> None:
        if data:
            self._tcp.feed(data)
            self._rx.last_byte_at = now
        while True:
            try:
                payload = self._tcp.next_payload()
            except FramingError as exc:
                # a length prefix out of range cannot be resynchronised: drop what is buffered
                events.append(FrameRejected(str(exc)))
                self._tcp = TcpFrameDecoder(max_length=self._max, min_length=self._min)
                return
            if payload is None:
                return
            events.append(FrameReceived(payload))

    def _scan(self, now: float, events: list[Event]) -> bytes:
        rx, out, garbage = self._rx, bytearray(), 0

        def flush_garbage() -> None:
            nonlocal garbage
            if garbage:
                events.append(GarbageDiscarded(garbage))
                garbage = 0

        while rx.buffer:
            tainted = rx.tainted > 0
            if rx.buffer[0] != STX:
                byte = rx.buffer[0]
                rx.consume(1)
                if tainted or byte not in (ACK, NAK):
                    garbage += 1
                elif self._outstanding is not None:
                    flush_garbage()
                    out += self._on_control(byte, now, events)
                # else: a late ACK/NAK with nothing outstanding (a retransmission's); ignored
                continue
            verdict = self._check_frame()
            if verdict is None:
                break  # incomplete: wait for more bytes (or the inter-byte timeout)
            size, reason = verdict
            if reason is None:
                flush_garbage()
                payload = decode_frame_serial(bytes(rx.buffer[:size]))
                rx.consume(size)
                out.append(ACK)
                events.append(self._deliver(payload, now))
            elif tainted:
                garbage += 1  # an STX inside a frame already NAKed: keep quiet, skip it
                rx.consume(1)
            else:
                flush_garbage()
                events.append(FrameRejected(reason))
                out.append(NAK)
                # delimiters intact (only the LRC is wrong): skip the frame; else resync after STX
                rx.consume(size if reason == _LRC_MISMATCH else 1)
                rx.taint_all(now)
        flush_garbage()
        return bytes(out)

    def _check_frame(self) -> tuple[int, str | None] | None:
        """For a buffer starting with STX: ``None`` if incomplete, else (frame size, reason to
        reject or ``None``)."""
        buf = self._rx.buffer
        if len(buf) < _LEN_END:
            return None
        length_hex = buf[1:_LEN_END].hex()
        if not length_hex.isdigit():
            return _LEN_END, f"length {length_hex} is not BCD"
        length = int(length_hex)
        if not self._min <= length <= self._max:
            return _LEN_END, f"length {length} outside {self._min}..{self._max}"
        size = length + SERIAL_OVERHEAD
        if len(buf) < size:
            return None
        if buf[size - 2] != ETX:
            return size, f"no ETX after {length} bytes"
        if compute_lrc(buf[1 : size - 1]) != buf[size - 1]:
            return size, _LRC_MISMATCH
        return size, None

    def _deliver(self, payload: bytes, now: float) -> Event:
        duplicate = (
            payload == self._last_delivered and now - self._last_acked_at <= DUPLICATE_WINDOW
        )
        self._last_delivered, self._last_acked_at = payload, now
        return DuplicateDiscarded(payload) if duplicate else FrameReceived(payload)

    def _on_control(self, byte: int, now: float, events: list[Event]) -> bytes:
        if byte == ACK:
            self._outstanding = None
            events.append(AckReceived())
            return b""
        events.append(NakReceived())
        return self._retransmit("NAK", now, events)


def wire_length(payload_length: int, framing: Framing | str) -> int:
    """Bytes on the line for a payload of ``payload_length`` bytes.

    >>> wire_length(100, "stx"), wire_length(100, "length")
    (105, 102)
    """
    overhead = SERIAL_OVERHEAD if Framing(framing) is Framing.STX else LENGTH_PREFIX
    return payload_length + overhead
