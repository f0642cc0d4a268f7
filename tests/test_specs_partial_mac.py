"""DecodeError keeps what decoded before the fault (so the host can still name the terminal),
and the two-step MAC encoding async callers use gives what encode_with_mac gives."""

from __future__ import annotations

import pytest

from specs.errors import DecodeError, EncodeError
from specs.messages import (
    attach_mac,
    decode_message,
    encode_for_mac,
    encode_message,
    encode_with_mac,
    mac_block,
)


def test_decode_error_keeps_the_fields_decoded_before_the_fault() -> None:
    doc = {"t": "0200", "3": "000000", "11": "000001", "41": "T0000009",
           "42": "898100000000001", "60": "22000001000"}
    body = bytearray(encode_message(doc))
    body[-1] = 0xAB  # last nibbles of F60 are not BCD
    with pytest.raises(DecodeError) as caught:
        decode_message(bytes(body))
    assert caught.value.partial["41"] == "T0000009"
    assert caught.value.partial["t"] == "0200"
    with pytest.raises(DecodeError) as caught:
        decode_message(bytes(body[:-3]))  # truncated inside F60
    assert caught.value.partial["41"] == "T0000009"
    assert "60" not in caught.value.partial
    with pytest.raises(DecodeError) as caught:
        decode_message(b"\x02\x00")
    assert caught.value.partial == {"t": "0200"}


def test_encode_for_mac_and_attach_mac_make_what_encode_with_mac_makes() -> None:
    doc = {"t": "0210", "3": "000000", "11": "000001", "39": "00", "41": "T0000009",
           "42": "898100000000001", "64": "FFFFFFFFFFFFFFFF"}
    seen: list[bytes] = []

    def mac(block: bytes) -> bytes:
        seen.append(block)
        return b"\x01\x02\x03\x04\x05\x06\x07\x08"

    body = encode_with_mac(doc, mac)
    block = encode_for_mac(doc)
    assert block == seen[0] == mac_block(body)
    assert attach_mac(block, mac(block)) == body
    assert decode_message(body)["64"] == "0102030405060708"
    with pytest.raises(EncodeError):
        attach_mac(block, b"short")
