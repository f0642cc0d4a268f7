"""Crash safety, reduced from scripts/crash-test: kill -9 a real ``poshost serve`` process
under sale/void/refund load, restart it, deliver the terminals' reversals, audit the SQLite
ledger against what the terminals saw, and settle every batch balanced."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from benchlib import crash, ledger, procs
from benchlib import fleet as fleet_mod
from benchlib.term import BenchTerminal


@pytest.mark.parametrize("workers", [0, 2])
def test_kill_9_under_load_loses_and_doubles_nothing(tmp_path: Path, workers: int) -> None:
    plan = crash.CrashPlan(terminals=4, kills=2, interval=(0.8, 1.2), tail_seconds=0.5,
                           seed=3, workers=workers)
    result = crash.run(plan, tmp_path)
    assert result["kills"] == 2 and result["host_starts"] == 3
    assert result["approved_sales"] > 0
    assert result["approvals_checked"] >= result["approved_sales"]
    assert result["ledger_problems"] == []
    assert result["unbalanced_settlements"] == []
    assert result["ok"]


async def _three_sales(port: int, fleet: fleet_mod.Fleet) -> BenchTerminal:
    t = BenchTerminal("127.0.0.1", port, fleet.tids[0], fleet.mid,
                      bytes.fromhex(fleet.tmk_hex), fleet.pans[0])
    for _ in range(3):
        response = await t.sale()
        assert response is not None and response["39"] == "00"
    await t.close()
    return t


def test_audit_catches_a_lost_approval_and_a_wrong_balance(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    fleet = trio.run(fleet_mod.provision, db, 1)
    opening = fleet_mod.balances(db)
    port = procs.free_port()
    with procs.Server(procs.host_argv(port, db), port, tmp_path / "host.log"):
        t = trio.run(_three_sales, port, fleet)
    assert ledger.check(db, [t], opening).ok
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM txns WHERE stan = ?", (t.journal.sales[1].stan,))
    conn.close()
    problems = ledger.check(db, [t], opening).problems
    assert any("no row" in p for p in problems)
    assert any("balance" in p for p in problems)
