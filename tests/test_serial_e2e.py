"""End to end over serial lines, no hardware: posterm (terminal.session with SerialTransport)
-> pty -> software null-modem cable -> pty -> serve_serial_lines / run_bridge -> the REAL host
(``running_host``). Sign-on, sale, void and settlement, both framings, and a byte corrupted on
the cable (NAK, retransmission, one transaction)."""

from __future__ import annotations

import functools
import json
import os
import tty
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from host.bridge import run_bridge, serve_serial_lines
from terminal.serial_transport import SerialTransport
from terminal.session import Terminal
from terminal.state import Config, Store
from tests.hostkit import TestTerminal
from tests.test_serial_io import TEST_TIMEOUT
from tests.test_term_host import card_balance, host_rows, swipe

E2E_TIMEOUT = TEST_TIMEOUT * 3
TERMINAL_TIMEOUT = 10.0
MIN_FRAME_CHUNK = 10
"""Chunks on the cable at least this long carry frame bytes (not a lone ACK/NAK)."""

Tamper = Callable[[bytes], bytes]


class NullModem:
    """Two pty pairs whose masters are cross-connected: a null-modem cable between two slave
    paths. ``tamper_next`` alters the next frame-sized chunk going from end A to end B."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.paths: list[str] = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self.fds += [master, slave]
            self.paths.append(os.ttyname(slave))
        self.tamper_next: Tamper | None = None
        self.chunks_a_to_b = 0

    @property
    def a(self) -> str:
        return self.paths[0]

    @property
    def b(self) -> str:
        return self.paths[1]

    async def _pump(self, src: int, dst: int, forward: bool) -> None:
        while True:
            await trio.lowlevel.wait_readable(src)
            try:
                data = os.read(src, 4096)
            except BlockingIOError:
                continue
            if forward:
                self.chunks_a_to_b += 1
                if self.tamper_next is not None and len(data) >= MIN_FRAME_CHUNK:
                    data, self.tamper_next = self.tamper_next(data), None
            view = memoryview(data)
            while view:
                await trio.lowlevel.wait_writable(dst)
                view = view[os.write(dst, view):]

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, self.fds[0], self.fds[2], True)
            nursery.start_soon(self._pump, self.fds[2], self.fds[0], False)
            task_status.started()

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


@asynccontextmanager
async def serial_host(running_host: Any, framing: str, via: str) -> AsyncIterator[NullModem]:
    """The real host behind a serial line: returns the cable; the terminal uses end A."""
    cable = NullModem()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(cable.run)
            spec = f"{cable.b},baud=115200,framing={framing}"
            if via == "serve":
                await nursery.start(serve_serial_lines, [spec], running_host.host,
                                    running_host.port)
            else:
                await nursery.start(run_bridge, spec, running_host.host, running_host.port)
            yield cable
            nursery.cancel_scope.cancel()
    finally:
        cable.close()


def serial_terminal(host: Any, path: Path, spec: str,
                    trace: Callable[[str], None] | None = None) -> Terminal:
    store = Store(path)
    store.initialise(Config(host.tid, host.mid, "serial", 0, timeout=TERMINAL_TIMEOUT,
                            backoff=0.01, attempts=2), bytes.fromhex(host.tmk))
    return Terminal(store, SerialTransport(spec, trace=trace))


def transaction_count(host: Any) -> int:
    """Rows in the host's transaction table (``txns``)."""
    return host_rows(host, "SELECT COUNT(*) FROM txns")[0][0]


@pytest.mark.parametrize(("framing", "via"), [("stx", "serve"), ("length", "serve"),
                                              ("stx", "bridge")])
async def test_posterm_day_over_serial(running_host: Any, tmp_path: Path, framing: str,
                                       via: str) -> None:
    host = running_host
    with trio.fail_after(E2E_TIMEOUT):
        async with serial_host(host, framing, via) as cable:
            t = serial_terminal(host, tmp_path / "t.db", f"{cable.a},baud=115200,"
                                f"framing={framing}")
            assert (await t.sign_on()).status == "approved"
            before = card_balance(host, "good")
            sale = await t.sale(swipe(host), 2500, "1234")
            assert sale.status == "approved" and sale.code == "00", sale
            other = await t.sale(swipe(host), 400, "1234")
            assert other.status == "approved"
            void = await t.void(sale.details["stan"], None, None)
            assert void.status == "approved", void
            assert card_balance(host, "good") == before - 400
            settle = await t.settle()
            assert settle.status == "balanced", settle
            assert settle.details["debit_count"] == 1
            await t.transport.aclose()


async def test_corrupted_byte_on_the_cable_is_one_transaction(running_host: Any,
                                                              tmp_path: Path) -> None:
    host = running_host
    with trio.fail_after(E2E_TIMEOUT):
        async with serial_host(host, "stx", "serve") as cable:
            lines: list[str] = []
            t = serial_terminal(host, tmp_path / "t.db", cable.a, trace=lines.append)
            assert (await t.sign_on()).status == "approved"
            before = card_balance(host, "good")
            count = transaction_count(host)

            def flip(chunk: bytes) -> bytes:
                return chunk[:12] + bytes([chunk[12] ^ 0x04]) + chunk[13:]

            cable.tamper_next = flip
            sale = await t.sale(swipe(host), 1999, "1234")
            assert cable.tamper_next is None, "the sale went out untampered"
            assert sale.status == "approved", sale
            assert card_balance(host, "good") == before - 1999
            assert transaction_count(host) == count + 1
            assert not t.store.reversals()
            await t.transport.aclose()
    events = [line.split(" ", 1)[1] for line in lines]
    start = next(i for i, e in enumerate(events) if e.startswith("-> frame") and "mti=0200" in e)
    assert events[start + 1 : start + 4] == ["<- NAK", "-> retransmission 1 (NAK)", "<- ACK"]
    assert "6222021234567890128" not in "\n".join(lines)  # the trace masks the PAN


class SerialKitTerminal(TestTerminal):
    """The host tests' terminal kit, over a serial line (STX framing) instead of TCP."""

    __test__ = False

    def __init__(self, *args: Any, path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transport = SerialTransport(path)

    async def __aenter__(self) -> SerialKitTerminal:
        await self.transport.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.aclose()

    async def send_payload(self, payload: bytes) -> bytes | None:
        return await self.transport.exchange(payload, TERMINAL_TIMEOUT)


async def test_hostkit_terminal_over_serial(running_host: Any) -> None:
    host = running_host
    with trio.fail_after(E2E_TIMEOUT):
        async with serial_host(host, "stx", "serve") as cable:
            kit = SerialKitTerminal(host.host, host.port, host.tid, host.mid, host.tmk,
                                    path=cable.a)
            async with kit:
                assert (await kit.sign_on()).code == "00"
                card = host.cards["good"]
                sale = await kit.sale(card, 1234)
                assert sale.code == "00"
                assert (await kit.void(card, sale)).code == "00"
                assert (await kit.echo()).code == "00"


async def test_serve_serial_lines_next_to_tcp_terminals(running_host: Any) -> None:
    """A serial terminal and a TCP terminal at the same time on the same host."""
    host = running_host
    await host.add_terminal("SERIAL02")
    with trio.fail_after(E2E_TIMEOUT):
        async with serial_host(host, "stx", "serve") as cable:
            serial_kit = SerialKitTerminal(host.host, host.port, "SERIAL02", host.mid,
                                           host.tmk, path=cable.a)
            async with serial_kit, host.terminal() as tcp_kit, trio.open_nursery() as nursery:
                for kit in (serial_kit, tcp_kit):
                    nursery.start_soon(functools.partial(_sign_on_and_sell, kit, host))


async def _sign_on_and_sell(kit: TestTerminal, host: Any) -> None:
    assert (await kit.sign_on()).code == "00"
    assert (await kit.sale(host.cards["good"], 100)).code == "00"


async def test_posterm_cli_initialised_with_serial_runs_over_the_line(
    running_host: Any, tmp_path: Path
) -> None:
    """`posterm init --serial PORT` makes every later command use the line, not TCP."""
    from tests.test_term_cli import TMK, TRACK2, arun

    state = tmp_path / "cli.db"
    with trio.fail_after(E2E_TIMEOUT):
        async with serial_host(running_host, "stx", "serve") as cable:
            init = await arun(state, "init", "--tid", running_host.tid, "--mid",
                              running_host.mid, "--tmk", TMK, "--serial",
                              f"{cable.a},baud=115200", "--timeout", "5")
            assert init.exit_code == 0, init.output
            assert f"serial {cable.a}" in init.output
            before = transaction_count(running_host)
            signon = await arun(state, "--json", "signon")
            assert signon.exit_code == 0, signon.output
            sale = await arun(state, "--json", "sale", "12.34", "--track2", TRACK2,
                              "--pin", "1234")
            assert sale.exit_code == 0, sale.output
            assert json.loads(sale.stdout)["response_code"] == "00"
            assert transaction_count(running_host) == before + 1


def test_posterm_init_needs_exactly_one_of_host_and_serial(tmp_path: Path) -> None:
    from tests.test_term_cli import TMK, run

    base = ["init", "--tid", "12345678", "--mid", "123456789012345", "--tmk", TMK]
    neither = run(tmp_path / "a.db", *base)
    both = run(tmp_path / "b.db", *base, "--host", "127.0.0.1:5000", "--serial", "/dev/null")
    bad = run(tmp_path / "c.db", *base, "--serial", "/dev/ttyS0,baud=fast")
    for result in (neither, both, bad):
        assert result.exit_code == 2, result.output


async def test_run_host_serves_its_configured_serial_lines(running_host: Any,
                                                           tmp_path: Path) -> None:
    """`poshost serve --serial PORT` = HostConfig.serial_lines: run_host bridges each line into
    its own listener, and posterm on the far end of the cable signs on and sells."""
    from host.app import HostConfig, run_host
    from tests.test_term_cli import TMK, TRACK2, arun

    cable = NullModem()
    state = tmp_path / "cli.db"
    try:
        with trio.fail_after(E2E_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(cable.run)
                config = HostConfig("127.0.0.1", 0, running_host.db_path,
                                    serial_lines=(f"{cable.b},baud=115200",))
                await nursery.start(run_host, config)
                init = await arun(state, "init", "--tid", running_host.tid, "--mid",
                                  running_host.mid, "--tmk", TMK, "--serial",
                                  f"{cable.a},baud=115200", "--timeout", "5")
                assert init.exit_code == 0, init.output
                assert (await arun(state, "signon")).exit_code == 0
                sale = await arun(state, "--json", "sale", "1.00", "--track2", TRACK2,
                                  "--pin", "1234")
                assert json.loads(sale.stdout)["response_code"] == "00", sale.output
                nursery.cancel_scope.cancel()
    finally:
        cable.close()
