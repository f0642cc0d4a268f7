"""The routing tables: routes (acquirer side), links (upstream side), the durable 0420 outbox,
the upstream's own record of link transactions, and the channel columns of `txns`.

Tables are created by :func:`ensure_routing_schema` (CREATE TABLE IF NOT EXISTS) and the two
`txns` columns added by a guarded ALTER, in portable SQL. The fees work (#21) reads
`txns.route` (the channel name, NULL on-us), `txns.channel_cost` (minor units, 0 on-us) and
`routes.name / cost_fixed / cost_rate`.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from host.errors import ConfigError
from host.pgstore import is_pg
from host.routing import Route, format_bins, parse_bins, parse_window

ROUTING_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS routes (
    name TEXT PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL, bins TEXT NOT NULL,
    zmk_lmk TEXT NOT NULL, zmk_kcv TEXT NOT NULL, acquirer_id TEXT NOT NULL,
    cost_fixed INTEGER NOT NULL DEFAULT 0, cost_rate TEXT NOT NULL DEFAULT '0',
    limit_txn INTEGER, limit_day INTEGER, maintenance TEXT, priority INTEGER NOT NULL DEFAULT 0,
    timeout REAL NOT NULL DEFAULT 10, enabled INTEGER NOT NULL DEFAULT 1,
    fail_threshold INTEGER NOT NULL DEFAULT 20, pending_threshold INTEGER NOT NULL DEFAULT 800,
    degrade_hold REAL NOT NULL DEFAULT 1800, created TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS links (
    name TEXT PRIMARY KEY, acquirer_id TEXT NOT NULL UNIQUE, zmk_lmk TEXT NOT NULL,
    zmk_kcv TEXT NOT NULL, created TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS h2h_outbox (
    id INTEGER PRIMARY KEY, route TEXT NOT NULL, rrn TEXT NOT NULL, stan TEXT NOT NULL,
    doc TEXT NOT NULL, reason TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL
    DEFAULT 0, txn_id INTEGER, created TEXT NOT NULL, done_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS h2h_sent (
    outbox_id INTEGER PRIMARY KEY, txn_id INTEGER, doc TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS h2h_sent_txn ON h2h_sent (txn_id)",
    """CREATE TABLE IF NOT EXISTS h2h_txns (
    id INTEGER PRIMARY KEY, link TEXT NOT NULL, acquirer_id TEXT NOT NULL, rrn TEXT NOT NULL,
    stan TEXT NOT NULL, kind TEXT NOT NULL, pan_hash TEXT, pan_masked TEXT,
    amount INTEGER NOT NULL, rc TEXT NOT NULL, auth_code TEXT, reversed INTEGER NOT NULL
    DEFAULT 0, voided INTEGER NOT NULL DEFAULT 0, response TEXT NOT NULL, created TEXT NOT NULL,
    settlement_date TEXT NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS h2h_txns_key ON h2h_txns (acquirer_id, rrn, kind, stan)",
    """CREATE TABLE IF NOT EXISTS h2h_reversals (
    acquirer_id TEXT NOT NULL, rrn TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
    rc TEXT NOT NULL, created TEXT NOT NULL, PRIMARY KEY (acquirer_id, rrn, kind))""",
)
OUTBOX_STATES = ("inflight", "pending", "done")
"""inflight: a request is out upstream (a restart turns it into a pending 0420/98);
pending: a 0420 to send until its 0430; done: the 0430 came."""


def route_state_path(db_path: object) -> Path | None:
    """Where a running host writes its links' live state for `route list`: beside the SQLite
    file; None on PostgreSQL (each instance has its own links: see its log and metrics).

    >>> route_state_path("lab/poshost.db"), route_state_path("postgresql://u@h:5432/pos")
    (PosixPath('lab/poshost.db.routes.json'), None)
    """
    if is_pg(db_path):
        return None
    path = Path(str(db_path))
    return path.with_name(path.name + ".routes.json")


def ensure_routing_schema(conn: sqlite3.Connection) -> None:
    """Create the routing tables and the txns channel columns (idempotent, portable SQL)."""
    for statement in ROUTING_SCHEMA:
        conn.execute(statement)
    if not _has_column(conn, "txns", "route"):
        conn.execute("ALTER TABLE txns ADD COLUMN route TEXT")
    if not _has_column(conn, "txns", "channel_cost"):
        conn.execute("ALTER TABLE txns ADD COLUMN channel_cost INTEGER NOT NULL DEFAULT 0")


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    """Portable guard for the ALTERs (no PRAGMA): does selecting the column work?"""
    try:
        conn.execute(f"SELECT {column} FROM {table} WHERE 1 = 0").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def insert_route(conn: sqlite3.Connection, *, name: str, host: str, port: int, bins: str,
                 zmk_lmk: str, zmk_kcv: str, acquirer_id: str, cost_fixed: int = 0,
                 cost_rate: str = "0", limit_txn: int | None = None,
                 limit_day: int | None = None, maintenance: str | None = None,
                 priority: int = 0, timeout: float = 10.0, fail_threshold: int = 20,
                 pending_threshold: int = 800, degrade_hold: float = 1800.0) -> None:
    ensure_routing_schema(conn)
    parse_bins(bins)
    if maintenance:
        parse_window(maintenance)
    if conn.execute("SELECT 1 FROM routes WHERE name=?", (name,)).fetchone():
        raise ConfigError(f"route {name} exists")
    conn.execute(
        "INSERT INTO routes (name, host, port, bins, zmk_lmk, zmk_kcv, acquirer_id, cost_fixed,"
        " cost_rate, limit_txn, limit_day, maintenance, priority, timeout, enabled,"
        " fail_threshold, pending_threshold, degrade_hold, created)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
        (name, host, port, format_bins(parse_bins(bins)), zmk_lmk, zmk_kcv, acquirer_id,
         cost_fixed, cost_rate, limit_txn, limit_day, maintenance, priority, timeout,
         fail_threshold, pending_threshold, degrade_hold, _now()))


def set_route_enabled(conn: sqlite3.Connection, name: str, enabled: bool) -> None:
    ensure_routing_schema(conn)
    if conn.execute("UPDATE routes SET enabled=? WHERE name=?",
                    (1 if enabled else 0, name)).rowcount == 0:
        raise ConfigError(f"no route {name}")


def route_of(row: sqlite3.Row) -> Route:
    return Route(
        name=row["name"], host=row["host"], port=int(row["port"]), bins=parse_bins(row["bins"]),
        cost_fixed=int(row["cost_fixed"]), cost_rate=row["cost_rate"],
        limit_txn=row["limit_txn"], limit_day=row["limit_day"],
        maintenance=parse_window(row["maintenance"]) if row["maintenance"] else None,
        priority=int(row["priority"]), timeout=float(row["timeout"]),
        enabled=bool(row["enabled"]), fail_threshold=int(row["fail_threshold"]),
        pending_threshold=int(row["pending_threshold"]),
        degrade_hold=float(row["degrade_hold"]))


def load_routes(conn: sqlite3.Connection) -> list[tuple[Route, sqlite3.Row]]:
    """Every route with its row (keys under the LMK, acquirer id); the schema is made by
    `host.db.initialise`."""
    rows = conn.execute("SELECT * FROM routes ORDER BY name").fetchall()
    return [(route_of(r), r) for r in rows]


def route_rows(conn: sqlite3.Connection, day: str) -> list[dict[str, Any]]:
    """Settings and today's figures per route (volume and cost from `txns`)."""
    ensure_routing_schema(conn)
    out = []
    for route, _row in load_routes(conn):
        volume, count = conn.execute(
            "SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM txns WHERE route=? AND"
            " settlement_date=? AND rc='00' AND kind='sale' AND reversed=0 AND voided_by IS NULL",
            (route.name, day)).fetchone()
        cost = conn.execute(
            "SELECT COALESCE(SUM(channel_cost), 0) FROM txns WHERE route=? AND"
            " settlement_date=? AND rc='00'", (route.name, day)).fetchone()[0]
        pending = conn.execute("SELECT COUNT(*) FROM h2h_outbox WHERE route=? AND state!='done'",
                               (route.name,)).fetchone()[0]
        out.append({"name": route.name, "connect": f"{route.host}:{route.port}",
                    "bins": format_bins(route.bins), "enabled": route.enabled,
                    "cost_fixed": route.cost_fixed, "cost_rate": route.cost_rate,
                    "priority": route.priority, "volume_today": volume, "sales_today": count,
                    "cost_today": cost, "reversals_pending": pending})
    return out


def insert_link(conn: sqlite3.Connection, name: str, acquirer_id: str, zmk_lmk: str,
                zmk_kcv: str) -> None:
    ensure_routing_schema(conn)
    if conn.execute("SELECT 1 FROM links WHERE name=? OR acquirer_id=?",
                    (name, acquirer_id)).fetchone():
        raise ConfigError(f"link {name} or acquirer id {acquirer_id} exists")
    conn.execute("INSERT INTO links VALUES (?, ?, ?, ?, ?)",
                 (name, acquirer_id, zmk_lmk, zmk_kcv, _now()))


def load_link(conn: sqlite3.Connection, acquirer_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM links WHERE acquirer_id=?", (acquirer_id,)).fetchone()
