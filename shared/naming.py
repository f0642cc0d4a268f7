"""Names of lab terminals: the TIDs ``poshost terminal add-range`` provisions and
``posterm load --tid-prefix`` drives."""

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
