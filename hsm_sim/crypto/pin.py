"""PIN verification values: Visa PVV and IBM 3624 natural PINs and offsets."""

from __future__ import annotations

from hsm_sim.crypto.des import (
    _DIGITS,
    MAX_PIN_LENGTH,
    MIN_PIN_LENGTH,
    get_tdes_cipher,
    is_digits,
    is_hex,
)
from hsm_sim.crypto.errors import CryptoError
from hsm_sim.crypto.pinblock import _check_account, _check_pin, extract_account_number

# --------------------------------------------------------------------------- PIN verification


def _decimalise(hex_text: str, count: int) -> str:
    digits = [c for c in hex_text if c in _DIGITS]
    digits += [str(int(c, 16) - 10) for c in hex_text if c not in _DIGITS]
    return "".join(digits[:count])


def generate_visa_pvv(pvk: bytes, pvki: str, pin: str, pan: str) -> str:
    """Visa PVV from the full PAN (11 rightmost digits excluding check digit).

    >>> pvk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    >>> generate_visa_pvv(pvk, "3", "4524", "1122334455667788")
    '4021'
    """
    return generate_visa_pvv_account(pvk, pvki, pin, extract_account_number(pan))


def generate_visa_pvv_account(pvk: bytes, pvki: str, pin: str, account: str) -> str:
    """Visa PVV: decimalise 3DES(PVK, TSP) where TSP = account[1:] + PVKI + PIN[:4]."""
    _check_pin(pin)
    _check_account(account)
    if len(pvki) != 1 or not is_digits(pvki):
        raise CryptoError("PVKI must be one digit", code="15")
    if len(pvk) != 16:
        raise CryptoError("PVK must be a double-length key", code="27")
    tsp = bytes.fromhex(account[1:] + pvki + pin[:4])
    return _decimalise(get_tdes_cipher(pvk).encrypt(tsp).hex().upper(), 4)


def _check_dectab(conversion_table: str) -> None:
    if len(conversion_table) != 16 or not is_digits(conversion_table):
        raise CryptoError("decimalisation table must be 16 digits", code="15")


def generate_ibm3624_natural_pin(
    pvk: bytes, conversion_table: str, validation_data: str, length: int
) -> str:
    """IBM 3624 natural PIN: decimalise 3DES(PVK, validation data (16H)) with the table."""
    _check_dectab(conversion_table)
    if len(validation_data) != 16 or not is_hex(validation_data):
        raise CryptoError("validation data must be 16 hex digits", code="15")
    if not MIN_PIN_LENGTH <= length <= MAX_PIN_LENGTH:
        raise CryptoError("PIN length must be 4-12", code="24")
    block = get_tdes_cipher(pvk).encrypt(bytes.fromhex(validation_data)).hex().upper()
    return "".join(conversion_table[int(c, 16)] for c in block[:length])


def generate_ibm3624_offset(
    pvk: bytes, conversion_table: str, pin: str, validation_data: str
) -> str:
    """IBM 3624 PIN offset: (customer PIN - natural PIN) digit by digit, modulo 10."""
    _check_pin(pin)
    natural = generate_ibm3624_natural_pin(pvk, conversion_table, validation_data, len(pin))
    return "".join(str((int(p) - int(n)) % 10) for p, n in zip(pin, natural, strict=True))
