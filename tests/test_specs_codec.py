"""Codec properties and hostile input: round-trips, and one error type with field and position."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specs.catalog import KINDS
from specs.composite import Field60, decode_field60, decode_key_data, encode_field60
from specs.errors import DecodeError, FramingError, SpecError, ValidationError
from specs.fields import FIELDS
from specs.framing import (
    BODY_OFFSET,
    MAX_FRAME_LENGTH,
    Frame,
    TcpFrameDecoder,
    decode_frame_serial,
    encode_frame_serial,
)
from specs.messages import (
    build_response,
    check_response,
    decode_message,
    encode_message,
    encode_with_mac,
    field_spans,
    mac_block,
    validate_request,
)
from specs.pretty import format_message, masked_fields, summarize
from tests.test_specs_frames import FRAMES, SALE, SIGN_ON

SALE_BODY = SALE[2 + BODY_OFFSET:]


def _value(f) -> st.SearchStrategy[str]:
    units = f.max_units
    if f.fmt == "b":
        size = st.integers(1, units) if f.prefix else st.just(units)
        return size.flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(
            lambda b: b.hex().upper())
    alphabet = {"n": "0123456789", "z": "0123456789D"}.get(f.fmt, "ABCXYZ 0189-/")
    if f.prefix:
        return st.text(alphabet, min_size=1, max_size=units)
    return st.text(alphabet, min_size=units, max_size=units)


@st.composite
def messages(draw) -> dict[str, str]:
    numbers = draw(st.sets(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=12))
    doc = {"t": draw(st.sampled_from(["0200", "0210", "0800", "0810", "0500", "0320", "0400"]))}
    for n in numbers:
        doc[str(n)] = draw(_value(FIELDS[n]))
    return doc


@settings(max_examples=200, deadline=None)
@given(messages())
def test_decode_encode_roundtrip(doc: dict[str, str]) -> None:
    assert decode_message(encode_message(doc)) == doc


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_errors(data: bytes) -> None:
    try:
        decode_message(data)
    except DecodeError as exc:
        assert exc.field and exc.position >= 0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(SALE_BODY) - 1), st.integers(0, 255))
def test_mutated_sale_raises_only_spec_errors(index: int, byte: int) -> None:
    body = bytearray(SALE_BODY)
    body[index] = byte
    try:
        validate_request(decode_message(bytes(body)))
    except SpecError as exc:
        assert exc.field
        assert exc.response_code in {"30", "40", "12"}


@pytest.mark.parametrize("cut", [3, 10, 11, 30, len(SALE_BODY) - 1])
def test_truncated_body_names_field_and_position(cut: int) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(SALE_BODY[:cut], offset=BODY_OFFSET)
    assert info.value.position >= BODY_OFFSET


def test_bad_bcd_nibble_names_field_and_position() -> None:
    body = bytearray(SALE_BODY)
    stan_at = 2 + 8 + 3 + 6  # MTI, bitmap, F3, F4
    body[stan_at + 2] = 0x0A
    with pytest.raises(DecodeError) as info:
        decode_message(bytes(body), offset=BODY_OFFSET)
    assert info.value.field == "11"
    assert info.value.position == BODY_OFFSET + stan_at


def test_bitmap_naming_undefined_field() -> None:
    body = bytearray(SALE_BODY)
    body[2] |= 0x08  # bit 5: not in the dialect
    with pytest.raises(DecodeError) as info:
        decode_message(bytes(body))
    assert info.value.field in {"p", "5"}


def test_secondary_bitmap_refused() -> None:
    body = bytearray(SALE_BODY)
    body[2] |= 0x80
    with pytest.raises(DecodeError) as info:
        decode_message(bytes(body), offset=BODY_OFFSET)
    assert (info.value.field, info.value.position) == ("p", BODY_OFFSET + 2)


def test_unknown_mti_is_a_validation_error() -> None:
    doc = decode_message(SALE_BODY)
    doc["t"] = "0900"
    with pytest.raises(ValidationError) as info:
        validate_request(doc)
    assert (info.value.field, info.value.response_code) == ("t", "30")


def test_missing_and_unexpected_fields_are_named() -> None:
    doc = decode_message(SALE_BODY)
    del doc["41"]
    with pytest.raises(ValidationError, match="field 41"):
        validate_request(doc)
    doc = decode_message(SALE_BODY)
    doc["62"] = "00"
    with pytest.raises(ValidationError, match="field 62"):
        validate_request(doc)


def test_unsupported_processing_code_answers_40() -> None:
    doc = decode_message(SALE_BODY)
    doc["3"] = "990000"
    with pytest.raises(ValidationError) as info:
        validate_request(doc)
    assert info.value.response_code == "40"


@pytest.mark.parametrize("length", [MAX_FRAME_LENGTH + 1, 0xFFFF, 3])
def test_length_prefix_out_of_range(length: int) -> None:
    decoder = TcpFrameDecoder()
    decoder.feed(length.to_bytes(2, "big"))
    with pytest.raises(FramingError) as info:
        decoder.next_payload()
    assert info.value.field == "length"


def test_frame_arriving_in_pieces() -> None:
    decoder = TcpFrameDecoder()
    for byte in SIGN_ON[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_payload() is None
    decoder.feed(SIGN_ON[-1:])
    assert decoder.next_payload() == SIGN_ON[2:]


def test_bad_tpdu_id() -> None:
    with pytest.raises(FramingError) as info:
        Frame.parse(b"\x70" + SIGN_ON[3:])
    assert info.value.field == "tpdu"


def test_serial_frame_roundtrip_and_lrc() -> None:
    payload = SIGN_ON[2:]
    wire = encode_frame_serial(payload)
    assert wire[:3].hex() == "020060" and wire[-2] == 0x03
    assert decode_frame_serial(wire) == payload
    corrupted = bytearray(wire)
    corrupted[10] ^= 0x01
    with pytest.raises(FramingError) as info:
        decode_frame_serial(bytes(corrupted))
    assert info.value.field == "lrc"


@pytest.mark.parametrize("name", FRAMES)
def test_every_frame_prints_without_secrets(name: str) -> None:
    doc = decode_message(FRAMES[name][2 + BODY_OFFSET:])
    text = format_message(doc) + summarize(doc) + str(masked_fields(doc))
    for secret in ("6222021234567890128", "D3012", "1B96E39DDF2F5140", "0102030405060708",
                   "1AD466B337AE6164"):
        assert secret not in text
    if "35" in doc or "2" in doc:
        assert "622202*********0128" in text


def _sale_response(**extra: str) -> dict[str, str]:
    request = decode_message(SALE_BODY)
    fields = {"12": "101010", "13": "1123", "32": "00000001", "37": "000000000001",
              "38": "123456", "39": "00", "64": "00" * 8, **extra}
    return build_response(KINDS["sale"], request, fields)


def test_response_echoes_and_is_checked() -> None:
    request = decode_message(SALE_BODY)
    response = _sale_response()
    assert response["t"] == "0210"
    assert all(response[k] == request[k] for k in ("3", "4", "11", "41", "42", "60"))
    assert check_response(request, response).name == "sale"
    for key, bad in (("4", "000000000001"), ("11", "000009"), ("t", "0230")):
        with pytest.raises(ValidationError) as info:
            check_response(request, {**response, key: bad})
        assert info.value.field == key
    missing_auth = {k: v for k, v in response.items() if k != "38"}
    with pytest.raises(ValidationError, match="field 38"):
        check_response(request, missing_auth)
    declined = {k: v for k, v in response.items() if k not in ("38", "64")} | {"39": "A0"}
    assert check_response(request, declined).name == "sale"


def test_mac_covers_mti_to_before_f64_with_bit_64_set() -> None:
    seen: list[bytes] = []
    doc = decode_message(SALE_BODY)
    body = encode_with_mac(doc, lambda block: seen.append(block) or b"\x11" * 8)
    assert seen == [SALE_BODY[:-8]] == [mac_block(body)]
    assert body[-8:] == b"\x11" * 8


def test_composite_field_errors_name_their_field() -> None:
    assert decode_field60(encode_field60(Field60("22", "000001"))).network_code == "000"
    with pytest.raises(ValidationError) as info:
        decode_field60("22")
    assert info.value.field == "60"
    with pytest.raises(ValidationError) as info:
        decode_key_data("00" * 39)
    assert info.value.field == "62"


@settings(max_examples=150, deadline=None)
@given(messages())
def test_field_spans_locate_exactly_what_the_codec_encodes(doc: dict[str, str]) -> None:
    body = encode_message(doc)
    spans = field_spans(body)
    assert sorted(spans) == sorted(int(k) for k in doc if k.isdigit())
    assert max(end for _, end in spans.values()) == len(body)
    for number, (start, end) in spans.items():
        f, value = FIELDS[number], doc[str(number)]
        if f.fmt == "b":
            assert body[start:end].hex().upper() == value
        elif not f.numeric:
            assert body[start:end].decode("ascii") == value
