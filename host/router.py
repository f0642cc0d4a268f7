"""Acquirer side of routing: sends off-us sales and balance inquiries upstream over the chosen
link, records the outcome with its channel, and keeps every 0420 durably until its 0430.

Exactly once across the hop (protocol.md section 9): before a request leaves, an `inflight`
row is committed to `h2h_outbox`; the upstream's answer is committed with the transaction and
closes the row in the same transaction, before the terminal hears anything. No answer in time
(or an answer that fails its MAC, or a 96) -> the terminal gets 91, the row becomes a
`pending` 0420, and :meth:`Router.run_outbox` sends it with 2 s, 4 s, 8 s ... back-off until a
0430. A restart turns every `inflight` row into a pending 0420/98 (the process died between
sending and committing). A terminal's 0400 for a routed sale becomes a 0420/06 to the same
channel, committed with the local reversal.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from host import rules
from host.db import Terminal, for_update, is_shared, load_card
from host.ledger import Ledger, Request, _txn
from host.limits import HANDLER_TIMEOUT
from host.links import LINK_ERRORS, Link, LinkPhase
from host.routestore import load_routes, route_state_path
from host.routing import NO_CHANNEL, NO_ROUTE, Ask, choose_route, reversal_backoff
from host.rules import Txn
from host.writer import Writer
from hsm_sim.client import HsmClient
from hsm_sim.errors import HsmError
from specs.codes import BATCH_MISMATCH, card_organisation
from specs.composite import decode_field61
from specs.errors import SpecError
from specs.h2h import (
    REVERSAL_FIELDS,
    REVERSAL_MAC,
    REVERSAL_TERMINAL,
    REVERSAL_TIMEOUT,
)
from specs.messages import Message

log = logging.getLogger("poshost.router")

ROUTED_KINDS = frozenset({"sale", "balance"})
UPSTREAM_FAILURE_CODES = frozenset({"91", "96"})
"""Answers that count as a failure of the channel (with timeouts, bad MACs, link errors)."""
ROUTES_REFRESH = 1.0
"""Seconds between re-reads of the routes table (enable/disable, new routes)."""
OUTBOX_POLL = 0.5
PANS_KEPT = 10_000
"""Full PANs kept in memory for the 0420s and advices this process may still send; older
ones (and all after a restart) go with the truncated F2 kept at rest."""
STATE_WRITE_EVERY = 1.0
UPSTREAM_FIELDS = ("2", "3", "4", "14", "22", "23", "25", "35", "41", "42", "49", "53", "55")
"""(A void's 37 is its sale's RRN, as on the terminal side.)"""
"""Terminal request fields carried upstream as they are (52 is translated, 7/11/12/13/32/33/37
are the link's own)."""


@dataclass(frozen=True)
class Outcome:
    """What the upstream said (or did not), to record."""

    code: str
    extra: Mapping[str, str]
    route: str | None
    cost: int
    outbox_id: int | None
    outbox_state: str | None
    """'done' (delete the inflight row), 'pending' (reverse upstream), None (no row)."""
    reason: str = REVERSAL_TIMEOUT
    original: Txn | None = None
    """The sale a void undoes (marked voided when the upstream approves)."""


def record_routed(ledger: Ledger, conn: sqlite3.Connection, req: Request, out: Outcome
                  ) -> Message:
    """Record an off-us transaction with its channel, and settle its outbox row (writer)."""
    repeat = ledger._repeat(conn, req)
    refused = repeat if repeat is not None else (
        ledger.reply(req, BATCH_MISMATCH)
        if ledger._batch_state(conn, req.tid, req.batch) != "open" else None)
    if refused is not None:  # nothing recorded here: whatever the upstream did is reversed
        if out.outbox_id is not None:
            conn.execute("UPDATE h2h_outbox SET state='pending', reason=? WHERE id=?",
                         (REVERSAL_TERMINAL if out.outbox_state == "done" else out.reason,
                          out.outbox_id))
        return refused
    pan = rules.card_pan(req.doc)
    extra = dict(out.extra)
    extra["63"] = card_organisation(pan)
    response = ledger.reply(req, out.code, extra)
    txn_id = ledger._insert_txn(conn, req, response, pan, req.pan_hash, None, out.original)
    conn.execute("UPDATE txns SET route=?, channel_cost=? WHERE id=?",
                 (out.route, out.cost if out.code == "00" else 0, txn_id))
    if out.code == "00" and out.original is not None:
        conn.execute("UPDATE txns SET voided_by=? WHERE id=?", (txn_id, out.original.id))
    ledger._remember(conn, req, response)
    if out.outbox_id is not None:
        conn.execute("UPDATE h2h_sent SET txn_id=? WHERE outbox_id=?", (txn_id, out.outbox_id))
        if out.outbox_state == "done":
            conn.execute("UPDATE h2h_outbox SET state='done', reason='', txn_id=?, done_at=?"
                         " WHERE id=?", (txn_id, req.now.isoformat(timespec="seconds"),
                                         out.outbox_id))
        else:
            conn.execute("UPDATE h2h_outbox SET state='pending', reason=?, txn_id=? WHERE id=?",
                         (out.reason, txn_id, out.outbox_id))
    return response


def record_refund(ledger: Ledger, conn: sqlite3.Connection, req: Request, out: Outcome,
                  advice: Mapping[str, str]) -> tuple[Message, int | None]:
    """An approved refund of a routed sale and its 0220 advice, queued durably (writer)."""
    repeat = ledger._repeat(conn, req)
    if repeat is not None:
        return repeat, None
    if out.original is not None:  # checked again under the writer: a concurrent refund of
        fresh = _txn(conn.execute(  # the same sale may have committed since the first check
            "SELECT * FROM txns WHERE id=?" + for_update(conn), (out.original.id,)).fetchone())
        f61 = decode_field61(req.doc.get("61", ""))
        check = None if fresh is None else rules.decide_refund(
            int(req.doc["4"]), req.pan_hash, ledger._terminal_mid(conn, req.tid), fresh,
            f61.batch, f61.trace, None, req.pin)
        if check is not None and check.code != rules.UNKNOWN_CARD:
            refused = Outcome(check.code, {}, out.route, 0, None, None)
            return record_routed(ledger, conn, req, refused), None
    response = record_routed(ledger, conn, req, replace(out, original=None))
    if response.get("39") != "00" or out.original is None:
        return response, None
    conn.execute("UPDATE txns SET refunded=refunded+? WHERE id=?",
                 (int(req.doc["4"]), out.original.id))
    conn.execute("UPDATE txns SET orig_id=? WHERE tid=? AND batch=? AND stan=? AND mti=?",
                 (out.original.id, *req.key))
    stored = {**advice, "2": stored_pan(advice["2"])}
    cur = conn.execute(
        "INSERT INTO h2h_outbox (route, rrn, stan, doc, reason, state, created)"
        " VALUES (?, ?, ?, ?, 'advice', 'pending', ?)",
        (out.route, advice["37"], advice["11"], json.dumps(stored),
         datetime.now().isoformat(timespec="seconds")))
    return response, int(cur.lastrowid or 0)


INFLIGHT_STALE = timedelta(seconds=HANDLER_TIMEOUT + 5)
"""An `inflight` row older than this has no live request behind it (a route waits less than
the handler limit): its request is reversed upstream (0420/98)."""


def release_inflight(conn: sqlite3.Connection, *, startup: bool) -> None:
    """Turn the `inflight` rows no request is waiting on into pending 0420/98s (writer). At the
    start of a host on its own store that is every row (the process died between send and
    record); on a shared store, and while running, only the stale ones: a younger row may be
    another instance's request still out upstream."""
    if startup and not is_shared(conn):
        conn.execute("UPDATE h2h_outbox SET state='pending', reason=? WHERE state='inflight'",
                     (REVERSAL_TIMEOUT,))
        return
    cutoff = (datetime.now() - INFLIGHT_STALE).isoformat(timespec="seconds")
    conn.execute("UPDATE h2h_outbox SET state='pending', reason=? WHERE state='inflight'"
                 " AND created < ?", (REVERSAL_TIMEOUT, cutoff))


def open_inflight(conn: sqlite3.Connection, route: str, doc: Mapping[str, str]) -> int:
    """The durable 0420 prepared before the request leaves (state inflight)."""
    stored = {k: doc[k] for k in REVERSAL_FIELDS if k in doc}
    stored["2"] = stored_pan(doc["2"])
    cur = conn.execute(
        "INSERT INTO h2h_outbox (route, rrn, stan, doc, reason, state, created)"
        " VALUES (?, ?, ?, ?, ?, 'inflight', ?)",
        (route, doc["37"], doc["11"], json.dumps(stored), REVERSAL_TIMEOUT,
         datetime.now().isoformat(timespec="seconds")))
    outbox_id = int(cur.lastrowid or 0)
    conn.execute("INSERT INTO h2h_sent (outbox_id, doc) VALUES (?, ?)",
                 (outbox_id, json.dumps(stored)))
    return outbox_id


def stored_pan(pan: str) -> str:
    """F2 as kept at rest in the outbox: first 6 and last 4, zeros between (no clear PAN at
    rest; the upstream matches reversals by F32 + F37). See DECISIONS.md.

    >>> stored_pan("6222031234567890")
    '6222030000007890'
    """
    return pan[:6] + "0" * (len(pan) - 10) + pan[-4:]


def reverse_routed(ledger: Ledger, conn: sqlite3.Connection, req: Request) -> Message:
    """A terminal's 0400: the local reversal, and a 0420/06 to the original's channel."""
    response = ledger.financial(conn, req)
    row = conn.execute(
        "SELECT id, route, rrn, reversed FROM txns WHERE tid=? AND batch=? AND stan=?"
        " AND mti='0200'", (req.tid, req.batch, req.doc["11"])).fetchone()
    if row is None or not row["route"] or not row["reversed"]:
        return response
    if conn.execute("SELECT 1 FROM h2h_outbox WHERE txn_id=? AND reason!=''",
                    (row["id"],)).fetchone():
        return response
    sent = conn.execute("SELECT doc FROM h2h_sent WHERE txn_id=?", (row["id"],)).fetchone()
    if sent is None:
        return response
    sent_doc = json.loads(sent["doc"])
    conn.execute(
        "INSERT INTO h2h_outbox (route, rrn, stan, doc, reason, state, txn_id, created)"
        " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
        (row["route"], sent_doc["37"], sent_doc["11"], sent["doc"],
         REVERSAL_TERMINAL, row["id"], datetime.now().isoformat(timespec="seconds")))
    return response


def _now_fields() -> dict[str, str]:
    now = datetime.now()
    return {"7": now.strftime("%m%d%H%M%S"), "12": now.strftime("%H%M%S"),
            "13": now.strftime("%m%d")}


RUNNING: list[Router] = []
"""The routers of this process (the metrics collector reads their links)."""


def route_families() -> Iterator[Metric]:
    """Prometheus families of the links: up, degraded, in flight, demotions, success rate."""
    up = GaugeMetricFamily("poshost_route_up", "1 when the link is signed on with keys",
                           labels=["route"])
    degraded = GaugeMetricFamily("poshost_route_degraded", "1 while the route is demoted",
                                 labels=["route"])
    in_flight = GaugeMetricFamily("poshost_route_in_flight", "Requests awaiting the upstream",
                                  labels=["route"])
    rate = GaugeMetricFamily("poshost_route_success_rate", "Recent success rate",
                             labels=["route"])
    trips = CounterMetricFamily("poshost_route_demotions", "Times the route was demoted",
                                labels=["route"])
    for router in RUNNING:
        for name, link in list(router.links.items()):
            h = link.health
            up.add_metric([name], 1 if h.up else 0)
            degraded.add_metric([name], 1 if router.last_state.get(name, {}).get(
                "state") == "degraded" else 0)
            in_flight.add_metric([name], h.in_flight)
            rate.add_metric([name], h.success_rate())
            trips.add_metric([name], h.trips)
    yield from (up, degraded, in_flight, rate, trips)


class Router:
    """Routes off-us requests over the links; owns the links' tasks and the outbox."""

    def __init__(self, hsm: HsmClient, writer: Writer, ledger: Ledger,
                 read_conn: sqlite3.Connection, db_path: Path | str) -> None:
        self.hsm = hsm
        self.writer = writer
        self.ledger = ledger
        self.read_conn = read_conn
        self.db_path = db_path
        self.links: dict[str, Link] = {}
        self._turn = 0
        self._pans: OrderedDict[int, str] = OrderedDict()
        """Outbox id -> the PAN (F2 of its 0420), in memory only, the latest PANS_KEPT."""
        self._nursery: trio.Nursery | None = None
        self.last_state: dict[str, dict[str, Any]] = {}
        """Each link's state as of the last second (route list, metrics)."""

    @staticmethod
    def configured(conn: sqlite3.Connection) -> bool:
        return bool(load_routes(conn))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        await self.writer.submit(lambda conn: release_inflight(conn, startup=True))
        RUNNING.append(self)
        try:
            await self._run(task_status=task_status)
        finally:
            RUNNING.remove(self)

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._refresh()
            nursery.start_soon(self._refresh_loop)
            nursery.start_soon(self.run_outbox)
            task_status.started()

    async def _refresh(self) -> None:
        assert self._nursery is not None
        for route, row in load_routes(self.read_conn):
            link = self.links.get(route.name)
            if link is None:
                link = self.links[route.name] = Link(route, row, self.hsm)
                await self._nursery.start(link.run)
            else:
                link.route = route

    async def _refresh_loop(self) -> None:
        last_state = 0.0
        while True:
            await trio.sleep(ROUTES_REFRESH)
            await self._refresh()
            now = trio.current_time()
            if now - last_state >= STATE_WRITE_EVERY:
                last_state = now
                self._write_state(now)

    def _write_state(self, now: float) -> None:
        self.last_state = {n: link.state(now) for n, link in self.links.items()}
        path = route_state_path(self.db_path)
        if path is None:
            return
        try:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.last_state))
            tmp.replace(path)
        except OSError as exc:
            log.warning("route state not written: %s", exc)

    # ------------------------------------------------------------------ forwarding

    def _is_local(self, req: Request) -> bool:
        """On-us card, a repeat, or a closed batch: the local path answers."""
        if req.pan_hash and load_card(self.read_conn, req.pan_hash) is not None:
            return True
        if self.read_conn.execute(
                "SELECT 1 FROM idempotence WHERE tid=? AND batch=? AND stan=? AND mti=?",
                req.key).fetchone():
            return True
        return self.ledger._batch_state(self.read_conn, req.tid, req.batch) != "open"

    def _used_today(self, pan_hash: str) -> dict[str, int]:
        rows = self.read_conn.execute(
            "SELECT route, SUM(amount) FROM txns WHERE pan_hash=? AND settlement_date=? AND"
            " rc='00' AND kind='sale' AND reversed=0 AND voided_by IS NULL AND route IS NOT"
            " NULL GROUP BY route", (pan_hash, datetime.now().date().isoformat())).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    async def forward(self, req: Request, terminal: Terminal) -> Message | None:
        """The answer for an off-us request, or None when the local path should answer."""
        if req.kind.name == "reversal":
            return await self._terminal_reversal(req)
        if req.kind.name == "void" and self.links:
            return await self._void(req, terminal)
        if req.kind.name == "refund" and self.links:
            return await self._refund(req)
        if req.kind.name not in ROUTED_KINDS or not self.links or self._is_local(req):
            return None
        pan = rules.card_pan(req.doc)
        amount = int(req.doc.get("4", "0") or 0)
        routes = [link.route for link in self.links.values()]
        ask = Ask(pan, amount, datetime.now().time(), trio.current_time(),
                  self._used_today(req.pan_hash))
        self._turn += 1
        choice = choose_route(routes, {n: li.health for n, li in self.links.items()}, ask,
                              self._turn)
        if choice.code == NO_ROUTE:
            return None
        if choice.route is None:
            log.warning("tid=%s no channel for an off-us card: %s", req.tid, choice.why)
            return await self._record(req, Outcome(NO_CHANNEL, {}, None, 0, None, None))
        return await self._send(req, terminal, self.links[choice.route.name])

    async def _void(self, req: Request, terminal: Terminal) -> Message | None:
        """A void of a routed sale goes to the sale's channel (F37 = the sale's RRN)."""
        doc = req.doc
        try:
            f61 = decode_field61(doc.get("61", ""))
        except SpecError:
            return None
        original = self.ledger._original(self.read_conn, req.tid, int(f61.batch), f61.trace)
        row = None if original is None else self.read_conn.execute(
            "SELECT route FROM txns WHERE id=?", (original.id,)).fetchone()
        if original is None or row is None or not row["route"] or self._is_repeat(req):
            return None
        amount = int(doc.get("4", "0") or 0)
        check = rules.decide_void(amount, req.pan_hash, original, doc.get("37", "").strip(),
                                  req.batch, None, req.pin)
        route = row["route"]
        if check.code != rules.UNKNOWN_CARD:  # refused here, before going upstream
            return await self._record(req, Outcome(check.code, {}, route, 0, None, None))
        link = self.links.get(route)
        if link is None or link.phase is not LinkPhase.UP:
            return await self._record(req, Outcome(NO_CHANNEL, {}, route, 0, None, None))
        return await self._send(req, terminal, link, original)

    async def _refund(self, req: Request) -> Message | None:
        """A refund of a routed sale: checked here (25/12/64), approved to the terminal once
        committed with its 0220 advice, which then goes to the sale's channel until a 0230
        (store and forward, like the terminal's own advice)."""
        doc = req.doc
        original = _txn(self.read_conn.execute("SELECT * FROM txns WHERE rrn=? AND kind='sale'",
                                               (doc.get("37", "").strip(),)).fetchone())
        row = None if original is None else self.read_conn.execute(
            "SELECT route FROM txns WHERE id=?", (original.id,)).fetchone()
        if original is None or row is None or not row["route"] or self._is_repeat(req):
            return None
        link = self.links.get(row["route"])
        if link is None:
            return None
        try:
            f61 = decode_field61(doc.get("61", ""))
        except SpecError:
            return None
        amount = int(doc.get("4", "0") or 0)
        mid = self.ledger._terminal_mid(self.read_conn, req.tid)
        check = rules.decide_refund(amount, req.pan_hash, mid, original, f61.batch, f61.trace,
                                    None, req.pin)
        if check.code != rules.UNKNOWN_CARD:
            return await self._record(req, Outcome(check.code, {}, link.name, 0, None, None))
        advice = {"t": "0220", "2": rules.card_pan(doc), "3": doc["3"], "4": doc["4"],
                  **_now_fields(), "11": link.next_stan(), "32": link.acquirer_id,
                  "33": link.acquirer_id, "37": original.rrn, "41": doc["41"],
                  "42": doc["42"], "49": doc.get("49", "156")}
        advice = dict(sorted(advice.items(), key=lambda kv: (kv[0] != "t", int(kv[0])
                                                             if kv[0].isdigit() else 0)))
        out = Outcome("00", {}, link.name, link.route.cost(amount), None, None,
                      original=original)
        ledger = self.ledger
        response, outbox_id = await self.writer.submit(
            lambda conn: record_refund(ledger, conn, req, out, advice))
        if outbox_id is not None:
            self._keep_pan(outbox_id, advice["2"])
        return response

    def _keep_pan(self, outbox_id: int, pan: str) -> None:
        self._pans[outbox_id] = pan
        while len(self._pans) > PANS_KEPT:
            self._pans.popitem(last=False)

    def _is_repeat(self, req: Request) -> bool:
        return self.read_conn.execute(
            "SELECT 1 FROM idempotence WHERE tid=? AND batch=? AND stan=? AND mti=?",
            req.key).fetchone() is not None

    async def _record(self, req: Request, out: Outcome) -> Message:
        ledger = self.ledger
        return await self.writer.submit(lambda conn: record_routed(ledger, conn, req, out))

    async def _upstream_doc(self, req: Request, terminal: Terminal, link: Link
                            ) -> dict[str, str]:
        doc = req.doc
        up = {k: doc[k] for k in UPSTREAM_FIELDS if k in doc}
        up.update(_now_fields())
        up.setdefault("4", "000000000000")  # a balance inquiry: amount 0 (F4 is mandatory)
        original_rrn = doc.get("37", "").strip() if req.kind.name == "void" else None
        up.update({"t": "0200", "2": rules.card_pan(doc), "11": link.next_stan(),
                   "32": link.acquirer_id, "33": link.acquirer_id,
                   "37": original_rrn or req.rrn})
        if "52" in doc and terminal.pik_lmk and link.keys is not None:
            block = await self.hsm.translate_pin(terminal.pik_lmk, link.keys.zpk,
                                                 bytes.fromhex(doc["52"]), up["2"])
            up["52"] = block.hex().upper()
        return dict(sorted(up.items(), key=lambda kv: (kv[0] != "t", int(kv[0])
                                                      if kv[0].isdigit() else 0)))

    async def _send(self, req: Request, terminal: Terminal, link: Link,
                    original: Txn | None = None) -> Message:
        route = link.route
        cost = route.cost(int(req.doc.get("4", "0") or 0))
        try:
            up = await self._upstream_doc(req, terminal, link)
        except HsmError as exc:
            log.error("tid=%s PIN not translated for %s: %s", req.tid, route.name, exc)
            return await self._record(req, Outcome("96", {}, route.name, 0, None, None))
        outbox_id = await self.writer.submit(lambda conn: open_inflight(conn, route.name, up))
        self._keep_pan(outbox_id, up["2"])
        health = link.health
        health.in_flight += 1
        if health.check_pending(trio.current_time(), route):
            log.warning("route %s demoted: %d in flight", route.name, health.in_flight)
        started = time.perf_counter()
        answer, mac_ok, reason = None, False, REVERSAL_TIMEOUT
        try:
            answer, mac_ok = await link.exchange(up)
        except (*LINK_ERRORS, SpecError) as exc:
            log.warning("route %s: %s", route.name, exc)
        finally:
            health.in_flight -= 1
        latency = time.perf_counter() - started
        code = None if answer is None else answer.get("39")
        if answer is not None and not mac_ok and code not in UPSTREAM_FAILURE_CODES:
            reason = REVERSAL_MAC
        ok = answer is not None and mac_ok and code not in UPSTREAM_FAILURE_CODES
        now = trio.current_time()
        if ok:
            health.success(latency, now)
            assert answer is not None and code is not None
            extra = {k: answer[k] for k in ("38", "54", "55") if k in answer}
            out = Outcome(code, extra, route.name, cost, outbox_id, "done", original=original)
        else:
            if health.failure(latency, now, route):
                log.warning("route %s demoted for %.0f s after %s", route.name,
                            health.last_hold, "failures")
            out = Outcome(NO_CHANNEL, {}, route.name, 0, outbox_id, "pending", reason)
        return await self._record(req, out)

    async def _terminal_reversal(self, req: Request) -> Message | None:
        row = self.read_conn.execute(
            "SELECT id, route FROM txns WHERE tid=? AND batch=? AND stan=? AND mti='0200'",
            (req.tid, req.batch, req.doc["11"])).fetchone()
        if row is None or not row["route"]:
            return None
        ledger = self.ledger
        sent = self.read_conn.execute("SELECT outbox_id FROM h2h_sent WHERE txn_id=?",
                                      (row["id"],)).fetchone()
        response = await self.writer.submit(lambda conn: reverse_routed(ledger, conn, req))
        if sent is not None:
            pan = self._pans.get(sent[0])
            new = self.read_conn.execute(
                "SELECT id FROM h2h_outbox WHERE txn_id=? AND state='pending'",
                (row["id"],)).fetchone()
            if pan is not None and new is not None:
                self._keep_pan(new[0], pan)
        return response

    # ------------------------------------------------------------------ the outbox

    async def run_outbox(self) -> None:
        """Send pending 0420s (0421 on repeats) until each has its 0430."""
        next_at: dict[int, float] = {}
        while True:
            await trio.sleep(OUTBOX_POLL)
            await self.writer.submit(lambda conn: release_inflight(conn, startup=False))
            rows = self.read_conn.execute(
                "SELECT * FROM h2h_outbox WHERE state='pending' ORDER BY id").fetchall()
            now = trio.current_time()
            for row in rows:
                link = self.links.get(row["route"])
                if link is None or now < next_at.get(row["id"], 0.0) or link.keys is None:
                    continue
                await self._send_reversal(row, link, next_at)

    async def _send_reversal(self, row: sqlite3.Row, link: Link,
                             next_at: dict[int, float]) -> None:
        doc: dict[str, Any] = json.loads(row["doc"])
        doc["2"] = self._pans.get(row["id"], doc["2"])
        if doc.get("t") != "0220":  # an advice is sent again as it is
            doc.update({"t": "0421" if row["attempts"] else "0420", "39": row["reason"]})
        doc = dict(sorted(doc.items(), key=lambda kv: (kv[0] != "t", int(kv[0])
                                                      if kv[0].isdigit() else 0)))
        attempts = int(row["attempts"])
        answer = None
        try:
            answer, mac_ok = await link.exchange(doc)
        except (*LINK_ERRORS, SpecError) as exc:
            log.info("route %s: 0420 for RRN %s not sent: %s", link.name, row["rrn"], exc)
        rid = row["id"]
        if answer is not None and answer.get("t") in ("0430", "0230") and mac_ok:
            await self.writer.submit(lambda conn: conn.execute(
                "UPDATE h2h_outbox SET state='done', attempts=?, done_at=? WHERE id=?",
                (attempts + 1, datetime.now().isoformat(timespec="seconds"), rid)))
            self._pans.pop(rid, None)
            next_at.pop(rid, None)
            log.info("route %s: %s for RRN %s acknowledged (%s %s)", link.name,
                     "advice" if answer.get("t") == "0230" else "reversal", row["rrn"],
                     answer.get("t"), answer.get("39"))
            return
        await self.writer.submit(lambda conn: conn.execute(
            "UPDATE h2h_outbox SET attempts=? WHERE id=?", (attempts + 1, rid)))
        next_at[rid] = trio.current_time() + reversal_backoff(attempts)
