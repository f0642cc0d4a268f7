"""Crash-test checks: the host's database held against what the terminals believe.

After the host was killed and restarted under load and every terminal delivered its pending
reversals and advices:

- every approval a terminal saw is a committed row with the same code, amount, RRN and auth
  code (a durable-commit failure shows up here);
- every card's balance equals its opening balance minus standing approved sales, plus voids
  and refunds, computed from the rows (reversed rows count for nothing) ...
- ... and equals the opening balance minus what the terminal believes it charged;
- no (TID, batch, STAN, MTI) occurs twice (nothing applied twice).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib.term import BenchTerminal
from specs.pretty import mask_pan


@dataclass
class LedgerReport:
    checked_terminals: int = 0
    approvals_checked: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)


def _rows(conn: sqlite3.Connection, tid: str) -> dict[tuple[int, str, str], sqlite3.Row]:
    return {(r["batch"], r["stan"], r["mti"]): r for r in conn.execute(
        "SELECT * FROM txns WHERE tid=?", (tid,))}


def _open(db_path: Path | str) -> Any:
    """Read-only SQLite, or the PostgreSQL database a URL names."""
    from host.pgstore import PgConnection, is_pg
    if is_pg(db_path):
        return PgConnection(str(db_path))
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def check(db_path: Path, terminals: Iterable[BenchTerminal], opening: dict[str, int],
          ) -> LedgerReport:
    """Hold the database at ``db_path`` against the terminals' journals."""
    report = LedgerReport()
    conn = _open(db_path)
    try:
        dupes = conn.execute("SELECT tid, batch, stan, mti, COUNT(*) FROM txns GROUP BY"
                             " tid, batch, stan, mti HAVING COUNT(*) > 1").fetchall()
        for d in dupes:
            report.problem(f"applied twice: {tuple(d)}")
        report.rows = conn.execute("SELECT COUNT(*) FROM txns").fetchone()[0]
        for t in terminals:
            report.checked_terminals += 1
            _check_terminal(conn, t, opening[mask_pan(t.pan)], report)
    finally:
        conn.close()
    return report


def _check_terminal(conn: sqlite3.Connection, t: BenchTerminal, start: int,
                    report: LedgerReport) -> None:
    rows = _rows(conn, t.tid)
    j = t.journal
    for s in j.sales:
        report.approvals_checked += 1
        row = rows.get((int(s.batch), s.stan, "0200"))
        if row is None:
            report.problem(f"{t.tid} sale {s.batch}/{s.stan}: approved on the terminal, no row")
            continue
        if (row["rc"], row["amount"], row["rrn"], (row["auth_code"] or "").strip()) != (
                "00", s.amount, s.rrn.strip(), s.auth.strip()):
            report.problem(f"{t.tid} sale {s.stan}: row {row['rc']}/{row['amount']} differs")
        if s.reversed != bool(row["reversed"]):
            report.problem(f"{t.tid} sale {s.stan}: reversed {row['reversed']} on the host")
    for batch, stan, sale in j.voids:
        report.approvals_checked += 1
        row = rows.get((int(batch), stan, "0200"))
        if row is None or row["rc"] != "00" or row["reversed"]:
            report.problem(f"{t.tid} void {stan} of {sale.stan}: not standing on the host")
    for batch, stan, amount in j.refunds:
        report.approvals_checked += 1
        row = rows.get((int(batch), stan, "0220"))
        if row is None or row["rc"] != "00" or row["amount"] != amount:
            report.problem(f"{t.tid} refund {stan}: not accepted on the host")
    balance = conn.execute("SELECT balance FROM cards WHERE pan_masked=?",
                           (mask_pan(t.pan),)).fetchone()[0]
    effect = 0
    for row in rows.values():
        if row["rc"] != "00":
            continue
        if row["kind"] == "sale" and not row["reversed"]:
            effect -= row["amount"]
        elif (row["kind"] == "void" and not row["reversed"]) or row["kind"] == "refund":
            effect += row["amount"]
    if balance != start + effect:
        report.problem(f"{t.tid}: balance {balance} != opening {start} + rows {effect}")
    if balance != start - j.net_debit():
        report.problem(f"{t.tid}: balance {balance} != opening {start} - terminal's"
                       f" {j.net_debit()}")
