"""Framing of protocol.md section 1: TCP length prefix, TPDU, the 6-byte header, serial frames.

Sans-IO: :class:`TcpFrameDecoder` is fed bytes and hands out whole frames; nothing here reads
or writes a socket.

>>> tpdu = Tpdu.parse(bytes.fromhex("6000030000"))
>>> tpdu.swapped().to_bytes().hex()
'6000000003'
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from specs.errors import FramingError

MAX_FRAME_LENGTH = 2048
"""Largest value of the TCP length prefix (bytes after the prefix) a peer accepts."""
TPDU_LENGTH = 5
HEADER_LENGTH = 6
MTI_LENGTH = 2
BITMAP_LENGTH = 8
MIN_FRAME_LENGTH = TPDU_LENGTH + HEADER_LENGTH + MTI_LENGTH + BITMAP_LENGTH
"""Shortest payload: TPDU + header + MTI + bitmap."""
LENGTH_PREFIX = 2
BODY_OFFSET = TPDU_LENGTH + HEADER_LENGTH
"""Where the MTI starts inside a payload."""

TPDU_ID = 0x60
STX, ETX, ACK, NAK = 0x02, 0x03, 0x06, 0x15


@dataclass(frozen=True)
class Tpdu:
    """Transport PDU: id 60, destination and source NII (4 digits each)."""

    destination: str = "0003"
    source: str = "0000"

    @classmethod
    def parse(cls, data: bytes) -> Tpdu:
        if len(data) != TPDU_LENGTH or data[0] != TPDU_ID:
            raise FramingError("TPDU must be 5 bytes starting 60", field="tpdu", position=0)
        return cls(data[1:3].hex().upper(), data[3:5].hex().upper())

    def to_bytes(self) -> bytes:
        return bytes([TPDU_ID]) + bytes.fromhex(self.destination + self.source)

    def swapped(self) -> Tpdu:
        """The TPDU of the answer: destination and source exchanged."""
        return Tpdu(self.source, self.destination)


SIGN_ON_AGAIN = 3
"""Header processing-requirement nibble with which the host asks the terminal to sign on again."""


@dataclass(frozen=True)
class Header:
    """The 6-byte BCD header: application category, version, status/requirement, sub-version."""

    application: str = "60"
    version: str = "31"
    terminal_status: int = 0
    processing_requirement: int = 0
    sub_version: str = "310000"

    @classmethod
    def parse(cls, data: bytes) -> Header:
        if len(data) != HEADER_LENGTH:
            raise FramingError("header must be 6 bytes", field="header", position=TPDU_LENGTH)
        h = data.hex().upper()
        return cls(h[0:2], h[2:4], data[2] >> 4, data[2] & 0x0F, h[6:12])

    def to_bytes(self) -> bytes:
        status = f"{self.terminal_status:X}{self.processing_requirement:X}"
        return bytes.fromhex(self.application + self.version + status + self.sub_version)

    def requiring(self, requirement: int) -> Header:
        return replace(self, processing_requirement=requirement)


@dataclass(frozen=True)
class Frame:
    """One message with its routing: TPDU, header and the ISO 8583 body (MTI onwards)."""

    tpdu: Tpdu
    header: Header
    body: bytes

    @classmethod
    def parse(cls, payload: bytes) -> Frame:
        """Split a payload (what follows the length prefix)."""
        if len(payload) < MIN_FRAME_LENGTH:
            raise FramingError(
                f"frame of {len(payload)} bytes is shorter than {MIN_FRAME_LENGTH}",
                field="frame",
                position=len(payload),
            )
        tpdu = Tpdu.parse(payload[:TPDU_LENGTH])
        header = Header.parse(payload[TPDU_LENGTH:BODY_OFFSET])
        return cls(tpdu, header, payload[BODY_OFFSET:])

    def payload(self) -> bytes:
        return self.tpdu.to_bytes() + self.header.to_bytes() + self.body

    def answer(self, body: bytes, *, requirement: int | None = None) -> Frame:
        """The frame that answers this one: TPDU swapped, header echoed."""
        header = self.header if requirement is None else self.header.requiring(requirement)
        return Frame(self.tpdu.swapped(), header, body)


def encode_frame_tcp(payload: bytes) -> bytes:
    """Prefix a payload with its 2-byte big-endian length.

    >>> encode_frame_tcp(b"abc").hex()
    '0003616263'
    """
    if len(payload) > MAX_FRAME_LENGTH:
        raise FramingError(
            f"frame of {len(payload)} bytes exceeds {MAX_FRAME_LENGTH}", field="length", position=0
        )
    return len(payload).to_bytes(LENGTH_PREFIX, "big") + payload


class TcpFrameDecoder:
    """Sans-IO reader of length-prefixed frames.

    Feed it bytes with :meth:`feed`; :meth:`next_payload` returns a whole payload or ``None``
    when more bytes are needed. A length prefix above ``MAX_FRAME_LENGTH`` or below
    ``MIN_FRAME_LENGTH`` raises :class:`FramingError` (the stream cannot be resynchronised, so
    the caller should close the connection after answering if it can).

    >>> d = TcpFrameDecoder(min_length=1)
    >>> d.feed(b"\\x00\\x03ab"); d.next_payload() is None
    True
    >>> d.feed(b"c"); d.next_payload()
    b'abc'
    """

    def __init__(
        self, *, max_length: int = MAX_FRAME_LENGTH, min_length: int = MIN_FRAME_LENGTH
    ) -> None:
        self._buffer = bytearray()
        self._max = max_length
        self._min = min_length

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet handed out (a half-sent frame, if any)."""
        return len(self._buffer)

    def next_payload(self) -> bytes | None:
        if len(self._buffer) < LENGTH_PREFIX:
            return None
        length = int.from_bytes(self._buffer[:LENGTH_PREFIX], "big")
        if length > self._max:
            raise FramingError(
                f"length prefix {length} exceeds {self._max}", field="length", position=0
            )
        if length < self._min:
            raise FramingError(
                f"length prefix {length} is below {self._min}", field="length", position=0
            )
        end = LENGTH_PREFIX + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[LENGTH_PREFIX:end])
        del self._buffer[:end]
        return payload


def compute_lrc(data: bytes) -> int:
    """XOR of every byte: the serial frame's LRC over LEN..ETX.

    >>> compute_lrc(bytes([0x00, 0x01, 0x41, 0x03]))
    67
    """
    lrc = 0
    for byte in data:
        lrc ^= byte
    return lrc


def encode_frame_serial(payload: bytes) -> bytes:
    """STX | LEN (2 bytes BCD) | payload | ETX | LRC (XOR of everything after STX through ETX).

    >>> encode_frame_serial(b"A").hex()
    '020001410343'
    """
    if len(payload) > MAX_FRAME_LENGTH:
        raise FramingError(
            f"frame of {len(payload)} bytes exceeds {MAX_FRAME_LENGTH}", field="length", position=1
        )
    body = bytes.fromhex(f"{len(payload):04d}") + payload + bytes([ETX])
    return bytes([STX]) + body + bytes([compute_lrc(body)])


def decode_frame_serial(frame: bytes) -> bytes:
    """Check a whole serial frame (STX..LRC) and return its payload."""
    if len(frame) < 5 or frame[0] != STX:
        raise FramingError("serial frame must start with STX", field="stx", position=0)
    length_hex = frame[1:3].hex()
    if not length_hex.isdigit():
        raise FramingError("serial length is not BCD", field="length", position=1)
    length = int(length_hex)
    if length > MAX_FRAME_LENGTH or len(frame) != length + 5:
        raise FramingError(
            f"serial length {length} does not match {len(frame) - 5} bytes",
            field="length",
            position=1,
        )
    if frame[3 + length] != ETX:
        raise FramingError("serial frame lacks ETX", field="etx", position=3 + length)
    if compute_lrc(frame[1:-1]) != frame[-1]:
        raise FramingError("serial LRC mismatch", field="lrc", position=len(frame) - 1)
    return frame[3 : 3 + length]
