"""The HSM's command framing (hsm-commands.md): a 2-byte big-endian length before each
message, the message header of the configured length, and the response code rule.

>>> encode_frame(b"0000NC")
b'\\x00\\x060000NC'
>>> response_code(b"NC"), response_code(b"A0")
(b'ND', b'A1')
"""

from __future__ import annotations

from hsm_sim.errors import HsmError

MAX_FRAME_LENGTH = 32 * 1024
"""Largest message (header + command + fields) accepted or sent; beyond it error 80."""
DEFAULT_HEADER_LENGTH = 4
"""Characters of message header before the command code (payShield default)."""


def encode_frame(payload: bytes) -> bytes:
    """Prefix a message with its 2-byte big-endian length."""
    if len(payload) > MAX_FRAME_LENGTH:
        raise HsmError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME_LENGTH}", code="80")
    return len(payload).to_bytes(2, "big") + payload


def decode_frame_length(prefix: bytes) -> int:
    """Length from a 2-byte prefix; error 80 when over the limit."""
    length = int.from_bytes(prefix, "big")
    if length > MAX_FRAME_LENGTH:
        raise HsmError(f"frame of {length} bytes exceeds {MAX_FRAME_LENGTH}", code="80")
    return length


def response_code(command: bytes) -> bytes:
    """The response code: the command with its 2nd character + 1 (A0 -> A1, NC -> ND)."""
    return command[:1] + bytes((command[1] + 1,))
