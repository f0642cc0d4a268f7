"""The poshost CLI: provisioning, listings, and `serve` as a process (ready line, SIGTERM)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from host.cli import main


def _ok(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_provisioning_commands(tmp_path: Path) -> None:
    db = str(tmp_path / "p.db")
    _ok(["merchant", "add", "--mid", "MID000000000001", "--name", "Shop", "--db", db])
    out = _ok(["terminal", "add", "--tid", "TERM0001", "--mid", "MID000000000001", "--db", db])
    assert "component 1:" in out and "component 2:" in out
    _ok(["terminal", "add", "--tid", "TERM0002", "--mid", "MID000000000001", "--tmk",
         "0123456789ABCDEFFEDCBA9876543210", "--mac", "cup-ecb", "--db", db])
    _ok(["card", "add", "--pan", "6222021234567890128", "--expiry", "3012", "--pin", "1234",
         "--balance", "1000.00", "--limit", "500.50", "--db", db])
    listed = _ok(["card", "list", "--db", db])
    assert "622202*********0128" in listed and "6222021234567890128" not in listed
    assert "1000.00" in listed and "500.50" in listed  # major units, as entered
    terminals = _ok(["terminal", "list", "--db", db])
    assert "TERM0002" in terminals and "cup-ecb" in terminals
    bad = CliRunner().invoke(main, ["terminal", "add", "--tid", "TERM0009", "--mid",
                                    "NOPE00000000000", "--db", db])
    assert bad.exit_code == 1 and "does not exist" in bad.output
    assert json.loads(_ok(["txn", "list", "--json", "--db", db])) == []
    _ok(["card", "set", "--pan", "6222021234567890128", "--reset-pin-tries", "--db", db])


def test_init_demo(tmp_path: Path) -> None:
    db = str(tmp_path / "d.db")
    out = _ok(["init", "--demo", "--db", db])
    assert "12345678" in out and "6222021234567890128" in out


def serve_until_ready_then_sigterm(*args: str) -> None:
    """Run ``poshost serve ARGS`` until it says ready, then SIGTERM: it must exit 0."""
    exe = Path(sys.executable).parent / "poshost"
    proc = subprocess.Popen([str(exe), "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("poshost ready on"):
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()


def test_serve_prints_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    serve_until_ready_then_sigterm("--listen", "127.0.0.1:0", "--db", str(tmp_path / "s.db"))


@pytest.mark.parametrize("workers", ["0", "2"])
def test_serve_on_a_port_in_use_says_so(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--listen", f"127.0.0.1:{port}", "--db",
                                           str(tmp_path / "s.db"), "--workers", workers])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.output


def test_terminal_add_range_names_terminals_as_posterm_load_expects(tmp_path: Path) -> None:
    from terminal.load import terminal_ids

    db = str(tmp_path / "r.db")
    _ok(["merchant", "add", "--mid", "MID000000000001", "--name", "Shop", "--db", db])
    out = _ok(["terminal", "add-range", "--prefix", "LT", "--count", "12", "--mid",
               "MID000000000001", "--tmk", "0123456789ABCDEFFEDCBA9876543210", "--db", db])
    assert "LT000001..LT000012" in out
    listed = _ok(["terminal", "list", "--db", db])
    assert all(tid in listed for tid in terminal_ids("LT", 12))
    assert "LT000013" not in listed
    crowded = CliRunner().invoke(main, ["terminal", "add-range", "--prefix", "LTXYZ", "--count",
                                        "1000", "--mid", "MID000000000001", "--tmk",
                                        "0123456789ABCDEFFEDCBA9876543210", "--db", db])
    assert crowded.exit_code == 2 and "no room" in crowded.output
