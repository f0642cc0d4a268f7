"""Load mode against the real host: several signed-on terminals, the whole mix, settlement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from terminal import core
from terminal.cards import Card
from terminal.errors import BadInput
from terminal.load import LoadSettings, Template, latency_summary, parse_mix, run_load, terminal_ids
from terminal.pinpad import PinPad
from tests.test_term_core import CARD, MAK, PIK, PROFILE, TMK

LOAD_TMK = "0123456789ABCDEFFEDCBA9876543210"


def test_template_renders_what_core_encodes() -> None:
    pad = PinPad(TMK, "x919", PIK, MAK)
    doc = core.sale_request(PROFILE, "000000", "000001", CARD, 100, pad.pin_block("1234", CARD.pan))
    template = Template(PROFILE, doc, pad)
    rendered_doc, payload = template.render("000123")
    assert rendered_doc["11"] == "000123"
    assert payload == core.encode_request(PROFILE, rendered_doc, pad)


def test_mix_and_ids() -> None:
    assert parse_mix("sale=1, void=2") == {"sale": 1, "void": 2}
    for bad in ["sale", "sale=x", "cash=1", "sale=0"]:
        with pytest.raises(BadInput):
            parse_mix(bad)
    assert terminal_ids("LT", 3)[-1] == "LT000003"
    with pytest.raises(BadInput):
        terminal_ids("LOADTST", 10)
    summary = latency_summary([0.001 * i for i in range(1, 101)])
    assert summary["p50"] == 50.0 and summary["p99"] == 99.0 and summary["max"] == 100.0


async def test_load_against_host(running_host: Any, tmp_path: Path) -> None:
    tids = terminal_ids("LT", 3)
    for tid in tids:
        await running_host.add_terminal(tid)
    card = running_host.cards["good"]
    settings = LoadSettings(
        running_host.host, running_host.port, len(tids), 1.5, 0.0,
        parse_mix("sale=70,balance=10,void=10,refund=10"), tids, running_host.mid,
        bytes.fromhex(LOAD_TMK), [Card.from_track2(card.track2)], card.pin,
        report=str(tmp_path / "r.json"))
    report = await run_load(settings)
    assert report["terminals_signed_on"] == 3
    assert report["completed"] > 20 and not report["errors"], report["errors"]
    assert set(report["operations"]) == {"sale", "balance", "void", "refund"}
    assert report["response_codes"] == {"00": report["completed"]}
    assert report["settlements"] == {"balanced": 3}
    assert report["latency_ms"]["p99"] >= report["latency_ms"]["p50"] > 0
    json.dumps(report)  # serialisable

    # a second run starts in the new batch: no duplicates
    report = await run_load(settings)
    assert set(report["response_codes"]) == {"00"} and report["settlements"] == {"balanced": 3}


def test_quick_evaluate_agrees_with_core() -> None:
    from specs.framing import Frame
    from specs.messages import decode_message
    from terminal.load import scan_fields
    from tests.test_term_core import _response

    pad = PinPad(TMK, "x919", PIK, MAK)
    template = Template(PROFILE, core.sale_request(PROFILE, "000000", "000001", CARD, 100,
                                                   None), pad)
    doc, _ = template.render("000042")
    good = _response(doc, {"39": "00", "38": "123456", "63": "CUP"})
    quick = template.quick_evaluate(doc, good)
    full = core.evaluate(doc, good, pad)
    assert quick is not None and quick.approved and full.approved
    for key in ("37", "38", "39", "13", "63"):
        assert quick.get(key) == full.get(key)
    body = Frame.parse(good).body
    raw = scan_fields(body)
    assert set(raw) == {int(k) for k in decode_message(body) if k.isdigit()}

    declined = _response(doc, {"39": "51"})
    assert template.quick_evaluate(doc, declined).code == "51"  # type: ignore[union-attr]
    bad_mac = good[:-1] + bytes([good[-1] ^ 1])
    assert template.quick_evaluate(doc, bad_mac) is None
    other, _ = template.render("000043")
    assert template.quick_evaluate(other, good) is None
    assert template.quick_evaluate(doc, _response(doc, {"39": "A0"}, mak=None)) is None
    assert template.quick_evaluate(doc, good[:-3]) is None


async def test_load_cli_writes_report(running_host: Any, tmp_path: Path) -> None:
    import trio
    from click.testing import CliRunner

    from terminal.cli import main

    for tid in terminal_ids("CL", 2):
        await running_host.add_terminal(tid)
    card = running_host.cards["good"]
    report_path = tmp_path / "report.json"
    args = ["load", "--host", f"{running_host.host}:{running_host.port}", "--terminals", "2",
            "--duration", "1", "--rate", "20", "--tid-prefix", "CL", "--mid", running_host.mid,
            "--tmk", LOAD_TMK, "--track2", card.track2, "--pin", card.pin,
            "--report", str(report_path), "--json"]
    result = await trio.to_thread.run_sync(
        lambda: CliRunner().invoke(main, args, catch_exceptions=False))
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["terminals_signed_on"] == 2 and report["errors"] == {}
    assert 10 <= report["completed"] <= 30  # --rate 20 for about a second
    assert card.pan not in report_path.read_text()


async def test_load_reverses_what_went_unanswered(running_host: Any, nursery: Any) -> None:
    from tests.test_term_host import Proxy, swallow

    await running_host.add_terminal("LR000001")
    proxy = Proxy(running_host.host, running_host.port)
    await proxy.start(nursery)
    proxy.on_next("0210", swallow)
    card = running_host.cards["good"]
    settings = LoadSettings(
        # paced: unpaced, a fast machine sold over 999 times in 1.5 s, which no F48 can settle
        "127.0.0.1", proxy.port, 1, 1.5, 200.0, parse_mix("sale=1"), ["LR000001"],
        running_host.mid, bytes.fromhex(LOAD_TMK), [Card.from_track2(card.track2)], None,
        timeout=0.3)
    report = await run_load(settings)
    assert report["errors"] == {"sale: NoResponse": 1}
    assert report["operations"]["reversal"]["codes"] == {"00": 1}
    assert set(report["settlements"]) == {"balanced"}  # a full batch settles mid-run too
    assert "0400" in proxy.sent_mtis()


async def test_load_progress_line_shows_rate_p99_and_codes(running_host: Any) -> None:
    tids = terminal_ids("PG", 2)
    for tid in tids:
        await running_host.add_terminal(tid)
    card = running_host.cards["good"]
    settings = LoadSettings(
        running_host.host, running_host.port, len(tids), 2.5, 0.0, parse_mix("sale=1"), tids,
        running_host.mid, bytes.fromhex(LOAD_TMK), [Card.from_track2(card.track2)], card.pin,
        settle=False)
    lines: list[str] = []
    report = await run_load(settings, lines.append)
    assert lines, "no progress line"
    assert all("rate=" in line and "p99=" in line and "codes 00:" in line for line in lines)
    shown = [int(line.split("codes 00:")[1].split()[0]) for line in lines]
    assert shown == sorted(shown) and 0 < shown[-1] <= report["response_codes"]["00"]


async def test_load_fails_over_to_the_secondary_host(running_host: Any, tmp_path: Path) -> None:
    """posterm load --host PRIMARY,SECONDARY: the primary refuses, every terminal works
    through the secondary."""
    import trio
    from click.testing import CliRunner

    from terminal.cli import main
    from tests.test_term_cli import free_port

    for tid in terminal_ids("FO", 2):
        await running_host.add_terminal(tid)
    card = running_host.cards["good"]
    report_path = tmp_path / "report.json"
    hosts = f"127.0.0.1:{free_port()},{running_host.host}:{running_host.port}"
    args = ["load", "--host", hosts, "--terminals", "2", "--duration", "0.5", "--rate", "20",
            "--tid-prefix", "FO", "--mid", running_host.mid, "--tmk", LOAD_TMK,
            "--track2", card.track2, "--pin", card.pin, "--report", str(report_path), "--json"]
    result = await trio.to_thread.run_sync(
        lambda: CliRunner().invoke(main, args, catch_exceptions=False))
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["terminals_signed_on"] == 2 and report["errors"] == {}
    assert report["completed"] >= 5
