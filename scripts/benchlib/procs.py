"""Server processes of the harness: ``poshost serve`` and the floor server, and /proc readings.

Each server runs as its own process with its output in a log file (never a pipe that could
fill up); readiness is the first accepted TCP connection, polled with a bound.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib.limits import POLL_INTERVAL, READY_TIMEOUT, STOP_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poshost_command() -> list[str]:
    exe = VENV_BIN / "poshost"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "host.cli"]


def has_serve_command() -> bool:
    """Whether ``poshost serve`` exists yet (else benchlib.hostproc stands in)."""
    try:
        from host.cli import main
    except ImportError:
        return False
    return "serve" in getattr(main, "commands", {})


def _serve_options() -> set[str]:
    from host.cli import main

    serve = main.commands["serve"]  # type: ignore[attr-defined]
    return {opt for param in serve.params for opt in getattr(param, "opts", [])}


def host_argv(port: int, db_path: Path, *, profile_to: Path | None = None,
              workers: int = 0, http: bool = False) -> list[str]:
    """``poshost serve`` on 127.0.0.1:port with the embedded HSM and the test LMK (and
    ``--workers``); with ``profile_to``, the same under cProfile (stats written on graceful
    stop; the parent process only)."""
    listen = ["--listen", f"127.0.0.1:{port}", "--db", str(db_path)]
    if has_serve_command():
        module = ["-m", "benchlib.hostcli"]
        args = ["serve", *listen, "--hsm", "embedded", "--lmk", "test"]
        if workers:
            args += ["--workers", str(workers)]
        if http:
            args += ["--http", "127.0.0.1:0"]  # metrics and dashboard on (their overhead)
        if "--demo" in _serve_options():
            args.append("--no-demo")  # the bench provisions its own fleet
        command = [*poshost_command(), *args]
    else:
        module, args = ["-m", "benchlib.hostproc"], listen
        command = [sys.executable, *module, *args]
    if profile_to is not None:
        return [sys.executable, "-m", "cProfile", "-o", str(profile_to), *module, *args]
    return command


def floor_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "benchlib.floor", "--listen", f"127.0.0.1:{port}"]


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=POLL_INTERVAL * 4):
            return True
    except OSError:
        return False


@dataclass
class Server:
    """A server process listening on 127.0.0.1:``port``."""

    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start and wait (bounded polling) until the port accepts connections."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "scripts"), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.update(self.env)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not _can_connect(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode} before"
                                   f" listening; log: {self.log_path}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server not listening after {timeout} s; log: "
                                   f"{self.log_path}\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL)

    def kill(self) -> None:
        """kill -9 and reap; then wait (bounded) until its worker processes are gone too
        (they exit by themselves when their parent dies)."""
        if self.proc is not None and self.proc.poll() is None:
            children = children_of(self.proc.pid)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
            deadline = time.monotonic() + STOP_TIMEOUT
            while any(os.path.exists(f"/proc/{c}") for c in children) \
                    and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (graceful), then SIGKILL after ``timeout``. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _tree(self) -> list[int]:
        return [self.pid, *children_of(self.pid)]

    def status(self) -> dict[str, int]:
        """proc_status summed over the server and its worker processes."""
        total: dict[str, int] = {}
        for pid in self._tree():
            try:
                for key, value in proc_status(pid).items():
                    total[key] = total.get(key, 0) + value
            except OSError:
                continue  # gone meanwhile
        return total

    def open_fds(self) -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in self._tree()
                   if os.path.exists(f"/proc/{pid}/fd"))

    def cpu_seconds(self) -> float:
        """CPU of the server and its live worker processes."""
        total = 0.0
        for pid in self._tree():
            try:
                total += proc_cpu_seconds(pid)
            except OSError:
                continue
        return total

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def children_of(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc/*/status PPid)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                ppid = next((line.split()[1] for line in f if line.startswith("PPid:")), "")
        except OSError:
            continue
        if ppid == str(pid):
            out.append(int(entry))
    return out


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (bytes) and Threads of a process, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                out[key] = int(value)
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
