"""A :class:`terminal.transport.Transport` over an RS-232 line instead of TCP.

posterm talks to the host (or to a bridge / NAC in front of it) through a serial port, with
the STX/LEN/ETX/LRC framing and ACK/NAK of protocol.md section 1, or the 2-byte length framing
when the line spec says ``framing=length``. The line spec is the one of
:class:`shared.serialline.LineSettings`: ``PORT[,baud=9600][,bytesize=8][,parity=N]
[,stopbits=1][,rtscts=0][,framing=stx|length]``.

The port stays open between exchanges; the link only runs during :meth:`exchange` (posterm is
one command at a time, and its session owns no nursery). A frame the host sends while no
exchange runs is therefore not ACKed, and bytes left over from an earlier, timed-out exchange
are discarded before the next request goes out, so a late answer is never taken for the
answer to a new request.
"""

from __future__ import annotations

import logging
import math

import trio

from shared.serialline import (
    LineClosedError,
    LineSettings,
    SerialLineError,
    SerialLink,
    Trace,
    open_port,
    parse_line_spec,
    run_quietly,
)
from specs.seriallink import SendFailedError
from terminal.errors import BadInput, ConnectFailed, NoResponse, TerminalError

log = logging.getLogger("posterm.serial")


class SerialTransport:
    """One serial line to the host; same interface as :class:`terminal.transport.TcpTransport`."""

    def __init__(self, spec: str | LineSettings, *, trace: Trace | None = None) -> None:
        try:
            self.settings = parse_line_spec(spec)
        except SerialLineError as exc:
            raise BadInput(str(exc)) from None
        self._trace = trace
        self._link: SerialLink | None = None

    async def connect(self) -> None:
        """Open the port (raises :class:`ConnectFailed` if it cannot be opened)."""
        if self._link is not None:
            return
        try:
            port = open_port(self.settings)
        except SerialLineError as exc:
            raise ConnectFailed(str(exc)) from None
        self._link = SerialLink.for_settings(port, self.settings, trace=self._trace)

    async def exchange(self, payload: bytes, timeout: float) -> bytes:
        """Send one payload (ACKed by the peer) and return the next frame received, all within
        ``timeout`` seconds; :class:`NoResponse` otherwise (the request may have arrived)."""
        await self.connect()
        link = self._link
        assert link is not None
        stale = link.discard_received()
        if stale:
            log.info("%s: %d stale frame(s) discarded", self.settings.port, stale)
        outcome: bytes | TerminalError
        lost = False
        async with trio.open_nursery() as nursery:
            await nursery.start(run_quietly, link)
            try:
                with trio.fail_after(timeout if timeout > 0 else math.inf):
                    await link.send(payload)
                    outcome = await link.receive()
            except trio.TooSlowError:
                outcome = NoResponse(f"no response on {self.settings.port} in {timeout:g} s")
            except SendFailedError as exc:
                outcome = NoResponse(f"request not acknowledged: {exc}")
            except LineClosedError as exc:
                outcome, lost = NoResponse(f"serial line lost: {exc}"), True
            nursery.cancel_scope.cancel()
        if lost:
            await self.aclose()  # reopen the port on the next exchange
        if isinstance(outcome, TerminalError):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            link.close()
        await trio.lowlevel.checkpoint()
