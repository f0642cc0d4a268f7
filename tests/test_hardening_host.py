"""Misuse of `poshost`: each bad input ends in a clear message, a documented exit code and an
untouched database (issue 13). Real SQLite files, the real HSM, real TCP."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from host.cli import main
from host.db import open_store
from host.provision import add_card
from specs.pretty import mask_pan
from tests.conftest import RunningHost
from tests.hostkit import TestCard, track2_of

POSHOST = str(Path(sys.executable).parent / "poshost")
TMK = "0123456789ABCDEFFEDCBA9876543210"
GOOD_PAN = "6222021234567890128"


def _invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args)


def _digest(db: Path) -> str | None:
    """Everything a database holds (None: no file), to prove a refused command changed
    nothing."""
    if not db.exists():
        return None
    conn = sqlite3.connect(db)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "p.db"
    for args in (["init"], ["merchant", "add", "--mid", "123456789012345", "--name", "Shop"],
                 ["terminal", "add", "--tid", "12345678", "--mid", "123456789012345",
                  "--tmk", TMK],
                 ["card", "add", "--pan", GOOD_PAN, "--expiry", "3012", "--pin", "1234",
                  "--balance", "100.00"]):
        result = _invoke([*args, "--db", str(path)])
        assert result.exit_code == 0, result.output
    return path


def _refused(db: Path, args: list[str], code: int, message: str) -> Result:
    before = _digest(db)
    result = _invoke([*args, "--db", str(db)])
    assert result.exit_code == code, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert _digest(db) == before
    return result


CARD = ["card", "add", "--pan", "6222020000000000018", "--expiry", "3012", "--pin", "1111"]


@pytest.mark.parametrize("amount", ["-5", "1e3", "1E+2", "99999999999999", "10000000000.00",
                                    "\u0661\u0660\u0660", "10.001", "NaN", "", " ", "1,000",
                                    "0x10", "+5", "Infinity"])
def test_card_amounts_are_parsed_one_way(db: Path, amount: str) -> None:
    _refused(db, [*CARD, "--balance", amount], 2, "Invalid value for '--balance'")
    _refused(db, [*CARD, "--balance", "1.00", "--limit", amount], 2,
             "Invalid value for '--limit'")


def test_largest_amount_the_wire_carries_is_taken_and_listed_as_entered(db: Path) -> None:
    result = _invoke([*CARD, "--balance", "9999999999.99", "--limit", "0.50", "--db", str(db)])
    assert result.exit_code == 0, result.output
    listed = _invoke(["card", "list", "--db", str(db)]).output
    assert "9999999999.99" in listed and "0.50" in listed and "100.00" in listed
    _refused(db, [*CARD[:2], "--pan", "4761739001010010", *CARD[4:], "--balance",
                  "10000000000.00"], 2, "more than the wire can carry (9999999999.99)")


@pytest.mark.parametrize(("args", "message"), [
    (["merchant", "add", "--mid", "12345", "--name", "Shop"], "exactly 15"),
    (["merchant", "add", "--mid", "1234567890123456", "--name", "Shop"], "exactly 15"),
    (["merchant", "add", "--mid", "999999999999999", "--name", ""], "must not be empty"),
    (["merchant", "add", "--mid", "999999999999999", "--name", "   "], "must not be empty"),
    (["merchant", "add", "--mid", "999999999999999", "--name", "a\nb"], "one line"),
    (["terminal", "add", "--tid", "1234567", "--mid", "123456789012345"], "exactly 8"),
    (["terminal", "add", "--tid", "123456789", "--mid", "123456789012345"], "exactly 8"),
    (["card", "add", "--pan", "6222021234567890127", "--expiry", "3012", "--pin", "1234",
      "--balance", "1"], "Luhn"),
    (["card", "add", "--pan", "\u0666222021234567890128", "--expiry", "3012", "--pin",
      "1234", "--balance", "1"], "12-19 digits"),
    (["card", "add", "--pan", "6222020000000000018", "--expiry", "3013", "--pin", "1234",
      "--balance", "1"], "YYMM"),
    (["card", "add", "--pan", "6222020000000000018", "--expiry", "3012", "--pin", "12a4",
      "--balance", "1"], "PIN must be"),
    (["card", "add", "--pan", "6222020000000000018", "--expiry", "3012", "--cvm", "pin",
      "--balance", "1"], "--cvm pin needs --pin"),
    (["card", "add", "--pan", "6222020000000000018", "--expiry", "3012", "--balance", "1"],
     "give --pin"),
    (["card", "set", "--pan", GOOD_PAN], "give --status"),
    (["settlement", "report", "--date", "2026-02-30"], "not a date"),
    (["settlement", "report", "--date", "2026-13-01"], "not a date"),
    (["settlement", "report", "--date", "26-11-23"], "not a date"),
    (["exceptions", "resolve", "1", "--comment", ""], "must not be empty"),
    (["exceptions", "resolve", "0", "--comment", "x"], "Invalid value"),
    (["batch", "show", "1234", "1"], "exactly 8"),
    (["txn", "list", "--limit", "-1"], "Invalid value"),
])
def test_bad_values_are_usage_errors_that_change_nothing(db: Path, args: list[str],
                                                         message: str) -> None:
    _refused(db, args, 2, message)


def test_resolving_an_exception_twice_keeps_its_history(db: Path) -> None:
    conn = open_store(db)
    conn.execute("INSERT INTO exceptions (id, tid, batch, kind, trace, created) VALUES"
                 " (1, '12345678', 1, 'only_at_host', '000007', '2026-11-23T10:00:00')")
    conn.close()
    first = _invoke(["exceptions", "resolve", "1", "--comment", "voucher found", "--db", str(db)])
    assert first.exit_code == 0 and "exception 1 resolved" in first.output
    conn = open_store(db)
    resolved_at = conn.execute("SELECT resolved_at FROM exceptions").fetchone()[0]
    conn.close()
    again = _invoke(["exceptions", "resolve", "1", "--comment", "amount keyed wrongly",
                     "--db", str(db)])
    assert again.exit_code == 0 and "already resolved" in again.output
    conn = open_store(db)
    row = conn.execute("SELECT state, comment, resolved_at FROM exceptions").fetchone()
    conn.close()
    assert row[0] == "resolved" and row[2] == resolved_at
    assert row[1].startswith("voucher found | ") and row[1].endswith(": amount keyed wrongly")
    _refused(db, ["exceptions", "resolve", "7", "--comment", "x"], 1, "no exception 7")


# --------------------------------------------------------------------------- setup is atomic


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_failed_init_leaves_no_database(tmp_path: Path) -> None:
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nobody answers there
    db = tmp_path / "new.db"
    result = _invoke(["init", "--demo", "--hsm", f"tcp://127.0.0.1:{port}", "--db", str(db)])
    assert result.exit_code == 1 and "the HSM does not answer" in result.output, result.output
    assert _leftovers(tmp_path) == []
    result = _invoke(["init", "--lmk", str(tmp_path / "missing.lmk"), "--db", str(db)])
    assert result.exit_code == 1 and "cannot load the LMK" in result.output
    assert _leftovers(tmp_path) == []


def test_init_refuses_an_existing_database(db: Path) -> None:
    _refused(db, ["init", "--demo"], 1, "already exists")


def test_db_in_a_missing_directory_or_a_directory(tmp_path: Path) -> None:
    for args in (["init"], ["card", "list"], ["serve", "--listen", "127.0.0.1:0"]):
        result = _invoke([*args, "--db", str(tmp_path / "nope" / "x.db")])
        assert result.exit_code == 2 and "does not exist" in result.output, result.output
        result = _invoke([*args, "--db", str(tmp_path)])
        assert result.exit_code == 2 and "is a directory" in result.output, result.output
    assert _leftovers(tmp_path) == []


def test_report_to_a_missing_directory(db: Path, tmp_path: Path) -> None:
    _refused(db, ["settlement", "report", "--date", "2026-11-23", "--out",
                  str(tmp_path / "nope" / "eod.csv")], 1, "No such file or directory")
    (tmp_path / "plain").write_text("a file, not a directory")
    _refused(db, ["settlement", "report", "--date", "2026-11-23", "--out",
                  str(tmp_path / "plain" / "eod.csv")], 1, "Not a directory")
    result = _invoke(["card", "list", "--db", str(tmp_path / "plain" / "x.db")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("args", [
    ["card", "list"], ["txn", "list", "--json"], ["batch", "list"], ["terminal", "list"],
    ["exceptions", "list"], ["settlement", "report", "--date", "2026-11-23"],
    ["merchant", "add", "--mid", "999999999999999", "--name", "X"],
    ["card", "set", "--pan", GOOD_PAN, "--reset-pin-tries"],
    ["serve", "--listen", "127.0.0.1:0"],
    ["terminal", "add", "--tid", "87654321", "--mid", "123456789012345", "--tmk", TMK],
])
def test_damaged_database_is_a_message_not_a_traceback(db: Path, damage: str,
                                                       args: list[str]) -> None:
    data = db.read_bytes()
    db.write_bytes(b"this is not a database at all\n" * 200 if damage == "garbage"
                   else data[: len(data) // 3])
    before = db.read_bytes()
    result = _invoke([*args, "--db", str(db)])
    assert result.exit_code == 1, (result.output, result.exception)
    assert "the database cannot be used" in result.output, result.output
    assert db.read_bytes() == before


# --------------------------------------------------------------------------- CVM


async def test_pin_card_without_pin_block_is_55_signature_card_is_not(
        running_host: RunningHost) -> None:
    pan = "6222020000000000067"
    await add_card(running_host.db_path, running_host.hsm, pan, "3012", None, 10_000,
                   cvm="signature")
    signature = TestCard(pan, "3012", "", track2_of(pan, "3012"), 10_000)
    good = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        assert (await t.sale(good, 100, pin=None)).code == "55"
        assert (await t.balance(good, pin=None)).code == "55"
        assert (await t.sale(good, 100)).code == "00"  # the PIN counter was not touched
        assert (await t.sale(signature, 100, pin=None)).code == "00"
    conn = open_store(running_host.db_path)
    tries = conn.execute("SELECT pin_tries FROM cards WHERE pan_masked=?",
                         (mask_pan(good.pan),)).fetchone()[0]
    conn.close()
    assert tries == 0


def test_old_database_gets_the_cvm_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE cards (pan TEXT PRIMARY KEY, expiry TEXT NOT NULL, pvv TEXT NOT"
                 " NULL, pvki INTEGER NOT NULL, balance INTEGER NOT NULL, limit_minor INTEGER,"
                 " status TEXT NOT NULL, pin_tries INTEGER NOT NULL DEFAULT 0, domestic INTEGER"
                 " NOT NULL DEFAULT 1, created TEXT NOT NULL, pan_hash TEXT)")
    conn.execute("INSERT INTO cards VALUES ('6222021234567890128', '3012', '1234', 1, 5, NULL,"
                 " 'active', 0, 1, 'x', NULL), ('6222020000000000011', '3012', '', 1, 5, NULL,"
                 " 'active', 0, 1, 'x', NULL)")
    conn.commit()
    conn.close()
    conn = open_store(path)
    cvms = dict(conn.execute("SELECT pan, cvm FROM cards").fetchall())
    conn.close()
    assert cvms == {"6222021234567890128": "pin", "6222020000000000011": "none"}


# --------------------------------------------------------------------------- processes


def test_serve_output_shows_no_lab_secrets(tmp_path: Path) -> None:
    proc = subprocess.Popen([POSHOST, "serve", "--listen", "127.0.0.1:0", "--db",
                             str(tmp_path / "s.db")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("poshost ready on"):
                break
        posterm = [str(Path(sys.executable).parent / "posterm"), "--state",
                   str(tmp_path / "t.db")]
        subprocess.run([*posterm, "init", "--tid", "12345678", "--mid", "123456789012345",
                        "--tmk", TMK, "--host", line.split()[3]], check=True,
                       capture_output=True)
        subprocess.run([*posterm, "signon"], check=True, capture_output=True)
        sale = subprocess.run([*posterm, "sale", "1.00", "--track2",
                               f"{GOOD_PAN}=30121010000000000", "--pin", "1234"],
                              capture_output=True, text=True)
        assert sale.returncode == 0, sale.stderr
        proc.send_signal(signal.SIGTERM)
        seen.append(proc.stdout.read())
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
    text = "".join(seen)
    assert "demo data loaded" in text and "poshost ready on" in text and "rc=00" in text
    assert GOOD_PAN not in text and TMK not in text and "PIN 1234" not in text
    assert "4761739001010010" not in text


def test_init_demo_marks_lab_data(tmp_path: Path) -> None:
    result = _invoke(["init", "--demo", "--db", str(tmp_path / "d.db")])
    assert result.exit_code == 0
    assert "LAB DATA (published test values" in result.output and TMK in result.output


def test_bridge_stops_on_ctrl_c_without_traceback(tmp_path: Path) -> None:
    import os
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([POSHOST, "bridge", "--serial", os.ttyname(slave), "--host",
                                 "127.0.0.1:9"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, ""):
            if "bridging" in line:  # running: the serial side is open
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


def _ready(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.split()[3]
    raise AssertionError(f"no '{prefix}' line")


def test_readme_live_lmk_recipe_works(tmp_path: Path) -> None:
    """README 'The HSM': a live LMK, init --demo against it over TCP, the host on it."""
    bin_dir = Path(sys.executable).parent
    lmk = tmp_path / "live.lmk"
    subprocess.run([bin_dir / "hsm-sim", "lmk", "generate", str(lmk)], check=True,
                   capture_output=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        hsm = subprocess.Popen([bin_dir / "hsm-sim", "serve", "--lmk", str(lmk), "--port", "0",
                                "--audit-log", str(tmp_path / "audit.log"),
                                "--authorised-for", "600"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(hsm)
        hsm_at = _ready(hsm, "hsm-sim ready on")
        db = tmp_path / "live.db"
        init = subprocess.run([POSHOST, "init", "--demo", "--hsm", f"tcp://{hsm_at}", "--db",
                               str(db)], capture_output=True, text=True, timeout=60)
        assert init.returncode == 0, init.stderr
        assert TMK not in init.stdout and "live LMK" in init.stdout
        listed = subprocess.run([POSHOST, "card", "list", "--db", str(db)],
                                capture_output=True, text=True, timeout=60).stdout
        assert "622202*********0128" in listed
        host = subprocess.Popen([POSHOST, "serve", "--hsm", f"tcp://{hsm_at}", "--listen",
                                 "127.0.0.1:0", "--db", str(db)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(host)
        _ready(host, "poshost ready on")
        wrong = subprocess.run([POSHOST, "card", "add", "--pan", "6222020000000000018",
                                "--expiry", "3012", "--pin", "1234", "--balance", "1",
                                "--db", str(db)], capture_output=True, text=True, timeout=60)
        assert wrong.returncode == 1 and "check value" in wrong.stderr  # test LMK refused
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


async def test_balance_beyond_what_f54_carries_is_shown_capped(running_host: RunningHost) -> None:
    from specs.composite import decode_balance
    from specs.values import MAX_AMOUNT_MINOR

    good = running_host.cards["good"]
    conn = open_store(running_host.db_path)
    conn.execute("UPDATE cards SET balance=? WHERE pan_masked=?",
                 (MAX_AMOUNT_MINOR + 5_00, mask_pan(good.pan)))
    conn.close()
    async with running_host.terminal() as t:
        await t.sign_on()
        answer = await t.balance(good)
        assert answer.code == "00"
        assert decode_balance(answer["54"]) == MAX_AMOUNT_MINOR
        assert (await t.sale(good, 100)).code == "00"  # the host keeps serving the card


def test_add_range_is_all_or_nothing(db: Path) -> None:
    _refused(db, ["terminal", "add-range", "--tid-prefix", "123456", "--count", "90",
                  "--mid", "123456789012345", "--tmk", TMK], 1,
             "terminal 12345678 already exists")  # 12345601.. runs into the existing 12345678
