"""The software PIN pad: the only place clear keys live in posterm.

It holds the TMK and the working keys (PIK, MAK), unwraps sign-on key data (refusing keys whose
check value is wrong), builds ISO 9564 format 0 PIN blocks under the PIK and computes and checks
MACs (ANSI X9.19 or the UnionPay "cup-ecb" MAC). Keys leave it only as check values, or as bytes
handed to the state file (mode 0600).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from hsm_sim.crypto import (
    CryptoError,
    encode_pinblock_iso_0,
    encrypt_tdes_ecb,
    generate_kcv,
    generate_mac_cup_ecb,
    generate_mac_x919,
    unwrap_key_tmk,
)
from specs.composite import decode_key_data
from specs.errors import SpecError
from terminal.errors import BadInput, KeyCheckFailed, NotReady

MAC_ALGORITHMS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "x919": generate_mac_x919,
    "cup-ecb": generate_mac_cup_ecb,
}
DOUBLE_LENGTH = 16


def _mac_function(algorithm: str, key: bytes) -> Callable[[bytes], bytes]:
    generate = MAC_ALGORITHMS[algorithm]
    return lambda data: generate(key, data)


def parse_key_hex(text: str, what: str = "TMK") -> bytes:
    """A double-length key from 32 hex digits."""
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise BadInput(f"malformed {what}: expected 32 hex digits") from None
    if len(key) != DOUBLE_LENGTH:
        raise BadInput(f"malformed {what}: expected 32 hex digits, got {len(text)}")
    return key


def combine_components(components: list[str]) -> bytes:
    """XOR of key components (each 32 hex digits)."""
    if not components:
        raise BadInput("no TMK component given")
    key = bytes(DOUBLE_LENGTH)
    for text in components:
        part = parse_key_hex(text, "TMK component")
        key = bytes(a ^ b for a, b in zip(key, part, strict=True))
    return key


def kcv_hex(key: bytes | None) -> str:
    """The 3-byte check value shown for a key (never the key)."""
    return generate_kcv(key, 3).hex().upper() if key else "-"


@dataclass
class PinPad:
    """Keys of one terminal and the operations done with them."""

    tmk: bytes
    mac_algorithm: str = "x919"
    pik: bytes | None = None
    mak: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mac_algorithm not in MAC_ALGORITHMS:
            raise BadInput(f"MAC algorithm must be one of {', '.join(MAC_ALGORITHMS)}")
        self._mac: Callable[[bytes], bytes] | None = None
        if self.mak is not None:
            self._mac = _mac_function(self.mac_algorithm, self.mak)

    def __repr__(self) -> str:
        return (f"PinPad(tmk={kcv_hex(self.tmk)}, pik={kcv_hex(self.pik)}, "
                f"mak={kcv_hex(self.mak)}, mac={self.mac_algorithm})")

    @property
    def has_working_keys(self) -> bool:
        return self.pik is not None and self.mak is not None

    def install_key_data(self, key_data_hex: str) -> None:
        """Unwrap F62 of a sign-on response; both keys or none are installed."""
        try:
            data = decode_key_data(key_data_hex)
            pik = unwrap_key_tmk(self.tmk, data.pik, data.pik_cv)
            mak = unwrap_key_tmk(self.tmk, data.mak, data.mak_cv)
        except (SpecError, ValueError) as exc:
            raise KeyCheckFailed(
                f"working keys refused ({exc}); is the TMK the one the host has? "
                f"TMK KCV {kcv_hex(self.tmk)}"
            ) from None
        self.pik, self.mak = pik, mak
        self._mac = _mac_function(self.mac_algorithm, mak)

    def pin_block(self, pin: str, pan: str) -> str:
        """F52: the ISO format 0 block enciphered under the PIK, upper-case hex."""
        if self.pik is None:
            raise NotReady("no PIN key: sign on first")
        try:
            clear = encode_pinblock_iso_0(pin, pan)
        except CryptoError as exc:
            raise BadInput(f"cannot build PIN block: {exc}") from None
        return encrypt_tdes_ecb(self.pik, clear).hex().upper()

    def mac(self, block: bytes) -> bytes:
        """F64 over a MAC block (MTI .. byte before F64)."""
        if self._mac is None:
            raise NotReady("no MAC key: sign on first")
        return self._mac(block)

    def verify_mac(self, block: bytes, mac: bytes) -> bool:
        return self._mac is not None and hmac.compare_digest(self._mac(block), mac)

    def check_values(self) -> dict[str, str]:
        return {"tmk": kcv_hex(self.tmk), "pik": kcv_hex(self.pik), "mak": kcv_hex(self.mak)}
