"""Merchant fees end to end: standards and assignments made with the CLI, real terminals
selling, voiding, refunding and reversing against a real host over TCP, and the day's fee
report checked line by line and total by total (issue 21)."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from datetime import date
from fractions import Fraction
from pathlib import Path

from click.testing import CliRunner

from host.cli import main
from host.db import connect
from host.feereport import fee_settlement_report
from host.provision import add_merchant, add_terminal
from tests.conftest import TMK, RunningHost
from tests.hostkit import TestTerminal

MID2 = "222222222222222"
TID2 = "22222222"


def poshost(db: Path, *args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--db", str(db)])
    assert result.exit_code == 0, result.output
    return result.output


def poshost_fails(db: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--db", str(db)])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.output


async def _day(running_host: RunningHost) -> dict[str, dict[str, int]]:
    """Two merchants on two standards (one with an organisation rule, one with an entry-mode
    rule), a standard changed mid-day; returns each answer's RRN -> its kind and amount."""
    db, mid = running_host.db_path, running_host.mid
    await add_merchant(db, MID2, "Lab Book Shop")
    await add_terminal(db, running_host.hsm, TID2, MID2, tmk_hex=TMK)
    poshost(db, "fee", "add", "--name", "STD-1", "--model", "percent:0.38%,min:0.10,max:25.00")
    poshost(db, "fee", "add", "--name", "STD-2", "--model",
            "tiers:100.00=1%/*=0.5%,per-txn:0.10", "--collect", "external")
    poshost(db, "fee", "add", "--name", "FOREIGN", "--model", "percent:2%")
    poshost(db, "fee", "add", "--name", "KEYED", "--model", "per-txn:1.00",
            "--collect", "external")
    poshost(db, "merchant", "set", "--mid", mid, "--fee", "STD-1")
    poshost(db, "merchant", "set", "--mid", mid, "--fee", "FOREIGN", "--organisation", "VIS")
    poshost(db, "merchant", "set", "--mid", MID2, "--fee", "STD-2")
    poshost(db, "merchant", "set", "--mid", MID2, "--fee", "KEYED", "--entry-mode", "manual")
    cards = running_host.cards
    good, foreign = cards["good"], cards["foreign"]
    a = running_host.terminal()
    b = TestTerminal(running_host.host, running_host.port, TID2, MID2, TMK)
    async with a, b:
        await a.sign_on()
        await b.sign_on()
        s100 = await a.sale(good, 10_000)                 # 0.38
        assert s100.code == "00"
        await a.sale(good, 1_000)                         # 0.038 -> floor 0.10
        voided = await a.sale(good, 5_000)
        assert (await a.void(good, voided)).code == "00"  # fee removed
        reversed_sale = await a.sale(good, 3_000)
        assert (await a.reverse(reversed_sale.request)).code == "00"  # fee removed
        refunded = await a.sale(good, 20_000)             # 0.76, returned 0.19 + 0.57
        assert (await a.refund(good, refunded, 5_000)).code == "00"
        assert (await a.refund(good, refunded, 15_000)).code == "00"
        revived = await a.sale(good, 2_000)               # void reversed: 0.10 again
        void = await a.void(good, revived)
        assert (await a.reverse(void.request)).code == "00"
        assert (await a.sale(foreign, 1_000)).code == "00"  # VIS rule: 2% = 0.20
        assert (await a.sale(cards["low"], 10**9)).code != "00"  # declined: no fee
        poshost(db, "fee", "change", "--name", "STD-1", "--model", "percent:1%")
        assert (await a.sale(good, 10_000)).code == "00"  # STD-1 v2: 1.00
        b100 = await b.sale(good, 10_000)                 # band edge: 1.00 + 0.10
        assert (await b.sale(good, 10_001)).code == "00"  # 0.50005 -> 0.50, + 0.10
        assert (await b.refund(good, b100, 10_000)).code == "00"  # all 1.10 returned
        assert (await b.sale(good, 700, manual=True)).code == "00"  # KEYED: 1.00
    return {}


def _fees(report: dict) -> list[tuple[str, str, int, str, int]]:
    return [(x["tid"], x["type"], x["amount"], x["fee_standard"], x["fee"])
            for x in report["lines"]]


async def test_fees_over_a_day_of_sales_voids_refunds_reversals(
        running_host: RunningHost) -> None:
    await _day(running_host)
    db = running_host.db_path
    conn = connect(db)
    report = fee_settlement_report(conn, date.today().isoformat())
    conn.close()
    a, b = running_host.tid, TID2
    assert _fees(report) == [
        (a, "sale", 10_000, "STD-1 v1", 38),
        (a, "sale", 1_000, "STD-1 v1", 10),
        (a, "sale", 5_000, "", 0),            # voided
        (a, "void", 5_000, "", 0),
        (a, "sale", 3_000, "", 0),            # reversed
        (a, "sale", 20_000, "STD-1 v1", 76),
        (a, "refund", 5_000, "STD-1 v1", -19),
        (a, "refund", 15_000, "STD-1 v1", -57),
        (a, "sale", 2_000, "STD-1 v1", 10),   # its void was reversed: live again
        (a, "void", 2_000, "", 0),
        (a, "sale", 1_000, "FOREIGN v1", 20),
        (a, "sale", 10**9, "", 0),            # declined
        (a, "sale", 10_000, "STD-1 v2", 100),
        (b, "sale", 10_000, "STD-2 v1", 110),
        (b, "sale", 10_001, "STD-2 v1", 60),
        (b, "refund", 10_000, "STD-2 v1", -110),
        (b, "sale", 700, "KEYED v1", 100),
    ]
    days = {m["mid"]: m for m in report["merchant_days"]}
    assert days[running_host.mid] | {"name": ""} == {
        "mid": running_host.mid, "name": "", "sales": 6,
        "gross": 10_000 + 1_000 + 20_000 + 2_000 + 1_000 + 10_000, "refunds_count": 2,
        "refunds": 20_000, "fees": 38 + 10 + 76 - 19 - 57 + 10 + 20 + 100,
        "fees_internal": 178, "fees_external": 0,
        "net_to_pay": 44_000 - 20_000 - 178, "fees_to_bill": 0,
        "channel_cost": 0, "margin": 178, "standards": "FOREIGN v1 STD-1 v1 STD-1 v2"}
    assert days[MID2] | {"name": ""} == {
        "mid": MID2, "name": "", "sales": 3, "gross": 20_701, "refunds_count": 1,
        "refunds": 10_000, "fees": 160, "fees_internal": 0, "fees_external": 160,
        "net_to_pay": 10_701, "fees_to_bill": 160, "channel_cost": 0, "margin": 160,
        "standards": "KEYED v1 STD-2 v1"}
    assert set(report["fee_standards"]) == {"STD-1 v1", "STD-1 v2", "FOREIGN v1",
                                            "STD-2 v1", "KEYED v1"}
    assert report["channels"] == {"on-us": {"count": 12, "revenue": 338, "cost": 0,
                                            "margin": 338}}
    _assert_totals_add_up(report)
    listed = json.loads(poshost(db, "fee", "list", "--json"))
    assert [(x["name"], x["version"], x["model"]) for x in listed if x["name"] == "STD-1"] == [
        ("STD-1", 1, "percent:0.38%,min:0.10,max:25.00"), ("STD-1", 2, "percent:1%")]


def _assert_totals_add_up(report: dict) -> None:
    lines = report["lines"]
    for m in report["merchant_days"]:
        mine = [x for x in lines if x["mid"] == m["mid"]]
        assert m["gross"] == sum(x["net"] for x in mine if x["net"] > 0)
        assert m["refunds"] == -sum(x["net"] for x in mine if x["net"] < 0)
        assert m["fees"] == sum(x["fee"] for x in mine)
        assert m["fees"] == m["fees_internal"] + m["fees_external"]
        assert m["net_to_pay"] == m["gross"] - m["refunds"] - m["fees_internal"]
        assert m["channel_cost"] == sum(x["channel_cost"] for x in mine)
        assert m["gross"] - m["refunds"] == report["totals"]["merchants"][m["mid"]]["net"]
    total_fees = sum(x["fee"] for x in lines)
    total_cost = sum(x["channel_cost"] for x in lines)
    assert sum(m["fees"] for m in report["merchant_days"]) == total_fees
    for section, key in (("fee_standards", "fee_standard"), ("channels", "channel")):
        groups = report[section]
        assert sum(g["revenue"] for g in groups.values()) == total_fees
        assert sum(g["cost"] for g in groups.values()) == total_cost
        for name, g in groups.items():
            mine = [x for x in lines if (x[key] or "(none)") == name]
            assert g["revenue"] == sum(x["fee"] for x in mine)
            assert g["cost"] == sum(x["channel_cost"] for x in mine)
            assert g["margin"] == g["revenue"] - g["cost"]
    for x in lines:
        assert x["margin"] == x["fee"] - x["channel_cost"]


async def test_channel_costs_from_routing_columns(running_host: RunningHost) -> None:
    """Routing's interface: off-us rows carry route and channel_cost (host/routestore.py).
    Set here by hand on a local day so per-channel revenue, cost and margin are exercised
    without upstream hosts (tests/test_routing_*.py route real sales)."""
    await _day(running_host)
    db = running_host.db_path
    conn = connect(db)
    # the foreign sale went out on VISANET; MID2's sales and refund on CUPNET; the voided
    # sale carries a cost too, but a voided sale moves no money: counted 0
    conn.execute("UPDATE txns SET route='VISANET', channel_cost=6 WHERE pan_masked LIKE '4%'")
    conn.execute("UPDATE txns SET route='CUPNET', channel_cost=2 WHERE mid=?", (MID2,))
    conn.execute("UPDATE txns SET route='CUPNET', channel_cost=2 WHERE amount=5000"
                 " AND kind='sale'")
    report = fee_settlement_report(conn, date.today().isoformat())
    conn.close()
    assert report["channels"] == {
        "CUPNET": {"count": 4, "revenue": 160, "cost": 8, "margin": 152},
        "VISANET": {"count": 1, "revenue": 20, "cost": 6, "margin": 14},
        "on-us": {"count": 7, "revenue": 158, "cost": 0, "margin": 158},
    }
    assert report["fee_standards"]["FOREIGN v1"] == {"count": 1, "revenue": 20, "cost": 6,
                                                     "margin": 14}
    days = {m["mid"]: m for m in report["merchant_days"]}
    assert days[MID2]["channel_cost"] == 8 and days[MID2]["margin"] == 152
    _assert_totals_add_up(report)
    out = CliRunner().invoke(main, ["settlement", "report", "--date", date.today().isoformat(),
                                    "--db", str(db)])
    assert out.exit_code == 0, out.output
    rows = list(csv.reader(io.StringIO(out.output)))
    assert rows[0][-6:] == ["fee_standard", "collect", "fee", "channel", "channel_cost",
                            "margin"]
    merchant_rows = {r[2]: r for r in rows if r and r[0] == "merchant_day"}
    assert merchant_rows[MID2][11:14] == ["10701", "160", "8"]  # net_to_pay, to bill, cost
    assert ["margin", "channel", "VISANET", "1", "20", "6", "14"] in rows


async def test_merchant_and_margin_commands(running_host: RunningHost) -> None:
    await _day(running_host)
    db, day = running_host.db_path, date.today().isoformat()
    text = poshost(db, "settlement", "merchants", "--date", day)
    assert "Lab Book Shop" in text and "107.01" in text and "1.60" in text  # net, to bill
    assert "440.00" in text and "238.22" in text  # Lab Coffee Shop: gross - refunds - fees
    rows = json.loads(poshost(db, "settlement", "merchants", "--date", day, "--json"))
    assert {r["mid"]: r["net_to_pay"] for r in rows} == {running_host.mid: 23_822,
                                                          MID2: 10_701}
    margins = json.loads(poshost(db, "settlement", "margins", "--date", day, "--json"))
    assert margins["channels"]["on-us"]["revenue"] == 338
    assert "STD-2 v1" in poshost(db, "settlement", "margins", "--date", day)
    assigned = json.loads(poshost(db, "fee", "assignments", "--mid", MID2, "--json"))
    assert [(r["entry_mode"], r["standard"]) for r in assigned] == [("any", "STD-2"),
                                                                    ("manual", "KEYED")]


async def test_fee_commands_refuse_clearly(running_host: RunningHost) -> None:
    db = running_host.db_path
    poshost(db, "fee", "add", "--name", "STD-1", "--model", "per-txn:0.50")
    assert poshost_fails(db, "fee", "add", "--name", "STD-1", "--model", "per-txn:1")[0] == 1
    code, out = poshost_fails(db, "fee", "add", "--name", "X", "--model", "percent:0.38")
    assert code == 2 and "not a percentage" in out
    assert poshost_fails(db, "fee", "change", "--name", "NOPE", "--model", "per-txn:1")[0] == 1
    assert poshost_fails(db, "fee", "change", "--name", "STD-1")[0] == 2
    code, out = poshost_fails(db, "merchant", "set", "--mid", running_host.mid, "--fee", "NOPE")
    assert code == 1 and "no fee standard NOPE" in out
    code, out = poshost_fails(db, "merchant", "set", "--mid", "999999999999999", "--fee",
                              "STD-1")
    assert code == 1 and "no merchant" in out
    # 'none' removes an assignment: the merchant's next sale carries no fee
    poshost(db, "merchant", "set", "--mid", running_host.mid, "--fee", "STD-1")
    poshost(db, "merchant", "set", "--mid", running_host.mid, "--fee", "none")
    async with running_host.terminal() as t:
        await t.sign_on()
        assert (await t.sale(running_host.cards["good"], 10_000)).code == "00"
    conn = connect(db)
    report = fee_settlement_report(conn, date.today().isoformat())
    conn.close()
    assert [x["fee"] for x in report["lines"]] == [0]


async def test_the_readme_day(running_host: RunningHost) -> None:
    """README, 'A day with two merchants': the numbers a person checks by hand."""
    db = running_host.db_path
    await add_merchant(db, MID2, "Book shop")
    await add_terminal(db, running_host.hsm, TID2, MID2, tmk_hex=TMK)
    poshost(db, "fee", "add", "--name", "STD-1", "--model", "percent:0.38%,min:0.10,max:25.00")
    poshost(db, "fee", "add", "--name", "STD-2", "--model",
            "tiers:100.00=1%/*=0.5%,per-txn:0.10", "--collect", "external")
    poshost(db, "merchant", "set", "--mid", running_host.mid, "--fee", "STD-1")
    poshost(db, "merchant", "set", "--mid", MID2, "--fee", "STD-2")
    good = running_host.cards["good"]
    a = running_host.terminal()
    b = TestTerminal(running_host.host, running_host.port, TID2, MID2, TMK)
    async with a, b:
        await a.sign_on()
        await b.sign_on()
        for amount in (10_000, 1_000):
            await a.sale(good, amount)
        voided = await a.sale(good, 5_000)
        await a.sale(good, 800_000)
        assert (await a.void(good, voided)).code == "00"
        await b.sale(good, 10_000)
        refunded = await b.sale(good, 25_000)
        assert (await b.refund(good, refunded, 10_000)).code == "00"
    rows = json.loads(poshost(db, "settlement", "merchants", "--date",
                              date.today().isoformat(), "--json"))
    assert [(r["gross"], r["refunds"], r["fees"], r["net_to_pay"], r["fees_to_bill"])
            for r in rows] == [(811_000, 0, 2_548, 808_452, 0),
                               (35_000, 10_000, 191, 25_000, 191)]


async def test_a_refund_on_a_later_day_returns_its_sales_fee(running_host: RunningHost) -> None:
    """The sale counts on its own day; its refunds return their share on theirs, under the
    sale's standard version (read back from the earlier day's row)."""
    await _day(running_host)
    conn = connect(running_host.db_path)
    conn.execute("UPDATE txns SET settlement_date='2000-01-02' WHERE kind='sale' AND"
                 " amount=20000")
    earlier = fee_settlement_report(conn, "2000-01-02")
    today = fee_settlement_report(conn, date.today().isoformat())
    conn.close()
    assert [(x["type"], x["fee"], x["fee_standard"]) for x in earlier["lines"]] == [
        ("sale", 76, "STD-1 v1")]
    refunds = [(x["fee"], x["fee_standard"]) for x in today["lines"] if x["type"] == "refund"]
    assert refunds == [(-19, "STD-1 v1"), (-57, "STD-1 v1"), (-110, "STD-2 v1")]
    days = {m["mid"]: m for m in today["merchant_days"]}
    assert days[running_host.mid]["fees"] == 178 - 76
    _assert_totals_add_up(today)
    _assert_totals_add_up(earlier)


def _oracle_fee(amount: int) -> int:
    """STD-1 (0.38 %, min 0.10, max 25.00) written out apart from host/fees.py."""
    return min(max((amount * 38 * 2 + 10_000) // 20_000, 10), 2_500, amount)


def _oracle_share(fee: int, part: int, whole: int) -> int:
    exact = Fraction(fee * part, whole)
    return math.floor(exact + Fraction(1, 2))


async def test_random_sequences_keep_fees_exact(running_host: RunningHost) -> None:
    """Seeded random sales, voids, reversals (of sales and of voids) and partial refunds over
    TCP; every line's fee and every total against a model kept apart from the host's."""
    db, rng = running_host.db_path, random.Random(21)
    poshost(db, "fee", "add", "--name", "STD-1", "--model", "percent:0.38%,min:0.10,max:25.00")
    poshost(db, "merchant", "set", "--mid", running_host.mid, "--fee", "STD-1")
    good = running_host.cards["good"]
    sales: list[dict] = []          # answer, amount, live, refunded, void (answer or None)
    expected: list[list[int]] = []  # per txns row, in order: [fee] (a list: updated later)
    done: dict[str, int] = {}
    async with running_host.terminal() as t:
        await t.sign_on()
        for _ in range(60):
            live = [s for s in sales if s["live"]]
            unrefunded = [s for s in live if not s["refunded"]]
            voided = [s for s in sales if s["void"] is not None and not s["live"]
                      and not s["reversed"]]
            op = rng.choice(["sale"] * 3 + ["void", "refund", "reverse", "unvoid"])
            if op == "void" and unrefunded:
                s = rng.choice(unrefunded)
                s["void"] = await t.void(good, s["answer"])
                done["void"] = done.get("void", 0) + 1
                assert s["void"].code == "00"
                s["live"] = False
                s["row"][0] = 0
                expected.append([0])
            elif op == "refund" and [s for s in live if s["refunded"] < s["amount"]]:
                s = rng.choice([s for s in live if s["refunded"] < s["amount"]])
                part = rng.choice([s["amount"] - s["refunded"],
                                   rng.randint(1, s["amount"] - s["refunded"])])
                assert (await t.refund(good, s["answer"], part)).code == "00"
                done["refund"] = done.get("refund", 0) + 1
                fee = _oracle_fee(s["amount"])
                back = (_oracle_share(fee, s["refunded"] + part, s["amount"])
                        - _oracle_share(fee, s["refunded"], s["amount"]))
                s["refunded"] += part
                expected.append([-back])
            elif op == "reverse" and unrefunded:
                s = rng.choice(unrefunded)
                assert (await t.reverse(s["answer"].request)).code == "00"
                done["reverse"] = done.get("reverse", 0) + 1
                s["live"], s["reversed"] = False, True
                s["row"][0] = 0
            elif op == "unvoid" and voided:
                s = rng.choice(voided)
                assert (await t.reverse(s["void"].request)).code == "00"
                done["unvoid"] = done.get("unvoid", 0) + 1
                s["live"], s["void"] = True, None
                s["row"][0] = _oracle_fee(s["amount"])
            else:
                amount = rng.choice([rng.randint(1, 3_000), rng.randint(1, 1_000_000),
                                     2_631, 2_632, 657_894, 657_895])
                answer = await t.sale(good, amount)
                done["sale"] = done.get("sale", 0) + 1
                assert answer.code == "00"
                row = [_oracle_fee(amount)]
                sales.append({"answer": answer, "amount": amount, "live": True,
                              "refunded": 0, "void": None, "reversed": False, "row": row})
                expected.append(row)
    assert min(done.get(op, 0) for op in ("sale", "void", "refund", "reverse", "unvoid")) >= 2
    conn = connect(db)
    report = fee_settlement_report(conn, date.today().isoformat())
    conn.close()
    assert [x["fee"] for x in report["lines"]] == [e[0] for e in expected]
    _assert_totals_add_up(report)
    (day,) = report["merchant_days"]
    assert day["fees"] == sum(e[0] for e in expected)
    assert day["net_to_pay"] == (sum(s["amount"] for s in sales if s["live"])
                                 - sum(s["refunded"] for s in sales) - day["fees"])
