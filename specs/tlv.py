"""BER-TLV (ISO/IEC 8825-1 as EMV Book 3 annex B uses it): the codec under field 55.

Sans-IO and flat: a TLV list is an ordered ``dict`` of tag -> value, both upper-case hex, as
the message layer keeps binary fields. Constructed tags are carried whole (their value is not
walked). Every fault raises :class:`TlvError` carrying the tag (when known) and the byte
position inside the TLV data where decoding stopped.

>>> decode_tlv("9F2701809F360200019A03261129")
{'9F27': '80', '9F36': '0001', '9A': '261129'}
>>> encode_tlv({"9F36": "0001", "91": "3E3D17E3C39C20743030"})
'9F36020001910A3E3D17E3C39C20743030'
>>> decode_tlv("9F36030001")
Traceback (most recent call last):
...
specs.tlv.TlvError: tag 9F36: value needs 3 bytes, 2 left (field 55, byte 3)
"""

from __future__ import annotations

from collections.abc import Mapping

from specs.errors import DecodeError, EncodeError

MAX_TAG_BYTES = 3
"""Longest tag this codec reads (EMV tags are 1 or 2 bytes; 3 leaves room)."""
MAX_LENGTH_BYTES = 2
"""Longest long-form length (0x81 nn, 0x82 nnnn): F55 never exceeds 255 bytes anyway."""
_HEX = frozenset("0123456789ABCDEF")


class TlvError(DecodeError):
    """TLV data that does not decode, or a tag that breaks its rules (response code 30)."""

    def __init__(self, message: str, *, tag: str = "", position: int, field: str = "55") -> None:
        text = f"tag {tag}: {message}" if tag else message
        super().__init__(text, field=field, position=position)
        self.tag = tag


def _read_tag(data: bytes, pos: int) -> tuple[str, int]:
    start = pos
    if data[pos] in (0x00, 0xFF):
        raise TlvError(f"byte {data[pos]:02X} cannot start a tag", position=pos)
    pos += 1
    if data[start] & 0x1F == 0x1F:
        while True:
            if pos >= len(data):
                raise TlvError("tag truncated", tag=data[start:pos].hex().upper(),
                               position=pos)
            more = data[pos] & 0x80
            pos += 1
            if not more:
                break
            if pos - start >= MAX_TAG_BYTES:
                raise TlvError(f"tag longer than {MAX_TAG_BYTES} bytes",
                               tag=data[start:pos].hex().upper(), position=start)
    return data[start:pos].hex().upper(), pos


def _read_length(data: bytes, pos: int, tag: str) -> tuple[int, int]:
    if pos >= len(data):
        raise TlvError("length missing", tag=tag, position=pos)
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > MAX_LENGTH_BYTES:
        raise TlvError(f"length byte {first:02X} not allowed", tag=tag, position=pos)
    if pos + 1 + count > len(data):
        raise TlvError("length truncated", tag=tag, position=pos)
    return int.from_bytes(data[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


def decode_tlv_bytes(data: bytes, *, field: str = "55") -> dict[str, str]:
    """Decode a flat list of TLVs; a repeated tag is an error (F55 holds each tag once)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        tag_pos = pos
        tag, pos = _read_tag(data, pos)
        length, pos = _read_length(data, pos, tag)
        if pos + length > len(data):
            raise TlvError(f"value needs {length} bytes, {len(data) - pos} left", tag=tag,
                           position=pos, field=field)
        if tag in out:
            raise TlvError("tag repeated", tag=tag, position=tag_pos, field=field)
        out[tag] = data[pos : pos + length].hex().upper()
        pos += length
    return out


def decode_tlv(value: str, *, field: str = "55") -> dict[str, str]:
    """Decode TLV data given as hex (a decoded b field)."""
    if len(value) % 2 or not _HEX.issuperset(value.upper()):
        raise TlvError("not hex bytes", position=0, field=field)
    return decode_tlv_bytes(bytes.fromhex(value), field=field)


def _encode_length(length: int, tag: str) -> bytes:
    if length < 0x80:
        return bytes((length,))
    if length <= 0xFF:
        return bytes((0x81, length))
    if length <= 0xFFFF:
        return bytes((0x82,)) + length.to_bytes(2, "big")
    raise EncodeError(f"tag {tag}: value of {length} bytes too long", field="55")


def _check_tag(tag: str) -> bytes:
    try:
        raw = bytes.fromhex(tag)
    except ValueError:
        raise EncodeError(f"tag {tag!r} is not hex", field="55") from None
    if not raw:
        raise EncodeError("empty tag", field="55")
    try:
        _, end = _read_tag(raw, 0)
    except (TlvError, IndexError):
        raise EncodeError(f"tag {tag!r} is not a BER-TLV tag", field="55") from None
    if end != len(raw):
        raise EncodeError(f"tag {tag!r} is not a BER-TLV tag", field="55")
    return raw


def encode_tlv_bytes(tags: Mapping[str, str]) -> bytes:
    """Encode tag -> hex value pairs in the order given."""
    out = bytearray()
    for tag, value in tags.items():
        raw_tag = _check_tag(tag.upper())
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise EncodeError(f"tag {tag}: value is not hex", field="55") from None
        out += raw_tag + _encode_length(len(raw), tag) + raw
    return bytes(out)


def encode_tlv(tags: Mapping[str, str]) -> str:
    """Encode to upper-case hex (the value of a b field such as F55)."""
    return encode_tlv_bytes(tags).hex().upper()
