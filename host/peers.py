"""Where terminals may connect from (sans-IO): the operator's allow-list of terminal source
addresses, and the alert when management traffic for a TID comes from an unexpected peer.

protocol.md gives sign-on (0800), sign-off (0820), settlement (0500) and batch upload (0320) no
MAC, so whoever reaches the port can re-key or settle another terminal's batch. The contract
stays; the operator gets two defences: ``--allow-peer CIDR`` (connections from elsewhere are
closed at accept, before any frame is read) and an ``ALERT`` line when such a message for a TID
arrives from an address outside the peers declared for it (``--terminal-peer TID=CIDR``) or,
when none are declared, from another address than its last sign-on (learned per process).

>>> guard = PeerGuard.from_options(["10.0.0.0/8"], ["12345678=10.1.2.3"])
>>> guard.admits("10.9.9.9"), guard.admits("192.168.1.5")
(True, False)
>>> guard.check("12345678", "sign_on", "10.1.2.3") is None
True
>>> guard.check("12345678", "settlement", "10.6.6.6")
'ALERT tid=12345678 settlement from unexpected peer 10.6.6.6 (declared 10.1.2.3/32)'
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from host.errors import ConfigError

__all__ = ["MANAGEMENT_KINDS", "PeerGuard", "guard_for"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MANAGEMENT_KINDS = frozenset({"sign_on", "sign_off", "settlement", "batch_upload",
                              "batch_upload_end"})
"""The unMACed messages that change a terminal's keys or batch."""
MAX_LEARNED = 100_000
"""Terminals whose last sign-on address is remembered (oldest forgotten beyond)."""


LOOPBACK = ("127.0.0.1/32", "::1/128")


def guard_for(allow: Iterable[str], terminal_peers: Iterable[str],
              serial_lines: Iterable[str] = (), enforce: bool = False) -> PeerGuard | None:
    """The guard for the operator's settings, or None when there are none. Serving serial
    lines adds the loopback to a non-empty allow-list (the bridges connect over it)."""
    allow, terminal_peers = tuple(allow), tuple(terminal_peers)
    if not allow and not terminal_peers:
        return None
    if allow and tuple(serial_lines):
        allow = (*allow, *LOOPBACK)
    guard = PeerGuard.from_options(allow, terminal_peers)
    guard.enforce = enforce
    return guard


def _network(text: str) -> IpNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"not an address or network: {text!r}") from None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass
class PeerGuard:
    """The allow-list (empty: every address) and the declared peers per TID."""

    allowed: tuple[IpNetwork, ...] = ()
    expected: dict[str, tuple[IpNetwork, ...]] = field(default_factory=dict)
    enforce: bool = False
    """Management traffic for a TID with declared peers, from elsewhere, is not answered
    (the connection is closed) rather than only alerted."""
    _last_sign_on: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_options(cls, allow: Iterable[str], terminal_peers: Iterable[str]) -> PeerGuard:
        """From ``--allow-peer CIDR`` and ``--terminal-peer TID=CIDR[,CIDR]`` values."""
        expected: dict[str, tuple[IpNetwork, ...]] = {}
        for item in terminal_peers:
            tid, sep, nets = item.partition("=")
            if not sep or not tid.strip() or not nets.strip():
                raise ConfigError(f"--terminal-peer must be TID=ADDRESS[/BITS], not {item!r}")
            expected[tid.strip()] = expected.get(tid.strip(), ()) + tuple(
                _network(n) for n in nets.split(","))
        return cls(tuple(_network(a) for a in allow), expected)

    def admits(self, address: str) -> bool:
        """Whether a connection from ``address`` may be served (allow-list, if any)."""
        if not self.allowed:
            return True
        ip = _address(address)
        return ip is not None and any(ip in net for net in self.allowed)

    def check(self, tid: str, kind: str, address: str) -> str | None:
        """The alert line for management message ``kind`` of ``tid`` from ``address``, or
        None when the peer is the expected one (or the message is not management)."""
        if kind not in MANAGEMENT_KINDS:
            return None
        declared = self.expected.get(tid)
        if declared is not None:
            ip = _address(address)
            if ip is not None and any(ip in net for net in declared):
                return None
            nets = ",".join(str(n) for n in declared)
            return f"ALERT tid={tid} {kind} from unexpected peer {address} (declared {nets})"
        last = self._last_sign_on.get(tid)
        if kind == "sign_on":
            self._remember(tid, address)
        if last is None or last == address:
            return None
        return (f"ALERT tid={tid} {kind} from unexpected peer {address} (last sign-on from"
                f" {last})")

    def refuses(self, tid: str) -> bool:
        """Whether an alert for ``tid`` (from `check`) also closes the connection: enforcing,
        and the TID's peers were declared (a learned address only alerts)."""
        return self.enforce and tid in self.expected

    def _remember(self, tid: str, address: str) -> None:
        if tid not in self._last_sign_on and len(self._last_sign_on) >= MAX_LEARNED:
            self._last_sign_on.pop(next(iter(self._last_sign_on)))
        self._last_sign_on[tid] = address
