"""``poshost serve --http``: /metrics parsed by prometheus_client's own parser and moving as
real terminals transact over real TCP (one process and --workers), /healthz, hostile HTTP
clients that must not stall terminals, and the dashboard in a real headless chromium."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from host.app import HostConfig, run_host
from host.limits import HTTP_MAX_CONNECTIONS, HTTP_MAX_REQUEST, HTTP_REQUEST_BURST
from host.observe import HttpSettings
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from hsm_sim.server import serve_hsm
from specs.composite import NOT_BALANCED, SettlementTotals, Totals, decode_settlement_totals
from specs.framing import Frame, Header, Tpdu
from tests.browser import Browser
from tests.conftest import CARDS, MID, TID, TMK, provision
from tests.hostkit import TestCard, TestTerminal

PANS = [pan for pan, *_ in CARDS.values()]
WAIT = 15.0
"""Seconds a figure gets to show up (worker pushes, caches, a loaded machine)."""


@dataclass
class Observed:
    host: str
    port: int
    http: tuple[str, int]
    db_path: Path
    cards: dict[str, TestCard]
    stop: trio.Event

    def terminal(self) -> TestTerminal:
        return TestTerminal(self.host, self.port, TID, MID, TMK, "x919")


async def start(tmp_path: Path, nursery: trio.Nursery, workers: int = 0,
                hsm: str = "embedded") -> Observed:
    db_path = tmp_path / "host.db"
    cards = await provision(db_path, HsmClient.in_process(HsmEngine.test()))
    http = HttpSettings(port=0)
    stop = trio.Event()
    config = HostConfig(listen_port=0, db_path=db_path, workers=workers, http=http, hsm=hsm)
    host, port = await nursery.start(
        lambda task_status: run_host(config, task_status=task_status, stop=stop))
    assert http.bound is not None and http.bound[0] == "127.0.0.1"
    return Observed(host, port, http.bound, db_path, cards, stop)


async def http_get(address: tuple[str, int], path: str, method: str = "GET",
                   ) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh connection; status, headers, body."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: test\r\n"
                              "Connection: close\r\n\r\n".encode())
        data = b""
        with trio.fail_after(WAIT):
            while chunk := await stream.receive_some(1 << 16):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(o: Observed) -> tuple[Samples, str]:
    status, headers, body = await http_get(o.http, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, frozenset(s.labels.items())] = s.value
    return samples, text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def until(o: Observed, check: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``check`` holds (figures from workers and the store come in with a lag)."""
    with trio.fail_after(WAIT):
        while True:
            samples, _ = await scrape(o)
            if check(samples):
                return samples
            await trio.sleep(0.2)


def assert_no_pan(text: str) -> None:
    for pan in PANS:
        assert pan not in text


async def test_metrics_parse_and_move_with_transactions(tmp_path: Path,
                                                        nursery: trio.Nursery) -> None:
    o = await start(tmp_path, nursery)
    before, _ = await scrape(o)
    assert value(before, "poshost_requests_total", kind="sale") == 0
    assert value(before, "poshost_hsm_up") == 1
    good, low = o.cards["good"], o.cards["low"]
    async with o.terminal() as t:
        assert (await t.sign_on()).code == "00"
        assert (await t.sale(good, 100)).code == "00"
        assert (await t.sale(good, 250)).code == "00"
        assert (await t.sale(low, 999_999)).code == "51"
        s = await until(o, lambda s: value(s, "poshost_terminals_signed_on") == 1)
        assert value(s, "poshost_connections_open") == 1
        assert value(s, "poshost_requests_total", kind="sale") == 3
        assert value(s, "poshost_responses_total", kind="sale", code="00") == 2
        assert value(s, "poshost_responses_total", kind="sale", code="51") == 1
        assert value(s, "poshost_responses_total", kind="sign_on", code="00") == 1
        assert value(s, "poshost_request_duration_seconds_count") == 4
        assert 0 < value(s, "poshost_request_duration_seconds_sum") < 4 * 15
        assert value(s, "poshost_request_duration_seconds_bucket", le="+Inf") == 4
        assert value(s, "poshost_hsm_command_duration_seconds_count", command="verify_mac") == 3
        assert value(s, "poshost_hsm_command_duration_seconds_count",
                     command="generate_terminal_keys") == 1
        assert value(s, "poshost_writer_group_jobs_sum") >= 4  # sign-on and three sales
        assert value(s, "poshost_writer_commit_duration_seconds_count") >= 1
        assert value(s, "poshost_batches", state="open") == 1
        assert value(s, "poshost_terminals_online") == 1

        # end of day that does not balance: the batch uploads, exceptions open
        claim = SettlementTotals(Totals(1, 1, 0, 0), Totals(0, 0))
        answer = await t.settle(claim)
        assert decode_settlement_totals(answer["48"]).domestic.result == NOT_BALANCED
        s = await until(o, lambda s: value(s, "poshost_batches", state="uploading") == 1)
        assert value(s, "poshost_batches_unbalanced") == 1
        assert (await t.upload_end(0)).code == "00"
        s = await until(o, lambda s: value(s, "poshost_reconciliation_exceptions_open") == 2)
        assert value(s, "poshost_batches", state="closed") == 1
    s = await until(o, lambda s: value(s, "poshost_connections_open") == 0)
    _, text = await scrape(o)
    assert_no_pan(text)
    assert "# TYPE poshost_requests_total counter" in text

    status, _, body = await http_get(o.http, "/api/state")
    assert status == 200
    assert_no_pan(body.decode())
    assert b"622202*********0128" in body  # the latest transactions, masked
    status, _, _ = await http_get(o.http, "/metrics", method="POST")
    assert status == 405
    assert (await http_get(o.http, "/nothing"))[0] == 404


async def test_healthz_is_503_while_the_store_cannot_commit(tmp_path: Path,
                                                            nursery: trio.Nursery) -> None:
    o = await start(tmp_path, nursery)
    status, _, body = await http_get(o.http, "/healthz")
    assert status == 200 and body.startswith(b"ok"), body
    blocker = sqlite3.connect(o.db_path, timeout=0, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with trio.fail_after(WAIT):
            while (answer := await http_get(o.http, "/healthz"))[0] == 200:
                await trio.sleep(0.2)
        assert answer[0] == 503 and b"commit" in answer[2], answer
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with trio.fail_after(WAIT):
        while (await http_get(o.http, "/healthz"))[0] != 200:
            await trio.sleep(0.2)


async def test_workers_figures_cover_every_process(tmp_path: Path,
                                                   nursery: trio.Nursery) -> None:
    o = await start(tmp_path, nursery, workers=2)
    sales = 12
    t = o.terminal()
    with trio.fail_after(WAIT):  # the workers open their listeners just after start-up
        while True:
            try:
                await t.__aenter__()
                break
            except OSError:
                await trio.sleep(0.05)
    async with t:
        assert (await t.sign_on()).code == "00"
    for _ in range(sales):  # a new connection each: the kernel spreads them over both workers
        async with t:
            assert (await t.sale(o.cards["good"], 100)).code == "00"
    s = await until(o, lambda s: value(s, "poshost_responses_total", kind="sale", code="00")
                    == sales)
    assert value(s, "poshost_workers") == 2
    assert (await http_get(o.http, "/healthz"))[0] == 200  # workers ready, writer commits
    assert value(s, "poshost_request_duration_seconds_count") == sales + 1
    assert value(s, "poshost_hsm_command_duration_seconds_count", command="verify_mac") == sales
    # a worker killed outright: the counts it had sent stay in the totals
    victim = _worker_pids(o.db_path)[0]
    os.kill(victim, signal.SIGKILL)
    with trio.fail_after(WAIT):
        while victim in _worker_pids(o.db_path):
            await trio.sleep(0.1)
    s, _ = await scrape(o)
    assert value(s, "poshost_responses_total", kind="sale", code="00") == sales
    o.stop.set()


async def test_hsm_outage_shows_in_metrics_but_not_in_health(
        tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("host.observe.HSM_PROBE_INTERVAL", 0.2)
    hsm_scope = trio.CancelScope()

    async def hsm_task(*, task_status: trio.TaskStatus[int]) -> None:
        with hsm_scope:
            async with trio.open_nursery() as inner:
                listeners = await inner.start(serve_hsm, HsmEngine.test(), "127.0.0.1", 0, 4)
                task_status.started(listeners[0].socket.getsockname()[1])

    hsm_port = await nursery.start(hsm_task)
    o = await start(tmp_path, nursery, hsm=f"tcp://127.0.0.1:{hsm_port}")
    await until(o, lambda s: value(s, "poshost_hsm_up") == 1)
    async with o.terminal() as t:
        assert (await t.sign_on()).code == "00"
        assert (await t.sale(o.cards["good"], 100)).code == "00"
        hsm_scope.cancel()  # the HSM goes away: the host answers 96, unMACed
        request = t.financial("sale", o.cards["good"], 200, o.cards["good"].pin)
        await t.send_payload(Frame(Tpdu(), Header(), t.encode(request)).payload())
    s = await until(o, lambda s: value(s, "poshost_hsm_up") == 0)
    assert value(s, "poshost_responses_total", kind="sale", code="96") == 1
    errors = sum(v for (name, _), v in s.items() if name == "poshost_hsm_errors_total")
    assert errors >= 1
    status, _, body = await http_get(o.http, "/api/state")
    assert status == 200 and b'"up":false' in body
    assert (await http_get(o.http, "/healthz"))[0] == 200  # terminals still get answers


def _worker_pids(db_path: Path) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"host.workers" in cmdline and str(db_path).encode() in cmdline:
                out.append(int(pid))
    return sorted(out)


async def test_hostile_http_clients_do_not_stall_terminals(tmp_path: Path,
                                                           nursery: trio.Nursery) -> None:
    o = await start(tmp_path, nursery)
    # every HTTP slot held by a client that never finishes its request (slowloris)
    held = []
    for _ in range(HTTP_MAX_CONNECTIONS):
        stream = await trio.open_tcp_stream(*o.http)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x")
        held.append(stream)
    await trio.sleep(0.2)  # let the server take them in
    extra = await trio.open_tcp_stream(*o.http)  # one more: closed on accept
    with trio.fail_after(WAIT):
        assert await _read_all(extra) == b""
    async with o.terminal() as t:  # the terminals do not notice
        with trio.fail_after(5):
            assert (await t.sign_on()).code == "00"
            for _ in range(5):
                assert (await t.sale(o.cards["good"], 100)).code == "00"
    for stream in held:
        await stream.aclose()
    # an oversized request is refused, not buffered
    with trio.fail_after(WAIT):
        while True:
            try:
                stream = await trio.open_tcp_stream(*o.http)
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
                                      + b"a" * (HTTP_MAX_REQUEST * 2) + b"\r\n\r\n")
                answer = await _read_all(stream)
            except trio.BrokenResourceError:
                answer = b""  # refused while the held slots were still being released
            if answer:
                break
            await trio.sleep(0.2)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:40]
    status, _, _ = await http_get(o.http, "/healthz")
    assert status == 200


async def test_http_requests_beyond_the_rate_get_503(tmp_path: Path,
                                                     nursery: trio.Nursery) -> None:
    o = await start(tmp_path, nursery)
    stream = await trio.open_tcp_stream(*o.http)
    count = HTTP_REQUEST_BURST + 50  # pipelined on one keep-alive connection, at once
    await stream.send_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * count)
    data = b""
    with trio.fail_after(WAIT):
        while data.count(b"HTTP/1.1 ") < count:
            data += await stream.receive_some(1 << 16)
    await stream.aclose()
    statuses = [int(line.split()[1]) for line in data.split(b"\r\n")
                if line.startswith(b"HTTP/1.1 ")]
    assert set(statuses) == {200, 503} and statuses[0] == 200
    assert HTTP_REQUEST_BURST <= statuses.count(200) < count


async def _read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some(1 << 16):
            data += chunk
    except trio.BrokenResourceError:
        pass
    await stream.aclose()
    return data


async def test_dashboard_updates_live_in_chromium(tmp_path: Path,
                                                  nursery: trio.Nursery) -> None:
    o = await start(tmp_path, nursery)
    url = "http://{}:{}/".format(*o.http)
    async with o.terminal() as t, Browser(tmp_path / "chromium-profile") as browser:
        assert (await t.sign_on()).code == "00"
        await browser.open(url)
        await browser.wait_for("document.getElementById('answered').textContent === '1'")
        await browser.evaluate("window.loadedOnce = 'still here'")
        updates = int(await browser.evaluate("document.body.dataset.updates"))
        for amount in (100, 200, 300):
            assert (await t.sale(o.cards["good"], amount)).code == "00"
        assert (await t.sale(o.cards["low"], 999_999)).code == "51"
        await browser.wait_for("document.getElementById('answered').textContent === '5'")
        # the same page, updated by its script: no reload
        assert await browser.evaluate("window.loadedOnce") == "still here"
        assert int(await browser.evaluate("document.body.dataset.updates")) > updates
        codes = await browser.wait_for(
            "Object.fromEntries([...document.querySelectorAll('#codes tbody tr')]"
            ".map(r => [r.cells[0].textContent, r.cells[1].textContent]))")
        assert codes == {"00": "4", "51": "1"}
        await browser.wait_for(  # 3 of 4 sales
            "document.getElementById('approval').textContent === '75.0 %'")
        await browser.wait_for("document.querySelectorAll('#txns tbody tr').length === 4")
        tids = await browser.evaluate(
            "[...document.querySelectorAll('#terminals tbody tr')].map(r => r.dataset.key)")
        assert tids == [TID]
        assert await browser.evaluate("document.getElementById('hsm-state').textContent") \
            == "HSM up"
        assert await browser.evaluate("document.getElementById('health').textContent") \
            == "healthy"
        html = await browser.evaluate("document.documentElement.outerHTML")
        assert_no_pan(html)
        assert "622202*********0128" in html
        # offline: every resource came from the host itself
        resources: list[Any] = await browser.evaluate(
            "performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(r.startswith(url) for r in resources), resources
        shot = tmp_path / "dashboard.png"
        await browser.screenshot(shot)
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000


@pytest.mark.parametrize("text,expected", [
    ("8080", ("127.0.0.1", 8080)), (":9100", ("127.0.0.1", 9100)),
    ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:81", ("::1", 81))])
def test_http_settings_default_to_loopback(text: str, expected: tuple[str, int]) -> None:
    settings = HttpSettings.parse(text)
    assert (settings.host, settings.port) == expected


def test_serve_http_from_the_command_line(tmp_path: Path) -> None:
    """`poshost serve --http 127.0.0.1:0` as a process (the demo database): it says where
    the dashboard is, /metrics answers, and SIGTERM stops both sides."""
    exe = Path(sys.executable).parent / "poshost"
    proc = subprocess.Popen([str(exe), "serve", "--listen", "127.0.0.1:0", "--db",
                             str(tmp_path / "s.db"), "--http", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = next(line.split()[2] for line in proc.stdout
                   if line.startswith("dashboard on http://"))
        with urllib.request.urlopen(url + "metrics", timeout=WAIT) as response:
            text = response.read().decode()
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {"poshost_requests", "poshost_request_duration_seconds",
                "poshost_terminals_signed_on", "poshost_hsm_up"} <= names
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            assert b"/dashboard.js" in response.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        proc.kill()
