"""`poshost fee ...`, `poshost merchant set` and `poshost settlement merchants|margins`: fee
standards, their assignment to merchants, and the fee side of the day's settlement.

Registered on host/cli.py's groups when that module is imported (its last line), under the
same conventions: checked values exit 2, refusals exit 1, ``--json`` for scripts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from host import feereport, fees, feestore
from host.cli import _emit_rows, _fail, _read, db_option, json_option, main, merchant, settlement
from host.errors import HostError
from specs import params
from specs.params import Checked
from specs.values import format_amount

MODEL = Checked("model", fees.parse_fee_model)
STANDARD = Checked("name", fees.parse_standard_name)
STANDARD_OR_NONE = Checked("name", fees.parse_standard_or_none)
MODEL_HELP = ("Fee model: comma-separated per-txn:A, percent:P%, tiers:UPTO=RATE/.../*=RATE"
              " (RATE is P%, A or P%+A; bands up to and including UPTO), min:A, max:A;"
              " e.g. percent:0.38%,min:0.10,max:25.00")
COLLECT_HELP = ("internal: the fee is kept out of the settlement (merchant paid net);"
                " external: merchant paid gross, fee billed apart")


@main.group()
def fee() -> None:
    """Fee standards: named, versioned merchant fee models."""


@fee.command("add")
@click.option("--name", required=True, type=STANDARD, help="The standard's name, e.g. STD-1.")
@click.option("--model", required=True, type=MODEL, help=MODEL_HELP)
@click.option("--collect", type=click.Choice(fees.COLLECT), default="internal",
              show_default=True, help=COLLECT_HELP)
@db_option
def fee_add(name: str, model: fees.FeeModel, collect: str, db_path: Path) -> None:
    """Add a fee standard (version 1); assign it with poshost merchant set --fee NAME."""
    try:
        feestore.add_standard(_read(db_path), name, model, collect)
    except HostError as exc:
        _fail(str(exc))
    click.echo(f"fee standard {name} v1 added: {model.text()} ({collect})")


@fee.command("change")
@click.option("--name", required=True, type=STANDARD, help="An existing standard's name.")
@click.option("--model", type=MODEL, default=None, help=f"{MODEL_HELP} (default: unchanged)")
@click.option("--collect", type=click.Choice(fees.COLLECT), default=None,
              help="internal or external (default: unchanged)")
@db_option
def fee_change(name: str, model: fees.FeeModel | None, collect: str | None,
               db_path: Path) -> None:
    """A new version of a standard, for transactions recorded from now on (earlier ones
    keep the version they were recorded under)."""
    if model is None and collect is None:
        raise click.UsageError("give --model and/or --collect")
    try:
        version = feestore.change_standard(_read(db_path), name, model, collect)
    except HostError as exc:
        _fail(str(exc))
    click.echo(f"fee standard {name} v{version} in force from the next transaction")


@fee.command("list")
@json_option
@db_option
def fee_list(as_json: bool, db_path: Path) -> None:
    """Every version of every standard (from_txn_after: applies to transaction ids above)."""
    _emit_rows(feestore.list_standards(_read(db_path)), as_json)


@fee.command("assignments")
@click.option("--mid", default=None, type=params.MID, help="Only this merchant's.")
@json_option
@db_option
def fee_assignments(mid: str | None, as_json: bool, db_path: Path) -> None:
    """Which standard each merchant is on (per organisation / entry mode), in order; the
    last row of each scope is in force."""
    _emit_rows(feestore.list_assignments(_read(db_path), mid), as_json)


@merchant.command("set")
@click.option("--mid", required=True, type=params.MID, help="The merchant's id (15 characters).")
@click.option("--fee", "standard", required=True, type=STANDARD_OR_NONE,
              help="Fee standard from the next transaction on ('none' removes the assignment).")
@click.option("--organisation", type=click.Choice(feestore.ORGANISATIONS), default=None,
              help="Only for cards of this organisation (more specific rules win).")
@click.option("--entry-mode", type=click.Choice(tuple(feestore.ENTRY_MODES)), default=None,
              help="Only for this entry mode (more specific rules win).")
@db_option
def merchant_set(mid: str, standard: str, organisation: str | None, entry_mode: str | None,
                 db_path: Path) -> None:
    """Put a merchant on a fee standard (for all its transactions, or one card organisation
    and/or entry mode)."""
    name = None if standard == fees.NO_FEE else standard
    try:
        feestore.assign(_read(db_path), mid, name, organisation or feestore.ANY,
                        entry_mode or feestore.ANY)
    except HostError as exc:
        _fail(str(exc))
    scope = " ".join(x for x in (organisation, entry_mode) if x) or "all transactions"
    click.echo(f"merchant {mid} ({scope}): fee standard {standard} from the next transaction")


def _major(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{k: format_amount(v) if k in keys else v for k, v in r.items()} for r in rows]


MONEY = ("gross", "refunds", "fees", "fees_internal", "fees_external", "net_to_pay",
         "fees_to_bill", "channel_cost", "margin", "revenue", "cost")


@settlement.command("merchants")
@click.option("--date", "day", required=True, type=params.DAY,
              help="Settlement date YYYY-MM-DD.")
@json_option
@db_option
def settlement_merchants(day: str, as_json: bool, db_path: Path) -> None:
    """Per merchant for the day: gross, refunds, fees, net to pay (internal collection) and
    fees to bill (external); amounts in major units (minor units with --json)."""
    rows = feereport.fee_settlement_report(_read(db_path), day)["merchant_days"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _emit_rows(_major(rows, MONEY), False, ["mid", "name", "sales", "gross", "refunds",
                                             "fees", "net_to_pay", "fees_to_bill",
                                             "standards"])


@settlement.command("margins")
@click.option("--date", "day", required=True, type=params.DAY,
              help="Settlement date YYYY-MM-DD.")
@json_option
@db_option
def settlement_margins(day: str, as_json: bool, db_path: Path) -> None:
    """Per fee standard and per channel for the day: revenue (fees), cost (channel costs)
    and margin; amounts in major units (minor units with --json)."""
    report = feereport.fee_settlement_report(_read(db_path), day)
    if as_json:
        click.echo(json.dumps({k: report[k] for k in ("fee_standards", "channels")},
                              indent=2))
        return
    for section, label in (("fee_standards", "fee_standard"), ("channels", "channel")):
        rows = [{label: k, **v} for k, v in report[section].items()]
        _emit_rows(_major(rows, MONEY), False)
