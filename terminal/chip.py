"""posterm's emulated EMV chip cards (protocol.md section 8), sans-IO: the card's first
GENERATE AC (an ARQC over the terminal's data, ATC up by one), its second GENERATE AC after
the host answered (issuer authentication by the ARPC in tag 91: a TC, else an AAC), and the
F55 of a request and of the decline reversal. The clear ICC master key lives only here and in
the terminal's private state file, as a real card keeps it in its chip.

>>> card = ChipCard("demo", "6222021234567890128", "01", "3012",
...                 bytes.fromhex("F1E0B6B592544373A494F252752386DC"), atc=0)
>>> read = first_generate_ac(card, 12345, "sale", date="261129", un="1A2B3C4D", atc=1)
>>> read.tags["9F26"]
'EEA5EECC83A08C96'
>>> second_generate_ac(card, read, "3E3D17E3C39C20743030", "00").cid
'40'
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from hsm_sim.crypto.errors import CryptoError
from hsm_sim.emv import (
    derive_icc_mk_option_a,
    derive_session_key_common,
    generate_ac,
    generate_arpc_method_1,
)
from specs.codes import APPROVED
from specs.emv import (
    CID_AAC,
    CID_ARQC,
    CID_TC,
    ISSUER_AUTH_LENGTH,
    REVERSAL_TAGS,
    TRANSACTION_TYPES,
    TVR_ISSUER_AUTH_FAILED,
    arqc_data,
    decode_f55,
    encode_f55,
)
from specs.tlv import TlvError
from terminal.cards import NO_PIN, PIN_ENTERED, Card
from terminal.errors import BadInput

DEFAULT_AID = "A000000333010101"
"""UnionPay debit AID (the demo card's application)."""
DEFAULT_LABEL = "UnionPay Debit"
COUNTRY_CN = "0156"
CURRENCY_CN = "0156"
AIP = "7C00"
IAD = "07001203A0000000"
"""Issuer application data: its own length byte (07), then the rest (section 8's value)."""
TERMINAL_CAPABILITIES = "E0F8C8"
TERMINAL_TYPE = "22"
MAX_ATC = 0xFFFF
CVR_INDEX = 3
CVR_TC, CVR_AAC = 0x60, 0x00
"""The CVR byte after the second GENERATE AC (first byte: TC / AAC returned): the final
cryptogram differs from the ARQC, as on a real card."""
ENTRY_CONTACT, ENTRY_CONTACTLESS = "05", "07"
BEHAVIOUR_REJECT_ARPC = "reject-arpc"
BEHAVIOURS = ("normal", BEHAVIOUR_REJECT_ARPC)
CVM_ONLINE_PIN, CVM_NO_CVM = "420300", "1F0302"


@dataclass(frozen=True)
class ChipCard:
    """An emulated card: PAN, PSN, expiry, its ICC master key (MK-AC) and its ATC."""

    name: str
    pan: str
    psn: str
    expiry: str
    icc_mk: bytes
    atc: int = 0
    aid: str = DEFAULT_AID
    label: str = DEFAULT_LABEL
    behaviour: str = "normal"
    """``normal``, or ``reject-arpc``: a lab card whose issuer authentication always fails
    (to see a host approval declined by the card, and its 0400/06 reversal)."""

    def session_key(self, atc: int) -> bytes:
        return derive_session_key_common(self.icc_mk, atc.to_bytes(2, "big"))


def check_card_data(pan: str, psn: str, expiry: str) -> None:
    if not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise BadInput("PAN must be 12-19 digits")
    if len(psn) != 2 or not psn.isdigit():
        raise BadInput("PSN must be 2 digits")
    if len(expiry) != 4 or not expiry.isdigit() or not 1 <= int(expiry[2:]) <= 12:
        raise BadInput("expiry must be YYMM")


def parse_key(text: str, option: str) -> bytes:
    if len(text) != 32 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise BadInput(f"{option} must be 32 hex digits (a double-length key)")
    return bytes.fromhex(text)


def icc_mk_from_issuer_key(imk_ac: bytes, pan: str, psn: str) -> bytes:
    """Personalisation: the card's MK-AC from the issuer's (option A)."""
    try:
        return derive_icc_mk_option_a(imk_ac, pan, psn)
    except CryptoError as exc:
        raise BadInput(f"cannot derive the card key: {exc}") from None


@dataclass(frozen=True)
class ChipRead:
    """One transaction's chip data: the card's answer to the first GENERATE AC."""

    card: ChipCard
    tags: dict[str, str]
    contactless: bool = False
    pin: bool = False

    @property
    def atc(self) -> int:
        return int(self.tags["9F36"], 16)


@dataclass(frozen=True)
class SecondAc:
    """The card's final word: TC (approved) or AAC (declined), and why."""

    cid: str
    cryptogram: str
    tags: dict[str, str] = field(default_factory=dict)
    issuer_authenticated: bool = False
    reason: str = ""

    @property
    def approved(self) -> bool:
        return self.cid == CID_TC


def first_generate_ac(card: ChipCard, amount: int, kind: str, *, date: str, atc: int,
                      un: str | None = None, contactless: bool = False,
                      pin: bool = False) -> ChipRead:
    """The ARQC for a sale (9C 00, 9F02 = amount) or a balance inquiry (9C 31, 9F02 = 0)."""
    if not 0 < atc <= MAX_ATC:
        raise BadInput("the card's ATC is exhausted (65535): it cannot transact any more")
    tags = {
        "9F02": f"{amount:012d}", "9F03": "0" * 12, "9F1A": COUNTRY_CN, "95": "00" * 5,
        "5F2A": CURRENCY_CN, "9A": date, "9C": TRANSACTION_TYPES[kind],
        "9F37": un or secrets.token_hex(4).upper(), "82": AIP, "9F36": f"{atc:04X}",
        "9F10": IAD,
    }
    arqc = generate_ac(card.session_key(atc), arqc_data(tags)).hex().upper()
    ordered = {"9F26": arqc, "9F27": CID_ARQC, **tags, "84": card.aid,
               "9F33": TERMINAL_CAPABILITIES, "9F34": CVM_ONLINE_PIN if pin else CVM_NO_CVM,
               "9F35": TERMINAL_TYPE}
    return ChipRead(card, ordered, contactless, pin)


def _aac(read: ChipRead, reason: str, issuer_auth_failed: bool) -> SecondAc:
    tags = dict(read.tags)
    tags["9F10"] = _iad_after(tags["9F10"], CVR_AAC)
    if issuer_auth_failed:
        index, bit = TVR_ISSUER_AUTH_FAILED
        tvr = bytearray(bytes.fromhex(tags["95"]))
        tvr[index] |= bit
        tags["95"] = tvr.hex().upper()
    aac = generate_ac(read.card.session_key(read.atc), arqc_data(tags)).hex().upper()
    tags.update({"9F26": aac, "9F27": CID_AAC})
    return SecondAc(CID_AAC, aac, tags, False, reason)


def second_generate_ac(card: ChipCard, read: ChipRead, issuer_auth: str | None,
                       response_code: str) -> SecondAc:
    """The card checks the ARPC (method 1) in tag 91 and decides: TC when the host approved
    and the ARPC is right; AAC otherwise (TVR 'issuer authentication failed' when the host
    approved but the ARPC is missing or wrong)."""
    if response_code != APPROVED:
        return _aac(read, f"host declined ({response_code})", False)
    if card.behaviour == BEHAVIOUR_REJECT_ARPC:
        return _aac(read, "the card refuses the ARPC (lab behaviour reject-arpc)", True)
    if issuer_auth is None or len(issuer_auth) != 2 * ISSUER_AUTH_LENGTH:
        return _aac(read, "no issuer authentication data (tag 91)", True)
    raw = bytes.fromhex(issuer_auth)
    arpc, arc = raw[:8], raw[8:]
    session_key = card.session_key(read.atc)
    expected = generate_arpc_method_1(session_key, bytes.fromhex(read.tags["9F26"]), arc)
    if arpc != expected:
        return _aac(read, "ARPC does not verify", True)
    if arc != response_code.encode("ascii"):
        return _aac(read, f"ARC {arc!r} differs from the response code", True)
    tags = dict(read.tags)
    tags["9F10"] = _iad_after(tags["9F10"], CVR_TC)
    tc = generate_ac(session_key, arqc_data(tags) + arc).hex().upper()
    tags.update({"9F26": tc, "9F27": CID_TC})
    return SecondAc(CID_TC, tc, tags, True)


def _iad_after(iad: str, cvr: int) -> str:
    """The IAD with the CVR byte (index 3) of the second GENERATE AC."""
    raw = bytearray(bytes.fromhex(iad))
    if len(raw) > CVR_INDEX:
        raw[CVR_INDEX] = cvr
    return raw.hex().upper()


def request_f55(read: ChipRead) -> str:
    return encode_f55(read.tags)


def reversal_f55(second: SecondAc) -> str:
    """F55 of the 0400/06 after the card declined: AAC, CID 00, ATC, TVR, IAD."""
    return encode_f55({tag: second.tags[tag] for tag in REVERSAL_TAGS})


@dataclass(frozen=True)
class ChipCardRead(Card):
    """A card read by chip, as :mod:`terminal.core` builds requests from it: F2, F14, F23,
    F55 and F22 05x (contact) or 07x (contactless)."""

    psn: str = "01"
    f55: str | None = None
    contactless: bool = False

    @property
    def swiped(self) -> bool:
        return False

    def entry_mode(self, with_pin: bool) -> str:
        mode = ENTRY_CONTACTLESS if self.contactless else ENTRY_CONTACT
        return mode + (PIN_ENTERED if with_pin else NO_PIN)

    def fields(self) -> dict[str, str]:
        fields = {"2": self.pan, "14": self.expiry, "23": f"0{self.psn}"}
        if self.f55 is not None:
            fields["55"] = self.f55
        return fields


def card_read(read: ChipRead) -> ChipCardRead:
    return ChipCardRead(read.card.pan, read.card.expiry, None, read.card.psn,
                        request_f55(read), read.contactless)


def without_f55(card: ChipCardRead) -> ChipCardRead:
    """The chip card as a void or refund carries it: F23, no F55."""
    return replace(card, f55=None)


def f55_tags_of(doc: Mapping[str, str]) -> dict[str, str]:
    """A response's F55 tags; F55 that does not decode counts as none (the card then finds no
    issuer authentication data and declines a host approval, which is then reversed)."""
    try:
        return decode_f55(doc["55"]) if "55" in doc else {}
    except TlvError:
        return {}
