"""posterm's command line with click's CliRunner: exit codes, messages, receipts, --json,
--trace masking; the online commands run against the real host (in a worker thread, since
each CLI invocation runs its own trio loop)."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner, Result

from terminal.cli import main
from terminal.state import Config, Store

TMK = "0123456789ABCDEFFEDCBA9876543210"
TRACK2 = "6222021234567890128=30121010000000000"


def run(state: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--state", str(state), *args], catch_exceptions=False)


async def arun(state: Path, *args: str) -> Result:
    return await trio.to_thread.run_sync(run, state, *args)


def init_args(port: int, tid: str = "12345678", tmk: str = TMK) -> list[str]:
    return ["init", "--tid", tid, "--mid", "123456789012345", "--tmk", tmk,
            "--host", f"127.0.0.1:{port}", "--timeout", "5", "--backoff", "0.01"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- offline


def test_help_documents_exit_codes() -> None:
    out = CliRunner().invoke(main, ["--help"]).output
    for text in ("0 approved", "1 declined", "2 usage", "3 communication", "4 response"):
        assert text in out


@pytest.mark.parametrize("tmk, message", [
    ("0123", "malformed TMK"), ("ZZ" * 16, "malformed TMK"), (TMK + "00", "malformed TMK")])
def test_init_rejects_bad_tmk(tmp_path: Path, tmk: str, message: str) -> None:
    r = run(tmp_path / "t.db", *init_args(1, tmk=tmk))
    assert r.exit_code == 2 and message in r.output


def test_init_bad_host_and_ids(tmp_path: Path) -> None:
    r = run(tmp_path / "t.db", "init", "--tid", "12345678", "--mid", "1", "--tmk", TMK,
            "--host", "nohost")
    assert r.exit_code == 2 and "HOST:PORT" in r.output
    r = run(tmp_path / "t.db", *init_args(1, tid="123456789"))
    assert r.exit_code == 2 and "TID" in r.output


def test_init_with_components_prints_only_kcv(tmp_path: Path) -> None:
    a = "11" * 16
    b = bytes(x ^ y for x, y in zip(bytes.fromhex(TMK), bytes.fromhex(a), strict=True)).hex()
    r = run(tmp_path / "t.db", "init", "--tid", "12345678", "--mid", "123456789012345",
            "--tmk-component", a, "--tmk-component", b, "--host", "127.0.0.1:1", "--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data["kcv_tmk"] == "08D7B4" and TMK not in r.output and a not in r.output
    mode = stat.S_IMODE(os.stat(tmp_path / "t.db").st_mode)
    assert mode == 0o600


@pytest.mark.parametrize("args, message", [
    (["sale", "12.345", "--track2", TRACK2, "--no-pin"], "not an amount"),
    (["sale", "0", "--track2", TRACK2, "--no-pin"], "amount must be at least 0.01"),
    (["sale", "1.00", "--track2", "6222021234567890128=3013", "--no-pin"], "expiry"),
    (["sale", "1.00", "--track2", "62220212345X=3012", "--no-pin"], "malformed track 2"),
    (["sale", "1.00", "--no-pin"], "card data missing"),
    (["sale", "1.00", "--track2", TRACK2, "--pan", "6222021234567890128"], "not both"),
    (["sale", "1.00", "--track2", TRACK2, "--pin", "12"], "PIN must be"),
    (["void", "--trace", "abc"], "malformed trace"),
    (["refund", "1.00"], "give --stan"),
    (["load", "--host", "127.0.0.1:1", "--tmk", TMK, "--track2", TRACK2, "--mix", "x=1"],
     "bad --mix"),
])
def test_bad_input_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    r = run(tmp_path / "t.db", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_not_initialised_exits_5(tmp_path: Path) -> None:
    r = run(tmp_path / "t.db", "sale", "1.00", "--track2", TRACK2, "--no-pin")
    assert r.exit_code == 5 and "not initialised" in r.output
    r = run(tmp_path / "t.db", "--json", "status")
    assert r.exit_code == 5 and json.loads(r.output)["exit_code"] == 5


def test_not_signed_on_exits_5(tmp_path: Path) -> None:
    assert run(tmp_path / "t.db", *init_args(free_port())).exit_code == 0
    r = run(tmp_path / "t.db", "sale", "1.00", "--track2", TRACK2, "--no-pin")
    assert r.exit_code == 5 and "posterm signon" in r.output


def test_host_unreachable_exits_3(tmp_path: Path) -> None:
    assert run(tmp_path / "t.db", *init_args(free_port())).exit_code == 0
    r = run(tmp_path / "t.db", "signon")
    assert r.exit_code == 3 and "cannot connect" in r.output


def test_concurrent_stan_allocation_is_unique(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    Store(path).initialise(Config("12345678", "123456789012345", "127.0.0.1", 1),
                           bytes.fromhex(TMK))
    seen: list[str] = []

    def worker() -> None:
        store = Store(path)
        for _ in range(100):
            seen.append(store.allocate_stan()[0])
        store.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 400 and max(seen) == "000400"


# --------------------------------------------------------------------------- against the host


async def test_cli_session_against_host(running_host: Any, tmp_path: Path) -> None:
    state = tmp_path / "t.db"
    host = running_host
    card = host.cards["good"]
    r = await arun(state, *init_args(host.port))
    assert r.exit_code == 0 and "08D7B4" in r.output

    r = await arun(state, "signon")
    assert r.exit_code == 0 and "SIGNON  APPROVED" in r.output

    r = await arun(state, "--trace", "sale", "123.45", "--track2", card.track2, "--pin", "1234")
    assert r.exit_code == 0, r.output
    assert "SALE  APPROVED" in r.output and "622202*********0128" in r.output
    assert ">> send" in r.output and "<< recv" in r.output and "MTI  0210" in r.output
    assert card.pan not in r.output and card.track2 not in r.output
    assert "[PIN block, 8 bytes]" in r.output and "[MAC, 8 bytes]" in r.output

    r = await arun(state, "sale", "1.00", "--track2", card.track2, "--pin", "9999", "--json")
    assert r.exit_code == 1
    data = json.loads(r.output)
    assert data["status"] == "declined" and data["response_code"] == "55"
    assert data["meaning"] == "incorrect PIN"

    r = await arun(state, "balance", "--pan", card.pan, "--expiry", card.expiry, "--pin", "1234",
                   "--json")
    assert r.exit_code == 0 and json.loads(r.output)["balance_minor"] > 0

    r = await arun(state, "void", "--trace", "2", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["orig_stan"] == "000002"
    r = await arun(state, "void", "--trace", "2")
    assert r.exit_code == 5 and "voided" in r.output

    r = await arun(state, "sale", "50.00", "--track2", card.track2, "--pin", "1234", "--json")
    stan = json.loads(r.output)["stan"]
    r = await arun(state, "refund", "20.00", "--trace", stan, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["status"] == "approved"

    r = await arun(state, "journal", "--json")
    kinds = [row["kind"] for row in json.loads(r.output)["journal"]]
    assert kinds == ["sale", "sale", "balance", "void", "sale", "refund"]
    assert card.pan not in r.output

    r = await arun(state, "reversal")
    assert r.exit_code == 0 and "nothing pending" in r.output

    r = await arun(state, "status", "--json")
    data = json.loads(r.output)
    assert data["signed_on"] and data["state_mode"] == "0o600"
    assert data["batch_sales"] == 1 and data["batch_refunds"] == 1

    r = await arun(state, "settle")
    assert r.exit_code == 0 and "SETTLE  BALANCED" in r.output

    r = await arun(state, "echo")
    assert r.exit_code == 0
    r = await arun(state, "signoff")
    assert r.exit_code == 0
    r = await arun(state, "sale", "1.00", "--track2", card.track2, "--no-pin")
    assert r.exit_code == 5


async def test_refund_of_older_sale_by_rrn(running_host: Any, tmp_path: Path) -> None:
    state = tmp_path / "t.db"
    card = running_host.cards["good"]
    await arun(state, *init_args(running_host.port))
    await arun(state, "signon")
    r = await arun(state, "sale", "10.00", "--track2", card.track2, "--pin", "1234", "--json")
    sale = json.loads(r.output)
    r = await arun(state, "refund", "4.00", "--rrn", sale["rrn"], "--orig-date",
                   sale["host_date"], "--orig-batch", sale["batch"], "--orig-trace", sale["stan"],
                   "--track2", card.track2, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["status"] == "approved"


def test_init_refuses_to_drop_pending_work(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    assert run(path, *init_args(free_port())).exit_code == 0
    store = Store(path)
    store.begin("sale", lambda stan, batch: {"t": "0200", "11": stan},
                reversal=lambda r: {"t": "0400", "11": r["11"]})
    store.close()
    r = run(path, *init_args(free_port()))
    assert r.exit_code == 5 and "pending reversal" in r.output


async def test_group_trace_with_void(running_host: Any, tmp_path: Path) -> None:
    state = tmp_path / "t.db"
    card = running_host.cards["good"]
    await arun(state, *init_args(running_host.port))
    await arun(state, "signon")
    await arun(state, "sale", "3.00", "--track2", card.track2, "--pin", "1234")
    r = await arun(state, "--trace", "void", "--trace", "2")
    assert r.exit_code == 0 and "MTI  0200" in r.output and "F61" in r.output
    assert card.pan not in r.output
