"""Serial-to-TCP bridge (the network access controller's role of protocol.md section 1).

:func:`run_bridge` relays between a POS on a serial line and a TCP host speaking the 2-byte
length framing. Payloads pass through unchanged (TPDU and header included: the host swaps the
TPDU on its answers, the bridge does not touch it).

Delivery rules:

* A frame the link has ACKed to the POS is held in memory until it has been written whole to
  a TCP connection that was open at that moment; if the host is down or the connection drops
  first, the frame waits and goes out on the next connection (in order). Once written it is
  never sent again: whether the host acted on it is the terminal's business (its timeout and
  reversal rules), since a second copy of a sale could be charged twice.
* The connection is opened when there is a frame to deliver and kept while the host keeps it
  (the host answers on it, and may close it when idle). Failed connects back off from
  :data:`CONNECT_BACKOFF_INITIAL` doubling to :data:`CONNECT_BACKOFF_MAX`.
* Everything the host sends is relayed to the POS with ACK/retransmission. A response the POS
  does not ACK, or that arrives while the serial line is down, is dropped with a warning: the
  terminal has timed out by then and reverses by itself.
* The serial line is opened before ``task_status.started()`` (a wrong port fails at once);
  if it hangs up later (USB adapter unplugged), it is reopened with back-off
  (:data:`LINE_REOPEN_INITIAL` .. :data:`LINE_REOPEN_MAX`) while held frames keep going.

:func:`serve_serial_lines` runs one bridge per serial line into a TCP listener; it is how
``poshost serve --serial`` attaches serial terminals to the host's own listener, so the host
sees each serial line as one more TCP terminal connection.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import select
from collections import deque
from collections.abc import Iterable

import trio

from shared.serialline import (
    LineClosedError,
    LineSettings,
    Port,
    SerialLineError,
    SerialLink,
    Trace,
    describe_payload,
    open_port,
    parse_line_spec,
)
from specs.errors import FramingError
from specs.framing import TcpFrameDecoder, encode_frame_tcp
from specs.seriallink import SendFailedError

log = logging.getLogger("poshost.bridge")

CONNECT_TIMEOUT = 5.0
"""Seconds one TCP connect to the host may take."""
CONNECT_BACKOFF_INITIAL = 0.5
"""Seconds before the first reconnect attempt after a failed connect."""
CONNECT_BACKOFF_MAX = 30.0
"""Longest wait between connect attempts (the wait doubles after each failure)."""
SEND_TIMEOUT = 10.0
"""Seconds writing one frame to the host may take before the connection is given up."""
LINE_REOPEN_INITIAL = 1.0
"""Seconds before reopening a serial line that hung up."""
LINE_REOPEN_MAX = 30.0
"""Longest wait between attempts to reopen a serial line."""
MAX_HELD_FRAMES = 32
"""Frames ACKed to the POS and waiting for the host; beyond it the bridge stops taking frames
from the line (the POS then sees no ACK and retries) instead of dropping any."""
RECEIVE_CHUNK = 4096
_WILDCARDS = {"", "0.0.0.0", "::"}


class _Bridge:
    def __init__(
        self, settings: LineSettings, host: str, port: int, trace: Trace | None
    ) -> None:
        self.settings = settings
        self.host, self.port = host, port
        self.trace = trace
        self.name = settings.port
        self.held: deque[bytes] = deque()
        self.held_changed = trio.Event()
        self.link: SerialLink | None = None
        self.delivered = 0
        self.relayed = 0

    def _emit(self, text: str) -> None:
        line = f"{self.name} {text}"
        log.debug(line)
        if self.trace is not None:
            self.trace(line)

    def _changed(self) -> None:
        self.held_changed.set()
        self.held_changed = trio.Event()

    # --- serial side --------------------------------------------------------------------------

    async def serial_side(self, port: Port, *, task_status: trio.TaskStatus[None]) -> None:
        started = False
        delay = LINE_REOPEN_INITIAL
        while True:
            link = SerialLink.for_settings(port, self.settings, trace=self.trace)
            self.link = link
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(link.run)
                    nursery.start_soon(self._take_frames, link)
                    if not started:
                        started = True
                        task_status.started()
            except* LineClosedError as group:
                log.warning("%s: serial line lost (%s); reopening", self.name, group.exceptions[0])
            finally:
                self.link = None
                port.close()
            while True:
                await trio.sleep(delay)
                delay = min(delay * 2, LINE_REOPEN_MAX)
                try:
                    port = open_port(self.settings)
                except SerialLineError as exc:
                    log.info("%s: %s", self.name, exc)
                    continue
                log.info("%s: serial line reopened", self.name)
                delay = LINE_REOPEN_INITIAL
                break

    async def _take_frames(self, link: SerialLink) -> None:
        while True:
            while len(self.held) >= MAX_HELD_FRAMES:
                await self.held_changed.wait()
            payload = await link.receive()
            self.held.append(payload)
            self._changed()

    async def to_pos(self, payload: bytes) -> None:
        link = self.link
        if link is None or not link.running:
            log.warning("%s: serial line down; host frame of %d bytes dropped (%s)",
                        self.name, len(payload), describe_payload(payload))
            return
        try:
            await link.send(payload)
        except (SendFailedError, SerialLineError) as exc:
            log.warning("%s: host frame not delivered to the POS: %s (%s)",
                        self.name, exc, describe_payload(payload))
            return
        self.relayed += 1

    # --- TCP side -----------------------------------------------------------------------------

    async def host_side(self) -> None:
        delay = CONNECT_BACKOFF_INITIAL
        while True:
            while not self.held:
                await self.held_changed.wait()
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream = await trio.open_tcp_stream(self.host, self.port)
            except (OSError, trio.TooSlowError) as exc:
                log.warning("%s: host %s:%d unreachable (%s); %d frame(s) held, retry in %g s",
                            self.name, self.host, self.port, exc or "timeout", len(self.held),
                            delay)
                await trio.sleep(delay)
                delay = min(delay * 2, CONNECT_BACKOFF_MAX)
                continue
            delay = CONNECT_BACKOFF_INITIAL
            self._emit(f"== connected to {self.host}:{self.port}")
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._deliver, stream, nursery.cancel_scope)
                    nursery.start_soon(self._relay_answers, stream, nursery.cancel_scope)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.aclose()
            self._emit(f"== disconnected from {self.host}:{self.port}")

    async def _deliver(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        while True:
            while not self.held:
                await self.held_changed.wait()
            await trio.lowlevel.checkpoint()  # let the reader notice a close first
            if _peer_closed(stream) or scope.cancel_called:
                scope.cancel()
                return
            payload = self.held[0]
            try:
                with trio.fail_after(SEND_TIMEOUT):
                    await stream.send_all(encode_frame_tcp(payload))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                    trio.TooSlowError) as exc:
                log.warning("%s: sending to the host failed (%s); frame kept", self.name, exc)
                scope.cancel()
                return
            self.held.popleft()
            self.delivered += 1
            self._changed()
            self._emit(f"=> host {len(payload)} bytes: {describe_payload(payload)}")

    async def _relay_answers(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        decoder = TcpFrameDecoder()
        try:
            while True:
                data = await stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    return
                decoder.feed(data)
                while (payload := decoder.next_payload()) is not None:
                    self._emit(f"<= host {len(payload)} bytes: {describe_payload(payload)}")
                    await self.to_pos(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("%s: host connection lost: %s", self.name, exc)
        except FramingError as exc:
            log.warning("%s: host sent a bad frame (%s); reconnecting", self.name, exc)
        finally:
            scope.cancel()


def _peer_closed(stream: trio.SocketStream) -> bool:
    """Whether the host has already closed the connection (FIN or error seen by the kernel),
    checked just before writing so a frame is not thrown into a connection the host left."""
    if not hasattr(select, "poll"):
        return False
    flags = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
    poller = select.poll()
    poller.register(stream.socket.fileno(), flags)
    return any(revents & flags for _fd, revents in poller.poll(0))


async def run_bridge(
    line_spec: str | LineSettings,
    target_host: str,
    target_port: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    trace: Trace | None = None,
) -> None:
    """Relay between the POS on ``line_spec`` and the TCP host until cancelled.

    Raises :class:`SerialLineError` before ``task_status.started()`` if the line spec is bad
    or the port cannot be opened; after that it never gives up on its own.
    """
    settings = parse_line_spec(line_spec)
    bridge = _Bridge(settings, target_host, target_port, trace)
    port = open_port(settings)
    log.info("bridging %s to %s:%d", settings, target_host, target_port)
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(bridge.serial_side, port)
        except BaseException:
            port.close()
            raise
        nursery.start_soon(bridge.host_side)
        task_status.started()


def connectable(host: str) -> str:
    """The address to connect to for a listener bound to ``host`` (wildcards -> loopback).

    >>> connectable("0.0.0.0"), connectable("::"), connectable("10.0.0.5")
    ('127.0.0.1', '::1', '10.0.0.5')
    """
    if host not in _WILDCARDS:
        return host
    try:
        return "::1" if ipaddress.ip_address(host).version == 6 else "127.0.0.1"
    except ValueError:
        return "127.0.0.1"


async def serve_serial_lines(
    line_specs: Iterable[str | LineSettings],
    target_host: str,
    target_port: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    trace: Trace | None = None,
) -> None:
    """Bridge every serial line into the TCP listener at ``target_host:target_port`` (the
    host's own; a wildcard bind address is reached over loopback). Started once every line is
    open; with no lines, returns at once."""
    specs = [parse_line_spec(spec) for spec in line_specs]
    host = connectable(target_host)
    async with trio.open_nursery() as nursery:
        for settings in specs:
            await nursery.start(
                functools.partial(run_bridge, settings, host, target_port, trace=trace)
            )
        task_status.started()
