"""Local Master Keys: the variant LMK set, key encryption under it, LMK files.

A variant LMK is 20 double-length DES pairs (00-01 ... 38-39). A key of type `VTT` (variant
digit V, type TT) is encrypted under the pair for TT with the first byte of its left half
XORed by the key-type variant of V. Key schemes (hsm-commands.md): `Z` or bare 16H single,
`U` double and `T` triple (each 8-byte part encrypted separately, the first byte of the
encrypting key's second half XORed by A6/5A or 6A/DE/2B), `X`/`Y` (and bare 32H/48H) double
or triple with no scheme variant. The same scheme rules apply to exports under a ZMK/TMK.

>>> lmk = load_lmk("test")
>>> clear = lmk.decrypt_key("002", "0406FBB23A5214DF")
>>> generate_kcv(clear, 8).hex().upper()
'0035BBE340A4B763'
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from hsm_sim.crypto import (
    DES_BLOCK,
    adjust_key_parity,
    check_key_parity,
    decode_pinblock_iso_0_account,
    encode_pinblock_iso_0_account,
    generate_kcv,
    generate_random_key,
    get_tdes_cipher,
    is_hex,
    xor_bytes,
)
from hsm_sim.errors import HsmError

__all__ = [
    "TEST_LMK_WARNING",
    "LmkSet",
    "decrypt_key_under_kek",
    "encrypt_key_under_kek",
    "format_key_field",
    "generate_lmk_file",
    "load_lmk",
    "parse_key_field",
]

LMK_PAIR_COUNT = 20
LMK_FILE_MODE = 0o600
LMK_FILE_FORBIDDEN_BITS = 0o077
"""A live LMK file with any group/other permission bit is refused (error 13)."""
KEY_CACHE_SIZE = 65536
LMK_FILE_HEADER = "# hsm-sim variant LMK: 20 double-length pairs. KEEP SECRET."

TEST_LMK_HEX: tuple[str, ...] = (
    "01010101010101017902CD1FD36EF8BA",
    "20202020202020203131313131313131",
    "40404040404040405151515151515151",
    "61616161616161617070707070707070",
    "80808080808080809191919191919191",
    "A1A1A1A1A1A1A1A1B0B0B0B0B0B0B0B0",
    "C1C1010101010101D0D0010101010101",
    "E0E0010101010101F1F1010101010101",
    "1C587F1C13924FEF0101010101010101",
    "01010101010101010101010101010101",
    "02020202020202020404040404040404",
    "07070707070707071010101010101010",
    "13131313131313131515151515151515",
    "16161616161616161919191919191919",
    "1A1A1A1A1A1A1A1A1C1C1C1C1C1C1C1C",
    "23232323232323232525252525252525",
    "26262626262626262929292929292929",
    "2A2A2A2A2A2A2A2A2C2C2C2C2C2C2C2C",
    "2F2F2F2F2F2F2F2F3131313131313131",
    "01010101010101010101010101010101",
)

TEST_LMK_WARNING = (
    "WARNING: the PUBLISHED TEST LMK is loaded. Every key under it is known to the world. "
    "Never use it for live keys or real cards."
)

# Last two digits of a key type -> index of its LMK pair (04-05 is index 2, ...).
KEY_TYPE_PAIR: dict[str, int] = {
    "00": 2,  # ZMK, 04-05
    "01": 3,  # ZPK, 06-07
    "02": 7,  # TMK / TPK / PVK, 14-15
    "03": 8,  # TAK, 16-17
    "08": 13,  # ZAK, 26-27
    "09": 14,  # BDK, 28-29
    "0A": 15,  # ZEK, 30-31
    "0D": 18,  # 36-37: TPK 70D and TMK 80D under "key type 002 separation"
}
PIN_PAIR_INDEX = 1  # PINs under the LMK: 02-03
KEY_TYPE_VARIANTS = bytes((0x00, 0xA6, 0x5A, 0x6A, 0xDE, 0x2B, 0x50, 0x74, 0x9C, 0xFA))
SCHEME_VARIANTS: dict[str, tuple[int, ...]] = {"U": (0xA6, 0x5A), "T": (0x6A, 0xDE, 0x2B)}
SCHEME_LENGTHS: dict[str, int] = {"Z": 8, "U": 16, "X": 16, "T": 24, "Y": 24}
BARE_SCHEMES: dict[int, str] = {16: "Z", 32: "X", 48: "Y"}  # hex length of an unprefixed key


def check_key_type(key_type: str) -> tuple[int, int]:
    """(variant, LMK pair index) for a 3H key type; error 04 when unknown.

    >>> check_key_type("002"), check_key_type("103")
    ((0, 7), (166, 8))
    """
    key_type = key_type.upper()
    if len(key_type) != 3 or not key_type[0].isdigit() or key_type[1:] not in KEY_TYPE_PAIR:
        raise HsmError(f"invalid key type {key_type!r}", code="04")
    return KEY_TYPE_VARIANTS[int(key_type[0])], KEY_TYPE_PAIR[key_type[1:]]


def parse_key_field(field: str) -> tuple[str, bytes]:
    """(scheme, ciphertext) from a key field: `U`/`X`+32H, `T`/`Y`+48H, `Z`+16H or bare hex.

    >>> parse_key_field("0406FBB23A5214DF")
    ('Z', b'\\x04\\x06\\xfb\\xb2:R\\x14\\xdf')
    """
    scheme = field[:1].upper()
    if scheme in SCHEME_LENGTHS:
        text, length = field[1:], SCHEME_LENGTHS[scheme] * 2
    else:
        text, length = field, len(field)
        scheme = BARE_SCHEMES.get(length, "")
    if not scheme or len(text) != length or not is_hex(text):
        raise HsmError(f"malformed key field ({len(field)} characters)", code="15")
    return scheme, bytes.fromhex(text)


def format_key_field(scheme: str, ciphertext: bytes) -> str:
    """The key field for a scheme: single-length `Z` keys go out as bare 16H (payShield)."""
    text = ciphertext.hex().upper()
    return text if scheme == "Z" else scheme + text


def _check_scheme_length(scheme: str, length: int) -> None:
    if scheme not in SCHEME_LENGTHS:
        raise HsmError(f"invalid key scheme {scheme!r}", code="26")
    if SCHEME_LENGTHS[scheme] != length:
        raise HsmError(f"key scheme {scheme} does not fit a {length}-byte key", code="27")


def _scheme_keks(kek: bytes, scheme: str, parts: int) -> list[bytes]:
    variants = SCHEME_VARIANTS.get(scheme)
    if variants is None:
        return [kek] * parts
    if len(kek) < 2 * DES_BLOCK:
        raise HsmError(f"scheme {scheme} needs a double or triple length KEK", code="27")
    head, tail = kek[:DES_BLOCK], kek[2 * DES_BLOCK :]
    right = kek[DES_BLOCK : 2 * DES_BLOCK]
    return [head + bytes((right[0] ^ v,)) + right[1:] + tail for v in variants]


def encrypt_key_under_kek(kek: bytes, scheme: str, clear: bytes) -> bytes:
    """Encrypt a key under a KEK (LMK pair with variant, ZMK or TMK) in a key scheme."""
    _check_scheme_length(scheme, len(clear))
    parts = len(clear) // DES_BLOCK
    if scheme not in SCHEME_VARIANTS:
        return get_tdes_cipher(kek).encrypt(clear)
    keks = _scheme_keks(kek, scheme, parts)
    return b"".join(
        get_tdes_cipher(k).encrypt(clear[i * DES_BLOCK : (i + 1) * DES_BLOCK])
        for i, k in enumerate(keks)
    )


def decrypt_key_under_kek(kek: bytes, scheme: str, ciphertext: bytes) -> bytes:
    """Inverse of `encrypt_key_under_kek`."""
    _check_scheme_length(scheme, len(ciphertext))
    if scheme not in SCHEME_VARIANTS:
        return get_tdes_cipher(kek).decrypt(ciphertext)
    keks = _scheme_keks(kek, scheme, len(ciphertext) // DES_BLOCK)
    return b"".join(
        get_tdes_cipher(k).decrypt(ciphertext[i * DES_BLOCK : (i + 1) * DES_BLOCK])
        for i, k in enumerate(keks)
    )


class LmkSet:
    """A variant LMK set with cached variant keys and cached key decryption."""

    def __init__(self, pairs: Sequence[bytes], *, is_test: bool, source: str) -> None:
        if len(pairs) != LMK_PAIR_COUNT or any(len(p) != 2 * DES_BLOCK for p in pairs):
            raise HsmError("an LMK set is 20 double-length pairs", code="13")
        self.pairs = tuple(pairs)
        self.is_test = is_test
        self.source = source
        self.check_value = generate_kcv(self.pairs[0], 8).hex().upper()
        self._decrypt_cached = lru_cache(maxsize=KEY_CACHE_SIZE)(self._decrypt_uncached)

    def __repr__(self) -> str:
        return f"LmkSet(source={self.source!r}, check_value={self.check_value!r})"

    def kek_for(self, key_type: str) -> bytes:
        """The LMK pair for a key type with its key-type variant applied."""
        variant, index = check_key_type(key_type)
        pair = self.pairs[index]
        return bytes((pair[0] ^ variant,)) + pair[1:]

    def encrypt_key(self, key_type: str, scheme: str, clear: bytes) -> str:
        """The key field (scheme + hex) of a clear key under this LMK."""
        ciphertext = encrypt_key_under_kek(self.kek_for(key_type), scheme, clear)
        return format_key_field(scheme, ciphertext)

    def decrypt_key(self, key_type: str, field: str, parity_code: str = "10") -> bytes:
        """Clear key from a key field; error `parity_code` (10 source, 11 destination)."""
        clear = self._decrypt_cached(key_type.upper(), field.upper())
        if not check_key_parity(clear):
            raise HsmError("key parity error", code=parity_code)
        return clear

    def _decrypt_uncached(self, key_type: str, field: str) -> bytes:
        scheme, ciphertext = parse_key_field(field)
        return decrypt_key_under_kek(self.kek_for(key_type), scheme, ciphertext)

    def encrypt_pin(self, pin: str, account: str) -> str:
        """PIN under LMK 02-03: 16H = 3DES of its ISO format 0 block (our encoding)."""
        block = encode_pinblock_iso_0_account(pin, account)
        return get_tdes_cipher(self.pairs[PIN_PAIR_INDEX]).encrypt(block).hex().upper()

    def decrypt_pin(self, field: str, account: str) -> str:
        """Clear PIN from a 16H PIN under LMK; error 20 when it does not decode."""
        if len(field) != 2 * DES_BLOCK or not is_hex(field):
            raise HsmError("PIN under LMK must be 16H", code="15")
        block = get_tdes_cipher(self.pairs[PIN_PAIR_INDEX]).decrypt(bytes.fromhex(field))
        return decode_pinblock_iso_0_account(block, account)


def published_test_lmk() -> LmkSet:
    """The published test LMK set (hsm-commands.md)."""
    return LmkSet([bytes.fromhex(h) for h in TEST_LMK_HEX], is_test=True, source="test")


def random_lmk_pairs() -> list[bytes]:
    """20 random odd-parity double-length pairs (a live LMK)."""
    return [generate_random_key(2 * DES_BLOCK) for _ in range(LMK_PAIR_COUNT)]


def format_lmk_file(pairs: Sequence[bytes]) -> str:
    """LMK file text: a header line, then `NN-MM <32H>` per pair."""
    lines = [LMK_FILE_HEADER]
    lines += [f"{2 * i:02d}-{2 * i + 1:02d} {p.hex().upper()}" for i, p in enumerate(pairs)]
    return "\n".join(lines) + "\n"


def parse_lmk_file(text: str) -> list[bytes]:
    """Pairs from LMK file text; error 13 on anything malformed."""
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        label, _, value = line.partition(" ")
        expected = f"{2 * len(pairs):02d}-{2 * len(pairs) + 1:02d}"
        if label != expected or len(value.strip()) != 32 or not is_hex(value.strip()):
            raise HsmError(f"LMK file: bad line for pair {expected}", code="13")
        pairs.append(bytes.fromhex(value.strip()))
    if len(pairs) != LMK_PAIR_COUNT:
        raise HsmError(f"LMK file: {len(pairs)} pairs, need {LMK_PAIR_COUNT}", code="13")
    return pairs


def generate_lmk_file(path: str | os.PathLike[str]) -> LmkSet:
    """Write a random live LMK to `path` (mode 0600); refuse to overwrite an existing file."""
    pairs = random_lmk_pairs()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, LMK_FILE_MODE)
    except FileExistsError:
        raise HsmError(f"{path} exists: refusing to overwrite an LMK", code="13") from None
    with os.fdopen(fd, "w") as f:
        f.write(format_lmk_file(pairs))
    os.chmod(path, LMK_FILE_MODE)  # in case of a umask-free filesystem quirk
    return LmkSet(pairs, is_test=False, source=str(path))


def load_lmk(spec: str) -> LmkSet:
    """`"test"` -> the published test LMK; anything else is the path of an LMK file."""
    if spec == "test":
        return published_test_lmk()
    try:
        mode = os.stat(spec).st_mode
        text = Path(spec).read_text()
    except OSError as exc:
        raise HsmError(f"cannot read LMK file {spec}: {exc.strerror}", code="13") from None
    except UnicodeDecodeError:
        raise HsmError(f"{spec} is not an LMK file (not text)", code="13") from None
    if mode & LMK_FILE_FORBIDDEN_BITS:
        raise HsmError(
            f"LMK file {spec} is open to group or others (mode {mode & 0o777:04o}): refusing a"
            f" live LMK others can read; chmod 600 {spec}", code="13")
    return LmkSet(parse_lmk_file(text), is_test=False, source=spec)


def random_component(length: int) -> bytes:
    """A random odd-parity key component."""
    return adjust_key_parity(secrets.token_bytes(length))


def combine_components(components: Sequence[bytes]) -> bytes:
    """XOR key components and force odd parity on the result (as an HSM forms a key)."""
    key = components[0]
    for part in components[1:]:
        key = xor_bytes(key, part)
    return adjust_key_parity(key)
