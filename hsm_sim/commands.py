"""payShield-compatible host commands, sans-IO: request bytes in, response bytes out.

`HsmEngine.handle(HEADER + CMD + fields)` returns `HEADER + RESP + ERR + data` exactly as
/work/shared/hsm-commands.md says. One handler per command, `COMMANDS` is the dispatch table.
Handlers raise `HsmError(code=...)`; verification failures are error 01. Every call writes one
audit line to the `hsm_sim.audit` logger: client, command, error code and the 6H check values
of the keys involved (never a key, PIN or PIN block).

Our extensions (documented, not payShield):

- `Y0` UnionPay POS ECB MAC generate: key type 3H (003/008) . key . length 4H . message
  (binary) -> MAC 8A (the 8 ASCII hex characters F64 carries).
- `Y2` ECB MAC verify: as Y0 followed by the MAC 8A -> 00 / 01.
- `Y4` import a clear key (test LMK only, else 17): key type 3H . LMK scheme 1A . clear key
  16H/32H/48H -> key under LMK . KCV 6H. Parity is forced odd (DES ignores parity bits).
- `Y6` import clear components (test LMK only): key type 3H . LMK scheme 1A . count 1N (2-9)
  . components -> key under LMK . KCV 6H. Key = XOR of the components, odd parity forced.
- `Y8` generate components (test LMK only): key type 3H . LMK scheme 1A . count 1N (2-9)
  -> key under LMK . KCV 6H . the clear components (the lab's "printed" components).

Security policy (payShield's security settings, `SecurityPolicy`; README "HSM settings"): the
command layer owns key-type policy and the Thales codes. By default, as a PCI-configured
payShield: commands that take a clear PIN or clear key (BA, Y4, Y6, Y8) need the Authorised
state (error 17); A0 exports only the key types an exporting key may carry (error 04); CA/CC
never translate an account-bound block (01, 47) to an unbound format (03, 05) (error 69); DA
refuses a weak clear decimalisation table (error 15); PIN and MAC keys (types x01, x02, x03,
x08) under X/Y schemes or single DES are refused (error 26). `SecurityPolicy.legacy()`
re-opens all of them for estates that still need the old behaviour.

>>> engine = HsmEngine.test()
>>> engine.handle(b"0000BU0200406FBB23A5214DF")
b'0000BV000035BBE340A4B763'
"""

from __future__ import annotations

import copy
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar

from hsm_sim import crypto, emv
from hsm_sim.crypto.errors import CryptoError
from hsm_sim.errors import HsmError, from_crypto
from hsm_sim.framing import (
    DEFAULT_HEADER_LENGTH,
    MAX_FRAME_LENGTH,
    decode_frame_length,
    encode_frame,
    response_code,
)
from hsm_sim.lmk import (
    SCHEME_LENGTHS,
    LmkSet,
    check_key_type,
    combine_components,
    decrypt_key_under_kek,
    encrypt_key_under_kek,
    format_key_field,
    load_lmk,
    parse_key_field,
    random_component,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_HEADER_LENGTH",
    "LEGACY_SETTINGS",
    "MAX_FRAME_LENGTH",
    "HsmEngine",
    "SecurityPolicy",
    "decode_frame_length",
    "encode_frame",
    "response_code",
]

audit_log = logging.getLogger("hsm_sim.audit")
log = logging.getLogger("hsm_sim")

FIRMWARE_VERSION = "1.0.0-SIM"  # 9A
TRAILER_MARK = 0x19
MAX_TRAILER_LENGTH = 32
UNKNOWN_COMMAND_RESPONSE = b"ZZ"
KEY_SCHEME_LETTERS = b"UXTYZ"
MIN_COMPONENTS, MAX_COMPONENTS = 2, 9
MAC_KEY_TYPES = ("003", "008")
IMPORT_TO_LMK_SCHEME = {"Z": "Z", "U": "U", "X": "U", "T": "T", "Y": "T"}

NOT_AUTHORISED = "17"
"""payShield: the command needs the Authorised state (or, for Y4/Y6/Y8, the test LMK)."""
KEY_TYPE_NOT_PERMITTED = "04"
"""A key type the command (here: the exporting key) may not take; payShield's 04."""
WEAK_KEY_SCHEME = "26"
"""An X/Y (no scheme variant) or single-DES PIN/MAC key under the variant LMK."""
PIN_FORMAT_DISABLED = "69"
"""payShield's 'PIN block format has been disabled': a PCI-forbidden translation."""
WEAK_DECIMALISATION_TABLE = "15"

STRONG_SCHEMES = ("U", "T")
TPK_SEPARATED, TMK_SEPARATED = "70D", "80D"
"""payShield's key type codes for TPK and TMK under "key type 002 separation" (LMK 36-37,
variants 7 and 8); PVKs stay 002 (LMK 14-15)."""
PIN_MAC_KEY_TYPES = frozenset({"01", "02", "03", "08", "0D"})
"""Last two digits of the key types held to the strong-key rule: ZPK, TMK/TPK/PVK, TAK, ZAK
(and TPK 70D / TMK 80D under key type 002 separation)."""
ACCOUNT_BOUND_FORMATS = frozenset({"01", "47"})
"""ISO 9564 formats 0 and 3 carry the account; 03 (IBM 3624) and 05 (ISO 1) do not."""
EXPORTABLE_UNDER: dict[str, frozenset[str]] = {
    # ZMK: interchange keys, key-encrypting keys, PVKs and issuer keys for another zone
    "000": frozenset({"000", "001", "002", "003", "008", "009", "00A", "109", TPK_SEPARATED,
                      TMK_SEPARATED}),
    # TMK: only what a terminal uses (TMK/TPK under a TMK, TAK)
    "002": frozenset({"002", "003"}),
    # TMK under key type 002 separation: TPK, TMK and TAK; never a PVK
    TMK_SEPARATED: frozenset({TPK_SEPARATED, TMK_SEPARATED, "003"}),
}
"""A0 mode 1: key types each exporting key type (000 ZMK, 002 TMK) may carry."""
DATA_KEY_TYPES = ("00A",)
"""Key types M0/M2 encrypt and decrypt data under (ZEK)."""
DATA_MODES = ("00", "01")
"""M0/M2 mode flag: 00 ECB, 01 CBC (IV 16H in the request and the response)."""
MAX_DATA_LENGTH = 4096
MIN_DECTAB_DISTINCT = 8
MAX_DECTAB_REPEAT = 4


@dataclass(frozen=True)
class SecurityPolicy:
    """payShield-style security settings. Defaults are the PCI ones; each flag re-opens one
    legacy behaviour, `legacy()` all of them."""

    weak_keys: bool = False
    """Allow X/Y schemes and single-DES for PIN and MAC keys under the variant LMK."""
    any_export: bool = False
    """A0 mode 1 exports any key type under any ZMK/TMK."""
    pin_downgrade: bool = False
    """CA/CC may translate ISO 0/3 blocks to IBM 3624 or ISO 1 (drops the account binding)."""
    clear_dectab: bool = False
    """DA accepts any clear decimalisation table (even all zeros)."""
    separate_002: bool = False
    """payShield's "Enforce key type 002 separation": TPK 70D and TMK 80D (LMK 36-37)
    apart from PVK 002, so none can stand in for another. Stricter, not a legacy switch."""
    @classmethod
    def legacy(cls) -> SecurityPolicy:
        return cls(weak_keys=True, any_export=True, pin_downgrade=True, clear_dectab=True)

    @property
    def tmk_type(self) -> str:
        """The key type of a TMK (the `;1` exporting key of A0, the parent of HC/HA)."""
        return TMK_SEPARATED if self.separate_002 else "002"

    @property
    def tpk_type(self) -> str:
        """The key type of a TPK (CA source, DC/DA PIN key)."""
        return TPK_SEPARATED if self.separate_002 else "002"

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...]) -> SecurityPolicy:
        """From setting names (``weak-keys``, ``any-export``, ``pin-downgrade``,
        ``clear-dectab``, ``all``); error 15 on an unknown name."""
        flags = {}
        for name in names:
            if name == "all":
                return cls.legacy()
            attr = name.replace("-", "_")
            if name not in LEGACY_SETTINGS:
                raise HsmError(f"unknown legacy setting {name!r}", code="15")
            flags[attr] = True
        return cls(**flags)

    def names(self) -> list[str]:
        """The legacy settings that are on."""
        return [n for n in LEGACY_SETTINGS if getattr(self, n.replace("-", "_"))]


LEGACY_SETTINGS = ("weak-keys", "any-export", "pin-downgrade", "clear-dectab")
DEFAULT_POLICY = SecurityPolicy()


# --------------------------------------------------------------------------- field cursor


class Fields:
    """Cursor over a request's fields; any shortfall or bad character is error 15."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise HsmError("request too short", code="15")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def text(self, n: int) -> str:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise HsmError("request too short", code="15")
        chunk = self.data[self.pos : end]
        self.pos = end
        if not chunk.isalnum():  # bytes.isalnum: ASCII letters and digits only
            raise HsmError("unexpected characters in request", code="15")
        return chunk.decode("ascii").upper()

    def digits(self, n: int) -> str:
        value = self.text(n)
        if not value.isdigit():
            raise HsmError("numeric field expected", code="15")
        return value

    def hex(self, n: int) -> str:
        value = self.text(n)
        if not crypto.is_hex(value):
            raise HsmError("hex field expected", code="15")
        return value

    def choice(self, n: int, allowed: str, code: str = "15") -> str:
        value = self.text(n)
        if value not in allowed:
            raise HsmError(f"value {value!r} not allowed here", code=code)
        return value

    def key(self, bare_hex_length: int = 16) -> str:
        """A key field: scheme letter + hex, or `bare_hex_length` hex digits."""
        first = self.data[self.pos : self.pos + 1]
        if first and first in KEY_SCHEME_LETTERS:
            return self.text(1 + 2 * SCHEME_LENGTHS[first.decode()])
        return self.hex(bare_hex_length)

    def key_pair(self) -> str:
        """A PVK pair: scheme letter + hex, or two concatenated single keys (32H)."""
        return self.key(bare_hex_length=32)

    def optional(self, marker: bytes) -> bool:
        if self.data[self.pos : self.pos + len(marker)] == marker:
            self.pos += len(marker)
            return True
        return False

    def remaining_before_trailer(self) -> bytes:
        """The rest of the fields up to an optional X'19' trailer (for variable fields)."""
        rest = self.data[self.pos :]
        cut = rest.find(bytes((TRAILER_MARK,)))
        return rest if cut < 0 else rest[:cut]

    def finish(self) -> None:
        """Nothing may follow the fields except the optional trailer X'19' + up to 32 chars."""
        rest = self.data[self.pos :]
        if rest and (rest[0] != TRAILER_MARK or len(rest) > 1 + MAX_TRAILER_LENGTH):
            raise HsmError("unexpected data after the last field", code="15")


# --------------------------------------------------------------------------- call context


@lru_cache(maxsize=65536)
def kcv6(key: bytes) -> str:
    """Cached 6H check value (audit lines and A0 responses)."""
    return crypto.generate_kcv(key, 3).hex().upper()


@dataclass
class Call:
    """One command in flight: the LMK and the KCVs the audit line will show."""

    lmk: LmkSet
    kcvs: list[str] = field(default_factory=list)
    policy: SecurityPolicy = DEFAULT_POLICY
    authorised: bool = False

    def key(self, key_type: str, key_field: str, parity_code: str = "10") -> bytes:
        clear = self.lmk.decrypt_key(key_type, key_field, parity_code)
        self.kcvs.append(kcv6(clear))
        return clear

    def strong_key(self, key_type: str, key_field: str, parity_code: str = "10") -> bytes:
        """A PIN/MAC/terminal key for use: its scheme must be U or T (unless weak_keys)."""
        self.check_scheme(key_type, _key_scheme_of(key_field))
        return self.key(key_type, key_field, parity_code)

    def check_scheme(self, key_type: str, scheme: str) -> None:
        """Error 26 for an X/Y or single-DES PIN/MAC key under the LMK (unless weak_keys)."""
        if (self.policy.weak_keys or key_type[1:].upper() not in PIN_MAC_KEY_TYPES
                or scheme in STRONG_SCHEMES):
            return
        raise HsmError(f"key scheme {scheme} is not allowed for key type {key_type} "
                       "(double/triple length with scheme U/T only)", code=WEAK_KEY_SCHEME)

    def require_authorised(self) -> None:
        if not self.authorised:
            raise HsmError("the HSM is not in the Authorised state", code=NOT_AUTHORISED)

    def new_key(self, length: int) -> bytes:
        clear = crypto.generate_random_key(length)
        self.kcvs.append(kcv6(clear))
        return clear

    def require_test_lmk(self) -> None:
        if not self.lmk.is_test:
            raise HsmError("clear-key extensions need the test LMK", code="17")
        self.require_authorised()


Handler = Callable[[Call, Fields], bytes]


def _scheme_length(scheme: str) -> int:
    if scheme not in SCHEME_LENGTHS:
        raise HsmError(f"invalid key scheme {scheme!r}", code="26")
    return SCHEME_LENGTHS[scheme]


@lru_cache(maxsize=crypto.CIPHER_CACHE_SIZE)
def _key_scheme_of(key_field: str) -> str:
    """The scheme of a key field (cached: the hot keys, a terminal's MAK and TPK, come back
    with every message; a malformed field raises and is not cached)."""
    return parse_key_field(key_field)[0]


def _export(kek: bytes, scheme: str, clear: bytes) -> str:
    return format_key_field(scheme, encrypt_key_under_kek(kek, scheme, clear))


def _optional_schemes(f: Fields, default: str) -> tuple[str, str]:
    """`;` + scheme (under the KEK) 1A + scheme (LMK) 1A + reserved 1A, else the defaults."""
    if not f.optional(b";"):
        return default, default
    under_kek, under_lmk = f.text(1), f.text(1)
    f.text(1)
    return under_kek, under_lmk


# --------------------------------------------------------------------------- key management


def cmd_nc(call: Call, f: Fields) -> bytes:
    """NC: LMK check value 16H + firmware version 9A."""
    f.finish()
    return (call.lmk.check_value + FIRMWARE_VERSION).encode()


def cmd_a0(call: Call, f: Fields) -> bytes:
    """A0: generate a key (mode 0) and export it under a ZMK or TMK (mode 1)."""
    mode = f.choice(1, "01")
    key_type = f.text(3)
    check_key_type(key_type)
    scheme = f.text(1)
    length = _scheme_length(scheme)
    call.check_scheme(key_type, scheme)
    kek_field = export_scheme = None
    kek_type = "000"
    if mode == "1":
        if f.optional(b";"):
            kek_type = {"0": "000", "1": call.policy.tmk_type}[f.choice(1, "01")]
        kek_field, export_scheme = f.key(), f.text(1)
        if _scheme_length(export_scheme) != length:
            raise HsmError("export scheme does not fit the key length", code="27")
    f.finish()
    if kek_field:
        _check_export(call, key_type, kek_type)
    kek = call.strong_key(kek_type, kek_field) if kek_field else b""
    clear = call.new_key(length)
    out = call.lmk.encrypt_key(key_type, scheme, clear)
    if export_scheme:
        out += _export(kek, export_scheme, clear)
    return (out + kcv6(clear)).encode()


def _check_export(call: Call, key_type: str, kek_type: str) -> None:
    """payShield's export rules: a TMK carries only terminal keys, a ZMK interchange keys."""
    if call.policy.any_export or key_type.upper() in EXPORTABLE_UNDER[kek_type]:
        return
    kek_name = "a ZMK" if kek_type == "000" else "a TMK"
    raise HsmError(f"key type {key_type} may not be exported under {kek_name}",
                   code=KEY_TYPE_NOT_PERMITTED)


def _check_length_flag(flag: str, clear: bytes) -> None:
    if flag not in "012":
        raise HsmError(f"invalid key length flag {flag!r}", code="05")
    if (int(flag) + 1) * crypto.DES_BLOCK != len(clear):
        raise HsmError("key length flag does not match the key", code="27")


def cmd_bu(call: Call, f: Fields) -> bytes:
    """BU: key check value (16H) of a key under the LMK."""
    type_code, flag = f.text(2), f.text(1)
    key_field = f.key()
    if type_code == "FF":
        if not f.optional(b";"):
            raise HsmError("key type code FF needs ';' + key type", code="15")
        key_type = f.text(3)
    else:
        key_type = "0" + type_code
    f.finish()
    if flag not in "012":
        raise HsmError(f"invalid key length flag {flag!r}", code="05")
    clear = call.key(key_type, key_field)
    _check_length_flag(flag, clear)
    return crypto.generate_kcv(clear, 8).hex().upper().encode()


def _generate_under(call: Call, f: Fields, parent_type: str, child_type: str) -> bytes:
    parent_field = f.key()
    under_parent, under_lmk = _optional_schemes(f, _key_scheme_of(parent_field))
    f.finish()
    parent = call.strong_key(parent_type, parent_field)
    length = _scheme_length(under_lmk)
    call.check_scheme(child_type, under_lmk)
    if _scheme_length(under_parent) != length:
        raise HsmError("key schemes of different lengths", code="27")
    clear = call.new_key(length)
    under_parent_field = _export(parent, under_parent, clear)
    return (under_parent_field + call.lmk.encrypt_key(child_type, under_lmk, clear)).encode()


def cmd_hc(call: Call, f: Fields) -> bytes:
    """HC: a new TMK/TPK/PVK, under the current one and under the LMK."""
    return _generate_under(call, f, call.policy.tmk_type, call.policy.tmk_type)


def cmd_ha(call: Call, f: Fields) -> bytes:
    """HA: a new TAK, under the TMK and under the LMK."""
    return _generate_under(call, f, call.policy.tmk_type, "003")


def cmd_fa(call: Call, f: Fields) -> bytes:
    """FA: import a ZPK from under a ZMK to under the LMK; KCV 16H (or 6H, KCV type 1)."""
    zmk_field, zpk_field = f.key(), f.key()
    zpk_scheme, zpk_ciphertext = parse_key_field(zpk_field)
    lmk_scheme, kcv_type = IMPORT_TO_LMK_SCHEME[zpk_scheme], "0"
    if f.optional(b";"):
        f.text(1)
        lmk_scheme, kcv_type = f.text(1), f.choice(1, "01")
    f.finish()
    zmk = call.key("000", zmk_field)
    zpk = decrypt_key_under_kek(zmk, zpk_scheme, zpk_ciphertext)
    if not crypto.check_key_parity(zpk):
        raise HsmError("ZPK parity error", code="11")
    call.kcvs.append(kcv6(zpk))
    if _scheme_length(lmk_scheme) != len(zpk):
        raise HsmError("LMK scheme does not fit the ZPK", code="27")
    call.check_scheme("001", lmk_scheme)
    kcv = crypto.generate_kcv(zpk, 3 if kcv_type == "1" else 8).hex().upper()
    return (call.lmk.encrypt_key("001", lmk_scheme, zpk) + kcv).encode()


def cmd_a6(call: Call, f: Fields) -> bytes:
    """A6: import a key from under a ZMK to under the LMK (key type 3, ZMK, key under ZMK,
    LMK scheme 1A) -> key under LMK + KCV 6H. Only what a ZMK may carry (EXPORTABLE_UNDER)."""
    key_type = f.text(3)
    check_key_type(key_type)
    zmk_field, key_field = f.key(), f.key()
    lmk_scheme = f.text(1)
    f.finish()
    if not call.policy.any_export and key_type.upper() not in EXPORTABLE_UNDER["000"]:
        raise HsmError(f"key type {key_type} may not be imported under a ZMK",
                       code=KEY_TYPE_NOT_PERMITTED)
    scheme, ciphertext = parse_key_field(key_field)
    zmk = call.key("000", zmk_field)
    clear = decrypt_key_under_kek(zmk, scheme, ciphertext)
    if not crypto.check_key_parity(clear):
        raise HsmError("key parity error", code="11")
    if _scheme_length(lmk_scheme) != len(clear):
        raise HsmError("LMK scheme does not fit the key", code="27")
    call.check_scheme(key_type, lmk_scheme)
    call.kcvs.append(kcv6(clear))
    return (call.lmk.encrypt_key(key_type, lmk_scheme, clear) + kcv6(clear)).encode()


# --------------------------------------------------------------------------- PINs


def _pin_format(f: Fields) -> str:
    fmt = f.digits(2)
    if fmt not in crypto.DES_PINBLOCK_FORMATS:
        raise HsmError(f"PIN block format {fmt} not supported (48 needs an AES key)", code="23")
    return fmt


def _max_pin_length(f: Fields) -> int:
    value = int(f.digits(2))
    if not crypto.MIN_PIN_LENGTH <= value <= crypto.MAX_PIN_LENGTH:
        raise HsmError("maximum PIN length must be 04-12", code="24")
    return value


def _translate(call: Call, f: Fields, src_type: str) -> bytes:
    src_field, dst_field = f.key(), f.key()
    max_length = _max_pin_length(f)
    block = bytes.fromhex(f.hex(16))
    src_format, dst_format = _pin_format(f), _pin_format(f)
    account = f.digits(12)
    f.finish()
    _check_translation(call, src_format, dst_format)
    src = call.strong_key(src_type, src_field, "10")
    dst = call.strong_key("001", dst_field, "11")
    pin = crypto.decipher_pinblock(src, block, account, src_format)
    if len(pin) > max_length:
        raise HsmError("PIN longer than the maximum PIN length", code="24")
    out = crypto.encipher_pinblock(dst, pin, account, dst_format)
    return f"{len(pin):02d}{out.hex().upper()}{dst_format}".encode()


def _check_translation(call: Call, src_format: str, dst_format: str) -> None:
    """PCI PIN: a block bound to the account (ISO 0, 3) never leaves as an unbound format
    (IBM 3624, ISO 1): that would let it be re-bound to any account later."""
    if (src_format in ACCOUNT_BOUND_FORMATS and dst_format not in ACCOUNT_BOUND_FORMATS
            and not call.policy.pin_downgrade):
        raise HsmError(f"translation from PIN block format {src_format} to {dst_format} is "
                       "disabled (PCI PIN)", code=PIN_FORMAT_DISABLED)


def cmd_ca(call: Call, f: Fields) -> bytes:
    """CA: translate a PIN block from a TPK to a ZPK."""
    return _translate(call, f, call.policy.tpk_type)


def cmd_cc(call: Call, f: Fields) -> bytes:
    """CC: translate a PIN block from one ZPK to another."""
    return _translate(call, f, "001")


def cmd_ba(call: Call, f: Fields) -> bytes:
    """BA: encrypt a clear PIN (F-padded, any LMK-PIN length) under the LMK (16H, ours)."""
    rest = f.remaining_before_trailer()
    if len(rest) <= 12:
        raise HsmError("BA needs a PIN and a 12-digit account", code="15")
    pin_field = f.text(len(rest) - 12)
    account = f.digits(12)
    f.finish()
    call.require_authorised()
    pin = pin_field.rstrip("F")
    if not pin.isdigit():
        raise HsmError("PIN must be digits padded with F", code="15")
    return call.lmk.encrypt_pin(pin, account).encode()


def cmd_dg(call: Call, f: Fields) -> bytes:
    """DG: Visa PVV of a PIN under the LMK."""
    pvk_field, pin_field = f.key_pair(), f.hex(16)
    account, pvki = f.digits(12), f.digits(1)
    f.finish()
    pvk = call.strong_key("002", pvk_field)
    pin = call.lmk.decrypt_pin(pin_field, account)
    return crypto.generate_visa_pvv_account(pvk, pvki, pin, account).encode()


def _verify_pvv(call: Call, f: Fields, pin_key_type: str) -> bytes:
    pin_key_field, pvk_field = f.key(), f.key_pair()
    block = bytes.fromhex(f.hex(16))
    fmt, account = _pin_format(f), f.digits(12)
    pvki, pvv = f.digits(1), f.digits(4)
    f.finish()
    check_pvv(call, pin_key_type, pin_key_field, pvk_field, block, fmt, account, pvki, pvv)
    return b""


def check_pvv(call: Call, pin_key_type: str, pin_key_field: str, pvk_field: str, block: bytes,
              fmt: str, account: str, pvki: str, pvv: str) -> None:
    """DC/EC core (text handlers and `HsmEngine.verify_pin_pvv`): error 01 on a mismatch.
    ``pin_key_type`` 002 means the TPK role (70D under key type 002 separation)."""
    if pin_key_type == "002":
        pin_key_type = call.policy.tpk_type
    pin_key = call.strong_key(pin_key_type, pin_key_field)
    pvk = call.strong_key("002", pvk_field)
    pin = crypto.decipher_pinblock(pin_key, block, account, fmt)
    if not hmac.compare_digest(crypto.generate_visa_pvv_account(pvk, pvki, pin, account), pvv):
        raise HsmError("PIN verification failure", code="01")


def cmd_dc(call: Call, f: Fields) -> bytes:
    """DC: verify a terminal PIN (under a TPK) against a Visa PVV."""
    return _verify_pvv(call, f, call.policy.tpk_type)


def cmd_ec(call: Call, f: Fields) -> bytes:
    """EC: verify an interchange PIN (under a ZPK) against a Visa PVV."""
    return _verify_pvv(call, f, "001")


def ibm_validation_data(template: str, account: str) -> str:
    """IBM 3624 validation data (16H): `N` -> last 5 account digits, then right-pad with F.

    >>> ibm_validation_data("1234567N", "400000123456")
    '123456723456FFFF'
    """
    data = template.replace("N", account[-5:], 1).ljust(16, "F")
    if len(data) != 16 or not crypto.is_hex(data):
        raise HsmError("PIN validation data must give 16 hex digits", code="15")
    return data


def _check_decimalisation_table(call: Call, dectab: str) -> None:
    """payShield's decimalisation table checks: at least 8 different digits, none more than
    4 times (an all-zeros table turns DA into a PIN-digit oracle).

    >>> _check_decimalisation_table(Call(load_lmk("test")), "0123456789012345")
    """
    if call.policy.clear_dectab:
        return
    counts = [dectab.count(d) for d in set(dectab)]
    if len(counts) < MIN_DECTAB_DISTINCT or max(counts) > MAX_DECTAB_REPEAT:
        raise HsmError("weak decimalisation table (needs 8 different digits, none more than"
                       " 4 times)", code=WEAK_DECIMALISATION_TABLE)


def cmd_da(call: Call, f: Fields) -> bytes:
    """DA: verify a terminal PIN against an IBM 3624 offset."""
    tpk_field, pvk_field = f.key(), f.key()
    max_length = _max_pin_length(f)
    block = bytes.fromhex(f.hex(16))
    fmt = _pin_format(f)
    check_length = int(f.digits(2))
    account, dectab = f.digits(12), f.digits(16)
    template, offset = f.text(12), f.hex(12)
    f.finish()
    if not crypto.MIN_PIN_LENGTH <= check_length <= crypto.MAX_PIN_LENGTH:
        raise HsmError("check length must be 04-12", code="15")
    _check_decimalisation_table(call, dectab)
    tpk = call.strong_key(call.policy.tpk_type, tpk_field)
    pvk = call.strong_key("002", pvk_field)
    pin = crypto.decipher_pinblock(tpk, block, account, fmt)
    if len(pin) > max_length:
        raise HsmError("PIN longer than the maximum PIN length", code="24")
    if len(pin) < check_length:
        raise HsmError("PIN shorter than the check length", code="01")
    data = ibm_validation_data(template, account)
    computed = crypto.generate_ibm3624_offset(pvk, dectab, pin, data)
    if not hmac.compare_digest(computed[:check_length], offset[:check_length]):
        raise HsmError("PIN verification failure", code="01")
    return b""


# --------------------------------------------------------------------------- data


def _data_request(f: Fields) -> tuple[str, str, str, str, bytes, bytes]:
    """M0/M2 fields: mode 2N, input format 1N, output format 1N, key type 3H, key,
    IV 16H (CBC only), length 4H, data -> (mode, out format, key type, key, IV, data)."""
    mode = f.choice(2, DATA_MODES)
    in_format, out_format = f.choice(1, "01"), f.choice(1, "01")
    key_type = f.text(3)
    if key_type not in DATA_KEY_TYPES:
        raise HsmError(f"key type {key_type} cannot encrypt data", code="04")
    key_field = f.key()
    iv = bytes.fromhex(f.hex(16)) if mode == "01" else bytes(crypto.DES_BLOCK)
    data = _message(f, in_format)
    if not data or len(data) % crypto.DES_BLOCK or len(data) > MAX_DATA_LENGTH:
        raise HsmError("data must be whole 8-byte blocks (1-4096 bytes)", code="80")
    return mode, out_format, key_type, key_field, iv, data


def _cbc(key: bytes, iv: bytes, data: bytes, *, decrypt: bool) -> bytes:
    """3DES-CBC from ``iv`` (the M0/M2 mode 01 chaining)."""
    cipher = crypto.get_tdes_cipher(key)
    out, chain = bytearray(), iv
    for i in range(0, len(data), crypto.DES_BLOCK):
        block = data[i : i + crypto.DES_BLOCK]
        if decrypt:
            out += crypto.xor_bytes(cipher.decrypt(block), chain)
            chain = block
        else:
            chain = cipher.encrypt(crypto.xor_bytes(block, chain))
            out += chain
    return bytes(out)


def _data_response(mode: str, out_format: str, iv: bytes, data: bytes) -> bytes:
    body = data.hex().upper().encode() if out_format == "1" else data
    head = iv.hex().upper().encode() if mode == "01" else b""
    return head + f"{len(body):04X}".encode() + body


def cmd_m0(call: Call, f: Fields) -> bytes:
    """M0: encrypt data under a ZEK (ECB or CBC); M1 answers [IV] + length 4H + data."""
    mode, out_format, key_type, key_field, iv, data = _data_request(f)
    f.finish()
    key = call.key(key_type, key_field)
    if mode == "00":
        return _data_response(mode, out_format, iv, crypto.get_tdes_cipher(key).encrypt(data))
    return _data_response(mode, out_format, iv, _cbc(key, iv, data, decrypt=False))


def cmd_m2(call: Call, f: Fields) -> bytes:
    """M2: decrypt data under a ZEK. Clear card data leaves the HSM: Authorised state only
    (ours, stricter than payShield; DECISIONS.md)."""
    mode, out_format, key_type, key_field, iv, data = _data_request(f)
    f.finish()
    call.require_authorised()
    key = call.key(key_type, key_field)
    if mode == "00":
        return _data_response(mode, out_format, iv, crypto.get_tdes_cipher(key).decrypt(data))
    return _data_response(mode, out_format, iv, _cbc(key, iv, data, decrypt=True))


# --------------------------------------------------------------------------- MACs


@dataclass(frozen=True)
class MacRequest:
    """Parsed M6/M8 fields."""

    mac_hex_length: int
    algorithm: str
    padding: int
    key_type: str
    key_field: str
    message: bytes


def _message(f: Fields, input_format: str) -> bytes:
    length = int(f.hex(4), 16)
    raw = f.take(length)
    if input_format == "0":
        return raw
    try:
        return bytes.fromhex(raw.decode("ascii"))
    except ValueError:
        raise HsmError("hex message expected", code="15") from None


def _mac_key_type(f: Fields) -> str:
    key_type = f.text(3)
    if key_type not in MAC_KEY_TYPES:
        raise HsmError(f"key type {key_type} cannot MAC", code="04")
    return key_type


_MAC_HEADS = {
    f"0{fmt}{size}{alg}{pad}".encode(): (fmt, size, alg, int(pad))
    for fmt in "01" for size in "01" for alg in "13" for pad in "012"
}
"""Every valid mode flag + input format + MAC size + algorithm + padding, parsed."""


def _mac_request(f: Fields) -> MacRequest:
    head = _MAC_HEADS.get(f.data[f.pos : f.pos + 5])
    if head is not None:  # the common case in one look-up; else field by field (errors)
        f.pos += 5
        input_format, mac_size, algorithm, padding = head
    else:
        input_format, mac_size, algorithm, padding = _mac_head(f)
    key_type = _mac_key_type(f)
    key_field = f.key()
    message = _message(f, input_format)
    size = 8 if mac_size == "0" else 16
    return MacRequest(size, algorithm, padding, key_type, key_field, message)


def _mac_head(f: Fields) -> tuple[str, str, str, int]:
    f.choice(1, "0")  # mode flag: only "0" (the whole message in one block)
    input_format = f.choice(1, "01")
    mac_size = f.choice(1, "01")
    algorithm = f.choice(1, "13")
    padding = int(f.choice(1, "012"))
    return input_format, mac_size, algorithm, padding


def _compute_mac(call: Call, req: MacRequest) -> str:
    """M6 core (text handler and `HsmEngine.generate_mac`); M8 compares with it."""
    key = call.strong_key(req.key_type, req.key_field)
    if req.algorithm == "3":
        mac = crypto.generate_mac_iso9797_alg3(key, req.message, req.padding)
    else:
        mac = crypto.generate_mac_iso9797_alg1(key, req.message, req.padding)
    return mac.hex().upper()[: req.mac_hex_length]


def cmd_m6(call: Call, f: Fields) -> bytes:
    """M6: generate an ISO 9797-1 algorithm 1 / 3 MAC (8H or 16H)."""
    req = _mac_request(f)
    f.finish()
    return _compute_mac(call, req).encode()


def cmd_m8(call: Call, f: Fields) -> bytes:
    """M8: verify an ISO 9797-1 algorithm 1 / 3 MAC."""
    req = _mac_request(f)
    mac = f.hex(req.mac_hex_length)
    f.finish()
    check_mac(call, req, mac)
    return b""


def check_mac(call: Call, req: MacRequest, mac: str) -> None:
    """M8 core (text handler and `HsmEngine.verify_mac`): error 01 on a mismatch."""
    if not hmac.compare_digest(_compute_mac(call, req), mac):
        raise HsmError("MAC verification failure", code="01")


def _cup_request(f: Fields) -> tuple[str, str, bytes]:
    key_type = _mac_key_type(f)
    return key_type, f.key(), _message(f, "0")


def cmd_y0(call: Call, f: Fields) -> bytes:
    """Y0 (extension): UnionPay POS ECB MAC, 8 ASCII hex characters."""
    key_type, key_field, message = _cup_request(f)
    f.finish()
    return cup_mac(call, key_type, key_field, message)


def cup_mac(call: Call, key_type: str, key_field: str, message: bytes) -> bytes:
    """Y0 core (text handler and `HsmEngine.generate_mac_cup`)."""
    return crypto.generate_mac_cup_ecb(call.strong_key(key_type, key_field), message)


def check_cup_mac(call: Call, key_type: str, key_field: str, message: bytes, mac: bytes) -> None:
    """Y2 core (text handler and `HsmEngine.verify_mac_cup`): error 01 on a mismatch."""
    if not hmac.compare_digest(cup_mac(call, key_type, key_field, message), mac):
        raise HsmError("MAC verification failure", code="01")


def cmd_y2(call: Call, f: Fields) -> bytes:
    """Y2 (extension): verify a UnionPay POS ECB MAC."""
    key_type, key_field, message = _cup_request(f)
    mac = f.hex(8).encode()
    f.finish()
    check_cup_mac(call, key_type, key_field, message, mac)
    return b""


# --------------------------------------------------------------------------- lab extensions


def _lab_key_header(call: Call, f: Fields) -> tuple[str, str, int]:
    call.require_test_lmk()
    key_type = f.text(3)
    check_key_type(key_type)
    scheme = f.text(1)
    length = _scheme_length(scheme)
    call.check_scheme(key_type, scheme)
    return key_type, scheme, length


def _store(call: Call, key_type: str, scheme: str, clear: bytes) -> str:
    call.kcvs.append(kcv6(clear))
    return call.lmk.encrypt_key(key_type, scheme, clear) + kcv6(clear)


def _component_count(f: Fields) -> int:
    count = int(f.digits(1))
    if not MIN_COMPONENTS <= count <= MAX_COMPONENTS:
        raise HsmError("component count must be 2-9", code="15")
    return count


def cmd_y4(call: Call, f: Fields) -> bytes:
    """Y4 (extension, test LMK only): import a clear key."""
    key_type, scheme, length = _lab_key_header(call, f)
    clear = crypto.adjust_key_parity(bytes.fromhex(f.hex(2 * length)))
    f.finish()
    return _store(call, key_type, scheme, clear).encode()


def cmd_y6(call: Call, f: Fields) -> bytes:
    """Y6 (extension, test LMK only): form a key from clear components."""
    key_type, scheme, length = _lab_key_header(call, f)
    parts = [bytes.fromhex(f.hex(2 * length)) for _ in range(_component_count(f))]
    f.finish()
    return _store(call, key_type, scheme, combine_components(parts)).encode()


def cmd_y8(call: Call, f: Fields) -> bytes:
    """Y8 (extension, test LMK only): generate a key as clear components."""
    key_type, scheme, length = _lab_key_header(call, f)
    count = _component_count(f)
    f.finish()
    parts = [random_component(length) for _ in range(count)]
    shown = "".join(p.hex().upper() for p in parts)
    return (_store(call, key_type, scheme, combine_components(parts)) + shown).encode()


# --------------------------------------------------------------------------- EMV (KW)

KW_SCHEME_CSK = "1"
"""KW scheme ID 1: the EMV common session key of protocol.md section 8."""
MK_AC_KEY_TYPE = "109"


def cmd_kw(call: Call, f: Fields) -> bytes:
    """KW: verify an ARQC (mode 0), verify and generate the ARPC (1), ARPC only (2).

    mode 1N . scheme 1N (1) . MK-AC (type 109) . Y 8B . ATC 2B . UN 4B . length 2H . data .
    `;` . ARQC 8B . ARC 2B (modes 1, 2) -> ARPC 8B (modes 1, 2); 01 = ARQC failed.
    The audit line shows the MK-AC's KCV only, never a derived key or a cryptogram.
    """
    mode = f.choice(1, "012")
    f.choice(1, KW_SCHEME_CSK)
    mk_field = f.key()
    y, atc = f.take(8), f.take(emv.ATC_LENGTH)
    f.take(4)  # unpredictable number: not an input of the common session key
    data = f.take(int(f.hex(2), 16))
    if not f.optional(b";"):
        raise HsmError("KW needs ';' before the ARQC", code="15")
    arqc = f.take(emv.AC_LENGTH)
    arc = f.take(emv.ARC_LENGTH) if mode in "12" else b""
    f.finish()
    imk = call.key(MK_AC_KEY_TYPE, mk_field)
    session_key = emv.derive_session_key_option_a(imk, y, atc)
    if mode in "01" and not emv.verify_ac(session_key, data, arqc):
        raise HsmError("ARQC verification failure", code="01")
    if mode == "0":
        return b""
    return emv.generate_arpc_method_1(session_key, arqc, arc)


COMMANDS: dict[bytes, Handler] = {
    b"NC": cmd_nc,
    b"A0": cmd_a0,
    b"BU": cmd_bu,
    b"HC": cmd_hc,
    b"HA": cmd_ha,
    b"FA": cmd_fa,
    b"A6": cmd_a6,
    b"CA": cmd_ca,
    b"CC": cmd_cc,
    b"BA": cmd_ba,
    b"DG": cmd_dg,
    b"DC": cmd_dc,
    b"EC": cmd_ec,
    b"DA": cmd_da,
    b"M6": cmd_m6,
    b"M8": cmd_m8,
    b"M0": cmd_m0,
    b"M2": cmd_m2,
    b"Y0": cmd_y0,
    b"Y2": cmd_y2,
    b"Y4": cmd_y4,
    b"Y6": cmd_y6,
    b"Y8": cmd_y8,
    b"KW": cmd_kw,
}


# --------------------------------------------------------------------------- direct API checks

_T = TypeVar("_T")
_MAC_ALGORITHMS = ("1", "3")
_MAC_PADDINGS = (0, 1, 2)
_MAX_MESSAGE = 0xFFFF  # the text commands carry the length in 4H


def _digits(value: str, n: int) -> bool:
    return len(value) == n and value.isascii() and value.isdigit()


def _direct_mac_key_type(key_type: str) -> None:
    if key_type not in MAC_KEY_TYPES:
        raise HsmError(f"key type {key_type} cannot MAC", code="04")


def _direct_message(message: bytes) -> bytes:
    if len(message) > _MAX_MESSAGE:
        raise HsmError("message too long", code="15")
    return bytes(message)


def _direct_mac_request(key_type: str, key_field: str, message: bytes, algorithm: str,
                        padding: int, mac_hex_length: int) -> MacRequest:
    """The MacRequest the M6/M8 parser would build, with the parser's error codes."""
    if (algorithm not in _MAC_ALGORITHMS or padding not in _MAC_PADDINGS
            or mac_hex_length not in (8, 16)):
        raise HsmError("invalid MAC mode", code="15")
    _direct_mac_key_type(key_type)
    return MacRequest(mac_hex_length, algorithm, padding, key_type, key_field,
                      _direct_message(message))


def _direct_m6(call: Call, key_type: str, key_field: str, message: bytes, algorithm: str,
               padding: int, mac_hex_length: int) -> str:
    req = _direct_mac_request(key_type, key_field, message, algorithm, padding, mac_hex_length)
    return _compute_mac(call, req)


def _direct_m8(call: Call, key_type: str, key_field: str, message: bytes, algorithm: str,
               padding: int, mac: str) -> None:
    if len(mac) not in (8, 16) or not crypto.is_hex(mac):
        raise HsmError("MAC must be 8H or 16H", code="15")
    req = _direct_mac_request(key_type, key_field, message, algorithm, padding, len(mac))
    check_mac(call, req, mac.upper())


def _direct_y0(call: Call, key_type: str, key_field: str, message: bytes) -> bytes:
    _direct_mac_key_type(key_type)
    return cup_mac(call, key_type, key_field, _direct_message(message))


def _direct_y2(call: Call, key_type: str, key_field: str, message: bytes, mac: bytes) -> None:
    _direct_mac_key_type(key_type)
    if len(mac) != 8 or not crypto.is_hex(mac.decode("latin-1")):
        raise HsmError("MAC must be 8H", code="15")
    check_cup_mac(call, key_type, key_field, _direct_message(message), mac.upper())


def _direct_pvv(call: Call, pin_key_type: str, pin_key_field: str, pvk_field: str,
                pinblock: bytes, fmt: str, account: str, pvki: str, pvv: str) -> None:
    if (len(pinblock) != crypto.DES_BLOCK or not _digits(account, 12)
            or not _digits(pvki, 1) or not _digits(pvv, 4)):
        raise HsmError("malformed PIN verification fields", code="15")
    if fmt not in crypto.DES_PINBLOCK_FORMATS:
        raise HsmError(f"PIN block format {fmt} not supported (48 needs an AES key)", code="23")
    check_pvv(call, pin_key_type, pin_key_field, pvk_field, bytes(pinblock), fmt, account,
              pvki, pvv)


# --------------------------------------------------------------------------- engine


class HsmEngine:
    """An LMK set plus the dispatch table: the whole HSM, without any I/O."""

    def __init__(self, lmk: LmkSet, header_length: int = DEFAULT_HEADER_LENGTH, *,
                 policy: SecurityPolicy | None = None, authorised: bool = False) -> None:
        self.lmk = lmk
        self.header_length = header_length
        self.policy = policy or DEFAULT_POLICY
        self._authorised_until: list[float | None] = [None]  # shared with header copies
        if lmk.is_test:
            log.warning("%s", "test LMK loaded: keys under it are publicly known")
        if self.policy.names():
            audit_log.warning("legacy security settings on: %s", ",".join(self.policy.names()))
        if self.policy.separate_002:
            audit_log.warning("key type 002 separation on: TPK 70D, TMK 80D, PVK 002")
        if authorised:
            self.authorise(None, who="start")

    @classmethod
    def test(cls, header_length: int = DEFAULT_HEADER_LENGTH, *, authorised: bool = True,
             policy: SecurityPolicy | None = None) -> HsmEngine:
        """An engine on the published test LMK, Authorised by default (a lab's embedded HSM:
        under a published LMK the Authorised state protects nothing)."""
        return cls(load_lmk("test"), header_length, policy=policy, authorised=authorised)

    def with_header_length(self, header_length: int) -> HsmEngine:
        """The same HSM (LMK, policy, Authorised state) with another header length."""
        other = copy.copy(self)
        other.header_length = header_length
        return other

    # ------------------------------------------------------------------ Authorised state

    def authorise(self, seconds: float | None = None, *, who: str = "console") -> None:
        """Enter the Authorised state (payShield's `A` console command): for ``seconds``, or
        until cancelled when None. Logged on the audit log."""
        self._authorised_until[0] = (float("inf") if seconds is None
                                     else time.monotonic() + seconds)
        limit = "no time limit" if seconds is None else f"for {seconds:g} s"
        audit_log.info("authorised state entered by %s, %s", who, limit)

    def cancel_authorisation(self, *, who: str = "console") -> None:
        """Leave the Authorised state (payShield's `C` console command); logged."""
        if self._authorised_until[0] is not None:
            self._authorised_until[0] = None
            audit_log.info("authorised state cancelled by %s", who)

    @property
    def authorised(self) -> bool:
        until = self._authorised_until[0]
        if until is None:
            return False
        if time.monotonic() >= until:
            self._authorised_until[0] = None
            audit_log.info("authorised state expired (time limit reached)")
            return False
        return True

    def _call(self) -> Call:
        return Call(self.lmk, policy=self.policy, authorised=self.authorised)

    def handle(self, request: bytes, client: str = "-") -> bytes:
        """HEADER + CMD + fields -> HEADER + RESP + ERR + data. Never raises."""
        split = self.header_length
        header, command = request[:split], request[split : split + 2]
        handler = COMMANDS.get(command)
        if handler is None:
            code = "40" if len(command) == 2 else "15"
            self._audit(client, command, code, [])
            return header + UNKNOWN_COMMAND_RESPONSE + code.encode()
        call = self._call()
        try:
            data, code = handler(call, Fields(request[split + 2 :])), "00"
        except (HsmError, CryptoError) as exc:
            data, code = b"", exc.code
        except Exception:  # a bug must not take the HSM down; say 15 and keep the trace
            log.exception("unexpected failure in %s", command.decode("ascii", "replace"))
            data, code = b"", "15"
        self._audit(client, command, code, call.kcvs)
        return header + response_code(command) + code.encode() + data

    # ------------------------------------------------------------------ direct API
    # The hot commands as Python calls for an in-process client: the same cores as the text
    # handlers (one implementation, two entry points), the same HsmError codes and the same
    # audit line, without encoding the request to text and parsing it back. Verifications
    # return False where the text command answers 01.

    def generate_mac(self, key_field: str, message: bytes, *, key_type: str = "003",
                     algorithm: str = "3", padding: int = 1, mac_hex_length: int = 16,
                     client: str = "-") -> str:
        """M6: the MAC, `mac_hex_length` (8 or 16) upper-case hex digits."""
        return self._direct(b"M6", client, _direct_m6, key_type, key_field, message,
                            algorithm, padding, mac_hex_length)

    def verify_mac(self, key_field: str, message: bytes, mac: str, *, key_type: str = "003",
                   algorithm: str = "3", padding: int = 1, client: str = "-") -> bool:
        """M8: True when `mac` (8H or 16H) is the message's MAC, False where M8 answers 01."""
        return self._direct_verify(b"M8", client, _direct_m8, key_type, key_field, message,
                                   algorithm, padding, mac)

    def generate_mac_cup(self, key_field: str, message: bytes, *, key_type: str = "003",
                         client: str = "-") -> bytes:
        """Y0: the UnionPay ECB MAC, 8 ASCII hex characters."""
        return self._direct(b"Y0", client, _direct_y0, key_type, key_field, message)

    def verify_mac_cup(self, key_field: str, message: bytes, mac: bytes, *,
                       key_type: str = "003", client: str = "-") -> bool:
        """Y2: True when `mac` (8 ASCII hex characters) is the message's UnionPay ECB MAC."""
        return self._direct_verify(b"Y2", client, _direct_y2, key_type, key_field, message,
                                   mac)

    def verify_pin_pvv(self, pin_key_field: str, pvk_field: str, pinblock: bytes,
                       account: str, pvki: str, pvv: str, *, pinblock_format: str = "01",
                       pin_key_type: str = "002", client: str = "-") -> bool:
        """DC (TPK, key type 002) / EC (ZPK, 001): True when the PIN matches the PVV."""
        command = b"EC" if pin_key_type == "001" else b"DC"
        return self._direct_verify(command, client, _direct_pvv, pin_key_type, pin_key_field,
                                   pvk_field, pinblock, pinblock_format, account, pvki, pvv)

    def _direct(self, command: bytes, client: str, core: Callable[..., _T], *args: object) -> _T:
        """Run a core as `handle` runs a handler: audit line, HsmError on a non-00 code."""
        call = self._call()
        try:
            result = core(call, *args)
        except HsmError as exc:
            self._audit(client, command, exc.code, call.kcvs)
            raise
        except CryptoError as exc:
            self._audit(client, command, exc.code, call.kcvs)
            raise from_crypto(exc) from None
        except Exception:  # as handle: a bug answers 15 and keeps the trace
            log.exception("unexpected failure in %s", command.decode("ascii", "replace"))
            self._audit(client, command, "15", call.kcvs)
            raise HsmError(f"HSM failed {command.decode('ascii')}", code="15") from None
        self._audit(client, command, "00", call.kcvs)
        return result

    def _direct_verify(self, command: bytes, client: str, core: Callable[..., object],
                       *args: object) -> bool:
        try:
            self._direct(command, client, core, *args)
        except HsmError as exc:
            if exc.code == "01":
                return False
            raise
        return True

    @staticmethod
    def _audit(client: str, command: bytes, code: str, kcvs: list[str]) -> None:
        if audit_log.isEnabledFor(logging.INFO):
            name = command.decode("ascii", "replace") or "--"
            kcv_text = ",".join(kcvs) or "-"
            audit_log.info("client=%s cmd=%s err=%s kcv=%s", client, name, code, kcv_text)
