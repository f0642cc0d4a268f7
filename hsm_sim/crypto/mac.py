"""MACs: ISO 9797-1 algorithms 1 and 3, ANSI X9.9 / X9.19 and the UnionPay "ECB" MAC.

>>> key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
>>> generate_mac_x919(key, b"Now is the time for all ").hex().upper()
'A1C72E74EA3FA9B6'
"""

from __future__ import annotations

import threading
from functools import lru_cache

from Crypto.Cipher import DES, DES3

from hsm_sim.crypto.des import (
    CIPHER_CACHE_SIZE,
    DES_BLOCK,
    _check_blocks,
    _check_des_key_length,
    get_tdes_cipher,
    reduce_des_key,
    xor_bytes,
)
from hsm_sim.crypto.errors import CryptoError

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
    raise CryptoError(f"padding method {padding} not supported", code="15")


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
        raise CryptoError("MAC algorithm 3 needs a double-length key", code="27")
    padded = pad_mac_data(data, padding)
    last = padded[-DES_BLOCK:]
    if len(padded) > DES_BLOCK:
        last = xor_bytes(_cbc_last_block(key[:DES_BLOCK], padded[:-DES_BLOCK]), last)
    # The last block's E(K1), D(K2), E(K1) is one 2-key 3DES-EDE encryption under the MAK.
    return get_tdes_cipher(key).encrypt(last)


def generate_mac_x99(key: bytes, data: bytes) -> bytes:
    """ANSI X9.9: single-DES CBC-MAC, zero padding."""
    if len(key) != DES_BLOCK:
        raise CryptoError("X9.9 needs a single-length key", code="27")
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
