"""Values a person types, checked one way for all three CLIs: amounts, PANs (Luhn), TIDs,
MIDs, expiry dates, report dates, TCP addresses and ports, names.

Pure functions; each raises :class:`InputError` (a ``ValueError``) with a message fit for a
command line. Digits are ASCII only (``"١٢٣"`` is not an amount).

>>> parse_amount("1000.00"), parse_amount("0.5"), format_amount(100050)
(100000, 50, '1000.50')
>>> luhn_ok("6222021234567890128"), luhn_ok("6222021234567890127")
(True, False)
>>> parse_address("127.0.0.1:5000")
('127.0.0.1', 5000)
"""

from __future__ import annotations

import re
from datetime import date

from specs.errors import SpecError
from specs.fields import FIELDS

AMOUNT_DIGITS = FIELDS[4].length
"""F4 and the amount in F54 are n12 minor units: the most any amount or balance can be."""
MAX_AMOUNT_MINOR = 10 ** AMOUNT_DIGITS - 1
MAX_AMOUNT_TEXT = f"{MAX_AMOUNT_MINOR // 100}.{MAX_AMOUNT_MINOR % 100:02d}"
TID_LENGTH = FIELDS[41].length
MID_LENGTH = FIELDS[42].length
MAX_PORT = 65535
MAX_NAME = 80
"""Longest merchant name or comment the CLIs accept."""

_AMOUNT = re.compile(r"[0-9]{1,20}(\.[0-9]{1,2})?", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_EXPIRY = re.compile(r"[0-9]{2}(0[1-9]|1[0-2])", re.ASCII)
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


class InputError(SpecError, ValueError):
    """A value typed by a user that cannot be used; the message says why."""


def parse_amount(text: str, *, minimum: int = 1) -> int:
    """An amount in major units with at most 2 decimals -> minor units, within what the wire
    carries (n12 minor units) and at least ``minimum`` minor units.

    >>> parse_amount("123.45"), parse_amount("0", minimum=0)
    (12345, 0)
    """
    value = text.strip()
    if not _AMOUNT.fullmatch(value):
        raise InputError(f"not an amount: {text!r} (major units, at most 2 decimals,"
                         f" e.g. 123.45; at most {MAX_AMOUNT_TEXT})")
    whole, _, cents = value.partition(".")
    minor = int(whole) * 100 + int(cents.ljust(2, "0") or "0")
    if minor > MAX_AMOUNT_MINOR:
        raise InputError(f"amount {value} is more than the wire can carry ({MAX_AMOUNT_TEXT})")
    if minor < minimum:
        raise InputError(f"amount must be at least {format_amount(minimum)}, not {value}")
    return minor


def format_amount(minor: int) -> str:
    """Minor units -> major units text, as amounts are entered.

    >>> format_amount(5), format_amount(-12345)
    ('0.05', '-123.45')
    """
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d}"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def parse_pan(text: str, *, luhn: bool = True) -> str:
    """12-19 ASCII digits passing the Luhn check (unless ``luhn`` is False)."""
    pan = text.strip()
    if not _DIGITS.fullmatch(pan) or not 12 <= len(pan) <= 19:
        raise InputError("PAN must be 12-19 digits")
    if luhn and not luhn_ok(pan):
        raise InputError("PAN fails the Luhn check (a typo?)")
    return pan


def parse_expiry(text: str) -> str:
    if not _EXPIRY.fullmatch(text.strip()):
        raise InputError(f"expiry must be YYMM (month 01-12), not {text!r}")
    return text.strip()


def parse_pin(text: str) -> str:
    if not _DIGITS.fullmatch(text) or not 4 <= len(text) <= 12:
        raise InputError("PIN must be 4 to 12 digits")
    return text


def _ident(text: str, length: int, what: str, field: int) -> str:
    if len(text) != length or not text.isascii() or not text.isprintable() or " " in text:
        raise InputError(f"{what} must be exactly {length} printable ASCII characters without"
                         f" spaces (F{field}), not {text!r}")
    return text


def parse_tid(text: str) -> str:
    return _ident(text, TID_LENGTH, "TID", 41)


def parse_mid(text: str) -> str:
    return _ident(text, MID_LENGTH, "MID", 42)


def parse_name(text: str, what: str = "name") -> str:
    """A non-empty single-line text (merchant name, comment)."""
    value = text.strip()
    if not value:
        raise InputError(f"{what} must not be empty")
    if len(value) > MAX_NAME or not value.isprintable():
        raise InputError(f"{what} must be 1-{MAX_NAME} printable characters on one line")
    return value


def parse_day(text: str) -> str:
    """A calendar date YYYY-MM-DD that exists."""
    try:
        if not _DAY.fullmatch(text):
            raise ValueError
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise InputError(f"not a date: {text!r} (YYYY-MM-DD)") from None


def parse_port(text: str | int, *, allow_zero: bool = False) -> int:
    value = str(text).strip()
    low = 0 if allow_zero else 1
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= MAX_PORT:
        raise InputError(f"port must be {low}-{MAX_PORT}, not {text!r}")
    return int(value)


def parse_host(text: str) -> str:
    """A host name or IP address: ASCII, no spaces, DNS lengths (253, labels of 63)."""
    host = text.strip().strip("[]")
    if (not host or not host.isascii() or not host.isprintable() or " " in host
            or len(host) > 253 or any(len(label) > 63 for label in host.split("."))):
        raise InputError(f"not a host name or address: {text!r}")
    return host


def parse_address(text: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """HOST:PORT ([v6]:PORT for IPv6) -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise InputError(f"address must be HOST:PORT, not {text!r}")
    try:
        host = parse_host(host)
    except InputError:
        raise InputError(f"address must be HOST:PORT, not {text!r}") from None
    return host, parse_port(port, allow_zero=allow_zero)
