"""Codecs for the composite fields 48, 54, 60, 61 and 62 (protocol.md sections 2 and 3).

Values are the decoded field strings the message layer uses (digits for n fields, upper-case
hex for b fields).

>>> decode_field60("22000001000")
Field60(type_code='22', batch='000001', network_code='000', extra='')
>>> encode_field61(Field61("000001", "000123", "1123"))
'0000010001231123'
"""

from __future__ import annotations

from dataclasses import dataclass

from specs.errors import ValidationError

UPLOAD_RECORDS_PER_MESSAGE = 8
"""Batch-upload records one 0320 carries at the most."""
UPLOAD_RECORD_DIGITS = 40
TOTALS_DIGITS = 62
BATCH_CAPACITY = 999
"""Transactions one batch may hold: F48 counts each kind of total in 3 digits, so a terminal
settles (a real one says "batch full, please settle") before its batch reaches this."""
KEY_DATA_BYTES = 40


def _digits(value: str, field: str, what: str) -> None:
    if not value.isdigit():
        raise ValidationError(f"{what} must be digits", field=field)


@dataclass(frozen=True)
class Field60:
    """60.1 message type code, 60.2 batch number, 60.3 network management code, 60.4+ as is."""

    type_code: str
    batch: str
    network_code: str = "000"
    extra: str = ""


def encode_field60(f: Field60) -> str:
    return f.type_code + f.batch + f.network_code + f.extra


def decode_field60(value: str) -> Field60:
    if len(value) < 8:
        raise ValidationError("60 needs 60.1 and 60.2", field="60")
    _digits(value, "60", "field 60")
    return Field60(value[0:2], value[2:8], value[8:11] or "000", value[11:])


@dataclass(frozen=True)
class Field61:
    """Original data: 61.1 batch, 61.2 trace, 61.3 date MMDD (refunds)."""

    batch: str
    trace: str
    date: str = ""


def encode_field61(f: Field61) -> str:
    return f.batch + f.trace + f.date


def decode_field61(value: str) -> Field61:
    if len(value) < 12:
        raise ValidationError("61 needs original batch and trace", field="61")
    _digits(value, "61", "field 61")
    return Field61(value[0:6], value[6:12], value[12:16])


@dataclass(frozen=True)
class Totals:
    """One half of F48 settlement totals (domestic or foreign); amounts in minor units."""

    debit_amount: int = 0
    debit_count: int = 0
    credit_amount: int = 0
    credit_count: int = 0
    result: int = 0


BALANCED, NOT_BALANCED, SETTLEMENT_ERROR = 1, 2, 3


@dataclass(frozen=True)
class SettlementTotals:
    domestic: Totals
    foreign: Totals

    def same_amounts(self, other: SettlementTotals) -> bool:
        """True when both sides' amounts and counts agree (result codes ignored)."""
        return all(
            (a.debit_amount, a.debit_count, a.credit_amount, a.credit_count)
            == (b.debit_amount, b.debit_count, b.credit_amount, b.credit_count)
            for a, b in ((self.domestic, other.domestic), (self.foreign, other.foreign))
        )


def _encode_totals(t: Totals) -> str:
    debit = f"{t.debit_amount:012d}{t.debit_count:03d}"
    credit = f"{t.credit_amount:012d}{t.credit_count:03d}"
    return f"{debit}{credit}{t.result:01d}"


def _decode_totals(v: str) -> Totals:
    return Totals(int(v[0:12]), int(v[12:15]), int(v[15:27]), int(v[27:30]), int(v[30]))


def encode_settlement_totals(t: SettlementTotals) -> str:
    """F48 of 0500/0510: 62 digits, the result codes at index 30 and 61.

    >>> encode_settlement_totals(SettlementTotals(Totals(12345, 1, 0, 0, 1), Totals()))[:31]
    '0000000123450010000000000000001'
    """
    out = _encode_totals(t.domestic) + _encode_totals(t.foreign)
    if len(out) != TOTALS_DIGITS:
        raise ValidationError("settlement totals overflow their digits", field="48")
    return out


def decode_settlement_totals(value: str) -> SettlementTotals:
    if len(value) != TOTALS_DIGITS:
        raise ValidationError(f"48 must be {TOTALS_DIGITS} digits of totals", field="48")
    _digits(value, "48", "settlement totals")
    return SettlementTotals(_decode_totals(value[:31]), _decode_totals(value[31:]))


@dataclass(frozen=True)
class UploadRecord:
    """One batch-upload record: organisation flag, trace, PAN, amount (minor units)."""

    trace: str
    pan: str
    amount: int
    organisation: str = "00"


def encode_upload_records(records: list[UploadRecord]) -> str:
    """F48 of 0320/201: record count n2, then 40 digits a record.

    >>> encode_upload_records([UploadRecord("000002", "6222021234567890128", 12345)])
    '010000000206222021234567890128000000012345'
    """
    if not 1 <= len(records) <= UPLOAD_RECORDS_PER_MESSAGE:
        raise ValidationError(
            f"an upload message carries 1 to {UPLOAD_RECORDS_PER_MESSAGE} records", field="48"
        )
    body = "".join(
        f"{r.organisation}{r.trace}{r.pan:0>20}{r.amount:012d}" for r in records
    )
    return f"{len(records):02d}{body}"


def decode_upload_records(value: str) -> list[UploadRecord]:
    _digits(value, "48", "batch upload records")
    count = int(value[:2]) if len(value) >= 2 else -1
    if not 1 <= count <= UPLOAD_RECORDS_PER_MESSAGE or len(value) != 2 + count * 40:
        raise ValidationError("48 record count does not match its records", field="48")
    records = []
    for i in range(count):
        r = value[2 + i * 40 : 2 + (i + 1) * 40]
        records.append(UploadRecord(r[2:8], r[8:28].lstrip("0"), int(r[28:40]), r[0:2]))
    return records


def encode_upload_end(total_records: int) -> str:
    return f"{total_records:04d}"


def decode_upload_end(value: str) -> int:
    if len(value) != 4 or not value.isdigit():
        raise ValidationError("48 of an upload end is the record total n4", field="48")
    return int(value)


@dataclass(frozen=True)
class KeyData:
    """F62 of a sign-on response: PIK and MAK under the TMK, each with a 4-byte check value."""

    pik: bytes
    pik_cv: bytes
    mak: bytes
    mak_cv: bytes


def encode_key_data(k: KeyData) -> str:
    raw = k.pik + k.pik_cv + k.mak + k.mak_cv
    if len(raw) != KEY_DATA_BYTES:
        raise ValidationError("key data must be 16+4+16+4 bytes", field="62")
    return raw.hex().upper()


def decode_key_data(value: str) -> KeyData:
    raw = bytes.fromhex(value)
    if len(raw) != KEY_DATA_BYTES:
        raise ValidationError(f"62 must be {KEY_DATA_BYTES} bytes of key data", field="62")
    return KeyData(raw[0:16], raw[16:20], raw[20:36], raw[36:40])


def encode_balance(amount: int, currency: str = "156") -> str:
    """F54: account type 10, amount type 02 (available), currency, C/D, then n12.

    >>> encode_balance(-500)
    '1002156D000000000500'
    """
    sign = "C" if amount >= 0 else "D"
    return f"1002{currency}{sign}{abs(amount):012d}"


def decode_balance(value: str) -> int:
    if len(value) != 20 or value[7] not in "CD" or not value[8:].isdigit():
        raise ValidationError("54 must be 8 characters then n12", field="54")
    amount = int(value[8:])
    return amount if value[7] == "C" else -amount
