"""Upstream role (``poshost serve --h2h-listen``): accepts host-to-host links from acquirers
declared with ``poshost link add`` and answers them from this host's issuer simulator
(protocol.md section 9). Sign-on and keys (0800/001, /101, echo), sales and balance inquiries
(0200), reversals (0420/0421) matched by (F32, F37) and applied exactly once.

Decisions come from host/rules.py (the same rules as on-us cards); the effects are written
by :func:`apply_link_request` inside the writer's transaction, so an answer leaves only once
committed, and a repeat gets the first answer.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

import trio

from host import rules
from host.db import get_meta, load_card
from host.errors import HostError
from host.ledger import new_auth_code
from host.linkkeys import (
    LinkKeys,
    generate_link_keys,
    generate_mac_zak,
    verify_mac_zak,
    verify_pin_zpk,
)
from host.routestore import load_link
from host.rules import PinResult
from host.writer import Writer
from hsm_sim.client import HsmClient
from hsm_sim.errors import HsmError
from specs.codes import APPROVED, FORMAT_ERROR, MAC_ERROR, SYSTEM_MALFUNCTION
from specs.composite import encode_balance, encode_key_data
from specs.errors import SpecError
from specs.h2h import (
    ECHO,
    KEY_REQUEST,
    MANAGEMENT_CODES,
    RESPONSE_ECHO,
    SIGN_ON,
    H2hFrameDecoder,
    check_financial_request,
    decode_h2h,
    encode_h2h,
    frame_h2h,
    mac_block_of,
    mac_of,
    management_code,
    response_mti,
    with_mac_bit,
)
from specs.pretty import mask_pan

log = logging.getLogger("poshost.upstream")

RECEIVE_SIZE = 65536
LINK_IDLE_TIMEOUT = 300.0
"""A link silent this long (no echo either) is closed."""
INVALID_MERCHANT = "03"
SALE_CODE = "000000"
BALANCE_CODE = "310000"
VOID_CODE = "200000"


@dataclass(frozen=True)
class LinkRequest:
    """A MAC-checked financial request from a link, with what the HSM found."""

    link: str
    doc: dict[str, str]
    pan_hash: str
    pin: PinResult
    now: datetime


def _kind(doc: Mapping[str, str]) -> str:
    if doc["t"] in ("0420", "0421"):
        return "reversal"
    if doc["t"] == "0220":
        return "refund" if doc.get("3") == VOID_CODE else "other"
    return {SALE_CODE: "sale", BALANCE_CODE: "balance", VOID_CODE: "void"}.get(doc.get("3", ""),
                                                                               "other")


def _echo(doc: Mapping[str, str], code: str) -> dict[str, str]:
    out = {"t": response_mti(doc["t"])}
    out.update({k: doc[k] for k in RESPONSE_ECHO if k in doc})
    out["39"] = code
    return out


def apply_link_request(conn: sqlite3.Connection, req: LinkRequest) -> dict[str, str]:
    """Decide and record one link request (inside the writer's transaction)."""
    doc = req.doc
    acquirer, rrn, kind = doc["32"], doc["37"], _kind(doc)
    if kind == "reversal":
        return _reverse(conn, req)
    row = conn.execute("SELECT response FROM h2h_txns WHERE acquirer_id=? AND rrn=? AND kind=?"
                       " AND stan=?", (acquirer, rrn, kind, doc["11"])
                       ).fetchone() if kind == "refund" else conn.execute(
        "SELECT response FROM h2h_txns WHERE acquirer_id=? AND rrn=? AND kind=?",
        (acquirer, rrn, kind)).fetchone()
    if row is not None:  # a repeat: the first answer (its F2 from this request: not stored)
        stored = json.loads(row["response"])
        return {**stored, "2": doc["2"]} if "2" in doc and "2" not in stored else stored
    if kind == "other":
        return _echo(doc, "40")
    if kind == "void":
        return _void(conn, req)
    if kind == "refund":
        return _refund(conn, req)
    amount = int(doc["4"])
    card = load_card(conn, req.pan_hash) if req.pan_hash else None
    today = req.now.strftime("%y%m")
    expiry = rules.expiry_of(doc)
    if conn.execute("SELECT 1 FROM h2h_reversals WHERE acquirer_id=? AND rrn=? AND kind=?",
                    (acquirer, rrn, kind)).fetchone():
        decision = rules.Decision(rules.ALREADY_REVERSED)
    elif kind == "sale":
        no_cvm = rules.no_cvm_allowed(doc.get("22", ""), amount)
        decision = rules.decide_sale(amount, card, expiry, req.pin, today, no_cvm)
    else:
        decision = rules.decide_balance(card, expiry, req.pin, today)
        if decision.approved and card is not None:
            decision = rules.Decision(decision.code, pin_tries=decision.pin_tries,
                                      extra={"54": encode_balance(card.balance)})
    if card is not None:
        if decision.card_delta:
            conn.execute("UPDATE cards SET balance = balance + ? WHERE pan_hash = ?",
                         (decision.card_delta, req.pan_hash))
        if decision.pin_tries is not None:
            conn.execute("UPDATE cards SET pin_tries = ? WHERE pan_hash = ?",
                         (decision.pin_tries, req.pan_hash))
    return _insert(conn, req, kind, decision)


def _insert(conn: sqlite3.Connection, req: LinkRequest, kind: str, decision: rules.Decision
            ) -> dict[str, str]:
    doc = req.doc
    response = _echo(doc, decision.code)
    response.update(decision.extra)
    if decision.approved:
        response["38"] = new_auth_code()
    conn.execute(
        "INSERT INTO h2h_txns (link, acquirer_id, rrn, stan, kind, pan_hash, pan_masked, amount,"
        " rc, auth_code, response, created, settlement_date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
        " ?, ?, ?, ?)",
        (req.link, doc["32"], doc["37"], doc["11"], kind, req.pan_hash, mask_pan(doc["2"]),
         int(doc["4"]), decision.code, response.get("38"),
         json.dumps({k: v for k, v in response.items() if k != "2"}),  # no clear PAN at rest
         req.now.isoformat(timespec="seconds"), req.now.date().isoformat()))
    return response


def _void(conn: sqlite3.Connection, req: LinkRequest) -> dict[str, str]:
    """A void (F3 200000, F37 = the sale's RRN): a live sale of this card and amount."""
    doc = req.doc
    sale = conn.execute("SELECT * FROM h2h_txns WHERE acquirer_id=? AND rrn=? AND kind='sale'",
                        (doc["32"], doc["37"])).fetchone()
    if sale is None:
        decision = rules.Decision(rules.ORIGINAL_NOT_FOUND)
    elif sale["rc"] != APPROVED or sale["reversed"] or sale["voided"] or (
            sale["pan_hash"] != req.pan_hash):
        decision = rules.Decision(rules.INVALID_TRANSACTION)
    elif sale["amount"] != int(doc["4"]):
        decision = rules.Decision(rules.AMOUNT_MISMATCH)
    else:
        decision = rules.Decision(APPROVED)
        conn.execute("UPDATE h2h_txns SET voided=1 WHERE id=?", (sale["id"],))
        conn.execute("UPDATE cards SET balance = balance + ? WHERE pan_hash = ?",
                     (sale["amount"], sale["pan_hash"]))
    return _insert(conn, req, "void", decision)


def _refund(conn: sqlite3.Connection, req: LinkRequest) -> dict[str, str]:
    """A refund advice (0220, F37 = the sale's RRN): credit the sale's card, never more in
    all than the sale (64). The card is the sale's (F2 may be truncated after a restart)."""
    doc = req.doc
    sale = conn.execute("SELECT * FROM h2h_txns WHERE acquirer_id=? AND rrn=? AND kind='sale'",
                        (doc["32"], doc["37"])).fetchone()
    amount = int(doc["4"])
    if sale is None:
        decision = rules.Decision(rules.ORIGINAL_NOT_FOUND)
    elif sale["rc"] != APPROVED or sale["reversed"] or sale["voided"]:
        decision = rules.Decision(rules.INVALID_TRANSACTION)
    else:
        refunded = conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM h2h_txns WHERE acquirer_id=? AND rrn=? AND"
            " kind='refund' AND rc='00'", (doc["32"], doc["37"])).fetchone()[0]
        if amount <= 0 or refunded + amount > sale["amount"]:
            decision = rules.Decision(rules.AMOUNT_MISMATCH)
        else:
            decision = rules.Decision(APPROVED)
            conn.execute("UPDATE cards SET balance = balance + ? WHERE pan_hash = ?",
                         (amount, sale["pan_hash"]))
    return _insert(conn, replace(req, pan_hash=sale["pan_hash"] if sale else ""), "refund",
                   decision)


def _reverse(conn: sqlite3.Connection, req: LinkRequest) -> dict[str, str]:
    """0420/0421: undo the original (sale, or void when F3 is 200000) once; 00 also for an
    unknown original (which is then declined if it arrives)."""
    doc = req.doc
    acquirer, rrn = doc["32"], doc["37"]
    kind = "void" if doc.get("3") == VOID_CODE else "sale"
    done = conn.execute("SELECT rc FROM h2h_reversals WHERE acquirer_id=? AND rrn=? AND kind=?",
                        (acquirer, rrn, kind)).fetchone()
    if done is not None:
        return _echo(doc, done["rc"])
    original = conn.execute("SELECT * FROM h2h_txns WHERE acquirer_id=? AND rrn=? AND kind=?",
                            (acquirer, rrn, kind)).fetchone()
    if original is not None and original["rc"] == APPROVED and not original["reversed"]:
        conn.execute("UPDATE h2h_txns SET reversed=1 WHERE id=?", (original["id"],))
        sign = 1 if kind == "sale" else -1
        if kind == "void":
            conn.execute("UPDATE h2h_txns SET voided=0 WHERE acquirer_id=? AND rrn=? AND"
                         " kind='sale'", (acquirer, rrn))
        if original["pan_hash"]:
            conn.execute("UPDATE cards SET balance = balance + ? WHERE pan_hash = ?",
                         (sign * original["amount"], original["pan_hash"]))
    conn.execute("INSERT INTO h2h_reversals VALUES (?, ?, ?, ?, ?, ?)",
                 (acquirer, rrn, kind, doc.get("39", ""), APPROVED,
                  req.now.isoformat(timespec="seconds")))
    return _echo(doc, APPROVED)


class UpstreamService:
    """Answers link connections (one instance per host)."""

    def __init__(self, hsm: HsmClient, writer: Writer, read_conn: sqlite3.Connection,
                 pvk_lmk: str) -> None:
        self.hsm = hsm
        self.writer = writer
        self.read_conn = read_conn
        self.pvk = pvk_lmk

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[:2]
        log.info("accepting host-to-host links on %s:%d", *bound)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(bound)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = _Conn(self, stream)
        try:
            await conn.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, SpecError,
                trio.TooSlowError) as exc:
            log.info("link %s closed: %s", conn.link or "(not signed on)", exc)
        except Exception:  # one link's fault must never reach the host's nursery
            log.exception("link %s: unexpected failure; connection closed",
                          conn.link or "(not signed on)")
        finally:
            with trio.move_on_after(1):
                await stream.aclose()


class _Conn:
    def __init__(self, service: UpstreamService, stream: trio.SocketStream) -> None:
        self.s = service
        self.stream = stream
        self.link: str | None = None
        self.acquirer: str | None = None
        self.zmk: str | None = None
        self.keys: LinkKeys | None = None

    async def run(self) -> None:
        decoder = H2hFrameDecoder()
        while True:
            with trio.fail_after(LINK_IDLE_TIMEOUT):
                data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            for body in decoder.feed(data):
                out = await self.answer(body)
                if out is not None:
                    await self.stream.send_all(frame_h2h(out))

    async def answer(self, body: bytes) -> bytes | None:
        try:
            doc = decode_h2h(body)
        except SpecError as exc:
            log.warning("link %s: undecodable request: %s", self.link, exc)
            return None
        mti = doc.get("t", "")
        if not (len(mti) == 4 and mti.isascii() and mti.isdigit()):
            log.warning("link %s: request with MTI %r dropped", self.link, mti[:8])
            return None
        if mti == "0810":
            return None  # the acquirer answering our echo (we send none: it does)
        if mti == "0800":
            return encode_h2h(await self._management(doc))
        if mti not in ("0200", "0220", "0420", "0421"):
            return encode_h2h(_echo(doc, "40"))
        if self.keys is None or doc.get("32") != self.acquirer:
            return encode_h2h(_echo(doc, MAC_ERROR))
        try:
            if not await verify_mac_zak(self.s.hsm, self.keys.zak, mac_block_of(body),
                                        mac_of(body)):
                return encode_h2h(_echo(doc, MAC_ERROR))
            if mti in ("0200", "0220"):
                check_financial_request(doc)
            response = await self._financial(doc)
            block = mac_block_of(with_mac_bit(response))
            return block + await generate_mac_zak(self.s.hsm, self.keys.zak, block)
        except (SpecError, ValueError, KeyError) as exc:  # a field missing or not digits
            log.warning("link %s: bad request: %s", self.link, type(exc).__name__
                        if isinstance(exc, KeyError) else exc)
            return encode_h2h(_echo(doc, FORMAT_ERROR))
        except (HsmError, HostError) as exc:
            log.error("link %s: internal failure: %s", self.link, exc)
            return encode_h2h(_echo(doc, SYSTEM_MALFUNCTION))

    async def _management(self, doc: dict[str, str]) -> dict[str, str]:
        code = management_code(doc)
        out = {"t": "0810", **{k: doc[k] for k in ("7", "11", "32", "33", "60") if k in doc}}
        if code not in MANAGEMENT_CODES:
            return {**out, "39": "40"}
        if code == SIGN_ON:
            row = load_link(self.s.read_conn, doc.get("32", ""))
            if row is None:
                log.warning("sign-on from unknown acquirer %s refused", doc.get("32"))
                return {**out, "39": INVALID_MERCHANT}
            self.link, self.acquirer, self.zmk = row["name"], row["acquirer_id"], row["zmk_lmk"]
            log.info("link %s signed on", self.link)
            return {**out, "39": APPROVED}
        if self.zmk is None or doc.get("32") != self.acquirer:
            return {**out, "39": INVALID_MERCHANT}
        if code == KEY_REQUEST:
            try:
                self.keys, data = await generate_link_keys(self.s.hsm, self.zmk)
            except HsmError as exc:
                log.error("link %s: keys not generated: %s", self.link, exc)
                return {**out, "39": SYSTEM_MALFUNCTION}
            return {**out, "39": APPROVED, "62": encode_key_data(data)}
        assert code == ECHO
        return {**out, "39": APPROVED}

    async def _financial(self, doc: dict[str, str]) -> dict[str, str]:
        assert self.keys is not None and self.link is not None
        now = datetime.now()
        pan_hash = ""
        pin = PinResult.ABSENT
        if doc["t"] == "0200" and "2" in doc:
            key = get_meta(self.s.read_conn, "pan_hash_key_lmk")
            pan_hash = await self.s.hsm.hash_pan(key or "", doc["2"])
            card = load_card(self.s.read_conn, pan_hash)
            if "52" in doc and card is not None:
                ok = await verify_pin_zpk(self.s.hsm, self.keys.zpk, self.s.pvk,
                                          bytes.fromhex(doc["52"]), _account(doc["2"]),
                                          card.pvv, card.pvki)
                pin = PinResult.OK if ok else PinResult.WRONG
        req = LinkRequest(self.link, doc, pan_hash, pin, now)
        return await self.s.writer.submit(lambda conn: apply_link_request(conn, req))


def _account(pan: str) -> str:
    """The 12 rightmost PAN digits excluding the check digit (PIN block format 0)."""
    return pan[-13:-1].rjust(12, "0")
