"""The bench and fault harness judged by the contract: the floor server's canned answers must
pass posterm's terminal checks (full and fast path), and tampered ones must not."""

from __future__ import annotations

import itertools

from benchlib import floor
from benchlib.limits import BENCH_MID, BENCH_TMK_HEX
from benchlib.stats import Recorder, percentile
from hsm_sim.crypto import generate_mac_x919
from shared.naming import lab_pan
from specs.framing import BODY_OFFSET, Frame
from specs.messages import check_response, decode_message, mac_block, message_mac
from terminal import core
from terminal.cards import Card
from terminal.load import Template
from terminal.pinpad import PinPad

TID = "B0000001"
PAN = lab_pan("622202", 1)
PROFILE = core.Profile(TID, BENCH_MID)
CARD = Card(PAN, "3012")


def _signed_on_pad() -> PinPad:
    pad = PinPad(bytes.fromhex(BENCH_TMK_HEX))
    pad.install_key_data(floor.key_data())
    return pad


def _sale(pad: PinPad, stan: str) -> dict[str, str]:
    return core.sale_request(PROFILE, stan, "000001", CARD, 100, pad.pin_block("1234", PAN))


def test_floor_answers_pass_the_terminal_checks() -> None:
    pad = _signed_on_pad()
    assert pad.mak == floor.FLOOR_MAK
    rrns = itertools.count(1)
    request = _sale(pad, "000042")
    payload = floor.answer(core.encode_request(PROFILE, request, pad), rrns, floor.key_data())
    response = decode_message(Frame.parse(payload).body, offset=BODY_OFFSET)
    assert check_response(request, response).name == "sale"
    body = Frame.parse(payload).body
    assert generate_mac_x919(floor.FLOOR_MAK, mac_block(body)) == message_mac(body)
    assert core.evaluate(request, payload, pad).approved
    # the bench's (and posterm load's) fast path believes the floor's byte-assembled answer
    template = Template(PROFILE, request, pad)
    doc, frame = template.render("000043")
    outcome = template.quick_evaluate(doc, floor.answer(frame, rrns, floor.key_data()))
    assert outcome is not None and outcome.code == "00" and outcome.get("37") is not None


def test_tampered_floor_answers_are_not_believed() -> None:
    pad = _signed_on_pad()
    template = Template(PROFILE, _sale(pad, "000001"), pad)
    doc, frame = template.render("000007")
    answer = floor.answer(frame, itertools.count(1), floor.key_data())
    stan_at = answer.index(bytes.fromhex("000007"), BODY_OFFSET)
    for tamper, reason in ((len(answer) - 1, "A0"), (stan_at, "06")):
        bad = bytearray(answer)
        bad[tamper] ^= 0x01
        assert template.quick_evaluate(doc, bytes(bad)) is None
        assert core.evaluate(doc, bytes(bad), pad).reversal_reason == reason


def test_stats_percentiles_and_rates() -> None:
    recorder = Recorder()
    for ms in range(1, 101):
        recorder.record(ms / 1000, "00" if ms % 10 else "51")
    recorder.error("lost")
    summary = recorder.summary(elapsed=2.0)
    assert summary["latency_ms"]["p50"] == 50.0 and summary["latency_ms"]["p99"] == 99.0
    assert summary["approved"] == 90 and summary["approved_per_s"] == 45.0
    assert summary["declined"] == 10 and summary["error_count"] == 1
    assert percentile([], 0.99) == 0.0
