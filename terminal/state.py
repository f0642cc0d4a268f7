"""Durable terminal state in one SQLite file (stdlib sqlite3), created with mode 0600.

Holds the terminal's configuration, counters, keys (for the PIN pad only), the journal, the
pending reversals and the queued advices. Every change that must survive a crash is one
``BEGIN IMMEDIATE`` transaction: the STAN allocation, the journal line and the reversal record
of a reversible request are committed together, before the request is sent. Online commands
also hold an exclusive lock on ``PATH.lock`` so that two invocations never interleave on the
wire (a terminal has one line).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specs.messages import Message
from terminal.core import BatchEntry, Profile, is_domestic, next_stan
from terminal.errors import NotReady, TerminalError
from terminal.pinpad import PinPad

DEFAULT_PATH = "posterm.db"
FILE_MODE = 0o600
LOCK_WAIT_SECONDS = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS terminal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    tid TEXT NOT NULL, mid TEXT NOT NULL, host TEXT NOT NULL, port INTEGER NOT NULL,
    nii TEXT NOT NULL, mac TEXT NOT NULL, timeout REAL NOT NULL, backoff REAL NOT NULL,
    attempts INTEGER NOT NULL, serial TEXT NOT NULL DEFAULT '',
    stan TEXT NOT NULL DEFAULT '000000', batch TEXT NOT NULL DEFAULT '000000',
    tmk BLOB NOT NULL, pik BLOB, mak BLOB,
    signed_on INTEGER NOT NULL DEFAULT 0, sign_on_again INTEGER NOT NULL DEFAULT 0,
    settle_phase TEXT, settle_sent INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, batch TEXT NOT NULL, stan TEXT NOT NULL,
    amount INTEGER, pan TEXT, expiry TEXT, entry TEXT,
    status TEXT NOT NULL, code TEXT, rrn TEXT, auth TEXT, host_date TEXT, host_time TEXT,
    orig_batch TEXT, orig_stan TEXT, org TEXT, voided INTEGER NOT NULL DEFAULT 0,
    settled INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reversals (
    journal_id INTEGER PRIMARY KEY, request TEXT NOT NULL, reason TEXT NOT NULL,
    auth TEXT, attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS advices (
    journal_id INTEGER PRIMARY KEY, request TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL
);
"""

_TLS_COLUMNS = (("tls", "INTEGER NOT NULL DEFAULT 0"), ("tls_ca", "TEXT NOT NULL DEFAULT ''"),
                ("tls_cert", "TEXT NOT NULL DEFAULT ''"), ("tls_key", "TEXT NOT NULL DEFAULT ''"))
"""Columns of the terminal row added with TLS (added to older state files on open)."""
_FAILOVER_COLUMNS = (("secondaries", "TEXT NOT NULL DEFAULT ''"),)
"""The hosts to fail over to, HOST:PORT[,...] (posterm init --host A:P,B:P)."""

# Journal statuses.
PENDING, APPROVED, DECLINED, REVERSED, QUEUED, UNANSWERED = (
    "pending", "approved", "declined", "reversed", "queued", "unanswered")


@dataclass(frozen=True)
class Config:
    tid: str
    mid: str
    host: str
    port: int
    nii: str = "0003"
    mac: str = "x919"
    timeout: float = 30.0
    backoff: float = 2.0
    attempts: int = 3
    serial: str = ""
    """A serial line spec (shared.serialline.LineSettings) used instead of host:port when set."""
    tls: bool = False
    """Reach host:port over TLS (posterm init --tls)."""
    tls_ca: str = ""
    """CA file the host's certificate must chain to ('' : the system's trusted CAs)."""
    tls_cert: str = ""
    """This terminal's certificate and key files, for a host that requires one (mutual TLS)."""
    tls_key: str = ""
    secondaries: str = ""
    """Hosts to fail over to when host:port does not answer a connection, in order
    (``HOST:PORT[,HOST:PORT]``; '' : none)."""

    @property
    def endpoint(self) -> str:
        if self.serial:
            return f"serial {self.serial}"
        extra = f",{self.secondaries}" if self.secondaries else ""
        return f"{'tls://' if self.tls else ''}{self.host}:{self.port}{extra}"

    @property
    def profile(self) -> Profile:
        return Profile(self.tid, self.mid, self.nii)


@dataclass(frozen=True)
class JournalEntry:
    id: int
    kind: str
    batch: str
    stan: str
    amount: int | None
    pan: str | None
    expiry: str | None
    entry: str | None
    status: str
    code: str | None
    rrn: str | None
    auth: str | None
    host_date: str | None
    host_time: str | None
    orig_batch: str | None
    orig_stan: str | None
    org: str | None
    voided: int
    settled: int
    created: float


@dataclass(frozen=True)
class PendingReversal:
    journal_id: int
    request: Message
    reason: str
    auth: str | None
    attempts: int


@dataclass(frozen=True)
class QueuedAdvice:
    journal_id: int
    request: Message
    attempts: int


def _create_private(path: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE)
    os.close(fd)
    os.chmod(path, FILE_MODE)


class Store:
    """The state file of one emulated terminal."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        old_umask = os.umask(0o077)
        try:
            _create_private(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        finally:
            os.umask(old_umask)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """State files written before the serial and TLS columns existed gain them (empty:
        plain TCP)."""
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(terminal)")}
        if "serial" not in columns:
            self._db.execute("ALTER TABLE terminal ADD COLUMN serial TEXT NOT NULL DEFAULT ''")
        for name, kind in _TLS_COLUMNS + _FAILOVER_COLUMNS:
            if name not in columns:
                self._db.execute(f"ALTER TABLE terminal ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextlib.contextmanager
    def online_lock(self, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
        """Exclusive use of the terminal's line across processes (flock on PATH.lock)."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, FILE_MODE)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise NotReady("another posterm is using this terminal") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    # ----------------------------------------------------------------- configuration

    def initialise(self, config: Config, tmk: bytes) -> None:
        """(Re)initialise the terminal: new identity and TMK; working keys cleared."""
        with self.transaction() as db:
            if self._row(db) is not None and self._open_work(db):
                raise NotReady("the terminal has a pending reversal, queued advices or an "
                               "unsettled batch: settle before init, or use a new --state file")
            db.execute("DELETE FROM terminal")
            db.execute(
                "INSERT INTO terminal (id, tid, mid, host, port, nii, mac, timeout, backoff,"
                " attempts, serial, tmk, tls, tls_ca, tls_cert, tls_key, secondaries)"
                " VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (config.tid, config.mid, config.host, config.port, config.nii, config.mac,
                 config.timeout, config.backoff, config.attempts, config.serial, tmk,
                 int(config.tls), config.tls_ca, config.tls_cert, config.tls_key,
                 config.secondaries),
            )

    @staticmethod
    def _open_work(db: sqlite3.Connection) -> bool:
        for table, where in (("reversals", ""), ("advices", ""),
                             ("journal", " WHERE settled = 0 AND status = 'approved'")):
            if db.execute(f"SELECT COUNT(*) FROM {table}{where}").fetchone()[0]:
                return True
        return False

    @staticmethod
    def _row(db: sqlite3.Connection) -> sqlite3.Row | None:
        return db.execute("SELECT * FROM terminal WHERE id = 1").fetchone()

    def row(self) -> sqlite3.Row:
        row = self._row(self._db)
        if row is None:
            raise NotReady(f"terminal not initialised in {self.path}: run posterm init")
        return row

    def config(self) -> Config:
        r = self.row()
        return Config(r["tid"], r["mid"], r["host"], r["port"], r["nii"], r["mac"],
                      r["timeout"], r["backoff"], r["attempts"], r["serial"], bool(r["tls"]),
                      r["tls_ca"], r["tls_cert"], r["tls_key"], r["secondaries"])

    def pinpad(self) -> PinPad:
        r = self.row()
        return PinPad(bytes(r["tmk"]), r["mac"], _blob(r["pik"]), _blob(r["mak"]))

    def save_working_keys(self, pinpad: PinPad, batch: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE terminal SET pik = ?, mak = ?, batch = ?, signed_on = 1,"
                       " sign_on_again = 0 WHERE id = 1", (pinpad.pik, pinpad.mak, batch))

    def set_signed_off(self) -> None:
        with self.transaction() as db:
            db.execute("UPDATE terminal SET signed_on = 0 WHERE id = 1")

    def flag_sign_on_again(self) -> None:
        with self.transaction() as db:
            db.execute("UPDATE terminal SET sign_on_again = 1 WHERE id = 1")

    def require_signed_on(self) -> bool:
        """Raise unless signed on; True when the host asked for a new sign-on."""
        r = self.row()
        if not r["signed_on"] or r["pik"] is None:
            raise NotReady("terminal is not signed on: run posterm signon")
        return bool(r["sign_on_again"])

    # ----------------------------------------------------------------- STAN, journal

    @staticmethod
    def _allocate_stan(db: sqlite3.Connection) -> tuple[str, str]:
        row = db.execute("SELECT stan, batch FROM terminal WHERE id = 1").fetchone()
        if row is None:
            raise NotReady("terminal not initialised: run posterm init")
        stan = next_stan(row["stan"])
        db.execute("UPDATE terminal SET stan = ? WHERE id = 1", (stan,))
        return stan, row["batch"]

    def allocate_stan(self) -> tuple[str, str]:
        """The next STAN (and the current batch), committed."""
        with self.transaction() as db:
            return self._allocate_stan(db)

    def set_stan(self, stan: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE terminal SET stan = ? WHERE id = 1", (stan,))

    def begin(
        self,
        kind: str,
        build: Callable[[str, str], Message],
        *,
        reversal: Callable[[Message], Message] | None = None,
        advice: bool = False,
        details: dict[str, Any] | None = None,
    ) -> tuple[int, Message]:
        """Allocate a STAN, build the request, journal it and, in the same transaction,
        record its reversal (reversible requests) or queue it (advices)."""
        with self.transaction() as db:
            stan, batch = self._allocate_stan(db)
            request = build(stan, batch)
            d = details or {}
            cur = db.execute(
                "INSERT INTO journal (kind, batch, stan, amount, pan, expiry, entry, status,"
                " orig_batch, orig_stan, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, batch, stan, d.get("amount"), d.get("pan"), d.get("expiry"),
                 request.get("22"), QUEUED if advice else PENDING, d.get("orig_batch"),
                 d.get("orig_stan"), time.time()),
            )
            journal_id = int(cur.lastrowid or 0)
            if reversal is not None:
                db.execute("INSERT INTO reversals (journal_id, request, reason, created)"
                           " VALUES (?, ?, ?, ?)",
                           (journal_id, json.dumps(reversal(request)), "98", time.time()))
            if advice:
                db.execute("INSERT INTO advices (journal_id, request, created) VALUES (?, ?, ?)",
                           (journal_id, json.dumps(request), time.time()))
            return journal_id, request

    def finish(self, journal_id: int, status: str, response: dict[str, str | None],
               *, clear_reversal: bool = True, void_of: int | None = None) -> None:
        """Record a believed response: journal line updated, reversal (or advice) removed."""
        with self.transaction() as db:
            db.execute(
                "UPDATE journal SET status = ?, code = ?, rrn = ?, auth = ?, host_date = ?,"
                " host_time = ?, org = ? WHERE id = ?",
                (status, response.get("39"), response.get("37"), response.get("38"),
                 response.get("13"), response.get("12"), (response.get("63") or "")[:3] or None,
                 journal_id),
            )
            if clear_reversal:
                db.execute("DELETE FROM reversals WHERE journal_id = ?", (journal_id,))
            db.execute("DELETE FROM advices WHERE journal_id = ?", (journal_id,))
            if void_of is not None and status == APPROVED:
                db.execute("UPDATE journal SET voided = 1 WHERE id = ?", (void_of,))

    def set_reversal_reason(self, journal_id: int, reason: str, auth: str | None,
                            code: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE reversals SET reason = ?, auth = ? WHERE journal_id = ?",
                       (reason, auth, journal_id))
            db.execute("UPDATE journal SET code = ? WHERE id = ?", (code, journal_id))

    def reversals(self) -> list[PendingReversal]:
        rows = self._db.execute("SELECT * FROM reversals ORDER BY journal_id").fetchall()
        return [PendingReversal(r["journal_id"], json.loads(r["request"]), r["reason"],
                                r["auth"], r["attempts"]) for r in rows]

    def count_attempt(self, table: str, journal_id: int) -> None:
        assert table in ("reversals", "advices")
        with self.transaction() as db:
            db.execute(f"UPDATE {table} SET attempts = attempts + 1 WHERE journal_id = ?",
                       (journal_id,))

    def reversal_done(self, journal_id: int) -> None:
        """A 0410 arrived: the original stands reversed, whatever it was."""
        with self.transaction() as db:
            db.execute("DELETE FROM reversals WHERE journal_id = ?", (journal_id,))
            db.execute("UPDATE journal SET status = ? WHERE id = ?", (REVERSED, journal_id))

    def advices(self) -> list[QueuedAdvice]:
        rows = self._db.execute("SELECT * FROM advices ORDER BY journal_id").fetchall()
        return [QueuedAdvice(r["journal_id"], json.loads(r["request"]), r["attempts"])
                for r in rows]

    def journal(self, *, all_batches: bool = False) -> list[JournalEntry]:
        where = "" if all_batches else " WHERE settled = 0"
        rows = self._db.execute(f"SELECT * FROM journal{where} ORDER BY id").fetchall()
        return [JournalEntry(**dict(r)) for r in rows]

    def find_sale(self, stan: str) -> JournalEntry:
        """The open batch's sale with this STAN."""
        row = self._db.execute(
            "SELECT * FROM journal WHERE kind = 'sale' AND stan = ? AND settled = 0"
            " ORDER BY id DESC LIMIT 1", (stan,)).fetchone()
        if row is None:
            raise NotReady(f"no sale with trace {stan} in the open batch's journal")
        return JournalEntry(**dict(row))

    # ----------------------------------------------------------------- settlement

    def batch_entries(self) -> list[BatchEntry]:
        """What the totals and the upload hold: standing sales and accepted refunds."""
        rows = self._db.execute(
            "SELECT kind, stan, pan, amount, org FROM journal WHERE settled = 0 AND status = ?"
            " AND ((kind = 'sale' AND voided = 0) OR kind = 'refund') ORDER BY id",
            (APPROVED,)).fetchall()
        return [BatchEntry(r["kind"], r["stan"], r["pan"] or "", r["amount"] or 0,
                           is_domestic(r["org"])) for r in rows]

    def settlement_progress(self) -> tuple[str | None, int]:
        r = self.row()
        return r["settle_phase"], r["settle_sent"]

    def set_settlement_progress(self, phase: str | None, sent: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE terminal SET settle_phase = ?, settle_sent = ? WHERE id = 1",
                       (phase, sent))

    def close_batch(self, new_batch: str | None = None) -> str:
        """Archive the journal; the batch number goes up by one (or to ``new_batch``)."""
        with self.transaction() as db:
            row = self._row(db)
            assert row is not None
            db.execute("UPDATE journal SET settled = 1 WHERE settled = 0")
            new_batch = new_batch or next_stan(row["batch"])
            db.execute("UPDATE terminal SET batch = ?, settle_phase = NULL, settle_sent = 0"
                       " WHERE id = 1", (new_batch,))
            return new_batch


def _blob(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None


def open_store(path: str | os.PathLike[str]) -> Store:
    try:
        return Store(path)
    except sqlite3.Error as exc:
        raise TerminalError(f"cannot open state file {path}: {exc}") from None
