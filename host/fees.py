"""Merchant fee models as pure functions over minor units: parsing the ``--model`` text, the
fee of one sale, and the share of it a refund returns.

Nothing here touches the store. Amounts are integers of minor units; percentages are exact
:class:`~decimal.Decimal`; every fee is rounded once, half up, to a whole minor unit, then
held between the model's floor and cap, and never above the amount itself.

Model text: comma-separated terms, each at most once::

    per-txn:0.50              a fixed fee per transaction (alias fixed:)
    percent:0.38%             a percentage of the amount
    tiers:100.00=1%/1000.00=0.5%+0.10/*=0.3%
                              by amount band: up to and including 100.00 -> 1%, up to
                              1000.00 -> 0.5% + 0.10, above -> 0.3% (the whole amount at
                              its band's rate; a band's rate is P%, A or P%+A)
    min:0.10  max:25.00       floor and cap of the fee

>>> model = parse_fee_model("percent:0.38%,min:0.10,max:25.00")
>>> fee_of(model, 10_000), fee_of(model, 1_000), fee_of(model, 10_000_000)
(38, 10, 2500)
>>> fee_returned(38, 10_000, 0, 5_000), fee_returned(38, 10_000, 5_000, 5_000)
(19, 19)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from specs.values import InputError, format_amount, parse_amount

MAX_PERCENT = Decimal(100)
PERCENT_DECIMALS = 4  # the regex below says {1,4}
"""A percentage carries at most 4 decimals (0.3875%)."""
MAX_TIERS = 16
COLLECT = ("internal", "external")
"""internal: the fee is kept out of the settlement (the merchant is paid net); external: the
merchant is paid gross and billed the fee apart."""
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", re.ASCII)
NO_FEE = "none"
"""What ``merchant set --fee`` takes to remove an assignment (so no standard has this name)."""

_PERCENT = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,4})?)%", re.ASCII)
_TERMS = ("per-txn", "fixed", "percent", "tiers", "min", "max")


@dataclass(frozen=True)
class Rate:
    """A percentage of the amount plus a fixed part (minor units)."""

    percent: Decimal = Decimal(0)
    fixed: int = 0

    def apply(self, amount: int) -> Decimal:
        return Decimal(amount) * self.percent / 100 + self.fixed

    def text(self) -> str:
        parts = [f"{self.percent.normalize():f}%"] if self.percent else []
        if self.fixed or not parts:
            parts.append(format_amount(self.fixed))
        return "+".join(parts)


@dataclass(frozen=True)
class Tier:
    upto: int | None
    """Highest amount of the band, inclusive (minor units); None for the last band."""
    rate: Rate


@dataclass(frozen=True)
class FeeModel:
    fixed: int = 0
    percent: Decimal = Decimal(0)
    tiers: tuple[Tier, ...] = ()
    minimum: int | None = None
    maximum: int | None = None

    def rate_for(self, amount: int) -> Rate:
        """The band's rate (with the model's fixed part added), or the flat rate."""
        for tier in self.tiers:
            if tier.upto is None or amount <= tier.upto:
                return Rate(tier.rate.percent, tier.rate.fixed + self.fixed)
        return Rate(self.percent, self.fixed)

    def text(self) -> str:
        """The canonical model text (what is stored and listed)."""
        terms = []
        if self.fixed:
            terms.append(f"per-txn:{format_amount(self.fixed)}")
        if self.percent:
            terms.append(f"percent:{self.percent.normalize():f}%")
        if self.tiers:
            bands = "/".join(f"{'*' if t.upto is None else format_amount(t.upto)}={t.rate.text()}"
                             for t in self.tiers)
            terms.append(f"tiers:{bands}")
        if self.minimum is not None:
            terms.append(f"min:{format_amount(self.minimum)}")
        if self.maximum is not None:
            terms.append(f"max:{format_amount(self.maximum)}")
        return ",".join(terms) or "per-txn:0.00"


def round_half_up(value: Decimal) -> int:
    """Decimal -> whole minor units, half away from zero (0.5 -> 1)."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def fee_of(model: FeeModel, amount: int) -> int:
    """The fee of a sale of ``amount`` minor units: rounded half up, then floor, cap, and at
    most the amount.

    >>> fee_of(parse_fee_model("tiers:100.00=1%/*=0.5%"), 10_000)   # band edge: 1% of 100.00
    100
    >>> fee_of(parse_fee_model("tiers:100.00=1%/*=0.5%"), 10_001)   # 0.5% of 100.01 = 50.005
    50
    """
    fee = round_half_up(model.rate_for(amount).apply(amount))
    if model.minimum is not None:
        fee = max(fee, model.minimum)
    if model.maximum is not None:
        fee = min(fee, model.maximum)
    return max(0, min(fee, amount))


def _share(fee: int, part: int, whole: int) -> int:
    """round_half_up(fee * part / whole) in integers (exact)."""
    return (2 * fee * part + whole) // (2 * whole)


def fee_returned(sale_fee: int, sale_amount: int, refunded_before: int, refund: int) -> int:
    """The part of a sale's fee a refund returns: the sale's fee times the share of the sale
    refunded so far, rounded half up, less what earlier refunds returned. Refunds of a sale
    never return more than its fee, and refunding all of it returns all of it.

    >>> [fee_returned(10, 300, done, 100) for done in (0, 100, 200)]
    [3, 4, 3]
    """
    if sale_amount <= 0:
        return 0
    return (_share(sale_fee, refunded_before + refund, sale_amount)
            - _share(sale_fee, refunded_before, sale_amount))


# --------------------------------------------------------------------------- parsing


def parse_percent(text: str) -> Decimal:
    """'0.38%' -> Decimal('0.38'): 0-100, at most 4 decimals, the % sign required."""
    match = _PERCENT.fullmatch(text.strip())
    if not match or Decimal(match.group(1)) > MAX_PERCENT:
        raise InputError(f"not a percentage: {text!r} (0-100 with at most {PERCENT_DECIMALS}"
                         " decimals and a % sign, e.g. 0.38%)")
    return Decimal(match.group(1))


def _fee_amount(text: str, term: str) -> int:
    try:
        return parse_amount(text, minimum=0)
    except InputError as exc:
        raise InputError(f"{term}: {exc}") from None


def parse_rate(text: str) -> Rate:
    """A band's rate: 'P%', 'A' or 'P%+A'."""
    parts = [p.strip() for p in text.strip().split("+")]
    shape = [p.endswith("%") for p in parts]
    if not all(parts) or shape not in ([True], [False], [True, False]):
        raise InputError(f"not a rate: {text!r} (P%, A or P%+A, e.g. 0.5%+0.10)")
    percent = parse_percent(parts[0]) if shape[0] else Decimal(0)
    fixed = 0 if shape == [True] else _fee_amount(parts[-1], "tiers")
    return Rate(percent, fixed)


def parse_tiers(text: str) -> tuple[Tier, ...]:
    bands = text.split("/")
    if not 1 <= len(bands) <= MAX_TIERS:
        raise InputError(f"tiers: 1 to {MAX_TIERS} bands separated by /")
    tiers: list[Tier] = []
    for i, band in enumerate(bands):
        edge, sep, rate = band.partition("=")
        if not sep:
            raise InputError(f"tiers: band {band!r} must be UPTO=RATE (e.g. 100.00=1%)")
        last = i == len(bands) - 1
        if edge.strip() == "*":
            if not last:
                raise InputError("tiers: only the last band is * (everything above)")
            upto = None
        else:
            if last:
                raise InputError("tiers: the last band must be *=RATE (everything above)")
            upto = _fee_amount(edge, "tiers")
            if tiers and tiers[-1].upto is not None and upto <= tiers[-1].upto:
                raise InputError("tiers: band edges must increase")
        tiers.append(Tier(upto, parse_rate(rate)))
    return tuple(tiers)


def parse_fee_model(text: str) -> FeeModel:
    """The ``--model`` text -> a :class:`FeeModel` (InputError with the reason otherwise).

    >>> parse_fee_model("per-txn:0.50,min:1.00").text()
    'per-txn:0.50,min:1.00'
    >>> parse_fee_model("percent:1%,tiers:*=2%")
    Traceback (most recent call last):
    ...
    specs.values.InputError: percent and tiers exclude each other
    """
    if not text.strip():
        raise InputError("fee model must not be empty (e.g. percent:0.38%,min:0.10)")
    seen: dict[str, str] = {}
    for term in text.split(","):
        key, sep, value = term.strip().partition(":")
        key = key.strip().lower()
        if not sep or key not in _TERMS:
            raise InputError(f"unknown fee term {term.strip()!r} (terms: per-txn:A, percent:P%,"
                             " tiers:UPTO=RATE/.../*=RATE, min:A, max:A)")
        key = "per-txn" if key == "fixed" else key
        if key in seen:
            raise InputError(f"{key} given twice")
        seen[key] = value.strip()
    if "percent" in seen and "tiers" in seen:
        raise InputError("percent and tiers exclude each other")
    model = FeeModel(
        fixed=_fee_amount(seen["per-txn"], "per-txn") if "per-txn" in seen else 0,
        percent=parse_percent(seen["percent"]) if "percent" in seen else Decimal(0),
        tiers=parse_tiers(seen["tiers"]) if "tiers" in seen else (),
        minimum=_fee_amount(seen["min"], "min") if "min" in seen else None,
        maximum=_fee_amount(seen["max"], "max") if "max" in seen else None,
    )
    if (model.minimum is not None and model.maximum is not None
            and model.minimum > model.maximum):
        raise InputError("min is more than max")
    return model


def parse_standard_name(text: str) -> str:
    """A fee standard's name: 1-32 of A-Z a-z 0-9 . _ - (not 'none')."""
    name = text.strip()
    if not NAME_RE.fullmatch(name) or name.lower() == NO_FEE:
        raise InputError(f"fee standard name must be 1-32 letters, digits, '.', '_' or '-'"
                         f" (not {NO_FEE!r}), not {text!r}")
    return name


def parse_standard_or_none(text: str) -> str:
    """``merchant set --fee``: a standard's name, or 'none' (removes the assignment)."""
    return NO_FEE if text.strip().lower() == NO_FEE else parse_standard_name(text)
