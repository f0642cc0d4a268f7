"""Names of lab terminals and cards: the TIDs ``poshost terminal add-range`` provisions and
``posterm load --tid-prefix`` drives (the benches name their fleets the same way), and
Luhn-valid lab PANs."""

from __future__ import annotations

from shared.errors import NamingError

TID_LENGTH = 8
"""F41 is ans 8."""


def terminal_ids(prefix: str, count: int) -> list[str]:
    """TIDs PREFIX + zero-filled index, 8 characters: ``LT000001`` ...

    >>> terminal_ids("LT", 2)
    ['LT000001', 'LT000002']
    """
    width = TID_LENGTH - len(prefix)
    if width < 1 or count >= 10**width:
        raise NamingError(f"TID prefix {prefix!r} leaves no room for {count} terminals")
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def luhn_digit(body: str) -> str:
    """Check digit that makes ``body + digit`` pass the Luhn test.

    >>> luhn_digit("622202123456789012")
    '8'
    """
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str(-total % 10)


def lab_pan(prefix: str, serial: int, length: int = 19) -> str:
    """The ``serial``-th lab card PAN under BIN ``prefix``: zero-filled, valid Luhn digit.

    >>> lab_pan("622202", 1)
    '6222020000000000018'
    """
    body = prefix + f"{serial:0{length - len(prefix) - 1}d}"
    return body + luhn_digit(body)
