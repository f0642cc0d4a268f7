"""Fees in the daily reconciliation: each line's merchant fee and channel cost, and per
merchant, per fee standard and per channel totals that add up to the lines.

Per merchant and day: gross (live sales), refunds (approved refunds), fees (sale fees less
the fees refunds return), net to pay (gross - refunds - the fees collected internally) and
fees to bill (the fees of external standards). Per standard and per channel: revenue (the
fees), cost (the channel costs) and margin (revenue - cost).

Channel costs come from routing: off-us rows carry ``route`` (the channel's name) and
``channel_cost`` (minor units). A store without those columns is all on-us, cost 0. A
channel's cost is counted on the lines that move money (live sales, approved refunds).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from host.db import is_shared
from host.feestore import TxnFee, txn_fees
from host.reports import settlement_report

ON_US = "on-us"
FEE_COLUMNS = ("fee_standard", "collect", "fee", "channel", "channel_cost", "margin")
MERCHANT_COLUMNS = ("mid", "name", "sales", "gross", "refunds_count", "refunds", "fees",
                    "fees_internal", "fees_external", "net_to_pay", "fees_to_bill",
                    "channel_cost", "margin", "standards")
MARGIN_COLUMNS = ("count", "revenue", "cost", "margin")


def routing_columns(conn: sqlite3.Connection) -> tuple[bool, bool]:
    """Whether txns has routing's ``route`` and ``channel_cost`` (portable: the cursor's
    description of an empty select)."""
    cur = conn.execute("SELECT * FROM txns WHERE 1=0")
    names = {d[0] for d in cur.description or ()}
    return "route" in names, "channel_cost" in names


@dataclass(frozen=True)
class _Facts:
    fee: TxnFee
    channel: str
    channel_cost: int


def _line_facts(conn: sqlite3.Connection, date: str) -> list[_Facts]:
    """Per report line, in the report's order (same query order as host.reports)."""
    has_route, has_cost = routing_columns(conn)
    route = "route" if has_route else "NULL"
    cost = "channel_cost" if has_cost else "0"
    rows = conn.execute(
        f"SELECT *, {route} AS fee_route, {cost} AS fee_channel_cost FROM txns"
        " WHERE settlement_date=? AND kind != 'balance' ORDER BY mid, tid, batch, id",
        (date,)).fetchall()
    fees = txn_fees(conn, rows)
    return [_Facts(fees[r["id"]], r["fee_route"] or ON_US, int(r["fee_channel_cost"] or 0))
            for r in rows]


def fee_settlement_report(conn: sqlite3.Connection, date: str) -> dict[str, Any]:
    """host.reports.settlement_report with fee columns on each line and the sections
    ``merchant_days``, ``fee_standards`` and ``channels``."""
    # one snapshot for both reads (PostgreSQL's default READ COMMITTED would take two)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ" if is_shared(conn) else "BEGIN")
    try:
        report = settlement_report(conn, date)
        facts = _line_facts(conn, date)
    finally:
        conn.execute("COMMIT")
    if len(facts) != len(report["lines"]):
        raise RuntimeError("transactions changed between the two reads of one snapshot")
    for line, f in zip(report["lines"], facts, strict=True):
        moves = line["net"] != 0
        cost = f.channel_cost if moves else 0
        line.update({
            "fee_standard": f.fee.standard.label if f.fee.standard else "",
            "collect": f.fee.standard.collect if f.fee.standard else "",
            "fee": f.fee.fee, "channel": f.channel, "channel_cost": cost,
            "margin": f.fee.fee - cost})
    lines = report["lines"]
    names = dict(conn.execute("SELECT mid, name FROM merchants").fetchall())
    report["merchant_days"] = merchant_days(lines, names)
    report["fee_standards"] = _margins(lines, lambda x: x["fee_standard"] or "(none)")
    report["channels"] = _margins(lines, lambda x: x["channel"])
    return report


def merchant_days(lines: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """One row per merchant of the day's lines."""
    out = []
    for mid in sorted({x["mid"] for x in lines}):
        mine = [x for x in lines if x["mid"] == mid]
        sales = [x for x in mine if x["net"] > 0]
        refunds = [x for x in mine if x["net"] < 0]
        internal = sum(x["fee"] for x in mine if x["collect"] == "internal")
        external = sum(x["fee"] for x in mine if x["collect"] == "external")
        gross = sum(x["net"] for x in sales)
        refunded = -sum(x["net"] for x in refunds)
        cost = sum(x["channel_cost"] for x in mine)
        out.append({
            "mid": mid, "name": names.get(mid, ""), "sales": len(sales), "gross": gross,
            "refunds_count": len(refunds), "refunds": refunded, "fees": internal + external,
            "fees_internal": internal, "fees_external": external,
            "net_to_pay": gross - refunded - internal, "fees_to_bill": external,
            "channel_cost": cost, "margin": internal + external - cost,
            "standards": " ".join(sorted({x["fee_standard"] for x in mine
                                          if x["fee_standard"]}))})
    return out


def _margins(lines: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]
             ) -> dict[str, dict[str, int]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if line["net"] or line["fee"] or line["channel_cost"]:
            groups.setdefault(key(line), []).append(line)
    out = {}
    for name, mine in sorted(groups.items()):
        revenue = sum(x["fee"] for x in mine)
        cost = sum(x["channel_cost"] for x in mine)
        out[name] = {"count": len(mine), "revenue": revenue, "cost": cost,
                     "margin": revenue - cost}
    return out


def fee_report_csv(report: dict[str, Any]) -> str:
    """host.reports' CSV (lines with the fee columns, its totals), then the merchant-day,
    fee-standard and channel sections, each headed by its own row."""
    import csv
    import io

    from host.reports import REPORT_COLUMNS, report_csv

    out = io.StringIO()
    out.write(report_csv(report, columns=(*REPORT_COLUMNS, *FEE_COLUMNS)))
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([])
    writer.writerow(["merchant_day", "settlement_date", *MERCHANT_COLUMNS])
    for row in report["merchant_days"]:
        writer.writerow(["merchant_day", report["date"], *(row[c] for c in MERCHANT_COLUMNS)])
    for section, label in (("fee_standards", "fee_standard"), ("channels", "channel")):
        writer.writerow([])
        writer.writerow(["margin", "scope", "id", *MARGIN_COLUMNS])
        for ident, t in report[section].items():
            writer.writerow(["margin", label, ident, *(t[c] for c in MARGIN_COLUMNS)])
    return out.getvalue()
