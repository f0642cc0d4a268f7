"""The fast codec (specs/fastcodec.py) against the reference, pyiso8583 with the dialect's
checks: byte-identical encodings and equal decodes for every catalog kind's requests and
responses and for random messages; on malformed input the fast path declines (None) and the
reference gives the answer, so the two never disagree."""

from __future__ import annotations

import iso8583
from hypothesis import given, settings
from hypothesis import strategies as st

from specs.catalog import KINDS
from specs.errors import DecodeError, EncodeError
from specs.fastcodec import decode_fast, encode_fast
from specs.fields import FIELDS, SPEC
from specs.framing import BODY_OFFSET
from specs.messages import (
    _decode_checked,
    _padded,
    decode_message,
    decode_with_spans,
    encode_message,
    field_spans,
)
from tests.test_specs_frames import FRAMES

_TEXT = "ABCXYZ abz 0189-/:*"


def _value(number: int, *, empty: bool = False) -> st.SearchStrategy[str]:
    """Any value the field's format allows (shorter fixed text is padded on encoding)."""
    f = FIELDS[number]
    low = 0 if empty else 1
    if f.fmt == "b":
        size = st.integers(low, f.max_units) if f.prefix else st.just(f.max_units)
        return size.flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(
            lambda b: b.hex().upper())
    if f.fmt in ("n", "z"):
        alphabet = "0123456789D" if f.fmt == "z" else "0123456789"
        if f.prefix:
            return st.text(alphabet, min_size=low, max_size=f.length)
        return st.text(alphabet, min_size=f.length, max_size=f.length)
    return st.text(_TEXT, min_size=0 if not f.prefix else low, max_size=f.length)


def _reference_encode(doc: dict[str, str]) -> bytes:
    body, _ = iso8583.encode(_padded(doc), SPEC)
    return bytes(body)


@st.composite
def kind_messages(draw) -> dict[str, str]:
    """A request or a response of any catalog kind: its mandatory fields and some optional."""
    kind = draw(st.sampled_from(sorted(KINDS.values(), key=lambda k: k.name)))
    if draw(st.booleans()):
        mti, required = kind.mti, kind.request_mandatory
        optional = kind.request_optional
    else:
        mti, required = kind.response_mti, kind.response_mandatory
        optional = kind.response_optional | kind.response_on_approval
    chosen = set(required) | draw(st.sets(st.sampled_from(sorted(optional, key=int)))
                                  if optional else st.just(set()))
    doc = {"t": mti}
    for key in sorted(chosen, key=int):
        doc[key] = draw(_value(int(key)))
    return doc


@st.composite
def any_messages(draw) -> dict[str, str]:
    numbers = draw(st.sets(st.sampled_from(sorted(FIELDS)), min_size=0, max_size=20))
    doc = {"t": draw(st.text("0123456789", min_size=4, max_size=4))}
    for n in sorted(numbers):
        doc[str(n)] = draw(_value(n, empty=True))
    return doc


def _agree_on(body: bytes) -> None:
    """The fast decoder's answer equals the reference's, or it declines."""
    fast = decode_fast(body)
    try:
        reference = _decode_checked(body, 0)
    except DecodeError:
        assert fast is None
        return
    if fast is not None:
        doc, spans = fast
        assert doc == reference and list(doc) == list(reference)
        assert spans == field_spans(body)


@settings(max_examples=400, deadline=None)
@given(kind_messages())
def test_every_catalog_kind_encodes_and_decodes_as_pyiso8583(doc: dict[str, str]) -> None:
    body = encode_fast(doc)
    assert body is not None, "a well-formed message must take the fast path"
    assert body == _reference_encode(doc)
    decoded = decode_fast(body)
    assert decoded is not None
    assert decoded[0] == _decode_checked(body, 0)
    assert decoded[1] == field_spans(body)


@settings(max_examples=400, deadline=None)
@given(any_messages())
def test_random_messages_encode_identically_or_fall_back(doc: dict[str, str]) -> None:
    try:
        reference: bytes | None = _reference_encode(doc)
    except iso8583.EncodeError:
        reference = None
    fast = encode_fast(doc)
    if reference is None:
        assert fast is None
        try:
            encode_message(doc)
        except EncodeError:
            return
        raise AssertionError("encode_message accepted what pyiso8583 refuses")
    assert fast == reference
    assert encode_message(doc) == reference
    _agree_on(reference)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(FRAMES)), st.data())
def test_mutated_frames_decode_as_the_reference_says(name: str, data) -> None:
    body = bytearray(FRAMES[name][2 + BODY_OFFSET:])
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(body) - 1))
        body[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 4))
    _agree_on(bytes(body[: len(body) - cut] if cut else body))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=120))
def test_random_bytes_never_disagree(body: bytes) -> None:
    _agree_on(body)


def test_known_frames_take_the_fast_path_and_keep_error_positions() -> None:
    for name, frame in FRAMES.items():
        body = frame[2 + BODY_OFFSET:]
        assert decode_fast(body) is not None, name
        assert decode_fast(bytearray(body)) == decode_fast(body)  # what a buffer hands over
        doc, spans = decode_with_spans(body)
        assert doc == _decode_checked(body, 0) and spans == field_spans(body)
    sale = bytearray(FRAMES["sale"][2 + BODY_OFFSET:])
    start, _ = field_spans(bytes(sale))[4]
    sale[start] = 0xAB  # a hex nibble in n12: the fast path declines, the reference names it
    assert decode_fast(bytes(sale)) is None
    try:
        decode_message(bytes(sale), offset=BODY_OFFSET)
    except DecodeError as exc:
        assert exc.field == "4" and exc.position == BODY_OFFSET + start
    else:
        raise AssertionError("a bad BCD nibble must not decode")
