"""`poshost route add/list/disable/enable` and `link add` on a real SQLite file and the
embedded HSM (test LMK)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from host.cli import main

ZMK = "0123456789ABCDEFFEDCBA9876543210"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_route_add_list_disable(tmp_path: Path) -> None:
    db = str(tmp_path / "acq.db")
    code, out = run("route", "add", "--name", "NET-A", "--connect", "127.0.0.1:7001",
                    "--bins", "4761,622203-622299", "--zmk", ZMK, "--cost-fixed", "0.10",
                    "--cost-rate", "0.0038", "--limit-txn", "50000.00", "--maintenance",
                    "02:00-03:00", "--priority", "2", "--db", db)
    assert code == 0, out
    assert "NET-A added" in out and ZMK not in out
    code, out = run("route", "add", "--name", "NET-A", "--connect", "127.0.0.1:7001",
                    "--bins", "4761", "--zmk", ZMK, "--db", db)
    assert code != 0 and "exists" in out
    code, out = run("route", "add", "--name", "NET-B", "--connect", "127.0.0.1:7002",
                    "--bins", "47x", "--zmk", ZMK, "--db", db)
    assert code == 2 and "BIN" in out
    code, out = run("route", "list", "--json", "--db", db)
    rows = json.loads(out)
    assert rows[0]["name"] == "NET-A" and rows[0]["cost_fixed"] == 10
    assert rows[0]["cost_rate"] == "0.0038" and rows[0]["enabled"] is True
    assert run("route", "disable", "NET-A", "--db", db)[0] == 0
    assert json.loads(run("route", "list", "--json", "--db", db)[1])[0]["enabled"] is False
    assert run("route", "enable", "NET-A", "--db", db)[0] == 0
    assert run("route", "disable", "NOPE", "--db", db)[0] != 0
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT limit_txn, maintenance FROM routes").fetchone() == (
        5000000, "02:00-03:00")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(txns)")}
    assert {"route", "channel_cost"} <= columns


def test_link_add(tmp_path: Path) -> None:
    db = str(tmp_path / "net.db")
    code, out = run("link", "add", "--name", "ACQ1", "--acquirer-id", "48020000", "--zmk", ZMK,
                    "--db", db)
    assert code == 0, out
    code, out = run("link", "add", "--name", "ACQ2", "--acquirer-id", "48020000", "--zmk", ZMK,
                    "--db", db)
    assert code != 0 and "exists" in out
