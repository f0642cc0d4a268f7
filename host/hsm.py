"""Reaching the HSM: the embedded engine (in-process, no thread hop) or a payShield-style TCP
HSM, and the LMK guard that refuses a database whose keys were stored under another LMK."""

from __future__ import annotations

import sqlite3
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from host.db import CARDS_COLUMNS, PanProtector, get_meta, has_clear_pans, set_meta
from host.errors import ConfigError
from hsm_sim.client import DATA_KEY_TYPE, PAN_HASH_KEY_TYPE, HsmClient
from hsm_sim.commands import HsmEngine
from hsm_sim.errors import HsmError
from hsm_sim.lmk import TEST_LMK_WARNING, load_lmk
from specs.tls import TlsError, client_context

EMBEDDED = "embedded"
TCP_PREFIX = "tcp://"
TLS_PREFIX = "tls://"
"""``tls://HOST:PORT[?ca=FILE][&cert=FILE&key=FILE]``: the HSM over TLS 1.2+; its certificate
must chain to ``ca`` (the system's CAs without), ``cert``/``key`` for a mutual-TLS HSM."""
PVK_TYPE = "002"
TMK_TYPE = "002"
TEST_LMK_WARNING_TEXT = TEST_LMK_WARNING


@dataclass(frozen=True)
class HsmInfo:
    """What the host knows about the HSM it talks to."""

    description: str
    test_lmk: bool


def parse_tcp(spec: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` -> (host, port)."""
    from specs.values import InputError, parse_address

    try:
        return parse_address(spec[len(TCP_PREFIX):])
    except InputError:
        raise ConfigError(f"--hsm must be 'embedded' or tcp://HOST:PORT (port 1-65535),"
                          f" not {spec!r}") from None


def parse_tls(spec: str) -> tuple[str, int, ssl.SSLContext]:
    """``tls://HOST:PORT?ca=F&cert=F&key=F`` -> (host, port, client context)."""
    address, _, query = spec.partition("?")
    host, port = parse_tcp(TCP_PREFIX + address[len(TLS_PREFIX):])
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    unknown = set(params) - {"ca", "cert", "key"}
    if unknown:
        raise ConfigError(f"--hsm tls:// takes ca=, cert= and key=, not {sorted(unknown)}")
    files = {name: values[-1] for name, values in params.items()}
    try:
        context = client_context(files.get("ca"), files.get("cert"), files.get("key"))
    except TlsError as exc:
        raise ConfigError(f"--hsm: {exc}") from None
    return host, port, context


NOT_AUTHORISED = "17"


def not_authorised_hint(what: str) -> str:
    """The operator's message when provisioning meets error 17 (HSM not Authorised)."""
    return (f"{what} needs the HSM in the Authorised state (error 17: it takes a clear PIN or"
            " a clear key). With --hsm tcp://...: start it with `hsm-sim serve --authorised`"
            " (or --authorised-for SECONDS); with the embedded HSM on a live LMK: pass"
            " --authorise")


@asynccontextmanager
async def open_hsm(hsm: str, lmk: str, authorise: bool | None = False
                   ) -> AsyncIterator[tuple[HsmClient, HsmInfo]]:
    """An HSM client for ``--hsm`` / ``--lmk``; closed on exit.

    The embedded HSM is Authorised (BA, Y4/Y6/Y8 accepted) only when ``authorise`` is True,
    or when it is None (provisioning commands) and the LMK is the published test LMK. A
    serving host passes False: the message path never needs a clear PIN or key."""
    if hsm == EMBEDDED:
        try:
            lmk_set = load_lmk(lmk)
        except HsmError as exc:
            raise ConfigError(f"cannot load the LMK: {exc}") from None
        engine = HsmEngine(lmk_set)
        if authorise or (authorise is None and lmk_set.is_test):
            engine.authorise(None, who="poshost provisioning (embedded HSM)")
        client = HsmClient.in_process(engine)
        info = HsmInfo(f"embedded HSM, LMK {'TEST' if lmk_set.is_test else lmk}",
                       lmk_set.is_test)
    elif hsm.startswith(TCP_PREFIX):
        host, port = parse_tcp(hsm)
        client = HsmClient.tcp(host, port)
        info = HsmInfo(f"HSM at {host}:{port}", False)
    elif hsm.startswith(TLS_PREFIX):
        host, port, context = parse_tls(hsm)
        client = HsmClient.tcp(host, port, ssl_context=context)
        info = HsmInfo(f"HSM at {host}:{port} over TLS", False)
    else:
        raise ConfigError(f"--hsm must be 'embedded', tcp://HOST:PORT or tls://HOST:PORT,"
                          f" not {hsm!r}")
    try:
        yield client, info
    finally:
        await client.aclose()


async def check_lmk(conn: sqlite3.Connection, client: HsmClient) -> str:
    """Bind the database to the LMK on first use; refuse another LMK afterwards."""
    try:
        kcv = await client.lmk_check_value()
    except HsmError as exc:
        raise ConfigError(f"the HSM does not answer: {exc}") from None
    stored = get_meta(conn, "lmk_kcv")
    if stored is None:
        set_meta(conn, "lmk_kcv", kcv)
    elif stored != kcv:
        raise ConfigError(
            f"this database's keys are under the LMK with check value {stored}, but the HSM"
            f" has {kcv}: use the same --lmk / --hsm as when it was provisioned"
        )
    apply_key_type_setting(conn, client)
    await ensure_pan_keys(conn, client)
    return kcv


SEPARATION_META = "key_type_002_separation"


def apply_key_type_setting(conn: sqlite3.Connection, client: HsmClient) -> None:
    """Use the key types this database was provisioned with (`poshost init --separate-002`:
    TPK 70D, TMK 80D; else 002)."""
    client.use_002_separation(get_meta(conn, SEPARATION_META) == "1")


@dataclass(frozen=True)
class PanKeys:
    """The keys that protect PANs at rest, both under the LMK: a ZAK for the keyed hash and a
    ZEK for the encrypted PAN."""

    hash_key: str
    data_key: str


PAN_FILL = "F"
PAN_BLOCK_LENGTH = 24
"""A PAN (12-19 digits) is F-filled to 24 bytes (3 DES blocks) before M0."""


def load_pan_keys(conn: sqlite3.Connection) -> PanKeys | None:
    hash_key, data_key = get_meta(conn, "pan_hash_key_lmk"), get_meta(conn, "pan_data_key_lmk")
    return None if hash_key is None or data_key is None else PanKeys(hash_key, data_key)


async def ensure_pan_keys(conn: sqlite3.Connection, client: HsmClient) -> PanKeys:
    """The PAN keys, generated by the HSM on first use; an old card table with clear PANs is
    upgraded on the way (host/db.py)."""
    keys = load_pan_keys(conn)
    if keys is None:
        hash_key = (await client.generate_key(PAN_HASH_KEY_TYPE)).key
        data_key = (await client.generate_key(DATA_KEY_TYPE)).key
        set_meta(conn, "pan_hash_key_lmk", hash_key)
        set_meta(conn, "pan_data_key_lmk", data_key)
        keys = PanKeys(hash_key, data_key)
    if has_clear_pans(conn):
        await _upgrade_clear_pans(conn, client, keys)
    return keys


async def encrypt_pan(client: HsmClient, keys: PanKeys, pan: str) -> str:
    return await client.encrypt_data(keys.data_key,
                                     pan.ljust(PAN_BLOCK_LENGTH, PAN_FILL).encode("ascii"))


async def reveal_pan(client: HsmClient, keys: PanKeys, stored: str) -> str:
    """The clear PAN from its encrypted form (M2: the HSM must be Authorised)."""
    return (await client.decrypt_data(keys.data_key, stored)).decode("ascii").rstrip(PAN_FILL)


async def _upgrade_clear_pans(conn: sqlite3.Connection, client: HsmClient,
                              keys: PanKeys) -> None:
    """Replace the old card table (clear `pan`, salted hash) by the protected one, and move
    the acquirer's records of those cards from the salted hash to the HSM's, in one
    transaction (the HSM work is done before it)."""
    old = conn.execute("SELECT * FROM cards").fetchall()
    salted = PanProtector.load(conn)
    rows, moves = [], []
    for r in old:
        new_hash = await client.hash_pan(keys.hash_key, r["pan"])
        encrypted = await encrypt_pan(client, keys, r["pan"])
        rows.append((new_hash, PanProtector.mask(r["pan"]), encrypted, r["expiry"], r["pvv"],
                     r["pvki"], r["balance"], r["limit_minor"], r["status"], r["pin_tries"],
                     r["domestic"], r["created"], r["cvm"]))
        moves.append((new_hash, r["pan_hash"] or salted.hash(r["pan"])))
    columns = ", ".join(CARDS_COLUMNS)
    conn.execute("PRAGMA secure_delete=ON")  # freed pages are zeroed, not left with PANs
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DROP INDEX IF EXISTS cards_pan_hash")
        conn.execute("ALTER TABLE cards RENAME TO cards_clear_pan")
        conn.execute(
            "CREATE TABLE cards (pan_hash TEXT PRIMARY KEY, pan_masked TEXT NOT NULL,"
            " pan_enc TEXT NOT NULL, expiry TEXT NOT NULL, pvv TEXT NOT NULL,"
            " pvki INTEGER NOT NULL, balance INTEGER NOT NULL, limit_minor INTEGER,"
            " status TEXT NOT NULL, pin_tries INTEGER NOT NULL DEFAULT 0,"
            " domestic INTEGER NOT NULL DEFAULT 1, created TEXT NOT NULL,"
            " cvm TEXT NOT NULL DEFAULT 'pin')")
        conn.executemany(f"INSERT INTO cards ({columns}) VALUES"
                         f" ({', '.join('?' * len(CARDS_COLUMNS))})", rows)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in ("txns", "uploads", "chip_cards"):
            if table in tables:
                conn.executemany(f"UPDATE {table} SET pan_hash = ? WHERE pan_hash = ?",
                                 moves)
        conn.execute("DROP TABLE cards_clear_pan")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("VACUUM")  # the clear PANs must not linger in free pages
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def ensure_pvk(conn: sqlite3.Connection, client: HsmClient) -> str:
    """The issuer simulator's PVK under the LMK, generated on first use."""
    pvk = get_meta(conn, "pvk_lmk")
    if pvk is None:
        key = await client.generate_key(PVK_TYPE)
        pvk = key.key
        set_meta(conn, "pvk_lmk", pvk)
        set_meta(conn, "pvk_kcv", key.kcv)
    return pvk
