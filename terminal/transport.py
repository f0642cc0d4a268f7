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

RECEIVE_SIZE = 4096


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
    from specs.values import parse_address as parse

    return parse(text)  # one address syntax for the three CLIs; InputError is a ValueError


class TcpTransport:
    """A persistent TCP connection, reopened when a read failed (stale bytes are dropped)."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.connect_timeout = connect_timeout
        self._stream: trio.SocketStream | None = None
        self._decoder = TcpFrameDecoder()

    async def connect(self) -> None:
        if self._stream is not None:
            return
        try:
            with trio.fail_after(self.connect_timeout):
                self._stream = await trio.open_tcp_stream(self.host, self.port)
        except (OSError, trio.TooSlowError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self._decoder = TcpFrameDecoder()

    async def exchange(self, payload: bytes, timeout: float) -> bytes:
        await self.connect()
        assert self._stream is not None
        try:
            with trio.fail_after(timeout if timeout > 0 else math.inf):
                await self._stream.send_all(encode_frame_tcp(payload))
                return await self._read_payload()
        except trio.TooSlowError:
            await self.aclose()
            raise NoResponse(f"no response from {self.host}:{self.port} in {timeout:g} s") from None
        except FramingError as exc:
            await self.aclose()
            where = f"{self.host}:{self.port}"
            raise GarbledResponse(f"undecodable frame from {where}: {exc}") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.aclose()
            raise NoResponse(f"connection to {self.host}:{self.port} lost: {exc}") from None

    async def _read_payload(self) -> bytes:
        assert self._stream is not None
        while (payload := self._decoder.next_payload()) is None:
            data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise trio.BrokenResourceError("host closed the connection")
            self._decoder.feed(data)
        return payload

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.move_on_after(1):
                await stream.aclose()
