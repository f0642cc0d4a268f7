"""The error of the pure crypto: bad input, with the Thales error code a command would return."""

from __future__ import annotations

DATA_ERROR = "15"


class CryptoError(ValueError):
    """Input the crypto refuses. ``code`` is the Thales error code the HSM answers with
    (15 data, 01 verification, 20 PIN block, 23 format, 24 PIN length, 27 key length, 80
    data length); :mod:`hsm_sim.commands` maps it to that error response.

    >>> CryptoError("PIN length must be 4-12", code="24").code
    '24'
    """

    def __init__(self, message: str, code: str = DATA_ERROR) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {self.args[0]}"
