"""The TCP shell: accepts connections, reads length-prefixed frames with timeouts, hands each
to the service and writes the answer. Every connection lives in the server's nursery; a bad
or slow peer only ever loses its own connection.
"""

from __future__ import annotations

import errno
import logging
import ssl
import time
from collections.abc import Sequence

import trio

from host.errors import CloseConnection
from host.limits import (
    FRAME_TIMEOUT,
    HANDLER_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    PEER_LOG_BURST,
    PEER_LOG_PER_SECOND,
    RECEIVE_CHUNK,
    SEND_TIMEOUT,
    SHUTDOWN_GRACE,
    TLS_HANDSHAKE_TIMEOUT,
    UNPROVEN_BURST,
    UNPROVEN_PER_SECOND,
)
from host.pcap import Tap, TappedStream
from host.peers import PeerGuard
from host.service import HostService
from host.throttle import LogBudget, TokenBucket
from specs.errors import FramingError
from specs.framing import TcpFrameDecoder
from specs.tls import describe_tls_failure

log = logging.getLogger("poshost.net")
ACCEPT_BACKOFF = 0.1
"""Seconds the accept loop pauses when the process is out of file descriptors."""
_FD_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_IDLE, _FRAME, _HANDLER, _SEND = range(4)
"""Phases of a connection, each with its own deadline on the connection's one cancel scope."""


class Server:
    """Serves a HostService on listeners until ``stop`` is set, then drains gracefully.

    Admission: each new connection takes a token of an UNPROVEN_PER_SECOND bucket
    (UNPROVEN_BURST deep) and gives it back once the host has answered it a frame, or when
    it ends without fault. A connection closed for bad input (undecodable frame, bad length,
    a frame that never completes, a reset) keeps its token spent. While the bucket is empty
    new connections wait in the kernel's backlog. So clean churn (terminals that connect per
    transaction) is never paced, while a flood of garbage gets that many connections a
    second at the most and the terminals already connected keep their share of the host.
    Lines about peers closed for bad input are kept to PEER_LOG_PER_SECOND, with a count of
    those left out."""

    def __init__(self, service: HostService, admission_share: float = 1.0,
                 tap: Tap | None = None, guard: PeerGuard | None = None,
                 bind_tls_tid: bool = False) -> None:
        """``admission_share``: this server's part of the host's admission rate and burst
        (1/N in each of N worker processes). ``tap``: records every connection's bytes
        (serve --pcap). ``guard``: the operator's allow-list of terminal source addresses
        (host/peers.py); connections from elsewhere are closed. ``bind_tls_tid``: a TLS
        connection may only carry requests for the TID its client certificate names."""
        self.bind_tls_tid = bind_tls_tid
        self.service = service
        self.tap = tap
        self.guard = guard
        self.connections = 0
        self._stopping = False
        self._idle: set[trio.CancelScope] = set()
        self._admission = TokenBucket(UNPROVEN_PER_SECOND * admission_share,
                                      max(1, round(UNPROVEN_BURST * admission_share)),
                                      trio.current_time())
        self._peer_log = LogBudget(PEER_LOG_PER_SECOND, PEER_LOG_BURST)

    async def serve(self, listeners: list[trio.SocketListener], stop: trio.Event, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    tls_listeners: Sequence[trio.SocketListener] = (),
                    tls_context: ssl.SSLContext | None = None) -> None:
        """``tls_listeners`` (with ``tls_context``): connections that start with a TLS
        handshake, completed within TLS_HANDSHAKE_TIMEOUT, then served like the others."""
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(self._accept_loop, listener, connections)
                for listener in tls_listeners:
                    acceptors.start_soon(self._accept_loop, listener, connections, tls_context)
                task_status.started()
                await stop.wait()
                acceptors.cancel_scope.cancel()
            for listener in [*listeners, *tls_listeners]:
                await listener.aclose()
            self._stopping = True
            for scope in list(self._idle):
                scope.cancel()
            connections.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE
            log.info("stopped accepting; %d connection(s) finishing", self.connections)

    async def _accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery,
                           tls_context: ssl.SSLContext | None = None) -> None:
        while True:
            wait = self._admission.take(trio.current_time())
            if wait:
                await trio.sleep(wait)
                continue
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _FD_ERRORS:
                    log.error("accept failed: %s", exc)
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                raise
            if self.guard is not None and not self.guard.admits(_peer_address(stream)):
                left_out = self._peer_log.admit(trio.current_time())
                if left_out is not None:
                    log.warning("peer=%s refused: not in the --allow-peer list",
                                _peer(stream))
                self._admission.give(trio.current_time())
                stream.socket.close()
                continue
            if self.connections >= MAX_CONNECTIONS:
                log.warning("connection limit %d reached: closing a new one", MAX_CONNECTIONS)
                await stream.aclose()
                continue
            connections.start_soon(self._connection, stream, tls_context)

    async def _connection(self, stream: trio.SocketStream,
                          tls_context: ssl.SSLContext | None = None) -> None:
        self.connections += 1
        served: trio.abc.Stream = stream
        metrics = self.service.metrics
        if metrics is not None:
            metrics.connections += 1
        try:
            cert_tid = None
            if tls_context is not None:
                served = await _handshake(stream, tls_context)
                if self.bind_tls_tid:
                    cert_tid = certificate_tid(served)
            if self.tap is not None:
                served = self.tap.wrap(served, stream.socket)
            # the source address from the socket itself (a TLS or tapped stream has none)
            peer = _peer_address(stream) if self.guard is not None else None
            if not await self._serve_connection(served, cert_tid, peer):
                self._admission.give(trio.current_time())  # ended cleanly, unanswered
        except CloseConnection as exc:
            if metrics is not None:
                metrics.dropped += 1
            left_out = self._peer_log.admit(trio.current_time())
            if left_out is not None and log.isEnabledFor(logging.WARNING):
                more = f" ({left_out} more closed since, not logged)" if left_out else ""
                log.warning("peer=%s closed: %s%s", _peer(stream), exc, more)
        except _STREAM_ERRORS as exc:
            if log.isEnabledFor(logging.INFO):
                log.info("peer=%s connection lost: %s", _peer(stream), exc)
        except Exception:
            log.exception("peer=%s unexpected failure; connection closed", _peer(stream))
        finally:
            self.connections -= 1
            if isinstance(served, TappedStream):
                served.wire.close()
            if metrics is not None:
                metrics.connections -= 1
            stream.socket.close()  # what SocketStream.aclose does, without its checkpoint

    async def _serve_connection(self, stream: trio.abc.Stream, cert_tid: str | None = None,
                                peer: str | None = None) -> bool:
        """Frames in, answers out, under one cancel scope whose deadline moves with the phase:
        IDLE_TIMEOUT waiting for a frame's first byte, FRAME_TIMEOUT until it is complete,
        then HANDLER_TIMEOUT and SEND_TIMEOUT (one scope per connection, not per read).
        Returns whether the connection gave its admission token back (it was answered)."""
        proven = False
        decoder = TcpFrameDecoder()
        now = trio.current_time
        receive = stream.receive_some
        scope = trio.CancelScope()
        phase = _IDLE
        metrics = self.service.metrics
        with scope:
            while not self._stopping:
                payload = _next_payload(decoder)
                if payload is None:
                    if decoder.pending == 0:
                        phase = _IDLE
                        scope.deadline = now() + IDLE_TIMEOUT
                        self._idle.add(scope)
                        try:
                            data = await receive(RECEIVE_CHUNK)
                        finally:
                            self._idle.discard(scope)
                        if not data or scope.cancel_called:
                            return proven
                        decoder.feed(data)
                        payload = _next_payload(decoder)
                    if payload is None:
                        phase = _FRAME
                        scope.deadline = now() + FRAME_TIMEOUT
                        while payload is None:
                            data = await receive(RECEIVE_CHUNK)
                            if not data:
                                raise CloseConnection("connection closed in the middle of a"
                                                      " frame")
                            decoder.feed(data)
                            payload = _next_payload(decoder)
                phase = _HANDLER
                scope.deadline = now() + HANDLER_TIMEOUT
                frame_in = time.perf_counter()
                answer = await self.service.handle(payload, peer, cert_tid)
                phase = _SEND
                scope.deadline = now() + SEND_TIMEOUT
                await stream.send_all(answer)
                if metrics is not None:
                    metrics.latency.observe(time.perf_counter() - frame_in)
                if not proven:
                    proven = True
                    self._admission.give(now())
        if scope.cancelled_caught:
            if phase == _FRAME:
                raise CloseConnection(f"frame not complete within {FRAME_TIMEOUT} s")
            if phase == _HANDLER:
                raise CloseConnection(f"no answer within {HANDLER_TIMEOUT} s")
            if phase == _SEND:
                raise trio.TooSlowError
        return proven


async def _handshake(stream: trio.SocketStream, context: ssl.SSLContext) -> trio.SSLStream:
    """The TLS stream over ``stream`` once its handshake is done; CloseConnection (one log
    line, the connection closed, its admission token kept spent) when it fails or stalls."""
    tls = trio.SSLStream(stream, context, server_side=True)
    try:
        with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
            await tls.do_handshake()
    except trio.TooSlowError:
        raise CloseConnection(f"TLS handshake not complete within {TLS_HANDSHAKE_TIMEOUT} s"
                              ) from None
    except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
        raise CloseConnection(describe_tls_failure(exc)) from None
    return tls


def certificate_tid(tls: trio.SSLStream[trio.SocketStream]) -> str:
    """The TID a terminal's client certificate names: its subject CN ('' without one, which
    matches no TID). ``poshost tls make-lab-ca --tid`` writes such certificates."""
    cert = tls.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def _next_payload(decoder: TcpFrameDecoder) -> bytes | None:
    try:
        return decoder.next_payload()
    except FramingError as exc:
        raise CloseConnection(str(exc)) from None


def _peer_address(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
