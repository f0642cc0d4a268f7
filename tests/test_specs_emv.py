"""F55 (BER-TLV) and the chip variants of protocol.md section 8: byte-exact frames from the
worked values, TLV errors naming tag and byte position, the 30 rules, masking."""

from __future__ import annotations

import pytest

from specs.catalog import CHIP_VARIANTS
from specs.emv import (
    WORKED_F55,
    arqc_data,
    check_chip_tags,
    decode_f55,
    encode_f55,
    format_f55,
    issuer_auth_data,
    split_issuer_auth_data,
)
from specs.errors import SpecError, ValidationError
from specs.framing import BODY_OFFSET, Frame
from specs.messages import decode_message, encode_message, validate_request
from specs.pretty import format_message
from specs.tlv import TlvError, decode_tlv, encode_tlv
from specs.view import render_contract

# Section 8's worked chip sale, tag by tag (written out by hand).
F55_HAND = (
    "9F26 08 EEA5EECC83A08C96" "9F27 01 80" "9F10 08 07001203A0000000" "9F37 04 1A2B3C4D"
    "9F36 02 0001" "95 05 0000000000" "9A 03 261129" "9C 01 00" "9F02 06 000000012345"
    "5F2A 02 0156" "82 02 7C00" "9F1A 02 0156" "9F03 06 000000000000"
).replace(" ", "")
ARQC_INPUT = ("000000012345 000000000000 0156 0000000000 0156 261129 00 1A2B3C4D 7C00 0001"
              " 07001203A0000000").replace(" ", "")

# Chip sale of 123.45, PIN 1234, PAN 6222021234567890128 PSN 01, keys of section 7:
# 2 3 4 11 14 22 23 25 26 41 42 49 52 53 55 60 64, header category 61.
CHIP_SALE = bytes.fromhex((
    "00C5 6000030000 613100310000 0200 702406C000C09A11 19 62220212345678901280"
    " 000000 000000012345 000002 3012 0510 0001 00 06 3132333435363738"
    " 313233343536373839303132333435 313536 1B96E39DDF2F5140 2600000000000000"
    " 0085 " + F55_HAND + " 0011 220000010000 0102030405060708"
).replace(" ", ""))


def test_worked_f55_is_the_hand_built_tlv() -> None:
    assert WORKED_F55 == F55_HAND
    assert encode_f55(decode_f55(F55_HAND)) == F55_HAND
    assert arqc_data(decode_f55(F55_HAND)).hex().upper() == ARQC_INPUT
    assert len(bytes.fromhex(ARQC_INPUT)) == 41


def test_chip_sale_frame_byte_exact() -> None:
    assert int.from_bytes(CHIP_SALE[:2], "big") == len(CHIP_SALE) - 2
    frame = Frame.parse(CHIP_SALE[2:])
    assert frame.header.application == "61"
    doc = decode_message(frame.body, offset=BODY_OFFSET)
    assert doc["22"] == "051" and doc["23"] == "001" and doc["55"] == F55_HAND
    assert validate_request(doc).name == "sale"
    assert encode_message(doc) == frame.body


def test_tag_91_of_the_worked_arpc() -> None:
    value = issuer_auth_data(bytes.fromhex("3E3D17E3C39C2074"), "00")
    assert encode_tlv({"91": value}) == "910A3E3D17E3C39C20743030"
    assert split_issuer_auth_data(value) == (bytes.fromhex("3E3D17E3C39C2074"), "00")


@pytest.mark.parametrize(("data", "tag", "position", "text"), [
    ("9F3603000102"[:-2], "9F36", 3, "value needs 3 bytes, 2 left"),
    ("9F", "9F", 1, "tag truncated"),
    ("9F3682", "9F36", 2, "length truncated"),
    ("9F3683000001", "9F36", 2, "length byte 83 not allowed"),
    ("9F360200019F36020002", "9F36", 5, "tag repeated"),
    ("00", "", 0, "byte 00 cannot start a tag"),
    ("9F36", "9F36", 2, "length missing"),
    ("9F270180ZZ", "", 0, "not hex bytes"),
])
def test_tlv_errors_name_tag_and_position(data: str, tag: str, position: int, text: str) -> None:
    with pytest.raises(TlvError) as info:
        decode_tlv(data)
    assert info.value.tag == tag and info.value.position == position
    assert text in str(info.value) and info.value.field == "55"
    assert info.value.response_code == "30"


def test_long_form_lengths_round_trip() -> None:
    tags = {"9F10": "00" * 128, "50": "41" * 16, "DF01": "11" * 200}
    encoded = encode_tlv(tags)
    assert "9F108180" in encoded and "DF0181C8" in encoded
    assert decode_tlv(encoded) == tags


@pytest.mark.parametrize(("change", "text"), [
    ({"9F26": None}, "tag 9F26 (application cryptogram (ARQC/TC/AAC)) missing"),
    ({"9F36": "000001"}, "tag 9F36 (application transaction counter) has 3 bytes"),
    ({"9F02": "00000001234A"}, "tag 9F02 (amount, authorised) is not BCD digits"),
    ({"9F10": ""}, "tag 9F10 (issuer application data) has 0 bytes"),
    ({"9C": "31"}, "tag 9C is 31, sale wants 00"),
])
def test_missing_or_missized_tag_is_30(change: dict[str, str | None], text: str) -> None:
    tags = dict(decode_f55(WORKED_F55))
    for tag, value in change.items():
        if value is None:
            tags.pop(tag)
        else:
            tags[tag] = value
    with pytest.raises(ValidationError) as info:
        check_chip_tags(tags, "sale")
    assert text in str(info.value) and info.value.response_code == "30"


def test_chip_request_without_f55_or_f23_is_30() -> None:
    doc = decode_message(Frame.parse(CHIP_SALE[2:]).body)
    for missing in ("55", "23"):
        broken = {k: v for k, v in doc.items() if k != missing}
        with pytest.raises(SpecError) as info:
            validate_request(broken)
        assert info.value.field == missing and info.value.response_code == "30"
    garbled = doc | {"55": doc["55"][:-2]}
    with pytest.raises(ValidationError) as info:
        validate_request(garbled)
    assert "tag 9F03" in str(info.value) and "byte" in str(info.value)
    swipe = {k: v for k, v in doc.items() if k not in ("23", "55")} | {"22": "021"}
    assert validate_request(swipe).name == "sale"  # magstripe unchanged


def test_masking_names_tags_and_hides_cryptograms() -> None:
    lines = format_f55(WORKED_F55)
    assert lines[0].startswith("9F26 application cryptogram") and lines[0].endswith("[8 bytes]")
    assert any(line.startswith("9F36 application transaction counter") for line in lines)
    assert "EEA5EECC" not in "\n".join(lines)
    assert "EEA5EECC83A08C96" in "\n".join(format_f55(WORKED_F55, reveal_cryptograms=True))
    text = format_message({"t": "0200", "55": WORKED_F55, "2": "6222021234567890128"})
    assert "9F36=0001" in text and "EEA5EECC" not in text and "6222021234567890128" not in text
    assert format_f55("9F36")[0].startswith("[F55 of 2 bytes does not decode")


def test_catalog_and_spec_show_chip_variants() -> None:
    assert set(CHIP_VARIANTS) == {"sale", "balance"}
    assert CHIP_VARIANTS["balance"].transaction_type == "31"
    text = render_contract()
    assert "sale by chip" in text and "balance inquiry by chip" in text
    assert "header category 61" in text and "9F26" in text


def test_pan_tag_is_compressed_numeric_and_cardholder_tags_are_masked() -> None:
    from specs.emv import check_chip_tags, masked_f55
    from specs.errors import ValidationError
    from specs.tlv import encode_tlv

    check_chip_tags({"5A": "6222021234567890128F"}, "sale", required=())  # F-padded: fine
    with pytest.raises(ValidationError, match="compressed numeric"):
        check_chip_tags({"5A": "62220212345678901A8F"}, "sale", required=())
    shown = masked_f55(encode_tlv({"5A": "6222021234567890128F",
                                   "9F6B": "6222021234567890128D30121010000000000F",
                                   "5F20": "4C4142204341524448"}))
    assert "6222021234567890128" not in shown and "30121010" not in shown
    assert "4C4142" not in shown and "622202*********0128" in shown
