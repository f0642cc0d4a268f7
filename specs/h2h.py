"""The host-to-host link dialect "cup-h2h" (protocol.md section 9) as data, and its codec.

Framing is ``LEN(2, binary) | MTI | BITMAP | FIELDS``: no TPDU, no header. Field encodings are
those of section 2 (specs/fields.py), plus the two fields only the link carries: 7
(transmission date and time, n10) and 33 (forwarding institution id, n..11 LLVAR).
Which fields each message carries, which MTIs are MACed and the network management codes are
tables here; host/links.py and host/upstream.py build and check messages through them.

>>> decode_h2h(encode_h2h({"t": "0800", "7": "1130002700", "11": "000001", "32": "48020000",
...                        "33": "48020000", "60": "00000000001"}))["60"]
'00000000001'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import iso8583

from specs.errors import DecodeError, EncodeError, FramingError, ValidationError
from specs.fields import FIELDS, MAC_FIELD, FieldDef, _pyiso_field

H2H_FIELDS: dict[int, FieldDef] = {
    **FIELDS,
    7: FieldDef(7, "transmission date and time MMDDhhmmss", "n", 10),
    33: FieldDef(33, "forwarding institution id", "n", 11, "LL"),
}
"""Section 2's fields plus the link's own 7 and 33."""


def _build_spec() -> dict[str, dict[str, Any]]:
    spec: dict[str, dict[str, Any]] = {
        "h": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 0, "desc": "none"},
        "t": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 2, "desc": "MTI"},
        "p": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "Bitmap"},
    }
    for number, f in sorted(H2H_FIELDS.items()):
        spec[str(number)] = _pyiso_field(f)
    return spec


H2H_SPEC: dict[str, dict[str, Any]] = _build_spec()
"""pyiso8583 spec of cup-h2h bodies (MTI and bitmap onwards)."""

LENGTH_PREFIX = 2
MAX_H2H_FRAME = 4096
"""A link frame longer than this is refused (the link is closed)."""

# network management (60.3)
SIGN_ON = "001"
KEY_REQUEST = "101"
ECHO = "301"
MANAGEMENT_CODES = frozenset({SIGN_ON, KEY_REQUEST, ECHO})

# reversal reasons (0420 F39)
REVERSAL_TIMEOUT = "98"
REVERSAL_TERMINAL = "06"
REVERSAL_MAC = "A0"

MACED_MTIS = frozenset({"0200", "0210", "0220", "0230", "0420", "0421", "0430"})
"""Messages carrying F64 under the link's ZAK; management carries none."""

MANAGEMENT_REQUEST = ("7", "11", "32", "33", "60")
MANAGEMENT_RESPONSE = (*MANAGEMENT_REQUEST, "39")
FINANCIAL_REQUEST = ("2", "3", "4", "7", "11", "12", "13", "14", "22", "23", "25", "32", "33",
                     "35", "37", "41", "42", "49", "52", "53", "55", "60", "61", "64")
"""What a 0200/0220 may carry (section 9); 2 3 4 7 11 32 37 41 42 49 are mandatory."""
FINANCIAL_MANDATORY = ("2", "3", "4", "7", "11", "32", "37", "41", "42", "49")
RESPONSE_ECHO = ("2", "3", "4", "7", "11", "32", "33", "37", "41", "42", "49")
"""Request fields a 0210/0230/0430 echoes unchanged."""
REVERSAL_FIELDS = ("2", "3", "4", "7", "11", "32", "33", "37", "41", "42", "49")
"""The original's fields a 0420 repeats (plus 39 = reason and 64)."""

KEY_DATA_LENGTH = 40
"""0810/101 F62: ZPK under ZMK 16 | CV 4 | ZAK under ZMK 16 | CV 4 (section 4 layout)."""


def response_mti(mti: str) -> str:
    """0200 -> 0210, 0421 -> 0430 (a repeat is answered like the first)."""
    if mti == "0421":
        return "0430"
    return f"{int(mti) + 10:04d}"


def encode_h2h(doc: Mapping[str, str]) -> bytes:
    """The body (MTI onwards) of a link message; ValidationError when a field does not fit."""
    try:
        raw, _ = iso8583.encode(dict(doc), H2H_SPEC)
    except iso8583.EncodeError as exc:
        raise EncodeError(str(exc), field=getattr(exc, "field", None) or "?") from None
    return bytes(raw)


def decode_h2h(body: bytes) -> dict[str, str]:
    """A link body as a field dict; DecodeError with field and position when it does not."""
    try:
        doc, _ = iso8583.decode(body, H2H_SPEC)
    except iso8583.DecodeError as exc:
        raise DecodeError(str(exc), field=exc.field or "?", position=exc.pos) from None
    except (KeyError, ValueError, IndexError) as exc:  # e.g. a bitmap naming a field we lack
        raise DecodeError(f"undecodable link body ({type(exc).__name__} {exc})", field="?",
                          position=0) from None
    return {k: v for k, v in doc.items() if k not in ("h", "p", "b")}


def mac_block_of(body: bytes) -> bytes:
    """The MAC input of a MACed body: MTI .. the last field before 64 (bit 64 set)."""
    return body[:-8]


def mac_of(body: bytes) -> bytes:
    return body[-8:]


def with_mac_bit(doc: Mapping[str, str]) -> bytes:
    """Encode ``doc`` with a zero F64 so the MAC block (with bit 64 set) can be cut from it."""
    return encode_h2h({**doc, MAC_FIELD: "00" * 8})


def frame_h2h(body: bytes) -> bytes:
    """LEN(2, binary big-endian) + body."""
    if len(body) > MAX_H2H_FRAME:
        raise FramingError(f"link frame of {len(body)} bytes is over {MAX_H2H_FRAME}",
                           field="length", position=0)
    return len(body).to_bytes(LENGTH_PREFIX, "big") + body


class H2hFrameDecoder:
    """Bytes in, whole bodies out (sans-IO): feed what the socket gave, take frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        while len(self._buffer) >= LENGTH_PREFIX:
            length = int.from_bytes(self._buffer[:LENGTH_PREFIX], "big")
            if length > MAX_H2H_FRAME or length < 10:
                raise FramingError(f"link frame length {length} out of range", field="length",
                                   position=0)
            if len(self._buffer) < LENGTH_PREFIX + length:
                break
            out.append(bytes(self._buffer[LENGTH_PREFIX:LENGTH_PREFIX + length]))
            del self._buffer[:LENGTH_PREFIX + length]
        return out


def field60_management(code: str) -> str:
    """60.1 ``00``, 60.2 ``000000``, 60.3 the code."""
    return f"00000000{code}"


def management_code(doc: Mapping[str, str]) -> str:
    return doc.get("60", "")[8:11]


def check_financial_request(doc: Mapping[str, str]) -> None:
    """Mandatory fields present and nothing outside section 9's list (ValidationError, 30)."""
    for key in FINANCIAL_MANDATORY:
        if key not in doc:
            raise ValidationError(f"field {key} missing", field=key)
    for key in doc:
        if key != "t" and key not in FINANCIAL_REQUEST:
            raise ValidationError(f"field {key} not allowed on the link", field=key)


def check_echo(request: Mapping[str, str], response: Mapping[str, str]) -> None:
    """A response must echo the request's 2 3 4 7 11 32 37 41 42 49 (ValidationError)."""
    for key in RESPONSE_ECHO:
        if key in request and response.get(key) != request[key]:
            raise ValidationError(f"response field {key} does not echo the request", field=key)
