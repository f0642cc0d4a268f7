"""Command-line edge of `hsm-sim`: the only place errors become messages and exit codes.

`serve` runs the TCP HSM; `lmk generate` writes a live LMK; `command` sends one raw host
command to a running HSM; `kcv`, `pinblock`, `mac`, `pvv` and `wrap` are CLEAR-KEY lab
helpers that compute published vectors on the operator's screen (never for live keys).

Exit codes: 0 done (for `command`: the HSM answered error code 00), 1 failed (the HSM answered
another error code, could not be reached, the port is in use, a file cannot be written),
2 usage or bad input, 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from functools import partial, wraps
from typing import Any, TypeVar

import click
import trio

from hsm_sim import crypto
from hsm_sim.commands import (
    DEFAULT_HEADER_LENGTH,
    LEGACY_SETTINGS,
    HsmEngine,
    SecurityPolicy,
)
from hsm_sim.crypto import CryptoError
from hsm_sim.errors import HsmError
from hsm_sim.lmk import TEST_LMK_WARNING, generate_lmk_file, load_lmk
from specs import params
from specs.tls import TlsError, client_context, server_context

F = TypeVar("F", bound=Callable[..., Any])
LAB_ONLY = "LAB HELPER: works on CLEAR keys - published test vectors only, never live keys."
DEFAULT_PORT = 1500
AUDIT_LOG_MODE = 0o600
DEFAULT_AUTHORISE_WINDOW = 300.0
"""Seconds of Authorised state a SIGUSR1 to a running `hsm-sim serve` gives."""
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _hsm_errors(func: F) -> F:
    """Turn HsmError into a one-line message, exit 1; CryptoError (input the lab helpers'
    crypto refuses: a bad key, PIN or PAN) is bad input, exit 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CryptoError as exc:
            raise click.UsageError(str(exc)) from None
        except HsmError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def _hex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter(f"{what} must be hex") from None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _fail(message: str, code: int = EXIT_FAILED) -> None:
    click.echo(f"hsm-sim: {message}", err=True)
    sys.exit(code)


class _Cli(click.Group):
    """Commands never end in a traceback: a busy port, an unknown host, an unwritable file or
    Ctrl-C become one line and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaseException as exc:  # sorted below; the rest re-raised
            leaves = _leaves(exc)
            leaf = next((e for e in leaves if not isinstance(e, trio.Cancelled)), exc)
            if isinstance(leaf, KeyboardInterrupt):
                click.echo("hsm-sim: interrupted", err=True)
                sys.exit(EXIT_INTERRUPTED)
            if isinstance(leaf, HsmError):
                _fail(str(leaf))
            if isinstance(leaf, OSError):
                _fail(_os_message(leaf))
            raise


def _os_message(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen: address already in use ({exc})"
    if isinstance(exc, __import__("socket").gaierror):
        return f"unknown host: {exc.strerror or exc}"
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


@click.group(cls=_Cli, epilog="""\b
Exit codes:
  0 done (command: the HSM answered error code 00)
  1 failed: another error code, HSM unreachable, port in use, bad host,
    file not readable or writable
  2 usage or bad input
  130 interrupted (Ctrl-C)""")
@click.version_option(package_name="poshost", prog_name="hsm-sim")
def main() -> None:
    """hsm-sim: a software payShield-compatible HSM for card-acquiring labs.

    `serve` is the HSM; `lmk generate` makes a live LMK; `command` talks to a running HSM.
    kcv / pinblock / mac / pvv / wrap are clear-key lab helpers for published vectors only.
    """


# --------------------------------------------------------------------------- serve


async def _run_server(engine: HsmEngine, host: str, port: int, header_length: int,
                      ssl_context: ssl.SSLContext | None = None,
                      authorise_window: float = DEFAULT_AUTHORISE_WINDOW) -> None:
    from hsm_sim.server import serve_hsm

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1,
                                   signal.SIGUSR2) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(serve_hsm, engine, host, port, header_length, ssl_context=ssl_context))
            address = listeners[0].socket.getsockname()
            mode = "" if ssl_context is None else " TLS"
            click.echo(
                f"hsm-sim ready on{mode} {address[0]}:{address[1]} "
                f"(LMK check value {engine.lmk.check_value})",
                nl=True,
            )
            sys.stdout.flush()
            async for signum in signals:
                if signum == signal.SIGUSR1:  # the operator's console: authorise, time-limited
                    engine.authorise(authorise_window, who="operator (SIGUSR1)")
                    click.echo(f"hsm-sim: Authorised for {authorise_window:g} s", err=True)
                    continue
                if signum == signal.SIGUSR2:
                    engine.cancel_authorisation(who="operator (SIGUSR2)")
                    click.echo("hsm-sim: Authorised state cancelled", err=True)
                    continue
                click.echo(f"hsm-sim stopping on {signal.Signals(signum).name}", err=True)
                nursery.cancel_scope.cancel()
                break


def _load_engine(lmk_spec: str, header_length: int, *, authorised: bool | None = False,
                 authorised_for: float | None = None,
                 legacy: tuple[str, ...] = (), separate_002: bool = False) -> HsmEngine:
    lmk = load_lmk(lmk_spec)
    if lmk.is_test:
        banner = "!" * 78
        click.echo(f"{banner}\n{TEST_LMK_WARNING}\n{banner}", err=True)
    policy = dataclasses.replace(SecurityPolicy.from_names(legacy), separate_002=separate_002)
    if legacy:
        click.echo(f"WARNING: legacy security settings on: {', '.join(policy.names())}",
                   err=True)
    engine = HsmEngine(lmk, header_length, policy=policy)
    if authorised is None:  # the default: Authorised on the published test LMK only
        authorised = lmk.is_test
    if authorised or authorised_for is not None:
        engine.authorise(authorised_for, who="hsm-sim serve")
        limit = "" if authorised_for is None else f" for {authorised_for:g} s"
        click.echo(f"hsm-sim: Authorised state{limit} (BA, Y4, Y6, Y8 accepted)", err=True)
    return engine


@main.command()
@click.option("--listen", type=params.LISTEN, default=DEFAULT_LISTEN, show_default=True,
              help="HOST:PORT to listen on (port 0: any free port).")
@click.option("--host", "old_host", type=params.HOST, hidden=True,
              help="Old spelling: the HOST of --listen.")
@click.option("--port", "old_port", type=params.LISTEN_PORT, hidden=True,
              help="Old spelling: the PORT of --listen.")
@click.option(
    "--header-length",
    default=DEFAULT_HEADER_LENGTH,
    show_default=True,
    type=click.IntRange(0, 255),
    help="Length of the message header echoed in responses.",
)
@click.option(
    "--lmk", "lmk_spec", required=True, help="'test' (published test LMK) or an LMK file."
)
@click.option(
    "--audit-log", type=click.Path(dir_okay=False), default=None,
    help="Append the audit log (one line per command: client, command, error code, KCVs) "
    "to this file instead of stderr.",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Serve TLS 1.2+ only, with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Private key of --tls-cert (PEM).")
@click.option("--tls-client-ca", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Clients must present a certificate this CA issued (mutual TLS).")
@click.option(
    "--authorised/--not-authorised", default=None,
    help="Start in the Authorised state (payShield console 'A'): commands that take clear "
    "PINs or clear keys (BA, Y4, Y6, Y8) are accepted; logged on the audit log. Default: "
    "authorised on the published test LMK (its keys are public anyway), not on a live LMK.",
)
@click.option(
    "--authorised-for", type=click.FloatRange(min=0, min_open=True), default=None,
    metavar="SECONDS", help="As --authorised, for this many seconds only (then error 17).",
)
@click.option(
    "--legacy", type=click.Choice([*LEGACY_SETTINGS, "all"]), multiple=True,
    help="Re-open a legacy behaviour PCI settings forbid (repeatable; README 'HSM settings').",
)
@click.option(
    "--authorise-window", type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_AUTHORISE_WINDOW, show_default=True, metavar="SECONDS",
    help="Authorised time a SIGUSR1 gives the running HSM (kill -USR1 PID: the operator's"
    " authorise command; SIGUSR2 cancels). Logged on the audit log.",
)
@click.option(
    "--separate-002", is_flag=True,
    help="payShield's 'Enforce key type 002 separation': TPK 70D and TMK 80D (LMK 36-37) "
    "apart from PVK 002. Hosts must then use those key types (poshost does not yet).",
)
@_hsm_errors
def serve(listen: tuple[str, int], old_host: str | None, old_port: int | None,
          header_length: int, lmk_spec: str, audit_log: str | None, tls_cert: str | None,
          tls_key: str | None, tls_client_ca: str | None, authorised: bool | None = None,
          authorised_for: float | None = None, legacy: tuple[str, ...] = (),
          separate_002: bool = False,
          authorise_window: float = DEFAULT_AUTHORISE_WINDOW) -> None:
    """Run the HSM on TCP (2-byte length framing, payShield host commands).

    Prints one 'hsm-sim ready on HOST:PORT' line when listening; stops on SIGINT/SIGTERM.

    \b
    Host commands: NC A0 BU HC HA FA CA CC BA DG DC EC DA M6 M8 M0 M2 KW (hsm-commands.md).
    Extensions:    Y0/Y2 UnionPay ECB MAC generate/verify under a TAK;
                   Y4 import a clear key, Y6 clear components, Y8 generate components
                   (Y4/Y6/Y8 only while the test LMK is loaded, else error 17).
    BA, Y4, Y6, Y8 also need the Authorised state (--authorised / --authorised-for).
    """
    host = old_host if old_host is not None else listen[0]
    port = old_port if old_port is not None else listen[1]
    context = _tls_context(tls_cert, tls_key, tls_client_ca)
    _start_audit_log(audit_log)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    engine = _load_engine(lmk_spec, header_length, authorised=authorised,
                          authorised_for=authorised_for, legacy=legacy,
                          separate_002=separate_002)
    trio.run(_run_server, engine, host, port, header_length, context, authorise_window)


def _tls_context(cert: str | None, key: str | None,
                 client_ca: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        if client_ca:
            raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise click.UsageError("give --tls-cert and --tls-key together")
    try:
        return server_context(cert, key, client_ca)
    except TlsError as exc:
        raise click.ClickException(f"TLS: {exc}") from None


def _start_audit_log(path: str | None) -> None:
    """The audit lines of hsm_sim.audit, with a timestamp, to ``path`` or stderr. They never
    carry a key, PIN or PIN block (see hsm_sim.commands)."""
    if path:  # created 0600: the audit log names clients and key check values
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, AUDIT_LOG_MODE))
        os.chmod(path, AUDIT_LOG_MODE)
    handler = logging.FileHandler(path) if path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s audit %(message)s"))
    audit = logging.getLogger("hsm_sim.audit")
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)
    audit.propagate = False


# --------------------------------------------------------------------------- LMK


@main.group()
def lmk() -> None:
    """LMK files: generate a live LMK, show a check value."""


@lmk.command("generate")
@click.argument("path", type=click.Path(dir_okay=False), required=False)
@click.option("--lmk", "lmk_path", type=click.Path(dir_okay=False),
              help="The LMK file to create (the same as PATH; --lmk as everywhere else).")
@_hsm_errors
def lmk_generate(path: str | None, lmk_path: str | None) -> None:
    """Write a random live LMK to PATH or --lmk (mode 0600; refuses to overwrite)."""
    if (path is None) == (lmk_path is None):
        raise click.UsageError("give the LMK file to create: PATH or --lmk PATH (one)")
    target = path if path is not None else lmk_path
    if not target:
        raise click.BadParameter("the LMK file name is empty")
    lmk_set = generate_lmk_file(target)
    click.echo(f"LMK written to {target}, check value {lmk_set.check_value}")


@lmk.command("check")
@click.option("--lmk", "lmk_spec", required=True, help="'test' or an LMK file.")
@_hsm_errors
def lmk_check(lmk_spec: str) -> None:
    """Print the check value of an LMK (what NC reports)."""
    click.echo(load_lmk(lmk_spec).check_value)


# --------------------------------------------------------------------------- operator


async def _send_command(host: str, port: int, header: bytes, text: str, timeout: float,
                        context: ssl.SSLContext | None = None) -> str:
    from hsm_sim.client import TcpTransport

    transport = TcpTransport(host, port, timeout=timeout, ssl_context=context)
    try:
        response = await transport.call(header + text.encode("ascii"))
    finally:
        await transport.aclose()
    return response.decode("ascii", "replace")


def _hsm_address(value: str) -> tuple[str, int | None]:
    """--host HOST:PORT, or HOST alone (old spelling, with --port)."""
    if ":" in value:
        return params.ADDRESS.convert(value, None, None)
    return params.HOST.convert(value, None, None), None


@main.command()
@click.argument("request")
@click.option("--host", "address", default=DEFAULT_LISTEN, show_default=True,
              help="HOST:PORT of the HSM.")
@click.option("--port", "old_port", type=params.PORT, hidden=True,
              help="Old spelling: the PORT of --host.")
@click.option("--header", default="0000", show_default=True, help="Header to send.")
@click.option("--timeout", type=click.FloatRange(0.01, 3600), default=5.0, show_default=True,
              help="Seconds to wait.")
@click.option("--tls", is_flag=True, help="Connect over TLS 1.2+.")
@click.option("--ca", type=click.Path(dir_okay=False, exists=True), default=None,
              help="CA the HSM's certificate must chain to (default: the system's CAs).")
@click.option("--cert", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Client certificate, for an HSM requiring mutual TLS.")
@click.option("--key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Private key of --cert.")
@_hsm_errors
def command(request: str, address: str, old_port: int | None, header: str, timeout: float,
            tls: bool, ca: str | None, cert: str | None, key: str | None) -> None:
    """Send one raw host command to a running HSM and print the response.

    REQUEST is the command code and fields without header, e.g. NC or BU0200406FBB23A5214DF.
    Exits 1 when the HSM answers an error code other than 00.
    """
    if not request.isascii() or not header.isascii():
        raise click.BadParameter("REQUEST and --header must be ASCII")
    host, port = _hsm_address(address)
    port = old_port if old_port is not None else port or DEFAULT_PORT
    context = None
    if tls:
        try:
            context = client_context(ca, cert, key)
        except TlsError as exc:
            raise click.ClickException(f"TLS: {exc}") from None
    elif ca or cert or key:
        raise click.UsageError("--ca, --cert and --key go with --tls")
    response = trio.run(_send_command, host, port, header.encode(), request, timeout, context)
    click.echo(response)
    code = response[len(header) + 2:len(header) + 4]
    if code != "00":
        _fail(f"the HSM answered error code {code or '(none)'}")


# --------------------------------------------------------------------------- lab helpers


@main.command()
@click.argument("key")
@click.option("--length", default=3, show_default=True, type=click.IntRange(1, 8),
              help="Bytes of the check value (3: 6 hex digits, as every KCV shown here).")
@_hsm_errors
def kcv(key: str, length: int) -> None:
    """LAB: check value of a CLEAR key (first LENGTH bytes of 3DES(key, 0^8))."""
    click.echo(LAB_ONLY, err=True)
    click.echo(crypto.generate_kcv(_hex(key, "KEY"), length).hex().upper())


@main.command()
@click.option("--pin", required=True, help="Test PIN, 4-12 digits.")
@click.option("--pan", required=True, help="Test PAN.")
@click.option(
    "--format", "fmt", default="01", show_default=True,
    type=click.Choice(["01", "03", "05", "47"]), help="Thales PIN block format code."
)
@click.option("--key", default=None, help="Clear TPK/ZPK to encipher the block with.")
@_hsm_errors
def pinblock(pin: str, pan: str, fmt: str, key: str | None) -> None:
    """LAB: clear (and optionally enciphered) PIN block for a test PIN and PAN."""
    click.echo(LAB_ONLY, err=True)
    account = crypto.extract_account_number(pan)
    clear = crypto.encode_pinblock(pin, account, fmt)
    click.echo(f"clear      {clear.hex().upper()}")
    if key:
        click.echo(f"enciphered {crypto.encrypt_tdes_ecb(_hex(key, 'KEY'), clear).hex().upper()}")


_MACS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "x919": crypto.generate_mac_x919,
    "x99": crypto.generate_mac_x99,
    "alg1": lambda k, d: crypto.generate_mac_iso9797_alg1(k, d, 1),
    "cup-ecb": crypto.generate_mac_cup_ecb,
}


@main.command()
@click.option("--key", required=True, help="Clear MAC key (hex).")
@click.option("--data-hex", default=None, help="Message as hex.")
@click.option("--data-text", default=None, help="Message as text (ASCII).")
@click.option("--algorithm", default="x919", show_default=True, type=click.Choice(list(_MACS)),
              help="MAC algorithm.")
@_hsm_errors
def mac(key: str, data_hex: str | None, data_text: str | None, algorithm: str) -> None:
    """LAB: MAC of a message under a CLEAR key (x919, x99, alg1, cup-ecb)."""
    click.echo(LAB_ONLY, err=True)
    if (data_hex is None) == (data_text is None):
        raise click.UsageError("give exactly one of --data-hex / --data-text")
    data = _hex(data_hex, "DATA") if data_hex is not None else (data_text or "").encode()
    result = _MACS[algorithm](_hex(key, "KEY"), data)
    click.echo(result.decode() if algorithm == "cup-ecb" else result.hex().upper())


@main.command()
@click.option("--pvk", required=True, help="Clear double-length PVK (hex).")
@click.option("--pan", required=True, help="Test PAN.")
@click.option("--pin", required=True, help="Test PIN, 4-12 digits.")
@click.option("--pvki", default="1", show_default=True, help="PVK index, one digit.")
@_hsm_errors
def pvv(pvk: str, pan: str, pin: str, pvki: str) -> None:
    """LAB: Visa PVV for a test PIN under a CLEAR PVK."""
    click.echo(LAB_ONLY, err=True)
    click.echo(crypto.generate_visa_pvv(_hex(pvk, "PVK"), pvki, pin, pan))


@main.command()
@click.option("--tmk", required=True, help="Clear TMK (hex).")
@click.option("--key", required=True, help="Clear working key (hex).")
@_hsm_errors
def wrap(tmk: str, key: str) -> None:
    """LAB: a working key under a CLEAR TMK as sign-on F62 carries it (+ 4-byte CV)."""
    click.echo(LAB_ONLY, err=True)
    ciphertext, cv = crypto.wrap_key_tmk(_hex(tmk, "TMK"), _hex(key, "KEY"))
    click.echo(f"{ciphertext.hex().upper()} {cv.hex().upper()}")
