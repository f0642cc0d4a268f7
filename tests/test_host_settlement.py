"""End of day over real TCP: balanced and unbalanced settlement, batch upload, exceptions,
77 after close, and the daily reconciliation report."""

from __future__ import annotations

import json
from datetime import date

import pytest
from click.testing import CliRunner

from host.cli import main
from host.db import connect
from host.reports import settlement_report
from specs.composite import (
    BALANCED,
    NOT_BALANCED,
    SettlementTotals,
    Totals,
    UploadRecord,
    decode_field60,
    decode_settlement_totals,
)
from tests.conftest import BOTH_STORES, RunningHost, chosen_store
from tests.hostkit import Answer, TestTerminal


@pytest.fixture(params=BOTH_STORES)
def store(request: pytest.FixtureRequest) -> str:
    """These scenarios run on SQLite and on PostgreSQL."""
    return chosen_store(request)


def totals(debit: list[int], credit: list[int], foreign: list[int] | None = None
           ) -> SettlementTotals:
    foreign = foreign or []
    return SettlementTotals(Totals(sum(debit), len(debit), sum(credit), len(credit)),
                            Totals(sum(foreign), len(foreign)))


async def test_balanced_settlement_closes_batch_then_77(running_host: RunningHost) -> None:
    cards = running_host.cards
    async with running_host.terminal() as t:
        await t.sign_on()
        s1 = await t.sale(cards["good"], 1_000)
        await t.sale(cards["good"], 2_000)
        s3 = await t.sale(cards["good"], 3_000)
        await t.void(cards["good"], s3)
        await t.refund(cards["good"], s1, 400)
        await t.sale(cards["foreign"], 700)
        reversed_sale = await t.sale(cards["good"], 5_000)
        await t.reverse(reversed_sale.request)
        await t.sale(cards["low"], 999_999)  # declined: not counted
        answer = await t.settle(totals([1_000, 2_000], [400], [700]))
        assert answer.code == "00"
        result = decode_settlement_totals(answer["48"])
        assert result.domestic.result == BALANCED and result.foreign.result == BALANCED
        old_batch = t.batch
        late = await t.sale(cards["good"], 100)
        assert late.code == "77"
        assert late.frame.header.processing_requirement == 3
        signed = await t.sign_on()
        assert decode_field60(signed["60"]).batch == f"{int(old_batch) + 1:06d}"
        assert (await t.sale(cards["good"], 100)).code == "00"
        t.batch = old_batch
        assert (await t.reverse(late.request)).code == "77"


async def _upload(t: TestTerminal, records: list[UploadRecord]) -> list[Answer]:
    answers = []
    for i in range(0, len(records), 8):
        answers.append(await t.upload(records[i:i + 8]))
    answers.append(await t.upload_end(len(records)))
    return answers


async def test_unbalanced_settlement_upload_and_exceptions(running_host: RunningHost) -> None:
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        sales = [await t.sale(card, 100 + i) for i in range(22)]
        records = [UploadRecord(s.request["11"], card.pan, int(s.request["4"])) for s in sales]
        dropped = records.pop(5)                                   # only at host
        records[10] = UploadRecord(records[10].trace, card.pan, 1)  # amount differs
        records.append(UploadRecord("900001", card.pan, 4242))     # only at terminal
        claim = totals([r.amount for r in records], [])
        answer = await t.settle(claim)
        assert decode_settlement_totals(answer["48"]).domestic.result == NOT_BALANCED
        assert (await t.sale(card, 100)).code == "77"  # batch is uploading
        answers = await _upload(t, records)
        assert len(answers) == 4 and all(a.code == "00" for a in answers)
    conn = connect(running_host.db_path)
    rows = conn.execute("SELECT kind, trace, host_data, terminal_data FROM exceptions"
                        " ORDER BY trace").fetchall()
    state = conn.execute("SELECT state FROM batches WHERE batch=1").fetchone()[0]
    conn.close()
    kinds = {(r[0], r[1]) for r in rows}
    assert kinds == {("only_at_host", dropped.trace), ("amount_differs", records[10].trace),
                     ("only_at_terminal", "900001")}
    assert state == "closed"
    for _, _, host_data, terminal_data in rows:
        for blob in (host_data, terminal_data):
            assert blob is None or card.pan not in blob
    runner = CliRunner()
    db = str(running_host.db_path)
    shown = runner.invoke(main, ["batch", "show", running_host.tid, "1", "--db", db])
    assert shown.exit_code == 0, shown.output
    assert "amount_differs" in shown.output
    listed = runner.invoke(main, ["exceptions", "list", "--open", "--db", db])
    first_id = listed.output.splitlines()[1].split()[0]
    resolved = runner.invoke(main, ["exceptions", "resolve", first_id, "--comment", "ok",
                                    "--db", db])
    assert resolved.exit_code == 0, resolved.output
    listed = runner.invoke(main, ["exceptions", "list", "--open", "--db", db])
    assert len(listed.output.splitlines()) == 3


async def test_report_totals_equal_lines(running_host: RunningHost) -> None:
    cards = running_host.cards
    other = await running_host.add_terminal("87654321")
    async with running_host.terminal() as t, other:
        await t.sign_on()
        await other.sign_on()
        s = await t.sale(cards["good"], 10_000)
        await t.refund(cards["good"], s, 2_500)
        v = await other.sale(cards["good"], 700)
        await other.void(cards["good"], v)
        await other.sale(cards["good"], 300)
        r = await t.sale(cards["good"], 50)
        await t.reverse(r.request, reason="A0")
        await t.sale(cards["low"], 10**9)
    conn = connect(running_host.db_path)
    report = settlement_report(conn, date.today().isoformat())
    conn.close()
    lines = report["lines"]
    assert sum(x["net"] for x in lines) == report["totals"]["all"]["net"] == 10_000 - 2_500 + 300
    for scope, key in (("merchants", "mid"), ("terminals", "tid")):
        for ident, tot in report["totals"][scope].items():
            mine = [x for x in lines if x[key] == ident]
            assert tot["net"] == sum(x["net"] for x in mine)
            assert tot["count"] == len(mine)
    assert {x["status"] for x in lines} >= {"approved", "voided", "reversed", "declined"}
    assert any(x["reversal_reason"] == "A0" for x in lines)
    out = CliRunner().invoke(main, ["settlement", "report", "--date", date.today().isoformat(),
                                    "--format", "json", "--db", str(running_host.db_path)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["totals"]["all"]["net"] == 7_800
