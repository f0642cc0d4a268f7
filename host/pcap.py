"""``poshost serve --pcap FILE``: every terminal connection's bytes as a pcap capture, so the
Wireshark dissector (``poshost spec --wireshark``) shows what the host saw, TLS links
included (the capture holds the bytes after decryption).

Records are synthetic TCP segments over IPv4/IPv6 (link type RAW): a three-way handshake
when a connection opens, one segment per read or write with real sequence numbers, a FIN
exchange when it closes. The encoders are pure functions; :class:`Tap` writes them.
The file holds card data in the clear (PAN, track 2): lab use only, mode 0600.

>>> len(encode_pcap_header())
24
>>> rec = encode_segment(1.5, ("127.0.0.1", 40000), ("127.0.0.1", 5000), 1, 1, ACK, b"hi")
>>> len(rec) == 16 + 20 + 20 + 2
True
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import trio

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_RAW = 101
"""Records start with the IP header (IPv4 or IPv6, told by its version nibble)."""
SNAPLEN = 65535
FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10
MAX_SEGMENT = 65000
"""Largest TCP payload put in one record (a longer write is split)."""
_TTL = 64


def encode_pcap_header() -> bytes:
    return struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def encode_segment(ts: float, src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int,
                   flags: int, payload: bytes = b"") -> bytes:
    """One pcap record: IP header, TCP header (no options), payload."""
    s_ip, d_ip = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      5 << 4, flags, 65535, 0, 0)
    if s_ip.version == 4 and d_ip.version == 4:
        pseudo = struct.pack("!4s4sBBH", s_ip.packed, d_ip.packed, 0, 6, len(tcp) + len(payload))
    else:
        s_ip, d_ip = _as_v6(s_ip), _as_v6(d_ip)
        pseudo = struct.pack("!16s16sI3xB", s_ip.packed, d_ip.packed, len(tcp) + len(payload), 6)
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp + payload)) + tcp[18:]
    if s_ip.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000,
                         _TTL, 6, 0, s_ip.packed, d_ip.packed)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + len(payload), 6, _TTL,
                         s_ip.packed, d_ip.packed)
    packet = ip + tcp + payload
    seconds = int(ts)
    micros = int((ts - seconds) * 1_000_000)
    return struct.pack("<IIII", seconds, micros, len(packet), len(packet)) + packet


def _as_v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address(f"::ffff:{ip}")


class TapConnection:
    """The sequence numbers of one connection; each call writes its records."""

    def __init__(self, tap: Tap, client: tuple[str, int], server: tuple[str, int]) -> None:
        self.tap, self.client, self.server = tap, client, server
        self.client_seq, self.server_seq = 1_000, 5_000
        tap.write(encode_segment(time.time(), client, server, self.client_seq - 1, 0, SYN))
        tap.write(encode_segment(time.time(), server, client, self.server_seq - 1,
                                 self.client_seq, SYN | ACK))
        tap.write(encode_segment(time.time(), client, server, self.client_seq,
                                 self.server_seq, ACK))

    def inbound(self, data: bytes) -> None:
        """Bytes the terminal sent."""
        for i in range(0, len(data), MAX_SEGMENT):
            part = data[i:i + MAX_SEGMENT]
            self.tap.write(encode_segment(time.time(), self.client, self.server,
                                          self.client_seq, self.server_seq, PSH | ACK, part))
            self.client_seq += len(part)

    def outbound(self, data: bytes) -> None:
        """Bytes the host sent."""
        for i in range(0, len(data), MAX_SEGMENT):
            part = data[i:i + MAX_SEGMENT]
            self.tap.write(encode_segment(time.time(), self.server, self.client,
                                          self.server_seq, self.client_seq, PSH | ACK, part))
            self.server_seq += len(part)

    def close(self) -> None:
        now = time.time()
        self.tap.write(encode_segment(now, self.server, self.client, self.server_seq,
                                      self.client_seq, FIN | ACK))
        self.tap.write(encode_segment(now, self.client, self.server, self.client_seq,
                                      self.server_seq + 1, FIN | ACK))
        self.tap.write(encode_segment(now, self.server, self.client, self.server_seq + 1,
                                      self.client_seq + 1, ACK))


class TappedStream(trio.abc.Stream):
    """A stream that records what passes through it on a :class:`TapConnection`."""

    def __init__(self, inner: trio.abc.Stream, wire: TapConnection) -> None:
        self.inner, self.wire = inner, wire

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        if data:
            self.wire.inbound(bytes(data))
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        self.wire.outbound(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.inner.aclose()


class Tap:
    """The open capture file (flushed after every record, so a live reader sees it)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.file.write(encode_pcap_header())
        self.file.flush()

    def write(self, record: bytes) -> None:
        self.file.write(record)
        self.file.flush()

    def wrap(self, stream: trio.abc.Stream, sock: trio.socket.SocketType) -> TappedStream:
        """``stream`` (plain or TLS) over ``sock``, recorded as that socket's connection."""
        try:
            client = sock.getpeername()[:2]
            server = sock.getsockname()[:2]
        except OSError:
            client, server = ("0.0.0.0", 0), ("0.0.0.0", 0)
        return TappedStream(stream, TapConnection(self, client, server))


@contextlib.contextmanager
def open_tap(path: Path | None) -> Iterator[Tap | None]:
    """The capture at ``path`` (created or truncated, mode 0600), or None without a path."""
    if path is None:
        yield None
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        yield Tap(file)
