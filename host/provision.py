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

from host import chip
from host.db import PanProtector, has_clear_pans, open_store
from host.errors import ConfigError
from host.hsm import (
    NOT_AUTHORISED,
    check_lmk,
    encrypt_pan,
    ensure_pan_keys,
    ensure_pvk,
    not_authorised_hint,
    reveal_pan,
)
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
MK_AC_TYPE = "109"
"""Key type of an issuer master key for application cryptograms (hsm-commands.md)."""
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
                tmk = await hsm.import_clear_key(hsm.tmk_type, tmk_hex)
            else:
                tmk, components = await hsm.generate_key_components(hsm.tmk_type)
                result["components"] = components
        except HsmError as exc:
            if exc.code == NOT_AUTHORISED:
                raise ConfigError(not_authorised_hint("terminal add (TMK import)") + "; the"
                                  " clear-key extensions Y4/Y8 also need the test LMK"
                                  ) from None
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
                   domestic: bool | None = None, cvm: str = "pin",
                   chip_psn: str | None = None) -> None:
    """An issuer-simulator card; the PIN is kept only as the Visa PVV the HSM computes.
    ``cvm`` "pin" (a sale or inquiry without a PIN block is declined 55), "signature" or
    "none"; a card without a PIN has no PVV.

    Domestic or foreign follows the card's organisation by BIN (specs.codes), the same rule
    that names it in responses' F63, so terminal and host total it on the same side."""
    _check_card(pan, expiry, pin, status, balance_minor, limit_minor, cvm)
    if chip_psn is not None and (len(chip_psn) != 2 or not chip_psn.isdigit()):
        raise ConfigError("--psn must be 2 digits (the PAN sequence number)")
    by_bin = card_organisation(pan) == DOMESTIC_ORGANISATION
    if domestic is not None and domestic != by_bin:
        raise ConfigError(f"a {card_organisation(pan)} card is "
                          f"{'domestic' if by_bin else 'foreign'} by its BIN")
    with _store(db_path) as conn:
        await check_lmk(conn, hsm)
        pvk = await ensure_pvk(conn, hsm)
        keys = await ensure_pan_keys(conn, hsm)
        pan_hash = await hsm.hash_pan(keys.hash_key, pan)
        if conn.execute("SELECT 1 FROM cards WHERE pan_hash=?", (pan_hash,)).fetchone():
            raise ConfigError("a card with this PAN already exists")
        pvv = ""
        try:
            if pin is not None:
                pvv = await hsm.generate_pvv(pvk, pan, pin, PVKI)
        except HsmError as exc:
            if exc.code == NOT_AUTHORISED:
                raise ConfigError(not_authorised_hint("card add (PIN to PVV)")) from None
            raise ConfigError(f"the HSM could not compute the PVV: {exc}") from None
        encrypted = await encrypt_pan(hsm, keys, pan)
        try:
            conn.execute(
                "INSERT INTO cards (pan_hash, pan_masked, pan_enc, expiry, pvv, pvki, balance,"
                " limit_minor, status, domestic, created, cvm) VALUES (?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?)",
                (pan_hash, PanProtector.mask(pan), encrypted, expiry, pvv, PVKI, balance_minor,
                 limit_minor, status, int(by_bin), _now(), cvm),
            )
        except sqlite3.IntegrityError:
            raise ConfigError("a card with this PAN already exists") from None
        if chip_psn is not None:
            chip.add_chip_card(conn, pan_hash, chip_psn, _now())


async def add_issuer_key(db_path: Path | str, hsm: HsmClient, bin_prefix: str,
                         imk_ac_hex: str | None = None) -> dict[str, object]:
    """An issuer master key for application cryptograms (MK-AC, key type 109) for the cards
    whose PAN starts with ``bin_prefix``. With ``imk_ac_hex`` the clear key is imported (test
    LMK only: the HSM refuses otherwise); without, the HSM generates it and its two clear
    components are returned once (to personalise lab cards), with the KCV."""
    if not bin_prefix.isdigit() or len(bin_prefix) not in chip.BIN_LENGTHS:
        raise ConfigError("--bin must be 6-11 digits")
    with _store(db_path) as conn:
        if conn.execute("SELECT 1 FROM issuer_keys WHERE bin=?", (bin_prefix,)).fetchone():
            raise ConfigError(f"BIN {bin_prefix} already has an issuer key")
        await check_lmk(conn, hsm)
        result: dict[str, object] = {"bin": bin_prefix, "scheme": chip.SCHEME}
        try:
            if imk_ac_hex is not None:
                if len(imk_ac_hex) != 32 or any(c not in "0123456789abcdefABCDEF"
                                                for c in imk_ac_hex):
                    raise ConfigError("--imk-ac must be 32 hex digits (a double-length key)")
                key = await hsm.import_clear_key(MK_AC_TYPE, imk_ac_hex)
            else:
                key, components = await hsm.generate_key_components(MK_AC_TYPE)
                result["components"] = components
        except HsmError as exc:
            raise ConfigError(f"the HSM refused the issuer key: {exc}") from None
        result["kcv"] = key.kcv
        chip.store_issuer_key(conn, bin_prefix, key.key, key.kcv, _now())
    return result


async def card_hash(db_path: Path | str, hsm: HsmClient, pan: str) -> str:
    """The keyed hash of a card's PAN (the card's `id` in `card list`), computed by the HSM."""
    with _store(db_path) as conn:
        await check_lmk(conn, hsm)
        keys = await ensure_pan_keys(conn, hsm)
    return await hsm.hash_pan(keys.hash_key, pan)


async def show_card(db_path: Path | str, hsm: HsmClient, pan: str | None = None,
                    card_id: str | None = None, reveal: bool = False) -> dict[str, object]:
    """One card by PAN or by id (masked PAN); with ``reveal`` the clear PAN, decrypted by the
    HSM (M2, which needs the Authorised state)."""
    if (pan is None) == (card_id is None):
        raise ConfigError("give the card's --pan or its --id")
    pan_hash = card_id.upper() if card_id else await card_hash(db_path, hsm, pan or "")
    with _store(db_path) as conn:
        row = conn.execute("SELECT * FROM cards WHERE pan_hash=?", (pan_hash,)).fetchone()
        if row is None:
            raise ConfigError("no such card")
        card = {k: row[k] for k in ("pan_masked", "expiry", "balance", "limit_minor", "status",
                                    "pin_tries", "domestic")}
        card["id"] = pan_hash
        if reveal:
            keys = await ensure_pan_keys(conn, hsm)
            try:
                card["pan"] = await reveal_pan(hsm, keys, row["pan_enc"])
            except HsmError as exc:
                if exc.code == NOT_AUTHORISED:
                    raise ConfigError(not_authorised_hint("card show --reveal")) from None
                raise ConfigError(f"the HSM could not decrypt the PAN: {exc}") from None
    return card


def set_card_status(db_path: Path | str, pan: str, status: str | None = None,
                    reset_pin_tries: bool = False, *, pan_hash: str | None = None) -> None:
    """Change a card's status and/or reset its wrong-PIN counter (unblocks 75). The card is
    found by ``pan_hash`` (`card_hash`: the HSM keys it); ``pan`` is only for old databases
    that still hold clear PANs."""
    with _store(db_path) as conn:
        column, key = ("pan", pan) if pan_hash is None else ("pan_hash", pan_hash)
        if pan_hash is None and not has_clear_pans(conn):
            raise ConfigError("cards are found by the HSM's PAN hash: pass pan_hash")
        if status is not None:
            if status not in CARD_STATUSES:
                raise ConfigError(f"status must be one of {', '.join(CARD_STATUSES)}")
            cur = conn.execute(f"UPDATE cards SET status=? WHERE {column}=?", (status, key))
        if reset_pin_tries:
            cur = conn.execute(f"UPDATE cards SET pin_tries=0 WHERE {column}=?", (key,))
        if status is None and not reset_pin_tries:
            return
        if cur.rowcount == 0:
            raise ConfigError("no such card")
