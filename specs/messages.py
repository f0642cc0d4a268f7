"""Encode, decode, build and check cup-pos messages from the field table and the catalog.

A message is a ``dict[str, str]``: ``"t"`` is the MTI, ``"2"``..``"64"`` the fields as pyiso8583
decodes them (digits for n, ``D`` for the track-2 separator, upper-case hex for b fields,
text for an/ans). Fixed an/ans values shorter than their field are space-padded on encoding.

>>> body = encode_message({"t": "0820", "11": "000001", "41": "12345678",
...                        "42": "123456789012345", "60": "00000001301"})
>>> decode_message(body)["60"]
'00000001301'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import iso8583

from specs.catalog import CHIP_VARIANTS, COPIED_FIELDS, KINDS, MessageKind, identify_request
from specs.codes import APPROVED, NO_MAC_CODES
from specs.composite import Field60, encode_field60
from specs.emv import is_chip_entry, parse_chip_request
from specs.errors import DecodeError, EncodeError, ValidationError
from specs.fastcodec import Spans, decode_fast, encode_fast
from specs.fields import FIELDS, MAC_FIELD, MAC_LENGTH, SPEC
from specs.framing import BITMAP_LENGTH, MTI_LENGTH

Message = dict[str, str]
_HEX = frozenset("0123456789ABCDEF")
_TRACK2 = frozenset("0123456789D")
_CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {}
"""Field key -> (character check, what it wants) for n, z and b fields, from FIELDS."""
for _f in FIELDS.values():
    if _f.fmt == "n":
        _CHECKS[str(_f.number)] = (str.isdigit, "BCD digits")
    elif _f.fmt == "z":
        _CHECKS[str(_f.number)] = (_TRACK2.issuperset, "BCD digits")
    elif _f.fmt == "b":
        _CHECKS[str(_f.number)] = (_HEX.issuperset, "hex")
_PAD_TO = {str(f.number): f.length for f in FIELDS.values()
           if f.fmt in ("an", "ans") and not f.prefix}
"""Fixed an/ans fields -> their length (space-padded on encoding)."""
_KNOWN = frozenset(str(n) for n in FIELDS)
_NOT_FIELDS = frozenset({"t", "h", "p"})
"""Message keys that are not data fields (MTI, header, bitmap)."""
_UNDEFINED_BITS = sum(1 << (64 - n) for n in range(2, 65) if n not in FIELDS)
"""Bitmap bits (fields 2..64) the dialect does not define."""


def _field_positions(doc_enc: Mapping[str, Mapping[str, bytes]], offset: int) -> dict[str, int]:
    """Byte offset of each decoded field's data (after its length prefix)."""
    positions, pos = {}, offset + MTI_LENGTH + BITMAP_LENGTH
    for key in sorted((k for k in doc_enc if k.isdigit()), key=int):
        pos += len(doc_enc[key]["len"])
        positions[key] = pos
        pos += len(doc_enc[key]["data"])
    return positions


def _check_characters(key: str, value: str, position: int) -> None:
    check = _CHECKS.get(key)
    if check is not None and not check[0](value):
        raise DecodeError(f"field {key} is not {check[1]}", field=key, position=position)


def _check_bitmap(bitmap: bytes, position: int) -> None:
    undefined = int.from_bytes(bitmap, "big") & _UNDEFINED_BITS
    if undefined:
        number = 65 - undefined.bit_length()  # the lowest-numbered such field
        raise DecodeError(f"bitmap names field {number}, not in the dialect",
                          field=str(number), position=position + (number - 1) // 8)


def decode_message(body: bytes, *, offset: int = 0) -> Message:
    """Decode MTI + bitmap + fields; ``offset`` is added to reported byte positions.

    Any fault (truncation, secondary bitmap, undefined field, bad BCD nibble, trailing bytes)
    raises :class:`DecodeError` naming the field and byte position, with the fields decoded
    before the fault in its ``partial``.
    """
    return decode_with_spans(body, offset=offset)[0]


def decode_with_spans(body: bytes, *, offset: int = 0) -> tuple[Message, Spans]:
    """:func:`decode_message` and where each field's data lies in ``body`` (as
    :func:`field_spans`). Well-formed messages take the fast path (specs/fastcodec.py); the
    rest, and every error, come from the reference decoder."""
    fast = decode_fast(body)
    if fast is not None:
        return fast
    doc = _decode_checked(body, offset)
    return doc, field_spans(body)


def _decode_checked(body: bytes, offset: int) -> Message:
    """The reference decoder (pyiso8583 plus the dialect's checks); every error comes from here."""
    try:
        return _decode_reference(body, offset)
    except DecodeError as exc:
        exc.partial = _salvage(body)
        raise


def _decode_reference(body: bytes, offset: int) -> Message:
    if len(body) < MTI_LENGTH + BITMAP_LENGTH:
        raise DecodeError("message shorter than MTI + bitmap", field="t", position=offset)
    if body[MTI_LENGTH] & 0x80:
        raise DecodeError("secondary bitmap not allowed (no field above 64)",
                          field="p", position=offset + MTI_LENGTH)
    _check_bitmap(body[MTI_LENGTH : MTI_LENGTH + BITMAP_LENGTH], offset + MTI_LENGTH)
    try:
        doc, doc_enc = iso8583.decode(body, SPEC)
    except iso8583.DecodeError as exc:
        field = "p" if "not defined" in exc.msg.lower() else exc.field
        raise DecodeError(exc.msg, field=field, position=offset + exc.pos) from None
    except (ValueError, KeyError, IndexError) as exc:
        raise DecodeError(f"undecodable: {exc}", field="?", position=offset) from None
    if not doc["t"].isdigit():
        raise DecodeError("MTI is not BCD", field="t", position=offset)
    positions = _field_positions(doc_enc, offset)
    for key, pos in positions.items():
        _check_characters(key, doc[key], pos)
    doc.pop("h", None)
    doc.pop("p", None)
    return doc


def _salvage(body: bytes) -> Message:
    """What pyiso8583 decodes of a faulty body: every field up to the first it cannot decode
    (all of them when only the dialect's checks failed)."""
    try:
        doc, _ = iso8583.decode(body, SPEC)
    except iso8583.DecodeError as exc:
        doc = dict(exc.doc_dec)
        doc.pop(exc.field, None)
    except Exception:
        return {}
    return {k: v for k, v in doc.items() if k not in ("h", "p") and isinstance(v, str)}


def field_spans(body: bytes) -> dict[int, tuple[int, int]]:
    """Where each field's data lies in an encoded body (MTI onwards): number -> (start, end),
    after any length prefix. A locator for fast paths that patch or compare raw bytes (the
    load generators); decoding is :func:`decode_message`'s. Raises :class:`DecodeError` for
    anything it cannot walk; values are not checked.

    >>> field_spans(bytes.fromhex("0820" "0020000000800000" "000001") + b"12345678")
    {11: (10, 13), 41: (13, 21)}
    """
    if len(body) < MTI_LENGTH + BITMAP_LENGTH:
        raise DecodeError("message shorter than MTI + bitmap", field="t", position=0)
    bits = int.from_bytes(body[MTI_LENGTH : MTI_LENGTH + BITMAP_LENGTH], "big")
    pos, spans = MTI_LENGTH + BITMAP_LENGTH, {}
    for number in range(1, 65):
        if not bits >> (64 - number) & 1:
            continue
        f = FIELDS.get(number)
        if f is None:
            raise DecodeError(f"field {number} is not in the dialect", field=str(number),
                              position=MTI_LENGTH)
        if f.prefix:
            width = len(f.prefix) - 1
            digits = body[pos : pos + width].hex()
            if len(digits) != 2 * width or not digits.isdigit():
                raise DecodeError("bad length prefix", field=str(number), position=pos)
            pos += width
            size = (int(digits) + 1) // 2 if f.numeric else int(digits)
        else:
            size = (f.length + 1) // 2 if f.numeric else f.max_units
        spans[number] = (pos, pos + size)
        pos += size
    if pos != len(body):
        raise DecodeError("fields do not fill the message", field="?", position=min(pos, len(body)))
    return spans


def _padded(doc: Mapping[str, str]) -> Message:
    out = dict(doc)
    for key, value in doc.items():
        width = _PAD_TO.get(key)
        if width is not None:
            out[key] = value.ljust(width)
        elif key not in _KNOWN and key.isdigit():
            raise EncodeError(f"field {key} is not in the cup-pos dialect", field=key)
    return out


def encode_message(doc: Mapping[str, str]) -> bytes:
    """Encode a message (MTI onwards). Raises :class:`EncodeError` naming the field.
    Well-formed messages take the fast path (specs/fastcodec.py), the rest pyiso8583."""
    fast = encode_fast(doc)
    if fast is not None:
        return fast
    try:
        body, _ = iso8583.encode(_padded(doc), SPEC)
    except iso8583.EncodeError as exc:
        raise EncodeError(str(exc), field=exc.field) from None
    return bytes(body)


MacFunction = Callable[[bytes], bytes]


def encode_with_mac(doc: Mapping[str, str], generate_mac: MacFunction) -> bytes:
    """Encode with F64 = generate_mac(MAC block); the block runs from the MTI to the byte
    before F64, with bitmap bit 64 already set (protocol.md section 4)."""
    block = encode_for_mac(doc)
    return attach_mac(block, generate_mac(block))


def encode_for_mac(doc: Mapping[str, str]) -> bytes:
    """The MAC block of ``doc`` encoded with F64 (whatever F64 ``doc`` has is replaced): for
    callers that get the MAC asynchronously, then finish with :func:`attach_mac`."""
    placeholder = dict(doc)
    placeholder[MAC_FIELD] = "00" * MAC_LENGTH
    return mac_block(encode_message(placeholder))


def attach_mac(block: bytes, mac: bytes) -> bytes:
    """The encoded message: a block from :func:`encode_for_mac` followed by its 8-byte MAC."""
    if len(mac) != MAC_LENGTH:
        raise EncodeError("MAC must be 8 bytes", field=MAC_FIELD)
    return block + mac


def mac_block(body: bytes) -> bytes:
    """The bytes a MAC covers, from an encoded message that ends with F64."""
    return body[:-MAC_LENGTH]


def message_mac(body: bytes) -> bytes:
    """The F64 bytes of an encoded message that ends with F64."""
    return body[-MAC_LENGTH:]


def field60_for(kind: MessageKind, batch: str) -> str:
    """F60 of a request of ``kind`` in ``batch``."""
    if kind.type_code is None:
        raise ValidationError("a reversal repeats the original's 60", field="60")
    return encode_field60(Field60(kind.type_code, batch, kind.network_code))


def _require(doc: Mapping[str, str], mandatory: frozenset[str], allowed: frozenset[str]) -> None:
    keys = doc.keys()
    if mandatory <= keys and keys - allowed <= _NOT_FIELDS:
        return
    for key in sorted(mandatory, key=int):
        if key not in doc:
            raise ValidationError(f"mandatory field {key} is missing", field=key)
    for key in sorted((k for k in doc if k.isdigit()), key=int):
        if key not in allowed:
            raise ValidationError(f"field {key} is not expected here", field=key)


@dataclass(frozen=True)
class _KindSets:
    """What checking and answering a kind needs, computed once per kind."""

    request_allowed: frozenset[str]
    echo: tuple[str, ...]
    response_mti: str
    response_allowed: frozenset[str]
    response_checked: frozenset[str]


_KIND_SETS: dict[MessageKind, _KindSets] = {}


def _sets(kind: MessageKind) -> _KindSets:
    sets = _KIND_SETS.get(kind)
    if sets is None:
        allowed = kind.response_mandatory | kind.response_on_approval | kind.response_optional
        sets = _KindSets(kind.request_mandatory | kind.request_optional,
                         (*kind.echo_fields(), *COPIED_FIELDS), kind.response_mti,
                         allowed, allowed | {MAC_FIELD, "4"})
        _KIND_SETS[kind] = sets
    return sets


def validate_request(doc: Mapping[str, str]) -> MessageKind:
    """Identify a request and check its fields against the catalog (error code 30/40)."""
    kind = identify_request(doc)
    _require(doc, kind.request_mandatory, _sets(kind).request_allowed)
    if kind.condition_code is not None and doc.get("25") != kind.condition_code:
        raise ValidationError("condition code must be 00", field="25")
    if kind.type_code is not None and doc["60"][0:2] != kind.type_code:
        raise ValidationError(f"60.1 must be {kind.type_code} for {kind.name}", field="60")
    if "35" not in doc and kind.financial and kind.name != "reversal" and "2" not in doc:
        raise ValidationError("card data missing: neither PAN nor track 2", field="2")
    if ("52" in doc) != ("53" in doc):
        raise ValidationError("PIN block and security control go together", field="53")
    if kind.name in CHIP_VARIANTS and is_chip_entry(doc.get("22", "")):
        parse_chip_request(doc, kind.name)
    return kind


def build_request(kind: MessageKind | str, fields: Mapping[str, str]) -> Message:
    """A request of ``kind``: MTI, processing and condition codes filled from the catalog.

    ``fields`` gives everything else (F60 via :func:`field60_for`); the result is validated.
    """
    kind = KINDS[kind] if isinstance(kind, str) else kind
    doc: Message = {"t": kind.mti}
    if kind.processing_code is not None:
        doc["3"] = kind.processing_code
        doc["25"] = kind.condition_code or "00"
    doc.update(fields)
    validate_request(doc)
    return doc


def build_response(
    kind: MessageKind, request: Mapping[str, str], fields: Mapping[str, str]
) -> Message:
    """A response to ``request``: MTI + 10, echo fields and COPIED_FIELDS copied, then
    ``fields`` (which must include 39). Checked against the kind's response fields; F64 is
    added by the caller."""
    sets = _sets(kind)
    doc: Message = {"t": sets.response_mti}
    for key in sets.echo:
        if key in request:
            doc[key] = request[key]
    doc.update(fields)
    code = doc.get("39", "")
    mandatory = kind.response_mandatory - ({"4"} if "4" not in request else set())
    if code == APPROVED:
        mandatory = mandatory | kind.response_on_approval
    allowed = sets.response_allowed
    for key in COPIED_FIELDS:
        if key not in allowed:
            doc.pop(key, None)
    _require(doc, frozenset(mandatory) - {MAC_FIELD}, sets.response_checked)
    return doc


def response_needs_mac(kind: MessageKind, response_code: str) -> bool:
    """Whether a response of this kind with this F39 carries F64."""
    return kind.mac and response_code not in NO_MAC_CODES


def check_response(request: Mapping[str, str], response: Mapping[str, str]) -> MessageKind:
    """What a terminal checks before believing a response: MTI + 10, F39 present, every
    echo field equal to the request's, approval fields present, F64 where it must be.

    Raises :class:`ValidationError` naming the first field that is wrong. The MAC value
    itself is checked by the caller, who holds the key.
    """
    kind = identify_request(request)
    if response.get("t") != kind.response_mti:
        raise ValidationError(
            f"response MTI {response.get('t')!r} does not answer {kind.mti}", field="t"
        )
    code = response.get("39")
    if code is None:
        raise ValidationError("response code missing", field="39")
    for key in kind.echo_fields():
        if key in request and response.get(key) != request[key]:
            raise ValidationError(f"field {key} not echoed unchanged", field=key)
    if code == APPROVED:
        for key in sorted(kind.response_on_approval, key=int):
            if key not in response:
                raise ValidationError(f"approved response lacks field {key}", field=key)
    if response_needs_mac(kind, code) and MAC_FIELD not in response:
        raise ValidationError("response MAC missing", field=MAC_FIELD)
    return kind
