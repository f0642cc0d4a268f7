"""Field table of the cup-pos dialect (protocol.md section 2), and the pyiso8583 spec built from it.

Each field is declared once, as format x length x prefix x justification; the pyiso8583
spec dict is derived from that table, so an encoding rule lives in exactly one place.

>>> SPEC["35"]["len_count"], SPEC["35"]["right_pad"]
('nibbles', '0')
>>> SPEC["22"]["right_pad"]  # n3 entry mode is left-justified: "021" -> 02 10
'0'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["n", "z", "an", "ans", "b"]
Prefix = Literal["", "LL", "LLL"]
Secret = Literal["", "pan", "track2", "pinblock", "keys", "mac", "emv"]


@dataclass(frozen=True)
class FieldDef:
    """One ISO 8583 field: ``length`` is digits for n/z, characters for an/ans, bits for fixed
    b fields (b64) and bytes for variable ones (b...255), as protocol.md writes them."""

    number: int
    name: str
    fmt: Format
    length: int
    prefix: Prefix = ""
    left_justified: bool = False
    secret: Secret = ""

    @property
    def numeric(self) -> bool:
        return self.fmt in ("n", "z")

    @property
    def max_units(self) -> int:
        """Maximum length in the unit the field is counted in (digits, characters or bytes)."""
        return self.length // 8 if self.fmt == "b" and not self.prefix else self.length

    def describe(self) -> str:
        """The field's format as protocol.md writes it, e.g. ``n..19 LLVAR``."""
        if self.prefix == "":
            return f"{self.fmt}{self.length}"
        dots = ".." if self.prefix == "LL" else "..."
        return f"{self.fmt}{dots}{self.length:0{len(self.prefix)}d} {self.prefix}VAR"


FIELDS: dict[int, FieldDef] = {
    f.number: f
    for f in (
        FieldDef(2, "primary account number", "n", 19, "LL", secret="pan"),
        FieldDef(3, "processing code", "n", 6),
        FieldDef(4, "amount, minor units", "n", 12),
        FieldDef(11, "system trace audit number", "n", 6),
        FieldDef(12, "host local time hhmmss", "n", 6),
        FieldDef(13, "host local date MMDD", "n", 4),
        FieldDef(14, "expiry YYMM", "n", 4, secret="pan"),
        FieldDef(15, "settlement date MMDD", "n", 4),
        FieldDef(22, "POS entry mode", "n", 3, left_justified=True),
        FieldDef(23, "card sequence number", "n", 3),
        FieldDef(25, "POS condition code", "n", 2),
        FieldDef(26, "max PIN length", "n", 2),
        FieldDef(32, "acquirer institution id", "n", 11, "LL"),
        FieldDef(35, "track 2", "z", 37, "LL", secret="track2"),
        FieldDef(37, "retrieval reference number", "an", 12),
        FieldDef(38, "authorisation code", "an", 6),
        FieldDef(39, "response code", "an", 2),
        FieldDef(41, "terminal id", "ans", 8),
        FieldDef(42, "merchant id", "ans", 15),
        FieldDef(44, "issuer and acquirer ids", "an", 25, "LL"),
        FieldDef(48, "settlement totals / batch upload", "n", 322, "LLL"),
        FieldDef(49, "currency code", "an", 3),
        FieldDef(52, "PIN block", "b", 64, secret="pinblock"),
        FieldDef(53, "security control", "n", 16),
        FieldDef(54, "balance amounts", "an", 20, "LLL"),
        FieldDef(55, "EMV data", "b", 255, "LLL", secret="emv"),
        FieldDef(60, "reserved private: type, batch, network code", "n", 17, "LLL"),
        FieldDef(61, "original data: batch, trace, date", "n", 29, "LLL"),
        FieldDef(62, "key data", "b", 512, "LLL", secret="keys"),
        FieldDef(63, "operator / card organisation", "ans", 63, "LLL"),
        FieldDef(64, "message authentication code", "b", 64, secret="mac"),
    )
}

def _pyiso_field(f: FieldDef) -> dict[str, Any]:
    """Compose one pyiso8583 field spec from encoding x prefix x padding."""
    spec: dict[str, Any] = {
        "len_enc": "bcd",
        "len_type": {"": 0, "LL": 1, "LLL": 2}[f.prefix],
        "desc": f.name,
    }
    if f.numeric:
        spec.update(data_enc="b", len_count="nibbles", max_len=f.length)
        if f.prefix or f.left_justified:
            spec["right_pad"] = "0"
        else:
            spec["left_pad"] = "0"
    elif f.fmt == "b":
        spec.update(data_enc="b", len_count="bytes", max_len=f.max_units)
    else:
        spec.update(data_enc="ascii", len_count="bytes", max_len=f.length)
    return spec


def _build_spec() -> dict[str, dict[str, Any]]:
    spec: dict[str, dict[str, Any]] = {
        "h": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 0, "desc": "none"},
        "t": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 2, "desc": "MTI"},
        "p": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "Bitmap"},
    }
    for number, f in FIELDS.items():
        spec[str(number)] = _pyiso_field(f)
    return spec


SPEC: dict[str, dict[str, Any]] = _build_spec()
"""pyiso8583 spec of the cup-pos dialect: MTI and bitmap onwards (TPDU and header are framing)."""

MAC_FIELD = "64"
MAC_LENGTH = 8
