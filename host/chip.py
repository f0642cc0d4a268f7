"""The issuer simulator's chip (EMV) side, protocol.md section 8: issuer master keys (MK-AC)
per BIN prefix, chip cards with their PSN and highest ATC, ARQC verification and the ARPC
through the HSM's KW command, the chip rules (05 / 13 / ATC replay) and the chip data kept
beside each transaction.

The message path calls :func:`verify_chip_request` (before any other card check) and
:func:`with_issuer_auth` (tag 91 on the answer); the ledger calls :func:`apply_chip_rules`
and :func:`record_entry` inside the writer's transaction, so the highest ATC is committed
with the outcome (kill -9 cannot let an ATC replay through). Keys stay under the LMK.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from hsm_sim.client import HsmClient
from hsm_sim.emv import build_option_a_y
from hsm_sim.errors import HsmError
from specs.catalog import CHIP_VARIANTS, MessageKind
from specs.emv import (
    ISSUER_AUTH_TAG,
    amount_matches,
    arqc_data,
    decode_f55,
    encode_f55,
    is_chip_entry,
    issuer_auth_data,
)
from specs.messages import Message
from specs.pretty import pan_of

log = logging.getLogger("poshost")

CHIP_SCHEMA = """
CREATE TABLE IF NOT EXISTS issuer_keys (
    bin TEXT PRIMARY KEY, mk_ac_lmk TEXT NOT NULL, kcv TEXT NOT NULL,
    scheme TEXT NOT NULL DEFAULT 'emv-csk', created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chip_cards (
    pan_hash TEXT PRIMARY KEY, psn TEXT NOT NULL, atc_high INTEGER NOT NULL DEFAULT -1,
    created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS txn_entry (
    txn_id INTEGER PRIMARY KEY, entry_mode TEXT, psn TEXT, atc TEXT, tvr TEXT, cid TEXT,
    arqc TEXT);
"""
"""Tables of the chip side (created on every open: an older database gains them)."""

SCHEME = "emv-csk"
DO_NOT_HONOUR = "05"
INVALID_AMOUNT = "13"
BIN_LENGTHS = range(6, 12)
ARQC_OK, ARQC_FAILED, ARQC_NO_KEY = "ok", "failed", "no issuer key"


def ensure_chip_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(CHIP_SCHEMA)


@dataclass(frozen=True)
class ChipFacts:
    """What the message path learned from a chip request (picklable: it travels with the
    request to the writer). ``verified`` is the HSM's word on the ARQC."""

    arqc_status: str
    atc: int
    psn: str
    amount_ok: bool
    tvr: str
    cid: str
    entry_mode: str
    mk_ac_lmk: str = ""
    y: bytes = b""
    atc_bytes: bytes = b""
    un: bytes = b""
    data: bytes = b""
    arqc: bytes = b""

    @property
    def verified(self) -> bool:
        return self.arqc_status == ARQC_OK


def psn_of(doc: Mapping[str, str]) -> str:
    """The PSN (2 digits) from F23 (n3, right-justified)."""
    return doc.get("23", "000")[-2:]


def find_issuer_key(conn: sqlite3.Connection, pan: str) -> tuple[str, str] | None:
    """(BIN, MK-AC under LMK) of the longest BIN prefix of ``pan`` with an issuer key."""
    prefixes = [pan[:n] for n in BIN_LENGTHS if n <= len(pan)]
    if not prefixes:
        return None
    marks = ",".join("?" * len(prefixes))
    row = conn.execute(
        f"SELECT bin, mk_ac_lmk FROM issuer_keys WHERE bin IN ({marks})"
        " ORDER BY length(bin) DESC LIMIT 1", prefixes).fetchone()
    return None if row is None else (row[0], row[1])


def is_chip_request(kind: MessageKind, doc: Mapping[str, str]) -> bool:
    return kind.name in CHIP_VARIANTS and is_chip_entry(doc.get("22", ""))


async def verify_chip_request(hsm: HsmClient, conn: sqlite3.Connection, kind: MessageKind,
                              doc: Mapping[str, str]) -> ChipFacts | None:
    """KW mode 0 on a chip sale or balance inquiry (F55 already checked by the catalog);
    None for any other request."""
    if not is_chip_request(kind, doc):
        return None
    tags = decode_f55(doc["55"])
    pan, psn = pan_of(doc), psn_of(doc)
    facts = ChipFacts(
        ARQC_NO_KEY, int(tags["9F36"], 16), psn, amount_matches(tags, doc.get("4", "0")),
        tags["95"], tags["9F27"], doc["22"],
    )
    key = find_issuer_key(conn, pan)
    if key is None or not pan.isdigit():
        return facts
    y, atc, un = build_option_a_y(pan, psn), bytes.fromhex(tags["9F36"]), bytes.fromhex(
        tags["9F37"])
    data, arqc = arqc_data(tags), bytes.fromhex(tags["9F26"])
    ok = await hsm.verify_arqc(key[1], y, atc, un, data, arqc)
    return ChipFacts(ARQC_OK if ok else ARQC_FAILED, facts.atc, psn, facts.amount_ok,
                     facts.tvr, facts.cid, facts.entry_mode, key[1], y, atc, un, data, arqc)


async def with_issuer_auth(hsm: HsmClient, facts: ChipFacts | None,
                           response: Message) -> Message:
    """Tag 91 (ARPC || ARC) on the answer to a chip request whose ARQC verified (KW mode 2
    with ARC = F39), approved or declined; the answer unchanged otherwise."""
    if facts is None or not facts.verified or "39" not in response:
        return response
    arc = response["39"]
    try:
        arpc = await hsm.generate_arpc(facts.mk_ac_lmk, facts.y, facts.atc_bytes, facts.un,
                                       facts.data, facts.arqc, arc)
    except HsmError as exc:
        # The outcome is committed: answering 96 now would hide an approval the books hold.
        # Without tag 91 the card declines it and the terminal reverses (0400/06, section 8).
        log.warning("tid=%s ARPC not generated (%s): answered without tag 91",
                    response.get("41", "?"), exc)
        return response
    return {**response, "55": encode_f55({ISSUER_AUTH_TAG: issuer_auth_data(arpc, arc)})}


def decide_chip(facts: ChipFacts, chip_card: tuple[str, int] | None,
                card_known: bool) -> str | None:
    """Section 8's order: ARQC (05), 9F02 = F4 (13), then the card's chip record: not a chip
    card or another PSN (05), ATC not above the highest seen (05, a replay). None: go on to
    the other card checks (an unknown card is 14 there).

    >>> f = ChipFacts(ARQC_OK, 7, "01", True, "0000000000", "80", "051")
    >>> decide_chip(f, ("01", 6), True), decide_chip(f, ("01", 7), True)
    (None, '05')
    """
    if not facts.verified:
        return DO_NOT_HONOUR
    if not facts.amount_ok:
        return INVALID_AMOUNT
    if chip_card is None:
        return DO_NOT_HONOUR if card_known else None
    psn, atc_high = chip_card
    if psn != facts.psn or facts.atc <= atc_high:
        return DO_NOT_HONOUR
    return None


def apply_chip_rules(conn: sqlite3.Connection, facts: ChipFacts, pan_hash: str,
                     card_known: bool) -> str | None:
    """Decide the chip rules and raise the card's highest ATC (verified ARQCs only), in the
    writer's transaction."""
    row = conn.execute("SELECT psn, atc_high FROM chip_cards WHERE pan_hash=?",
                       (pan_hash,)).fetchone()
    chip_card = None if row is None else (row[0], int(row[1]))
    code = decide_chip(facts, chip_card, card_known)
    if facts.verified and chip_card is not None and facts.atc > chip_card[1] \
            and facts.psn == chip_card[0]:
        conn.execute("UPDATE chip_cards SET atc_high=? WHERE pan_hash=?", (facts.atc, pan_hash))
    return code


def record_entry(conn: sqlite3.Connection, txn_id: int, doc: Mapping[str, str],
                 facts: ChipFacts | None) -> None:
    """The transaction's entry mode and, for chip, PSN, ATC, TVR, CID and the ARQC result
    (never a cryptogram or a key)."""
    if facts is None:
        psn = doc.get("23")
        conn.execute("INSERT OR REPLACE INTO txn_entry (txn_id, entry_mode, psn) VALUES"
                     " (?, ?, ?)", (txn_id, doc.get("22"), psn[-2:] if psn else None))
        return
    conn.execute("INSERT OR REPLACE INTO txn_entry VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (txn_id, facts.entry_mode, facts.psn, f"{facts.atc:04X}", facts.tvr,
                  facts.cid, facts.arqc_status))


def entry_data(conn: sqlite3.Connection, txn_ids: list[int]) -> dict[int, dict[str, str]]:
    """Entry mode, ATC, TVR, ARQC result per transaction id (reports)."""
    if not txn_ids:
        return {}
    marks = ",".join("?" * len(txn_ids))
    rows = conn.execute(f"SELECT txn_id, entry_mode, atc, tvr, arqc FROM txn_entry WHERE"
                        f" txn_id IN ({marks})", txn_ids).fetchall()
    return {r[0]: {"entry_mode": r[1] or "", "atc": r[2] or "", "tvr": r[3] or "",
                   "arqc": r[4] or ""} for r in rows}


# --------------------------------------------------------------------------- provisioning


def add_chip_card(conn: sqlite3.Connection, pan_hash: str, psn: str, now: str) -> None:
    conn.execute("INSERT OR REPLACE INTO chip_cards (pan_hash, psn, atc_high, created)"
                 " VALUES (?, ?, -1, ?)", (pan_hash, psn, now))


def store_issuer_key(conn: sqlite3.Connection, bin_prefix: str, mk_ac_lmk: str, kcv: str,
                     now: str) -> None:
    conn.execute("INSERT INTO issuer_keys (bin, mk_ac_lmk, kcv, scheme, created)"
                 " VALUES (?, ?, ?, ?, ?)", (bin_prefix, mk_ac_lmk, kcv, SCHEME, now))


def list_issuer_keys(conn: sqlite3.Connection) -> list[dict[str, str]]:
    return [{"bin": r[0], "kcv": r[1], "scheme": r[2], "created": r[3]} for r in conn.execute(
        "SELECT bin, kcv, scheme, created FROM issuer_keys ORDER BY bin")]
