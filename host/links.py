"""Acquirer side of the host-to-host links (protocol.md section 9): one trio task per route
keeps its link connected and signed on with keys (0800/001, 0800/101, echo every
ECHO_INTERVAL of silence), reconnects with back-off and marks the route down while it
cannot. ``Link.exchange`` sends one MACed request and waits for the answer matched by F11.

The link's life is :class:`LinkPhase`; what to do on each event is the pure
:func:`next_phase`; the socket work around it is the thin shell below.
"""

from __future__ import annotations

import enum
import logging
import secrets
import sqlite3
from datetime import datetime
from typing import Any

import trio

from host.limits import SEND_TIMEOUT
from host.linkkeys import LinkKeys, generate_mac_zak, import_link_keys, verify_mac_zak
from host.routing import Health, Route, reconnect_backoff
from hsm_sim.client import HsmClient
from hsm_sim.errors import HsmError
from specs.composite import decode_key_data
from specs.errors import SpecError
from specs.fields import MAC_FIELD
from specs.h2h import (
    ECHO,
    KEY_REQUEST,
    MACED_MTIS,
    SIGN_ON,
    H2hFrameDecoder,
    decode_h2h,
    encode_h2h,
    field60_management,
    frame_h2h,
    mac_block_of,
    mac_of,
    management_code,
    with_mac_bit,
)

log = logging.getLogger("poshost.links")

CONNECT_TIMEOUT = 5.0
MANAGEMENT_TIMEOUT = 5.0
ECHO_INTERVAL = 60.0
RECEIVE_SIZE = 65536


class LinkPhase(enum.Enum):
    DOWN = "down"
    SIGNING_ON = "signing on"
    KEYING = "keying"
    UP = "up"


class LinkEvent(enum.Enum):
    CONNECTED = "connected"
    SIGNED_ON = "signed on"
    KEYED = "keyed"
    REFUSED = "refused"
    LOST = "lost"


_TRANSITIONS = {
    (LinkPhase.DOWN, LinkEvent.CONNECTED): LinkPhase.SIGNING_ON,
    (LinkPhase.SIGNING_ON, LinkEvent.SIGNED_ON): LinkPhase.KEYING,
    (LinkPhase.KEYING, LinkEvent.KEYED): LinkPhase.UP,
}


def next_phase(phase: LinkPhase, event: LinkEvent) -> LinkPhase:
    """The link state machine: anything but the happy path goes DOWN (and reconnects).

    >>> next_phase(LinkPhase.KEYING, LinkEvent.KEYED)
    <LinkPhase.UP: 'up'>
    >>> next_phase(LinkPhase.UP, LinkEvent.LOST)
    <LinkPhase.DOWN: 'down'>
    """
    return _TRANSITIONS.get((phase, event), LinkPhase.DOWN)


class LinkDown(Exception):
    """The link is not up, or was lost while waiting."""


LINK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, LinkDown, HsmError,
               SpecError, trio.TooSlowError)
"""What ends a link's session (it is then reconnected after a back-off)."""


def _first(group: BaseExceptionGroup) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


class Link:
    """One route's link: settings, live health, keys, and the socket while connected."""

    def __init__(self, route: Route, row: sqlite3.Row, hsm: HsmClient) -> None:
        self.route = route
        self.zmk = row["zmk_lmk"]
        self.acquirer_id = row["acquirer_id"]
        self.hsm = hsm
        self.health = Health()
        self.phase = LinkPhase.DOWN
        self.keys: LinkKeys | None = None
        self._stream: trio.SocketStream | None = None
        self._send_lock = trio.Lock()
        self._waiting: dict[tuple[str, str], list[Any]] = {}
        self._stan = secrets.randbelow(999_999)
        """Starts anywhere: the upstream tells a refund advice from a repeat by (RRN, STAN), so
        a restarted process must not number from 1 again."""
        self._last_traffic = 0.0

    @property
    def name(self) -> str:
        return self.route.name

    def next_stan(self) -> str:
        self._stan = self._stan % 999999 + 1
        return f"{self._stan:06d}"

    def _event(self, event: LinkEvent) -> None:
        before, self.phase = self.phase, next_phase(self.phase, event)
        self.health.up = self.phase is LinkPhase.UP
        if before is not self.phase and (self.phase in (LinkPhase.UP, LinkPhase.DOWN)):
            log.info("route %s link %s", self.name, self.phase.value)

    # ------------------------------------------------------------------ the shell

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep the link up until cancelled."""
        task_status.started()
        attempt = 0
        while True:
            was_up = self.phase is LinkPhase.UP
            try:
                await self._session()
            except* LINK_ERRORS as group:
                if was_up or self.phase is LinkPhase.UP or attempt == 0:
                    log.warning("route %s link down: %s", self.name, _first(group))
            finally:
                if self.phase is LinkPhase.UP:
                    attempt = 0
                self._lost()
            await trio.sleep(reconnect_backoff(attempt))
            attempt += 1

    def _lost(self) -> None:
        self._event(LinkEvent.LOST)
        self.keys = None
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.socket.close()
        for slot in self._waiting.values():
            slot[1] = None
            slot[0].set()
        self._waiting.clear()

    async def _session(self) -> None:
        with trio.fail_after(CONNECT_TIMEOUT):
            self._stream = await trio.open_tcp_stream(self.route.host, self.route.port)
        self._event(LinkEvent.CONNECTED)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_loop)
            await self._manage(SIGN_ON)
            self._event(LinkEvent.SIGNED_ON)
            answer = await self._manage(KEY_REQUEST)
            self.keys = await import_link_keys(self.hsm, self.zmk,
                                               decode_key_data(answer.get("62", "")))
            self._event(LinkEvent.KEYED)
            nursery.start_soon(self._echo_loop)

    async def _manage(self, code: str) -> dict[str, str]:
        doc = {"t": "0800", "7": _now_mmddhhmmss(), "11": self.next_stan(),
               "32": self.acquirer_id, "33": self.acquirer_id,
               "60": field60_management(code)}
        got = await self._send_wait(doc, encode_h2h(doc), MANAGEMENT_TIMEOUT)
        if got is None:
            raise LinkDown(f"no answer to 0800/{code}")
        answer = got[0]
        if answer.get("39") != "00" or management_code(answer) != code:
            self._event(LinkEvent.REFUSED)
            raise LinkDown(f"0800/{code} answered {answer.get('39')}")
        return answer

    async def _echo_loop(self) -> None:
        while True:
            await trio.sleep(ECHO_INTERVAL)
            if trio.current_time() - self._last_traffic >= ECHO_INTERVAL:
                await self._manage(ECHO)

    async def _read_loop(self) -> None:
        decoder = H2hFrameDecoder()
        while self._stream is not None:
            data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise LinkDown("upstream closed the link")
            self._last_traffic = trio.current_time()
            for body in decoder.feed(data):
                await self._deliver(body)

    async def _deliver(self, body: bytes) -> None:
        try:
            doc = decode_h2h(body)
        except SpecError as exc:
            log.warning("route %s: undecodable answer ignored: %s", self.name, exc)
            return
        if doc.get("t") == "0800":  # the upstream's echo
            answer = {k: doc[k] for k in ("7", "11", "32", "33", "60") if k in doc}
            await self._send(encode_h2h({"t": "0810", **answer, "39": "00"}))
            return
        slot = self._waiting.pop((doc.get("t", ""), doc.get("11", "")), None)
        if slot is None:
            log.warning("route %s: late or unexpected %s ignored (STAN %s)", self.name,
                        doc.get("t"), doc.get("11"))
            return
        slot[1] = (doc, body)
        slot[0].set()

    async def _send(self, frame_body: bytes) -> None:
        stream = self._stream
        if stream is None:
            raise LinkDown("link not connected")
        async with self._send_lock:
            with trio.move_on_after(SEND_TIMEOUT) as sending:
                await stream.send_all(frame_h2h(frame_body))
        if sending.cancelled_caught:  # the peer stopped reading: the session is over
            log.warning("route %s: send not complete within %g s", self.name, SEND_TIMEOUT)
            self._lost()
            raise LinkDown("link send timed out")

    async def _send_wait(self, doc: dict[str, str], body: bytes, timeout: float
                         ) -> tuple[dict[str, str], bytes] | None:
        key = (f"{int(doc['t']) + 10:04d}" if doc["t"] != "0421" else "0430", doc["11"])
        slot: list[Any] = [trio.Event(), None]
        self._waiting[key] = slot
        try:
            await self._send(body)
            with trio.move_on_after(timeout):
                await slot[0].wait()
        finally:
            self._waiting.pop(key, None)
        if slot[1] is None:
            if not slot[0].is_set():
                return None
            raise LinkDown("link lost while waiting")
        return slot[1]

    # ------------------------------------------------------------------ financial

    async def exchange(self, doc: dict[str, str], timeout: float | None = None
                       ) -> tuple[dict[str, str] | None, bool]:
        """Send a MACed request; (answer or None on timeout, whether its MAC verified).
        LinkDown when the link is not up."""
        if self.phase is not LinkPhase.UP or self.keys is None:
            raise LinkDown("link not up")
        keys = self.keys
        block = mac_block_of(with_mac_bit(doc))
        mac = await generate_mac_zak(self.hsm, keys.zak, block)
        body = block + mac
        got = await self._send_wait(doc, body, self.route.timeout if timeout is None
                                    else timeout)
        if got is None:
            return None, False
        answer, raw = got
        if answer.get("t") not in MACED_MTIS or MAC_FIELD not in answer:
            return answer, False
        ok = await verify_mac_zak(self.hsm, keys.zak, mac_block_of(raw), mac_of(raw))
        return answer, ok

    def state(self, now: float) -> dict[str, Any]:
        """What `route list` shows about the live link."""
        h = self.health
        degraded = h.degraded(now)
        return {"state": "degraded" if degraded else self.phase.value,
                "in_flight": h.in_flight, "success_rate": round(h.success_rate(), 3),
                "p99_ms": round(h.p99() * 1000, 1), "trips": h.trips,
                "degraded_until": datetime.fromtimestamp(
                    datetime.now().timestamp() + h.degraded_until - now).isoformat(
                    timespec="seconds") if degraded else None}


def _now_mmddhhmmss() -> str:
    return datetime.now().strftime("%m%d%H%M%S")
