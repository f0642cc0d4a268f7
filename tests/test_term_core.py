"""The sans-IO core and the PIN pad against the worked frames of protocol.md section 7."""

from __future__ import annotations

import pytest

from hsm_sim.crypto import encrypt_tdes_ecb, generate_kcv
from specs.catalog import KINDS
from specs.composite import (
    BATCH_CAPACITY,
    KeyData,
    SettlementTotals,
    Totals,
    encode_key_data,
    encode_settlement_totals,
)
from specs.errors import ValidationError
from specs.framing import Frame, encode_frame_tcp
from specs.messages import build_response, decode_message, encode_message, encode_with_mac
from terminal import core
from terminal.cards import Card, format_amount, parse_amount, parse_trace
from terminal.errors import BadInput, KeyCheckFailed
from terminal.pinpad import PinPad, combine_components, parse_key_hex

PROFILE = core.Profile("12345678", "123456789012345")
PIK = bytes.fromhex("0B681FC20E62C7340B681FC20E62C734")
MAK = bytes.fromhex("7962D9ECE03D1ACD4C76089DCE131543")
TMK = bytes.fromhex("CA5D92598DCA48CE8A4C76361A9269E9")
CARD = Card.from_track2("6222021234567890128=30121010000000000")

SIGNON_FRAME = (
    "003C 6000030000 603100310000 0800 0020000000C00012 000001 3132333435363738"
    " 313233343536373839303132333435 0011 000000000030 0003 303120"
)
SALE_FRAME = (
    "0073 6000030000 603100310000 0200 302004C020C09811 000000 000000012345 000002"
    " 0210 00 06 37 6222021234567890128D301210100000000000 3132333435363738"
    " 313233343536373839303132333435 313536 1B96E39DDF2F5140 2600000000000000"
    " 0011 220000010000 1AD466B337AE6164"
)


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def pinpad() -> PinPad:
    return PinPad(TMK, "x919", PIK, MAK)


def test_signon_frame_matches_protocol_vector() -> None:
    doc = core.management_request("sign_on", PROFILE, "000001", "000000")
    frame = encode_frame_tcp(core.encode_request(PROFILE, doc, None))
    assert frame == _hex(SIGNON_FRAME)


def test_sale_frame_matches_protocol_vector() -> None:
    pad = pinpad()
    block = pad.pin_block("1234", CARD.pan)
    assert block == "1B96E39DDF2F5140"
    doc = core.sale_request(PROFILE, "000002", "000001", CARD, 12345, block)
    assert encode_frame_tcp(core.encode_request(PROFILE, doc, pad)) == _hex(SALE_FRAME)


def _response(request: dict[str, str], fields: dict[str, str], mak: bytes | None = MAK) -> bytes:
    kind = KINDS["sale"]
    doc = build_response(kind, request, {
        "12": "101010", "13": "1123", "32": "00000000001", "37": "000000000001",
        "49": "156", **fields})
    pad = PinPad(TMK, "x919", PIK, mak)
    body = encode_with_mac(doc, pad.mac) if mak else encode_message(doc)
    req_frame = Frame.parse(core.encode_request(PROFILE, request, pinpad()))
    return req_frame.answer(body).payload()


def _sale() -> dict[str, str]:
    return core.sale_request(PROFILE, "000002", "000001", CARD, 12345, None)


def test_evaluate_approved() -> None:
    req = _sale()
    out = core.evaluate(req, _response(req, {"39": "00", "38": "123456"}), pinpad())
    assert out.approved and out.get("38") == "123456" and out.reversal_reason is None


def test_evaluate_bad_mac_means_a0() -> None:
    req = _sale()
    wrong = bytes.fromhex("1111111111111111" * 2)
    out = core.evaluate(req, _response(req, {"39": "00", "38": "1"}, mak=wrong), pinpad())
    assert not out.believed and out.reversal_reason == "A0"


def test_evaluate_missing_mac_means_a0() -> None:
    req = _sale()
    out = core.evaluate(req, _response(req, {"39": "00", "38": "1"}, mak=None), pinpad())
    assert out.reversal_reason == "A0"


def test_evaluate_unmaced_a0_response_is_believed_and_asks_sign_on() -> None:
    req = _sale()
    out = core.evaluate(req, _response(req, {"39": "A0"}, mak=None), pinpad())
    assert out.believed and not out.approved and out.sign_on_again


def test_evaluate_garbage_means_06() -> None:
    out = core.evaluate(_sale(), b"\x60\x00\x00\x00\x03" + b"\x00" * 30, pinpad())
    assert out.reversal_reason == "06" and out.code is None


def test_evaluate_echo_mismatch_means_06() -> None:
    req = _sale()
    other = dict(req, **{"4": "000000000001"})
    payload = _response(other, {"39": "00", "38": "1"})
    assert core.evaluate(req, payload, pinpad()).reversal_reason == "06"


def test_reversal_keeps_original_fields_drops_secrets() -> None:
    req = core.sale_request(PROFILE, "000002", "000001", CARD, 12345,
                            pinpad().pin_block("1234", CARD.pan))
    rev = core.reversal_request(req, "98", "654321")
    assert rev["t"] == "0400" and rev["11"] == "000002" and rev["39"] == "98"
    assert rev["38"] == "654321" and rev["60"] == req["60"]
    assert not {"26", "35", "52", "53"} & set(rev)
    keyed = core.sale_request(PROFILE, "000003", "000001", Card.keyed("6222021234567890128",
                              "3012"), 100, None)
    assert {"2", "14"} <= set(core.reversal_request(keyed, "06"))


def test_void_and_refund_fields() -> None:
    orig = core.Original("000001", "000002", "000000000001", 12345, "123456", "1123")
    void = core.void_request(PROFILE, "000003", "000001", CARD, orig)
    assert void["3"] == "200000" and void["61"] == "000001000002" and void["38"] == "123456"
    assert void["60"][:2] == "23" and void["4"] == "000000012345"
    refund = core.refund_request(PROFILE, "000004", "000001", CARD, orig, 100)
    assert refund["t"] == "0220" and refund["61"] == "0000010000021123"
    assert refund["63"] == "CUP" and refund["60"][:2] == "25"


def test_stan_wraps() -> None:
    assert core.next_stan("999999") == "000001"
    assert core.next_stan("000000") == "000001"


def test_totals_and_upload_chunks() -> None:
    entries = [core.BatchEntry("sale", f"{i:06d}", "6222021234567890128", 100) for i in range(9)]
    entries.append(core.BatchEntry("refund", "000010", "6222021234567890128", 50))
    totals = core.batch_totals(entries)
    assert totals.domestic.debit_count == 9 and totals.domestic.credit_amount == 50
    chunks = list(core.upload_chunks(entries))
    assert [len(c) for c in chunks] == [8, 2]
    req = core.upload_request(PROFILE, "000011", "000001", chunks[0])
    assert req["48"].startswith("08") and req["60"] == "00000001201"
    end = core.upload_end_request(PROFILE, "000012", "000001", 10)
    assert end["48"] == "0010" and end["60"].endswith("202")


def test_a_full_batch_still_encodes_and_asks_for_settlement() -> None:
    entries = [core.BatchEntry("sale", f"{i:06d}", "6222021234567890128", 100)
               for i in range(BATCH_CAPACITY)]
    assert not core.batch_full(entries[:-1])
    assert core.batch_full(entries)
    req = core.settlement_request(PROFILE, "000001", "000001", core.batch_totals(entries))
    assert req["48"][12:15] == "999"
    with pytest.raises(ValidationError, match="overflow"):
        core.settlement_request(PROFILE, "000001", "000001", core.batch_totals(
            [*entries, core.BatchEntry("sale", "999999", "6222021234567890128", 1)]))


def test_settlement_result() -> None:
    def resp(d: int, f: int) -> dict[str, str]:
        return {"48": encode_settlement_totals(SettlementTotals(Totals(result=d),
                                                                Totals(result=f)))}
    assert core.settlement_result(resp(1, 1)) == 1
    assert core.settlement_result(resp(1, 0)) == 1
    assert core.settlement_result(resp(2, 1)) == 2
    assert core.settlement_result(resp(3, 1)) == 3


def test_pinpad_unwraps_and_refuses_bad_check_value() -> None:
    pik, mak = PIK, MAK
    data = KeyData(encrypt_tdes_ecb(TMK, pik), generate_kcv(pik, 4),
                   encrypt_tdes_ecb(TMK, mak), generate_kcv(mak, 4))
    pad = PinPad(TMK)
    pad.install_key_data(encode_key_data(data))
    assert pad.pik == pik and pad.mak == mak
    bad = KeyData(data.pik, data.pik_cv, data.mak, b"\x00\x00\x00\x00")
    fresh = PinPad(TMK)
    with pytest.raises(KeyCheckFailed):
        fresh.install_key_data(encode_key_data(bad))
    assert fresh.pik is None and fresh.mak is None
    assert "807A" not in repr(pad) and pik.hex().upper() not in repr(pad)


def test_protocol_vector_key_unwrap() -> None:
    pad = PinPad(TMK)
    ct = bytes.fromhex("6701EAD6A9AD51E51AA406E2C27FCFA9")
    cv = bytes.fromhex("8D0A74B8")
    pad.install_key_data(encode_key_data(KeyData(ct, cv, ct, cv)))
    assert pad.pik == bytes.fromhex("807A23AD32B36D457AE91FDF927570EA")


def test_cup_ecb_mac_is_eight_ascii_hex() -> None:
    pad = PinPad(TMK, "cup-ecb", PIK, MAK)
    mac = pad.mac(b"0200" * 5)
    assert len(mac) == 8 and pad.verify_mac(b"0200" * 5, mac)


@pytest.mark.parametrize("bad", ["6222=3012", "62220212345678901X8=3012",
                                 "6222021234567890128=3013", "6222021234567890128"])
def test_malformed_track2(bad: str) -> None:
    with pytest.raises(BadInput):
        Card.from_track2(bad)


def test_cards_and_amounts() -> None:
    assert CARD.track2 == "6222021234567890128D30121010000000000"
    assert CARD.entry_mode(True) == "021"
    assert Card.keyed("6222021234567890128", "3012").entry_mode(False) == "012"
    assert parse_amount("123.45") == 12345 and parse_amount("7") == 700
    assert format_amount(12345) == "123.45"
    for bad in ["0", "-1", "1.234", "abc", "", "1e5"]:
        with pytest.raises(BadInput):
            parse_amount(bad)
    assert parse_trace("12") == "000012"
    with pytest.raises(BadInput):
        parse_trace("1234567")


def test_keys_parse() -> None:
    assert parse_key_hex("CA5D92598DCA48CE8A4C76361A9269E9") == TMK
    for bad in ["CA5D", "ZZ" * 16, "CA5D92598DCA48CE8A4C76361A9269E9AA"]:
        with pytest.raises(BadInput):
            parse_key_hex(bad)
    half = "00" * 16
    assert combine_components([TMK.hex(), half]) == TMK


def test_response_frame_decodes() -> None:
    req = _sale()
    frame = Frame.parse(_response(req, {"39": "05"}))
    assert decode_message(frame.body)["39"] == "05"
