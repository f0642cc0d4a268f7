"""Click parameter types over :mod:`specs.values`, shared by the three CLIs so a value is
checked, and refused, the same way everywhere: a bad value is a usage error (exit 2) whose
message names the option, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import click

from specs import values
from specs.values import InputError


class Checked(click.ParamType):
    """A text option checked (and normalised) by a :mod:`specs.values` parser."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except InputError as exc:
            self.fail(str(exc), param, ctx)


AMOUNT = Checked("amount", values.parse_amount)
"""An amount above 0 in major units -> minor units."""
BALANCE = Checked("amount", partial(values.parse_amount, minimum=0))
"""An amount of 0 or more in major units -> minor units."""
PAN = Checked("pan", values.parse_pan)
"""A new card's PAN: 12-19 digits passing Luhn."""
CARD_NUMBER = Checked("pan", partial(values.parse_pan, luhn=False))
"""A PAN that names an existing card (the demo cards predate the Luhn check)."""
EXPIRY = Checked("yymm", values.parse_expiry)
PIN = Checked("pin", values.parse_pin)
TID = Checked("tid", values.parse_tid)
MID = Checked("mid", values.parse_mid)
NAME = Checked("text", values.parse_name)
COMMENT = Checked("text", partial(values.parse_name, what="comment"))
DAY = Checked("yyyy-mm-dd", values.parse_day)
PORT = Checked("port", values.parse_port)
LISTEN_PORT = Checked("port", partial(values.parse_port, allow_zero=True))
HOST = Checked("host", values.parse_host)
ADDRESS = Checked("host:port", values.parse_address)
"""Where to connect: HOST:PORT -> (host, port)."""
LISTEN = Checked("host:port", partial(values.parse_address, allow_zero=True))
"""Where to listen: HOST:PORT, port 0 for any -> (host, port)."""


def lab_banner(text: str) -> str:
    """How lab-only data is marked wherever a CLI prints it."""
    return f"LAB DATA (published test values, never for live use): {text}"
