"""Command-line edge of `poshost`: the only place errors become messages and exit codes."""

from __future__ import annotations

import json
import logging
import os
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
from host.app import HostConfig, TlsListen, run_host
from host.bridge import run_bridge
from host.db import open_store
from host.demo import init_demo
from host.errors import HostError
from host.hsm import TEST_LMK_WARNING_TEXT, open_hsm
from hsm_sim.client import HsmClient
from hsm_sim.errors import HsmError
from shared.errors import SharedError
from shared.naming import terminal_ids
from specs.view import render_contract

T = TypeVar("T")
DEFAULT_DB = Path("poshost.db")
LINE_SPEC = "PORT[,baud=9600][,parity=N][,rtscts=0][,framing=stx|length]"
DEFAULT_LISTEN = "127.0.0.1:5000"
MAX_WORKERS = 64
"""Most worker processes ``poshost serve --workers`` starts."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOG_FILE_MODE = 0o600


def _fail(message: str) -> None:
    click.echo(f"poshost: {message}", err=True)
    sys.exit(1)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return trio.run(fn)
    except (HostError, HsmError, SharedError) as exc:
        _fail(str(exc))
    except BaseExceptionGroup as group:
        match, rest = group.split((HostError, HsmError, SharedError))
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
                        help="'embedded', tcp://HOST:PORT or"
                             " tls://HOST:PORT[?ca=FILE][&cert=FILE&key=FILE]")(f)


authorise_option = click.option(
    "--authorise", is_flag=True,
    help="embedded HSM on a live LMK: enter the Authorised state for this command (logged);"
         " needed for clear PINs/keys (card add, terminal add --tmk); automatic on the test LMK")


def with_hsm(fn: Callable[..., Awaitable[T]], hsm: str, lmk: str,
             authorise: bool = False) -> T:
    async def main() -> T:
        async with open_hsm(hsm, lmk, True if authorise else None) as (client, info):
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


def tls_serve_options(f: Callable[..., Any]) -> Callable[..., Any]:
    path = click.Path(dir_okay=False, path_type=Path)
    f = click.option("--pcap", type=path, default=None,
                     help="write every terminal connection's bytes (after TLS decryption) to"
                          " this pcap file, for Wireshark; holds card data: lab use only")(f)
    f = click.option("--tls-client-ca", type=path, default=None,
                     help="CA file: TLS terminals must present a certificate it issued"
                          " (mutual TLS)")(f)
    f = click.option("--tls-key", type=path, default=None,
                     help="private key of --tls-cert (PEM)")(f)
    f = click.option("--tls-cert", type=path, default=None,
                     help="server certificate (PEM, chain included) for --listen-tls")(f)
    return click.option("--listen-tls", default=None, metavar="HOST:PORT",
                        help="also listen for terminals over TLS 1.2+ (needs --tls-cert and"
                             " --tls-key)")(f)


def _tls_listen(listen_tls: str | None, cert: Path | None, key: Path | None,
                client_ca: Path | None) -> TlsListen | None:
    if listen_tls is None:
        if cert or key or client_ca:
            _fail("--tls-cert/--tls-key/--tls-client-ca need --listen-tls HOST:PORT")
        return None
    host, _, port = listen_tls.rpartition(":")
    if not port.isdigit():
        _fail(f"--listen-tls must be HOST:PORT, not {listen_tls!r}")
    if cert is None or key is None:
        _fail("--listen-tls needs --tls-cert and --tls-key")
    assert cert is not None and key is not None
    return TlsListen(host.strip("[]") or "127.0.0.1", int(port), cert, key, client_ca)


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
@click.option("--allow-peer", "allow_peers", multiple=True, metavar="CIDR",
              help="terminal source address or network allowed to connect (repeatable);"
                   " connections from elsewhere are closed at accept. Default: any")
@click.option("--terminal-peer", "terminal_peers", multiple=True, metavar="TID=CIDR",
              help="where TID's terminal connects from (repeatable): an ALERT line when its"
                   " sign-on, sign-off, settlement or upload comes from elsewhere")
@click.option("--enforce-terminal-peers", is_flag=True,
              help="with --terminal-peer: such traffic from elsewhere is not answered (the"
                   " connection is closed) instead of only alerted")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="append the host's log to this file (created 0600) instead of stderr")
@tls_serve_options
def serve(listen: str, db_path: Path, hsm: str, lmk: str, demo: bool | None,
          serial_lines: tuple[str, ...], workers: int, listen_tls: str | None = None,
          tls_cert: Path | None = None, tls_key: Path | None = None,
          tls_client_ca: Path | None = None, pcap: Path | None = None,
          allow_peers: tuple[str, ...] = (),
          terminal_peers: tuple[str, ...] = (), enforce_terminal_peers: bool = False,
          log_file: Path | None = None) -> None:
    """Run the acquiring host until SIGINT/SIGTERM."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        _fail(f"--listen must be HOST:PORT, not {listen!r}")
    tls = _tls_listen(listen_tls, tls_cert, tls_key, tls_client_ca)
    if log_file is not None:  # private: it names terminals, peers and masked PANs
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_FILE_MODE))
        os.chmod(log_file, LOG_FILE_MODE)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT,
                        filename=None if log_file is None else str(log_file))
    logging.getLogger("hsm_sim.audit").setLevel(logging.WARNING)
    config = HostConfig(host or "127.0.0.1", int(port), db_path, hsm, lmk, serial_lines,
                        workers, tls=tls, pcap=pcap, allow_peers=allow_peers,
                        terminal_peers=terminal_peers,
                        enforce_terminal_peers=enforce_terminal_peers)
    new_db = not db_path.exists()

    async def main() -> None:
        if new_db and (demo or (demo is None and lmk == "test" and hsm == "embedded")):
            async with open_hsm(hsm, lmk, None) as (client, _):
                _print_demo(await init_demo(db_path, client), listen)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop)
            bound = await nursery.start(partial(run_host, config, stop=stop))
            if lmk == "test":
                click.echo(TEST_LMK_WARNING_TEXT, err=True)
            tls_note = ""
            if tls is not None and tls.bound is not None:
                tls_note = f", TLS on {tls.bound[0]}:{tls.bound[1]}"
            click.echo(f"poshost ready on {bound[0]}:{bound[1]}{tls_note} (db {db_path},"
                       f" hsm {hsm.partition('?')[0]})", nl=True)
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
@authorise_option
@click.option("--separate-002", is_flag=True,
              help="the HSM enforces key type 002 separation (payShield PCI setting): keep"
                   " TPKs as 70D and TMKs as 80D (a TCP hsm-sim needs --separate-002 too)")
def init(db_path: Path, hsm: str, lmk: str, demo: bool, authorise: bool = False,
         separate_002: bool = False) -> None:
    """Create the database (bound to the HSM's LMK), optionally with demo data."""
    async def go(client: HsmClient) -> None:
        from host.db import get_meta, set_meta
        from host.errors import ConfigError
        from host.hsm import SEPARATION_META, check_lmk, ensure_pvk
        conn = open_store(db_path)
        try:
            if separate_002 and get_meta(conn, SEPARATION_META) != "1":
                if conn.execute("SELECT 1 FROM terminals").fetchone():
                    raise ConfigError("--separate-002 is chosen when the database is created:"
                                      " this one already has terminals under 002")
                set_meta(conn, SEPARATION_META, "1")
            await check_lmk(conn, client)
            await ensure_pvk(conn, client)
        finally:
            conn.close()
        if demo:
            _print_demo(await init_demo(db_path, client), DEFAULT_LISTEN)
        click.echo(f"database ready: {db_path}")
    with_hsm(go, hsm, lmk, authorise)


# --------------------------------------------------------------------------- provisioning


@main.command()
@click.option("--wireshark", is_flag=True,
              help="print a Wireshark Lua dissector for the contract instead"
                   " (wireshark -X lua_script:cup-pos.lua)")
def spec(wireshark: bool) -> None:
    """Print the wire contract (framing, every field, every message kind, response codes),
    generated from the same data in specs/ that the host and posterm use."""
    if wireshark:
        from specs.wireshark import render_dissector
        click.echo(render_dissector(), nl=False)
        return
    click.echo(render_contract(), nl=False)


@main.group()
def tls() -> None:
    """TLS certificates for the lab."""


@tls.command("make-lab-ca")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tid", default="12345678", show_default=True,
              help="TID in the terminal certificate's CN")
@click.option("--host", "hosts", multiple=True,
              help="another name or address for the server certificate (repeatable);"
                   " 127.0.0.1 and localhost are always in it")
@click.option("--force", is_flag=True, help="overwrite a lab CA already in DIRECTORY")
def tls_make_lab_ca(directory: Path, tid: str, hosts: tuple[str, ...], force: bool) -> None:
    """Write a lab CA, a server certificate (host and hsm-sim) and a terminal certificate
    into DIRECTORY, with the openssl command. Lab use only: the CA key is in DIRECTORY."""
    from host.labca import make_lab_ca
    try:
        files = make_lab_ca(directory, tid, hosts=hosts, force=force)
    except HostError as exc:
        _fail(str(exc))
    for path in files:
        click.echo(f"wrote {path}")
    click.echo(f"next: poshost serve --listen-tls 127.0.0.1:5443 --tls-cert {directory}/server.pem"
               f" --tls-key {directory}/server.key [--tls-client-ca {directory}/ca.pem]")


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
@authorise_option
def terminal_add(tid: str, mid: str, tmk: str | None, mac: str, db_path: Path, hsm: str,
                 lmk: str, authorise: bool = False) -> None:
    result = with_hsm(lambda c: provision.add_terminal(db_path, c, tid, mid, tmk, mac), hsm, lmk,
                      authorise)
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
@authorise_option
def terminal_add_range(prefix: str, count: int, mid: str, tmk: str, mac: str, db_path: Path,
                       hsm: str, lmk: str, authorise: bool = False) -> None:
    """COUNT terminals named as `posterm load --tid-prefix PREFIX` expects, for load tests."""
    try:
        tids = terminal_ids(prefix, count)
    except SharedError as exc:
        _fail(str(exc))

    async def go(client: HsmClient) -> None:
        for tid in tids:
            await provision.add_terminal(db_path, client, tid, mid, tmk, mac)

    with_hsm(go, hsm, lmk, authorise)
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
@click.option("--chip", is_flag=True,
              help="an EMV chip card (needs an issuer key for its BIN: poshost issuer-key add)")
@click.option("--psn", default="01", show_default=True, help="PAN sequence number (chip)")
@db_option
@hsm_options
@authorise_option
def card_add(pan: str, expiry: str, pin: str, balance: str, limit: str | None, status: str,
             chip: bool, psn: str, db_path: Path, hsm: str, lmk: str,
             authorise: bool = False) -> None:
    """An issuer-simulator card. Domestic (CUP, BIN 62) or foreign follows the BIN."""
    amount, cap = parse_amount(balance), None if limit is None else parse_amount(limit)
    with_hsm(lambda c: provision.add_card(db_path, c, pan, expiry, pin, amount, cap, status,
                                          chip_psn=psn if chip else None),
             hsm, lmk, authorise)
    click.echo(f"card {reports.mask_pan(pan)} added" + (f" (chip, PSN {psn})" if chip else ""))


@main.group("issuer-key")
def issuer_key() -> None:
    """Issuer master keys for chip cryptograms (MK-AC, key type 109) per BIN prefix."""


@issuer_key.command("add")
@click.option("--bin", "bin_prefix", required=True, help="BIN prefix, 6-11 digits")
@click.option("--imk-ac", default=None,
              help="clear IMK-AC, 32 hex (test LMK only); else the HSM generates it")
@db_option
@hsm_options
def issuer_key_add(bin_prefix: str, imk_ac: str | None, db_path: Path, hsm: str,
                   lmk: str) -> None:
    """Add the issuer master key (scheme emv-csk, protocol.md section 8) for a BIN."""
    result = with_hsm(lambda c: provision.add_issuer_key(db_path, c, bin_prefix, imk_ac),
                      hsm, lmk)
    click.echo(f"issuer key for BIN {bin_prefix} added (scheme {result['scheme']},"
               f" KCV {result['kcv']})")
    components = result.get("components")
    if isinstance(components, list):
        click.echo("Clear components, shown ONCE (XOR them to personalise lab cards):")
        for i, component in enumerate(components, 1):
            click.echo(f"  component {i}: {component}")


@issuer_key.command("list")
@db_option
def issuer_key_list(db_path: Path) -> None:
    from host.chip import list_issuer_keys

    _table(list_issuer_keys(_read(db_path)))


@card.command("set")
@click.option("--pan", required=True)
@click.option("--status", type=click.Choice(["active", "lost", "stolen", "blocked"]))
@click.option("--reset-pin-tries", is_flag=True, help="clear the wrong-PIN counter (ends 75)")
@db_option
@hsm_options
def card_set(pan: str, status: str | None, reset_pin_tries: bool, db_path: Path,
             hsm: str = "embedded", lmk: str = "test") -> None:
    """Change a card's status or reset its PIN tries (the card is found by the HSM's keyed
    hash of the PAN: no clear PAN is stored)."""
    pan_hash = with_hsm(lambda c: provision.card_hash(db_path, c, pan), hsm, lmk)
    try:
        provision.set_card_status(db_path, pan, status, reset_pin_tries, pan_hash=pan_hash)
    except HostError as exc:
        _fail(str(exc))
    click.echo("card updated")


@card.command("show")
@click.option("--pan", default=None, help="the card's PAN")
@click.option("--id", "card_id", default=None, help="the card's id (as `card list` shows it)")
@click.option("--reveal", is_flag=True,
              help="show the clear PAN, decrypted by the HSM (it must be Authorised: automatic"
                   " on the test LMK's embedded HSM, else --authorise / hsm-sim --authorised)")
@db_option
@hsm_options
@authorise_option
def card_show(pan: str | None, card_id: str | None, reveal: bool, db_path: Path, hsm: str,
              lmk: str, authorise: bool = False) -> None:
    """One card: masked PAN, expiry, balance, status; --reveal for the clear PAN."""
    card = with_hsm(lambda c: provision.show_card(db_path, c, pan, card_id, reveal), hsm, lmk,
                    authorise)
    for key, value in card.items():
        click.echo(f"{key:12} {value}")


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
