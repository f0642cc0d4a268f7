"""A readable view of the contract, generated from the data in specs (``poshost spec``)."""

from __future__ import annotations

from specs.catalog import CHIP_VARIANTS, ECHO_FIELDS, KINDS
from specs.codes import NO_MAC_CODES, RESPONSE_CODES
from specs.emv import ARQC_DATA_TAGS, CHIP_ENTRY_MODES, REVERSAL_TAGS, TAGS
from specs.fields import FIELDS
from specs.framing import MAX_FRAME_LENGTH, MIN_FRAME_LENGTH


def _fields(numbers: frozenset[str]) -> str:
    return " ".join(sorted(numbers, key=int)) or "-"


def render_fields() -> list[str]:
    lines = ["Fields (cup-pos dialect)", f"{'F':>3}  {'format':<18} {'layout':<28} name"]
    for f in FIELDS.values():
        if f.numeric:
            left = f.prefix or f.left_justified
            layout = "BCD, left-justified" if left else "BCD, right-justified"
            layout += ", prefix counts digits" if f.prefix else ""
        elif f.fmt == "b":
            layout = "binary" + (", prefix counts bytes" if f.prefix else "")
        else:
            layout = "ASCII" + (", prefix counts bytes" if f.prefix else ", space-padded")
        lines.append(f"{f.number:>3}  {f.describe():<18} {layout:<28} {f.name}")
    return lines


def render_kinds() -> list[str]:
    lines = ["Messages"]
    for k in KINDS.values():
        code = k.processing_code or ("as original" if k.financial else "-")
        lines.append(
            f"- {k.title}: {k.mti} -> {k.response_mti}  F3 {code}  60.1 {k.type_code or 'orig'}"
            f"  60.3 {k.network_code}  MAC {'yes' if k.mac else 'no'}"
            f"  reversible {'yes' if k.reversible else 'no'}{'  advice' if k.advice else ''}"
        )
        lines.append(f"    request  mandatory: {_fields(k.request_mandatory)}")
        lines.append(f"    request  optional:  {_fields(k.request_optional)}")
        lines.append(f"    response always:    {_fields(k.response_mandatory)}")
        if k.response_on_approval:
            lines.append(f"    response if 00:     {_fields(k.response_on_approval)}")
        lines.append(f"    response optional:  {_fields(k.response_optional)}")
    lines.append(f"Responses echo {', '.join(ECHO_FIELDS)} of the request (sign-on: not 60).")
    lines.append(f"Responses with 39 in {', '.join(sorted(NO_MAC_CODES))} carry no MAC.")
    return lines


def render_chip() -> list[str]:
    """Section 8: the chip variants and the F55 tag table."""
    lines = ["IC (EMV chip) cards"]
    modes = ", ".join(f"{m}x {name}" for m, name in CHIP_ENTRY_MODES.items())
    for v in CHIP_VARIANTS.values():
        k = KINDS[v.kind]
        lines.append(
            f"- {k.title} by chip: {k.mti} F3 {k.processing_code}  F22 {modes}  header category "
            f"{v.header_category}  9C {v.transaction_type}"
        )
        mandatory = _fields(k.request_mandatory | v.request_mandatory)
        lines.append(f"    request  mandatory: {mandatory}")
        lines.append(f"    F55 mandatory tags: {' '.join(v.f55_mandatory)}")
        lines.append(f"    F55 optional tags:  {' '.join(v.f55_optional)}")
        tags = " ".join(v.response_f55)
        lines.append(f"    response F55:       tag {tags} when the ARQC verified")
    lines.append("ARQC input: " + " || ".join(ARQC_DATA_TAGS))
    lines.append("Reversal after a card decline (0400/06) F55: " + " ".join(REVERSAL_TAGS))
    lines.append(f"{'tag':<5} {'length':<16} name")
    for t in TAGS.values():
        lines.append(f"{t.tag:<5} {t.describe():<16} {t.name}")
    return lines


def render_codes() -> list[str]:
    return ["Response codes"] + [f"  {c}  {m}" for c, m in RESPONSE_CODES.items()]


def render_contract() -> str:
    """Everything a client writer needs, from the same data the code uses."""
    framing = [
        "Framing",
        "  TCP: LEN(2, binary BE) | TPDU(5) | HEADER(6) | MTI(2 BCD) | BITMAP(8) | FIELDS",
        f"  payload length {MIN_FRAME_LENGTH}..{MAX_FRAME_LENGTH} bytes; answers swap TPDU NIIs",
        "  serial: STX | LEN(2 BCD) | payload | ETX | LRC (XOR of LEN..ETX); ACK 06 / NAK 15",
    ]
    blocks = (framing, render_fields(), render_kinds(), render_chip(), render_codes())
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"
