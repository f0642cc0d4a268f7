"""The SQLite store: schema, connections (WAL, synchronous=FULL) and small typed readers.

Only the writer task (host/writer.py) and the provisioning commands write; everything else
reads. No clear PAN at rest: every table keys cards by the PAN's keyed hash, computed by the
HSM under a key that never leaves it (host/hsm.py), and shows the masked PAN; the issuer
simulator's card table also holds the PAN encrypted under a data key (ZEK) through the HSM,
for `poshost card show --reveal`. Databases made before keep a clear `pan` column until the
first command that reaches the HSM upgrades them (`host.hsm.ensure_pan_keys`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from host.pgstore import SCHEMA_LOCK, PgConnection, is_pg, split_script
from specs.pretty import mask_pan

Conn = sqlite3.Connection | PgConnection
"""A store connection: a SQLite file's, or PostgreSQL's behind the same interface
(host/pgstore.py)."""

BUSY_TIMEOUT_MS = 10_000
DB_FILE_MODE = 0o600
"""The database, its -wal and -shm hold keys under the LMK, PVVs and card data: owner only."""
SIDE_FILES = ("-wal", "-shm", "-journal")
SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS merchants (
    mid TEXT PRIMARY KEY, name TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS terminals (
    tid TEXT PRIMARY KEY, mid TEXT NOT NULL REFERENCES merchants(mid),
    mac_algorithm TEXT NOT NULL, tmk_lmk TEXT NOT NULL, tmk_kcv TEXT NOT NULL,
    pik_lmk TEXT, pik_kcv TEXT, mak_lmk TEXT, mak_kcv TEXT, keys_at TEXT,
    batch INTEGER, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cards (
    pan_hash TEXT PRIMARY KEY, pan_masked TEXT NOT NULL, pan_enc TEXT NOT NULL,
    expiry TEXT NOT NULL, pvv TEXT NOT NULL, pvki INTEGER NOT NULL,
    balance INTEGER NOT NULL, limit_minor INTEGER, status TEXT NOT NULL,
    pin_tries INTEGER NOT NULL DEFAULT 0, domestic INTEGER NOT NULL DEFAULT 1,
    created TEXT NOT NULL, cvm TEXT NOT NULL DEFAULT 'pin');
CREATE TABLE IF NOT EXISTS batches (
    tid TEXT NOT NULL, batch INTEGER NOT NULL, state TEXT NOT NULL,
    opened_at TEXT NOT NULL, closed_at TEXT, host_totals TEXT, terminal_totals TEXT,
    result TEXT, upload_expected INTEGER, note TEXT,
    PRIMARY KEY (tid, batch));
CREATE TABLE IF NOT EXISTS txns (
    id INTEGER PRIMARY KEY, tid TEXT NOT NULL, mid TEXT NOT NULL, batch INTEGER NOT NULL,
    stan TEXT NOT NULL, mti TEXT NOT NULL, kind TEXT NOT NULL, pan_hash TEXT,
    pan_masked TEXT, amount INTEGER NOT NULL, currency TEXT, rc TEXT NOT NULL,
    rrn TEXT NOT NULL, auth_code TEXT, orig_id INTEGER, domestic INTEGER NOT NULL DEFAULT 1,
    voided_by INTEGER, reversed INTEGER NOT NULL DEFAULT 0, reversal_reason TEXT,
    refunded INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL,
    settlement_date TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS txns_key ON txns (tid, batch, stan, mti);
CREATE INDEX IF NOT EXISTS txns_rrn ON txns (rrn);
CREATE INDEX IF NOT EXISTS txns_date ON txns (settlement_date);
CREATE TABLE IF NOT EXISTS reversals (
    tid TEXT NOT NULL, batch INTEGER NOT NULL, stan TEXT NOT NULL, processing_code TEXT,
    amount INTEGER NOT NULL, reason TEXT NOT NULL, txn_id INTEGER, rc TEXT NOT NULL,
    created TEXT NOT NULL, PRIMARY KEY (tid, batch, stan));
CREATE TABLE IF NOT EXISTS idempotence (
    tid TEXT NOT NULL, batch INTEGER NOT NULL, stan TEXT NOT NULL, mti TEXT NOT NULL,
    digest TEXT NOT NULL, response TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (tid, batch, stan, mti));
CREATE TABLE IF NOT EXISTS uploads (
    tid TEXT NOT NULL, batch INTEGER NOT NULL, trace TEXT NOT NULL, pan_hash TEXT NOT NULL,
    pan_masked TEXT NOT NULL, amount INTEGER NOT NULL, organisation TEXT NOT NULL,
    stan TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS uploads_batch ON uploads (tid, batch);
CREATE TABLE IF NOT EXISTS exceptions (
    id INTEGER PRIMARY KEY, tid TEXT NOT NULL, batch INTEGER NOT NULL, kind TEXT NOT NULL,
    trace TEXT, host_data TEXT, terminal_data TEXT, state TEXT NOT NULL DEFAULT 'open',
    comment TEXT, created TEXT NOT NULL, resolved_at TEXT);
"""


MIGRATIONS: list[tuple[int, str, str]] = []
"""Versioned schema changes after SCHEMA (version 1), applied in order by ``initialise`` on
either store, each once (``meta.schema`` holds the version reached). To add a table or a
column, append ``(next version, "what", "CREATE TABLE IF NOT EXISTS ...; ALTER TABLE txns ADD
COLUMN route TEXT")`` in SQLite's spelling with portable types (TEXT, INTEGER; ``id INTEGER
PRIMARY KEY`` for a numbered row): host/pgstore.py turns it into PostgreSQL's (identity
column, BIGINT). Statements are separated by ';'."""
PG_ONLY = """
CREATE SEQUENCE IF NOT EXISTS rrn_blocks
"""
"""PostgreSQL objects SQLite has no counterpart for: the RRN block sequence (host/ledger.py)."""


def connect(db_path: Path | str, *, check_same_thread: bool = True) -> Conn:
    """A store connection: PostgreSQL for a ``postgresql://`` URL (host/pgstore.py), else the
    SQLite file (below)."""
    if is_pg(db_path):
        return PgConnection(str(db_path))
    return connect_sqlite(db_path, check_same_thread=check_same_thread)


def connect_sqlite(db_path: Path | str, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in WAL mode with synchronous=FULL, autocommit (explicit BEGIN).

    The file is created 0600 (SQLite gives -wal and -shm the database file's mode); an older
    database open to group or others is narrowed to 0600, side files included."""
    make_private(db_path)
    conn = sqlite3.connect(
        str(db_path), isolation_level=None, check_same_thread=check_same_thread,
        timeout=BUSY_TIMEOUT_MS / 1000,
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    make_private(db_path, side_files=True)
    return conn


def make_private(db_path: Path | str, *, side_files: bool = False) -> None:
    """Create the database file 0600 when missing; narrow it (and its -wal/-shm/-journal
    when ``side_files``) to 0600 when open to group or others."""
    if str(db_path) == ":memory:" or str(db_path).startswith("file:"):
        return
    path = Path(db_path)
    if not path.exists():
        with contextlib.suppress(OSError):  # a missing directory: sqlite3 says so
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DB_FILE_MODE))
    paths = [path] + ([path.with_name(path.name + s) for s in SIDE_FILES] if side_files else [])
    for p in paths:
        try:
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, DB_FILE_MODE)
        except OSError:
            continue


def initialise(conn: Conn) -> None:
    """Create the schema or bring it up to date, and the per-database PAN-hash salt
    (idempotent). On PostgreSQL under an advisory lock: instances starting together
    create it once."""
    if isinstance(conn, PgConnection):
        conn.execute("SELECT pg_advisory_lock(?)", (SCHEMA_LOCK,))
        try:
            _initialise(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(?)", (SCHEMA_LOCK,))
        return
    _initialise(conn)


def _initialise(conn: Conn) -> None:
    conn.executescript(SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('pan_salt', ?)", (secrets.token_hex(16),))
    _hash_card_pans(conn)
    _add_card_cvm(conn)
    from host.chip import ensure_chip_schema  # the chip side's tables (issuer keys, ATCs)

    ensure_chip_schema(conn)
    from host.routestore import ensure_routing_schema  # routes, links, txns.route (#20)

    ensure_routing_schema(conn)
    from host.feestore import ensure_fee_schema  # fee standards and assignments (#21)

    ensure_fee_schema(conn)
    if isinstance(conn, PgConnection):
        conn.executescript(PG_ONLY)
    migrate(conn)


def schema_version(conn: Conn) -> int:
    return int(get_meta(conn, "schema") or 1)


def migrate(conn: Conn) -> int:
    """Apply the MIGRATIONS past this database's version, each in its own transaction with
    its version mark; the version reached."""
    version = schema_version(conn)
    for number, _what, script in MIGRATIONS:
        if number <= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in split_script(script):  # (sqlite3's executescript would commit)
                conn.execute(statement)
            set_meta(conn, "schema", str(number))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = number
        if isinstance(conn, PgConnection):
            conn.forget_tables()
    return version


def is_shared(conn: Conn) -> bool:
    """Whether other host instances may use this store at once (PostgreSQL)."""
    return isinstance(conn, PgConnection)


def for_update(conn: Conn) -> str:
    """`` FOR UPDATE`` on PostgreSQL (lock the rows read until commit), nothing on SQLite
    (its one writer holds the whole database)."""
    return " FOR UPDATE" if isinstance(conn, PgConnection) else ""


def lock_terminal(conn: Conn, tid: str) -> None:
    """Serialise one terminal's requests across instances until the transaction ends (a
    transaction-level advisory lock on PostgreSQL; SQLite's writer lock already does)."""
    if isinstance(conn, PgConnection):
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 7))", (tid,))


CARDS_COLUMNS = ("pan_hash", "pan_masked", "pan_enc", "expiry", "pvv", "pvki", "balance",
                 "limit_minor", "status", "pin_tries", "domestic", "created", "cvm")
"""The card table's columns (after the clear-PAN upgrade)."""


def has_clear_pans(conn: Conn) -> bool:
    """Whether the card table is still the old one with a clear `pan` column (never on
    PostgreSQL: its databases are made after the upgrade)."""
    if isinstance(conn, PgConnection):
        return False
    return "pan" in {row[1] for row in conn.execute("PRAGMA table_info(cards)")}


def _add_card_cvm(conn: sqlite3.Connection) -> None:
    """Cards carry their CVM (pin, signature, none); older databases get the column, with
    'pin' for every card that has a PVV and 'none' for the others."""
    if isinstance(conn, PgConnection):
        return
    columns = {row[1] for row in conn.execute("PRAGMA table_info(cards)")}
    if "cvm" not in columns:
        conn.execute("ALTER TABLE cards ADD COLUMN cvm TEXT NOT NULL DEFAULT 'pin'")
        conn.execute("UPDATE cards SET cvm='none' WHERE pvv=''")


def _hash_card_pans(conn: sqlite3.Connection) -> None:
    """Old card tables (clear `pan`): give every card its salted PAN hash until the HSM
    upgrade replaces both (host.hsm.ensure_pan_keys)."""
    if isinstance(conn, PgConnection):
        return
    columns = {row[1] for row in conn.execute("PRAGMA table_info(cards)")}
    if "pan" not in columns:
        return
    if "pan_hash" not in columns:
        conn.execute("ALTER TABLE cards ADD COLUMN pan_hash TEXT")
    conn.execute("CREATE INDEX IF NOT EXISTS cards_pan_hash ON cards (pan_hash)")
    pans = PanProtector.load(conn)
    missing = [row[0] for row in conn.execute("SELECT pan FROM cards WHERE pan_hash IS NULL")]
    conn.executemany("UPDATE cards SET pan_hash = ? WHERE pan = ?",
                     [(pans.hash(pan), pan) for pan in missing])


def open_store(db_path: Path | str, *, check_same_thread: bool = True) -> Conn:
    conn = connect(db_path, check_same_thread=check_same_thread)
    initialise(conn)
    return conn


def get_meta(conn: Conn, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def set_meta(conn: Conn, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


@dataclass(frozen=True)
class PanProtector:
    """Keyed hash of PANs so acquirer records can match cards without keeping them."""

    salt: bytes

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> PanProtector:
        return cls(bytes.fromhex(get_meta(conn, "pan_salt") or ""))

    def hash(self, pan: str) -> str:
        return hmac.new(self.salt, pan.encode(), hashlib.sha256).hexdigest()[:32]

    @staticmethod
    def mask(pan: str) -> str:
        return mask_pan(pan)


@dataclass(frozen=True)
class Terminal:
    """A terminal row as the message path needs it (keys are under the LMK)."""

    tid: str
    mid: str
    mac_algorithm: str
    tmk_lmk: str
    pik_lmk: str | None
    mak_lmk: str | None
    batch: int | None

    @property
    def has_working_keys(self) -> bool:
        return bool(self.pik_lmk and self.mak_lmk)


def load_terminal(conn: sqlite3.Connection, tid: str) -> Terminal | None:
    row = conn.execute(
        "SELECT tid, mid, mac_algorithm, tmk_lmk, pik_lmk, mak_lmk, batch FROM terminals"
        " WHERE tid = ?", (tid,),
    ).fetchone()
    return None if row is None else Terminal(*row)


@dataclass(frozen=True)
class Card:
    """The issuer simulator's card (PIN only as a PVV; `pan` is the masked PAN)."""

    pan: str
    expiry: str
    pvv: str
    pvki: int
    balance: int
    limit_minor: int | None
    status: str
    pin_tries: int
    domestic: bool
    cvm: str = "pin"
    """Cardholder verification the issuer requires: pin, signature or none."""


def load_card(conn: Conn, pan_hash: str, *, lock: bool = False) -> Card | None:
    """The card whose PAN has this keyed hash (`HsmClient.hash_pan`); its `pan` is masked.
    ``lock``: on PostgreSQL its row stays locked until the transaction ends (balance, PIN
    tries and the chip ATC: one instance at a time)."""
    row = conn.execute(
        "SELECT pan_masked, expiry, pvv, pvki, balance, limit_minor, status, pin_tries,"
        " domestic, cvm FROM cards WHERE pan_hash = ?" + (for_update(conn) if lock else ""),
        (pan_hash,),
    ).fetchone()
    if row is None:
        return None
    return Card(*row[:8], domestic=bool(row[8]), cvm=row[9])


def store_tables(conn: Conn) -> list[str]:
    """The store's tables in creation order (parents before children)."""
    import re

    from host.chip import CHIP_SCHEMA
    names = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)",
                       SCHEMA + CHIP_SCHEMA + "".join(m[2] for m in MIGRATIONS))
    return list(dict.fromkeys(names))


def table_columns(conn: Conn, table: str) -> list[str]:
    if isinstance(conn, PgConnection):
        return conn._table(table)[0]
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


class CopyError(Exception):
    """Why ``poshost db copy`` cannot copy (the target already holds a database, ...)."""


def copy_store(source: Conn, target: Conn) -> dict[str, int]:
    """Copy every row of every table from ``source`` to ``target`` (either store), in one
    transaction on the target; rows copied per table. The target must be new (not bound to
    an LMK); the source's meta (LMK binding, PAN keys and salt, PVK) replaces the target's."""
    if get_meta(target, "lmk_kcv") is not None:
        raise CopyError("the target already holds a poshost database")
    if has_clear_pans(source):
        raise CopyError("the source still has clear PANs: start it once with"
                        " `poshost serve` (its HSM upgrade protects them), then copy")
    counts: dict[str, int] = {}
    target.execute("BEGIN IMMEDIATE")
    try:
        for table in store_tables(source):
            columns = [c for c in table_columns(source, table)
                       if c in set(table_columns(target, table))]
            rows = source.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            verb = "INSERT OR REPLACE" if table == "meta" else "INSERT"
            target.executemany(f"{verb} INTO {table} ({', '.join(columns)}) VALUES"
                               f" ({', '.join('?' * len(columns))})", [tuple(r) for r in rows])
            counts[table] = len(rows)
            if isinstance(target, PgConnection) and target._table(table)[2] and rows:
                identity = target._table(table)[2]
                target.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{identity}'),"
                               f" (SELECT max({identity}) FROM {table}))")
        target.execute("COMMIT")
    except BaseException:
        target.execute("ROLLBACK")
        raise
    return counts
