"""Thin trio TCP shell around `HsmEngine`: framing, per-connection limits, nothing else.

Each connection is its own task: a frame over 32 KiB, a half-sent frame or an idle client
closes only that connection; the engine never raises, so no client can take others down.
"""

from __future__ import annotations

import logging
import ssl

import trio

from hsm_sim.commands import HsmEngine, decode_frame_length, encode_frame
from hsm_sim.errors import HsmError
from specs.tls import describe_tls_failure

__all__ = ["CONNECTION_IDLE_TIMEOUT", "FRAME_READ_TIMEOUT", "receive_exact", "serve_hsm"]

log = logging.getLogger("hsm_sim.server")

LENGTH_PREFIX = 2
FRAME_READ_TIMEOUT = 10.0  # seconds to finish a frame once its length has arrived
CONNECTION_IDLE_TIMEOUT = 600.0  # seconds a connection may stay silent between frames
RECEIVE_CHUNK = 65536
TLS_HANDSHAKE_TIMEOUT = 10.0  # seconds a client on a TLS port has to complete its handshake


async def receive_exact(stream: trio.abc.ReceiveStream, count: int) -> bytes | None:
    """Exactly `count` bytes, or None when the peer closes first (a clean EOF at 0 bytes)."""
    buffer = bytearray()
    while len(buffer) < count:
        chunk = await stream.receive_some(min(RECEIVE_CHUNK, count - len(buffer)))
        if not chunk:
            return None
        buffer += chunk
    return bytes(buffer)


async def _next_request(stream: trio.abc.ReceiveStream) -> bytes | None:
    """One request frame's body, or None when the connection should end."""
    with trio.move_on_after(CONNECTION_IDLE_TIMEOUT):
        prefix = await receive_exact(stream, LENGTH_PREFIX)
        if prefix is None:
            return None
        length = decode_frame_length(prefix)
        with trio.move_on_after(FRAME_READ_TIMEOUT):
            return await receive_exact(stream, length)
    return None


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


async def serve_connection(engine: HsmEngine, stream: trio.abc.Stream,
                           peer: str | None = None) -> None:
    """Answer frames on one connection until EOF, a protocol violation or a timeout."""
    peer = peer or _peer_name(stream)  # type: ignore[arg-type]
    try:
        while (request := await _next_request(stream)) is not None:
            await stream.send_all(encode_frame(engine.handle(request, peer)))
    except HsmError as exc:
        log.warning("closing %s: %s", peer, exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.info("connection %s lost: %s", peer, exc.__class__.__name__)
    finally:
        await stream.aclose()


async def serve_tls_connection(engine: HsmEngine, stream: trio.SocketStream,
                               context: ssl.SSLContext) -> None:
    """Handshake (within TLS_HANDSHAKE_TIMEOUT), then serve; a failed handshake is one log
    line and a closed connection."""
    peer = _peer_name(stream)
    tls = trio.SSLStream(stream, context, server_side=True)
    try:
        with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
            await tls.do_handshake()
    except trio.TooSlowError:
        log.warning("closing %s: TLS handshake not complete within %s s", peer,
                    TLS_HANDSHAKE_TIMEOUT)
        await stream.aclose()
        return
    except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
        log.warning("closing %s: %s", peer, describe_tls_failure(exc))
        await stream.aclose()
        return
    await serve_connection(engine, tls, peer)


async def serve_hsm(
    engine: HsmEngine,
    host: str,
    port: int,
    header_length: int,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Listen on host:port; `nursery.start(serve_hsm, ...)` returns the listeners. With
    `ssl_context` every connection is TLS (specs.tls.server_context)."""
    if header_length != engine.header_length:
        engine = HsmEngine(engine.lmk, header_length)
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)

    async def handler(stream: trio.SocketStream) -> None:
        if ssl_context is not None:
            await serve_tls_connection(engine, stream, ssl_context)
        else:
            await serve_connection(engine, stream)

    await trio.serve_listeners(handler, listeners)
