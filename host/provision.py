"""Provisioning: merchants, terminals (TMK under LMK) and the issuer simulator's cards (PIN
only as a PVV). Usable while the host runs: each call is one short SQLite transaction.
Keys go through the HSM; nothing here sees a clear key except the lab components it prints.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from host.db import PanProtector, open_store
from host.errors import ConfigError
from host.hsm import TMK_TYPE, check_lmk, ensure_pvk
from host.rules import CARD_STATUSES
from hsm_sim.client import HsmClient
from hsm_sim.errors import HsmError
from specs.codes import DOMESTIC_ORGANISATION, card_organisation
from specs.values import MAX_AMOUNT_MINOR, MAX_AMOUNT_TEXT

MAC_ALGORITHMS = ("x919", "cup-ecb")
TID_LENGTH = 8
MID_LENGTH = 15
PAN_LENGTHS = range(12, 20)
PIN_LENGTHS = range(4, 13)
PVKI = 1
CVMS = ("pin", "signature", "none")


@contextmanager
def _store(db_path: Path | str) -> Iterator[sqlite3.Connection]:
    conn = open_store(db_path)
    try:
        yield conn
    finally:
        conn.close()


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _check_id(value: str, length: int, what: str) -> None:
    if not value or len(value) > length or not value.isprintable() or value != value.strip():
        raise ConfigError(f"{what} must be 1-{length} printable characters, not {value!r}")


async def add_merchant(db_path: Path | str, mid: str, name: str) -> None:
    _check_id(mid, MID_LENGTH, "MID")
    with _store(db_path) as conn:
        try:
            conn.execute("INSERT INTO merchants VALUES (?, ?, ?)", (mid, name, _now()))
        except sqlite3.IntegrityError:
            raise ConfigError(f"merchant {mid} already exists") from None


async def add_terminal(db_path: Path | str, hsm: HsmClient, tid: str, mid: str,
                       tmk_hex: str | None = None, mac: str = "x919") -> dict[str, object]:
    """Register a terminal. With ``tmk_hex`` the clear TMK is imported (lab injection);
    without, the HSM generates one and its two clear components are returned once."""
    _check_id(tid, TID_LENGTH, "TID")
    if mac not in MAC_ALGORITHMS:
        raise ConfigError(f"--mac must be one of {', '.join(MAC_ALGORITHMS)}")
    with _store(db_path) as conn:
        if conn.execute("SELECT 1 FROM merchants WHERE mid=?", (mid,)).fetchone() is None:
            raise ConfigError(f"merchant {mid} does not exist: add it first")
        if conn.execute("SELECT 1 FROM terminals WHERE tid=?", (tid,)).fetchone():
            raise ConfigError(f"terminal {tid} already exists")
        await check_lmk(conn, hsm)
        result: dict[str, object] = {"tid": tid, "mid": mid, "mac": mac}
        try:
            if tmk_hex is not None:
                if len(tmk_hex) != 32 or any(c not in "0123456789abcdefABCDEF" for c in tmk_hex):
                    raise ConfigError("--tmk must be 32 hex digits (a double-length key)")
                tmk = await hsm.import_clear_key(TMK_TYPE, tmk_hex)
            else:
                tmk, components = await hsm.generate_key_components(TMK_TYPE)
                result["components"] = components
        except HsmError as exc:
            raise ConfigError(f"the HSM refused the TMK: {exc}") from None
        result["tmk_kcv"] = tmk.kcv
        conn.execute(
            "INSERT INTO terminals (tid, mid, mac_algorithm, tmk_lmk, tmk_kcv, created)"
            " VALUES (?, ?, ?, ?, ?, ?)", (tid, mid, mac, tmk.key, tmk.kcv, _now()),
        )
    return result


def _check_card(pan: str, expiry: str, pin: str | None, status: str, balance: int = 0,
                limit: int | None = None, cvm: str = "pin") -> None:
    if not pan.isascii() or not pan.isdigit() or len(pan) not in PAN_LENGTHS:
        raise ConfigError("PAN must be 12-19 digits")
    if (len(expiry) != 4 or not expiry.isascii() or not expiry.isdigit()
            or not 1 <= int(expiry[2:]) <= 12):
        raise ConfigError("expiry must be YYMM")
    if pin is not None and (not pin.isascii() or not pin.isdigit()
                            or len(pin) not in PIN_LENGTHS):
        raise ConfigError("PIN must be 4-12 digits")
    if cvm not in CVMS or (cvm == "pin" and pin is None):
        raise ConfigError(f"CVM must be one of {', '.join(CVMS)} (pin needs a PIN)")
    if status not in CARD_STATUSES:
        raise ConfigError(f"status must be one of {', '.join(CARD_STATUSES)}")
    for value in (balance, limit):
        if value is not None and not 0 <= value <= MAX_AMOUNT_MINOR:
            raise ConfigError(f"amounts must be 0 to {MAX_AMOUNT_TEXT} (what F4/F54 carry)")


async def add_card(db_path: Path | str, hsm: HsmClient, pan: str, expiry: str, pin: str | None,
                   balance_minor: int, limit_minor: int | None = None, status: str = "active",
                   domestic: bool | None = None, cvm: str = "pin") -> None:
    """An issuer-simulator card; the PIN is kept only as the Visa PVV the HSM computes.
    ``cvm`` "pin" (a sale or inquiry without a PIN block is declined 55), "signature" or
    "none"; a card without a PIN has no PVV.

    Domestic or foreign follows the card's organisation by BIN (specs.codes), the same rule
    that names it in responses' F63, so terminal and host total it on the same side."""
    _check_card(pan, expiry, pin, status, balance_minor, limit_minor, cvm)
    by_bin = card_organisation(pan) == DOMESTIC_ORGANISATION
    if domestic is not None and domestic != by_bin:
        raise ConfigError(f"a {card_organisation(pan)} card is "
                          f"{'domestic' if by_bin else 'foreign'} by its BIN")
    with _store(db_path) as conn:
        await check_lmk(conn, hsm)
        pvk = await ensure_pvk(conn, hsm)
        pvv = ""
        try:
            if pin is not None:
                pvv = await hsm.generate_pvv(pvk, pan, pin, PVKI)
        except HsmError as exc:
            raise ConfigError(f"the HSM could not compute the PVV: {exc}") from None
        try:
            conn.execute(
                "INSERT INTO cards (pan, expiry, pvv, pvki, balance, limit_minor, status,"
                " domestic, created, pan_hash, cvm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pan, expiry, pvv, PVKI, balance_minor, limit_minor, status, int(by_bin),
                 _now(), PanProtector.load(conn).hash(pan), cvm),
            )
        except sqlite3.IntegrityError:
            raise ConfigError("a card with this PAN already exists") from None


def set_card_status(db_path: Path | str, pan: str, status: str | None = None,
                    reset_pin_tries: bool = False) -> None:
    """Change a card's status and/or reset its wrong-PIN counter (unblocks 75)."""
    with _store(db_path) as conn:
        if status is not None:
            if status not in CARD_STATUSES:
                raise ConfigError(f"status must be one of {', '.join(CARD_STATUSES)}")
            cur = conn.execute("UPDATE cards SET status=? WHERE pan=?", (status, pan))
        if reset_pin_tries:
            cur = conn.execute("UPDATE cards SET pin_tries=0 WHERE pan=?", (pan,))
        if status is None and not reset_pin_tries:
            return
        if cur.rowcount == 0:
            raise ConfigError("no such card")
