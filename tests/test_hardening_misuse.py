"""Table-driven misuse of the three CLIs (issue 13): every option and argument of every
command, fed each bad value, ends in a message and a documented exit code, never a
traceback, a hang or a changed database.

Each command starts from a baseline invocation that fails fast for another reason (a host or
HSM that does not answer, a terminal not initialised), so an accepted value cannot start a
server or a long run."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from host.cli import main as poshost
from hsm_sim.cli import main as hsm_sim
from terminal.cli import main as posterm

TMK = "0123456789ABCDEFFEDCBA9876543210"
TRACK2 = "6222021234567890128=30121010000000000"
BAD_VALUES = ["", " ", "-1", "0", "1e3", "9" * 30, "\u0661\u0662\u0663", "x" * 300,
              "127.0.0.1:99999", "a:b:c", "\x7f\t", "tcp://127.0.0.1:99999",
              "tcp://\u0661:1500"]
SECONDS_PER_CASE = 20
DOCUMENTED = {
    "poshost": {0, 1, 2, 130},
    "posterm": {0, 1, 2, 3, 4, 5, 130},
    "hsm-sim": {0, 1, 2, 130},
}

# Baselines, by command path: options (as a dict) and positional arguments. "{db}", "{busy}"
# are filled in per test.
DB = {"--db": "{db}"}
HSM_DOWN = {"--hsm": "tcp://127.0.0.1:{closed}"}
POSHOST: dict[str, tuple[dict[str, str], list[str]]] = {
    "serve": ({**DB, **HSM_DOWN, "--listen": "127.0.0.1:0"}, []),
    "bridge": ({"--serial": "/nonexistent/tty", "--host": "127.0.0.1:{closed}"}, []),
    "init": ({"--db": "{new_db}", **HSM_DOWN}, []),
    "spec": ({}, []),
    "merchant add": ({**DB, "--mid": "999999999999999", "--name": "Shop"}, []),
    "merchant set": ({**DB, "--mid": "123456789012345", "--fee": "NOPE"}, []),
    "fee add": ({**DB, "--name": "STD-9", "--model": "percent:0.38%,min:0.10"}, []),
    "fee change": ({**DB, "--name": "NOPE", "--model": "per-txn:1.00"}, []),
    "fee list": (dict(DB), []),
    "fee assignments": ({**DB, "--mid": "123456789012345"}, []),
    "terminal add": ({**DB, **HSM_DOWN, "--tid": "87654321", "--mid": "123456789012345",
                      "--tmk": TMK}, []),
    "terminal add-range": ({**DB, **HSM_DOWN, "--tid-prefix": "LT", "--count": "2",
                            "--mid": "123456789012345", "--tmk": TMK}, []),
    "terminal list": (dict(DB), []),
    "card add": ({**DB, **HSM_DOWN, "--pan": "6222020000000000018", "--expiry": "3012",
                  "--pin": "1234", "--balance": "1.00"}, []),
    "card set": ({**DB, "--pan": "6222029999999999999", "--status": "active"}, []),
    "card list": (dict(DB), []),
    "card show": ({**DB, "--pan": "6222021234567890128"}, []),
    "issuer-key add": ({**DB, **HSM_DOWN, "--bin": "622299"}, []),
    "issuer-key list": (dict(DB), []),
    "txn list": ({**DB, "--tid": "12345678"}, []),
    "batch list": ({**DB, "--tid": "12345678"}, []),
    "batch show": (dict(DB), ["12345678", "1"]),
    "exceptions list": (dict(DB), []),
    "exceptions resolve": ({**DB, "--comment": "checked"}, ["99"]),
    "settlement report": ({**DB, "--date": "2026-11-23", "--out": "{tmp}/eod.csv"}, []),
    "settlement merchants": ({**DB, "--date": "2026-11-23"}, []),
    "settlement margins": ({**DB, "--date": "2026-11-23"}, []),
    "tls make-lab-ca": ({"--tid": "12345678"}, ["{tmp}/ca"]),
    "route add": ({**DB, **HSM_DOWN, "--name": "NET-X", "--connect": "127.0.0.1:7001",
                   "--bins": "4761", "--zmk": TMK}, []),
    "route list": (dict(DB), []),
    "route disable": (dict(DB), ["NET-X"]),
    "route enable": (dict(DB), ["NET-X"]),
    "link add": ({**DB, **HSM_DOWN, "--name": "ACQ9", "--acquirer-id": "48020000",
                  "--zmk": TMK}, []),
    "recon import": ({**DB, "--route": "NET-X"}, ["{tmp}/missing.json"]),
    "db copy": ({"--from": "{db}", "--to": "{tmp}/copy.db"}, []),
}
CARD = {"--track2": TRACK2, "--pin": "1234"}
POSTERM: dict[str, tuple[dict[str, str], list[str]]] = {
    "init": ({"--tid": "12345678", "--mid": "123456789012345", "--tmk": TMK,
              "--host": "127.0.0.1:{closed}"}, []),
    "signon": ({}, []), "signoff": ({}, []), "echo": ({}, []),
    "sale": (dict(CARD), ["1.00"]),
    "balance": (dict(CARD), []),
    "void": ({"--stan": "2"}, []),
    "refund": ({"--stan": "5"}, ["1.00"]),
    "settle": ({}, []), "reversal": ({}, []), "journal": ({}, []), "status": ({}, []),
    "card add": ({"--name": "c1", "--pan": "6222021234567890128", "--expiry": "3012",
                  "--imk-ac": TMK}, []),
    "card list": ({}, []),
    "load": ({"--host": "127.0.0.1:{closed}", "--tmk": TMK, "--track2": TRACK2,
              "--terminals": "1", "--duration": "0.2", "--report": "{tmp}/r.json"}, []),
}
HSM_SIM: dict[str, tuple[dict[str, str], list[str]]] = {
    "serve": ({"--lmk": "test", "--listen": "127.0.0.1:{busy}",
               "--audit-log": "{tmp}/missing/audit.log"}, []),
    "lmk generate": ({}, ["{tmp}/live.lmk"]),
    "lmk check": ({"--lmk": "test"}, []),
    "command": ({"--host": "127.0.0.1:{closed}"}, ["NC"]),
    "kcv": ({}, [TMK]),
    "pinblock": ({"--pin": "1234", "--pan": "4321987654321098"}, []),
    "mac": ({"--key": TMK, "--data-text": "x"}, []),
    "pvv": ({"--pvk": TMK, "--pan": "4321987654321098", "--pin": "1234"}, []),
    "wrap": ({"--tmk": TMK, "--key": TMK}, []),
}
CLIS = {"poshost": (poshost, POSHOST), "posterm": (posterm, POSTERM),
        "hsm-sim": (hsm_sim, HSM_SIM)}


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{path} ")
        else:
            yield path, cmd


def test_every_command_has_a_baseline_and_help() -> None:
    for cli, (group, table) in CLIS.items():
        paths = {path for path, _ in _commands(group)}
        assert paths == set(table), (cli, paths ^ set(table))
        for path, cmd in _commands(group):
            assert cmd.help, f"{cli} {path} has no help text"
            for param in cmd.params:
                if isinstance(param, click.Option) and not param.hidden:
                    assert param.help, f"{cli} {path} {param.opts[0]} has no help text"


def _digest(path: Path) -> str | None:
    if not path.exists():
        return None
    conn = sqlite3.connect(path)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seed") / "seed.db"
    result = CliRunner().invoke(poshost, ["init", "--demo", "--db", str(path)])
    assert result.exit_code == 0, result.output
    return path


def _cases() -> Iterator[Any]:
    for cli, (group, _) in CLIS.items():
        for path, _cmd in _commands(group):
            yield pytest.param(cli, path, id=f"{cli} {path}")


class Hung(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise Hung


@pytest.mark.parametrize(("cli", "path"), list(_cases()))
def test_no_bad_value_ends_in_a_traceback(cli: str, path: str, tmp_path: Path,
                                          seeded_db: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    group, table = CLIS[cli]
    cmd = dict(_commands(group))[path]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POSTERM_STATE", raising=False)
    db = tmp_path / "host.db"
    shutil.copy(seeded_db, db)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    fill = {"{db}": str(db), "{new_db}": str(tmp_path / "new.db"), "{tmp}": str(tmp_path),
            "{closed}": str(closed_port), "{busy}": str(busy.getsockname()[1])}

    def filled(value: str) -> str:
        for key, real in fill.items():
            value = value.replace(key, real)
        return value

    options, positional = table[path]
    extra = ["--state", str(tmp_path / "t.db")] if cli == "posterm" else []
    checked = 0
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for param in cmd.params:
            if isinstance(param, click.Option) and (param.is_flag or param.count
                                                    or "--help" in param.opts):
                continue
            for bad in BAD_VALUES:
                opts = {k: filled(v) for k, v in options.items()}
                args = [filled(v) for v in positional]
                if isinstance(param, click.Argument):
                    index = [p for p in cmd.params if isinstance(p, click.Argument)].index(param)
                    args[index] = bad
                else:
                    opts = {k: v for k, v in opts.items() if k not in param.opts}
                    opts[param.opts[0]] = bad
                argv = [*path.split(), *[x for kv in opts.items() for x in kv], *args, *extra]
                before = _digest(db)
                signal.alarm(SECONDS_PER_CASE)
                try:
                    result = CliRunner().invoke(group, argv)
                except Hung:
                    pytest.fail(f"{cli} {' '.join(argv)!r} hung")
                finally:
                    signal.alarm(0)
                where = f"{cli} {argv!r}: {result.output[-500:]}"
                assert result.exception is None or isinstance(result.exception, SystemExit), (
                    where, result.exception)
                assert "Traceback" not in result.output, where
                assert result.exit_code in DOCUMENTED[cli], where
                if result.exit_code != 0:
                    assert _digest(db) == before, where
                    assert not (tmp_path / "new.db").exists(), where  # init: all or nothing
                checked += 1
    finally:
        signal.signal(signal.SIGALRM, old)
        busy.close()
    assert checked or not [p for p in cmd.params if not getattr(p, "is_flag", False)
                           and "--help" not in getattr(p, "opts", [])]


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_posterm_group_state_option(bad: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(posterm, ["--state", bad, "status"])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        bad, result.output, result.exception)
    assert result.exit_code in DOCUMENTED["posterm"]


@pytest.mark.parametrize(("cli", "group"), [("poshost", poshost), ("posterm", posterm),
                                            ("hsm-sim", hsm_sim)])
def test_version_and_exit_codes_in_help(cli: str, group: click.Group) -> None:
    version = CliRunner().invoke(group, ["--version"])
    assert version.exit_code == 0 and cli in version.output
    text = CliRunner().invoke(group, ["--help"]).output
    assert "Exit codes" in text and "2 usage" in text and "130 interrupted" in text


def test_old_spellings_still_work_but_are_hidden(tmp_path: Path, seeded_db: Path) -> None:
    db = tmp_path / "h.db"
    shutil.copy(seeded_db, db)
    old = CliRunner().invoke(poshost, ["terminal", "add-range", "--prefix", "OS", "--count",
                                       "2", "--mid", "123456789012345", "--tmk", TMK,
                                       "--db", str(db)])
    assert old.exit_code == 0 and "OS000001..OS000002" in old.output, old.output
    missing = CliRunner().invoke(poshost, ["terminal", "add-range", "--count", "2", "--mid",
                                           "123456789012345", "--tmk", TMK, "--db", str(db)])
    assert missing.exit_code == 2 and "--tid-prefix" in missing.output
    bridged = CliRunner().invoke(poshost, ["bridge", "--serial", "/nonexistent/tty", "--to",
                                           "127.0.0.1:5000"])
    assert bridged.exit_code == 1 and "Traceback" not in bridged.output  # parsed, line absent
    lmk = CliRunner().invoke(hsm_sim, ["lmk", "generate", "--lmk", str(tmp_path / "l.lmk")])
    assert lmk.exit_code == 0 and (tmp_path / "l.lmk").exists()
    for group, path, old_names in ((poshost, ["bridge"], ["--to"]),
                                   (poshost, ["terminal", "add-range"], ["--prefix"]),
                                   (hsm_sim, ["serve"], ["--host", "--port"]),
                                   (hsm_sim, ["command"], ["--port"]),
                                   (posterm, ["void"], ["--trace"]),
                                   (posterm, ["refund"], ["--trace"])):
        text = CliRunner().invoke(group, [*path, "--help"]).output.split("Options:")[1]
        for name in old_names:
            assert f"{name} " not in text and f"{name}," not in text, (path, name)
