"""Command-line edge of `posterm`: the only place errors become messages and exit codes.

\b
Exit codes:
  0 approved / done
  1 declined (or settlement refused)
  2 usage or bad input (nothing sent, nothing stored)
  3 communication failure: no connection, no response in time, or a host
    malfunction (96 without a MAC); a reversal or advice stays pending
  4 response rejected (bad MAC, undecodable, not echoing the request);
    reversal pending
  5 terminal not ready (not initialised, not signed on, key check failed,
    unknown original, state file unusable)
  130 interrupted (Ctrl-C; posterm load still settles and reports)
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import click
import trio

from specs import values
from terminal import receipt
from terminal.cards import Card, card_from_options, check_pin, parse_amount, parse_trace
from terminal.core import Original
from terminal.errors import (
    EXIT_COMMUNICATION,
    EXIT_DECLINED,
    BadInput,
    NotReady,
    TerminalError,
)
from terminal.pinpad import MAC_ALGORITHMS, combine_components, kcv_hex, parse_key_hex
from terminal.serial_transport import SerialTransport
from terminal.session import Result, Terminal
from terminal.state import DEFAULT_PATH, Config, Store, open_store
from terminal.transport import (
    TcpTransport,
    Transport,
    format_addresses,
    parse_addresses,
    tls_context,
)

HELP = __doc__.split("\n\n", 1)[1] if __doc__ else ""
EXIT_INTERRUPTED = 130
_MMDD = re.compile(r"(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])", re.ASCII)
MAX_SECONDS = 7 * 86400.0
"""Longest duration, timeout or back-off an option takes (a week)."""
MAX_RATE = 1_000_000.0
MAX_LOAD_TERMINALS = 100_000


@dataclass
class Options:
    state: str = DEFAULT_PATH
    as_json: bool = False
    trace: bool = False


def _opts() -> Options:
    return click.get_current_context().ensure_object(Options)


def _set(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value:
            setattr(ctx.ensure_object(Options), name, value)
    return callback


def _common(trace: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--state, --json (and --trace) also accepted after the subcommand."""
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--json", "as_json", is_flag=True, expose_value=False,
                         callback=_set("as_json"), help="Print JSON instead of a receipt.")(f)
        f = click.option("--state", type=click.Path(dir_okay=False), expose_value=False,
                         callback=_set("state"),
                         help="State file (default ./posterm.db, env POSTERM_STATE).")(f)
        if trace:
            f = click.option("--trace", "trace_frames", is_flag=True, expose_value=False,
                             callback=_set("trace"),
                             help="Print every frame sent and received (masked).")(f)
        return f
    return decorate


class _Cli(click.Group):
    """The group whose commands never end in a traceback: an unusable state file, a missing
    directory or Ctrl-C become one line and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            try:
                return super().invoke(ctx)
            except BaseExceptionGroup as group:  # trio nurseries wrap what their tasks raised
                raise _first_known(group) from None
        except sqlite3.DatabaseError as exc:
            _fail(NotReady(f"the state file {_opts().state} cannot be used (damaged or not a"
                           f" posterm state file?): {exc}"))
        except KeyboardInterrupt:
            click.echo("posterm: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except TerminalError as exc:
            _fail(exc)
        except OSError as exc:
            _fail(BadInput(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")))


def _first_known(group: BaseExceptionGroup) -> BaseException:
    """The leaf the CLI knows how to report (Ctrl-C first), else the group itself."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for kind in (KeyboardInterrupt, TerminalError, sqlite3.DatabaseError, OSError):
        found = next((e for e in leaves if isinstance(e, kind)), None)
        if found is not None:
            return found
    return group


def _check_state(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    parent = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(parent):
        raise click.BadParameter(f"directory {parent} does not exist")
    if os.path.isdir(value):
        raise click.BadParameter(f"{value} is a directory, not a state file")
    return value


def _check_file_option(ctx: click.Context, param: click.Parameter,
                       value: str | None) -> str | None:
    """A file written at the end of a run: its directory is checked before the run."""
    return None if value is None else _check_state(ctx, param, value)


@click.group(cls=_Cli,
             help=f"posterm: POS terminal emulator speaking the cup-pos contract.\n\n{HELP}")
@click.option("--state", type=click.Path(dir_okay=False), envvar="POSTERM_STATE",
              default=DEFAULT_PATH, show_default=True, callback=_check_state,
              help="State file (env POSTERM_STATE; the option wins).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of receipts.")
@click.option("--trace", is_flag=True, help="Print every frame sent and received (masked).")
@click.version_option(package_name="poshost", prog_name="posterm")
@click.pass_context
def main(ctx: click.Context, state: str, as_json: bool, trace: bool) -> None:
    ctx.obj = Options(state, as_json, trace)


# --------------------------------------------------------------------------- output


def _emit(data: dict[str, Any], text: str) -> None:
    if _opts().as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(text)


def _fail(exc: TerminalError, notes: list[str] | None = None) -> NoReturn:
    notes = notes or []
    if _opts().as_json:
        click.echo(json.dumps({"status": "error", "error": str(exc), "exit_code": exc.exit_code,
                               "error_type": type(exc).__name__, "notes": notes}, indent=2))
    else:
        for note in notes:
            click.echo(f"note: {note}", err=True)
        click.echo(f"posterm: {exc}", err=True)
    sys.exit(exc.exit_code)


def _finish(result: Result) -> NoReturn:
    data = result.as_dict()
    _emit(data, receipt.render_result(data))
    codes = {"declined": EXIT_DECLINED, "declined by card": EXIT_DECLINED,
             "queued": EXIT_COMMUNICATION}
    sys.exit(codes.get(result.status, 0))


def _tracer(direction: str, payload: bytes, elapsed: float) -> None:
    click.echo(receipt.render_frame(direction, payload, elapsed), err=True)


def _transport(config: Config) -> Transport:
    """TCP to host:port, or the serial line when the terminal was initialised with --serial."""
    if config.serial:
        trace = (lambda line: click.echo(line, err=True)) if _opts().trace else None
        return SerialTransport(config.serial, trace=trace)
    alternates = tuple(parse_addresses(config.secondaries)) if config.secondaries else ()
    if config.tls:
        context = tls_context(config.tls_ca, config.tls_cert, config.tls_key)
        return TcpTransport(config.host, config.port, ssl_context=context,
                            alternates=alternates)
    return TcpTransport(config.host, config.port, alternates=alternates)


def _run_online(action: Callable[[Terminal], Awaitable[Result]]) -> NoReturn:
    """Open the state, take the line, run ``action`` under trio, report."""
    terminal: Terminal | None = None
    try:
        store = open_store(_opts().state)
        try:
            with store.online_lock():
                config = store.config()
                transport = _transport(config)
                terminal = Terminal(store, transport, tracer=_tracer if _opts().trace else None)
                result = trio.run(_with_transport, terminal, action)
        finally:
            store.close()
    except TerminalError as exc:
        _fail(exc, terminal.notes if terminal else None)
    _finish(result)


async def _with_transport(terminal: Terminal,
                          action: Callable[[Terminal], Awaitable[Result]]) -> Result:
    try:
        return await action(terminal)
    finally:
        await terminal.transport.aclose()


def _offline(action: Callable[[Store], None]) -> None:
    try:
        store = open_store(_opts().state)
        try:
            action(store)
        finally:
            store.close()
    except TerminalError as exc:
        _fail(exc)


def _guard(func: Callable[[], Any]) -> Any:
    """Run input parsing; bad input exits 2 with its message."""
    try:
        return func()
    except TerminalError as exc:
        _fail(exc)


# --------------------------------------------------------------------------- setup


def _tls_options(f: Callable[..., Any]) -> Callable[..., Any]:
    path = click.Path(dir_okay=False, exists=True)
    f = click.option("--key", "tls_key", type=path, help="Private key of --cert (PEM).")(f)
    f = click.option("--cert", "tls_cert", type=path,
                     help="This terminal's certificate (PEM), for a host requiring mutual TLS.")(f)
    f = click.option("--ca", "tls_ca", type=path,
                     help="CA file the host's certificate must chain to (default: the"
                          " system's trusted CAs).")(f)
    return click.option("--tls", is_flag=True, help="Connect to the host over TLS 1.2+.")(f)


def _tls_files(tls: bool, ca: str | None, cert: str | None,
               key: str | None) -> tuple[str, str, str]:
    """Absolute paths of the TLS files (checked by building the context now)."""
    if not tls:
        if ca or cert or key:
            raise BadInput("--ca, --cert and --key go with --tls")
        return "", "", ""
    tls_context(ca, cert, key)
    return tuple(os.path.abspath(p) if p else "" for p in (ca, cert, key))  # type: ignore[return-value]


@main.command()
@click.option("--tid", required=True, help="Terminal id (8 characters).")
@click.option("--mid", required=True, help="Merchant id (15 characters).")
@click.option("--tmk", help="Terminal master key, 32 hex digits.")
@click.option("--tmk-component", "components", multiple=True,
              help="TMK component (32 hex); repeat: the TMK is their XOR.")
@click.option("--host", "address", help="Host address HOST:PORT; HOST:PORT,HOST:PORT for a"
              " primary and a secondary host (tried in that order on each connection).")
@click.option("--serial", default=None, metavar="PORT[,baud=9600][,framing=stx|length]",
              help="Reach the host over this serial line instead of --host.")
@click.option("--mac", type=click.Choice(sorted(MAC_ALGORITHMS)), default="x919",
              show_default=True, help="MAC algorithm agreed with the host.")
@click.option("--nii", default="0003", show_default=True, help="Destination NII (4 digits).")
@click.option("--timeout", type=click.FloatRange(0.01, MAX_SECONDS), default=30.0,
              show_default=True, help="Seconds to wait for a response.")
@click.option("--backoff", type=click.FloatRange(0, MAX_SECONDS), default=2.0, show_default=True,
              help="First reversal retry delay in seconds (doubles each retry).")
@click.option("--attempts", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="Reversal sends per command before giving up (it stays pending).")
@_tls_options
@_common(trace=False)
def init(tid: str, mid: str, tmk: str | None, components: tuple[str, ...],
         address: str | None, serial: str | None, mac: str, nii: str, timeout: float,
         backoff: float, attempts: int, tls: bool, tls_ca: str | None, tls_cert: str | None,
         tls_key: str | None) -> None:
    """Create or reset the terminal: identity, host, TMK (prints only its KCV)."""

    def parse() -> tuple[Config, bytes]:
        if bool(tmk) == bool(components):
            raise BadInput("give --tmk or --tmk-component (not both)")
        key = parse_key_hex(tmk) if tmk else combine_components(list(components))
        if bool(address) == bool(serial):
            raise BadInput("give --host HOST:PORT or --serial PORT[,...] (one of them)")
        host, port, secondaries = "", 0, ""
        if serial:
            SerialTransport(serial)  # checks the line spec now, not at the first transaction
        else:
            try:
                (host, port), *others = parse_addresses(address or "")
            except ValueError as exc:
                raise BadInput(str(exc)) from None
            secondaries = format_addresses(others)
        if len(nii) != 4 or not nii.isascii() or not nii.isdigit():
            raise BadInput("NII must be 4 digits")
        if tls and serial:
            raise BadInput("--tls is for --host HOST:PORT, not a serial line")
        files = _tls_files(tls, tls_ca, tls_cert, tls_key)
        try:
            ids = values.parse_tid(tid), values.parse_mid(mid)
        except values.InputError as exc:
            raise BadInput(str(exc)) from None
        config = Config(*ids, host, port, nii, mac, timeout, backoff, attempts, serial or "",
                        tls, *files, secondaries=secondaries)
        return config, key

    config, key = _guard(parse)
    _offline(lambda store: store.initialise(config, key))
    data = {"command": "init", "status": "done", "tid": config.tid, "mid": config.mid,
            "host": config.endpoint, "mac": mac, "kcv_tmk": kcv_hex(key),
            "state": os.path.abspath(_opts().state)}
    _emit(data, f"INIT  DONE\n  TID {config.tid}   MID {config.mid}\n"
                f"  host {data['host']}  MAC {mac}\n  TMK KCV {data['kcv_tmk']}\n"
                f"  state {data['state']}\n  next: posterm signon")


# --------------------------------------------------------------------------- management


@main.command()
@_common()
def signon() -> None:
    """Sign on: fetch fresh PIN and MAC keys (0800/003) and the batch number."""
    _run_online(lambda t: t.sign_on())


@main.command()
@_common()
def signoff() -> None:
    """Sign off (0820/002)."""
    _run_online(lambda t: t.management("sign_off", "signoff"))


@main.command()
@_common()
def echo() -> None:
    """Echo test (0820/301)."""
    _run_online(lambda t: t.management("echo_test", "echo"))


# --------------------------------------------------------------------------- financial


def _card_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--expiry", help="Expiry YYMM (with --pan).")(f)
    f = click.option("--pan", help="Keyed PAN (manual entry).")(f)
    f = click.option("--track2", help="Track 2 data, '=' or 'D' as separator (swipe).")(f)
    return f


def _pin_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--no-pin", is_flag=True, help="Do not ask for a PIN.")(f)
    f = click.option("--pin", help="Cardholder PIN (prompted, hidden, when omitted on a tty).")(f)
    return f


def _chip_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--contactless", is_flag=True, help="Tap the chip card (F22 07x).")(f)
    f = click.option("--card", "card_name",
                     help="Read this emulated chip card (posterm card add) instead of a "
                          "magstripe or keyed card.")(f)
    return f


def _no_card_data(track2: str | None, pan: str | None, expiry: str | None) -> None:
    if track2 or pan or expiry:
        raise BadInput("give either --card NAME (chip) or --track2/--pan, not both")


def _pin(pin: str | None, no_pin: bool) -> str | None:
    """--pin, else a hidden prompt on a terminal; with neither (a script, a pipe) it is an
    error, not a PIN-less transaction: --no-pin says so explicitly."""
    if pin is not None and no_pin:
        raise BadInput("give --pin or --no-pin, not both")
    if pin is None and not no_pin:
        if not sys.stdin.isatty():
            raise BadInput("no PIN: give --pin PIN (no terminal to prompt on), or --no-pin"
                           " for a transaction without PIN")
        pin = click.prompt("PIN (empty for none)", hide_input=True, default="",
                           show_default=False) or None
    return check_pin(pin) if pin is not None else None


@main.command()
@click.argument("amount")
@_card_options
@_chip_options
@_pin_options
@_common()
def sale(amount: str, track2: str | None, pan: str | None, expiry: str | None,
         card_name: str | None, contactless: bool, pin: str | None, no_pin: bool) -> None:
    """Sale of AMOUNT (major units, 123.45); reversal recorded before sending."""
    if card_name:
        minor, _, pin_value = _guard(lambda: (parse_amount(amount),
                                              _no_card_data(track2, pan, expiry),
                                              _pin(pin, no_pin)))
        _run_online(lambda t: t.chip_sale(card_name, minor, pin_value,
                                          contactless=contactless))
    if contactless:
        _fail(BadInput("--contactless needs --card NAME (a chip card)"))
    minor, card, pin_value = _guard(lambda: (parse_amount(amount),
                                             card_from_options(track2, pan, expiry),
                                             _pin(pin, no_pin)))
    _run_online(lambda t: t.sale(card, minor, pin_value))


@main.command()
@_card_options
@_chip_options
@_pin_options
@_common()
def balance(track2: str | None, pan: str | None, expiry: str | None, card_name: str | None,
            contactless: bool, pin: str | None, no_pin: bool) -> None:
    """Balance inquiry."""
    if card_name:
        _, pin_value = _guard(lambda: (_no_card_data(track2, pan, expiry), _pin(pin, no_pin)))
        _run_online(lambda t: t.chip_balance(card_name, pin_value, contactless=contactless))
    if contactless:
        _fail(BadInput("--contactless needs --card NAME (a chip card)"))
    card, pin_value = _guard(lambda: (card_from_options(track2, pan, expiry), _pin(pin, no_pin)))
    _run_online(lambda t: t.balance(card, pin_value))


def _optional_card(track2: str | None, pan: str | None, expiry: str | None) -> Card | None:
    if not (track2 or pan or expiry):
        return None
    return card_from_options(track2, pan, expiry)


def _old_spelling(old: str, dest: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A hidden option kept for scripts written against an older spelling of ``dest``."""
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None:
            ctx.meta[f"old:{dest}"] = value
    return click.option(old, hidden=True, expose_value=False, callback=callback)


def _from_old(value: Any, dest: str) -> Any:
    return value if value is not None else click.get_current_context().meta.get(f"old:{dest}")


@main.command()
@click.option("--stan", "trace_no", help="STAN of the sale to void.")
@_old_spelling("--trace", "trace_no")
@_card_options
@click.option("--pin", help="PIN (only with card data).")
@_common(trace=False)
def void(trace_no: str | None, track2: str | None, pan: str | None, expiry: str | None,
         pin: str | None) -> None:
    """Void a sale of the open batch (card taken from the journal unless given).

    Frame tracing: posterm --trace void --stan STAN.
    """
    trace_no = _from_old(trace_no, "trace_no")
    if trace_no is None:
        raise click.UsageError("Missing option '--stan'.")
    stan, card, pin_value = _guard(lambda: (parse_trace(trace_no),
                                            _optional_card(track2, pan, expiry),
                                            check_pin(pin) if pin else None))
    _run_online(lambda t: t.void(stan, card, pin_value))


@main.command()
@click.argument("amount")
@click.option("--stan", "trace_no", help="STAN of a sale in the journal.")
@_old_spelling("--trace", "trace_no")
@click.option("--rrn", help="Original RRN (older sale not in the journal).")
@click.option("--orig-date", help="Original date MMDD.")
@click.option("--orig-batch", help="Original batch number.")
@click.option("--orig-trace", help="Original STAN.")
@_card_options
@_common(trace=False)
def refund(amount: str, trace_no: str | None, rrn: str | None, orig_date: str | None,
           orig_batch: str | None, orig_trace: str | None, track2: str | None,
           pan: str | None, expiry: str | None) -> None:
    """Refund AMOUNT: an advice (0220), stored and forwarded until the host answers.

    Frame tracing: posterm --trace refund ...
    """
    trace_no = _from_old(trace_no, "trace_no")

    def parse() -> tuple[int, str | None, Original | None, Card | None]:
        minor = parse_amount(amount)
        card = _optional_card(track2, pan, expiry)
        if trace_no is not None:
            return minor, parse_trace(trace_no), None, card
        if not (rrn and orig_date and orig_batch and orig_trace and card):
            raise BadInput("give --stan STAN, or --rrn --orig-date --orig-batch --orig-trace "
                           "with card data")
        if not _MMDD.fullmatch(orig_date):
            raise BadInput("--orig-date must be MMDD (month 01-12, day 01-31)")
        if len(rrn) > 12 or not rrn.isascii() or not rrn.isprintable():
            raise BadInput("--rrn must be at most 12 printable ASCII characters")
        original = Original(parse_trace(orig_batch), parse_trace(orig_trace), rrn, 0,
                            None, orig_date)
        return minor, None, original, card

    minor, stan, original, card = _guard(parse)
    _run_online(lambda t: t.refund(card, minor, trace=stan, original=original))


# --------------------------------------------------------------------------- chip cards


@main.group("card")
def card_group() -> None:
    """Emulated EMV chip cards (their keys stay in the private state file)."""


@card_group.command("add")
@click.option("--name", required=True, help="Name to read the card by (--card NAME).")
@click.option("--pan", required=True, help="The card's PAN (12-19 digits).")
@click.option("--psn", default="01", show_default=True, help="PAN sequence number.")
@click.option("--expiry", required=True, help="Expiry date, YYMM.")
@click.option("--icc-mk", help="The card's MK-AC, 32 hex (as personalised).")
@click.option("--imk-ac", help="The issuer's MK-AC, 32 hex: the card key is derived (option A).")
@click.option("--atc", type=click.IntRange(0, 0xFFFE), default=0, show_default=True,
              help="The card's current ATC (the next GENERATE AC uses ATC + 1).")
@click.option("--behaviour", type=click.Choice(["normal", "reject-arpc"]), default="normal",
              show_default=True,
              help="reject-arpc: the card declines every host approval (issuer authentication "
                   "fails), to see the 0400/06 reversal with the AAC.")
@_common(trace=False)
def card_add(name: str, pan: str, psn: str, expiry: str, icc_mk: str | None,
             imk_ac: str | None, atc: int, behaviour: str) -> None:
    """Personalise an emulated chip card."""
    from terminal import chip, chipstore
    from terminal.pinpad import kcv_hex

    def parse() -> chip.ChipCard:
        chip.check_card_data(pan, psn, expiry)
        if bool(icc_mk) == bool(imk_ac):
            raise BadInput("give --icc-mk or --imk-ac (one of them)")
        key = (chip.parse_key(icc_mk, "--icc-mk") if icc_mk else
               chip.icc_mk_from_issuer_key(chip.parse_key(imk_ac or "", "--imk-ac"), pan, psn))
        try:
            label = values.parse_name(name, "card name")
        except values.InputError as exc:
            raise BadInput(str(exc)) from None
        return chip.ChipCard(label, pan, psn, expiry, key, atc, behaviour=behaviour)

    card = _guard(parse)
    _offline(lambda store: chipstore.add_card(store, card))
    data = {"command": "card add", "status": "done", "name": card.name,
            "pan": receipt.mask_pan(pan), "psn": psn, "expiry": expiry, "atc": atc,
            "kcv_icc_mk": kcv_hex(card.icc_mk), "aid": card.aid}
    _emit(data, f"CARD  ADDED\n  {card.name}: {data['pan']} PSN {psn} exp {expiry}"
                f"  AID {card.aid}\n  ICC MK KCV {data['kcv_icc_mk']}  ATC {atc}")


@card_group.command("list")
@_common(trace=False)
def card_list() -> None:
    """The emulated chip cards (masked PAN, PSN, ATC, key check value)."""
    from terminal import chipstore
    from terminal.pinpad import kcv_hex

    def show(store: Store) -> None:
        rows = [{"name": c.name, "pan": receipt.mask_pan(c.pan), "psn": c.psn,
                 "expiry": c.expiry, "atc": c.atc, "kcv_icc_mk": kcv_hex(c.icc_mk)}
                for c in chipstore.list_cards(store)]
        lines = [f"{r['name']:<12} {r['pan']:<20} PSN {r['psn']} exp {r['expiry']}"
                 f" ATC {r['atc']:<5} KCV {r['kcv_icc_mk']}" for r in rows]
        _emit({"cards": rows}, "\n".join(lines) or "no chip cards")

    _offline(show)


# --------------------------------------------------------------------------- batch


@main.command()
@_common()
def settle() -> None:
    """Settle the batch: pending reversal and advices, totals (0500), upload if unbalanced."""
    _run_online(lambda t: t.settle())


@main.command()
@click.option("--send", is_flag=True, help="Send pending reversals and queued advices now.")
@_common()
def reversal(send: bool) -> None:
    """Show the pending reversals and queued advices (or --send them)."""
    if send:
        _run_online(lambda t: t.flush())

    def show(store: Store) -> None:
        revs = [{"stan": r.request["11"], "reason": r.reason, "attempts": r.attempts,
                 "amount_minor": int(r.request.get("4", "0"))} for r in store.reversals()]
        advs = [{"stan": a.request["11"], "attempts": a.attempts,
                 "amount_minor": int(a.request.get("4", "0"))} for a in store.advices()]
        lines = [f"reversal STAN {r['stan']} reason {r['reason']} attempts {r['attempts']}"
                 for r in revs]
        lines += [f"advice   STAN {a['stan']} attempts {a['attempts']}" for a in advs]
        _emit({"reversals": revs, "advices": advs}, "\n".join(lines) or "nothing pending")

    _offline(show)


@main.command()
@click.option("--all", "all_batches", is_flag=True, help="Include settled batches.")
@_common(trace=False)
def journal(all_batches: bool) -> None:
    """List the journal of the open batch (PANs masked)."""

    def show(store: Store) -> None:
        store.config()
        entries = store.journal(all_batches=all_batches)
        _emit({"journal": [receipt.journal_row(e) for e in entries]},
              receipt.render_journal(entries))

    _offline(show)


@main.command()
@_common(trace=False)
def status() -> None:
    """Terminal configuration, counters, key check values and pending work."""

    def show(store: Store) -> None:
        config, row, pad = store.config(), store.row(), store.pinpad()
        phase, sent = store.settlement_progress()
        entries = store.batch_entries()
        data = {
            "tid": config.tid, "mid": config.mid, "host": config.endpoint,
            "nii": config.nii, "mac": config.mac, "timeout": config.timeout,
            "stan": row["stan"], "batch": row["batch"], "signed_on": bool(row["signed_on"]),
            "sign_on_again": bool(row["sign_on_again"]), **{
                f"kcv_{k}": v for k, v in pad.check_values().items()},
            "pending_reversals": [r.request["11"] for r in store.reversals()],
            "queued_advices": [a.request["11"] for a in store.advices()],
            "settlement_phase": phase, "upload_messages_sent": sent,
            "batch_sales": sum(e.kind == "sale" for e in entries),
            "batch_refunds": sum(e.kind == "refund" for e in entries),
            "state": str(store.path), "state_mode": oct(os.stat(store.path).st_mode & 0o777),
        }
        text = "\n".join(f"{k:<22} {v}" for k, v in data.items())
        _emit(data, text)

    _offline(show)



@main.command("load")
@click.option("--host", "address", required=True,
              help="Host address HOST:PORT (HOST:PORT,HOST:PORT: primary, then secondary).")
@click.option("--terminals", type=click.IntRange(1, MAX_LOAD_TERMINALS), default=10,
              show_default=True, help="How many emulated terminals.")
@click.option("--duration", type=click.FloatRange(0.1, MAX_SECONDS), default=10.0,
              show_default=True, help="Seconds to run.")
@click.option("--rate", type=click.FloatRange(0, MAX_RATE), default=0.0,
              help="Total requests per second (0 = as fast as the host answers).")
@click.option("--mix", default="sale=80,balance=10,void=5,refund=5", show_default=True,
              help="Operations and their weights.")
@click.option("--report", type=click.Path(dir_okay=False), callback=_check_file_option,
              help="Write the JSON report here (its directory must exist).")
@click.option("--tid-prefix", default="LT", show_default=True,
              help="TIDs are PREFIX + zero-filled index (8 characters).")
@click.option("--mid", default="LOADTEST0000001", show_default=True,
              help="Merchant id of the load terminals.")
@click.option("--tmk", required=True, help="TMK shared by the load terminals (32 hex).")
@click.option("--track2", required=True, multiple=True,
              help="Card to use (track 2); repeat to spread terminals over several cards.")
@click.option("--pin", help="PIN of the cards (omit for no PIN).")
@click.option("--amount", default="1.00", show_default=True, help="Amount of each sale.")
@click.option("--settle/--no-settle", default=True, show_default=True,
              help="Settle each terminal's batch at the end (next run starts a fresh batch).")
@click.option("--mac", type=click.Choice(sorted(MAC_ALGORITHMS)), default="x919",
              help="MAC algorithm of the load terminals.")
@click.option("--timeout", type=click.FloatRange(0.01, MAX_SECONDS), default=10.0,
              show_default=True, help="Seconds to wait for each response.")
@_tls_options
@click.option("--chip", is_flag=True,
              help="Sales and balance inquiries by chip: each card is an emulated chip card "
                   "(PSN 01) personalised from --imk-ac; the host must know it as a chip card.")
@click.option("--imk-ac", help="Issuer MK-AC of the cards' BIN, 32 hex (with --chip).")
@click.option("--atc-start", type=click.IntRange(1, 0xFFFF), default=1, show_default=True,
              help="First ATC of each card (with --chip): above the highest the host has "
                   "seen, or it answers 05 (a replayed ATC).")
@click.option("--json", "as_json", is_flag=True, expose_value=False, callback=_set("as_json"),
              help="Print the report as JSON on stdout.")
def load_command(**kwargs: Any) -> None:
    """Run N emulated terminals against a host; report throughput and latency.

    The terminals (TIDs PREFIX000001 ...) must exist on the host with the TMK given; on
    poshost: poshost terminal add-range --prefix LT --count N --mid MID --tmk TMK.
    Progress goes to stderr each second; the summary to stderr; --report writes JSON.
    """
    from terminal.load import LoadSettings, run_load_cli

    try:
        settings = LoadSettings.from_cli(**kwargs)
        report = run_load_cli(settings)
    except TerminalError as exc:
        _fail(exc)
    if _opts().as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    if report.get("interrupted"):
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0 if report["completed"] and not report["errors"] else EXIT_COMMUNICATION)
