"""How frames reach the host: a small interface and its trio TCP implementation.

A transport moves one request payload (TPDU onwards) and returns one response payload; it
knows nothing of ISO 8583. The TCP transport adds the 2-byte length prefix of protocol.md
section 1; a serial transport (STX/LEN/ETX/LRC with ACK/NAK) can implement the same interface.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

from specs.errors import FramingError
from specs.framing import TcpFrameDecoder, encode_frame_tcp
from terminal.errors import ConnectFailed, GarbledResponse, NoResponse

RECEIVE_SIZE = 65536
"""Most bytes taken from the socket per read."""


class Transport(Protocol):
    """One line to the host."""

    async def connect(self) -> None:
        """Make sure the line is up; raise :class:`ConnectFailed` (nothing sent) if not."""

    async def exchange(self, payload: bytes, timeout: float) -> bytes:
        """Send one payload and return the next whole payload received within ``timeout``
        seconds; raise :class:`NoResponse` otherwise (the request may have arrived)."""

    async def aclose(self) -> None:
        """Release the line."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port).

    >>> parse_address("127.0.0.1:8583")
    ('127.0.0.1', 8583)
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def receive_payload(stream: trio.abc.ReceiveStream,
                          decoder: TcpFrameDecoder) -> bytes | None:
    """The next whole payload of a length-framed stream; None when the peer closed first.
    Raises :class:`specs.errors.FramingError` for a frame that breaks the framing."""
    while (payload := decoder.next_payload()) is None:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return None
        decoder.feed(data)
    return payload


class TcpTransport:
    """A persistent TCP connection, reopened when a read failed (stale bytes are dropped).

    The one TCP frame client of the terminal side: posterm, ``posterm load``, the bench
    terminals and the test kit all send through it. :meth:`exchange` bounds one exchange by a
    timeout; :meth:`send_receive` has no timeout of its own, for callers (load mode) that bound
    many requests with one long-lived cancel scope whose deadline they move (a cancel scope per
    request costs more than the rest of the request).
    """

    def __init__(self, host: str, port: int, *, connect_timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.connect_timeout = connect_timeout
        self._stream: trio.SocketStream | None = None
        self._decoder = TcpFrameDecoder()

    @property
    def stream(self) -> trio.SocketStream | None:
        """The open connection (None when closed), for callers that write raw bytes to it."""
        return self._stream

    async def connect(self) -> None:
        if self._stream is not None:
            return
        try:
            with trio.fail_after(self.connect_timeout):
                self._stream = await trio.open_tcp_stream(self.host, self.port)
        except (OSError, trio.TooSlowError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self._decoder = TcpFrameDecoder()

    async def send_receive(self, payload: bytes) -> bytes:
        """Send one payload and return the next whole payload, however long it takes; raise
        :class:`NoResponse` (or :class:`GarbledResponse`) when the line fails meanwhile."""
        await self.connect()
        stream = self._stream
        assert stream is not None
        where = f"{self.host}:{self.port}"
        # The socket itself, not the stream's send_all/receive_some: one request at a time
        # on this connection, so the stream's bookkeeping buys nothing in load mode's hot path.
        sock, decoder = stream.socket, self._decoder
        data = encode_frame_tcp(payload)
        try:
            while data:
                data = data[await sock.send(data):]
            while (answer := decoder.next_payload()) is None:
                chunk = await sock.recv(RECEIVE_SIZE)
                if not chunk:
                    break
                decoder.feed(chunk)
        except FramingError as exc:
            self.close()
            raise GarbledResponse(f"undecodable frame from {where}: {exc}") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.close()
            raise NoResponse(f"connection to {where} lost: {exc}") from None
        if answer is None:
            self.close()
            raise NoResponse(f"connection to {where} lost: host closed the connection")
        return answer

    async def exchange(self, payload: bytes, timeout: float) -> bytes:
        await self.connect()  # bounded by connect_timeout alone: ConnectFailed = nothing sent
        try:
            with trio.fail_after(timeout if timeout > 0 else math.inf):
                return await self.send_receive(payload)
        except trio.TooSlowError:
            self.close()
            raise NoResponse(f"no response from {self.host}:{self.port} in {timeout:g} s") from None

    def close(self) -> None:
        """Drop the connection at once (no goodbye: the next exchange reconnects)."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.socket.close()

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.move_on_after(1):
                await stream.aclose()
