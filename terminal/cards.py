"""Card data and amounts as typed by a user, checked before any message is built.

>>> Card.from_track2("6222021234567890128=30121010000000000").expiry
'3012'
>>> parse_amount("123.45")
12345
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from specs import values
from specs.fields import FIELDS
from terminal.errors import BadInput

_PAN = re.compile(r"\d{12,19}", re.ASCII)
_TRACK2 = re.compile(r"(\d{12,19})[D=](\d{4})(\d*)", re.ASCII)
_EXPIRY = re.compile(r"\d{2}(0[1-9]|1[0-2])", re.ASCII)
_PIN = re.compile(r"\d{4,12}", re.ASCII)
MAX_AMOUNT_MINOR = values.MAX_AMOUNT_MINOR

ENTRY_MANUAL, ENTRY_SWIPE = "01", "02"
PIN_ENTERED, NO_PIN = "1", "2"


@dataclass(frozen=True)
class Card:
    """A card as the terminal read it: swiped (track 2) or keyed (PAN + expiry YYMM)."""

    pan: str
    expiry: str
    track2: str | None = None

    @classmethod
    def from_track2(cls, data: str) -> Card:
        """Track 2 with ``=`` or ``D`` as separator (optionally within ``;...?`` sentinels)."""
        text = data.strip().removeprefix(";").removesuffix("?").upper()
        m = _TRACK2.fullmatch(text)
        if m is None or len(text) > FIELDS[35].length:
            raise BadInput(
                "malformed track 2: expected PAN (12-19 digits), '=' or 'D', YYMM expiry, "
                f"digits, at most {FIELDS[35].length} characters"
            )
        pan, expiry, _ = m.groups()
        _check_expiry(expiry)
        return cls(pan, expiry, f"{pan}D{text[len(pan) + 1:]}")

    @classmethod
    def keyed(cls, pan: str, expiry: str) -> Card:
        pan = pan.strip()
        if not _PAN.fullmatch(pan):
            raise BadInput("malformed PAN: expected 12-19 digits")
        _check_expiry(expiry.strip())
        return cls(pan, expiry.strip())

    @property
    def swiped(self) -> bool:
        return self.track2 is not None

    def entry_mode(self, with_pin: bool) -> str:
        """F22: 02x swipe / 01x manual; third digit 1 with PIN, 2 without."""
        mode = ENTRY_SWIPE if self.swiped else ENTRY_MANUAL
        return mode + (PIN_ENTERED if with_pin else NO_PIN)

    def fields(self) -> dict[str, str]:
        """Card fields of a request: track 2 when swiped, else PAN and expiry."""
        if self.track2 is not None:
            return {"35": self.track2}
        return {"2": self.pan, "14": self.expiry}


def _check_expiry(expiry: str) -> None:
    if not _EXPIRY.fullmatch(expiry):
        raise BadInput("malformed expiry: expected YYMM")


def card_from_options(track2: str | None, pan: str | None, expiry: str | None) -> Card:
    """The card given on a command line: ``--track2`` or ``--pan`` with ``--expiry``."""
    if track2 and (pan or expiry):
        raise BadInput("give either --track2 or --pan/--expiry, not both")
    if track2:
        return Card.from_track2(track2)
    if pan and expiry:
        return Card.keyed(pan, expiry)
    raise BadInput("card data missing: give --track2 DATA or --pan PAN --expiry YYMM")


def check_pin(pin: str) -> str:
    if not _PIN.fullmatch(pin):
        raise BadInput("PIN must be 4 to 12 digits")
    return pin


def parse_amount(text: str) -> int:
    """An amount in major units with up to 2 decimals ("123.45", "10") -> minor units, above
    0 and within F4 (one parser for every CLI: specs.values)."""
    try:
        return values.parse_amount(text)
    except values.InputError as exc:
        raise BadInput(str(exc)) from None


def format_amount(minor: int) -> str:
    """Minor units -> "123.45".

    >>> format_amount(12345), format_amount(-5)
    ('123.45', '-0.05')
    """
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d}"


def parse_trace(text: str | int) -> str:
    """A STAN / trace / batch number given by the user -> 6 digits."""
    value = str(text).strip()
    if not value.isascii() or not value.isdigit() or not 0 <= int(value) <= 999999:
        raise BadInput(f"malformed trace/batch number {value!r}: expected up to 6 digits")
    return f"{int(value):06d}"
