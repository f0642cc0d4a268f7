"""A small HTTP/1.1 server for the observability side: h11 (sans-IO) for the protocol, trio
for the sockets. Made to never cost the message path much: HTTP_MAX_CONNECTIONS at once,
requests of HTTP_MAX_REQUEST bytes at the most and no bodies, HTTP_REQUEST_TIMEOUT to send a
request and HTTP_SEND_TIMEOUT to take an answer, HTTP_REQUESTS_PER_SECOND over all clients.
GET and HEAD only; keep-alive is kept."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import h11
import trio

from host.limits import (
    HTTP_MAX_CONNECTIONS,
    HTTP_MAX_REQUEST,
    HTTP_REQUEST_BURST,
    HTTP_REQUEST_TIMEOUT,
    HTTP_REQUESTS_PER_SECOND,
    HTTP_SEND_TIMEOUT,
    RECEIVE_CHUNK,
)
from host.throttle import TokenBucket

log = logging.getLogger("poshost.http")
SERVER_NAME = b"poshost"
SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
]
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Handler = Callable[[str], Awaitable[Reply]]
"""The site: a request path (query string included) to a reply."""


class HttpServer:
    """Serves ``handler`` on listeners until cancelled."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.refused = 0
        self._rate = TokenBucket(HTTP_REQUESTS_PER_SECOND, HTTP_REQUEST_BURST,
                                 trio.current_time())

    async def serve(self, listeners: list[trio.SocketListener]) -> None:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # out of descriptors: the terminals come first
                    log.warning("http accept failed: %s", exc)
                    await trio.sleep(1.0)
                    continue
                if self.connections >= HTTP_MAX_CONNECTIONS:
                    self.refused += 1
                    stream.socket.close()
                    continue
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await self._serve(stream, h11.Connection(
                h11.SERVER, max_incomplete_event_size=HTTP_MAX_REQUEST))
        except (*_STREAM_ERRORS, h11.LocalProtocolError, trio.TooSlowError) as exc:
            log.debug("http connection ended: %r", exc)
        finally:
            self.connections -= 1
            stream.socket.close()

    async def _serve(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        while True:
            with trio.move_on_after(HTTP_REQUEST_TIMEOUT):
                try:
                    event = await _next_event(stream, conn)
                except h11.RemoteProtocolError as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await _send(stream, conn, Reply(exc.error_status_hint,
                                                        b"bad request\n"), head=False)
                    return
                if isinstance(event, h11.Request):
                    await self._answer(stream, conn, event)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                    continue
                return  # the peer closed (ConnectionClosed)
            return  # no whole request within HTTP_REQUEST_TIMEOUT

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection,
                      request: h11.Request) -> None:
        method = request.method.upper()
        if _has_body(request):  # never read: the connection closes after the answer
            reply = Reply(413, b"no request bodies\n", headers=[(b"connection", b"close")])
        else:
            conn.next_event()  # the request's EndOfMessage (no body: no I/O)
            if method not in (b"GET", b"HEAD"):
                reply = Reply(405, b"GET or HEAD only\n", headers=[(b"allow", b"GET, HEAD")])
            elif self._rate.take(trio.current_time()):
                reply = Reply(503, b"busy: too many requests\n",
                              headers=[(b"retry-after", b"1")])
            else:
                reply = await self.handler(request.target.decode("ascii", "replace"))
        await _send(stream, conn, reply, head=method == b"HEAD")


def _has_body(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> h11.Event | type:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            if event is h11.PAUSED:
                return h11.ConnectionClosed()
            return event
        data = await stream.receive_some(RECEIVE_CHUNK)
        conn.receive_data(data)


async def _send(stream: trio.SocketStream, conn: h11.Connection, reply: Reply, *,
                head: bool) -> None:
    headers = [(b"server", SERVER_NAME), (b"content-type", reply.content_type.encode()),
               (b"content-length", str(len(reply.body)).encode()), *SECURITY_HEADERS,
               *reply.headers]
    data = conn.send(h11.Response(status_code=reply.status, headers=headers,
                                  reason=HTTPStatus(reply.status).phrase.encode()))
    if not head:
        data += conn.send(h11.Data(data=reply.body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    with trio.fail_after(HTTP_SEND_TIMEOUT):
        await stream.send_all(data)
