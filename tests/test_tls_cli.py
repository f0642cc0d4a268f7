"""The README's TLS recipe, command by command, as processes over real TCP: a lab CA, hsm-sim
on mutual TLS, poshost provisioned and serving through it with a plain and a mutual-TLS
listener, posterm on TLS with its certificate (and a plain posterm beside it)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from host.cli import main as poshost
from host.demo import DEMO_MID, DEMO_TID, DEMO_TMK
from terminal.cli import main as posterm

BIN = Path(sys.executable).parent
READY_TIMEOUT = 30.0
TRACK2 = "6222021234567890128D30121010000000000"


def _ok(cli: object, args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    running: list[subprocess.Popen[str]] = []
    yield running
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start(running: list[subprocess.Popen[str]], argv: list[str], ready: str) -> str:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    running.append(proc)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(ready):
            return line
    raise AssertionError(f"{argv[0]} exited with {proc.wait()} before saying {ready!r}")


def test_tls_recipe_from_the_readme(tmp_path: Path,
                                    processes: list[subprocess.Popen[str]]) -> None:
    lab = tmp_path / "lab"
    _ok(poshost, ["tls", "make-lab-ca", str(lab)])
    line = start(processes, [str(BIN / "hsm-sim"), "serve", "--port", "0", "--lmk", "test",
                             "--tls-cert", str(lab / "server.pem"), "--tls-key",
                             str(lab / "server.key"), "--tls-client-ca", str(lab / "ca.pem")],
                 "hsm-sim ready on TLS")
    hsm_port = re.search(r":(\d+) ", line).group(1)  # type: ignore[union-attr]
    hsm = (f"tls://127.0.0.1:{hsm_port}?ca={lab}/ca.pem&cert={lab}/server.pem"
           f"&key={lab}/server.key")
    from hsm_sim.cli import main as hsm_sim
    nc = _ok(hsm_sim, ["command", "--port", hsm_port, "--tls", "--ca", str(lab / "ca.pem"),
                       "--cert", str(lab / "server.pem"), "--key", str(lab / "server.key"),
                       "NC"])
    assert nc.startswith("0000ND00")
    db = str(tmp_path / "host.db")
    _ok(poshost, ["init", "--demo", "--db", db, "--hsm", hsm])
    _ok(poshost, ["terminal", "add-range", "--prefix", "LT", "--count", "2", "--mid", DEMO_MID,
                  "--tmk", DEMO_TMK, "--db", db, "--hsm", hsm])
    line = start(processes, [str(BIN / "poshost"), "serve", "--listen", "127.0.0.1:0",
                             "--listen-tls", "127.0.0.1:0", "--tls-cert", str(lab / "server.pem"),
                             "--tls-key", str(lab / "server.key"), "--tls-client-ca",
                             str(lab / "ca.pem"), "--db", db, "--hsm", hsm],
                 "poshost ready on")
    ports = re.findall(r"127\.0\.0\.1:(\d+)", line.split("(")[0])
    assert len(ports) == 2, line
    plain_port, tls_port = ports

    secure = ["--state", str(tmp_path / "tls.db")]
    _ok(posterm, ["init", "--tid", DEMO_TID, "--mid", DEMO_MID, "--tmk", DEMO_TMK, "--host",
                  f"127.0.0.1:{tls_port}", "--tls", "--ca", str(lab / "ca.pem"), "--cert",
                  str(lab / "terminal.pem"), "--key", str(lab / "terminal.key"), *secure])
    plain = ["--state", str(tmp_path / "plain.db")]
    _ok(posterm, ["init", "--tid", DEMO_TID, "--mid", DEMO_MID, "--tmk", DEMO_TMK, "--host",
                  f"127.0.0.1:{plain_port}", *plain])
    for state in (secure, plain):
        assert "APPROVED" in _ok(posterm, ["signon", *state]).upper()
        sale = _ok(posterm, ["sale", "1.00", "--track2", TRACK2, "--pin", "1234", *state])
        assert "APPROVED" in sale.upper()

    load = CliRunner().invoke(posterm, [
        "load", "--host", f"127.0.0.1:{tls_port}", "--tls", "--ca", str(lab / "ca.pem"),
        "--cert", str(lab / "terminal.pem"), "--key", str(lab / "terminal.key"),
        "--terminals", "2", "--duration", "1", "--mix", "sale=100", "--mid", DEMO_MID,
        "--tmk", DEMO_TMK, "--track2", TRACK2, "--pin", "1234", "--json"])
    assert load.exit_code == 0, load.output
    report = json.loads(load.stdout)
    assert report["completed"] > 0 and not report["errors"] and report["settings"]["tls"]

    bare = ["--state", str(tmp_path / "bare.db")]
    _ok(posterm, ["init", "--tid", DEMO_TID, "--mid", DEMO_MID, "--tmk", DEMO_TMK, "--host",
                  f"127.0.0.1:{tls_port}", "--tls", "--ca", str(lab / "ca.pem"), *bare])
    refused = CliRunner().invoke(posterm, ["signon", *bare])
    assert refused.exit_code == 3 and "certificate" in refused.output
