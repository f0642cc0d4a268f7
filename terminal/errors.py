"""The one exception tree of posterm: every failure is a :class:`TerminalError`.

Each class carries the process exit code the CLI turns it into; nothing below the CLI prints
or exits. Exit codes (also in ``posterm --help``): 0 approved / done, 1 declined,
2 usage or bad input, 3 communication failure (nothing believed; pending work kept),
4 response rejected (bad MAC, undecodable, not echoing the request; reversal pending),
5 terminal not ready (not initialised, not signed on, key check failed, nothing to act on).
"""

from __future__ import annotations

EXIT_APPROVED = 0
EXIT_DECLINED = 1
EXIT_USAGE = 2
EXIT_COMMUNICATION = 3
EXIT_REJECTED = 4
EXIT_NOT_READY = 5


class TerminalError(Exception):
    """Root of every posterm failure."""

    exit_code = EXIT_NOT_READY


class BadInput(TerminalError):
    """A value given by the user that cannot be used (track 2, amount, key, trace...)."""

    exit_code = EXIT_USAGE


class NotReady(TerminalError):
    """The terminal cannot do this now: not initialised, not signed on, unknown original..."""

    exit_code = EXIT_NOT_READY


class KeyCheckFailed(NotReady):
    """A working key from the host does not match its check value; keys were not installed."""


class CommunicationError(TerminalError):
    """The host could not be reached or did not answer in time."""

    exit_code = EXIT_COMMUNICATION


class ConnectFailed(CommunicationError):
    """No connection: nothing was sent."""


class NoResponse(CommunicationError):
    """The request was sent (or may have been) but no whole response arrived in time."""


class GarbledResponse(NoResponse):
    """Bytes arrived that are not a frame (bad length prefix): the response is undecodable."""


class HostMalfunction(CommunicationError):
    """The host answered 96 without a MAC (protocol.md section 4: it cannot reach its HSM).
    Nothing in such an answer is believed; pending reversals stay pending."""


class ResponseRejected(TerminalError):
    """A response arrived but cannot be believed (MAC, decoding, echo fields)."""

    exit_code = EXIT_REJECTED
