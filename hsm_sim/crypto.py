"""Pure payment cryptography (no I/O, no state besides cipher caches).

DES/3DES/AES primitives, key parity and check values, TMK key wrapping (protocol.md section 4),
PIN blocks (ISO 9564 formats 0, 1, 3, 4 and IBM 3624), Visa PVV, IBM 3624 offsets and the
ISO 9797-1 / ANSI X9.9 / X9.19 and UnionPay "ECB" MACs. Keys and PIN blocks are `bytes`;
PINs, PANs and account numbers are digit strings. Invalid input raises `HsmError` with the
Thales error code a command would return (15 data, 20 PIN block, 23 format, 24 PIN length,
27 key length).

>>> encode_pinblock_iso_0("1234", "43219876543210987").hex().upper()
'0412AC89ABCDEF67'
>>> key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
>>> generate_mac_x919(key, b"Now is the time for all ").hex().upper()
'A1C72E74EA3FA9B6'
"""

from __future__ import annotations

import secrets
import threading
from functools import lru_cache
from typing import Protocol

from Crypto.Cipher import AES, DES, DES3

from hsm_sim.errors import HsmError

DES_BLOCK = 8
AES_BLOCK = 16
DES_KEY_LENGTHS = (8, 16, 24)
AES_KEY_LENGTHS = (16, 24, 32)
MIN_PIN_LENGTH = 4
MAX_PIN_LENGTH = 12
TMK_CHECK_VALUE_LENGTH = 4
CIPHER_CACHE_SIZE = 16384
"""Cipher objects kept per cache. A signed-on terminal keeps about 4 in use (TMK, PIK, MAK and
the MAK's first half for X9.19): 4,096 held exactly 1,000 terminals, and a larger fleet made
every transaction rebuild its ciphers. This holds about 4,000."""

# PIN block format codes (payShield numbering, hsm-commands.md).
PINBLOCK_ISO_0 = "01"
PINBLOCK_IBM_3624 = "03"
PINBLOCK_ISO_1 = "05"
PINBLOCK_ISO_3 = "47"
PINBLOCK_ISO_4 = "48"
DES_PINBLOCK_FORMATS = (PINBLOCK_ISO_0, PINBLOCK_IBM_3624, PINBLOCK_ISO_1, PINBLOCK_ISO_3)
PINBLOCK_FORMATS = (*DES_PINBLOCK_FORMATS, PINBLOCK_ISO_4)

_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789ABCDEFabcdef")
_ODD_PARITY = bytes(b ^ (1 - bin(b).count("1") % 2) for b in range(256))


class BlockCipher(Protocol):
    """An ECB cipher object: what `get_tdes_cipher` hands out."""

    def encrypt(self, data: bytes) -> bytes: ...
    def decrypt(self, data: bytes) -> bytes: ...


# --------------------------------------------------------------------------- helpers


def xor_bytes(a: bytes, b: bytes) -> bytes:
    """XOR two byte strings of equal length.

    >>> xor_bytes(b"\\x0f\\xf0", b"\\xff\\xff").hex()
    'f00f'
    """
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def is_digits(s: str) -> bool:
    """True when `s` is a non-empty string of ASCII decimal digits."""
    return bool(s) and set(s) <= _DIGITS


def is_hex(s: str) -> bool:
    """True when `s` is a non-empty string of ASCII hex digits."""
    return bool(s) and set(s) <= _HEX


def check_key_parity(key: bytes) -> bool:
    """True when every byte of `key` has odd parity.

    >>> check_key_parity(bytes.fromhex("0123456789ABCDEF")), check_key_parity(b"\\x22" * 8)
    (True, False)
    """
    return key.translate(_ODD_PARITY) == key


def adjust_key_parity(key: bytes) -> bytes:
    """Force odd parity on every byte (DES ignores parity bits: the key is unchanged in use).

    >>> adjust_key_parity(bytes.fromhex("2222222222222222")).hex().upper()
    '2323232323232323'
    """
    return key.translate(_ODD_PARITY)


def generate_random_key(length: int) -> bytes:
    """A random odd-parity DES key of 8, 16 or 24 bytes with distinct halves."""
    _check_des_key_length(length)
    while True:
        key = adjust_key_parity(secrets.token_bytes(length))
        halves = {key[i : i + DES_BLOCK] for i in range(0, length, DES_BLOCK)}
        if len(halves) == length // DES_BLOCK:
            return key


def _check_des_key_length(length: int) -> None:
    if length not in DES_KEY_LENGTHS:
        raise HsmError(f"DES key must be 8, 16 or 24 bytes, not {length}", code="27")


# --------------------------------------------------------------------------- block ciphers


@lru_cache(maxsize=CIPHER_CACHE_SIZE)
def reduce_des_key(key: bytes) -> bytes:
    """The shortest equivalent key: keys whose parts repeat (K1 = K2, or K2 = K3) are legal
    here and degenerate to single DES, which pycryptodome's DES3 refuses.

    >>> reduce_des_key(bytes.fromhex("0B681FC20E62C734" * 2)).hex().upper()
    '0B681FC20E62C734'
    """
    _check_des_key_length(len(key))
    parts = [adjust_key_parity(key[i : i + DES_BLOCK]) for i in range(0, len(key), DES_BLOCK)]
    if len(parts) > 1 and parts[0] == parts[1]:
        return key[-DES_BLOCK:]  # E(K3) o D(K1) o E(K1) = E(K3)
    if len(parts) == 3 and parts[1] == parts[2]:
        return key[:DES_BLOCK]
    return key


@lru_cache(maxsize=CIPHER_CACHE_SIZE)
def get_tdes_cipher(key: bytes) -> BlockCipher:
    """Cached ECB cipher for a DES (8), double (16) or triple (24) length key."""
    effective = reduce_des_key(key)
    if len(effective) == DES_BLOCK:
        return DES.new(effective, DES.MODE_ECB)
    return DES3.new(effective, DES3.MODE_ECB)


@lru_cache(maxsize=CIPHER_CACHE_SIZE)
def get_aes_cipher(key: bytes) -> BlockCipher:
    """Cached AES-ECB cipher."""
    if len(key) not in AES_KEY_LENGTHS:
        raise HsmError(f"AES key must be 16, 24 or 32 bytes, not {len(key)}", code="27")
    return AES.new(key, AES.MODE_ECB)


def _check_blocks(data: bytes, block: int) -> None:
    if not data or len(data) % block:
        raise HsmError(f"data must be a non-empty multiple of {block} bytes", code="80")


def encrypt_tdes_ecb(key: bytes, data: bytes) -> bytes:
    """(3)DES-ECB encrypt; 8/16/24-byte keys, including K1 = K2 keys.

    >>> k = bytes.fromhex("0B681FC20E62C734")
    >>> encrypt_tdes_ecb(k + k, bytes(8)) == encrypt_tdes_ecb(k, bytes(8))
    True
    """
    _check_blocks(data, DES_BLOCK)
    return get_tdes_cipher(key).encrypt(data)


def decrypt_tdes_ecb(key: bytes, data: bytes) -> bytes:
    """(3)DES-ECB decrypt; the inverse of `encrypt_tdes_ecb`."""
    _check_blocks(data, DES_BLOCK)
    return get_tdes_cipher(key).decrypt(data)


def encrypt_aes_ecb(key: bytes, data: bytes) -> bytes:
    """AES-ECB encrypt."""
    _check_blocks(data, AES_BLOCK)
    return get_aes_cipher(key).encrypt(data)


def decrypt_aes_ecb(key: bytes, data: bytes) -> bytes:
    """AES-ECB decrypt."""
    _check_blocks(data, AES_BLOCK)
    return get_aes_cipher(key).decrypt(data)


# --------------------------------------------------------------------------- check values, TMK


def generate_kcv(key: bytes, length: int = 3) -> bytes:
    """Key check value: the first `length` bytes of 3DES(key, 8 x 00).

    >>> generate_kcv(bytes.fromhex("807A23AD32B36D457AE91FDF927570EA"), 4).hex().upper()
    '8D0A74B8'
    """
    return get_tdes_cipher(key).encrypt(bytes(DES_BLOCK))[:length]


def wrap_key_tmk(tmk: bytes, key: bytes) -> tuple[bytes, bytes]:
    """Encrypt a working key under a TMK for F62: (3DES-ECB(TMK, key), 4-byte check value)."""
    return encrypt_tdes_ecb(tmk, key), generate_kcv(key, TMK_CHECK_VALUE_LENGTH)


def unwrap_key_tmk(tmk: bytes, ciphertext: bytes, check_value: bytes) -> bytes:
    """Decrypt a working key sent under a TMK; raise `HsmError` (01) on a wrong check value.

    >>> tmk = bytes.fromhex("CA5D92598DCA48CE8A4C76361A9269E9")
    >>> ct, cv = bytes.fromhex("6701EAD6A9AD51E51AA406E2C27FCFA9"), bytes.fromhex("8D0A74B8")
    >>> unwrap_key_tmk(tmk, ct, cv).hex().upper()
    '807A23AD32B36D457AE91FDF927570EA'
    """
    key = decrypt_tdes_ecb(tmk, ciphertext)
    if not secrets.compare_digest(generate_kcv(key, len(check_value)), check_value):
        raise HsmError("working key check value mismatch", code="01")
    return key


# --------------------------------------------------------------------------- PIN blocks


def extract_account_number(pan: str) -> str:
    """The 12 rightmost PAN digits excluding the check digit (zero-filled on the left).

    >>> extract_account_number("43219876543210987")
    '987654321098'
    """
    if not is_digits(pan) or len(pan) > 19:
        raise HsmError("PAN must be 1-19 digits", code="15")
    return pan[-13:-1].rjust(12, "0")


def _check_pin(pin: str) -> None:
    if not is_digits(pin):
        raise HsmError("PIN must be digits", code="15")
    if not MIN_PIN_LENGTH <= len(pin) <= MAX_PIN_LENGTH:
        raise HsmError("PIN length must be 4-12", code="24")


def _check_account(account: str) -> None:
    if len(account) != 12 or not is_digits(account):
        raise HsmError("account number must be 12 digits", code="15")


def _random_nibbles(count: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(count))


def _pin_field(control: str, pin: str, fill: str) -> str:
    _check_pin(pin)
    head = f"{control}{len(pin):X}{pin}"
    return head + fill[: 16 - len(head)]


def _parse_pin_field(field: str, control: str, fill_ok: frozenset[str] | None) -> str:
    """Check a 16-nibble PIN field `C N PIN fill` and return the PIN (20 / 24 on error)."""
    if field[0] != control:
        raise HsmError("PIN block control field mismatch", code="20")
    length = int(field[1], 16)
    if not MIN_PIN_LENGTH <= length <= MAX_PIN_LENGTH:
        raise HsmError("PIN length in PIN block must be 4-12", code="24")
    pin, fill = field[2 : 2 + length], field[2 + length :]
    if not is_digits(pin) or (fill_ok is not None and not set(fill) <= fill_ok):
        raise HsmError("PIN block does not contain valid values", code="20")
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
        raise HsmError("format 1 fill must be hex digits", code="15")
    return bytes.fromhex(_pin_field("1", pin, fill.upper()))


def decode_pinblock_iso_1(pinblock: bytes) -> str:
    """PIN from an ISO 9564 format 1 clear block."""
    return _parse_pin_field(_check_pinblock(pinblock).hex().upper(), "1", None)


def encode_pinblock_iso_3_account(pin: str, account: str, fill: str | None = None) -> bytes:
    """ISO 9564 format 3 clear block (fill nibbles random A-F) from the account number."""
    fill = fill if fill is not None else _random_nibbles(14, "ABCDEF")
    if not set(fill.upper()) <= set("ABCDEF"):
        raise HsmError("format 3 fill must be A-F", code="15")
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
        raise HsmError("PIN block does not contain valid values", code="20")
    _check_pin(pin)
    return pin


def _check_pinblock(pinblock: bytes, size: int = DES_BLOCK) -> bytes:
    if len(pinblock) != size:
        raise HsmError(f"PIN block must be {size} bytes", code="15")
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
        raise HsmError("PAN must be 1-19 digits", code="15")
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
    raise HsmError(f"PIN block format {pinblock_format!r} not supported here", code="23")


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
    raise HsmError(f"PIN block format {pinblock_format!r} not supported here", code="23")


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
        raise HsmError("PVKI must be one digit", code="15")
    if len(pvk) != 16:
        raise HsmError("PVK must be a double-length key", code="27")
    tsp = bytes.fromhex(account[1:] + pvki + pin[:4])
    return _decimalise(get_tdes_cipher(pvk).encrypt(tsp).hex().upper(), 4)


def _check_dectab(conversion_table: str) -> None:
    if len(conversion_table) != 16 or not is_digits(conversion_table):
        raise HsmError("decimalisation table must be 16 digits", code="15")


def generate_ibm3624_natural_pin(
    pvk: bytes, conversion_table: str, validation_data: str, length: int
) -> str:
    """IBM 3624 natural PIN: decimalise 3DES(PVK, validation data (16H)) with the table."""
    _check_dectab(conversion_table)
    if len(validation_data) != 16 or not is_hex(validation_data):
        raise HsmError("validation data must be 16 hex digits", code="15")
    if not MIN_PIN_LENGTH <= length <= MAX_PIN_LENGTH:
        raise HsmError("PIN length must be 4-12", code="24")
    block = get_tdes_cipher(pvk).encrypt(bytes.fromhex(validation_data)).hex().upper()
    return "".join(conversion_table[int(c, 16)] for c in block[:length])


def generate_ibm3624_offset(
    pvk: bytes, conversion_table: str, pin: str, validation_data: str
) -> str:
    """IBM 3624 PIN offset: (customer PIN - natural PIN) digit by digit, modulo 10."""
    _check_pin(pin)
    natural = generate_ibm3624_natural_pin(pvk, conversion_table, validation_data, len(pin))
    return "".join(str((int(p) - int(n)) % 10) for p, n in zip(pin, natural, strict=True))


# --------------------------------------------------------------------------- MACs


def pad_iso_1(data: bytes, block_size: int = DES_BLOCK) -> bytes:
    """ISO 9797-1 padding method 1: zero fill (empty data -> one zero block)."""
    if not data:
        return bytes(block_size)
    return data + bytes(-len(data) % block_size)


def pad_iso_2(data: bytes, block_size: int = DES_BLOCK) -> bytes:
    """ISO 9797-1 padding method 2: 0x80 then zero fill."""
    data += b"\x80"
    return data + bytes(-len(data) % block_size)


def pad_mac_data(data: bytes, padding: int) -> bytes:
    """Apply ISO 9797-1 padding method 0 (none: whole blocks required), 1 or 2."""
    if padding == 1:
        return pad_iso_1(data)
    if padding == 2:
        return pad_iso_2(data)
    if padding == 0:
        _check_blocks(data, DES_BLOCK)
        return data
    raise HsmError(f"padding method {padding} not supported", code="15")


class _ChainedCbc:
    """A long-lived (3)DES-CBC object for one key: building a cipher costs more than a MAC.

    A CBC object carries its last ciphertext block as the next IV. Prepending the block
    ``last XOR D(0)`` makes that block encrypt to zero, so the data proper is chained from a
    zero IV exactly as by a fresh object. A lock keeps concurrent callers (the TCP HSM's
    threads) from interleaving on one chain.
    """

    def __init__(self, effective: bytes) -> None:
        if len(effective) == DES_BLOCK:
            self._cbc = DES.new(effective, DES.MODE_CBC, iv=bytes(DES_BLOCK))
        else:
            self._cbc = DES3.new(effective, DES3.MODE_CBC, iv=bytes(DES_BLOCK))
        self._reset = int.from_bytes(get_tdes_cipher(effective).decrypt(bytes(DES_BLOCK)), "big")
        self._state = 0
        self._lock = threading.Lock()

    def last_block(self, data: bytes) -> bytes:
        with self._lock:
            lead = (self._state ^ self._reset).to_bytes(DES_BLOCK, "big")
            out = bytearray(DES_BLOCK + len(data))  # a caller's buffer is much cheaper
            self._cbc.encrypt(lead + data, output=out)
            last = bytes(out[-DES_BLOCK:])
            self._state = int.from_bytes(last, "big")
        return last


@lru_cache(maxsize=CIPHER_CACHE_SIZE)
def _cbc_chain(key: bytes) -> _ChainedCbc:
    return _ChainedCbc(reduce_des_key(key))


def _cbc_last_block(key: bytes, data: bytes) -> bytes:
    """Last block of (3)DES-CBC with a zero IV (through a cached chain, see `_ChainedCbc`)."""
    return _cbc_chain(key).last_block(data)


def generate_mac_iso9797_alg1(key: bytes, data: bytes, padding: int = 1) -> bytes:
    """ISO 9797-1 MAC algorithm 1 (CBC-MAC; X9.9 with a single key), 8 bytes."""
    _check_des_key_length(len(key))
    return _cbc_last_block(key, pad_mac_data(data, padding))


def generate_mac_iso9797_alg3(key: bytes, data: bytes, padding: int = 1) -> bytes:
    """ISO 9797-1 MAC algorithm 3 (retail MAC, X9.19) with a double-length key, 8 bytes."""
    if len(key) != 16:
        raise HsmError("MAC algorithm 3 needs a double-length key", code="27")
    padded = pad_mac_data(data, padding)
    last = padded[-DES_BLOCK:]
    if len(padded) > DES_BLOCK:
        last = xor_bytes(_cbc_last_block(key[:DES_BLOCK], padded[:-DES_BLOCK]), last)
    # The last block's E(K1), D(K2), E(K1) is one 2-key 3DES-EDE encryption under the MAK.
    return get_tdes_cipher(key).encrypt(last)


def generate_mac_x99(key: bytes, data: bytes) -> bytes:
    """ANSI X9.9: single-DES CBC-MAC, zero padding."""
    if len(key) != DES_BLOCK:
        raise HsmError("X9.9 needs a single-length key", code="27")
    return generate_mac_iso9797_alg1(key, data, 1)


def generate_mac_x919(key: bytes, data: bytes) -> bytes:
    """ANSI X9.19 retail MAC: ISO 9797-1 algorithm 3, padding method 1, 8 bytes."""
    return generate_mac_iso9797_alg3(key, data, 1)


def generate_mac_cup_ecb(key: bytes, data: bytes) -> bytes:
    """UnionPay POS "ECB" MAC; returns the 8 ASCII hex characters carried in F64.

    XOR the zero-padded 8-byte blocks, expand the result to 16 uppercase hex characters,
    DES-encrypt the first 8, XOR with the last 8, DES-encrypt again, keep the first 8 hex
    characters. DES uses the left half of the MAK.

    >>> data = bytes.fromhex("1234567890ABCDEFABCDEF1234567890")
    >>> generate_mac_cup_ecb(bytes.fromhex("2222222222222222"), data)
    b'E267B6E2'
    """
    _check_des_key_length(len(key))
    cipher = get_tdes_cipher(key[:DES_BLOCK])
    padded = pad_iso_1(data)
    acc = 0
    for i in range(0, len(padded), DES_BLOCK):
        acc ^= int.from_bytes(padded[i : i + DES_BLOCK], "big")
    expanded = f"{acc:016X}".encode()
    first = cipher.encrypt(expanded[:DES_BLOCK])
    result = cipher.encrypt(xor_bytes(first, expanded[DES_BLOCK:]))
    return result.hex().upper()[:8].encode()
