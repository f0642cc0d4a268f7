"""The repository carries its own wire-contract document, generated from specs/: this test
fails when specs/ changed and specs/CONTRACT.md was not regenerated (scripts/contract-doc)."""

from __future__ import annotations

from specs.contract_doc import CONTRACT_PATH, render_document


def test_contract_document_is_current() -> None:
    assert CONTRACT_PATH.read_text(encoding="utf-8") == render_document(), (
        "specs/CONTRACT.md is stale: run scripts/contract-doc")


def test_contract_document_covers_every_field_and_the_cli_conventions() -> None:
    from specs.fields import FIELDS

    text = CONTRACT_PATH.read_text(encoding="utf-8")
    for number, field in FIELDS.items():
        assert field.name in text, number
    assert "9999999999.99" in text and "host malfunction" in text
