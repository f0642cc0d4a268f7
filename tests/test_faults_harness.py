"""The bench and fault harness judged by the contract: its fast paths must produce exactly what
:mod:`specs` produces, and the floor server's canned answers must pass a terminal's checks."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from benchlib import fastpath, floor, wire
from benchlib.limits import BENCH_MID, BENCH_TMK_HEX
from benchlib.stats import Recorder, percentile

from hsm_sim.crypto import generate_mac_x919
from specs.framing import BODY_OFFSET, Frame
from specs.messages import check_response, decode_message, mac_block, message_mac

TID = "B0000001"
PAN = wire.make_pan("622202", 1)


def _signed_on_keys() -> wire.Keys:
    keys = wire.Keys(bytes.fromhex(BENCH_TMK_HEX))
    keys.install(floor.key_data())
    return keys


def test_sale_template_is_byte_exact_with_specs() -> None:
    keys = _signed_on_keys()
    card = wire.card_fields(PAN, "3012", keys, "1234")
    template = fastpath.SaleTemplate.build(wire.sale(TID, BENCH_MID, 1, "000001", card, 100), keys)
    for stan in (1, 2, 4711, 999_999):
        frame, _ = template.frame(stan)
        assert frame == wire.encode_request(
            wire.sale(TID, BENCH_MID, stan, "000001", card, 100), keys)


def test_floor_answers_pass_the_terminal_checks() -> None:
    keys = _signed_on_keys()
    assert keys.mak == floor.FLOOR_MAK
    card = wire.card_fields(PAN, "3012", keys, "1234")
    rrns = itertools.count(1)
    request = wire.sale(TID, BENCH_MID, 42, "000001", card, 100)
    payload = floor.answer(wire.encode_request(request, keys)[2:], rrns, floor.key_data())
    response = decode_message(Frame.parse(payload).body, offset=BODY_OFFSET)
    assert check_response(request, response).name == "sale"
    body = Frame.parse(payload).body
    assert generate_mac_x919(floor.FLOOR_MAK, mac_block(body)) == message_mac(body)
    assert wire.read_response(request, payload, keys)["39"] == "00"
    template = fastpath.SaleTemplate.build(request, keys)
    frame, stan = template.frame(43)
    code, extra = template.check(floor.answer(frame[2:], rrns, floor.key_data()), stan)
    assert code == "00" and set(extra) >= {"37", "38"}


def test_fast_check_refuses_a_bad_mac_and_a_changed_echo() -> None:
    keys = _signed_on_keys()
    card = wire.card_fields(PAN, "3012", keys, "1234")
    template = fastpath.SaleTemplate.build(wire.sale(TID, BENCH_MID, 1, "000001", card, 100), keys)
    frame, stan = template.frame(7)
    answer = floor.answer(frame[2:], itertools.count(1), floor.key_data())
    for tamper, reason in ((len(answer) - 1, "A0"), (answer.index(stan), "06")):
        bad = bytearray(answer)
        bad[tamper] ^= 0x01
        try:
            template.check(bytes(bad), stan)
        except wire.BadResponse as exc:
            assert exc.reason == reason
        else:
            raise AssertionError("tampered answer believed")


def test_stats_percentiles_and_rates() -> None:
    recorder = Recorder()
    for ms in range(1, 101):
        recorder.record(ms / 1000, "00" if ms % 10 else "51")
    recorder.error("lost")
    summary = recorder.summary(elapsed=2.0)
    assert summary["latency_ms"]["p50"] == 50.0 and summary["latency_ms"]["p99"] == 99.0
    assert summary["approved"] == 90 and summary["approved_per_s"] == 45.0
    assert summary["declined"] == 10 and summary["error_count"] == 1
    assert percentile([], 99) == 0.0
