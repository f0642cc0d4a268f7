"""A readable view of the contract, generated from the data in specs (``poshost spec``)."""

from __future__ import annotations

from specs.catalog import ECHO_FIELDS, KINDS
from specs.codes import NO_MAC_CODES, RESPONSE_CODES
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
    blocks = (framing, render_fields(), render_kinds(), render_codes())
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"
