"""One host per listening address, whatever the mode.

``--workers N`` listens with SO_REUSEPORT so the kernel spreads connections over the workers;
the same option would let a second host (same user) join the port and silently split the
terminal estate between two databases. Before listening, a host therefore

1. takes an exclusive claim on the address: an abstract Unix socket named after it (Linux;
   released by the kernel when the process dies, so a kill -9 leaves nothing stale), which
   refuses a second poshost even while the first is still starting;
2. probes the address with a plain bind (SO_REUSEADDR, no SO_REUSEPORT): any socket already
   listening there, poshost or another program, makes it fail.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from host.errors import ConfigError

CLAIM_PREFIX = "poshost-listen"
"""Name space of the abstract Unix sockets that claim a listening address."""


def address_taken(host: str, port: int, detail: str) -> ConfigError:
    return ConfigError(f"cannot listen on {host}:{port}: {detail}; one host per address"
                       " (stop the other host or choose another --listen)")


@contextmanager
def claim_address(host: str, port: int) -> Iterator[None]:
    """Hold the claim on host:port for the life of the block (port 0: nothing to claim)."""
    if port == 0 or not sys.platform.startswith("linux"):
        yield
        return
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            claim.bind(f"\0{CLAIM_PREFIX}:{host}:{port}")
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise address_taken(host, port, "another poshost already serves it") from None
        yield
    finally:
        claim.close()


def probe_free(host: str, port: int) -> None:
    """Raise ConfigError when a socket already listens on host:port (port 0: always free)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise address_taken(host, port, "Address already in use") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
