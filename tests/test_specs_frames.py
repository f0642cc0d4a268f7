"""Byte-exact frames of protocol.md, hand-built field by field from section 2's rules.

The expected bytes are written out here by hand (not produced by our encoder), then decoded,
validated against the catalog and re-encoded.
"""

from __future__ import annotations

import pytest

from specs.catalog import KINDS
from specs.composite import (
    Field61,
    SettlementTotals,
    Totals,
    UploadRecord,
    decode_settlement_totals,
    decode_upload_records,
    encode_field61,
    encode_settlement_totals,
    encode_upload_records,
)
from specs.framing import BODY_OFFSET, Frame, Header, TcpFrameDecoder, Tpdu, encode_frame_tcp
from specs.messages import build_request, decode_message, encode_message, validate_request

TPDU_HEADER = "6000030000 603100310000"
TID = "3132333435363738"  # "12345678"
MID = "313233343536373839303132333435"  # "123456789012345"
TRACK2 = "37 6222021234567890128D301210100000000000"  # 37 digits + pad nibble 0
MAC = "0102030405060708"


def _frame(*parts: str) -> bytes:
    payload = bytes.fromhex("".join(" ".join(parts).split()))
    return len(payload).to_bytes(2, "big") + payload


# protocol.md section 7, verbatim.
SIGN_ON = bytes.fromhex(
    "003C 6000030000 603100310000 0800 0020000000C00012 000001 3132333435363738"
    " 313233343536373839303132333435 0011 000000000030 0003 303120".replace(" ", "")
)
SALE = bytes.fromhex(
    """0073 6000030000 603100310000 0200 302004C020C09811 000000 000000012345 000002
    0210 00 06 37 6222021234567890128D301210100000000000 3132333435363738
    313233343536373839303132333435 313536 1B96E39DDF2F5140 2600000000000000
    0011 220000010000 1AD466B337AE6164""".replace(" ", "").replace("\n", "")
)
# Void of that sale by swipe, no PIN: 3 4 11 22 25 35 37 38 41 42 49 60 61 64.
VOID = _frame(
    TPDU_HEADER, "0200 302004802CC08019", "200000 000000012345 000003 0220 00", TRACK2,
    "313233343536373839303132", "363534333231", TID, MID, "313536",
    "0011 230000010000", "0012 000001000002", MAC,
)
# Manual-entry refund advice: 2 3 4 11 14 22 25 37 41 42 49 60 61 63 64.
REFUND = _frame(
    TPDU_HEADER, "0220 7024048008C0801B", "19 62220212345678901280", "200000 000000005000",
    "000004 3012 0120 00", "313233343536373839303132", TID, MID, "313536",
    "0011 250000010000", "0016 0000010000021123", "0003 435550", MAC,
)
# Reversal of the sale (reason 98, no auth code received): 3 4 11 22 25 39 41 42 49 60 64.
REVERSAL = _frame(
    TPDU_HEADER, "0400 3020048002C08011", "000000 000000012345 000002 0210 00", "3938",
    TID, MID, "313536", "0011 220000010000", MAC,
)
# Settlement: 11 41 42 48 49 60 63; domestic debit 123.45 x1, everything else zero.
SETTLEMENT = _frame(
    TPDU_HEADER, "0500 0020000000C18012", "000005", TID, MID,
    "0062 000000012345 001 000000000000 000 0" + " 0" * 31, "313536", "0011 000000012010",
    "0003 303120",
)
# Batch upload, one record: 11 41 42 48 60.
UPLOAD = _frame(
    TPDU_HEADER, "0320 0020000000C10010", "000006", TID, MID,
    "0042 01 00 000002 06222021234567890128 000000012345", "0011 000000012010",
)
UPLOAD_END = _frame(
    TPDU_HEADER, "0320 0020000000C10010", "000007", TID, MID, "0004 0001", "0011 000000012020",
)

FRAMES = {
    "sign_on": SIGN_ON, "sale": SALE, "void": VOID, "refund": REFUND, "reversal": REVERSAL,
    "settlement": SETTLEMENT, "batch_upload": UPLOAD, "batch_upload_end": UPLOAD_END,
}


def _decode(raw: bytes) -> tuple[Frame, dict[str, str]]:
    decoder = TcpFrameDecoder()
    decoder.feed(raw)
    payload = decoder.next_payload()
    assert payload is not None and decoder.pending == 0
    frame = Frame.parse(payload)
    return frame, decode_message(frame.body, offset=BODY_OFFSET)


@pytest.mark.parametrize("name", FRAMES)
def test_frame_decodes_validates_and_reencodes_byte_exact(name: str) -> None:
    frame, doc = _decode(FRAMES[name])
    assert frame.tpdu == Tpdu("0003", "0000")
    assert frame.header == Header()
    assert validate_request(doc).name == name
    rebuilt = Frame(frame.tpdu, frame.header, encode_message(doc)).payload()
    assert encode_frame_tcp(rebuilt) == FRAMES[name]


def test_sign_on_fields() -> None:
    _, doc = _decode(SIGN_ON)
    assert doc == {"t": "0800", "11": "000001", "41": "12345678", "42": "123456789012345",
                   "60": "00000000003", "63": "01 "}


def test_sale_fields_track2_and_left_justified_entry_mode() -> None:
    _, doc = _decode(SALE)
    assert doc["35"] == "6222021234567890128D30121010000000000"
    assert doc["22"] == "021"
    assert doc["52"] == "1B96E39DDF2F5140"
    assert doc["60"] == "22000001000"


def test_build_request_matches_hand_built_void() -> None:
    doc = build_request(KINDS["void"], {
        "4": "000000012345", "11": "000003", "22": "022",
        "35": "6222021234567890128D30121010000000000", "37": "123456789012", "38": "654321",
        "41": "12345678", "42": "123456789012345", "49": "156", "60": "23000001000",
        "61": encode_field61(Field61("000001", "000002")), "64": MAC,
    })
    assert encode_message(doc) == VOID[2 + BODY_OFFSET:]


def test_settlement_and_upload_composites() -> None:
    _, settle = _decode(SETTLEMENT)
    totals = decode_settlement_totals(settle["48"])
    assert totals == SettlementTotals(Totals(12345, 1), Totals())
    assert encode_settlement_totals(totals) == settle["48"]
    _, upload = _decode(UPLOAD)
    assert decode_upload_records(upload["48"]) == [UploadRecord("000002", "6222021234567890128",
                                                                12345)]
    assert encode_upload_records(decode_upload_records(upload["48"])) == upload["48"]


def test_answer_swaps_tpdu_and_can_ask_for_sign_on() -> None:
    frame, _ = _decode(SIGN_ON)
    answer = frame.answer(b"", requirement=3)
    assert answer.tpdu.to_bytes().hex() == "6000000003"
    assert answer.header.to_bytes().hex() == "603103310000"
