"""One host per address: a second `poshost serve` on a served port is refused, in every mode
(SO_REUSEPORT in --workers mode would otherwise split the terminal estate between hosts)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from host.errors import ConfigError
from host.exclusive import claim_address, probe_free

POSHOST = str(Path(sys.executable).parent / "poshost")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(db: Path, port: int, workers: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([POSHOST, "serve", "--listen", f"127.0.0.1:{port}", "--db",
                             str(db), "--workers", workers], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("poshost ready on"):
            return proc
    proc.kill()
    raise AssertionError("first host did not start")


@pytest.mark.parametrize(("first", "second"), [("2", "2"), ("0", "2"), ("2", "0")])
def test_second_host_on_a_served_port_is_refused(tmp_path: Path, first: str,
                                                 second: str) -> None:
    port = _free_port()
    proc = _start(tmp_path / "one.db", port, first)
    try:
        other = tmp_path / "two.db"
        result = subprocess.run([POSHOST, "serve", "--listen", f"127.0.0.1:{port}", "--db",
                                 str(other), "--workers", second], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
        assert "one host per address" in result.stderr
        assert "poshost ready" not in result.stdout
        assert "Traceback" not in result.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_claim_refuses_a_second_claim_and_is_released() -> None:
    port = _free_port()
    with (claim_address("127.0.0.1", port),
          pytest.raises(ConfigError, match="another poshost already serves it"),
          claim_address("127.0.0.1", port)):
        pass
    with claim_address("127.0.0.1", port):  # released with the block
        pass


def test_probe_sees_a_reuseport_listener() -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ConfigError, match="Address already in use"):
            probe_free("127.0.0.1", port)


async def test_tls_address_is_claimed_too(tmp_path: Path) -> None:
    from host.app import HostConfig, TlsListen, run_host

    port = _free_port()
    tls = TlsListen("127.0.0.1", port, tmp_path / "c.pem", tmp_path / "k.pem")
    with claim_address("127.0.0.1", port), \
            pytest.raises(ConfigError, match="another poshost already serves it"):
        await run_host(HostConfig(listen_port=0, db_path=tmp_path / "h.db", tls=tls))
    assert not (tmp_path / "h.db").exists()
