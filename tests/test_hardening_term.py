"""Misuse of `posterm` (issue 13): explicit options win, no silent PIN-less sale, a host that
lost its HSM is a host malfunction with the reversal kept, Ctrl-C on load stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from click.testing import CliRunner

from host.app import HostConfig, run_host
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from hsm_sim.server import serve_hsm
from terminal.cli import main
from terminal.errors import HostMalfunction
from terminal.load import terminal_ids
from terminal.state import Store
from tests.conftest import MID, TID, TMK, RunningHost, provision
from tests.test_term_host import make_terminal, swipe

TRACK2 = "6222021234567890128=30121010000000000"


def _init(state: Path | None, **env: str) -> Any:
    args = ["init", "--tid", TID, "--mid", MID, "--tmk", TMK, "--host", "127.0.0.1:1"]
    if state is not None:
        args = ["--state", str(state), *args]
    return CliRunner(env=env).invoke(main, args)


def test_state_option_wins_over_the_environment(tmp_path: Path) -> None:
    env_state, explicit = tmp_path / "env.db", tmp_path / "explicit.db"
    r = _init(explicit, POSTERM_STATE=str(env_state))
    assert r.exit_code == 0, r.output
    assert explicit.exists() and not env_state.exists()
    after = tmp_path / "after.db"  # --state after the command wins too
    r = CliRunner(env={"POSTERM_STATE": str(env_state)}).invoke(
        main, ["status", "--state", str(after)])
    assert r.exit_code == 5 and "after.db" in r.output and not env_state.exists()
    r = CliRunner(env={"POSTERM_STATE": str(explicit)}).invoke(main, ["status", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["tid"] == TID


def test_missing_state_directory_is_a_usage_error(tmp_path: Path) -> None:
    r = _init(tmp_path / "nope" / "t.db")
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output
    r = _init(tmp_path)
    assert r.exit_code == 2 and "is a directory" in r.output
    assert list(tmp_path.iterdir()) == []


def test_damaged_state_file(tmp_path: Path) -> None:
    state = tmp_path / "t.db"
    state.write_bytes(b"garbage" * 500)
    r = CliRunner().invoke(main, ["--state", str(state), "journal"])
    assert r.exit_code == 5 and "cannot" in r.output and "Traceback" not in r.output
    assert state.read_bytes() == b"garbage" * 500


def _journal(state: Path) -> list[Any]:
    store = Store(state)
    try:
        return store.journal(all_batches=True)
    finally:
        store.close()


def test_no_pin_without_a_terminal_is_an_error_not_a_pinless_sale(tmp_path: Path) -> None:
    state = tmp_path / "t.db"
    assert _init(state).exit_code == 0
    before = _journal(state)
    for args in (["sale", "1.00", "--track2", TRACK2], ["balance", "--track2", TRACK2]):
        r = CliRunner().invoke(main, ["--state", str(state), *args], input="")
        assert r.exit_code == 2, r.output
        assert "no PIN: give --pin PIN" in r.output and "--no-pin" in r.output
    r = CliRunner().invoke(main, ["--state", str(state), "sale", "1.00", "--track2", TRACK2,
                                  "--pin", "1234", "--no-pin"])
    assert r.exit_code == 2 and "not both" in r.output
    assert _journal(state) == before == []


async def test_96_without_mac_is_a_host_malfunction_and_keeps_the_reversal(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    db = tmp_path / "host.db"
    cards = await provision(db, HsmClient.in_process(HsmEngine.test()))
    hsm_scope = trio.CancelScope()

    async def run_hsm(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        with hsm_scope:
            await serve_hsm(HsmEngine.test(), "127.0.0.1", 0, 4, task_status=task_status)

    listeners = await nursery.start(run_hsm)
    hsm_port = listeners[0].socket.getsockname()[1]
    config = HostConfig(listen_port=0, db_path=db, hsm=f"tcp://127.0.0.1:{hsm_port}")
    host, port = await nursery.start(run_host, config)
    running = RunningHost(host, port, db, TID, MID, TMK, "x919", cards,
                          HsmClient.in_process(HsmEngine.test()))
    running.terminals[TID] = (TMK, "x919")
    t = make_terminal(running, tmp_path / "t.db")
    assert (await t.sign_on()).status == "approved"
    hsm_scope.cancel()  # the HSM goes down
    await trio.sleep(0.1)
    try:
        await t.sale(swipe(running), 100, "1234")
    except HostMalfunction as exc:
        text = str(exc)
    else:
        raise AssertionError("a 96 without a MAC was believed")
    assert "host malfunction" in text and "96" in text and "reversal of STAN" in text
    assert "response MAC missing" not in text
    assert HostMalfunction.exit_code == 3
    assert len(t.store.reversals()) == 1  # kept, sent once the host can MAC again


def test_ctrl_c_on_load_settles_reports_and_leaves_usable_terminals(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    db = tmp_path / "host.db"
    for args in (["init", "--demo"], ["terminal", "add-range", "--tid-prefix", "CC",
                                      "--count", "3", "--mid", MID, "--tmk", TMK]):
        subprocess.run([bin_dir / "poshost", *args, "--db", str(db)], check=True,
                       capture_output=True)
    host = subprocess.Popen([bin_dir / "poshost", "serve", "--listen", "127.0.0.1:0", "--db",
                             str(db)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert host.stdout is not None
        address = next(line.split()[3] for line in host.stdout
                       if line.startswith("poshost ready on"))
        base = [bin_dir / "posterm", "load", "--host", address, "--terminals", "3",
                "--tid-prefix", "CC", "--mid", MID, "--tmk", TMK, "--track2", TRACK2,
                "--pin", "1234", "--rate", "30"]
        report = tmp_path / "load.json"
        load = subprocess.Popen([*base, "--duration", "60", "--report", str(report)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert load.stderr is not None
        for line in load.stderr:
            if line.startswith("t=") and "done=" in line and not line.startswith("t=  1.0"):
                break
        load.send_signal(signal.SIGINT)
        _, err = load.communicate(timeout=60)
        assert load.returncode == 130, err
        assert "Traceback" not in err and "interrupted (Ctrl-C)" in err and "completed" in err
        data = json.loads(report.read_text())
        assert data["interrupted"] is True and data["completed"] > 0
        assert sum(data["settlements"].values()) == 3
        assert set(data["settlements"]) <= {"balanced", "uploaded"}
        again = subprocess.run([*base, "--duration", "1", "--json"], capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["settlements"] == {"balanced": 3}
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(timeout=20)
    conn = __import__("sqlite3").connect(db)
    assert conn.execute("SELECT count(*) FROM exceptions").fetchone()[0] == 0
    conn.close()
    assert terminal_ids("CC", 3)[0] == "CC000001"
    assert os.path.exists(report)


def test_refund_original_data_and_nii_take_ascii_digits_only(tmp_path: Path) -> None:
    state = tmp_path / "t.db"
    assert _init(state).exit_code == 0
    base = ["--state", str(state), "refund", "1.00", "--rrn", "123456789012", "--orig-batch",
            "1", "--orig-trace", "5", "--track2", TRACK2]
    for date, message in (("\u0661\u0662\u0660\u0661", "--orig-date must be MMDD"),
                          ("1301", "--orig-date must be MMDD"),
                          ("0230x", "--orig-date must be MMDD")):
        r = CliRunner().invoke(main, [*base, "--orig-date", date])
        assert r.exit_code == 2 and message in r.output, r.output
    r = CliRunner().invoke(main, ["--state", str(tmp_path / "n.db"), "init", "--tid", TID,
                                  "--mid", MID, "--tmk", TMK, "--host", "127.0.0.1:1",
                                  "--nii", "\u0660\u0660\u0660\u0663"])
    assert r.exit_code == 2 and "NII must be 4 digits" in r.output
    assert _journal(state) == []


def test_load_report_in_a_missing_directory_is_refused_before_the_run(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["load", "--host", "127.0.0.1:1", "--tmk", TMK, "--track2",
                                  TRACK2, "--pin", "1234", "--report",
                                  str(tmp_path / "nope" / "r.json")])
    assert r.exit_code == 2 and "does not exist" in r.output and "t=" not in r.output


def test_ctrl_c_while_waiting_for_the_host_is_a_clean_exit(tmp_path: Path) -> None:
    import socket

    bin_dir = Path(sys.executable).parent
    state = tmp_path / "t.db"
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        store = Store(state)
        from terminal.state import Config
        store.initialise(Config(TID, MID, "127.0.0.1", port, timeout=60.0), bytes.fromhex(TMK))
        store.close()
        posterm = [str(bin_dir / "posterm"), "--state", str(state)]
        proc = subprocess.Popen([*posterm, "echo"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        conn, _ = silent.accept()  # the request is on its way: interrupt the wait
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        conn.close()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    again = subprocess.run([*posterm, "status", "--json"], capture_output=True, text=True)
    assert again.returncode == 0 and json.loads(again.stdout)["tid"] == TID  # state usable
