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
    from specs.values import parse_address as parse

    return parse(text)  # one address syntax for the three CLIs; InputError is a ValueError


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """``HOST:PORT[,HOST:PORT...]``: the primary host, then the ones to fail over to, in the
    order a real terminal dials them.

    >>> parse_addresses("10.0.0.1:5000,10.0.0.2:5000")
    [('10.0.0.1', 5000), ('10.0.0.2', 5000)]
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > MAX_HOSTS or not all(parts):
        raise ValueError(f"give 1 to {MAX_HOSTS} host addresses HOST:PORT, separated by ','")
    return [parse_address(p) for p in parts]


def format_addresses(addresses: list[tuple[str, int]]) -> str:
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)


def tls_context(ca: str | None = None, cert: str | None = None,
                key: str | None = None) -> ssl.SSLContext:
    """The terminal's TLS client context (specs.tls): the host's certificate must chain to
    ``ca`` (the system's CAs when None); ``cert``/``key`` for a host requiring mutual TLS."""
    try:
        return client_context(ca or None, cert or None, key or None)
    except TlsError as exc:
        raise BadInput(f"TLS: {exc}") from None


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


MAX_HOSTS = 4
"""Most host addresses a terminal is configured with (primary and secondaries)."""


class TcpTransport:
    """A persistent TCP connection, reopened when a read failed (stale bytes are dropped).

    The one TCP frame client of the terminal side: posterm, ``posterm load``, the bench
    terminals and the test kit all send through it. :meth:`exchange` bounds one exchange by a
    timeout; :meth:`send_receive` has no timeout of its own, for callers (load mode) that bound
    many requests with one long-lived cancel scope whose deadline they move (a cancel scope per
    request costs more than the rest of the request).

    With ``ssl_context``, a TLS connection: the handshake (host certificate checked against
    the context's CAs and the host name) is part of connecting, within ``connect_timeout``.
    """

    def __init__(self, host: str, port: int, *, connect_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None,
                 local_address: str | None = None,
                 alternates: tuple[tuple[str, int], ...] = ()) -> None:
        self.host, self.port = host, port
        self.addresses = ((host, port), *alternates)
        """The primary host, then the secondaries: each new connection tries them in this
        order (a refused or unreachable host is passed over; a real terminal's failover)."""
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.local_address = local_address
        """Source address to connect from (None: the system's choice)."""
        self._stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
        self._decoder = TcpFrameDecoder()
        self._fresh = False
        """No exchange yet on this connection (a TLS refusal shows at the first one)."""

    @property
    def stream(self) -> trio.abc.Stream | None:
        """The open connection (None when closed), for callers that write raw bytes to it."""
        return self._stream

    async def connect(self) -> None:
        if self._stream is not None:
            return
        failure: ConnectFailed | None = None
        for host, port in self.addresses:
            self.host, self.port = host, port
            try:
                await self._connect_one()
                return
            except ConnectFailed as exc:
                failure = exc
        assert failure is not None
        if len(self.addresses) > 1:
            raise ConnectFailed(f"no host answered ({len(self.addresses)} tried); last: "
                                f"{failure}") from None
        raise failure

    async def _connect_one(self) -> None:
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(self.host, self.port,
                                                    local_address=self.local_address)
                if self.ssl_context is not None:
                    stream = await self._handshake(stream, self.ssl_context)
                self._stream = stream
                self._fresh = True
        except (OSError, trio.TooSlowError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self._decoder = TcpFrameDecoder()

    async def _handshake(self, stream: trio.SocketStream,
                         context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
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

    async def _send_receive_tls(self, stream: trio.abc.Stream, data: bytes) -> bytes | None:
        await stream.send_all(data)
        return await receive_payload(stream, self._decoder)

    def _lost(self, exc: BaseException) -> str:
        """Why the line failed, with the TLS reason and a hint where one applies."""
        if self.ssl_context is None:
            return str(exc)
        why = describe_tls_failure(exc)
        if self._fresh and "certificate" not in why:
            why += ("; a host that requires a client certificate (mutual TLS) closes a"
                    " connection without one at once: posterm init --cert/--key")
        return why

    async def send_receive(self, payload: bytes) -> bytes:
        """Send one payload and return the next whole payload, however long it takes; raise
        :class:`NoResponse` (or :class:`GarbledResponse`) when the line fails meanwhile."""
        await self.connect()
        stream = self._stream
        assert stream is not None
        where = f"{self.host}:{self.port}"
        # The socket itself, not the stream's send_all/receive_some: one request at a time
        # on this connection, so the stream's bookkeeping buys nothing in load mode's hot path.
        data = encode_frame_tcp(payload)
        try:
            if isinstance(stream, trio.SSLStream):
                answer = await self._send_receive_tls(stream, data)
            else:
                sock, decoder = stream.socket, self._decoder
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
        except (OSError, ssl.SSLError, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            why = self._lost(exc)
            self.close()
            raise NoResponse(f"connection to {where} lost: {why}") from None
        # (a failed exchange closes the line, so the next connection is fresh again)
        if answer is None:
            why = self._lost(ConnectionResetError("host closed the connection"))
            self.close()
            raise NoResponse(f"connection to {where} lost: {why}")
        self._fresh = False
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
            raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
            raw.socket.close()

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.move_on_after(1):
                await stream.aclose()
