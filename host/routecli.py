"""`poshost route ...` and `poshost link ...`: the operator's commands for host-to-host links
(protocol.md section 9). Registered on the main group by host/cli.py."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import click

from host.cli import (
    _emit_rows,
    _fail,
    _read,
    authorise_option,
    db_option,
    hsm_options,
    json_option,
    parse_amount,
    with_hsm,
)
from host.db import open_store
from host.errors import HostError
from host.limits import HANDLER_TIMEOUT
from host.routestore import (
    insert_link,
    insert_route,
    route_rows,
    route_state_path,
    set_route_enabled,
)
from host.routing import parse_bins, parse_rate, parse_window
from hsm_sim.client import HsmClient
from hsm_sim.errors import HsmError
from specs import params

ZMK_TYPE = "000"
ROUTE_TIMEOUT_MAX = HANDLER_TIMEOUT - 3.0
"""A route waits less than the host's handler limit, so a routed request always ends in its
own 91 + 0420 and never in a cancelled handler with its outbox row left in flight."""
DEFAULT_ACQUIRER_ID = "48020000"


async def _import_zmk(client: HsmClient, zmk: str | None, components: tuple[str, ...]) -> tuple[
        str, str]:
    """The link's ZMK under the LMK and its KCV, from a clear key or components."""
    if zmk and components:
        raise click.UsageError("give --zmk or --zmk-component, not both")
    try:
        if zmk:
            key = await client.import_clear_key(ZMK_TYPE, zmk)
        elif components:
            key = await client.import_clear_components(ZMK_TYPE, list(components))
        else:
            raise click.UsageError("give the link's ZMK: --zmk 32HEX or --zmk-component (x2-3)")
    except HsmError as exc:
        _fail(f"ZMK not imported: {exc}")
    return key.key, key.kcv


def _check_hex_key(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (len(value) != 32 or any(c not in "0123456789abcdefABCDEF"
                                                      for c in value)):
        raise click.BadParameter("a double-length key: 32 hex digits")
    return value


NAME_MAX = 32


def _check_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value or len(value) > NAME_MAX or not all(c.isascii() and (c.isalnum() or c in "-_.")
                                                     for c in value):
        raise click.BadParameter(f"1-{NAME_MAX} letters, digits, '-', '_' or '.'")
    return value


def zmk_options(f):  # type: ignore[no-untyped-def]
    f = click.option("--zmk-component", "zmk_components", multiple=True,
                     help="A clear ZMK component (32 hex); give two or three.")(f)
    return click.option("--zmk", default=None, callback=_check_hex_key,
                        help="The link's clear ZMK, 32 hex (lab use).")(f)


@click.group("route")
def route() -> None:
    """Upstream channels for off-us cards (host-to-host links, protocol.md section 9)."""


@route.command("add")
@click.option("--name", required=True, callback=_check_name, help="Channel name, e.g. NET-A.")
@click.option("--connect", "target", required=True, type=params.ADDRESS,
              help="The upstream's h2h address HOST:PORT.")
@click.option("--bins", required=True, help="BIN prefixes and ranges: 4761,622203-622299.")
@zmk_options
@click.option("--acquirer-id", default=DEFAULT_ACQUIRER_ID, show_default=True,
              help="Our institution id on this link (F32).")
@click.option("--timeout", type=click.FloatRange(0.1, ROUTE_TIMEOUT_MAX), default=10.0,
              show_default=True,
              help="Seconds to wait for a 0210 before 91 + 0420/98 (below the host's"
                   f" {HANDLER_TIMEOUT:g} s handler limit).")
@click.option("--cost-fixed", default="0.00", show_default=True,
              help="Fixed cost per transaction, in currency units.")
@click.option("--cost-rate", default="0", show_default=True,
              help="Variable cost as a fraction of the amount (0.0038 = 0.38%).")
@click.option("--limit-txn", default=None, help="Largest amount this channel takes.")
@click.option("--limit-day", default=None, help="Most one card may spend on it per day.")
@click.option("--maintenance", default=None,
              help="Daily window HH:MM-HH:MM (local time) when the route takes no traffic.")
@click.option("--priority", type=int, default=0, show_default=True,
              help="Last tie-breaker (lower first).")
@click.option("--fail-threshold", type=click.IntRange(1), default=20, show_default=True,
              help="Consecutive failures that demote the channel.")
@click.option("--pending-threshold", type=click.IntRange(1), default=800, show_default=True,
              help="Transactions in flight that demote the channel.")
@click.option("--degrade-hold", type=click.FloatRange(0.1), default=1800.0, show_default=True,
              help="Seconds a demoted channel is held out (doubling while it keeps failing).")
@db_option
@hsm_options
@authorise_option
def route_add(name: str, target: tuple[str, int], bins: str, zmk: str | None,
              zmk_components: tuple[str, ...], acquirer_id: str, timeout: float,
              cost_fixed: str, cost_rate: str, limit_txn: str | None, limit_day: str | None,
              maintenance: str | None, priority: int, fail_threshold: int,
              pending_threshold: int, degrade_hold: float, db_path: Path, hsm: str, lmk: str,
              authorise: bool = False) -> None:
    """Add an upstream channel; the running host signs it on within seconds."""
    try:
        parse_bins(bins)
        rate = parse_rate(cost_rate)
        if maintenance:
            parse_window(maintenance)
    except HostError as exc:
        raise click.BadParameter(str(exc)) from None
    if not acquirer_id.isdigit() or len(acquirer_id) > 11:
        raise click.BadParameter("acquirer id: 1-11 digits")
    zmk_lmk, kcv = with_hsm(lambda c: _import_zmk(c, zmk, zmk_components), hsm, lmk, authorise)
    conn = open_store(db_path)
    try:
        insert_route(conn, name=name, host=target[0], port=target[1], bins=bins,
                     zmk_lmk=zmk_lmk, zmk_kcv=kcv, acquirer_id=acquirer_id,
                     cost_fixed=parse_amount(cost_fixed), cost_rate=rate,
                     limit_txn=parse_amount(limit_txn) if limit_txn else None,
                     limit_day=parse_amount(limit_day) if limit_day else None,
                     maintenance=maintenance, priority=priority, timeout=timeout,
                     fail_threshold=fail_threshold, pending_threshold=pending_threshold,
                     degrade_hold=degrade_hold)
    except HostError as exc:
        _fail(str(exc))
    finally:
        conn.close()
    click.echo(f"route {name} added ({target[0]}:{target[1]}, BINs {bins}), ZMK check value"
               f" {kcv}")


@route.command("list")
@json_option
@db_option
def route_list(as_json: bool, db_path: Path) -> None:
    """Channels with today's figures; live state (up, degraded, in flight, success rate,
    p99) is in the running host's log, metrics and the `routes` state file."""
    conn = _read(db_path)
    rows = route_rows(conn, date.today().isoformat())
    live = _live_state(db_path)
    for row in rows:
        row.update(live.get(row["name"], {"state": "not running"}))
    _emit_rows(rows, as_json, None if as_json else [
        "name", "connect", "bins", "enabled", "state", "in_flight", "success_rate", "p99_ms",
        "volume_today", "cost_today", "degraded_until", "reversals_pending"])


def _live_state(db_path: Path) -> dict[str, dict]:
    """What the running host last wrote about its links (host/links.py)."""
    path = route_state_path(db_path)
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _set_enabled(name: str, db_path: Path, enabled: bool) -> None:
    conn = _read(db_path)
    try:
        set_route_enabled(conn, name, enabled)
    except HostError as exc:
        _fail(str(exc))
    finally:
        conn.close()
    click.echo(f"route {name} {'enabled' if enabled else 'disabled'}")


@route.command("disable")
@click.argument("name")
@db_option
def route_disable(name: str, db_path: Path) -> None:
    """Take a channel out of routing (the running host stops choosing it)."""
    _set_enabled(name, db_path, False)


@route.command("enable")
@click.argument("name")
@db_option
def route_enable(name: str, db_path: Path) -> None:
    """Put a channel back into routing."""
    _set_enabled(name, db_path, True)


@click.group("link")
def link() -> None:
    """Upstream role: acquirers allowed to connect to `serve --h2h-listen`."""


@link.command("add")
@click.option("--name", required=True, callback=_check_name,
              help="The acquirer's name, e.g. ACQ1.")
@click.option("--acquirer-id", required=True, help="Its institution id (F32), 1-11 digits.")
@zmk_options
@db_option
@hsm_options
@authorise_option
def link_add(name: str, acquirer_id: str, zmk: str | None, zmk_components: tuple[str, ...],
             db_path: Path, hsm: str, lmk: str, authorise: bool = False) -> None:
    """Accept links from this acquirer under this ZMK."""
    if not acquirer_id.isdigit() or len(acquirer_id) > 11:
        raise click.BadParameter("acquirer id: 1-11 digits")
    zmk_lmk, kcv = with_hsm(lambda c: _import_zmk(c, zmk, zmk_components), hsm, lmk, authorise)
    conn = open_store(db_path)
    try:
        insert_link(conn, name, acquirer_id, zmk_lmk, kcv)
    except HostError as exc:
        _fail(str(exc))
    finally:
        conn.close()
    click.echo(f"link {name} added (acquirer {acquirer_id}), ZMK check value {kcv}")



@click.group("recon")
def recon() -> None:
    """T+1 check of a route against its upstream's daily file."""


@recon.command("import")
@click.option("--route", "route_name", required=True, help="The route the file is for.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@db_option
def recon_import(route_name: str, file: Path, as_json: bool, db_path: Path) -> None:
    """Compare the upstream's file (`settlement report --link`) with this route's standing
    sales of that date; each difference becomes a reconciliation exception."""
    from host.recon import import_daily_file

    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        _fail(f"cannot read {file}: {exc}")
    conn = _read(db_path)
    try:
        diffs = import_daily_file(conn, route_name, data)
    except (HostError, KeyError, TypeError, ValueError, AttributeError) as exc:  # a bad file
        _fail(f"not imported: {exc}")
    finally:
        conn.close()
    rows = [{"kind": d.kind, "rrn": d.rrn, "network_amount": d.network_amount,
             "acquirer_amount": d.acquirer_amount} for d in diffs]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(f"{len(diffs)} difference(s) recorded as exceptions" if diffs
                   else "route and network agree")
        for row in rows:
            click.echo(f"  {row['kind']}: RRN {row['rrn']} network {row['network_amount']}"
                       f" acquirer {row['acquirer_amount']}")
