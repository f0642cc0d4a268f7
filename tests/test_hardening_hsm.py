"""Misuse of `hsm-sim` and ports everywhere (issue 13): no wrap-around above 65535, a busy
port or a bad host is a message, `command` exits 1 on an error reply."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from host.cli import main as poshost
from hsm_sim.cli import main as hsm_sim
from terminal.cli import main as posterm

HSM_SIM = str(Path(sys.executable).parent / "hsm-sim")


@pytest.mark.parametrize(("group", "args"), [
    (poshost, ["serve", "--listen", "127.0.0.1:99999"]),
    (poshost, ["serve", "--listen", "127.0.0.1:65536"]),
    (poshost, ["bridge", "--serial", "/dev/null", "--host", "127.0.0.1:70000"]),
    (hsm_sim, ["serve", "--lmk", "test", "--listen", "127.0.0.1:99999"]),
    (hsm_sim, ["serve", "--lmk", "test", "--port", "99999"]),
    (hsm_sim, ["command", "NC", "--host", "127.0.0.1:99999"]),
    (hsm_sim, ["command", "NC", "--port", "65536"]),
    (posterm, ["init", "--tid", "12345678", "--mid", "123456789012345", "--tmk", "00" * 16,
               "--host", "127.0.0.1:99999"]),
])
def test_ports_above_65535_are_refused_not_wrapped(group: object, args: list[str],
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(group, args)  # type: ignore[arg-type]
    assert result.exit_code == 2, result.output
    assert "65535" in result.output or "HOST:PORT" in result.output
    assert list(tmp_path.iterdir()) == []


def test_hsm_serve_on_a_busy_port_or_bad_host() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([HSM_SIM, "serve", "--lmk", "test", "--listen",
                               f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30)
    assert busy.returncode == 1 and "address already in use" in busy.stderr
    assert "Traceback" not in busy.stderr
    bad = subprocess.run([HSM_SIM, "serve", "--lmk", "test", "--listen",
                          "no-such-host.invalid:0"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "unknown host" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def test_command_exit_code_follows_the_error_code(tmp_path: Path) -> None:
    server = subprocess.Popen([HSM_SIM, "serve", "--lmk", "test", "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        address = next(line.split()[3] for line in server.stdout
                       if line.startswith("hsm-sim ready on"))
        good = subprocess.run([HSM_SIM, "command", "NC", "--host", address],
                              capture_output=True, text=True, timeout=30)
        assert good.returncode == 0 and good.stdout.startswith("0000ND00"), good.stdout
        old_host, old_port = address.rsplit(":", 1)  # old spelling still works
        old = subprocess.run([HSM_SIM, "command", "NC", "--host", old_host, "--port", old_port],
                             capture_output=True, text=True, timeout=30)
        assert old.returncode == 0 and old.stdout == good.stdout
        refused = subprocess.run([HSM_SIM, "command", "BU0200406FBB23", "--host", address],
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        code = refused.stdout.strip()[6:8]
        assert code != "00" and f"error code {code}" in refused.stderr
    finally:
        server.terminate()
        server.wait(timeout=20)
