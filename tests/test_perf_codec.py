"""The fast codec of specs/messages.py against the reference (pyiso8583 + the dialect's checks):
on generated messages, valid and mutated, the fast path either gives exactly the reference's
result or steps aside (None) so that the reference decides, errors included."""

from __future__ import annotations

import random

import iso8583
import pytest

from specs.errors import DecodeError, EncodeError, SpecError
from specs.fields import FIELDS, SPEC
from specs.messages import (
    _decode_reference,
    _fast_decode,
    _fast_encode,
    _padded,
    attach_mac,
    decode_message,
    encode_for_mac,
    encode_message,
    encode_with_mac,
    mac_block,
)

CASES = 4000
TEXT = "ABCZ09 -/.az"
HEX = "0123456789ABCDEF"


def _value(rng: random.Random, number: int, sloppy: bool) -> str:
    f = FIELDS[number]
    if f.prefix:
        size = rng.randint(0 if sloppy else 1, f.max_units + (2 if sloppy else 0))
    else:
        size = f.max_units if f.fmt != "b" else f.length // 8
        if sloppy and rng.random() < 0.3:
            size += rng.choice((-1, 1))
        size = max(size, 0)
    if f.fmt in ("an", "ans"):
        text = "".join(rng.choice(TEXT) for _ in range(size))
        if not f.prefix and not sloppy:
            text = text.rstrip() or "X"
        if sloppy and rng.random() < 0.05:
            text += "é"
        return text
    if f.fmt == "b":
        alphabet = HEX + ("abcg" if sloppy else "")
        return "".join(rng.choice(alphabet) for _ in range(2 * size))
    alphabet = "0123456789" + ("D" if f.fmt == "z" else "") + ("A f" if sloppy else "")
    return "".join(rng.choice(alphabet) for _ in range(size))


def _doc(rng: random.Random, sloppy: bool) -> dict[str, str]:
    numbers = rng.sample(sorted(FIELDS), rng.randint(0, 12))
    doc = {"t": rng.choice(("0200", "0210", "0800", "0320", "0A00" if sloppy else "0400"))}
    for n in numbers:
        doc[str(n)] = _value(rng, n, sloppy)
    if sloppy and rng.random() < 0.05:
        doc["1" if rng.random() < 0.5 else "5"] = "00"
    return doc


def _reference_encode(doc: dict[str, str]) -> bytes | None:
    try:
        body, _ = iso8583.encode(_padded(doc), SPEC)
    except (iso8583.EncodeError, SpecError, ValueError, TypeError):
        return None
    return bytes(body)


def _reference_decode(body: bytes) -> dict[str, str] | None:
    try:
        return _decode_reference(body, 0)
    except DecodeError:
        return None


@pytest.mark.parametrize("sloppy", [False, True])
def test_fast_encode_is_the_reference_or_steps_aside(sloppy: bool) -> None:
    rng = random.Random(8583 + sloppy)
    taken = 0
    for _ in range(CASES):
        doc = _doc(rng, sloppy)
        fast = _fast_encode(doc)
        reference = _reference_encode(doc)
        if fast is not None:
            taken += 1
            assert fast == reference, doc
    assert taken > (CASES // 10 if sloppy else CASES - 1)


@pytest.mark.parametrize("sloppy", [False, True])
def test_fast_decode_is_the_reference_or_steps_aside(sloppy: bool) -> None:
    rng = random.Random(4000 + sloppy)
    taken = 0
    for _ in range(CASES):
        body = _reference_encode(_doc(rng, sloppy))
        if body is None:
            continue
        if sloppy:
            mutated = bytearray(body)
            for _ in range(rng.randint(1, 3)):
                what = rng.random()
                if what < 0.6 and mutated:
                    mutated[rng.randrange(len(mutated))] = rng.randrange(256)
                elif what < 0.8:
                    mutated.insert(rng.randrange(len(mutated) + 1), rng.randrange(256))
                elif mutated:
                    del mutated[rng.randrange(len(mutated)):]
            body = bytes(mutated)
        fast = _fast_decode(body)
        reference = _reference_decode(body)
        if fast is not None:
            taken += 1
            assert fast == reference, body.hex()
            assert list(fast) == list(reference)  # same field order
        elif not sloppy:
            assert reference is None or any(v == "" for v in reference.values()), body.hex()
    assert taken > (0 if sloppy else CASES // 2)


def test_public_codec_round_trips_through_the_fast_path() -> None:
    doc = {"t": "0200", "2": "6222021234567890123", "3": "000000", "4": "000000000100",
           "11": "000123", "14": "3012", "22": "021", "25": "00", "35": "6222021234567890123D3012",
           "41": "T0000001", "42": "898100000000001", "49": "156", "52": "0123456789ABCDEF",
           "53": "2600000000000000", "60": "22000001000", "64": "0011223344556677"}
    body = encode_message(doc)
    assert body == _reference_encode(doc)
    assert decode_message(body) == {**doc, "41": "T0000001"}


def test_decode_error_keeps_the_fields_decoded_before_the_fault() -> None:
    doc = {"t": "0200", "3": "000000", "11": "000001", "41": "T0000009",
           "42": "898100000000001", "60": "22000001000"}
    body = bytearray(encode_message(doc))
    body[-1] = 0xAB  # last nibbles of F60 are not BCD
    with pytest.raises(DecodeError) as caught:
        decode_message(bytes(body))
    assert caught.value.partial["41"] == "T0000009"
    assert caught.value.partial["t"] == "0200"
    with pytest.raises(DecodeError) as caught:
        decode_message(bytes(body[:-3]))  # truncated inside F60
    assert caught.value.partial["41"] == "T0000009"
    assert "60" not in caught.value.partial
    with pytest.raises(DecodeError) as caught:
        decode_message(b"\x02\x00")
    assert caught.value.partial == {"t": "0200"}


def test_encode_for_mac_and_attach_mac_make_what_encode_with_mac_makes() -> None:
    doc = {"t": "0210", "3": "000000", "11": "000001", "39": "00", "41": "T0000009",
           "42": "898100000000001", "64": "FFFFFFFFFFFFFFFF"}
    seen: list[bytes] = []

    def mac(block: bytes) -> bytes:
        seen.append(block)
        return b"\x01\x02\x03\x04\x05\x06\x07\x08"

    body = encode_with_mac(doc, mac)
    block = encode_for_mac(doc)
    assert block == seen[0] == mac_block(body)
    assert attach_mac(block, mac(block)) == body
    assert decode_message(body)["64"] == "0102030405060708"
    with pytest.raises(EncodeError):
        attach_mac(block, b"short")
