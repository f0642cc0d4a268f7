"""posterm's emulated chip cards in the terminal's private state file: the cards (clear ICC
master key, as a card's chip holds it) and their ATC, which goes up by one, durably, before
each GENERATE AC leaves the card; and the chip data of each journal line (for receipts, voids
and refunds).
"""

from __future__ import annotations

import sqlite3

from terminal.chip import ChipCard, ChipRead, SecondAc
from terminal.errors import BadInput
from terminal.state import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chip_cards (
    name TEXT PRIMARY KEY, pan TEXT NOT NULL, psn TEXT NOT NULL, expiry TEXT NOT NULL,
    icc_mk BLOB NOT NULL, atc INTEGER NOT NULL DEFAULT 0, aid TEXT NOT NULL,
    label TEXT NOT NULL, behaviour TEXT NOT NULL DEFAULT 'normal');
CREATE TABLE IF NOT EXISTS chip_journal (
    journal_id INTEGER PRIMARY KEY, card TEXT NOT NULL, psn TEXT NOT NULL, atc TEXT NOT NULL,
    aid TEXT, label TEXT, tvr TEXT, cid TEXT, cryptogram TEXT);
"""


def _ensure(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)


def _card(row: sqlite3.Row) -> ChipCard:
    return ChipCard(row["name"], row["pan"], row["psn"], row["expiry"], bytes(row["icc_mk"]),
                    row["atc"], row["aid"], row["label"], row["behaviour"])


def add_card(store: Store, card: ChipCard) -> None:
    _ensure(store._db)
    with store.transaction() as db:
        try:
            db.execute("INSERT INTO chip_cards VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (card.name, card.pan, card.psn, card.expiry, card.icc_mk, card.atc,
                        card.aid, card.label, card.behaviour))
        except sqlite3.IntegrityError:
            raise BadInput(f"a card named {card.name!r} already exists") from None


def load_card(store: Store, name: str) -> ChipCard:
    _ensure(store._db)
    row = store._db.execute("SELECT * FROM chip_cards WHERE name=?", (name,)).fetchone()
    if row is None:
        raise BadInput(f"no chip card named {name!r}: add it with posterm card add")
    return _card(row)


def find_card_by_pan(store: Store, pan: str) -> ChipCard | None:
    _ensure(store._db)
    row = store._db.execute("SELECT * FROM chip_cards WHERE pan=? ORDER BY name LIMIT 1",
                            (pan,)).fetchone()
    return None if row is None else _card(row)


def list_cards(store: Store) -> list[ChipCard]:
    _ensure(store._db)
    return [_card(r) for r in store._db.execute("SELECT * FROM chip_cards ORDER BY name")]


def take_atc(store: Store, name: str) -> int:
    """The card's next ATC, committed before the card answers (a crash never reuses one)."""
    _ensure(store._db)
    with store.transaction() as db:
        row = db.execute("SELECT atc FROM chip_cards WHERE name=?", (name,)).fetchone()
        if row is None:
            raise BadInput(f"no chip card named {name!r}")
        atc = int(row[0]) + 1
        db.execute("UPDATE chip_cards SET atc=? WHERE name=?", (atc, name))
    return atc


def record_read(store: Store, journal_id: int, read: ChipRead) -> None:
    _ensure(store._db)
    with store.transaction() as db:
        db.execute("INSERT OR REPLACE INTO chip_journal VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (journal_id, read.card.name, read.card.psn, read.tags["9F36"], read.card.aid,
                    read.card.label, read.tags["95"], read.tags["9F27"], read.tags["9F26"]))


def record_second(store: Store, journal_id: int, second: SecondAc) -> None:
    with store.transaction() as db:
        db.execute("UPDATE chip_journal SET cid=?, cryptogram=?, tvr=? WHERE journal_id=?",
                   (second.cid, second.cryptogram, second.tags.get("95"), journal_id))


def journal_chip(store: Store, journal_id: int) -> sqlite3.Row | None:
    _ensure(store._db)
    return store._db.execute("SELECT * FROM chip_journal WHERE journal_id=?",
                             (journal_id,)).fetchone()


def replace_reversal(store: Store, journal_id: int, request_json: str, reason: str,
                     auth: str | None) -> None:
    """The pending reversal of a journal line becomes ``request`` (the decline reversal
    carrying the AAC), reason ``reason``."""
    with store.transaction() as db:
        db.execute("UPDATE reversals SET request=?, reason=?, auth=? WHERE journal_id=?",
                   (request_json, reason, auth, journal_id))
