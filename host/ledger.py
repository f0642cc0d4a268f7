"""The acquirer's ledger: applies one request to the store inside the writer's transaction.

Every method runs inside the writer's group transaction (on the event loop thread, or on the
writer's worker thread for heavy jobs; see host/writer.py): it reads the rows it needs, asks
host/rules.py for the decision, writes the effects and the idempotence row, and returns the
response (without F12/F13/F64). Nothing here awaits.
"""

from __future__ import annotations

import itertools
import json
import secrets
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import cached_property

from host import chip, rules
from host.db import (
    Card,
    Conn,
    PanProtector,
    for_update,
    get_meta,
    is_shared,
    load_card,
    lock_terminal,
    set_meta,
)
from host.limits import BATCH_FIRST, BATCH_MAX, RRN_RESTART_GAP
from host.responses import replayed, request_digest, respond, storable
from host.rules import PinResult, Txn
from specs.catalog import KINDS, MessageKind
from specs.codes import (
    APPROVED,
    BATCH_MISMATCH,
    DOMESTIC_ORGANISATION,
    DUPLICATE,
    MAC_ERROR,
    card_organisation,
)
from specs.composite import (
    Field60,
    SettlementTotals,
    UploadRecord,
    decode_field60,
    decode_field61,
    encode_field60,
    encode_settlement_totals,
)
from specs.messages import Message

AUTH_CODE_DIGITS = 6
RRN_DIGITS = 12


class RrnCounter:
    """Host-unique RRNs: a 12-digit sequence whose high-water mark the writer persists at each
    commit. With worker processes each worker numbers its own residue class (``offset`` of
    ``step``), so no two processes ever hand out the same RRN."""

    def __init__(self, start: int, step: int = 1, offset: int = 0) -> None:
        self._count = itertools.count(start + offset, step)
        self._lock = threading.Lock()
        self.high_water = start

    def next(self) -> str:
        with self._lock:
            value = next(self._count)
            self.high_water = value
        return f"{value % 10**RRN_DIGITS:0{RRN_DIGITS}d}"

    @staticmethod
    def restart_base(conn: sqlite3.Connection) -> int:
        """Where numbering resumes: past the persisted high-water mark by RRN_RESTART_GAP, so
        numbers handed out (to rejects) after the last commit before a crash never repeat."""
        return int(get_meta(conn, "rrn") or 0) + RRN_RESTART_GAP + 1

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> RrnCounter:
        return cls(cls.restart_base(conn))

    def persist(self, conn: sqlite3.Connection) -> None:
        persist_rrn_high_water(conn, self.high_water)


def persist_rrn_high_water(conn: Conn, value: int) -> None:
    if is_shared(conn):
        return  # PostgreSQL numbers from a sequence (SharedRrnCounter): nothing to persist
    set_meta(conn, "rrn", str(value))


RRN_BLOCK = 1000
"""RRNs a host process takes at once from PostgreSQL's ``rrn_blocks`` sequence."""


class SharedRrnCounter(RrnCounter):
    """RRNs unique across every instance and process on one PostgreSQL database: each
    process takes blocks of RRN_BLOCK numbers from the ``rrn_blocks`` sequence (one round
    trip per block, on its own connection) and hands them out in order. A sequence never
    gives a value twice, committed or not, so a crash skips numbers and never repeats one."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: Conn | None = None
        self._next = self._end = 0
        self._lock = threading.Lock()
        self.high_water = 0

    def next(self) -> str:
        with self._lock:
            if self._next >= self._end:
                if self._conn is None:
                    from host.db import connect
                    self._conn = connect(self._url)
                block = int(self._conn.execute("SELECT nextval('rrn_blocks')").fetchone()[0])
                self._next, self._end = block * RRN_BLOCK, (block + 1) * RRN_BLOCK
            value = self._next
            self._next += 1
            self.high_water = value
        return f"{value % 10**RRN_DIGITS:0{RRN_DIGITS}d}"

    def persist(self, conn: Conn) -> None:
        """Nothing: the sequence is the record."""


def rrn_counter_for(db_path: object, conn: Conn, step: int = 1, offset: int = 0) -> RrnCounter:
    """The RRN counter for this store: a sequence's blocks on PostgreSQL, the persisted
    high-water mark (this process's residue class of ``step``) on SQLite."""
    if is_shared(conn):
        return SharedRrnCounter(str(db_path))
    return RrnCounter(RrnCounter.restart_base(conn), step, offset)


def new_auth_code() -> str:
    return f"{secrets.randbelow(10**AUTH_CODE_DIGITS):0{AUTH_CODE_DIGITS}d}"


@dataclass(frozen=True)
class Request:
    """A decoded, MAC-checked request with what the message path learned about it."""

    kind: MessageKind
    doc: Message
    digest: str
    now: datetime
    rrn: str
    """The RRN of the answer (numbered by the message path; a reversal answers with its
    original's)."""
    pin: PinResult = PinResult.ABSENT
    pan_hash: str = ""
    """The card's keyed hash, computed by the HSM on the message path (the ledger cannot
    await it); empty when the request carries no PAN."""
    chip: chip.ChipFacts | None = None
    """What the message path learned from a chip request's ARQC (KW), None otherwise."""
    mak_lmk: str = ""
    """The MAC key (under LMK) the request was verified with; on a shared store the ledger
    refuses it (A0) when another instance has signed the terminal on since."""

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        """Pickled by kind name (what crosses from a worker process to the writer)."""
        return (_request, (self.kind.name, self.doc, self.digest, self.now, self.rrn,
                           self.pin, self.pan_hash, self.chip, self.mak_lmk))

    @cached_property
    def tid(self) -> str:
        return self.doc["41"].strip()

    @cached_property
    def batch(self) -> int:
        return int(decode_field60(self.doc["60"]).batch)

    @cached_property
    def key(self) -> tuple[str, int, str, str]:
        return (self.tid, self.batch, self.doc["11"], self.doc["t"])


def _request(kind: str, doc: Message, digest: str, now: datetime, rrn: str,
             pin: PinResult, pan_hash: str = "",
             chip_facts: chip.ChipFacts | None = None, mak_lmk: str = "") -> Request:
    return Request(KINDS[kind], doc, digest, now, rrn, pin, pan_hash, chip_facts, mak_lmk)


def _txn(row: sqlite3.Row | None) -> Txn | None:
    if row is None:
        return None
    return Txn(row["id"], row["tid"], row["mid"], row["batch"], row["stan"], row["kind"],
               row["pan_hash"], row["amount"], row["rc"], row["rrn"], row["voided_by"],
               bool(row["reversed"]), row["refunded"], bool(row["domestic"]))


class Ledger:
    """Applies requests to the store. One instance per host, used by the writer only."""

    def __init__(self, pans: PanProtector) -> None:
        self.pans = pans

    # ------------------------------------------------------------------ common helpers

    def reply(self, req: Request, code: str, extra: Mapping[str, str] | None = None,
              rrn: str | None = None) -> Message:
        return respond(req.kind, req.doc, code, req.now, rrn or req.rrn, extra)

    def _remember(self, conn: sqlite3.Connection, req: Request, response: Message) -> None:
        conn.execute(
            "INSERT INTO idempotence VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*req.key, req.digest, storable(response), req.now.isoformat(timespec="seconds")),
        )

    def _repeat(self, conn: sqlite3.Connection, req: Request) -> Message | None:
        row = conn.execute(
            "SELECT digest, response FROM idempotence WHERE tid=? AND batch=? AND stan=?"
            " AND mti=?", req.key,
        ).fetchone()
        if row is None:
            return None
        # rows from before the raw-bytes digest carry the JSON one: a repeat across the upgrade
        if row["digest"] == req.digest or row["digest"] == request_digest(req.doc):
            return replayed(row["response"], req.now)
        return self.reply(req, DUPLICATE)

    def _batch_state(self, conn: sqlite3.Connection, tid: str, batch: int) -> str | None:
        row = conn.execute(
            "SELECT b.state FROM batches b JOIN terminals t ON t.tid = b.tid AND t.batch = b.batch"
            " WHERE b.tid = ? AND b.batch = ?", (tid, batch),
        ).fetchone()
        return None if row is None else row[0]

    def _admit(self, conn: Conn, req: Request, states: tuple[str, ...]) -> Message | None:
        """The refusal of a request whose batch is not in one of ``states`` (77), or, on a
        shared store, whose MAC key is no longer the terminal's (A0: another instance signed
        it on since this one cached the keys); None to go on. One statement for both."""
        row = conn.execute(
            "SELECT b.state, t.mak_lmk FROM batches b JOIN terminals t ON t.tid = b.tid AND"
            " t.batch = b.batch WHERE b.tid = ? AND b.batch = ?", (req.tid, req.batch),
        ).fetchone()
        if req.mak_lmk and is_shared(conn):
            current = row[1] if row is not None else conn.execute(
                "SELECT mak_lmk FROM terminals WHERE tid = ?", (req.tid,)).fetchone()[0]
            if current != req.mak_lmk:
                return self.reply(req, MAC_ERROR)
        if row is None or row[0] not in states:
            return self.reply(req, BATCH_MISMATCH)
        return None

    def _terminal_mid(self, conn: sqlite3.Connection, tid: str) -> str:
        return conn.execute("SELECT mid FROM terminals WHERE tid = ?", (tid,)).fetchone()[0]

    def _move(self, conn: sqlite3.Connection, pan_hash: str, decision: rules.Decision) -> None:
        if decision.card_delta:
            conn.execute("UPDATE cards SET balance = balance + ? WHERE pan_hash = ?",
                         (decision.card_delta, pan_hash))
        if decision.pin_tries is not None:
            conn.execute("UPDATE cards SET pin_tries = ? WHERE pan_hash = ?",
                         (decision.pin_tries, pan_hash))

    # ------------------------------------------------------------------ sign-on / off

    def sign_on(self, conn: sqlite3.Connection, tid: str, keys: Mapping[str, str],
                now: datetime) -> int:
        """Store fresh working keys (under LMK) and return the terminal's open batch."""
        lock_terminal(conn, tid)
        conn.execute(
            "UPDATE terminals SET pik_lmk=?, pik_kcv=?, mak_lmk=?, mak_kcv=?, keys_at=?"
            " WHERE tid=?",
            (keys["pik_lmk"], keys["pik_kcv"], keys["mak_lmk"], keys["mak_kcv"],
             now.isoformat(timespec="seconds"), tid),
        )
        batch = conn.execute("SELECT batch FROM terminals WHERE tid=?", (tid,)).fetchone()[0]
        if batch is None:
            return self._open_batch(conn, tid, BATCH_FIRST, now)
        if self._batch_state(conn, tid, batch) == "uploading":
            self._close_upload(conn, tid, batch, None, now, note="upload abandoned: sign-on")
            batch = conn.execute("SELECT batch FROM terminals WHERE tid=?", (tid,)).fetchone()[0]
        return int(batch)

    def sign_off(self, conn: sqlite3.Connection, tid: str) -> None:
        lock_terminal(conn, tid)
        conn.execute("UPDATE terminals SET pik_lmk=NULL, mak_lmk=NULL, pik_kcv=NULL,"
                     " mak_kcv=NULL WHERE tid=?", (tid,))

    def _open_batch(self, conn: sqlite3.Connection, tid: str, batch: int, now: datetime) -> int:
        batch = batch if batch <= BATCH_MAX else BATCH_FIRST
        conn.execute(
            "INSERT OR REPLACE INTO batches (tid, batch, state, opened_at)"
            " VALUES (?, ?, 'open', ?)",
            (tid, batch, now.isoformat(timespec="seconds")),
        )
        conn.execute("UPDATE terminals SET batch=? WHERE tid=?", (batch, tid))
        return batch

    # ------------------------------------------------------------------ financial

    def financial(self, conn: sqlite3.Connection, req: Request) -> Message:
        """Sale, balance inquiry, void, refund or reversal, applied exactly once."""
        lock_terminal(conn, req.tid)
        repeat = self._repeat(conn, req)
        if repeat is not None:
            return repeat
        refused = self._admit(conn, req, ("open",))
        if refused is not None:
            return refused
        if req.kind.name == "reversal":
            response = self._reversal(conn, req)
        else:
            response = self._authorise(conn, req)
        self._remember(conn, req, response)
        return response

    def _original(self, conn: sqlite3.Connection, tid: str, batch: int, stan: str,
                  mti: str = "0200") -> Txn | None:
        return _txn(conn.execute(
            "SELECT * FROM txns WHERE tid=? AND batch=? AND stan=? AND mti=?",
            (tid, batch, stan, mti)).fetchone())

    def _by_id(self, conn: sqlite3.Connection, txn_id: int | None) -> Txn | None:
        if txn_id is None:
            return None
        return _txn(conn.execute("SELECT * FROM txns WHERE id=?", (txn_id,)).fetchone())

    def _decide(self, conn: sqlite3.Connection, req: Request, pan: str, pan_hash: str,
                card: Card | None) -> tuple[rules.Decision, Txn | None]:
        doc, amount = req.doc, int(req.doc.get("4", "0") or 0)
        today = req.now.strftime("%y%m")
        expiry = rules.expiry_of(doc)
        name = req.kind.name
        if name == "sale":
            no_cvm = rules.no_cvm_allowed(doc.get("22", ""), amount)
            return rules.decide_sale(amount, card, expiry, req.pin, today, no_cvm), None
        if name == "balance":
            decision = rules.decide_balance(card, expiry, req.pin, today)
            if decision.approved and card is not None:
                from specs.composite import encode_balance
                from specs.values import MAX_AMOUNT_MINOR
                # refunds may have credited a card past what F54's n12 carries: the
                # available balance shown is capped there rather than not encodable
                shown = max(-MAX_AMOUNT_MINOR, min(card.balance, MAX_AMOUNT_MINOR))
                decision = rules.Decision(decision.code, pin_tries=decision.pin_tries,
                                          extra={"54": encode_balance(shown)})
            return decision, None
        f61 = decode_field61(doc["61"])
        if name == "void":
            original = self._original(conn, req.tid, int(f61.batch), f61.trace)
            return rules.decide_void(amount, pan_hash, original, doc["37"].strip(), req.batch,
                                     card, req.pin), original
        # the sale may be another terminal's (same merchant): its row is locked so that two
        # refunds on two instances never pass its amount together
        original = _txn(conn.execute("SELECT * FROM txns WHERE rrn=? AND kind='sale'"
                                     + for_update(conn), (doc["37"].strip(),)).fetchone())
        mid = self._terminal_mid(conn, req.tid)
        return rules.decide_refund(amount, pan_hash, mid, original, f61.batch, f61.trace,
                                   card, req.pin), original

    def _authorise(self, conn: sqlite3.Connection, req: Request) -> Message:
        doc = req.doc
        pan = rules.card_pan(doc)
        pan_hash = req.pan_hash
        # locked on PostgreSQL: balance, PIN tries and ATC, one instance at a time
        card = load_card(conn, pan_hash, lock=True) if pan_hash else None
        orphan = conn.execute(
            "SELECT stan FROM reversals WHERE tid=? AND batch=? AND stan=? AND txn_id IS NULL"
            " AND processing_code=?", (req.tid, req.batch, doc["11"], doc["3"]),
        ).fetchone() if doc["t"] == "0200" else None
        chip_code = None if req.chip is None else chip.apply_chip_rules(
            conn, req.chip, pan_hash, card is not None)
        if orphan is not None:
            decision, original = rules.Decision(rules.ALREADY_REVERSED), None
        elif chip_code is not None:  # section 8: the cryptogram before any other card check
            decision, original = rules.Decision(chip_code), None
        else:
            decision, original = self._decide(conn, req, pan, pan_hash, card)
        if card is not None:
            self._move(conn, pan_hash, decision)
        extra = dict(decision.extra)
        extra["63"] = card_organisation(pan) if pan else DOMESTIC_ORGANISATION
        if decision.approved and req.kind.name in ("sale", "void", "balance"):
            extra["38"] = new_auth_code()
        response = self.reply(req, decision.code, extra)
        txn_id = self._insert_txn(conn, req, response, pan, pan_hash, card, original)
        chip.record_entry(conn, txn_id, doc, req.chip)
        if orphan is not None:
            key = (req.tid, req.batch, doc["11"])
            conn.execute("UPDATE reversals SET txn_id=? WHERE tid=? AND batch=? AND stan=?",
                         (txn_id, *key))
            conn.execute("UPDATE txns SET reversed=1, reversal_reason=(SELECT reason FROM"
                         " reversals WHERE tid=? AND batch=? AND stan=?) WHERE id=?",
                         (*key, txn_id))
        if decision.approved and original is not None:
            if req.kind.name == "void":
                conn.execute("UPDATE txns SET voided_by=? WHERE id=?", (txn_id, original.id))
            else:
                conn.execute("UPDATE txns SET refunded=refunded+? WHERE id=?",
                             (int(doc["4"]), original.id))
        return response

    def _insert_txn(self, conn: sqlite3.Connection, req: Request, response: Message, pan: str,
                    pan_hash: str, card: Card | None, original: Txn | None) -> int:
        doc = req.doc
        cur = conn.execute(
            "INSERT INTO txns (tid, mid, batch, stan, mti, kind, pan_hash, pan_masked, amount,"
            " currency, rc, rrn, auth_code, orig_id, domestic, created, settlement_date)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (req.tid, doc["42"].strip(), req.batch, doc["11"], doc["t"], req.kind.name,
             pan_hash, self.pans.mask(pan), int(doc.get("4", "0") or 0), doc.get("49"),
             response["39"], response.get("37", ""), response.get("38"),
             None if original is None else original.id,
             1 if card is None or card.domestic else 0,
             req.now.isoformat(timespec="seconds"), req.now.date().isoformat()),
        )
        return int(cur.lastrowid or 0)

    def _reversal(self, conn: sqlite3.Connection, req: Request) -> Message:
        doc = req.doc
        amount = int(doc["4"])
        original = self._original(conn, req.tid, req.batch, doc["11"])
        if original is not None and original.kind not in ("sale", "void"):
            original = None
        sale = None
        if original is not None and original.kind == "void":
            sale = _txn(conn.execute(
                "SELECT s.* FROM txns s JOIN txns v ON v.orig_id = s.id WHERE v.id=?",
                (original.id,)).fetchone())
        decision = rules.decide_reversal(amount, original, sale)
        reason = doc["39"]
        if decision.mark_reversed and original is not None:
            conn.execute("UPDATE txns SET reversed=1, reversal_reason=? WHERE id=?",
                         (reason, original.id))
            if decision.undo:
                conn.execute("UPDATE cards SET balance = balance + ? WHERE pan_hash = ?",
                             (decision.undo, original.pan_hash))
            if decision.restore_sale is not None:
                conn.execute("UPDATE txns SET voided_by=NULL WHERE id=?", (decision.restore_sale,))
        response = self.reply(req, decision.code, rrn=original.rrn if original else None)
        conn.execute(
            "INSERT OR REPLACE INTO reversals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (req.tid, req.batch, doc["11"], doc["3"], amount, reason,
             None if original is None else original.id, decision.code,
             req.now.isoformat(timespec="seconds")),
        )
        return response

    # ------------------------------------------------------------------ settlement

    def _batch_txns(self, conn: sqlite3.Connection, tid: str, batch: int) -> list[sqlite3.Row]:
        return conn.execute("SELECT * FROM txns WHERE tid=? AND batch=? ORDER BY id",
                            (tid, batch)).fetchall()

    def settle(self, conn: sqlite3.Connection, req: Request,
               terminal: SettlementTotals) -> Message:
        lock_terminal(conn, req.tid)
        repeat = self._repeat(conn, req)
        if repeat is not None:
            return repeat
        refused = self._admit(conn, req, ("open", "uploading"))
        if refused is not None:
            return refused
        rows = self._batch_txns(conn, req.tid, req.batch)
        host = rules.batch_totals(t for t in map(_txn, rows) if t is not None)
        result = rules.settlement_result(host, terminal)
        balanced = rules.is_balanced(result)
        conn.execute(
            "UPDATE batches SET host_totals=?, terminal_totals=?, result=?, state=? WHERE tid=?"
            " AND batch=?",
            (json.dumps(asdict(host)), json.dumps(asdict(terminal)),
             "balanced" if balanced else "not balanced", "open" if balanced else "uploading",
             req.tid, req.batch),
        )
        conn.execute("DELETE FROM uploads WHERE tid=? AND batch=?", (req.tid, req.batch))
        response = self.reply(req, APPROVED, {"48": encode_settlement_totals(result)})
        if balanced:
            self._close(conn, req.tid, req.batch, req.now)
        self._remember(conn, req, response)
        return response

    def upload(self, conn: sqlite3.Connection, req: Request,
               records: list[UploadRecord], hashes: list[str] | None = None) -> Message:
        """Store a 0320's records; ``hashes`` are their PANs' keyed hashes (HSM), in order."""
        lock_terminal(conn, req.tid)
        repeat = self._repeat(conn, req)
        if repeat is not None:
            return repeat
        refused = self._admit(conn, req, ("uploading",))
        if refused is not None:
            return refused
        conn.executemany(
            "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(req.tid, req.batch, r.trace, h, self.pans.mask(r.pan), r.amount, r.organisation,
              req.doc["11"])
             for r, h in zip(records, hashes or [self.pans.hash(r.pan) for r in records],
                             strict=True)],
        )
        response = self.reply(req, APPROVED)
        self._remember(conn, req, response)
        return response

    def upload_end(self, conn: sqlite3.Connection, req: Request, total: int) -> Message:
        lock_terminal(conn, req.tid)
        repeat = self._repeat(conn, req)
        if repeat is not None:
            return repeat
        refused = self._admit(conn, req, ("uploading",))
        if refused is not None:
            return refused
        self._close_upload(conn, req.tid, req.batch, total, req.now)
        response = self.reply(req, APPROVED)
        self._remember(conn, req, response)
        return response

    def _close_upload(self, conn: sqlite3.Connection, tid: str, batch: int,
                      total: int | None, now: datetime, note: str | None = None) -> None:
        rows = self._batch_txns(conn, tid, batch)
        txns = [t for t in map(_txn, rows) if t is not None]
        masked = {r["id"]: r["pan_masked"] for r in rows}
        host = rules.upload_records(txns, masked)
        uploaded = conn.execute(
            "SELECT trace, pan_hash, pan_masked, amount FROM uploads WHERE tid=? AND batch=?",
            (tid, batch)).fetchall()
        terminal = [rules.Record(u[0], u[1], u[2], u[3]) for u in uploaded]
        mismatches = rules.reconcile(host, terminal)
        created = now.isoformat(timespec="seconds")
        for m in mismatches:
            conn.execute(
                "INSERT INTO exceptions (tid, batch, kind, trace, host_data, terminal_data,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tid, batch, m.kind, m.trace, _record_json(m.host), _record_json(m.terminal),
                 created),
            )
        if total is not None and total != len(terminal):
            conn.execute(
                "INSERT INTO exceptions (tid, batch, kind, trace, host_data, terminal_data,"
                " created) VALUES (?, ?, 'count_differs', NULL, ?, ?, ?)",
                (tid, batch, json.dumps({"records_received": len(terminal)}),
                 json.dumps({"records_announced": total}), created),
            )
        conn.execute("UPDATE batches SET upload_expected=?, note=? WHERE tid=? AND batch=?",
                     (total, note, tid, batch))
        self._close(conn, tid, batch, now)

    def _close(self, conn: sqlite3.Connection, tid: str, batch: int, now: datetime) -> None:
        conn.execute("UPDATE batches SET state='closed', closed_at=? WHERE tid=? AND batch=?",
                     (now.isoformat(timespec="seconds"), tid, batch))
        self._open_batch(conn, tid, batch + 1, now)


def _record_json(record: rules.Record | None) -> str | None:
    if record is None:
        return None
    data = asdict(record)
    data.pop("pan_hash")
    return json.dumps(data)


def field60_of_sign_on(batch: int) -> str:
    kind = KINDS["sign_on"]
    return encode_field60(Field60(kind.type_code or "00", f"{batch:06d}", kind.network_code))
