"""The one exception tree of the host: every failure is a `HostError`.

Protocol errors carry the response code the terminal gets; the CLI edge turns the others into
messages and exit codes.
"""

from __future__ import annotations


class HostError(Exception):
    """Root of every host failure."""


class ProtocolError(HostError):
    """A request the host answers with ``response_code`` (30, 97, 03, A0, 77 ...)."""

    def __init__(self, message: str, response_code: str) -> None:
        super().__init__(message)
        self.response_code = response_code


class CloseConnection(HostError):
    """A frame so broken that the terminal cannot be identified: drop the connection."""


class ConfigError(HostError):
    """Bad configuration or provisioning input (unknown merchant, bad key, wrong LMK ...)."""


class StoreError(HostError):
    """The durable store failed: the outcome was not committed and must not be announced."""
