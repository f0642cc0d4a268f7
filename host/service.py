"""The message path: one frame in, one frame out. Decodes, identifies the terminal, checks the
MAC and PIN through the HSM, hands the request to the ledger via the writer, and MACs the
answer. Knows nothing about sockets (host/server.py) and nothing about rules (host/rules.py).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import trio

from host import chip, rules
from host.db import Terminal, get_meta, load_card, load_terminal
from host.errors import CloseConnection, HostError, ProtocolError, StoreError
from host.ledger import Request, RrnCounter, field60_of_sign_on
from host.limits import TERMINAL_CACHE_TTL
from host.metrics import ProcessMetrics
from host.ops import Store
from host.peers import PeerGuard
from host.responses import minimal_response, request_digest_raw, respond
from host.rules import PinResult
from hsm_sim.client import HsmClient
from hsm_sim.errors import HsmError
from specs.catalog import MessageKind, identify_request
from specs.codes import (
    APPROVED,
    BATCH_MISMATCH,
    FORMAT_ERROR,
    INVALID_MERCHANT,
    MAC_ERROR,
    NO_MAC_CODES,
    SYSTEM_MALFUNCTION,
    UNKNOWN_TERMINAL,
)
from specs.composite import (
    KeyData,
    decode_settlement_totals,
    decode_upload_end,
    decode_upload_records,
    encode_key_data,
)
from specs.errors import DecodeError, FramingError, SpecError, ValidationError
from specs.fastcodec import Spans
from specs.fields import MAC_FIELD
from specs.framing import BODY_OFFSET, SIGN_ON_AGAIN, Frame, encode_frame_tcp
from specs.messages import (
    Message,
    attach_mac,
    decode_with_spans,
    encode_for_mac,
    encode_message,
    mac_block,
    message_mac,
    response_needs_mac,
    validate_request,
)
from specs.pretty import summarize

log = logging.getLogger("poshost.txn")

SIGN_ON_AGAIN_CODES = frozenset({MAC_ERROR, BATCH_MISMATCH})


class TerminalCache:
    """Terminal rows (MID, MAC algorithm, keys under LMK) kept for TERMINAL_CACHE_TTL."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float] = time.monotonic):
        self._conn = conn
        self._clock = clock
        self._rows: dict[str, tuple[float, Terminal | None]] = {}

    def get(self, tid: str) -> Terminal | None:
        hit = self._rows.get(tid)
        now = self._clock()
        if hit is None or now - hit[0] > TERMINAL_CACHE_TTL:
            hit = (now, load_terminal(self._conn, tid))
            self._rows[tid] = hit
        return hit[1]

    def forget(self, tid: str) -> None:
        self._rows.pop(tid, None)


def salvage_tid(partial: Mapping[str, str]) -> str | None:
    """The TID of a body that does not decode, when the bytes up to F41 did
    (``partial`` is :attr:`DecodeError.partial`)."""
    tid = partial.get("41")
    return tid if isinstance(tid, str) and tid.strip() and tid.isprintable() else None


@dataclass
class Exchange:
    """One request being handled: what the log line and the answer need."""

    frame: Frame
    request: Message
    kind: MessageKind | None = None
    terminal: Terminal | None = None
    undecodable: bool = False
    peer: str | None = None
    """The source address, when the operator guards peers (host/peers.py)."""
    cert_tid: str | None = None
    """The TID the connection's client certificate is bound to (serve --tls-bind-tid)."""
    spans: Spans | None = None
    """Where each field lies in ``frame.body`` (for the request digest); None when
    undecodable."""


class TerminalLanes:
    """One request at a time per terminal ID: a terminal is half-duplex (it waits for each
    answer), so two requests in flight under one TID come from a misconfigured twin or a
    hostile peer. Serialising them keeps such a TID from racing itself (a sign-on against a
    sale) and from taking more of the host than one terminal's share, whatever number of
    connections it opens. Waiters are served in arrival order (trio.Lock is fair). A free
    lane is taken without a trip through the scheduler (the request's later awaits
    checkpoint); only a busy one waits."""

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane] = {}

    def hold(self, tid: str) -> _Hold:
        """``async with lanes.hold(tid):`` the TID's lane, for one request."""
        return _Hold(self._lanes, tid)

    def __len__(self) -> int:
        return len(self._lanes)


class _Lane:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.users = 0
        """Requests holding or waiting for the lane; it is dropped when none is left."""


class _Hold:
    __slots__ = ("_lane", "_lanes", "_tid")

    def __init__(self, lanes: dict[str, _Lane], tid: str) -> None:
        self._lanes = lanes
        self._tid = tid

    async def __aenter__(self) -> None:
        lane = self._lanes.get(self._tid)
        if lane is None:
            lane = self._lanes[self._tid] = _Lane()
        self._lane = lane
        lane.users += 1
        try:
            lane.lock.acquire_nowait()  # WouldBlock while held or while others wait
        except trio.WouldBlock:
            try:
                await lane.lock.acquire()
            except BaseException:
                self._leave()
                raise

    async def __aexit__(self, *exc: object) -> None:
        self._lane.lock.release()
        self._leave()

    def _leave(self) -> None:
        self._lane.users -= 1
        if not self._lane.users:
            del self._lanes[self._tid]


class HostService:
    """Handles frames for every connection (one instance per host)."""

    def __init__(self, hsm: HsmClient, store: Store, rrns: RrnCounter,
                 read_conn: sqlite3.Connection, pvk_lmk: str,
                 guard: PeerGuard | None = None,
                 metrics: ProcessMetrics | None = None) -> None:
        """``guard``: the operator's peer rules (host/peers.py). ``metrics``: counts answers
        by kind and code (host/metrics.py); the HSM client given is then usually a MeasuredHsm
        over the same figures."""
        self.hsm = hsm
        self.metrics = metrics
        self.store = store
        self.rrns = rrns
        self.read_conn = read_conn
        self.pvk_lmk = pvk_lmk
        self.terminals = TerminalCache(read_conn)
        self.lanes = TerminalLanes()
        self.guard = guard
        self._pan_hash_key: str | None = None
        self.router: Any = None
        """Off-us routing (host/router.py), set by host/app.py when routes are configured."""

    async def handle(self, payload: bytes, peer: str | None = None,
                     cert_tid: str | None = None) -> bytes:
        """Answer one frame payload; raise CloseConnection when it cannot be answered.
        ``peer``: the source address, for the unexpected-peer alert (host/peers.py)."""
        started = time.perf_counter()
        try:
            frame = Frame.parse(payload)
        except FramingError as exc:
            raise CloseConnection(str(exc)) from None
        ex = self._decode(frame)
        ex.peer = peer
        ex.cert_tid = cert_tid
        async with self.lanes.hold(ex.request.get("41", "")):
            response = await self._answer(ex)
            if self.metrics is not None:
                self.metrics.request(ex.kind.name if ex.kind else None)
            out = await self._encode(ex, response)
        if self.metrics is not None:
            self.metrics.answered(ex.kind.name if ex.kind else None, response.get("39", ""),
                                  ex.terminal.tid if ex.terminal else None)
        if log.isEnabledFor(logging.INFO):
            ms = (time.perf_counter() - started) * 1000
            log.info("%s -> rc=%s ms=%.1f", summarize(ex.request), response.get("39"), ms)
        return out

    def _decode(self, frame: Frame) -> Exchange:
        try:
            doc, spans = decode_with_spans(frame.body, offset=BODY_OFFSET)
            return Exchange(frame, doc, spans=spans)
        except DecodeError as exc:
            tid = salvage_tid(exc.partial)
            mti = frame.body[:2].hex()
            if tid is None or not mti.isdigit():
                raise CloseConnection(f"undecodable frame: {exc}") from None
            log.warning("tid=%s undecodable request: %s", tid, exc)
            return Exchange(frame, {"t": mti, "41": tid}, undecodable=True)

    async def _answer(self, ex: Exchange) -> Message:
        now = datetime.now()
        doc = ex.request
        if ex.undecodable:
            return minimal_response(doc, FORMAT_ERROR)
        try:
            ex.kind = self._identify(ex)
            ex.terminal = self._terminal(ex)
            await self._check_mac(ex)
            return await self._dispatch(ex, now)
        except ProtocolError as exc:
            return self._reject(ex, exc.response_code, now)
        except CloseConnection:
            raise
        except (HsmError, HostError) as exc:
            log.error("tid=%s internal failure: %s", doc.get("41"), exc)
            return self._reject(ex, SYSTEM_MALFUNCTION, now)

    def _identify(self, ex: Exchange) -> MessageKind:
        doc = ex.request
        try:
            return validate_request(doc)
        except ValidationError as exc:
            try:
                ex.kind = identify_request(doc)
            except SpecError:
                ex.kind = None
            if exc.field == MAC_FIELD:
                raise ProtocolError(str(exc), MAC_ERROR) from None
            raise ProtocolError(str(exc), exc.response_code) from None

    def _terminal(self, ex: Exchange) -> Terminal:
        terminal = self.terminals.get(ex.request["41"].strip())
        if terminal is None:
            raise ProtocolError("terminal not registered", UNKNOWN_TERMINAL)
        if terminal.mid != ex.request["42"].strip():
            raise ProtocolError("merchant does not match the terminal", INVALID_MERCHANT)
        return terminal

    async def _check_mac(self, ex: Exchange) -> None:
        assert ex.kind is not None and ex.terminal is not None
        if not ex.kind.mac:
            return
        terminal = ex.terminal
        if not terminal.has_working_keys or terminal.mak_lmk is None:
            self._reloaded(ex)  # signed on since cached (another process or instance)?
            terminal = ex.terminal
        if not terminal.has_working_keys or terminal.mak_lmk is None:
            raise ProtocolError("no working keys: sign on first", MAC_ERROR)
        body = ex.frame.body
        ok = await self.hsm.verify_mac(terminal.mak_lmk, mac_block(body), message_mac(body),
                                       terminal.mac_algorithm)
        if not ok and self._reloaded(ex):  # keys changed since cached (another process)
            terminal = ex.terminal
            ok = terminal.mak_lmk is not None and await self.hsm.verify_mac(
                terminal.mak_lmk, mac_block(body), message_mac(body), terminal.mac_algorithm)
        if not ok:
            raise ProtocolError("request MAC does not verify", MAC_ERROR)

    def _reloaded(self, ex: Exchange) -> bool:
        """Re-read the terminal's row; whether its MAC key changed from the cached one."""
        assert ex.terminal is not None
        cached = ex.terminal
        self.terminals.forget(cached.tid)
        ex.terminal = self._terminal(ex)
        return ex.terminal.mak_lmk != cached.mak_lmk

    def _reject(self, ex: Exchange, code: str, now: datetime) -> Message:
        rrn = self.rrns.next()
        if ex.kind is None:
            return minimal_response(ex.request, code)
        return respond(ex.kind, ex.request, code, now, rrn)

    async def _dispatch(self, ex: Exchange, now: datetime) -> Message:
        kind, doc, terminal = ex.kind, ex.request, ex.terminal
        assert kind is not None and terminal is not None
        if ex.cert_tid is not None and ex.cert_tid != terminal.tid:
            log.warning("ALERT tid=%s %s on a TLS connection whose certificate names %r:"
                        " refused", terminal.tid, kind.name, ex.cert_tid)
            if self.metrics is not None:
                self.metrics.peer_alerts[kind.name] += 1
            raise CloseConnection(f"certificate for {ex.cert_tid!r} used for TID"
                                  f" {terminal.tid} (--tls-bind-tid)")
        if self.guard is not None and ex.peer is not None:
            alert = self.guard.check(terminal.tid, kind.name, ex.peer)
            if alert is not None:
                log.warning("%s", alert)
                if self.metrics is not None:
                    self.metrics.peer_alerts[kind.name] += 1
                if self.guard.refuses(terminal.tid):
                    raise CloseConnection(f"{alert}: refused (--enforce-terminal-peers)")
        if kind.name == "sign_on":
            return await self._sign_on(ex, now)
        if kind.name in ("sign_off", "echo_test"):
            if kind.name == "sign_off":
                await self.store.apply("sign_off", terminal.tid)
                self.terminals.forget(terminal.tid)
            return respond(kind, doc, APPROVED, now, self.rrns.next())
        assert ex.spans is not None
        req = Request(kind, doc, request_digest_raw(ex.frame.body, ex.spans), now,
                      self.rrns.next(),
                      mak_lmk=(terminal.mak_lmk or "") if kind.mac else "")
        try:
            if kind.name == "settlement":
                return await self.store.apply("settle", req,
                                              decode_settlement_totals(doc["48"]))
            if kind.name == "batch_upload":
                records = decode_upload_records(doc["48"])
                hashes = [await self._pan_hash(r.pan) for r in records]
                return await self.store.apply("upload", req, records, hashes)
            if kind.name == "batch_upload_end":
                return await self.store.apply("upload_end", req, decode_upload_end(doc["48"]))
        except ValidationError as exc:
            raise ProtocolError(str(exc), exc.response_code) from None
        pan_hash = "" if kind.name == "reversal" else await self._pan_hash(rules.card_pan(doc))
        if self.router is not None:  # off-us cards go upstream (#20)
            routed = await self.router.forward(replace(req, pan_hash=pan_hash), terminal)
            if routed is not None:
                return routed
        facts = await chip.verify_chip_request(self.hsm, self.read_conn, kind, doc)
        pin = await self._verify_pin(terminal, doc, pan_hash)
        response = await self.store.apply("financial", replace(req, pin=pin, pan_hash=pan_hash,
                                                               chip=facts))
        return await chip.with_issuer_auth(self.hsm, facts, response)

    async def _sign_on(self, ex: Exchange, now: datetime) -> Message:
        terminal, kind = ex.terminal, ex.kind
        assert terminal is not None and kind is not None
        keys = await self.hsm.generate_terminal_keys(terminal.tmk_lmk)
        stored = {"pik_lmk": keys.pik_lmk, "pik_kcv": keys.pik_cv.hex().upper(),
                  "mak_lmk": keys.mak_lmk, "mak_kcv": keys.mak_cv.hex().upper()}
        batch = await self.store.apply("sign_on", terminal.tid, stored, now)
        self.terminals.forget(terminal.tid)
        f62 = encode_key_data(KeyData(keys.pik_under_tmk, keys.pik_cv, keys.mak_under_tmk,
                                      keys.mak_cv))
        extra = {"60": field60_of_sign_on(batch), "62": f62}
        return respond(kind, ex.request, APPROVED, now, self.rrns.next(), extra)

    async def _pan_hash(self, pan: str) -> str:
        """The PAN's keyed hash through the HSM (the key is read once from the store)."""
        if not pan:
            return ""
        if self._pan_hash_key is None:
            self._pan_hash_key = get_meta(self.read_conn, "pan_hash_key_lmk")
            if self._pan_hash_key is None:
                raise StoreError("no PAN hash key in the store (run poshost init)")
        return await self.hsm.hash_pan(self._pan_hash_key, pan)

    async def _verify_pin(self, terminal: Terminal, doc: Mapping[str, str],
                          pan_hash: str = "") -> PinResult:
        if "52" not in doc or terminal.pik_lmk is None:
            return PinResult.ABSENT
        pan = rules.card_pan(doc)
        card = load_card(self.read_conn, pan_hash) if pan_hash else None
        if card is None:
            return PinResult.ABSENT
        try:
            ok = await self.hsm.verify_pin_pvv(terminal.pik_lmk, self.pvk_lmk,
                                               bytes.fromhex(doc["52"]), pan, card.pvv,
                                               card.pvki)
        except HsmError as exc:
            if exc.code in ("--",):
                raise
            ok = False
        return PinResult.OK if ok else PinResult.WRONG

    async def _encode_with_mac(self, response: Message, terminal: Terminal) -> bytes:
        """Encode with F64 from the HSM. When the HSM cannot MAC (it is down: the answer is
        then a 96), the answer goes out without F64 rather than not at all: the terminal takes
        it as a MAC failure and reverses, which is harmless, instead of waiting for nothing."""
        block = encode_for_mac(response)
        try:
            mac = await self.hsm.generate_mac(terminal.mak_lmk or "", block,
                                              terminal.mac_algorithm)
        except HsmError as exc:
            log.error("tid=%s answer %s sent without MAC: %s", terminal.tid,
                      response.get("39"), exc)
            unmaced = {k: v for k, v in response.items() if k != MAC_FIELD}
            return encode_message(unmaced)
        return attach_mac(block, mac)

    async def _encode(self, ex: Exchange, response: Message) -> bytes:
        code = response.get("39", "")
        requirement = SIGN_ON_AGAIN if code in SIGN_ON_AGAIN_CODES else None
        terminal = ex.terminal
        needs_mac = (ex.kind is not None and response_needs_mac(ex.kind, code)
                     and code not in NO_MAC_CODES)
        try:
            if needs_mac and terminal is not None and terminal.mak_lmk:
                body = await self._encode_with_mac(response, terminal)
            else:
                body = encode_message(response)
        except SpecError as exc:
            raise CloseConnection(f"cannot encode the answer: {exc}") from None
        return encode_frame_tcp(ex.frame.answer(body, requirement=requirement).payload())
