"""Fee standards and their assignment to merchants, as append-only versions in the store, and
the fee each transaction owes under the standard in force when it was recorded.

Nothing is ever updated or deleted here: ``fee add`` makes version 1 of a standard, ``fee
change`` a new version, ``merchant set`` a new assignment. Each row remembers the highest
transaction id recorded before it (``after_txn``, read in the same write transaction as the
insert, which holds the store's write lock), so "in force" is exact without any clock: a
version or assignment applies to transactions with a higher id. The fee of a transaction is
therefore a pure function of rows that never change (DECISIONS.md, "fees").

Tables are made by :func:`ensure_fee_schema` (CREATE TABLE IF NOT EXISTS, portable SQL);
the message path never reads or writes them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from host.errors import ConfigError
from host.fees import FeeModel, fee_of, fee_returned, parse_fee_model
from specs.codes import APPROVED, CARD_ORGANISATIONS, card_organisation

ANY = ""
"""An assignment's organisation or entry mode that matches every transaction."""
ORGANISATIONS = tuple(sorted(set(CARD_ORGANISATIONS.values())))
ENTRY_MODES: dict[str, tuple[str, ...]] = {
    "manual": ("01",), "swipe": ("02", "90"), "chip": ("05", "95"), "contactless": ("07", "91"),
}
"""Entry mode names a merchant's standard can depend on -> F22's first two digits."""

LOOKUP_CHUNK = 500
"""Transaction ids per IN (...) lookup (SQLite's bound-parameter limit is 32766 at most)."""

FEE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS fee_standards ("
    " name TEXT NOT NULL, version INTEGER NOT NULL, model TEXT NOT NULL,"
    " collect TEXT NOT NULL, after_txn INTEGER NOT NULL, created TEXT NOT NULL,"
    " PRIMARY KEY (name, version))",
    "CREATE TABLE IF NOT EXISTS merchant_fees ("
    " mid TEXT NOT NULL, organisation TEXT NOT NULL, entry_mode TEXT NOT NULL,"
    " seq INTEGER NOT NULL, standard TEXT, after_txn INTEGER NOT NULL, created TEXT NOT NULL,"
    " PRIMARY KEY (mid, organisation, entry_mode, seq))",
)


def ensure_fee_schema(conn: sqlite3.Connection) -> None:
    """The fee tables (idempotent; one statement each)."""
    for statement in FEE_SCHEMA:
        conn.execute(statement)


def has_fee_tables(conn: sqlite3.Connection) -> bool:
    """Whether the fee tables exist (readers create nothing: a report on a store without
    fees changes nothing and shows no fee)."""
    try:
        conn.execute("SELECT 1 FROM fee_standards WHERE 1=0")
        conn.execute("SELECT 1 FROM merchant_fees WHERE 1=0")
    except sqlite3.OperationalError:
        return False
    return True


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _high_water(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM txns").fetchone()[0])


class _Write:
    """BEGIN IMMEDIATE .. COMMIT (ROLLBACK on error): holds the write lock, so no transaction
    is recorded between reading the high-water id and the insert."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        ensure_fee_schema(self.conn)  # inside: a refused change leaves no trace
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _latest_version(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM fee_standards WHERE name=? ORDER BY version DESC"
                        " LIMIT 1", (name,)).fetchone()


def add_standard(conn: sqlite3.Connection, name: str, model: FeeModel, collect: str) -> int:
    """Version 1 of a new standard (ConfigError when the name exists)."""
    with _Write(conn):
        if _latest_version(conn, name) is not None:
            raise ConfigError(f"fee standard {name} already exists (fee change makes a new"
                              " version)")
        conn.execute("INSERT INTO fee_standards VALUES (?, 1, ?, ?, ?, ?)",
                     (name, model.text(), collect, _high_water(conn), _now()))
    return 1


def change_standard(conn: sqlite3.Connection, name: str, model: FeeModel | None,
                    collect: str | None) -> int:
    """A new version of ``name`` for transactions recorded from now on; returns it."""
    with _Write(conn):
        latest = _latest_version(conn, name)
        if latest is None:
            raise ConfigError(f"no fee standard {name}")
        version = int(latest["version"]) + 1
        conn.execute("INSERT INTO fee_standards VALUES (?, ?, ?, ?, ?, ?)",
                     (name, version, latest["model"] if model is None else model.text(),
                      collect or latest["collect"], _high_water(conn), _now()))
    return version


def assign(conn: sqlite3.Connection, mid: str, standard: str | None,
           organisation: str = ANY, entry_mode: str = ANY) -> None:
    """Put a merchant (for one card organisation and/or entry mode when given) on
    ``standard`` from the next transaction on; None removes that assignment."""
    with _Write(conn):
        if conn.execute("SELECT 1 FROM merchants WHERE mid=?", (mid,)).fetchone() is None:
            raise ConfigError(f"no merchant {mid}")
        if standard is not None and _latest_version(conn, standard) is None:
            raise ConfigError(f"no fee standard {standard} (poshost fee add)")
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM merchant_fees WHERE mid=?"
                           " AND organisation=? AND entry_mode=?",
                           (mid, organisation, entry_mode)).fetchone()[0]
        conn.execute("INSERT INTO merchant_fees VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (mid, organisation, entry_mode, seq, standard, _high_water(conn), _now()))


def list_standards(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    if not has_fee_tables(conn):
        return []
    return [dict(r) for r in conn.execute(
        "SELECT name, version, model, collect, created, after_txn AS from_txn_after"
        " FROM fee_standards ORDER BY name, version")]


def list_assignments(conn: sqlite3.Connection, mid: str | None = None) -> list[dict[str, Any]]:
    if not has_fee_tables(conn):
        return []
    where, args = ("WHERE mid=?", (mid,)) if mid else ("", ())
    rows = [dict(r) for r in conn.execute(
        "SELECT mid, organisation, entry_mode, seq, standard, created,"
        f" after_txn AS from_txn_after FROM merchant_fees {where}"
        " ORDER BY mid, organisation, entry_mode, seq", args)]
    for r in rows:
        r["organisation"] = r["organisation"] or "any"
        r["entry_mode"] = r["entry_mode"] or "any"
        r["standard"] = r["standard"] or "none"
    return rows


# --------------------------------------------------------------------------- fee per transaction


@dataclass(frozen=True)
class Standard:
    """One version of a fee standard."""

    name: str
    version: int
    model: FeeModel
    collect: str
    after_txn: int

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class TxnFee:
    """What one transaction line owes: ``fee`` is + for a live sale, - for the part of the
    sale's fee a refund returns, 0 otherwise; ``standard`` None when no standard applied."""

    fee: int
    standard: Standard | None


NO_FEE = TxnFee(0, None)


def entry_mode_name(f22: str | None) -> str:
    for name, prefixes in ENTRY_MODES.items():
        if (f22 or "")[:2] in prefixes:
            return name
    return ANY


class FeeBook:
    """Every standard version and assignment, loaded once; answers which standard was in
    force for a transaction and what it owes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._versions: dict[str, list[Standard]] = {}
        self._assignments: dict[tuple[str, str, str], list[tuple[int, str | None]]] = {}
        if not has_fee_tables(conn):
            return
        for r in conn.execute("SELECT * FROM fee_standards ORDER BY name, version"):
            self._versions.setdefault(r["name"], []).append(Standard(
                r["name"], r["version"], parse_fee_model(r["model"]), r["collect"],
                r["after_txn"]))
        for r in conn.execute("SELECT * FROM merchant_fees ORDER BY seq"):
            key = (r["mid"], r["organisation"], r["entry_mode"])
            self._assignments.setdefault(key, []).append((r["after_txn"], r["standard"]))

    def _assigned(self, key: tuple[str, str, str], txn_id: int) -> str | None:
        name = None
        for after, standard in self._assignments.get(key, ()):
            if after < txn_id:
                name = standard
        return name

    def standard_for(self, mid: str, organisation: str, entry_mode: str,
                     txn_id: int) -> Standard | None:
        """The most specific assignment in force (organisation and entry mode, organisation,
        entry mode, the merchant's) and the version of its standard in force."""
        for key in ((mid, organisation, entry_mode), (mid, organisation, ANY),
                    (mid, ANY, entry_mode), (mid, ANY, ANY)):
            name = self._assigned(key, txn_id)
            if name is not None:
                return self._version(name, txn_id)
        return None

    def _version(self, name: str, txn_id: int) -> Standard | None:
        found = None
        for version in self._versions.get(name, ()):
            if version.after_txn < txn_id:
                found = version
        return found

    def sale_fee(self, sale: sqlite3.Row | dict, entry_mode: str) -> TxnFee:
        """The fee a sale was charged when recorded (whether or not it is still live)."""
        organisation = card_organisation(sale["pan_masked"] or "")
        standard = self.standard_for(sale["mid"], organisation, entry_mode, sale["id"])
        if standard is None:
            return NO_FEE
        return TxnFee(fee_of(standard.model, sale["amount"]), standard)


def is_live(row: sqlite3.Row | dict) -> bool:
    return row["rc"] == APPROVED and not row["reversed"] and row["voided_by"] is None


def txn_fees(conn: sqlite3.Connection, rows: Iterable[sqlite3.Row | dict]) -> dict[int, TxnFee]:
    """The fee line of each transaction: a live sale's fee; a refund's returned share of its
    sale's fee (refunds of one sale in id order); 0 for voided, reversed or declined sales,
    voids and declines."""
    rows = list(rows)
    book = FeeBook(conn)
    sales = {r["id"]: r for r in rows if r["kind"] == "sale"}
    sales.update(_by_id(conn, {r["orig_id"] for r in rows if r["kind"] == "refund"
                               and r["orig_id"] and r["orig_id"] not in sales}))
    entries = _entry_modes(conn, list(sales))
    refunds = [r for r in rows if r["kind"] == "refund" and r["rc"] == APPROVED
               and r["orig_id"] in sales]
    before = _refunded_before(conn, refunds)
    out: dict[int, TxnFee] = {}
    for r in rows:
        if r["kind"] == "sale" and is_live(r):
            out[r["id"]] = book.sale_fee(r, entries.get(r["id"], ANY))
        elif r["id"] in before:
            sale = sales[r["orig_id"]]
            charged = book.sale_fee(sale, entries.get(sale["id"], ANY))
            returned = fee_returned(charged.fee, sale["amount"], before[r["id"]], r["amount"])
            out[r["id"]] = TxnFee(-returned, charged.standard)
        else:
            out[r["id"]] = NO_FEE
    return out


def _by_id(conn: sqlite3.Connection, ids: set[int]) -> dict[int, sqlite3.Row]:
    """Sales refunded on the report's day but made on an earlier one."""
    out = {}
    for txn_id in ids:
        row = conn.execute("SELECT * FROM txns WHERE id=?", (txn_id,)).fetchone()
        if row is not None:
            out[txn_id] = row
    return out


def _entry_modes(conn: sqlite3.Connection, ids: list[int]) -> dict[int, str]:
    from host.chip import entry_data

    out: dict[int, str] = {}
    for start in range(0, len(ids), LOOKUP_CHUNK):
        data = entry_data(conn, ids[start:start + LOOKUP_CHUNK])
        out.update({i: entry_mode_name(d["entry_mode"]) for i, d in data.items()})
    return out


def _refunded_before(conn: sqlite3.Connection, refunds: list[sqlite3.Row | dict]
                     ) -> dict[int, int]:
    """Per refund: what earlier approved refunds of the same sale came to. One range scan
    over the primary key (a sale's refunds come after it)."""
    if not refunds:
        return {}
    sale_ids = {r["orig_id"] for r in refunds}
    wanted = {r["id"] for r in refunds}
    done: dict[int, int] = {}
    out: dict[int, int] = {}
    for txn_id, sale_id, amount in conn.execute(
            "SELECT id, orig_id, amount FROM txns WHERE id > ? AND id <= ? AND kind='refund'"
            " AND rc=? ORDER BY id", (min(sale_ids), max(wanted), APPROVED)):
        if sale_id not in sale_ids:
            continue
        if txn_id in wanted:
            out[txn_id] = done.get(sale_id, 0)
        done[sale_id] = done.get(sale_id, 0) + amount
    return out
