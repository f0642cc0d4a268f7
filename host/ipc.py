"""Framing of the messages between the writer process and its worker processes (sans-IO):
a 4-byte big-endian length, then a pickled tuple. Both ends are this program's own processes
over a socketpair the parent made, so pickle is safe here; it never touches a network peer.

Messages (first element names them):
  worker -> writer: ("ready", index), ("job", id, op, args, rrn_high_water),
                    ("metrics", figures, terminals_seen) (with --http; host/metrics.py)
  writer -> worker: ("listen",), ("done", id, result), ("fail", id, text), ("forget", tid)

>>> decoder = IpcDecoder()
>>> data = encode_ipc(("job", 1, "sign_off", ("12345678",), 7))
>>> decoder.feed(data[:3]); decoder.next()
>>> decoder.feed(data[3:]); decoder.next()
('job', 1, 'sign_off', ('12345678',), 7)
"""

from __future__ import annotations

import pickle
from typing import Any

from host.errors import HostError

LENGTH_BYTES = 4
IPC_MAX_MESSAGE = 64 * 1024 * 1024
"""Largest message between the processes (a settlement answer is a few hundred bytes; this
only bounds damage from a bug)."""
IPC_RECEIVE_CHUNK = 256 * 1024
"""Bytes read from a process channel at a time."""


class IpcError(HostError):
    """The channel between the writer and a worker carried something it cannot decode."""


def encode_ipc(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > IPC_MAX_MESSAGE:
        raise IpcError(f"message of {len(body)} bytes over the {IPC_MAX_MESSAGE} limit")
    return len(body).to_bytes(LENGTH_BYTES, "big") + body


class IpcDecoder:
    """Bytes in (``feed``), whole messages out (``next``, None until one is complete)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> tuple[Any, ...] | None:
        if len(self._buffer) < LENGTH_BYTES:
            return None
        length = int.from_bytes(self._buffer[:LENGTH_BYTES], "big")
        if length > IPC_MAX_MESSAGE:
            raise IpcError(f"message length {length} over the {IPC_MAX_MESSAGE} limit")
        end = LENGTH_BYTES + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[LENGTH_BYTES:end])
        del self._buffer[:end]
        try:
            message = pickle.loads(body)
        except Exception as exc:  # any unpickling failure: the channel is garbled
            raise IpcError(f"undecodable channel message: {type(exc).__name__}") from None
        if not isinstance(message, tuple) or not message:
            raise IpcError("a channel message must be a non-empty tuple")
        return message

    def __iter__(self) -> IpcDecoder:
        return self

    def __next__(self) -> tuple[Any, ...]:
        message = self.next()
        if message is None:
            raise StopIteration
        return message
