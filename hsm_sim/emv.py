"""EMV application cryptograms as small pure functions (psec style): ICC master key
derivation (option A), the EMV common session key, the ARQC (ISO 9797-1 MAC algorithm 3,
padding method 2) and the ARPC (method 1), per protocol.md section 8 (scheme ``emv-csk``).

Keys are clear bytes here: the HSM's command layer (KW in hsm_sim/commands.py) owns the LMK,
the key-type policy and the Thales error codes; posterm's emulated chip card calls the same
functions, as a real card's applet holds its own key. Errors are :class:`CryptoError` (15 for
bad input, 27 for a key of the wrong length).

Section 8's worked values:

>>> imk = bytes.fromhex("9E15204313F7318ACB79B90BD986AD29")
>>> mk = derive_icc_mk_option_a(imk, "6222021234567890128", "01")
>>> mk.hex().upper()
'F1E0B6B592544373A494F252752386DC'
>>> sk = derive_session_key_common(mk, bytes.fromhex("0001"))
>>> sk.hex().upper()
'3DC802975797DF08C23BDAF201A29E3E'
>>> data = bytes.fromhex("000000012345000000000000015600000000000156261129001A2B3C4D7C00"
...                      "000107001203A0000000")
>>> arqc = generate_ac(sk, data)
>>> arqc.hex().upper()
'EEA5EECC83A08C96'
>>> generate_arpc_method_1(sk, arqc, b"00").hex().upper()
'3E3D17E3C39C2074'
"""

from __future__ import annotations

import hmac

from hsm_sim.crypto import (
    DES_BLOCK,
    adjust_key_parity,
    encrypt_tdes_ecb,
    generate_mac_iso9797_alg3,
    xor_bytes,
)
from hsm_sim.crypto.errors import CryptoError

MK_LENGTH = 16
"""MK-AC, ICC master keys and session keys are double-length 3DES keys."""
ATC_LENGTH = 2
AC_LENGTH = 8
ARC_LENGTH = 2
Y_DIGITS = 16
PADDING_METHOD_2 = 2
_FF8 = b"\xff" * DES_BLOCK


def _check_key(key: bytes, what: str) -> None:
    if len(key) != MK_LENGTH:
        raise CryptoError(f"{what} must be a double-length key", code="27")


def build_option_a_y(pan: str, psn: str) -> bytes:
    """Option A's Y: the rightmost 16 digits of PAN || PSN, packed BCD (8 bytes); a PAN that
    is too short is left-padded with zeros.

    >>> build_option_a_y("6222021234567890128", "01").hex().upper()
    '2123456789012801'
    """
    if not pan.isdigit() or not psn.isdigit() or len(psn) != 2:
        raise CryptoError("PAN must be digits and PSN two digits", code="15")
    return bytes.fromhex((pan + psn)[-Y_DIGITS:].rjust(Y_DIGITS, "0"))


def derive_icc_mk_option_a_y(imk: bytes, y: bytes) -> bytes:
    """ICC MK = 3DES(IMK)[Y] || 3DES(IMK)[Y xor FF..FF], odd parity."""
    _check_key(imk, "IMK-AC")
    if len(y) != DES_BLOCK:
        raise CryptoError("Y must be 8 bytes", code="15")
    return adjust_key_parity(encrypt_tdes_ecb(imk, y) + encrypt_tdes_ecb(imk, xor_bytes(y, _FF8)))


def derive_icc_mk_option_a(imk: bytes, pan: str, psn: str) -> bytes:
    """EMV option A ICC master key from the issuer master key, PAN and PSN (2 digits)."""
    return derive_icc_mk_option_a_y(imk, build_option_a_y(pan, psn))


def derive_session_key_common(mk: bytes, atc: bytes) -> bytes:
    """EMV common session key: R = ATC || 00 x 6; left = 3DES(MK)[R, byte 3 = F0], right =
    3DES(MK)[R, byte 3 = 0F], odd parity."""
    _check_key(mk, "ICC master key")
    if len(atc) != ATC_LENGTH:
        raise CryptoError("ATC must be 2 bytes", code="15")
    left = atc + b"\xf0" + bytes(5)
    right = atc + b"\x0f" + bytes(5)
    return adjust_key_parity(encrypt_tdes_ecb(mk, left) + encrypt_tdes_ecb(mk, right))


def generate_ac(session_key: bytes, data: bytes) -> bytes:
    """An application cryptogram (ARQC, TC or AAC): MAC algorithm 3, padding method 2."""
    _check_key(session_key, "session key")
    return generate_mac_iso9797_alg3(session_key, data, PADDING_METHOD_2)


def verify_ac(session_key: bytes, data: bytes, ac: bytes) -> bool:
    """Whether ``ac`` is the cryptogram of ``data`` (constant-time comparison)."""
    if len(ac) != AC_LENGTH:
        return False
    return hmac.compare_digest(generate_ac(session_key, data), ac)


def generate_arpc_method_1(session_key: bytes, arqc: bytes, arc: bytes) -> bytes:
    """ARPC method 1: 3DES(session key)[ARQC xor (ARC || 00 x 6)]."""
    _check_key(session_key, "session key")
    if len(arqc) != AC_LENGTH or len(arc) != ARC_LENGTH:
        raise CryptoError("ARQC must be 8 bytes and ARC 2", code="15")
    return encrypt_tdes_ecb(session_key, xor_bytes(arqc, arc + bytes(6)))


def derive_session_key_option_a(imk: bytes, y: bytes, atc: bytes) -> bytes:
    """Issuer side in one step: the session key of a card (Y) at an ATC from the IMK-AC."""
    return derive_session_key_common(derive_icc_mk_option_a_y(imk, y), atc)
