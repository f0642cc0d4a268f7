"""Provisioning of the bench fleet through the host's Python API (``host.provision``).

One merchant, ``count`` terminals sharing the bench TMK (lab injection), and one card per
terminal (PIN ``TEST_PIN``, a balance that never limits). Provisioning is slow per row (each
call is its own durable SQLite transaction), so the bench provisions a template database once
and copies it for each run.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from benchlib.limits import (
    BENCH_MID,
    BENCH_TMK_HEX,
    CARD_BALANCE,
    CARD_EXPIRY,
    CARD_PREFIX,
    TEST_PIN,
    TID_PREFIX,
)
from benchlib.load import Fleet
from shared.naming import lab_pan, terminal_ids


def fleet_of(count: int) -> Fleet:
    """``count`` terminals named as ``posterm load --tid-prefix B`` names them, a card each."""
    return Fleet(terminal_ids(TID_PREFIX, count),
                 [lab_pan(CARD_PREFIX, i) for i in range(1, count + 1)])


async def provision(db_path: Path, count: int, *, balance: int = CARD_BALANCE,
                    chip_imk: str | None = None) -> Fleet:
    """Provision ``count`` terminals and cards into ``db_path`` (created if absent). With
    ``chip_imk`` (32 hex) the cards are chip cards (PSN 01) of an issuer key for their BIN."""
    from host.provision import add_card, add_issuer_key, add_merchant, add_terminal
    from hsm_sim.client import HsmClient
    from hsm_sim.commands import HsmEngine

    hsm = HsmClient.in_process(HsmEngine.test())
    fleet = fleet_of(count)
    try:
        await add_merchant(db_path, BENCH_MID, "bench merchant")
        if chip_imk is not None:
            await add_issuer_key(db_path, hsm, CARD_PREFIX[:6], chip_imk)
        for tid, pan in zip(fleet.tids, fleet.pans, strict=True):
            await add_terminal(db_path, hsm, tid, BENCH_MID, tmk_hex=BENCH_TMK_HEX)
            await add_card(db_path, hsm, pan, CARD_EXPIRY, TEST_PIN, balance,
                           chip_psn="01" if chip_imk else None)
    finally:
        await hsm.aclose()
    return fleet


def copy_db(template: Path, target: Path) -> None:
    """Copy a quiescent database (with its WAL checkpointed first)."""
    conn = sqlite3.connect(template)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    shutil.copyfile(template, target)


def balances(db_path: Path) -> dict[str, int]:
    """Masked PAN -> balance of every card (read-only; no clear PAN is stored)."""
    from benchlib.ledger import _open
    conn = _open(db_path)
    try:
        return {pan: bal for pan, bal in conn.execute("SELECT pan_masked, balance FROM cards")}
    finally:
        conn.close()
