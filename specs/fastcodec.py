"""The codec's fast path: plain loops over a plan built at import time from the field table.

pyiso8583 (through specs/messages.py) stays the reference codec: it defines every byte and
every error. This module only handles the common case of a well-formed message, and answers
``None`` whenever anything is unusual (a bad nibble, a length out of range, an undefined
field, a value pyiso8583 would refuse), so that the caller runs the reference path and gets
its exact result or error. Each field's plan (:class:`FieldPlan`) is derived from its
:class:`~specs.fields.FieldDef` once, and each bitmap's list of plans once per bitmap seen
(the hot kinds, sale 0200 and its 0210, repeat a handful of bitmaps), so nothing about a
field is re-typed here. tests/test_specs_fastcodec.py checks byte-identity and equal decodes
against pyiso8583 for every catalog kind and for random and mutated messages.

>>> body = encode_fast({"t": "0820", "11": "000001", "41": "12345678"})
>>> body.hex()
'082000200000008000000000013132333435363738'
>>> decode_fast(body)
({'t': '0820', '11': '000001', '41': '12345678'}, {11: (10, 13), 41: (13, 21)})
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from typing import NamedTuple

from specs.fields import FIELDS, FieldDef
from specs.framing import BITMAP_LENGTH, MTI_LENGTH

Spans = dict[int, tuple[int, int]]
"""Field number -> (start, end) of its data in the body, after any length prefix."""

LEFT_PADDED, RIGHT_PADDED, BINARY, TEXT = range(4)
"""How a field's value maps to bytes: BCD digits padded with a leading / trailing 0 nibble
when odd, hex of raw bytes, or ASCII text."""
MAX_LAYOUTS = 256
"""Bitmaps whose decoding plan is remembered (a terminal fleet uses a few dozen)."""
_FIELDS_START = MTI_LENGTH + BITMAP_LENGTH
_TRACK2 = frozenset("0123456789D")


class FieldPlan(NamedTuple):
    """What encoding or decoding one field needs, from its FieldDef."""

    number: int
    key: str
    prefix: int
    """Bytes of the BCD length prefix (0 for a fixed field)."""
    units: int
    """Fixed length, or the maximum for a variable one: digits (n, z), bytes (b) or
    characters (an, ans)."""
    mapping: int
    """LEFT_PADDED, RIGHT_PADDED, BINARY or TEXT."""
    check: Callable[[str], bool] | None
    """The dialect's character check of a decoded value (n: digits, z: digits and D)."""
    bit: int
    """The field's bit in the 64-bit primary bitmap."""


def plan_of(f: FieldDef) -> FieldPlan:
    """A field's plan, from the same attributes that build the pyiso8583 spec
    (specs/fields.py ``_pyiso_field``)."""
    if f.numeric:
        mapping = RIGHT_PADDED if f.prefix or f.left_justified else LEFT_PADDED
    else:
        mapping = BINARY if f.fmt == "b" else TEXT
    check = {"n": str.isdigit, "z": _TRACK2.issuperset}.get(f.fmt)
    return FieldPlan(f.number, str(f.number), max(len(f.prefix) - 1, 0),
                     f.max_units, mapping, check, 1 << (64 - f.number))


PLANS: dict[str, FieldPlan] = {str(n): plan_of(f) for n, f in FIELDS.items()}
"""Field key -> plan, for every field of the dialect."""
_BY_BIT = {p.number: p for p in PLANS.values()}
_layouts: dict[bytes, tuple[FieldPlan, ...]] = {}


def _layout(bitmap: bytes) -> tuple[FieldPlan, ...] | None:
    """The plans of the fields a primary bitmap names, in order; None when it names a
    secondary bitmap or a field the dialect does not define."""
    layout = _layouts.get(bitmap)
    if layout is not None:
        return layout
    bits = int.from_bytes(bitmap, "big")
    plans = []
    for number in range(1, 65):
        if bits >> (64 - number) & 1:
            plan = _BY_BIT.get(number)
            if plan is None:
                return None
            plans.append(plan)
    layout = tuple(plans)
    if len(_layouts) < MAX_LAYOUTS:
        _layouts[bitmap] = layout
    return layout


def decode_fast(body: bytes) -> tuple[dict[str, str], Spans] | None:
    """The message and its field spans as :func:`specs.messages.decode_message` would decode
    them, or None: then the reference decoder must run (it decodes it or says what is wrong)."""
    end_all = len(body)
    if end_all < _FIELDS_START or not isinstance(body, (bytes, bytearray)):
        return None
    layout = _layout(bytes(body[MTI_LENGTH:_FIELDS_START]))
    mti = body[:MTI_LENGTH].hex()
    if layout is None or not mti.isdigit():
        return None
    doc, spans, pos = {"t": mti}, {}, _FIELDS_START
    for number, key, prefix, units, mapping, check, _ in layout:
        if prefix:
            digits = body[pos : pos + prefix].hex()
            if len(digits) != 2 * prefix or not digits.isdigit():
                return None
            length = int(digits)
            if length > units:
                return None
            pos += prefix
        else:
            length = units
        end = pos + ((length + 1) // 2 if mapping <= RIGHT_PADDED else length)
        if end > end_all:
            return None
        raw = body[pos:end]
        if mapping == TEXT:
            if not raw.isascii():
                return None
            value = raw.decode("ascii")
        else:
            value = raw.hex().upper()
            if length & 1 and mapping <= RIGHT_PADDED:
                if mapping == LEFT_PADDED:
                    if value[0] != "0":
                        return None
                    value = value[1:]
                else:
                    if value[-1] != "0":
                        return None
                    value = value[:-1]
            if check is not None and not check(value):
                return None
        doc[key] = value
        spans[number] = (pos, end)
        pos = end
    if pos != end_all:
        return None
    return doc, spans


_ENCODE_FAULTS = (ValueError, TypeError, AttributeError, binascii.Error)


def encode_fast(doc: Mapping[str, str]) -> bytes | None:
    """The bytes :func:`specs.messages.encode_message` would produce, or None: then the
    reference encoder must run (it encodes the message or raises the error)."""
    plans = []
    bits = 0
    for key in doc:
        if key == "t":
            continue
        plan = PLANS.get(key)
        if plan is None:
            return None
        plans.append(plan)
        bits |= plan.bit
    plans.sort()
    try:
        mti = binascii.a2b_hex(doc["t"])
        if len(mti) != MTI_LENGTH:
            return None
        parts = [mti, bits.to_bytes(BITMAP_LENGTH, "big")]
        for _, key, prefix, units, mapping, _, _ in plans:
            value = doc[key]
            if mapping == TEXT:
                data = (value if prefix else value.ljust(units)).encode("ascii")
                length = len(data)
            elif mapping == BINARY:
                data = binascii.a2b_hex(value)
                length = len(data)
            else:
                length = len(value)
                if length & 1:
                    value = "0" + value if mapping == LEFT_PADDED else value + "0"
                data = binascii.a2b_hex(value)
            if prefix:
                if length > units:
                    return None
                parts.append(binascii.a2b_hex(f"{length:0{2 * prefix}d}"))
            elif length != units:
                return None
            parts.append(data)
    except (*_ENCODE_FAULTS, KeyError):
        return None
    return b"".join(parts)
