"""The hsm-sim command line: help, lab helpers, LMK files, and `serve` as a real process."""

import os
import select
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hsm_sim.cli import main
from hsm_sim.lmk import load_lmk

HSM_SIM = str(Path(sys.executable).parent / "hsm-sim")
READY_TIMEOUT = 10.0


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_help_documents_every_command() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    for name in ("serve", "lmk", "command", "kcv", "pinblock", "mac", "pvv", "wrap"):
        assert f"  {name} " in out
    code, out, _ = invoke("serve", "--help")
    assert "NC A0 BU HC HA FA CA CC BA DG DC EC DA M6 M8" in out and "Y0/Y2" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["kcv", "0123456789ABCDEFFEDCBA9876543210"], "08D7B4"),
        (
            [
                "mac",
                "--key",
                "0123456789ABCDEFFEDCBA9876543210",
                "--data-text",
                "Now is the time for all ",
            ],
            "A1C72E74EA3FA9B6",
        ),
        (
            [
                "mac",
                "--algorithm",
                "cup-ecb",
                "--key",
                "2222222222222222",
                "--data-hex",
                "1234567890ABCDEFABCDEF1234567890",
            ],
            "E267B6E2",
        ),
        (
            [
                "pinblock",
                "--pin",
                "1234",
                "--pan",
                "6222021234567890128",
                "--key",
                "0B681FC20E62C7340B681FC20E62C734",
            ],
            "enciphered 1B96E39DDF2F5140",
        ),
        (
            [
                "wrap",
                "--tmk",
                "CA5D92598DCA48CE8A4C76361A9269E9",
                "--key",
                "807A23AD32B36D457AE91FDF927570EA",
            ],
            "6701EAD6A9AD51E51AA406E2C27FCFA9 8D0A74B8",
        ),
        (
            [
                "pvv",
                "--pvk",
                "0123456789ABCDEFFEDCBA9876543210",
                "--pan",
                "1122334455667788",
                "--pin",
                "4524",
                "--pvki",
                "3",
            ],
            "4021",
        ),
    ],
)
def test_lab_helpers_reproduce_vectors(args: list[str], expected: str) -> None:
    code, out, err = invoke(*args)
    assert code == 0 and expected in out
    assert "CLEAR" in err


def test_lab_helper_errors_are_messages() -> None:
    code, _, err = invoke("pinblock", "--pin", "12", "--pan", "6222021234567890128")
    assert code == 2 and "[24]" in err  # bad input: usage error, as every CLI
    code, _, _ = invoke("mac", "--key", "zz", "--data-text", "x")
    assert code == 2


def test_lmk_generate_and_check(tmp_path: Path) -> None:
    path = tmp_path / "live.lmk"
    code, out, _ = invoke("lmk", "generate", str(path))
    assert code == 0 and "check value" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code, _, err = invoke("lmk", "generate", str(path))
    assert code == 1 and "refusing" in err
    code, out, _ = invoke("lmk", "check", "--lmk", str(path))
    assert code == 0 and out.strip() == load_lmk(str(path)).check_value


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(len(payload).to_bytes(2, "big") + payload)
        length = int.from_bytes(sock.recv(2), "big")
        data = b""
        while len(data) < length:
            data += sock.recv(length - len(data))
        return data


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_process_ready_line_answers_and_stops(stop_signal: signal.Signals) -> None:
    proc = subprocess.Popen(
        [HSM_SIM, "serve", "--port", "0", "--lmk", "test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        assert ready, "no ready line"
        line = proc.stdout.readline()
        assert line.startswith("hsm-sim ready on 127.0.0.1:")
        port = int(line.split()[3].rsplit(":", 1)[1])
        assert _exchange(port, b"0000BU0200406FBB23A5214DF") == b"0000BV000035BBE340A4B763"
        result = subprocess.run(
            [HSM_SIM, "command", "NC", "--port", str(port)], capture_output=True, text=True
        )
        assert result.returncode == 0 and result.stdout.startswith("0000ND00")
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=READY_TIMEOUT) == 0
        err = proc.stderr.read()
        assert "TEST LMK" in err
        audit = [line for line in err.splitlines() if " audit " in line]
        assert any("cmd=BU err=00" in line for line in audit), err
        assert any("cmd=NC err=00" in line for line in audit), err
        assert "0406FBB23A5214DF" not in err  # the key under LMK is not logged either
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_command_reports_unreachable_hsm() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = invoke("command", "NC", "--port", str(port))
    assert code == 1 and "cannot connect to the HSM" in err
