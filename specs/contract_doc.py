"""The repository's own wire-contract document, ``specs/CONTRACT.md``, generated from the
same data in specs/ that the host and posterm use (``scripts/contract-doc`` writes it; a test
fails when it is stale)."""

from __future__ import annotations

from pathlib import Path

from specs.values import MAX_AMOUNT_TEXT
from specs.view import render_contract

CONTRACT_PATH = Path(__file__).with_name("CONTRACT.md")

_INTRO = """\
# poshost wire contract (generated)

Generated from `specs/` by `scripts/contract-doc` (the same text as `poshost spec`); do not
edit by hand: `tests/test_hardening_contract.py` fails when it is out of date. The prose
contract it implements is the cup-pos dialect (terminal <-> host) and the payShield host
command set (host <-> HSM); every place where we had to decide what that contract leaves open
is in [DECISIONS.md](DECISIONS.md).

Conventions the three CLIs share when they put values on the wire:
- amounts are typed in major units with at most 2 decimals and travel in F4 / F54 as n12
  minor units: at most {max_amount};
- TID (F41) is exactly 8 and MID (F42) exactly 15 printable ASCII characters;
- PANs are 12-19 ASCII digits; new cards must pass the Luhn check;
- a 96 may come without F64 when the host cannot reach its HSM: the terminal shows it as a
  host malfunction and keeps its pending reversal;
- a card whose CVM is `pin` is declined 55 when a sale or balance inquiry carries no F52.

```text
"""


def render_document() -> str:
    return _INTRO.format(max_amount=MAX_AMOUNT_TEXT) + render_contract() + "```\n"


def write_document(path: Path = CONTRACT_PATH) -> Path:
    path.write_text(render_document(), encoding="utf-8")
    return path
