"""`poshost spec` prints the contract from specs' data: every field, every kind, every code."""

from __future__ import annotations

from click.testing import CliRunner

from host.cli import main
from specs.catalog import KINDS
from specs.codes import RESPONSE_CODES
from specs.fields import FIELDS


def test_spec_command_lists_every_field_kind_and_code() -> None:
    result = CliRunner().invoke(main, ["spec"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for f in FIELDS.values():
        assert any(line.split()[:2] == [str(f.number), f.describe().split()[0]] for line in lines)
    for kind in KINDS.values():
        assert f"- {kind.title}: {kind.mti} -> {kind.response_mti}" in result.output
    for code, meaning in RESPONSE_CODES.items():
        assert f"  {code}  {meaning}" in result.output
