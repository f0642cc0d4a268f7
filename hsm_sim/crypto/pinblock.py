"""PIN blocks: ISO 9564 formats 0, 1, 3, 4 and IBM 3624, encoded, enciphered, translated.

>>> encode_pinblock_iso_0("1234", "43219876543210987").hex().upper()
'0412AC89ABCDEF67'
"""

from __future__ import annotations

import secrets

from hsm_sim.crypto.des import (
    _HEX,
    AES_BLOCK,
    DES_BLOCK,
    MAX_PIN_LENGTH,
    MIN_PIN_LENGTH,
    get_aes_cipher,
    get_tdes_cipher,
    is_digits,
    xor_bytes,
)
from hsm_sim.crypto.errors import CryptoError

# PIN block format codes (payShield numbering, hsm-commands.md).
PINBLOCK_ISO_0 = "01"
PINBLOCK_IBM_3624 = "03"
PINBLOCK_ISO_1 = "05"
PINBLOCK_ISO_3 = "47"
PINBLOCK_ISO_4 = "48"
DES_PINBLOCK_FORMATS = (PINBLOCK_ISO_0, PINBLOCK_IBM_3624, PINBLOCK_ISO_1, PINBLOCK_ISO_3)
PINBLOCK_FORMATS = (*DES_PINBLOCK_FORMATS, PINBLOCK_ISO_4)


# --------------------------------------------------------------------------- PIN blocks


def extract_account_number(pan: str) -> str:
    """The 12 rightmost PAN digits excluding the check digit (zero-filled on the left).

    >>> extract_account_number("43219876543210987")
    '987654321098'
    """
    if not is_digits(pan) or len(pan) > 19:
        raise CryptoError("PAN must be 1-19 digits", code="15")
    return pan[-13:-1].rjust(12, "0")


def _check_pin(pin: str) -> None:
    if not is_digits(pin):
        raise CryptoError("PIN must be digits", code="15")
    if not MIN_PIN_LENGTH <= len(pin) <= MAX_PIN_LENGTH:
        raise CryptoError("PIN length must be 4-12", code="24")


def _check_account(account: str) -> None:
    if len(account) != 12 or not is_digits(account):
        raise CryptoError("account number must be 12 digits", code="15")


def _random_nibbles(count: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(count))


def _pin_field(control: str, pin: str, fill: str) -> str:
    _check_pin(pin)
    head = f"{control}{len(pin):X}{pin}"
    return head + fill[: 16 - len(head)]


def _parse_pin_field(field: str, control: str, fill_ok: frozenset[str] | None) -> str:
    """Check a 16-nibble PIN field `C N PIN fill` and return the PIN (20 / 24 on error)."""
    if field[0] != control:
        raise CryptoError("PIN block control field mismatch", code="20")
    length = int(field[1], 16)
    if not MIN_PIN_LENGTH <= length <= MAX_PIN_LENGTH:
        raise CryptoError("PIN length in PIN block must be 4-12", code="24")
    pin, fill = field[2 : 2 + length], field[2 + length :]
    if not is_digits(pin) or (fill_ok is not None and not set(fill) <= fill_ok):
        raise CryptoError("PIN block does not contain valid values", code="20")
    return pin


def _account_field(account: str) -> int:
    _check_account(account)
    return int(account, 16)


def encode_pinblock_iso_0_account(pin: str, account: str) -> bytes:
    """ISO 9564 format 0 clear block from the 12-digit account number."""
    field = int(_pin_field("0", pin, "F" * 14), 16) ^ _account_field(account)
    return field.to_bytes(8, "big")


def decode_pinblock_iso_0_account(pinblock: bytes, account: str) -> str:
    """PIN from an ISO 9564 format 0 clear block and the 12-digit account number."""
    field = int.from_bytes(_check_pinblock(pinblock), "big") ^ _account_field(account)
    return _parse_pin_field(f"{field:016X}", "0", frozenset("F"))


def encode_pinblock_iso_0(pin: str, pan: str) -> bytes:
    """ISO 9564 format 0 (ANSI X9.8) clear PIN block.

    >>> encode_pinblock_iso_0("1234", "6222021234567890128").hex().upper()
    '041226CBA9876FED'
    """
    return encode_pinblock_iso_0_account(pin, extract_account_number(pan))


def decode_pinblock_iso_0(pinblock: bytes, pan: str) -> str:
    """PIN from an ISO 9564 format 0 clear PIN block.

    >>> decode_pinblock_iso_0(bytes.fromhex("0412AC89ABCDEF67"), "43219876543210987")
    '1234'
    """
    return decode_pinblock_iso_0_account(pinblock, extract_account_number(pan))


def encode_pinblock_iso_1(pin: str, fill: str | None = None) -> bytes:
    """ISO 9564 format 1 clear block: `1 N PIN` + transaction field (random hex unless given).

    >>> encode_pinblock_iso_1("1234", fill="0" * 10).hex().upper()
    '1412340000000000'
    """
    fill = fill if fill is not None else _random_nibbles(14, "0123456789ABCDEF")
    if not set(fill) <= _HEX or len(fill) < 16 - 2 - len(pin):
        raise CryptoError("format 1 fill must be hex digits", code="15")
    return bytes.fromhex(_pin_field("1", pin, fill.upper()))


def decode_pinblock_iso_1(pinblock: bytes) -> str:
    """PIN from an ISO 9564 format 1 clear block."""
    return _parse_pin_field(_check_pinblock(pinblock).hex().upper(), "1", None)


def encode_pinblock_iso_3_account(pin: str, account: str, fill: str | None = None) -> bytes:
    """ISO 9564 format 3 clear block (fill nibbles random A-F) from the account number."""
    fill = fill if fill is not None else _random_nibbles(14, "ABCDEF")
    if not set(fill.upper()) <= set("ABCDEF"):
        raise CryptoError("format 3 fill must be A-F", code="15")
    field = int(_pin_field("3", pin, fill.upper()), 16) ^ _account_field(account)
    return field.to_bytes(8, "big")


def decode_pinblock_iso_3_account(pinblock: bytes, account: str) -> str:
    """PIN from an ISO 9564 format 3 clear block and the 12-digit account number."""
    field = int.from_bytes(_check_pinblock(pinblock), "big") ^ _account_field(account)
    return _parse_pin_field(f"{field:016X}", "3", frozenset("ABCDEF"))


def encode_pinblock_iso_3(pin: str, pan: str, fill: str | None = None) -> bytes:
    """ISO 9564 format 3 clear PIN block."""
    return encode_pinblock_iso_3_account(pin, extract_account_number(pan), fill)


def decode_pinblock_iso_3(pinblock: bytes, pan: str) -> str:
    """PIN from an ISO 9564 format 3 clear PIN block."""
    return decode_pinblock_iso_3_account(pinblock, extract_account_number(pan))


def encode_pinblock_ibm_3624(pin: str) -> bytes:
    """IBM 3624 clear block (payShield format 03): PIN then F fill.

    >>> encode_pinblock_ibm_3624("1234").hex().upper()
    '1234FFFFFFFFFFFF'
    """
    _check_pin(pin)
    return bytes.fromhex(pin.ljust(16, "F"))


def decode_pinblock_ibm_3624(pinblock: bytes) -> str:
    """PIN from an IBM 3624 clear block."""
    text = _check_pinblock(pinblock).hex().upper()
    pin = text.rstrip("F")
    if not is_digits(pin) or "F" in pin:
        raise CryptoError("PIN block does not contain valid values", code="20")
    _check_pin(pin)
    return pin


def _check_pinblock(pinblock: bytes, size: int = DES_BLOCK) -> bytes:
    if len(pinblock) != size:
        raise CryptoError(f"PIN block must be {size} bytes", code="15")
    return pinblock


def encode_pin_field_iso_4(pin: str, fill: bytes | None = None) -> bytes:
    """ISO 9564 format 4 plain-text PIN field: `4 N PIN A...` (8 bytes) + 8 random bytes."""
    head = bytes.fromhex(_pin_field("4", pin, "A" * 14))
    return head + (fill if fill is not None else secrets.token_bytes(8))


def decode_pin_field_iso_4(pin_field: bytes) -> str:
    """PIN from an ISO 9564 format 4 plain-text PIN field."""
    field = _check_pinblock(pin_field, AES_BLOCK)[:8].hex().upper()
    return _parse_pin_field(field, "4", frozenset("A"))


def encode_pan_field_iso_4(pan: str) -> bytes:
    """ISO 9564 format 4 PAN field: `M PAN 0...` where M = PAN length - 12 (0 when shorter)."""
    if not is_digits(pan) or len(pan) > 19:
        raise CryptoError("PAN must be 1-19 digits", code="15")
    padded = pan.rjust(12, "0")
    return bytes.fromhex(f"{len(padded) - 12}{padded}".ljust(32, "0"))


def encipher_pinblock_iso_4(key: bytes, pin: str, pan: str) -> bytes:
    """ISO 9564 format 4 enciphered PIN block under an AES key."""
    cipher = get_aes_cipher(key)
    first = cipher.encrypt(encode_pin_field_iso_4(pin))
    return cipher.encrypt(xor_bytes(first, encode_pan_field_iso_4(pan)))


def decipher_pinblock_iso_4(key: bytes, pinblock: bytes, pan: str) -> str:
    """PIN from an ISO 9564 format 4 enciphered PIN block."""
    cipher = get_aes_cipher(key)
    middle = cipher.decrypt(_check_pinblock(pinblock, AES_BLOCK))
    return decode_pin_field_iso_4(cipher.decrypt(xor_bytes(middle, encode_pan_field_iso_4(pan))))


def encode_pinblock(pin: str, account: str, pinblock_format: str) -> bytes:
    """Clear DES PIN block in a payShield format code (01, 03, 05, 47) for a 12-digit account."""
    if pinblock_format == PINBLOCK_ISO_0:
        return encode_pinblock_iso_0_account(pin, account)
    if pinblock_format == PINBLOCK_IBM_3624:
        return encode_pinblock_ibm_3624(pin)
    if pinblock_format == PINBLOCK_ISO_1:
        return encode_pinblock_iso_1(pin)
    if pinblock_format == PINBLOCK_ISO_3:
        return encode_pinblock_iso_3_account(pin, account)
    raise CryptoError(f"PIN block format {pinblock_format!r} not supported here", code="23")


def decode_pinblock(pinblock: bytes, account: str, pinblock_format: str) -> str:
    """PIN from a clear DES PIN block in a payShield format code for a 12-digit account."""
    if pinblock_format == PINBLOCK_ISO_0:
        return decode_pinblock_iso_0_account(pinblock, account)
    if pinblock_format == PINBLOCK_IBM_3624:
        return decode_pinblock_ibm_3624(pinblock)
    if pinblock_format == PINBLOCK_ISO_1:
        return decode_pinblock_iso_1(pinblock)
    if pinblock_format == PINBLOCK_ISO_3:
        return decode_pinblock_iso_3_account(pinblock, account)
    raise CryptoError(f"PIN block format {pinblock_format!r} not supported here", code="23")


def encipher_pinblock(key: bytes, pin: str, account: str, pinblock_format: str) -> bytes:
    """Encrypted DES PIN block (3DES-ECB of the clear block)."""
    return get_tdes_cipher(key).encrypt(encode_pinblock(pin, account, pinblock_format))


def decipher_pinblock(key: bytes, pinblock: bytes, account: str, pinblock_format: str) -> str:
    """PIN from an encrypted DES PIN block."""
    clear = get_tdes_cipher(key).decrypt(_check_pinblock(pinblock))
    return decode_pinblock(clear, account, pinblock_format)


def translate_pinblock(
    src_key: bytes,
    dst_key: bytes,
    pinblock: bytes,
    account: str,
    src_format: str = PINBLOCK_ISO_0,
    dst_format: str = PINBLOCK_ISO_0,
) -> tuple[str, bytes]:
    """Re-encrypt a PIN block from one key/format to another; returns (PIN length, block)."""
    pin = decipher_pinblock(src_key, pinblock, account, src_format)
    return f"{len(pin):02d}", encipher_pinblock(dst_key, pin, account, dst_format)
