"""Command-line edge of `poshost`: the only place errors become messages and exit codes.

Exit codes: 0 done, 1 failed (refused by the database or the HSM, HSM unreachable, port in
use, database damaged or unreadable, a directory missing or not writable), 2 usage or bad input
(a value that cannot be used; nothing was changed), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import trio

from host import provision, reports
from host.app import HostConfig, TlsListen, run_host
from host.bridge import run_bridge
from host.db import open_store
from host.demo import init_demo
from host.errors import HostError
from host.hsm import TEST_LMK_WARNING_TEXT, open_hsm
from host.observe import DEFAULT_HTTP_PORT, HttpSettings
from host.pgstore import PgUrl, Unreachable, is_pg
from hsm_sim.client import HsmClient
from hsm_sim.errors import HsmError
from shared.errors import SharedError
from shared.naming import terminal_ids
from specs import params
from specs.params import lab_banner
from specs.values import InputError, format_amount
from specs.view import render_contract

T = TypeVar("T")
DEFAULT_DB = Path("poshost.db")
LINE_SPEC = "PORT[,baud=9600][,parity=N][,rtscts=0][,framing=stx|length]"
DEFAULT_LISTEN = "127.0.0.1:5000"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
MAX_WORKERS = 64
"""Most worker processes ``poshost serve --workers`` starts."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOG_FILE_MODE = 0o600


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"poshost: {message}", err=True)
    sys.exit(code)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return trio.run(fn)
    except (HostError, HsmError, SharedError) as exc:
        _fail(str(exc))
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if all(isinstance(e, (HostError, HsmError, SharedError)) for e in leaves):
            _fail("; ".join(str(e) for e in leaves))
        for kind in (KeyboardInterrupt, sqlite3.DatabaseError, OSError, InputError):
            first = next((e for e in leaves if isinstance(e, kind)), None)
            if first is not None:  # for the group's handler (_Cli): one line, its exit code
                raise first from None
        raise


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


class _DbTarget(click.ParamType):
    """``--db``: a SQLite file's path, or a ``postgresql://USER@HOST:PORT/DBNAME`` URL."""

    name = "PATH|URL"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Path | PgUrl:
        if isinstance(value, (Path, PgUrl)):
            return value
        text = str(value)
        return PgUrl(text) if is_pg(text) else Path(text)


def _check_db_path(ctx: click.Context, param: click.Parameter,
                   value: Path | PgUrl) -> Path | PgUrl:
    """The database's directory must exist and, for a new database, be writable."""
    if isinstance(value, PgUrl):
        return value
    if value.is_dir():
        raise click.BadParameter(f"{value} is a directory, not a database file")
    parent = value.parent if str(value.parent) else Path(".")
    if not parent.is_dir():
        raise click.BadParameter(f"directory {parent} does not exist")
    if not value.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise click.BadParameter(f"directory {parent} is not writable")
    return value


db_option = click.option("--db", "db_path", type=_DbTarget(), default=DEFAULT_DB,
                         envvar="POSHOST_DB", show_default=True, callback=_check_db_path,
                         help="SQLite database file, or postgresql://USER@HOST:PORT/DBNAME"
                              " (several hosts on one database; also POSHOST_DB).")


def hsm_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--lmk", default="test", show_default=True,
                     help="LMK of the embedded HSM: 'test' (the published test LMK) or an LMK"
                          " file (a TCP HSM uses its own).")(f)
    return click.option("--hsm", default="embedded", show_default=True,
                        help="'embedded' (in-process), tcp://HOST:PORT or"
                             " tls://HOST:PORT[?ca=FILE][&cert=FILE&key=FILE] of an hsm-sim"
                             " or payShield-style HSM.")(f)


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
    """'1000.00' -> 100000 minor units (one parser for every CLI: specs.values)."""
    from specs.values import parse_amount as parse

    try:
        return parse(text, minimum=0)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None


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


def _exists(db_path: Path | PgUrl) -> bool:
    """A SQLite file exists; a PostgreSQL database counts once ``poshost init`` bound it to
    an LMK."""
    if isinstance(db_path, PgUrl):
        from host.db import get_meta
        conn = open_store(db_path)
        try:
            return get_meta(conn, "lmk_kcv") is not None
        finally:
            conn.close()
    return db_path.exists()


def _read(db_path: Path) -> Any:
    if isinstance(db_path, PgUrl):
        return open_store(db_path)
    if not db_path.exists():
        _fail(f"no database at {db_path}")
    return open_store(db_path)


def _emit_rows(rows: list[dict], as_json: bool, columns: list[str] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _table(rows, columns)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _check_lines(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    """Serial line specs checked before anything starts (the port is opened later)."""
    from shared.serialline import parse_line_spec

    for spec in (value,) if isinstance(value, str) else value or ():
        try:
            parse_line_spec(spec)
        except (HostError, SharedError) as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _old_spelling(old: str, dest: str, kind: Any = None) -> Callable[[Callable[..., Any]],
                                                                      Callable[..., Any]]:
    """A hidden option kept for scripts written against an older spelling of ``dest``."""
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None:
            ctx.meta[f"old:{dest}"] = value
    return click.option(old, type=kind, hidden=True, expose_value=False, callback=callback)


def _given(value: Any, dest: str, option: str) -> Any:
    """``value``, or what its old spelling gave; a usage error when neither was given."""
    if value is None:
        value = click.get_current_context().meta.get(f"old:{dest}")
    if value is None:
        raise click.UsageError(f"Missing option '{option}'.")
    return value


class _Cli(click.Group):
    """The group whose commands never end in a traceback: a damaged database, a missing
    directory or Ctrl-C become one line and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Unreachable as exc:
            _fail(f"cannot reach PostgreSQL: {exc}")
        except sqlite3.DatabaseError as exc:
            _fail(f"the database cannot be used (damaged, truncated or not a poshost"
                  f" database?): {exc}")
        except InputError as exc:
            _fail(str(exc), EXIT_USAGE)
        except PermissionError as exc:
            _fail(f"permission denied: {exc.filename or exc}")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            _fail(f"{exc.strerror}: {exc.filename or exc}")
        except KeyboardInterrupt:
            click.echo("poshost: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `poshost txn list | head`: the reader has all it wanted
            _quiet_stdout()
            sys.exit(0)
        except OSError as exc:
            _fail(f"{exc.strerror or exc}")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@click.group(cls=_Cli, epilog="""\b
Exit codes:
  0 done
  1 failed: refused (already exists, no such record, wrong LMK), HSM refused
    or unreachable, port in use, database damaged, file not writable
  2 usage or bad input (nothing changed)
  130 interrupted (Ctrl-C)""")
@click.version_option(package_name="poshost", prog_name="poshost")
def main() -> None:
    """poshost: ISO 8583 POS acquiring host (cup-pos dialect) for card-acquiring labs."""


# --------------------------------------------------------------------------- serve / init


def _shown(db_path: Path | PgUrl) -> str:
    return db_path.display if isinstance(db_path, PgUrl) else str(db_path)


def _print_demo(rows: list[tuple[str, ...]], listen: str) -> None:
    """``init --demo``'s one-time output: the lab values, marked as such (never logged)."""
    click.echo(lab_banner("the demo data set, shown once"))
    for row in rows:
        click.echo("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, (9, 20, 40, 16),
                                                                   strict=False)))
    click.echo(f"Next: start the host (poshost serve), then point a terminal at {listen}"
               " with TID 12345678, MID 123456789012345 and the TMK above.")


def _demo_summary(db_path: Path) -> str:
    """What ``serve`` says about the demo data it created: no PAN, PIN or key (its output is
    the host's log)."""
    from host.demo import DEMO_CARDS, DEMO_MID, DEMO_TID
    return (f"demo data loaded into {db_path}: merchant {DEMO_MID}, terminal {DEMO_TID},"
            f" {len(DEMO_CARDS)} test cards (their lab values: README, 'A first approved"
            f" sale', or poshost init --demo --db OTHER.db)")


async def _create_db(db_path: Path, build: Callable[[Path], Awaitable[T]]) -> T:
    """Build a new database beside ``db_path`` and move it into place only once ``build``
    has succeeded: a setup command that fails leaves no half-built database. On PostgreSQL
    the schema is made (or upgraded) in place and ``build`` runs there."""
    if isinstance(db_path, PgUrl):
        return await build(db_path)
    tmp = db_path.with_name(f".{db_path.name}.{os.getpid()}.tmp")
    try:
        result = await build(tmp)
        conn = sqlite3.connect(tmp)  # one self-contained file: the WAL folded in
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("PRAGMA journal_mode=DELETE")
        finally:
            conn.close()
        os.replace(tmp, db_path)
        return result
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)


async def _provision_new(db_path: Path, client: HsmClient, demo: bool,
                         separate_002: bool = False) -> list[tuple[str, ...]]:
    """Bind the LMK, make the PVK, optionally the demo set (a live LMK gets an HSM-made TMK,
    since clear key import is a test-LMK extension). ``separate_002``: the HSM keeps TPKs and
    TMKs apart from PVKs (chosen once, when the database is created)."""
    from host.db import set_meta
    from host.hsm import SEPARATION_META, check_lmk, ensure_pvk
    from hsm_sim.lmk import load_lmk
    conn = open_store(db_path)
    try:
        if separate_002:
            set_meta(conn, SEPARATION_META, "1")
        kcv = await check_lmk(conn, client)
        await ensure_pvk(conn, client)
    finally:
        conn.close()
    if not demo:
        return []
    return await init_demo(db_path, client, lab_tmk=kcv == load_lmk("test").check_value)


def tls_serve_options(f: Callable[..., Any]) -> Callable[..., Any]:
    path = click.Path(dir_okay=False, path_type=Path)
    f = click.option("--pcap", type=path, default=None,
                     help="write every terminal connection's bytes (after TLS decryption) to"
                          " this pcap file, for Wireshark; holds card data: lab use only")(f)
    f = click.option("--tls-bind-tid", is_flag=True,
                     help="With --tls-client-ca: a TLS terminal may only send requests for the"
                          " TID its certificate names (subject CN); others close the"
                          " connection with an ALERT line.")(f)
    f = click.option("--tls-client-ca", type=path, default=None,
                     help="CA file: TLS terminals must present a certificate it issued"
                          " (mutual TLS)")(f)
    f = click.option("--tls-key", type=path, default=None,
                     help="private key of --tls-cert (PEM)")(f)
    f = click.option("--tls-cert", type=path, default=None,
                     help="server certificate (PEM, chain included) for --listen-tls")(f)
    return click.option("--listen-tls", type=params.LISTEN, default=None, metavar="HOST:PORT",
                        help="also listen for terminals over TLS 1.2+ (needs --tls-cert and"
                             " --tls-key)")(f)


def _tls_listen(listen_tls: tuple[str, int] | None, cert: Path | None, key: Path | None,
                client_ca: Path | None, bind_tid: bool = False) -> TlsListen | None:
    if bind_tid and client_ca is None:
        raise click.UsageError("--tls-bind-tid needs --tls-client-ca (terminal certificates)")
    if listen_tls is None:
        if cert or key or client_ca:
            raise click.UsageError("--tls-cert/--tls-key/--tls-client-ca need --listen-tls"
                                   " HOST:PORT")
        return None
    if cert is None or key is None:
        raise click.UsageError("--listen-tls needs --tls-cert and --tls-key")
    return TlsListen(listen_tls[0], listen_tls[1], cert, key, client_ca, bind_tid)


@main.command()
@click.option("--listen", type=params.LISTEN, default=DEFAULT_LISTEN, show_default=True,
              help="HOST:PORT to serve terminals on (port 0: any free port).")
@db_option
@hsm_options
@click.option("--demo/--no-demo", default=None,
              help="Load the demo data when the database is new (default: with the test LMK).")
@click.option("--serial", "serial_lines", multiple=True, metavar=LINE_SPEC,
              callback=_check_lines,
              help="Also serve a terminal on this serial line (repeatable).")
@click.option("--workers", type=click.IntRange(0, MAX_WORKERS), default=0, show_default=True,
              help="Processes for the message path in front of the one writer"
                   " (0: one process; about the number of cores for throughput).")
@click.option("--allow-peer", "allow_peers", multiple=True, metavar="CIDR",
              help="Terminal source address or network allowed to connect (repeatable);"
                   " connections from elsewhere are closed at accept. Default: any.")
@click.option("--terminal-peer", "terminal_peers", multiple=True, metavar="TID=CIDR",
              help="Where TID's terminal connects from (repeatable): an ALERT line when its"
                   " sign-on, sign-off, settlement or upload comes from elsewhere.")
@click.option("--enforce-terminal-peers", is_flag=True,
              help="With --terminal-peer: such traffic from elsewhere is not answered (the"
                   " connection is closed) instead of only alerted.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append the host's log to this file (created 0600) instead of stderr.")
@click.option("--http", "http_listen", is_flag=False, flag_value=str(DEFAULT_HTTP_PORT),
              default=None, metavar="[HOST:]PORT",
              help="Serve /metrics (Prometheus), /healthz and a live dashboard at /"
                   f" (off by default; alone: 127.0.0.1:{DEFAULT_HTTP_PORT}).")
@click.option("--h2h-listen", type=params.LISTEN, default=None,
              help="Upstream role: accept host-to-host links (poshost link add) on HOST:PORT.")
@tls_serve_options
def serve(listen: tuple[str, int], db_path: Path, hsm: str, lmk: str, demo: bool | None,
          serial_lines: tuple[str, ...], workers: int, listen_tls: tuple[str, int] | None,
          tls_cert: Path | None, tls_key: Path | None, tls_client_ca: Path | None,
          pcap: Path | None, allow_peers: tuple[str, ...] = (),
          terminal_peers: tuple[str, ...] = (), enforce_terminal_peers: bool = False,
          log_file: Path | None = None, http_listen: str | None = None,
          tls_bind_tid: bool = False, h2h_listen: tuple[str, int] | None = None) -> None:
    """Run the acquiring host until SIGINT/SIGTERM (one host per address)."""
    tls = _tls_listen(listen_tls, tls_cert, tls_key, tls_client_ca, tls_bind_tid)
    if log_file is not None:  # private: it names terminals, peers and masked PANs
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_FILE_MODE))
        os.chmod(log_file, LOG_FILE_MODE)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT,
                        filename=None if log_file is None else str(log_file))
    logging.getLogger("hsm_sim.audit").setLevel(logging.WARNING)
    config = HostConfig(listen[0], listen[1], db_path, hsm, lmk, serial_lines, workers,
                        tls=tls, pcap=pcap, allow_peers=allow_peers,
                        terminal_peers=terminal_peers,
                        enforce_terminal_peers=enforce_terminal_peers, h2h_listen=h2h_listen)
    if http_listen is not None:
        try:
            config.http = HttpSettings.parse(http_listen)
        except HostError as exc:
            _fail(str(exc), EXIT_USAGE)
    new_db = not _exists(db_path)

    async def main() -> None:
        if new_db and (demo or (demo is None and lmk == "test" and hsm == "embedded")):
            async with open_hsm(hsm, lmk, None) as (client, _):
                await _create_db(db_path, lambda tmp: _provision_new(tmp, client, True))
            click.echo(_demo_summary(db_path))
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop)
            bound = await nursery.start(partial(run_host, config, stop=stop))
            if lmk == "test" and hsm == "embedded":
                click.echo(TEST_LMK_WARNING_TEXT, err=True)
            tls_note = ""
            if tls is not None and tls.bound is not None:
                tls_note = f", TLS on {tls.bound[0]}:{tls.bound[1]}"
            click.echo(f"poshost ready on {bound[0]}:{bound[1]}{tls_note} (db {_shown(db_path)},"
                       f" hsm {hsm.partition('?')[0]})", nl=True)
            if config.h2h_bound is not None:
                click.echo("host-to-host links on {}:{}".format(*config.h2h_bound))
            if config.http is not None and config.http.bound is not None:
                click.echo("dashboard on http://{}:{}/ (metrics at /metrics)".format(
                    *config.http.bound))
            sys.stdout.flush()

    _run(main)


@main.command()
@click.option("--serial", "line", required=True, metavar=LINE_SPEC, callback=_check_lines,
              help="The serial line the POS is attached to.")
@click.option("--host", "target", type=params.ADDRESS,
              help="HOST:PORT of the host speaking the TCP framing (2-byte length).")
@_old_spelling("--to", "target", params.ADDRESS)
@click.option("--trace", is_flag=True, help="Print every frame (masked) and link event.")
def bridge(line: str, target: tuple[str, int] | None, trace: bool) -> None:
    """Relay a serial POS to a TCP host (the network access controller's role): keeps the
    TPDU, reconnects with back-off, never loses or duplicates a frame it has ACKed.
    Ctrl-C stops it (exit 130)."""
    host, port = _given(target, "target", "--host")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    echo = partial(click.echo, err=True) if trace else None
    _run(lambda: run_bridge(line, host, port, trace=echo))


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
              help="The HSM enforces key type 002 separation (payShield PCI setting): keep"
                   " TPKs as 70D and TMKs as 80D (a TCP hsm-sim needs --separate-002 too).")
def init(db_path: Path, hsm: str, lmk: str, demo: bool, authorise: bool = False,
         separate_002: bool = False) -> None:
    """Create the database (bound to the HSM's LMK), optionally with demo data.

    All or nothing: if the HSM refuses or cannot be reached, no database is left behind.
    Under a live LMK the demo terminal's TMK is generated by the HSM and its two clear
    components are shown once (clear key import is a test-LMK extension)."""
    if isinstance(db_path, PgUrl) and _exists(db_path):
        from host.db import migrate
        from host.db import open_store as upgrade
        conn = upgrade(db_path)
        try:
            click.echo(f"schema up to date (version {migrate(conn)}): {db_path.display}")
        finally:
            conn.close()
        return
    if isinstance(db_path, Path) and db_path.exists():
        _fail(f"{db_path} already exists (init creates a new database; use --db for another)")

    async def go(client: HsmClient) -> None:
        rows = await _create_db(db_path, lambda tmp: _provision_new(tmp, client, demo,
                                                                    separate_002))
        if rows:
            _print_demo(rows, DEFAULT_LISTEN)
        click.echo(f"database ready: {_shown(db_path)}")
    with_hsm(go, hsm, lmk, authorise)


@main.group("db")
def db_group() -> None:
    """The database itself: copy a lab from SQLite to PostgreSQL (or back)."""


@db_group.command("copy")
@click.option("--from", "source", type=_DbTarget(), required=True, metavar="PATH|URL",
              help="The database to copy (left unchanged).")
@click.option("--to", "target", type=_DbTarget(), required=True, metavar="PATH|URL",
              help="A new database: a SQLite file not there yet, or an empty PostgreSQL one.")
def db_copy(source: Path | PgUrl, target: Path | PgUrl) -> None:
    """Copy every table (terminals, keys under the LMK, cards, transactions, batches) from one
    store to the other; the target is created with the current schema."""
    from host.db import CopyError, copy_store
    if isinstance(source, Path) and not source.exists():
        _fail(f"no database at {source}")
    if isinstance(target, Path) and target.exists():
        _fail(f"{target} already exists (the copy makes a new database)")
    src = open_store(source)
    try:
        dst = open_store(target)
        try:
            counts = copy_store(src, dst)
        except CopyError as exc:
            _fail(str(exc))
        finally:
            dst.close()
    finally:
        src.close()
    total = sum(counts.values())
    click.echo(f"copied {total} rows ({', '.join(f'{t} {n}' for t, n in counts.items() if n)})"
               f" to {_shown(target)}")


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


CVMS = ("pin", "signature", "none")


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
@click.option("--mid", required=True, type=params.MID, help="Merchant id, 15 characters (F42).")
@click.option("--name", required=True, type=params.NAME, help="Merchant name (not empty).")
@db_option
def merchant_add(mid: str, name: str, db_path: Path) -> None:
    """Add a merchant."""
    _run(lambda: provision.add_merchant(db_path, mid, name))
    click.echo(f"merchant {mid} added")


@main.group()
def terminal() -> None:
    """Terminals and their keys."""


_tmk_help = "Clear TMK, 32 hex digits (lab injection, test LMK only)"


@terminal.command("add")
@click.option("--tid", required=True, type=params.TID, help="Terminal id, 8 characters (F41).")
@click.option("--mid", required=True, type=params.MID, help="Its merchant's id (15 characters).")
@click.option("--tmk", default=None, help=f"{_tmk_help}; else the HSM generates it.")
@click.option("--mac", type=click.Choice(provision.MAC_ALGORITHMS), default="x919",
              show_default=True, help="MAC algorithm the terminal uses.")
@db_option
@hsm_options
@authorise_option
def terminal_add(tid: str, mid: str, tmk: str | None, mac: str, db_path: Path, hsm: str,
                 lmk: str, authorise: bool = False) -> None:
    """Add a terminal; without --tmk the HSM generates the TMK and prints its two clear
    components and KCV once."""
    result = with_hsm(lambda c: provision.add_terminal(db_path, c, tid, mid, tmk, mac), hsm, lmk,
                      authorise)
    click.echo(f"terminal {tid} added (merchant {mid}, MAC {mac}), TMK check value"
               f" {result['tmk_kcv']}")
    _print_components(result, "TMK clear components, shown ONCE - inject into the terminal,"
                              " then destroy:")


def _print_components(result: dict[str, object], heading: str) -> None:
    """The clear key components an HSM generated, when it did (the one time they are shown)."""
    components = result.get("components")
    if isinstance(components, list):
        click.echo(heading)
        for i, component in enumerate(components, 1):
            click.echo(f"  component {i}: {component}")


@terminal.command("add-range")
@click.option("--tid-prefix", "prefix",
              help="TID prefix; TIDs are PREFIX000001, ... (as posterm load --tid-prefix).")
@_old_spelling("--prefix", "prefix")
@click.option("--count", type=click.IntRange(min=1), required=True,
              help="How many terminals.")
@click.option("--mid", required=True, type=params.MID, help="Their merchant's id.")
@click.option("--tmk", required=True, help=f"{_tmk_help}, shared by all (load tests).")
@click.option("--mac", type=click.Choice(provision.MAC_ALGORITHMS), default="x919",
              show_default=True, help="MAC algorithm the terminals use.")
@db_option
@hsm_options
@authorise_option
def terminal_add_range(prefix: str | None, count: int, mid: str, tmk: str, mac: str,
                       db_path: Path, hsm: str, lmk: str, authorise: bool = False) -> None:
    """COUNT terminals named as `posterm load --tid-prefix PREFIX` expects, for load tests."""
    prefix = _given(prefix, "prefix", "--tid-prefix")
    try:
        tids = terminal_ids(prefix, count)
    except SharedError as exc:
        _fail(str(exc), EXIT_USAGE)

    async def go(client: HsmClient) -> None:
        added: list[str] = []
        try:
            for tid in tids:
                await provision.add_terminal(db_path, client, tid, mid, tmk, mac)
                added.append(tid)
        except BaseException:
            _remove_terminals(db_path, added)  # all or nothing
            raise

    with_hsm(go, hsm, lmk, authorise)
    click.echo(f"terminals {tids[0]}..{tids[-1]} added (merchant {mid}, MAC {mac})")


def _remove_terminals(db_path: Path, tids: list[str]) -> None:
    """Undo the terminals an interrupted add-range made (they have no history yet)."""
    if not tids:
        return
    conn = open_store(db_path)
    try:
        conn.executemany("DELETE FROM terminals WHERE tid=?", [(tid,) for tid in tids])
    finally:
        conn.close()


@terminal.command("list")
@json_option
@db_option
def terminal_list(as_json: bool, db_path: Path) -> None:
    """Terminals with their keys' check values (6 hex digits) and open batch."""
    rows = reports.list_terminals(_read(db_path))
    for row in rows:
        for key in ("tmk_kcv", "pik_kcv", "mak_kcv"):
            row[key] = row[key][:6] if row[key] else row[key]
    _emit_rows(rows, as_json)


@main.group()
def card() -> None:
    """The issuer simulator's cards."""


@card.command("add")
@click.option("--pan", required=True, type=params.PAN, help="12-19 digits, Luhn-valid.")
@click.option("--expiry", required=True, type=params.EXPIRY, help="YYMM.")
@click.option("--pin", type=params.PIN, default=None,
              help="4-12 digits; kept only as a Visa PVV made by the HSM.")
@click.option("--cvm", type=click.Choice(CVMS), default=None,
              help="Cardholder verification: pin (a sale or inquiry without a PIN block is"
                   " declined 55), signature or none. Default: pin when --pin is given.")
@click.option("--balance", required=True, type=params.BALANCE,
              help="Available balance in major units, e.g. 1000.00.")
@click.option("--limit", default=None, type=params.BALANCE,
              help="Per-transaction limit in major units, e.g. 500.00.")
@click.option("--status", type=click.Choice(["active", "lost", "stolen"]), default="active",
              show_default=True, help="Card status (lost 41, stolen 43).")
@click.option("--chip", is_flag=True,
              help="An EMV chip card (needs an issuer key for its BIN: poshost issuer-key add).")
@click.option("--psn", default="01", show_default=True,
              help="PAN sequence number of a chip card, 2 digits.")
@db_option
@hsm_options
@authorise_option
def card_add(pan: str, expiry: str, pin: str | None, cvm: str | None, balance: int,
             limit: int | None, status: str, chip: bool, psn: str, db_path: Path, hsm: str,
             lmk: str, authorise: bool = False) -> None:
    """An issuer-simulator card. Domestic (CUP, BIN 62) or foreign follows the BIN."""
    cvm = cvm or ("pin" if pin else None)
    if cvm is None:
        raise click.UsageError("give --pin, or --cvm signature|none for a card without a PIN")
    if cvm == "pin" and not pin:
        raise click.UsageError("--cvm pin needs --pin")
    with_hsm(lambda c: provision.add_card(db_path, c, pan, expiry, pin, balance, limit, status,
                                          cvm=cvm, chip_psn=psn if chip else None),
             hsm, lmk, authorise)
    click.echo(f"card {reports.mask_pan(pan)} added (CVM {cvm}"
               + (f"; chip, PSN {psn})" if chip else ")"))


@main.group("issuer-key")
def issuer_key() -> None:
    """Issuer master keys for chip cryptograms (MK-AC, key type 109) per BIN prefix."""


def _bin_prefix(value: str) -> str:
    if not (value.isascii() and value.isdigit() and 6 <= len(value) <= 11):
        raise click.BadParameter(f"must be 6-11 digits, not {value!r}")
    return value


@issuer_key.command("add")
@click.option("--bin", "bin_prefix", required=True, callback=lambda _c, _p, v: _bin_prefix(v),
              help="BIN prefix, 6-11 digits.")
@click.option("--imk-ac", default=None,
              help="Clear IMK-AC, 32 hex (test LMK only); else the HSM generates it.")
@db_option
@hsm_options
@authorise_option
def issuer_key_add(bin_prefix: str, imk_ac: str | None, db_path: Path, hsm: str,
                   lmk: str, authorise: bool = False) -> None:
    """Add the issuer master key (scheme emv-csk, protocol.md section 8) for a BIN."""
    result = with_hsm(lambda c: provision.add_issuer_key(db_path, c, bin_prefix, imk_ac),
                      hsm, lmk, authorise)
    click.echo(f"issuer key for BIN {bin_prefix} added (scheme {result['scheme']},"
               f" KCV {result['kcv']})")
    _print_components(result, "Clear components, shown ONCE (XOR them to personalise lab"
                              " cards):")


@issuer_key.command("list")
@db_option
def issuer_key_list(db_path: Path) -> None:
    """Issuer keys per BIN (check values only)."""
    from host.chip import list_issuer_keys

    _table(list_issuer_keys(_read(db_path)))


@card.command("set")
@click.option("--pan", required=True, type=params.CARD_NUMBER, help="The card's PAN.")
@click.option("--status", type=click.Choice(["active", "lost", "stolen", "blocked"]),
              help="New status.")
@click.option("--reset-pin-tries", is_flag=True, help="Clear the wrong-PIN counter (ends 75).")
@db_option
@hsm_options
def card_set(pan: str, status: str | None, reset_pin_tries: bool, db_path: Path,
             hsm: str = "embedded", lmk: str = "test") -> None:
    """Change a card's status or reset its wrong-PIN counter (the card is found by the HSM's
    keyed hash of the PAN: no clear PAN is stored)."""
    if status is None and not reset_pin_tries:
        raise click.UsageError("give --status and/or --reset-pin-tries")
    pan_hash = with_hsm(lambda c: provision.card_hash(db_path, c, pan), hsm, lmk)
    try:
        provision.set_card_status(db_path, pan, status, reset_pin_tries, pan_hash=pan_hash)
    except HostError as exc:
        _fail(str(exc))
    click.echo("card updated")


@card.command("show")
@click.option("--pan", default=None, type=params.CARD_NUMBER, help="The card's PAN.")
@click.option("--id", "card_id", default=None, help="The card's id (as `card list` shows it).")
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
@json_option
@db_option
def card_list(as_json: bool, db_path: Path) -> None:
    """Cards, PANs masked; balance and limit in major units, as entered."""
    rows = reports.list_cards(_read(db_path))
    for row in rows:
        for key in ("balance", "limit"):
            row[key] = None if row[key] is None else format_amount(row[key])
    _emit_rows(rows, as_json)


@main.group()
def txn() -> None:
    """Transactions."""


@txn.command("list")
@click.option("--tid", default=None, type=params.TID, help="Only this terminal's.")
@json_option
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 10**9),
              help="At most this many, newest first.")
@db_option
def txn_list(tid: str | None, as_json: bool, limit: int, db_path: Path) -> None:
    """Transactions, newest first: masked PAN, amount (major units), code, RRN, status."""
    rows = reports.list_txns(_read(db_path), tid, limit)
    for row in rows:
        row["amount"] = format_amount(row["amount"])
    _emit_rows(rows, as_json)


# --------------------------------------------------------------------------- end of day


@main.group()
def batch() -> None:
    """Terminal batches and their settlement."""


@batch.command("list")
@click.option("--tid", default=None, type=params.TID, help="Only this terminal's.")
@json_option
@db_option
def batch_list(tid: str | None, as_json: bool, db_path: Path) -> None:
    """Batches with their state, settlement result and counts."""
    _emit_rows(reports.list_batches(_read(db_path), tid), as_json)


@batch.command("show")
@click.argument("tid", type=params.TID)
@click.argument("batch_no", type=click.IntRange(0, 999999))
@json_option
@db_option
def batch_show(tid: str, batch_no: int, as_json: bool, db_path: Path) -> None:
    """One batch: totals on both sides and its exceptions."""
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
@click.option("--open", "open_only", is_flag=True, help="Only those not yet resolved.")
@json_option
@db_option
def exceptions_list(open_only: bool, as_json: bool, db_path: Path) -> None:
    """Differences found by batch upload."""
    rows = reports.list_exceptions(_read(db_path), open_only=open_only)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _exceptions_table(rows)


@exceptions.command("resolve")
@click.argument("exception_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--comment", required=True, type=params.COMMENT,
              help="What was found (not empty).")
@db_option
def exceptions_resolve(exception_id: int, comment: str, db_path: Path) -> None:
    """Mark an exception resolved; resolving again adds to its history, never replaces it."""
    try:
        again = reports.resolve_exception(_read(db_path), exception_id, comment)
    except HostError as exc:
        _fail(str(exc))
    click.echo(f"exception {exception_id} already resolved: comment added to its history"
               if again else f"exception {exception_id} resolved")


@main.group()
def settlement() -> None:
    """The acquirer's daily reconciliation file."""


from host import feecli as _feecli  # noqa: E402,F401  fee, merchant set, settlement merchants|margins


@settlement.command("report")
@click.option("--date", "day", required=True, type=params.DAY,
              help="Settlement date YYYY-MM-DD.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True, help="Output format.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              default=None,
              help="Write to this file instead of stdout (- : stdout).")
@click.option("--link", default=None,
              help="Upstream role: the daily file of this acquirer link (JSON), for"
                   " `recon import` at the acquirer.")
@db_option
def settlement_report(day: str, fmt: str, out: Path | None, db_path: Path,
                      link: str | None = None) -> None:
    """The day's reconciliation file: one line per transaction (with its merchant fee and
    channel cost), totals per merchant, per terminal and overall, then per merchant (net to
    pay, fees to bill), per fee standard and per channel. With --link (upstream role): the
    daily file of that acquirer link."""
    from host.feereport import fee_report_csv, fee_settlement_report

    if link is not None:
        from host.recon import link_daily_file

        try:
            data = link_daily_file(_read(db_path), link, day)
        except HostError as exc:
            _fail(str(exc))
        _write_out(json.dumps(data, indent=2) + "\n", out, len(data["lines"]))
        return
    report = fee_settlement_report(_read(db_path), day)
    text = json.dumps(report, indent=2) + "\n" if fmt == "json" else fee_report_csv(report)
    _write_out(text, out, len(report["lines"]))


def _write_out(text: str, out: Path | None, lines: int) -> None:
    """``text`` to stdout (no --out, or -) or to the file, saying how many lines it holds."""
    if out is None or str(out) == "-":
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"{lines} line(s) written to {out}")


def _add_routing_commands() -> None:
    """`poshost route ...` and `poshost link ...` (host/routecli.py)."""
    from host.routecli import link, recon, route

    main.add_command(route)
    main.add_command(link)
    main.add_command(recon)


_add_routing_commands()
