"""DES/3DES/AES primitives, key parity and check values, TMK key wrapping (protocol.md
section 4): the key half of the pure crypto.

>>> generate_kcv(bytes.fromhex("807A23AD32B36D457AE91FDF927570EA"), 4).hex().upper()
'8D0A74B8'
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from typing import Protocol

from Crypto.Cipher import AES, DES, DES3

from hsm_sim.crypto.errors import CryptoError

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
        raise CryptoError(f"DES key must be 8, 16 or 24 bytes, not {length}", code="27")


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
        raise CryptoError(f"AES key must be 16, 24 or 32 bytes, not {len(key)}", code="27")
    return AES.new(key, AES.MODE_ECB)


def _check_blocks(data: bytes, block: int) -> None:
    if not data or len(data) % block:
        raise CryptoError(f"data must be a non-empty multiple of {block} bytes", code="80")


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
    """Decrypt a working key sent under a TMK; raise `CryptoError` (01) on a wrong check value.

    >>> tmk = bytes.fromhex("CA5D92598DCA48CE8A4C76361A9269E9")
    >>> ct, cv = bytes.fromhex("6701EAD6A9AD51E51AA406E2C27FCFA9"), bytes.fromhex("8D0A74B8")
    >>> unwrap_key_tmk(tmk, ct, cv).hex().upper()
    '807A23AD32B36D457AE91FDF927570EA'
    """
    key = decrypt_tdes_ecb(tmk, ciphertext)
    if not secrets.compare_digest(generate_kcv(key, len(check_value)), check_value):
        raise CryptoError("working key check value mismatch", code="01")
    return key
