"""Two `poshost serve` processes, acquirer -> network, set up with the CLI only: a foreign
card's sale approved end to end; an upstream that stops answering -> 91, the acquirer is
killed with SIGKILL while its 0420 is pending, and after a restart the 0420 still reaches the
network exactly once (both books agree)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import trio

from tests.conftest import FAR_EXPIRY, MID, TID, TMK
from tests.hostkit import TestTerminal
from tests.test_routing_links import FOREIGN, ZMK, Proxy, outbox, txns, wait_up

BIN = Path(sys.executable).parent


def cli(*args: str) -> str:
    done = subprocess.run([BIN / "poshost", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def serve(db: Path, *extra: str) -> tuple[subprocess.Popen, dict[str, str]]:
    proc = subprocess.Popen([BIN / "poshost", "serve", "--listen", "127.0.0.1:0", "--db",
                             str(db), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    seen: dict[str, str] = {}
    for line in proc.stdout:
        if line.startswith("poshost ready on"):
            seen["terminals"] = line.split()[3].rstrip(",")
        if line.startswith("host-to-host links on"):
            seen["h2h"] = line.split()[-1]
        if "terminals" in seen and ("h2h" in seen or "--h2h-listen" not in extra):
            return proc, seen
    raise AssertionError("host did not start")


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def balance(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT balance FROM cards").fetchone()[0]
    finally:
        conn.close()


def provision_network(net_db: Path) -> None:
    """The network's database: a foreign card and the acquirer's link, through the CLI."""
    cli("init", "--db", str(net_db))
    cli("card", "add", "--pan", FOREIGN.pan, "--expiry", FAR_EXPIRY, "--pin", FOREIGN.pin,
        "--balance", "50000.00", "--db", str(net_db))
    cli("link", "add", "--name", "ACQ1", "--acquirer-id", "48020000", "--zmk", ZMK,
        "--db", str(net_db))


def provision_acquirer(acq_db: Path, relay: tuple[str, int], *route_options: str) -> None:
    """The acquirer's database: merchant, terminal and route NET-A to ``relay``."""
    cli("init", "--db", str(acq_db))
    cli("merchant", "add", "--mid", MID, "--name", "Lab Coffee Shop", "--db", str(acq_db))
    cli("terminal", "add", "--tid", TID, "--mid", MID, "--tmk", TMK, "--db", str(acq_db))
    cli("route", "add", "--name", "NET-A", "--connect", f"{relay[0]}:{relay[1]}",
        "--bins", "4761", "--zmk", ZMK, "--timeout", "0.5", *route_options,
        "--db", str(acq_db))


async def test_two_processes_sale_and_reversal_survive_kill_9(tmp_path: Path,
                                                              nursery: trio.Nursery) -> None:
    net_db, acq_db = tmp_path / "net.db", tmp_path / "acq.db"
    provision_network(net_db)
    network, net_at = await trio.to_thread.run_sync(serve, net_db, "--h2h-listen",
                                                    "127.0.0.1:0")
    acquirer = None
    try:
        proxy = Proxy(address(net_at["h2h"]))
        relay = await nursery.start(proxy.serve)
        provision_acquirer(acq_db, relay, "--cost-fixed", "0.10")
        acquirer, acq_at = await trio.to_thread.run_sync(serve, acq_db)
        await wait_up(acq_db, ["NET-A"])
        host, port = address(acq_at["terminals"])
        async with TestTerminal(host, port, TID, MID, TMK) as term:
            await term.sign_on()
            sale = await term.sale(FOREIGN, 12345)
            assert sale.code == "00"
            proxy.drop = True
            lost = await term.sale(FOREIGN, 2000)
            assert lost.code == "91"
        acquirer.send_signal(signal.SIGKILL)
        acquirer.wait(timeout=10)
        assert balance(net_db) == 5_000_000 - 12345 - 2000  # the network approved both
        assert [r["state"] for r in outbox(acq_db)] == ["done", "pending"]
        proxy.drop = False
        acquirer, _ = await trio.to_thread.run_sync(serve, acq_db)
        with trio.fail_after(20):
            while [r["state"] for r in outbox(acq_db)] != ["done", "done"]:
                await trio.sleep(0.2)
        assert balance(net_db) == 5_000_000 - 12345
        rows = txns(acq_db)
        assert [(r["route"], r["rc"], r["channel_cost"]) for r in rows] == [
            ("NET-A", "00", 10), ("NET-A", "91", 0)]
        listed = json.loads(cli("route", "list", "--json", "--db", str(acq_db)))
        assert listed[0]["volume_today"] == 12345 and listed[0]["cost_today"] == 10
        listed_txns = json.loads(cli("txn", "list", "--json", "--db", str(acq_db)))
        assert [(t["route"], t["channel_cost"]) for t in listed_txns] == [
            ("NET-A", 0), ("NET-A", 10)]
        conn = sqlite3.connect(net_db)
        assert conn.execute("SELECT COUNT(*) FROM h2h_reversals").fetchone() == (1,)
        # T+1: the network's daily file for the link, imported at the acquirer
        day = rows[0]["settlement_date"]
        daily = tmp_path / "acq1.json"
        cli("settlement", "report", "--link", "ACQ1", "--date", day, "--out", str(daily),
            "--db", str(net_db))
        assert "agree" in cli("recon", "import", "--route", "NET-A", str(daily), "--db",
                              str(acq_db))
        data = json.loads(daily.read_text())
        assert data["totals"] == {"sales": 1, "amount": 12345}
        data["lines"][0]["amount"] = 12000
        data["lines"].append({**data["lines"][0], "rrn": "999999999999", "amount": 5})
        daily.write_text(json.dumps(data))
        found = json.loads(cli("recon", "import", "--route", "NET-A", str(daily), "--json",
                               "--db", str(acq_db)))
        assert [(d["kind"], d["network_amount"], d["acquirer_amount"]) for d in found] == [
            ("amount_differs", 12000, 12345), ("only_at_network", 5, None)]
        exceptions = json.loads(cli("exceptions", "list", "--json", "--db", str(acq_db)))
        assert {e["kind"] for e in exceptions} == {"route_amount_differs",
                                                   "route_only_at_network"}
    finally:
        for proc in (acquirer, network):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)


async def test_network_killed_with_a_reversal_owed_applies_it_after_restart(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    net_db, acq_db = tmp_path / "net.db", tmp_path / "acq.db"
    provision_network(net_db)
    network, net_at = await trio.to_thread.run_sync(serve, net_db, "--h2h-listen",
                                                    "127.0.0.1:0")
    acquirer = None
    try:
        proxy = Proxy(address(net_at["h2h"]))
        relay = await nursery.start(proxy.serve)
        provision_acquirer(acq_db, relay)
        acquirer, acq_at = await trio.to_thread.run_sync(serve, acq_db)
        await wait_up(acq_db, ["NET-A"])
        host, port = address(acq_at["terminals"])
        async with TestTerminal(host, port, TID, MID, TMK) as term:
            await term.sign_on()
            proxy.drop = True
            assert (await term.sale(FOREIGN, 3000)).code == "91"
            network.send_signal(signal.SIGKILL)  # the network dies owing a reversal
            network.wait(timeout=10)
            assert balance(net_db) == 5_000_000 - 3000
            proxy.drop = False
            network, _ = await trio.to_thread.run_sync(
                serve, net_db, "--h2h-listen", net_at["h2h"])
            with trio.fail_after(30):
                while outbox(acq_db)[0]["state"] != "done":
                    await trio.sleep(0.2)
            await wait_up(acq_db, ["NET-A"])
            assert (await term.sale(FOREIGN, 1000)).code == "00"
        assert balance(net_db) == 5_000_000 - 1000
        conn = sqlite3.connect(net_db)
        assert conn.execute("SELECT COUNT(*) FROM h2h_reversals").fetchone() == (1,)
    finally:
        for proc in (acquirer, network):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
