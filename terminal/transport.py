"""How frames reach the host: a small interface and its trio TCP implementation.

A transport moves one request payload (TPDU onwards) and returns one response payload; it
knows nothing of ISO 8583. The TCP transport adds the 2-byte length prefix of protocol.md
section 1; a serial transport (STX/LEN/ETX/LRC with ACK/NAK) can implement the same interface.
"""

from __future__ import annotations

import math
import ssl
from typing import Protocol

import trio

from specs.errors import FramingError
from specs.framing import TcpFrameDecoder, encode_frame_tcp
from specs.tls import TlsError, client_context, describe_tls_failure
from terminal.errors import BadInput, ConnectFailed, GarbledResponse, NoResponse

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


def tls_context(ca: str | None = None, cert: str | None = None,
                key: str | None = None) -> ssl.SSLContext:
    """The terminal's TLS client context (specs.tls): the host's certificate must chain to
    ``ca`` (the system's CAs when None); ``cert``/``key`` for a host requiring mutual TLS."""
    try:
        return client_context(ca or None, cert or None, key or None)
    except TlsError as exc:
        raise BadInput(f"TLS: {exc}") from None


class TcpTransport:
    """A persistent TCP connection, reopened when a read failed (stale bytes are dropped).
    With ``ssl_context``, a TLS connection: the handshake (host certificate checked against
    the context's CAs and the host name) is part of connecting, within ``connect_timeout``."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self._stream: trio.abc.Stream | None = None
        self._decoder = TcpFrameDecoder()
        self._fresh = False
        """No exchange yet on this connection (a TLS refusal shows at the first one)."""

    async def connect(self) -> None:
        if self._stream is not None:
            return
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(self.host, self.port)
                if self.ssl_context is not None:
                    stream = await self._handshake(stream, self.ssl_context)
                self._stream = stream
                self._fresh = True
        except (OSError, trio.TooSlowError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self._decoder = TcpFrameDecoder()

    async def _handshake(self, stream: trio.SocketStream,
                         context: ssl.SSLContext) -> trio.SSLStream:
        tls = trio.SSLStream(stream, context, server_hostname=self.host.strip("[]"))
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            stream.socket.close()
            raise ConnectFailed(f"TLS to {self.host}:{self.port}: {describe_tls_failure(exc)}"
                                ) from None
        except BaseException:
            stream.socket.close()
            raise
        return tls

    async def exchange(self, payload: bytes, timeout: float) -> bytes:
        await self.connect()
        assert self._stream is not None
        fresh, self._fresh = self._fresh, False
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
            why = describe_tls_failure(exc) if self.ssl_context is not None else str(exc)
            if self.ssl_context is not None and fresh and "certificate" not in why:
                why += ("; a host that requires a client certificate (mutual TLS) closes a"
                        " connection without one at once: posterm init --cert/--key")
            raise NoResponse(f"connection to {self.host}:{self.port} lost: {why}") from None

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
