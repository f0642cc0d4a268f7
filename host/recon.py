"""T+1 check between an acquirer and its upstream (issue #20): the upstream writes its daily
file of one link (`poshost settlement report --link ACQ1 --date D`), the acquirer imports it
against its own record of that route (`poshost recon import --route NET-A FILE`) and records
every difference as a reconciliation exception: only at the network, only at the acquirer,
amount differs.

Both sides are reduced to the same thing, the sales that stand (approved, neither reversed
nor voided) keyed by the acquirer's RRN, and compared by the pure :func:`compare`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from host.errors import ConfigError

FILE_FORMAT = "poshost-h2h-daily/1"


def link_daily_file(conn: sqlite3.Connection, link: str, day: str) -> dict[str, Any]:
    """The upstream's file for one link and settlement date (JSON-ready; masked PANs)."""
    row = conn.execute("SELECT acquirer_id FROM links WHERE name=?", (link,)).fetchone()
    if row is None:
        raise ConfigError(f"no link {link}")
    lines = [dict(r) for r in conn.execute(
        "SELECT rrn, stan, kind, pan_masked, amount, rc, auth_code, reversed, voided, created"
        " FROM h2h_txns WHERE link=? AND settlement_date=? ORDER BY id", (link, day))]
    standing = [ln for ln in lines if ln["kind"] == "sale" and ln["rc"] == "00"
                and not ln["reversed"] and not ln["voided"]]
    return {"format": FILE_FORMAT, "link": link, "acquirer_id": row["acquirer_id"],
            "date": day, "lines": lines,
            "totals": {"sales": len(standing), "amount": sum(ln["amount"] for ln in standing)}}


@dataclass(frozen=True)
class Difference:
    kind: str
    """only_at_network, only_at_acquirer or amount_differs."""
    rrn: str
    network_amount: int | None
    acquirer_amount: int | None


def compare(network: Mapping[str, int], acquirer: Mapping[str, int]) -> list[Difference]:
    """Standing sales by RRN on each side -> the differences, by RRN.

    >>> [d.kind for d in compare({"1": 100, "2": 50}, {"2": 40, "3": 7})]
    ['only_at_network', 'amount_differs', 'only_at_acquirer']
    """
    out = []
    for rrn in sorted(set(network) | set(acquirer)):
        n, a = network.get(rrn), acquirer.get(rrn)
        if a is None:
            out.append(Difference("only_at_network", rrn, n, None))
        elif n is None:
            out.append(Difference("only_at_acquirer", rrn, None, a))
        elif n != a:
            out.append(Difference("amount_differs", rrn, n, a))
    return out


def network_standing(data: Mapping[str, Any]) -> dict[str, int]:
    if data.get("format") != FILE_FORMAT:
        raise ConfigError(f"not a {FILE_FORMAT} file")
    return {ln["rrn"]: int(ln["amount"]) for ln in data["lines"]
            if ln["kind"] == "sale" and ln["rc"] == "00" and not ln["reversed"]
            and not ln["voided"]}


def acquirer_standing(conn: sqlite3.Connection, route: str, day: str
                      ) -> dict[str, sqlite3.Row]:
    rows = conn.execute(
        "SELECT rrn, amount, tid, batch, stan FROM txns WHERE route=? AND settlement_date=?"
        " AND kind='sale' AND rc='00' AND reversed=0 AND voided_by IS NULL", (route, day))
    return {r["rrn"]: r for r in rows}


def import_daily_file(conn: sqlite3.Connection, route: str, data: Mapping[str, Any]
                      ) -> list[Difference]:
    """Compare and record each difference in `exceptions` (one transaction)."""
    if not conn.execute("SELECT 1 FROM routes WHERE name=?", (route,)).fetchone():
        raise ConfigError(f"no route {route}")
    day = str(data.get("date", ""))
    mine = acquirer_standing(conn, route, day)
    diffs = compare(network_standing(data), {k: int(r["amount"]) for k, r in mine.items()})
    created = datetime.now().isoformat(timespec="seconds")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for d in diffs:
            row = mine.get(d.rrn)
            conn.execute(
                "INSERT INTO exceptions (tid, batch, kind, trace, host_data, terminal_data,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row["tid"] if row else route, row["batch"] if row else 0,
                 f"route_{d.kind}", row["stan"] if row else None,
                 json.dumps({"route": route, "rrn": d.rrn, "amount": d.acquirer_amount}),
                 json.dumps({"network": route, "rrn": d.rrn, "amount": d.network_amount}),
                 created))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return diffs
