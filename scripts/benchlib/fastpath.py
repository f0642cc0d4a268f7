"""Fast paths of the load generator, so it is not the bottleneck it measures.

A sale differs from the previous one of the same terminal only in F11 and F64, so it is made by
patching the STAN into a template built (and validated) once through :mod:`specs`. Responses
are split into fields by a small offset walker over the same field table; a response is
believed only after the checks a terminal makes: MTI + 10, F39 present, F3/4/11/41/42/60 byte
for byte equal to the request's, approval fields present, F64 verified (X9.19).

>>> lay = field_slices(bytes.fromhex("0820") + bytes.fromhex("0020000000800000")
...                    + bytes.fromhex("000001") + b"12345678")
>>> sorted(lay)
['11', '41']
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from benchlib import wire
from hsm_sim.crypto import generate_mac_x919 as x919
from specs.codes import NO_MAC_CODES
from specs.errors import SpecError
from specs.fields import MAC_LENGTH
from specs.framing import BODY_OFFSET, HEADER_LENGTH, MTI_LENGTH, TPDU_LENGTH
from specs.messages import field_spans

ECHO = ("3", "4", "11", "41", "42", "60")
APPROVAL_FIELDS = ("37", "38")


class Malformed(Exception):
    """Bytes the offset walker cannot split (the caller treats it as undecodable)."""


def field_slices(body: bytes) -> dict[str, tuple[int, int]]:
    """Start and end offset of every field's data (after any length prefix) in ``body``."""
    try:
        spans = field_spans(body)
    except SpecError as exc:
        raise Malformed(str(exc)) from None
    return {str(number): span for number, span in spans.items()}


@dataclass
class SaleTemplate:
    """A terminal's sale frame with a hole for the STAN."""

    head: bytes
    """TPDU + header + MTI .. byte before F11 data."""
    tail: bytes
    """Byte after F11 .. byte before F64."""
    echo: dict[str, bytes]
    """Raw bytes of the echo fields (F11 excluded: it changes)."""
    mak: bytes

    @classmethod
    def build(cls, doc: wire.Message, keys: wire.Keys) -> SaleTemplate:
        assert keys.mak is not None
        framed = wire.encode_request(doc, keys)
        body = framed[2 + BODY_OFFSET :]
        lay = field_slices(body)
        s11, e11 = lay["11"]
        prefix = framed[2 : 2 + BODY_OFFSET]
        echo = {k: body[a:b] for k, (a, b) in lay.items() if k in ECHO and k != "11"}
        return cls(prefix + body[:s11], body[e11:-MAC_LENGTH], echo, keys.mak)

    def frame(self, stan: int) -> tuple[bytes, bytes]:
        """(length-prefixed frame, STAN bytes) of the sale with this STAN."""
        stan_bytes = bytes.fromhex(f"{stan:06d}")
        mac_data = self.head[BODY_OFFSET:] + stan_bytes + self.tail
        payload = self.head + stan_bytes + self.tail + x919(self.mak, mac_data)
        return len(payload).to_bytes(2, "big") + payload, stan_bytes

    def check(self, payload: bytes, stan_bytes: bytes) -> tuple[str, dict[str, str]]:
        """(F39, approval fields) of a believable response; raises BadResponse otherwise."""
        if len(payload) < TPDU_LENGTH + HEADER_LENGTH or payload[0] != 0x60:
            raise wire.BadResponse("undecodable response", "06")
        body = payload[BODY_OFFSET:]
        try:
            lay = field_slices(body)
        except (Malformed, ValueError):
            raise wire.BadResponse("undecodable response", "06") from None
        if body[:MTI_LENGTH] != b"\x02\x10" or "39" not in lay:
            raise wire.BadResponse("not a 0210", "06")
        for key, raw in self.echo.items():
            a, b = lay.get(key, (0, 0))
            if body[a:b] != raw:
                raise wire.BadResponse(f"field {key} not echoed", "06")
        a, b = lay.get("11", (0, 0))
        if body[a:b] != stan_bytes:
            raise wire.BadResponse("field 11 not echoed", "06")
        a, b = lay["39"]
        code = body[a:b].decode("ascii", "replace")
        if code not in NO_MAC_CODES and ("64" not in lay or not hmac.compare_digest(
                x919(self.mak, body[:-MAC_LENGTH]), body[-MAC_LENGTH:])):
            raise wire.BadResponse("response MAC does not verify", "A0")
        extra: dict[str, str] = {}
        for key in ("13", "37", "38"):
            if key in lay:
                a, b = lay[key]
                extra[key] = body[a:b].hex() if key == "13" else body[a:b].decode("ascii")
        if code == "00" and not all(k in extra for k in APPROVAL_FIELDS):
            raise wire.BadResponse("approval without 37/38", "06")
        return code, extra
