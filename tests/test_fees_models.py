"""Fee models (host/fees.py), table-driven: band edges, floors, caps, rounding, refunds'
proportional return, and the --model text's errors."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from host.fees import fee_of, fee_returned, parse_fee_model
from specs.values import InputError

STD = "percent:0.38%,min:0.10,max:25.00"
TIERS = "tiers:100.00=1%/1000.00=0.5%+0.10/*=0.3%,min:0.05,max:10.00"

CASES = [
    # model, amount (minor), fee (minor)
    ("per-txn:0.50", 1, 1),              # never more than the amount
    ("per-txn:0.50", 50, 50),
    ("per-txn:0.50", 12_345, 50),
    ("fixed:0.50", 12_345, 50),          # alias
    (STD, 1_000, 10),                    # 3.8 -> floor 10
    (STD, 2_631, 10),                    # 9.9978 -> 10 (round), floor 10
    (STD, 2_632, 10),                    # 10.0016 -> 10
    (STD, 2_763, 10),                    # 10.4994 -> 10
    (STD, 2_764, 11),                    # 10.5032 -> 11
    (STD, 10_000, 38),
    (STD, 657_894, 2_500),               # 2499.9972 -> 2500 = cap
    (STD, 657_900, 2_500),               # 2500.02 -> cap 2500
    (STD, 10**11, 2_500),
    ("percent:1%", 50, 1),               # 0.5 -> 1: half up
    ("percent:1%", 49, 0),               # 0.49 -> 0
    ("percent:0.0001%", 10**11, 100_000),  # 4 decimals of a percent, exactly
    ("percent:0.0001%", 500_000, 1),     # 0.5 -> 1
    ("percent:100%", 12_345, 12_345),
    ("percent:1%,per-txn:0.10", 10_000, 110),
    (TIERS, 10_000, 100),                # edge of band 1, inclusive: 1% of 100.00
    (TIERS, 10_001, 60),                 # band 2: 50.005 -> 50, + 10 fixed
    (TIERS, 100_000, 510),               # edge of band 2: 500 + 10
    (TIERS, 100_001, 300),               # band 3: 300.003 -> 300
    (TIERS, 100, 5),                     # 1 -> floor 5
    (TIERS, 1_000_000, 1_000),           # 3000 -> cap 1000
    ("tiers:100.00=0.20/*=1%", 10_000, 20),   # a fixed-only band
    ("tiers:*=2%", 333, 7),              # one band: 6.66 -> 7
]


@pytest.mark.parametrize(("model", "amount", "fee"), CASES)
def test_fee_of(model: str, amount: int, fee: int) -> None:
    assert fee_of(parse_fee_model(model), amount) == fee


@pytest.mark.parametrize("model", [STD, TIERS, "per-txn:0.50", "percent:1.2345%,max:0.99"])
def test_canonical_text_round_trips(model: str) -> None:
    parsed = parse_fee_model(model)
    assert parse_fee_model(parsed.text()) == parsed


BAD = [
    ("", "empty"), ("percent", "unknown fee term"), ("percent:0.38", "not a percentage"),
    ("percent:101%", "not a percentage"), ("percent:0.12345%", "not a percentage"),
    ("percent:-1%", "not a percentage"), ("flat:1.00", "unknown fee term"),
    ("min:1.00,min:2.00", "given twice"), ("min:2.00,max:1.00", "min is more than max"),
    ("percent:1%,tiers:*=2%", "exclude each other"), ("tiers:100.00=1%", "last band"),
    ("tiers:*=1%/100.00=2%", "only the last band"), ("tiers:200.00=1%/100.00=1%/*=1%",
                                                     "must increase"),
    ("tiers:100.00/*=1%", "UPTO=RATE"), ("tiers:100.00=1%+2%/*=1%", "not a rate"),
    ("tiers:100.00=0.10+1%/*=1%", "not a rate"), ("per-txn:1,5", "unknown fee term"),
    ("per-txn:0.123", "per-txn"), ("max:1e3", "max"), ("percent:\u0661%", "not a percentage"),
]


@pytest.mark.parametrize(("text", "why"), BAD)
def test_bad_models_say_why(text: str, why: str) -> None:
    with pytest.raises(InputError, match=why):
        parse_fee_model(text)


REFUNDS = [
    # sale fee, sale amount, refunds in order -> fee returned by each
    (38, 10_000, [10_000], [38]),
    (38, 10_000, [5_000, 5_000], [19, 19]),
    (10, 300, [100, 100, 100], [3, 4, 3]),
    (25, 1_000, [1, 1, 998], [0, 0, 25]),
    (2_500, 10**9, [10**9 - 1, 1], [2_500, 0]),
    (0, 10_000, [10_000], [0]),
]


@pytest.mark.parametrize(("fee", "amount", "refunds", "returned"), REFUNDS)
def test_refunds_return_the_fee_in_proportion(fee: int, amount: int, refunds: list[int],
                                              returned: list[int]) -> None:
    done, out = 0, []
    for refund in refunds:
        out.append(fee_returned(fee, amount, done, refund))
        done += refund
    assert out == returned


@given(st.integers(0, 10**6), st.integers(1, 10**12), st.data())
def test_any_split_of_a_full_refund_returns_exactly_the_fee(fee: int, amount: int,
                                                            data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(1, amount), max_size=6)))
    parts = [b - a for a, b in zip([0, *cuts], [*cuts, amount], strict=True) if b > a]
    done, total = 0, 0
    for part in parts:
        back = fee_returned(fee, amount, done, part)
        assert back >= 0
        total += back
        done += part
        assert Decimal(fee) * done / amount - total <= Decimal(1) / 2  # the share so far
    assert total == fee
