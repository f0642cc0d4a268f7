"""The one exception tree of hsm_sim: every failure is an `HsmError` with a Thales error code."""

from __future__ import annotations

from hsm_sim.crypto.errors import CryptoError

__all__ = ["HsmError", "HsmUnavailable", "from_crypto"]

ERROR_TEXT: dict[str, str] = {
    "00": "no error",
    "01": "verification failure",
    "04": "invalid key type code",
    "05": "invalid key length flag",
    "10": "source key parity error",
    "11": "destination key parity error",
    "12": "no keys loaded in user storage / LMK problem",
    "13": "LMK error",
    "15": "invalid input data",
    "17": "HSM is not authorised (extension needs the test LMK)",
    "20": "PIN block does not contain valid values",
    "23": "invalid PIN block format code",
    "24": "PIN is fewer than 4 or more than 12 digits in length",
    "26": "invalid key scheme",
    "27": "incompatible key length",
    "40": "invalid command code",
    "80": "data length error",
}


class HsmError(Exception):
    """Root of every hsm_sim failure. `code` is the Thales error code ("15" unless said)."""

    def __init__(self, message: str = "", code: str = "15") -> None:
        super().__init__(message or ERROR_TEXT.get(code, "HSM error"))
        self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {self.args[0]}"


class HsmUnavailable(HsmError):
    """The HSM cannot be reached (connect refused, connection lost, call timed out)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="--")


def from_crypto(exc: CryptoError) -> HsmError:
    """The HSM's error for input the pure crypto refused: same Thales code, same text.

    >>> str(from_crypto(CryptoError("PIN length must be 4-12", code="24")))
    '[24] PIN length must be 4-12'
    """
    return HsmError(str(exc.args[0]), code=exc.code)
