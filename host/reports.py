"""Operator views over the store: terminals, cards, transactions, batches, exceptions and the
daily reconciliation report. Read-only except marking an exception resolved. PANs are masked."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from host.db import has_clear_pans
from host.errors import ConfigError
from specs.pretty import mask_pan

SALE_LIKE = ("sale",)
TXN_COLUMNS = ("id", "created", "tid", "mid", "batch", "stan", "kind", "pan_masked", "amount",
               "rc", "rrn", "auth_code", "status", "reversal_reason")


def _rows(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> list[dict]:
    return [dict(r) for r in conn.execute(sql, args).fetchall()]


def list_terminals(conn: sqlite3.Connection) -> list[dict]:
    return _rows(conn, "SELECT tid, mid, mac_algorithm AS mac, tmk_kcv, pik_kcv, mak_kcv,"
                       " keys_at AS signed_on, batch FROM terminals ORDER BY tid")


def list_cards(conn: sqlite3.Connection) -> list[dict]:
    """Cards with masked PANs; ``id`` is the keyed hash (`poshost card show --id`)."""
    if has_clear_pans(conn):  # an old database not yet upgraded by a command with the HSM
        rows = _rows(conn, "SELECT pan, expiry, balance, limit_minor AS \"limit\", status,"
                           " pin_tries, domestic, cvm FROM cards ORDER BY pan")
        for r in rows:
            r["pan"] = mask_pan(r["pan"])
        return rows
    return _rows(conn, "SELECT pan_masked AS pan, cards.pan_hash AS id, expiry, balance,"
                       " limit_minor AS \"limit\", status, pin_tries, domestic, cvm,"
                       " chip_cards.psn AS chip_psn FROM cards LEFT JOIN chip_cards"
                       " ON chip_cards.pan_hash = cards.pan_hash ORDER BY pan_masked")


def txn_status(row: sqlite3.Row | dict) -> str:
    if row["rc"] != "00":
        return "declined"
    if row["reversed"]:
        return "reversed"
    if row["voided_by"] is not None:
        return "voided"
    return "approved"


def list_txns(conn: sqlite3.Connection, tid: str | None = None, limit: int = 200) -> list[dict]:
    where, args = ("WHERE tid=?", (tid,)) if tid else ("", ())
    rows = conn.execute(f"SELECT * FROM txns {where} ORDER BY id DESC LIMIT ?",
                        (*args, limit)).fetchall()
    out = []
    for r in rows:
        d = dict(r)
        d["status"] = txn_status(r)
        out.append({k: d[k] for k in TXN_COLUMNS})
        out[-1]["route"] = d.get("route") or ""  # the channel (#20), empty when local
        out[-1]["channel_cost"] = d.get("channel_cost") or 0
    from host.chip import entry_data  # entry mode, ATC, TVR kept beside each transaction

    entries = entry_data(conn, [r["id"] for r in out])
    for r in out:
        r.update(entries.get(r["id"], {"entry_mode": "", "atc": "", "tvr": "", "arqc": ""}))
    return out


def list_batches(conn: sqlite3.Connection, tid: str | None = None) -> list[dict]:
    where, args = ("WHERE b.tid=?", (tid,)) if tid else ("", ())
    return _rows(conn, "SELECT b.tid, b.batch, b.state, b.result, b.opened_at, b.closed_at,"
                       " (SELECT count(*) FROM txns t WHERE t.tid=b.tid AND t.batch=b.batch)"
                       " AS txns, (SELECT count(*) FROM exceptions e WHERE e.tid=b.tid AND"
                       f" e.batch=b.batch) AS exceptions FROM batches b {where}"
                       " ORDER BY b.tid, b.batch", args)


def show_batch(conn: sqlite3.Connection, tid: str, batch: int) -> dict:
    row = conn.execute("SELECT * FROM batches WHERE tid=? AND batch=?", (tid, batch)).fetchone()
    if row is None:
        raise ConfigError(f"no batch {batch} for terminal {tid}")
    out = dict(row)
    for key in ("host_totals", "terminal_totals"):
        out[key] = json.loads(out[key]) if out[key] else None
    out["exceptions"] = list_exceptions(conn, tid=tid, batch=batch)
    return out


def list_exceptions(conn: sqlite3.Connection, *, open_only: bool = False,
                    tid: str | None = None, batch: int | None = None) -> list[dict]:
    clauses, args = [], []
    if open_only:
        clauses.append("state='open'")
    if tid is not None:
        clauses.append("tid=?")
        args.append(tid)
    if batch is not None:
        clauses.append("batch=?")
        args.append(batch)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = _rows(conn, f"SELECT * FROM exceptions {where} ORDER BY id", tuple(args))
    for r in rows:
        for key in ("host_data", "terminal_data"):
            r[key] = json.loads(r[key]) if r[key] else None
    return rows


def resolve_exception(conn: sqlite3.Connection, exception_id: int, comment: str) -> bool:
    """Resolve an exception; True when it was already resolved: the new comment is then
    added to its history (with its time), the first resolution kept."""
    now = datetime.now().isoformat(timespec="seconds")
    row = conn.execute("SELECT state, comment FROM exceptions WHERE id=?",
                       (exception_id,)).fetchone()
    if row is None:
        raise ConfigError(f"no exception {exception_id}")
    if row["state"] == "resolved":
        conn.execute("UPDATE exceptions SET comment=? WHERE id=?",
                     (f"{row['comment'] or ''} | {now}: {comment}", exception_id))
        return True
    conn.execute("UPDATE exceptions SET state='resolved', comment=?, resolved_at=? WHERE id=?",
                 (comment, now, exception_id))
    return False


# --------------------------------------------------------------------------- daily report

REPORT_COLUMNS = ("settlement_date", "mid", "tid", "batch", "stan", "rrn", "auth_code",
                  "pan", "type", "amount", "currency", "status", "reversal_reason", "net")


@dataclass(frozen=True)
class ReportLine:
    settlement_date: str
    mid: str
    tid: str
    batch: str
    stan: str
    rrn: str
    auth_code: str
    pan: str
    type: str
    amount: int
    currency: str
    status: str
    reversal_reason: str
    net: int
    """Signed effect on the merchant: + live sales, - approved refunds, 0 otherwise."""


def _net(kind: str, status: str, amount: int) -> int:
    if status != "approved":
        return 0
    return {"sale": amount, "refund": -amount}.get(kind, 0)


def settlement_report(conn: sqlite3.Connection, date: str) -> dict[str, Any]:
    """One line per financial transaction settled on ``date`` (YYYY-MM-DD), with totals per
    merchant and per terminal that add up to the lines."""
    rows = conn.execute("SELECT * FROM txns WHERE settlement_date=? AND kind != 'balance'"
                        " ORDER BY mid, tid, batch, id", (date,)).fetchall()
    lines = []
    for r in rows:
        status = txn_status(r)
        lines.append(ReportLine(
            r["settlement_date"], r["mid"], r["tid"], f"{r['batch']:06d}", r["stan"], r["rrn"],
            r["auth_code"] or "", r["pan_masked"] or "", r["kind"], r["amount"],
            r["currency"] or "", status, r["reversal_reason"] or "",
            _net(r["kind"], status, r["amount"])))
    return {"date": date, "lines": [asdict(line) for line in lines],
            "totals": {"merchants": _totals(lines, "mid"), "terminals": _totals(lines, "tid"),
                       "all": _sum(lines)}}


def _sum(lines: list[ReportLine]) -> dict[str, int]:
    return {
        "count": len(lines),
        "debit_amount": sum(x.net for x in lines if x.net > 0),
        "debit_count": sum(1 for x in lines if x.net > 0),
        "credit_amount": -sum(x.net for x in lines if x.net < 0),
        "credit_count": sum(1 for x in lines if x.net < 0),
        "net": sum(x.net for x in lines),
    }


def _totals(lines: list[ReportLine], key: str) -> dict[str, dict[str, int]]:
    groups: dict[str, list[ReportLine]] = {}
    for line in lines:
        groups.setdefault(getattr(line, key), []).append(line)
    return {k: _sum(v) for k, v in sorted(groups.items())}


def report_csv(report: dict[str, Any], columns: tuple[str, ...] = REPORT_COLUMNS) -> str:
    """Lines (``columns`` of each), then one TOTAL row per merchant and per terminal and the
    grand total."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for line in report["lines"]:
        writer.writerow([line[c] for c in columns])
    writer.writerow([])
    writer.writerow(["total", "scope", "id", "count", "debit_amount", "debit_count",
                     "credit_amount", "credit_count", "net"])
    for scope in ("merchants", "terminals"):
        for ident, t in report["totals"][scope].items():
            writer.writerow(["total", scope[:-1], ident, *t.values()])
    writer.writerow(["total", "all", "", *report["totals"]["all"].values()])
    return out.getvalue()
