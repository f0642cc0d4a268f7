"""Masked rendering of messages for logs and traces.

PANs show first 6 / last 4; track 2, PIN block, key data, EMV data and MAC are never shown,
only their presence and length. Expiry dates are hidden too (they belong to the card data).

>>> mask_pan("6222021234567890128")
'622202*********0128'
>>> print(format_message({"t": "0200", "35": "6222021234567890128D3012101", "52": "00" * 8}))
MTI  0200
F35  track 2                            [track 2, 27 digits, PAN 622202*********0128]
F52  PIN block                          [PIN block, 8 bytes]
"""

from __future__ import annotations

from collections.abc import Mapping

from specs.codes import describe_code
from specs.composite import TOTALS_DIGITS, decode_upload_records
from specs.emv import masked_f55
from specs.errors import SpecError
from specs.fields import FIELDS


def mask_pan(pan: str) -> str:
    """First 6 and last 4 digits; shorter inputs are masked entirely but for the last 4."""
    if len(pan) <= 10:
        return "*" * max(len(pan) - 4, 0) + pan[-4:]
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def pan_of(doc: Mapping[str, str]) -> str:
    """The PAN of a message: F2, else the digits of track 2 before the separator."""
    if "2" in doc:
        return doc["2"]
    return doc.get("35", "").split("D")[0].split("=")[0]


def _masked_f48(value: str) -> str:
    """Totals and end counts are shown; upload records carry PANs, which are masked."""
    if len(value) in (TOTALS_DIGITS, 4):
        return value
    try:
        records = decode_upload_records(value)
    except SpecError:
        return f"[{len(value)} digits, not shown]"
    shown = ", ".join(f"{r.trace}/{mask_pan(r.pan)}/{r.amount}" for r in records)
    return f"{len(records)} records: {shown}"


def _masked_value(key: str, value: str) -> str:
    if key == "48":
        return _masked_f48(value)
    secret = FIELDS[int(key)].secret
    if secret == "pan" and key == "2":
        return mask_pan(value)
    if secret == "pan":
        return "****"
    if secret == "emv":
        return f"[EMV data, {len(value) // 2} bytes] {masked_f55(value)}"
    if secret == "track2":
        return f"[track 2, {len(value)} digits, PAN {mask_pan(pan_of({'35': value}))}]"
    if secret:
        label = {"pinblock": "PIN block", "keys": "key data", "mac": "MAC", "emv": "EMV data"}
        return f"[{label[secret]}, {len(value) // 2} bytes]"
    if key == "39":
        return f"{value} ({describe_code(value)})"
    return value


def masked_fields(doc: Mapping[str, str]) -> dict[str, str]:
    """A copy of the message safe to log: every secret replaced by its mask."""
    out = {"t": doc["t"]} if "t" in doc else {}
    for key in sorted((k for k in doc if k.isdigit()), key=int):
        out[key] = _masked_value(key, doc[key])
    return out


def format_message(doc: Mapping[str, str]) -> str:
    """One line per field, masked, for traces."""
    lines = [f"MTI  {doc['t']}"] if "t" in doc else []
    for key, value in masked_fields(doc).items():
        if key != "t":
            lines.append(f"F{key:<3} {FIELDS[int(key)].name:<34} {value}")
    return "\n".join(lines)


def summarize(doc: Mapping[str, str]) -> str:
    """A one-line masked summary for structured logs (MTI, processing code, STAN, TID, code, PAN).

    >>> summarize({"t": "0210", "3": "000000", "11": "000002", "41": "12345678", "39": "00"})
    'mti=0210 pc=000000 stan=000002 tid=12345678 rc=00'
    """
    parts = [f"mti={doc.get('t', '?')}"]
    for label, key in (("pc", "3"), ("stan", "11"), ("tid", "41"), ("amount", "4"), ("rc", "39")):
        if key in doc:
            parts.append(f"{label}={doc[key].strip()}")
    pan = pan_of(doc)
    if pan:
        parts.append(f"pan={mask_pan(pan)}")
    return " ".join(parts)
