"""The sans-IO terminal: requests from terminal data, outcomes from response bytes.

Nothing here reads a clock, a socket or a file. Every message is built and checked through
:mod:`specs` (catalog, field 60/61/48 codecs, framing); the keys come from a :class:`PinPad`.

>>> next_stan("999999"), next_stan("000041")
('000001', '000042')
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from specs.catalog import KINDS, MessageKind, identify_request
from specs.codes import (
    APPROVED,
    CURRENCY_CNY,
    DOMESTIC_ORGANISATION,
    DUPLICATE,
    OPERATOR_CODE,
    REASON_MAC,
    REASON_NO_RESPONSE,  # noqa: F401 (core.REASON_NO_RESPONSE for the session)
    REASON_OTHER,
    SECURITY_CONTROL_ISO0_DOUBLE,
    SIGN_ON_CODES,
    is_foreign_organisation,
)
from specs.composite import (
    BALANCED,
    BATCH_CAPACITY,
    NOT_BALANCED,
    UPLOAD_RECORDS_PER_MESSAGE,
    Field61,
    SettlementTotals,
    Totals,
    UploadRecord,
    decode_field60,
    decode_settlement_totals,
    encode_field61,
    encode_settlement_totals,
    encode_upload_end,
    encode_upload_records,
)
from specs.emv import IC_APPLICATION_CATEGORY, is_chip_entry
from specs.errors import SpecError, ValidationError
from specs.fields import MAC_FIELD, MAC_LENGTH
from specs.framing import BODY_OFFSET, SIGN_ON_AGAIN, Frame, Header, Tpdu
from specs.messages import (
    Message,
    build_request,
    check_response,
    decode_message,
    encode_message,
    encode_with_mac,
    field60_for,
    mac_block,
    message_mac,
    response_needs_mac,
)
from terminal.cards import Card
from terminal.errors import BadInput
from terminal.pinpad import PinPad

MAX_STAN = 999999
_PLACEHOLDER_MAC = "00" * MAC_LENGTH


def next_stan(stan: str) -> str:
    """The STAN after ``stan``: up by one, 999999 wraps to 000001."""
    value = int(stan) + 1
    return f"{1 if value > MAX_STAN else value:06d}"


@dataclass(frozen=True)
class Profile:
    """Who the terminal is on the wire: TID, MID, NII and header."""

    tid: str
    mid: str
    nii: str = "0003"
    header: Header = field(default_factory=Header)

    @property
    def tpdu(self) -> Tpdu:
        return Tpdu(destination=self.nii, source="0000")

    def ids(self) -> dict[str, str]:
        return {"41": self.tid, "42": self.mid}


# --------------------------------------------------------------------------- requests


def management_request(kind_name: str, profile: Profile, stan: str, batch: str) -> Message:
    """Sign-on, sign-off or echo test (0800 / 0820)."""
    kind = KINDS[kind_name]
    fields = {"11": stan, **profile.ids(), "60": field60_for(kind, batch)}
    if kind_name == "sign_on":
        fields["63"] = OPERATOR_CODE
    return _build(kind, fields)


def _build(kind: MessageKind | str, fields: Mapping[str, str]) -> Message:
    kind = KINDS[kind] if isinstance(kind, str) else kind
    try:
        doc = build_request(kind, {**fields, MAC_FIELD: _PLACEHOLDER_MAC} if kind.mac else fields)
    except SpecError as exc:
        raise BadInput(f"cannot build {kind.title}: {exc}") from None
    doc.pop(MAC_FIELD, None)
    return doc


def card_fields(card: Card, pin_block: str | None) -> dict[str, str]:
    """Card data, entry mode and (with a PIN block) F26/F52/F53 of a financial request."""
    fields = {**card.fields(), "22": card.entry_mode(pin_block is not None)}
    if pin_block is not None:
        fields.update({"26": "06", "52": pin_block, "53": SECURITY_CONTROL_ISO0_DOUBLE})
    return fields


def financial_request(
    kind_name: str,
    profile: Profile,
    stan: str,
    batch: str,
    card: Card,
    *,
    amount: int | None = None,
    pin_block: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> Message:
    """A 0200/0220 of ``kind_name`` (sale, balance, void, refund), without F64."""
    kind = KINDS[kind_name]
    fields = {"11": stan, **profile.ids(), "49": CURRENCY_CNY, "60": field60_for(kind, batch)}
    fields.update(card_fields(card, pin_block))
    if amount is not None:
        fields["4"] = f"{amount:012d}"
    fields.update(extra or {})
    return _build(kind, fields)


def sale_request(profile: Profile, stan: str, batch: str, card: Card, amount: int,
                 pin_block: str | None) -> Message:
    return financial_request("sale", profile, stan, batch, card, amount=amount,
                             pin_block=pin_block)


def balance_request(profile: Profile, stan: str, batch: str, card: Card,
                    pin_block: str | None) -> Message:
    return financial_request("balance", profile, stan, batch, card, pin_block=pin_block)


@dataclass(frozen=True)
class Original:
    """What a void or refund refers to: the sale's batch, trace, RRN, auth code, date, amount."""

    batch: str
    trace: str
    rrn: str
    amount: int
    auth_code: str | None = None
    date: str = ""


def void_request(profile: Profile, stan: str, batch: str, card: Card, original: Original,
                 pin_block: str | None = None) -> Message:
    extra = {"37": original.rrn, "61": encode_field61(Field61(original.batch, original.trace))}
    if original.auth_code:
        extra["38"] = original.auth_code
    return financial_request("void", profile, stan, batch, card, amount=original.amount,
                             pin_block=pin_block, extra=extra)


def refund_request(profile: Profile, stan: str, batch: str, card: Card, original: Original,
                   amount: int) -> Message:
    if len(original.date) != 4 or not original.date.isdigit():
        raise BadInput("refund needs the original date MMDD")
    extra = {
        "37": original.rrn,
        "61": encode_field61(Field61(original.batch, original.trace, original.date)),
        "63": DOMESTIC_ORGANISATION,
    }
    return financial_request("refund", profile, stan, batch, card, amount=amount, extra=extra)


def reversal_request(original: Mapping[str, str], reason: str,
                     auth_code: str | None = None) -> Message:
    """The 0400 reversing ``original`` (its STAN and 60 kept; 26/35/52/53 dropped)."""
    kind = KINDS["reversal"]
    keep = (kind.request_mandatory | kind.request_optional) - {"39", "38", MAC_FIELD}
    fields = {k: v for k, v in original.items() if k in keep and k != "t"}
    fields["39"] = reason
    if auth_code and auth_code.strip():
        fields["38"] = auth_code
    return _build(kind, fields)


# --------------------------------------------------------------------------- encoding


def encode_body(doc: Mapping[str, str], pinpad: PinPad | None) -> bytes:
    """The ISO 8583 body (MTI onwards) of a request, MACed when its kind says so."""
    kind = identify_request(doc)
    if kind.mac:
        if pinpad is None:
            raise BadInput("a MACed message needs the PIN pad")
        return encode_with_mac({**doc, MAC_FIELD: _PLACEHOLDER_MAC}, pinpad.mac)
    return encode_message(doc)


def encode_request(profile: Profile, doc: Mapping[str, str], pinpad: PinPad | None) -> bytes:
    """The frame payload (TPDU + header + body) of a request, MACed when its kind says so."""
    return frame_payload(profile, encode_body(doc, pinpad), is_chip_entry(doc.get("22", "")))


def frame_payload(profile: Profile, body: bytes, chip: bool = False) -> bytes:
    """TPDU + header of ``profile`` before an already encoded body; a chip read travels as
    application category 61 (section 8)."""
    header = profile.header
    if chip:
        header = replace(header, application=IC_APPLICATION_CATEGORY)
    return Frame(profile.tpdu, header, body).payload()


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class Outcome:
    """What a response means for the request it answers.

    ``reversal_reason`` is set when the response cannot be believed (A0 bad MAC, 06
    undecodable or not answering the request); ``code`` is F39 when one could be read.
    """

    request: Message
    response: Message | None
    code: str | None
    reversal_reason: str | None = None
    problem: str = ""
    sign_on_again: bool = False
    malfunction: bool = False
    """A 96 without F64: the host cannot reach its HSM (protocol.md section 4)."""

    @property
    def believed(self) -> bool:
        return self.reversal_reason is None and self.code is not None

    @property
    def approved(self) -> bool:
        return self.believed and self.code == APPROVED

    @property
    def accepted(self) -> bool:
        """Approved, or an advice answered 94 (counts as accepted, protocol.md section 6)."""
        kind = identify_request(self.request)
        return self.approved or (self.believed and kind.advice and self.code == DUPLICATE)

    def get(self, key: str) -> str | None:
        value = (self.response or {}).get(key)
        return value.strip() if value is not None else None


SYSTEM_MALFUNCTION = "96"
HOST_MALFUNCTION = ("host malfunction: the host answered 96 without a MAC (it cannot reach its"
                    " HSM); nothing in that answer is believed")


def evaluate(request: Mapping[str, str], payload: bytes, pinpad: PinPad | None) -> Outcome:
    """Check a response payload against its request: framing, decoding, MTI + 10, echoed
    3/4/11/41/42/60, approval fields, MAC. Never raises for bad bytes: the outcome says."""
    req = dict(request)
    try:
        frame = Frame.parse(payload)
        response = decode_message(frame.body, offset=BODY_OFFSET)
    except SpecError as exc:
        return Outcome(req, None, None, REASON_OTHER, f"undecodable response: {exc}")
    code = response.get("39")
    again = frame.header.processing_requirement == SIGN_ON_AGAIN or code in SIGN_ON_CODES
    try:
        kind = check_response(req, response)
    except ValidationError as exc:
        reason = REASON_MAC if exc.field == MAC_FIELD else REASON_OTHER
        if exc.field == MAC_FIELD and code == SYSTEM_MALFUNCTION:
            return Outcome(req, response, code, reason, HOST_MALFUNCTION, again,
                           malfunction=True)
        return Outcome(req, response, code, reason, f"response rejected: {exc}", again)
    body = frame.body
    if response_needs_mac(kind, code or "") and (
        pinpad is None or not pinpad.verify_mac(mac_block(body), message_mac(body))
    ):
        return Outcome(req, response, code, REASON_MAC, "response MAC does not verify", again)
    return Outcome(req, response, code, None, "", again)


def signon_batch(response: Mapping[str, str]) -> str:
    """60.2 of a sign-on response: the batch the terminal must use."""
    return decode_field60(response["60"]).batch


# --------------------------------------------------------------------------- settlement


@dataclass(frozen=True)
class BatchEntry:
    """One journal line as settlement sees it."""

    kind: str  # "sale" or "refund"
    trace: str
    pan: str
    amount: int
    domestic: bool = True


def is_domestic(organisation: str | None) -> bool:
    """A card is foreign when the response's F63 names an organisation other than CUP."""
    return not is_foreign_organisation(organisation or "")


def _totals(entries: list[BatchEntry]) -> Totals:
    sales = [e.amount for e in entries if e.kind == "sale"]
    refunds = [e.amount for e in entries if e.kind == "refund"]
    return Totals(sum(sales), len(sales), sum(refunds), len(refunds), 0)


def batch_totals(entries: Iterable[BatchEntry]) -> SettlementTotals:
    """Debit = sales still standing, credit = accepted refunds; domestic and foreign apart."""
    entries = list(entries)
    return SettlementTotals(_totals([e for e in entries if e.domestic]),
                            _totals([e for e in entries if not e.domestic]))


def batch_full(entries: Iterable[BatchEntry]) -> bool:
    """True when the batch holds BATCH_CAPACITY transactions: settle before the next one."""
    return sum(1 for _ in entries) >= BATCH_CAPACITY


def settlement_request(profile: Profile, stan: str, batch: str,
                       totals: SettlementTotals) -> Message:
    try:
        f48 = encode_settlement_totals(totals)
    except SpecError as exc:  # e.g. more than 999 sales: F48 counts are n3
        raise BadInput(f"cannot build settlement: {exc}") from None
    fields = {"11": stan, **profile.ids(), "48": f48,
              "49": CURRENCY_CNY, "60": field60_for(KINDS["settlement"], batch),
              "63": OPERATOR_CODE}
    return _build("settlement", fields)


def settlement_result(response: Mapping[str, str]) -> int:
    """1 balanced, 2 not balanced, 3 error: the worst of the domestic and foreign results."""
    totals = decode_settlement_totals(response["48"])
    results = {totals.domestic.result, totals.foreign.result}
    if NOT_BALANCED in results:
        return NOT_BALANCED
    if results <= {BALANCED, 0} and BALANCED in results:
        return BALANCED
    return max(results)


def upload_chunks(entries: list[BatchEntry]) -> Iterator[list[UploadRecord]]:
    """Upload records, at most 8 to a 0320."""
    records = [UploadRecord(e.trace, e.pan, e.amount) for e in entries]
    for i in range(0, len(records), UPLOAD_RECORDS_PER_MESSAGE):
        yield records[i : i + UPLOAD_RECORDS_PER_MESSAGE]


def upload_request(profile: Profile, stan: str, batch: str,
                   records: list[UploadRecord]) -> Message:
    fields = {"11": stan, **profile.ids(), "48": encode_upload_records(records),
              "60": field60_for(KINDS["batch_upload"], batch)}
    return _build("batch_upload", fields)


def upload_end_request(profile: Profile, stan: str, batch: str, total: int) -> Message:
    fields = {"11": stan, **profile.ids(), "48": encode_upload_end(total),
              "60": field60_for(KINDS["batch_upload_end"], batch)}
    return _build("batch_upload_end", fields)
