"""IC (EMV chip) card data of protocol.md section 8, as data: the F55 tag table, which tags a
chip request must carry, the ARQC input order, the reversal's AAC tags, and the checks and
masked views built from them. Host and terminal both use this module; the TLV codec itself is
:mod:`specs.tlv`, the cryptography lives in ``hsm_sim.emv``.

>>> tags = decode_f55(WORKED_F55)
>>> check_chip_tags(tags, "sale")["9F36"]
'0001'
>>> arqc_data(tags).hex().upper()
'000000012345000000000000015600000000000156261129001A2B3C4D7C00000107001203A0000000'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from specs.errors import ValidationError
from specs.tlv import TlvError, decode_tlv, encode_tlv

TagFormat = Literal["b", "n", "cn"]
TagSecret = Literal["", "cryptogram", "pan", "track2"]


@dataclass(frozen=True)
class EmvTag:
    """One EMV data object: lengths in bytes; ``n`` values are BCD digits, ``cn`` compressed
    numeric (digits left-justified, padded with trailing F nibbles: the PAN in 5A)."""

    tag: str
    name: str
    min_length: int
    max_length: int
    fmt: TagFormat = "b"
    secret: TagSecret = ""

    def describe(self) -> str:
        size = (f"{self.min_length}" if self.min_length == self.max_length
                else f"{self.min_length}..{self.max_length}")
        return f"{self.fmt} {size} bytes"


TAGS: dict[str, EmvTag] = {
    t.tag: t
    for t in (
        EmvTag("9F26", "application cryptogram (ARQC/TC/AAC)", 8, 8, secret="cryptogram"),
        EmvTag("9F27", "cryptogram information data", 1, 1),
        EmvTag("9F10", "issuer application data", 1, 32),
        EmvTag("9F37", "unpredictable number", 4, 4),
        EmvTag("9F36", "application transaction counter", 2, 2),
        EmvTag("95", "terminal verification results", 5, 5),
        EmvTag("9A", "transaction date YYMMDD", 3, 3, "n"),
        EmvTag("9C", "transaction type", 1, 1, "n"),
        EmvTag("9F02", "amount, authorised", 6, 6, "n"),
        EmvTag("5F2A", "transaction currency code", 2, 2, "n"),
        EmvTag("82", "application interchange profile", 2, 2),
        EmvTag("9F1A", "terminal country code", 2, 2, "n"),
        EmvTag("9F03", "amount, other", 6, 6, "n"),
        EmvTag("9F33", "terminal capabilities", 3, 3),
        EmvTag("9F34", "cardholder verification method results", 3, 3),
        EmvTag("9F35", "terminal type", 1, 1, "n"),
        EmvTag("9F1E", "interface device serial number", 8, 8),
        EmvTag("84", "dedicated file name (AID)", 5, 16),
        EmvTag("9F09", "application version number", 2, 2),
        EmvTag("91", "issuer authentication data (ARPC + ARC)", 8, 16, secret="cryptogram"),
        EmvTag("5A", "application PAN", 1, 10, "cn", secret="pan"),
        EmvTag("57", "track 2 equivalent data", 1, 19, secret="track2"),
        EmvTag("5F34", "PAN sequence number", 1, 1, "n"),
        EmvTag("50", "application label", 1, 16),
    )
}
"""Every tag the dialect names (section 8), with its length in bytes."""

REQUEST_TAGS: tuple[str, ...] = (
    "9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "5F2A", "82", "9F1A",
    "9F03",
)
"""Tags a 0200 by chip (sale, balance inquiry) must carry; missing or mis-sized: 30."""
OPTIONAL_REQUEST_TAGS: tuple[str, ...] = ("9F33", "9F34", "9F35", "9F1E", "84", "9F09")
ARQC_DATA_TAGS: tuple[str, ...] = (
    "9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36", "9F10",
)
"""The ARQC input: values concatenated in this order (9F10 whole: the IAD's own length byte
opens its value, so nothing is added)."""
REVERSAL_TAGS: tuple[str, ...] = ("9F26", "9F27", "9F36", "95", "9F10")
"""F55 of a 0400/06 after the card declined (second GENERATE AC gave an AAC)."""

TRANSACTION_TYPES: dict[str, str] = {"sale": "00", "balance": "31"}
"""9C per chip kind."""
CHIP_ENTRY_MODES: dict[str, str] = {"05": "IC (contact)", "07": "contactless"}
"""F22's first two digits for a chip read."""
IC_APPLICATION_CATEGORY = "61"
"""Header application category of a chip request (60 is magstripe)."""
CID_AAC, CID_TC, CID_ARQC = "00", "40", "80"
"""9F27 values: the three cryptogram types."""
ISSUER_AUTH_TAG = "91"
ISSUER_AUTH_LENGTH = 10
"""Tag 91 of a 0210: ARPC (8) || ARC (2, F39's ASCII characters)."""
TVR_ISSUER_AUTH_FAILED = (4, 0x40)
"""TVR byte 5 (index 4), bit 7: issuer authentication failed."""

WORKED_F55 = (
    "9F2608EEA5EECC83A08C969F2701809F100807001203A00000009F37041A2B3C4D9F360200019505"
    "00000000009A032611299C01009F02060000000123455F2A02015682027C009F1A0201569F0306000000000000"
)
"""Section 8's worked chip sale of 123.45 (ATC 0001, ARQC EEA5EECC83A08C96) as F55."""


def is_chip_entry(entry_mode: str) -> bool:
    """Whether F22 says the card was read by chip (05x contact, 07x contactless).

    >>> is_chip_entry("051"), is_chip_entry("071"), is_chip_entry("021")
    (True, True, False)
    """
    return entry_mode[:2] in CHIP_ENTRY_MODES


def is_contactless(entry_mode: str) -> bool:
    return entry_mode[:2] == "07"


def decode_f55(value: str) -> dict[str, str]:
    """F55's tags (TlvError with tag and byte position when it does not decode)."""
    return decode_tlv(value, field="55")


def encode_f55(tags: Mapping[str, str]) -> str:
    return encode_tlv(tags)


def _check_tag_value(tag: str, value: str) -> None:
    spec = TAGS.get(tag)
    if spec is None:
        return
    size = len(value) // 2
    if not spec.min_length <= size <= spec.max_length:
        raise ValidationError(f"tag {tag} ({spec.name}) has {size} bytes, wants "
                              f"{spec.describe()}", field="55")
    if spec.fmt == "n" and not value.isdigit():
        raise ValidationError(f"tag {tag} ({spec.name}) is not BCD digits", field="55")
    digits = value.upper().rstrip("F")
    if spec.fmt == "cn" and not (digits.isdigit() and digits.isascii()):
        raise ValidationError(f"tag {tag} ({spec.name}) is not compressed numeric",
                              field="55")


def check_chip_tags(tags: Mapping[str, str], kind: str,
                    required: tuple[str, ...] = REQUEST_TAGS) -> Mapping[str, str]:
    """Check the tags of a chip request of ``kind`` (response code 30 on any fault)."""
    for tag in required:
        if tag not in tags:
            raise ValidationError(f"tag {tag} ({TAGS[tag].name}) missing", field="55")
    for tag, value in tags.items():
        _check_tag_value(tag, value)
    want = TRANSACTION_TYPES.get(kind)
    if want is not None and "9C" in tags and tags["9C"] != want:
        raise ValidationError(f"tag 9C is {tags['9C']}, {kind} wants {want}", field="55")
    return tags


def parse_chip_request(doc: Mapping[str, str], kind: str) -> dict[str, str]:
    """F55 of a chip request, decoded and checked: F23 present, every mandatory tag sized.

    Raises :class:`specs.errors.SpecError` (response code 30) naming field and tag.
    """
    if "23" not in doc:
        raise ValidationError("a chip request carries the card sequence number", field="23")
    if "55" not in doc:
        raise ValidationError("a chip request carries the IC card data", field="55")
    try:
        tags = decode_f55(doc["55"])
    except TlvError as exc:  # a request that decodes but whose F55 does not: 30, as a field
        raise ValidationError(f"F55 does not decode: {exc}", field="55") from None
    check_chip_tags(tags, kind)
    return tags


def arqc_data(tags: Mapping[str, str]) -> bytes:
    """The ARQC input of section 8 from a request's tags (41 bytes with an 8-byte IAD)."""
    return bytes.fromhex("".join(tags[tag] for tag in ARQC_DATA_TAGS))


def amount_matches(tags: Mapping[str, str], amount: str) -> bool:
    """9F02 against F4 (balance inquiries carry no F4: 9F02 must be zero)."""
    return int(tags.get("9F02", "0") or "0") == int(amount or "0")


def issuer_auth_data(arpc: bytes, response_code: str) -> str:
    """Tag 91's value: ARPC || ARC (F39's two ASCII characters)."""
    return (arpc + response_code.encode("ascii")).hex().upper()


def split_issuer_auth_data(value: str) -> tuple[bytes, str]:
    """(ARPC, ARC) from tag 91's value; TlvError when it is not 10 bytes."""
    raw = bytes.fromhex(value)
    if len(raw) != ISSUER_AUTH_LENGTH:
        raise TlvError(f"{len(raw)} bytes, wants {ISSUER_AUTH_LENGTH}", tag=ISSUER_AUTH_TAG,
                       position=0)
    return raw[:8], raw[8:].decode("ascii", "replace")


SENSITIVE_TAGS = frozenset({"56", "57", "5A", "5F20", "5F24", "9F1F", "9F20", "9F6B"})
"""Cardholder data tags masked wherever F55 is shown (track 1/2 and their equivalents, PAN,
name, expiry, discretionary data), whether or not the dialect's tag table lists them."""


def _shown(tag: str, value: str, reveal: bool) -> str:
    """A tag's value as logs and traces may show it.

    >>> _shown("5A", "6222021234567890128F", False), _shown("5A", "62220212", False)
    ('622202*********0128', '[4 bytes]')
    >>> _shown("9F6B", "6222021234567890128D30121010000000000F", False)
    '[19 bytes]'
    """
    spec = TAGS.get(tag)
    secret = spec.secret if spec is not None else ""
    if tag in SENSITIVE_TAGS and secret != "pan":
        secret = secret or "cardholder"
    if not secret or (reveal and secret == "cryptogram"):
        return value
    digits = value.rstrip("F")
    if secret == "pan" and len(digits) > 10:
        return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]
    return f"[{len(value) // 2} bytes]"


def format_f55(value: str, *, reveal_cryptograms: bool = False) -> list[str]:
    """One line per tag, named; PAN and track data masked, cryptograms shown only on request
    (a terminal's ``--trace``). Undecodable data is reported, never raised.

    >>> print("\\n".join(format_f55("9F360200019F2701809F2608EEA5EECC83A08C96")))
    9F36 application transaction counter            0001
    9F27 cryptogram information data                80
    9F26 application cryptogram (ARQC/TC/AAC)       [8 bytes]
    """
    try:
        tags = decode_f55(value)
    except TlvError as exc:
        return [f"[F55 of {len(value) // 2} bytes does not decode: {exc}]"]
    lines = []
    for tag, tag_value in tags.items():
        name = TAGS[tag].name if tag in TAGS else "(not in the dialect)"
        lines.append(f"{tag:<4} {name:<42} {_shown(tag, tag_value, reveal_cryptograms)}")
    return lines


def masked_f55(value: str) -> str:
    """A one-line, log-safe F55: tags with masked values, cryptograms as lengths."""
    try:
        tags = decode_f55(value)
    except TlvError:
        return f"[EMV data, {len(value) // 2} bytes, undecodable]"
    return " ".join(f"{t}={_shown(t, v, False)}" for t, v in tags.items())
