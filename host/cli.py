"""Command-line edge of `poshost`: the only place errors become messages and exit codes."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from host import provision, reports
from host.app import HostConfig, run_host
from host.bridge import run_bridge
from host.db import open_store
from host.demo import init_demo
from host.errors import HostError
from host.hsm import TEST_LMK_WARNING_TEXT, open_hsm
from host.observe import DEFAULT_HTTP_PORT, HttpSettings
from hsm_sim.client import HsmClient
from hsm_sim.errors import HsmError
from specs.view import render_contract
from terminal.errors import TerminalError
from terminal.load import terminal_ids

T = TypeVar("T")
DEFAULT_DB = Path("poshost.db")
LINE_SPEC = "PORT[,baud=9600][,parity=N][,rtscts=0][,framing=stx|length]"
DEFAULT_LISTEN = "127.0.0.1:5000"
MAX_WORKERS = 64
"""Most worker processes ``poshost serve --workers`` starts."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _fail(message: str) -> None:
    click.echo(f"poshost: {message}", err=True)
    sys.exit(1)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return trio.run(fn)
    except (HostError, HsmError) as exc:
        _fail(str(exc))
    except BaseExceptionGroup as group:
        match, rest = group.split((HostError, HsmError))
        if match is None or rest is not None:
            raise
        _fail("; ".join(str(e) for e in _leaves(match)))
    raise AssertionError("unreachable")


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


db_option = click.option("--db", "db_path", type=click.Path(path_type=Path), default=DEFAULT_DB,
                         show_default=True, help="SQLite database")


def hsm_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--lmk", default="test", show_default=True,
                     help="'test' (the published test LMK) or an LMK file")(f)
    return click.option("--hsm", default="embedded", show_default=True,
                        help="'embedded' or tcp://HOST:PORT")(f)


def with_hsm(fn: Callable[..., Awaitable[T]], hsm: str, lmk: str) -> T:
    async def main() -> T:
        async with open_hsm(hsm, lmk) as (client, info):
            if info.test_lmk:
                click.echo(TEST_LMK_WARNING_TEXT, err=True)
            return await fn(client)
    return _run(main)


def parse_amount(text: str) -> int:
    """'1000.00' -> 100000 minor units."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise click.BadParameter(f"not an amount: {text!r}") from None
    minor = value * 100
    if minor != minor.to_integral_value():
        raise click.BadParameter("at most 2 decimals")
    return int(minor)


def _table(rows: list[dict], columns: list[str] | None = None) -> None:
    if not rows:
        click.echo("(none)")
        return
    columns = columns or list(rows[0])
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        cells = ("" if r.get(c) is None else str(r.get(c)) for c in columns)
        click.echo("  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)))


def _read(db_path: Path) -> Any:
    if not db_path.exists():
        _fail(f"no database at {db_path}")
    return open_store(db_path)


@click.group()
def main() -> None:
    """poshost: ISO 8583 POS acquiring host (cup-pos dialect) for card-acquiring labs."""


# --------------------------------------------------------------------------- serve / init


def _print_demo(rows: list[tuple[str, ...]], listen: str) -> None:
    click.echo("Demo data:")
    for row in rows:
        click.echo("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, (9, 20, 40, 16),
                                                                   strict=False)))
    click.echo(f"Next: start the host (poshost serve), then point a terminal at {listen}"
               " with TID 12345678, MID 123456789012345 and the lab TMK above.")


@main.command()
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT")
@db_option
@hsm_options
@click.option("--demo/--no-demo", default=None,
              help="load the demo data when the database is new (default: with the test LMK)")
@click.option("--serial", "serial_lines", multiple=True, metavar=LINE_SPEC,
              help="also serve a terminal on this serial line (repeatable)")
@click.option("--workers", type=click.IntRange(0, MAX_WORKERS), default=0, show_default=True,
              help="processes for the message path in front of the one writer"
                   " (0: one process; about the number of cores for throughput)")
@click.option("--http", "http_listen", is_flag=False, flag_value=str(DEFAULT_HTTP_PORT),
              default=None, metavar="[HOST:]PORT",
              help="serve /metrics (Prometheus), /healthz and a live dashboard at /"
                   f" (off by default; alone: 127.0.0.1:{DEFAULT_HTTP_PORT})")
def serve(listen: str, db_path: Path, hsm: str, lmk: str, demo: bool | None,
          serial_lines: tuple[str, ...], workers: int, http_listen: str | None) -> None:
    """Run the acquiring host until SIGINT/SIGTERM."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        _fail(f"--listen must be HOST:PORT, not {listen!r}")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("hsm_sim.audit").setLevel(logging.WARNING)
    config = HostConfig(host or "127.0.0.1", int(port), db_path, hsm, lmk, serial_lines,
                        workers)
    if http_listen is not None:
        try:
            config.http = HttpSettings.parse(http_listen)
        except HostError as exc:
            _fail(str(exc))
    new_db = not db_path.exists()

    async def main() -> None:
        if new_db and (demo or (demo is None and lmk == "test" and hsm == "embedded")):
            async with open_hsm(hsm, lmk) as (client, _):
                _print_demo(await init_demo(db_path, client), listen)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop)
            bound = await nursery.start(partial(run_host, config, stop=stop))
            if lmk == "test":
                click.echo(TEST_LMK_WARNING_TEXT, err=True)
            click.echo(f"poshost ready on {bound[0]}:{bound[1]} (db {db_path}, hsm {hsm})",
                       nl=True)
            if config.http is not None and config.http.bound is not None:
                click.echo("dashboard on http://{}:{}/ (metrics at /metrics)".format(
                    *config.http.bound))
            sys.stdout.flush()

    _run(main)


@main.command()
@click.option("--serial", "line", required=True, metavar=LINE_SPEC,
              help="the serial line the POS is attached to")
@click.option("--to", "target", required=True, metavar="HOST:PORT",
              help="the host speaking the TCP framing (2-byte length)")
@click.option("--trace", is_flag=True, help="print every frame (masked) and link event")
def bridge(line: str, target: str, trace: bool) -> None:
    """Relay a serial POS to a TCP host (the network access controller's role): keeps the
    TPDU, reconnects with back-off, never loses or duplicates a frame it has ACKed."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        _fail(f"--to must be HOST:PORT, not {target!r}")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    echo = partial(click.echo, err=True) if trace else None
    _run(lambda: run_bridge(line, host, int(port), trace=echo))


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            logging.getLogger("poshost").info("signal received: draining")
            stop.set()
            return


@main.command()
@db_option
@hsm_options
@click.option("--demo", is_flag=True, help="add the demo merchant, terminal and cards")
def init(db_path: Path, hsm: str, lmk: str, demo: bool) -> None:
    """Create the database (bound to the HSM's LMK), optionally with demo data."""
    async def go(client: HsmClient) -> None:
        from host.hsm import check_lmk, ensure_pvk
        conn = open_store(db_path)
        try:
            await check_lmk(conn, client)
            await ensure_pvk(conn, client)
        finally:
            conn.close()
        if demo:
            _print_demo(await init_demo(db_path, client), DEFAULT_LISTEN)
        click.echo(f"database ready: {db_path}")
    with_hsm(go, hsm, lmk)


# --------------------------------------------------------------------------- provisioning


@main.command()
def spec() -> None:
    """Print the wire contract (framing, every field, every message kind, response codes),
    generated from the same data in specs/ that the host and posterm use."""
    click.echo(render_contract(), nl=False)


@main.group()
def merchant() -> None:
    """Merchants."""


@merchant.command("add")
@click.option("--mid", required=True)
@click.option("--name", required=True)
@db_option
def merchant_add(mid: str, name: str, db_path: Path) -> None:
    _run(lambda: provision.add_merchant(db_path, mid, name))
    click.echo(f"merchant {mid} added")


@main.group()
def terminal() -> None:
    """Terminals and their keys."""


@terminal.command("add")
@click.option("--tid", required=True)
@click.option("--mid", required=True)
@click.option("--tmk", default=None, help="clear TMK, 32 hex (lab injection); else generated")
@click.option("--mac", type=click.Choice(provision.MAC_ALGORITHMS), default="x919",
              show_default=True)
@db_option
@hsm_options
def terminal_add(tid: str, mid: str, tmk: str | None, mac: str, db_path: Path, hsm: str,
                 lmk: str) -> None:
    result = with_hsm(lambda c: provision.add_terminal(db_path, c, tid, mid, tmk, mac), hsm, lmk)
    click.echo(f"terminal {tid} added (merchant {mid}, MAC {mac}), TMK check value"
               f" {result['tmk_kcv']}")
    components = result.get("components")
    if isinstance(components, list):
        click.echo("TMK clear components, shown ONCE - inject into the terminal, then destroy:")
        for i, comp in enumerate(components, 1):
            click.echo(f"  component {i}: {comp}")


@terminal.command("add-range")
@click.option("--prefix", required=True, help="TID prefix; TIDs are PREFIX000001, ...")
@click.option("--count", type=click.IntRange(min=1), required=True)
@click.option("--mid", required=True)
@click.option("--tmk", required=True, help="clear TMK, 32 hex, shared by all (lab load tests)")
@click.option("--mac", type=click.Choice(provision.MAC_ALGORITHMS), default="x919",
              show_default=True)
@db_option
@hsm_options
def terminal_add_range(prefix: str, count: int, mid: str, tmk: str, mac: str, db_path: Path,
                       hsm: str, lmk: str) -> None:
    """COUNT terminals named as `posterm load --tid-prefix PREFIX` expects, for load tests."""
    try:
        tids = terminal_ids(prefix, count)
    except TerminalError as exc:
        _fail(str(exc))

    async def go(client: HsmClient) -> None:
        for tid in tids:
            await provision.add_terminal(db_path, client, tid, mid, tmk, mac)

    with_hsm(go, hsm, lmk)
    click.echo(f"terminals {tids[0]}..{tids[-1]} added (merchant {mid}, MAC {mac})")


@terminal.command("list")
@db_option
def terminal_list(db_path: Path) -> None:
    _table(reports.list_terminals(_read(db_path)))


@main.group()
def card() -> None:
    """The issuer simulator's cards."""


@card.command("add")
@click.option("--pan", required=True)
@click.option("--expiry", required=True, help="YYMM")
@click.option("--pin", required=True)
@click.option("--balance", required=True, help="e.g. 1000.00")
@click.option("--limit", default=None, help="per-transaction limit, e.g. 5000.00")
@click.option("--status", type=click.Choice(["active", "lost", "stolen"]), default="active")
@db_option
@hsm_options
def card_add(pan: str, expiry: str, pin: str, balance: str, limit: str | None, status: str,
             db_path: Path, hsm: str, lmk: str) -> None:
    """An issuer-simulator card. Domestic (CUP, BIN 62) or foreign follows the BIN."""
    amount, cap = parse_amount(balance), None if limit is None else parse_amount(limit)
    with_hsm(lambda c: provision.add_card(db_path, c, pan, expiry, pin, amount, cap, status),
             hsm, lmk)
    click.echo(f"card {reports.mask_pan(pan)} added")


@card.command("set")
@click.option("--pan", required=True)
@click.option("--status", type=click.Choice(["active", "lost", "stolen", "blocked"]))
@click.option("--reset-pin-tries", is_flag=True, help="clear the wrong-PIN counter (ends 75)")
@db_option
def card_set(pan: str, status: str | None, reset_pin_tries: bool, db_path: Path) -> None:
    try:
        provision.set_card_status(db_path, pan, status, reset_pin_tries)
    except HostError as exc:
        _fail(str(exc))
    click.echo("card updated")


@card.command("list")
@db_option
def card_list(db_path: Path) -> None:
    _table(reports.list_cards(_read(db_path)))


@main.group()
def txn() -> None:
    """Transactions."""


@txn.command("list")
@click.option("--tid", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", default=200, show_default=True)
@db_option
def txn_list(tid: str | None, as_json: bool, limit: int, db_path: Path) -> None:
    rows = reports.list_txns(_read(db_path), tid, limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _table(rows)


# --------------------------------------------------------------------------- end of day


@main.group()
def batch() -> None:
    """Terminal batches and their settlement."""


@batch.command("list")
@click.option("--tid", default=None)
@db_option
def batch_list(tid: str | None, db_path: Path) -> None:
    _table(reports.list_batches(_read(db_path), tid))


@batch.command("show")
@click.argument("tid")
@click.argument("batch_no", type=int)
@click.option("--json", "as_json", is_flag=True)
@db_option
def batch_show(tid: str, batch_no: int, as_json: bool, db_path: Path) -> None:
    try:
        info = reports.show_batch(_read(db_path), tid, batch_no)
    except HostError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key in ("tid", "batch", "state", "result", "opened_at", "closed_at", "note"):
        click.echo(f"{key:<16}{info.get(key) if info.get(key) is not None else ''}")
    for key in ("host_totals", "terminal_totals"):
        click.echo(f"{key:<16}{_totals_text(info[key])}")
    click.echo(f"exceptions ({len(info['exceptions'])}):")
    _exceptions_table(info["exceptions"])


def _totals_text(t: dict | None) -> str:
    if not t:
        return "-"
    parts = []
    for side in ("domestic", "foreign"):
        s = t[side]
        parts.append(f"{side}: debit {s['debit_amount'] / 100:.2f} x{s['debit_count']},"
                     f" credit {s['credit_amount'] / 100:.2f} x{s['credit_count']}")
    return "; ".join(parts)


def _exceptions_table(rows: list[dict]) -> None:
    flat = []
    for r in rows:
        h, t = r["host_data"] or {}, r["terminal_data"] or {}
        flat.append({"id": r["id"], "tid": r["tid"], "batch": r["batch"], "kind": r["kind"],
                     "trace": r["trace"], "host": _side(h), "terminal": _side(t),
                     "state": r["state"], "comment": r["comment"]})
    _table(flat, ["id", "tid", "batch", "kind", "trace", "host", "terminal", "state", "comment"])


def _side(d: dict) -> str:
    if not d:
        return "-"
    if "amount" in d:
        return f"{d.get('pan_masked', '')} {d['amount'] / 100:.2f} {d.get('kind', '')}".strip()
    return json.dumps(d)


@main.group()
def exceptions() -> None:
    """Reconciliation exceptions (differences found by batch upload)."""


@exceptions.command("list")
@click.option("--open", "open_only", is_flag=True, help="only those not yet resolved")
@click.option("--json", "as_json", is_flag=True)
@db_option
def exceptions_list(open_only: bool, as_json: bool, db_path: Path) -> None:
    rows = reports.list_exceptions(_read(db_path), open_only=open_only)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _exceptions_table(rows)


@exceptions.command("resolve")
@click.argument("exception_id", type=int)
@click.option("--comment", required=True)
@db_option
def exceptions_resolve(exception_id: int, comment: str, db_path: Path) -> None:
    try:
        reports.resolve_exception(_read(db_path), exception_id, comment)
    except HostError as exc:
        _fail(str(exc))
    click.echo(f"exception {exception_id} resolved")


@main.group()
def settlement() -> None:
    """The acquirer's daily reconciliation file."""


@settlement.command("report")
@click.option("--date", "day", required=True, help="YYYY-MM-DD")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None)
@db_option
def settlement_report(day: str, fmt: str, out: Path | None, db_path: Path) -> None:
    report = reports.settlement_report(_read(db_path), day)
    text = json.dumps(report, indent=2) + "\n" if fmt == "json" else reports.report_csv(report)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"{len(report['lines'])} line(s) written to {out}")
