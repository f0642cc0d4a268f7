"""Terminal-side wire helpers on top of :mod:`specs`: keys, requests, framed exchange.

Deliberately independent of ``terminal/``: the harness must judge the host with its own
reading of the contract. Requests are built and checked by :mod:`specs` (catalog, codecs,
framing); keys and MACs use :mod:`hsm_sim.crypto`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import trio

from benchlib.limits import RECEIVE_SIZE
from hsm_sim.crypto import (
    encode_pinblock_iso_0,
    encrypt_tdes_ecb,
    generate_mac_x919,
    unwrap_key_tmk,
)
from specs.catalog import KINDS
from specs.composite import (
    Field61,
    SettlementTotals,
    UploadRecord,
    decode_field60,
    decode_key_data,
    encode_field61,
    encode_settlement_totals,
    encode_upload_end,
    encode_upload_records,
)
from specs.errors import SpecError
from specs.fields import MAC_FIELD, MAC_LENGTH
from specs.framing import (
    BODY_OFFSET,
    Frame,
    Header,
    TcpFrameDecoder,
    Tpdu,
    encode_frame_tcp,
)
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

CURRENCY = "156"
SECURITY_CONTROL = "2600000000000000"
OPERATOR = "01 "
MAX_STAN = 999_999
TPDU = Tpdu("0003", "0000")
HEADER = Header()
_PLACEHOLDER_MAC = "00" * MAC_LENGTH


def next_stan(stan: int) -> int:
    """STAN after ``stan`` (999999 wraps to 1)."""
    return 1 if stan >= MAX_STAN else stan + 1


def luhn_digit(body: str) -> str:
    """Check digit that makes ``body + digit`` pass the Luhn test.

    >>> luhn_digit("622202123456789012")
    '8'
    """
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str(-total % 10)


def make_pan(prefix: str, serial: int, length: int = 19) -> str:
    body = prefix + f"{serial:0{length - len(prefix) - 1}d}"
    return body + luhn_digit(body)


@dataclass
class Keys:
    """A terminal's TMK and working keys (clear, in memory: the harness is a lab PIN pad)."""

    tmk: bytes
    pik: bytes | None = None
    mak: bytes | None = None

    def install(self, f62: str) -> None:
        data = decode_key_data(f62)
        self.pik = unwrap_key_tmk(self.tmk, data.pik, data.pik_cv)
        self.mak = unwrap_key_tmk(self.tmk, data.mak, data.mak_cv)

    def pin_block(self, pin: str, pan: str) -> str:
        assert self.pik is not None
        return encrypt_tdes_ecb(self.pik, encode_pinblock_iso_0(pin, pan)).hex().upper()

    def mac(self, block: bytes) -> bytes:
        assert self.mak is not None
        return generate_mac_x919(self.mak, block)

    def verify(self, body: bytes) -> bool:
        return self.mak is not None and hmac.compare_digest(
            generate_mac_x919(self.mak, mac_block(body)), message_mac(body))


def management(kind: str, tid: str, mid: str, stan: int, batch: str) -> Message:
    fields = {"11": f"{stan:06d}", "41": tid, "42": mid, "60": field60_for(KINDS[kind], batch)}
    if kind == "sign_on":
        fields["63"] = OPERATOR
    return build_request(kind, fields)


def _mac_build(kind: str, fields: dict[str, str]) -> Message:
    doc = build_request(kind, {**fields, MAC_FIELD: _PLACEHOLDER_MAC})
    del doc[MAC_FIELD]
    return doc


def card_fields(pan: str, expiry: str, keys: Keys, pin: str | None) -> dict[str, str]:
    """Manual entry (PAN + expiry), with a PIN block when ``pin`` is given."""
    fields = {"2": pan, "14": expiry, "22": "011" if pin else "012"}
    if pin:
        fields.update({"26": "06", "52": keys.pin_block(pin, pan), "53": SECURITY_CONTROL})
    return fields


def sale(tid: str, mid: str, stan: int, batch: str, card: dict[str, str], amount: int) -> Message:
    return _mac_build("sale", {"11": f"{stan:06d}", "41": tid, "42": mid, "49": CURRENCY,
                               "60": field60_for(KINDS["sale"], batch), "4": f"{amount:012d}",
                               **card})


def void(tid: str, mid: str, stan: int, batch: str, card: dict[str, str], amount: int,
         rrn: str, auth: str, orig_batch: str, orig_stan: str) -> Message:
    return _mac_build("void", {"11": f"{stan:06d}", "41": tid, "42": mid, "49": CURRENCY,
                               "60": field60_for(KINDS["void"], batch), "4": f"{amount:012d}",
                               "37": rrn, "38": auth,
                               "61": encode_field61(Field61(orig_batch, orig_stan)), **card})


def refund(tid: str, mid: str, stan: int, batch: str, card: dict[str, str], amount: int,
           rrn: str, orig_batch: str, orig_stan: str, orig_date: str) -> Message:
    card = {k: v for k, v in card.items() if k not in ("26", "52", "53")}
    card["22"] = card["22"][:2] + "2"
    return _mac_build("refund", {"11": f"{stan:06d}", "41": tid, "42": mid, "49": CURRENCY,
                                 "60": field60_for(KINDS["refund"], batch),
                                 "4": f"{amount:012d}", "37": rrn, "63": "CUP",
                                 "61": encode_field61(Field61(orig_batch, orig_stan, orig_date)),
                                 **card})


def reversal(original: Message, reason: str, auth: str | None = None) -> Message:
    """The 0400 of ``original`` (same STAN and 60; 26/35/52/53 dropped)."""
    kind = KINDS["reversal"]
    keep = (kind.request_mandatory | kind.request_optional) - {"39", "38", MAC_FIELD}
    fields = {k: v for k, v in original.items() if k in keep}
    fields["39"] = reason
    if auth and auth.strip():
        fields["38"] = auth
    return _mac_build("reversal", fields)


def settlement(tid: str, mid: str, stan: int, batch: str, totals: SettlementTotals) -> Message:
    return build_request("settlement", {
        "11": f"{stan:06d}", "41": tid, "42": mid, "48": encode_settlement_totals(totals),
        "49": CURRENCY, "60": field60_for(KINDS["settlement"], batch), "63": OPERATOR})


def upload(tid: str, mid: str, stan: int, batch: str, records: list[UploadRecord]) -> Message:
    return build_request("batch_upload", {
        "11": f"{stan:06d}", "41": tid, "42": mid, "48": encode_upload_records(records),
        "60": field60_for(KINDS["batch_upload"], batch)})


def upload_end(tid: str, mid: str, stan: int, batch: str, total: int) -> Message:
    return build_request("batch_upload_end", {
        "11": f"{stan:06d}", "41": tid, "42": mid, "48": encode_upload_end(total),
        "60": field60_for(KINDS["batch_upload_end"], batch)})


def encode_request(doc: Message, keys: Keys | None) -> bytes:
    """Length-prefixed frame of a request; MACed when its kind carries a MAC."""
    if keys is not None and KINDS_WITH_MAC.get(doc["t"], False):
        body = encode_with_mac({**doc, MAC_FIELD: _PLACEHOLDER_MAC}, keys.mac)
    else:
        body = encode_message(doc)
    return encode_frame_tcp(Frame(TPDU, HEADER, body).payload())


KINDS_WITH_MAC = {"0200": True, "0220": True, "0400": True}


class BadResponse(Exception):
    """A response that cannot be believed: ``reason`` is the reversal reason (A0 or 06)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_response(request: Message, payload: bytes, keys: Keys | None) -> Message:
    """Decode and check a response payload; raise :class:`BadResponse` when not believable."""
    try:
        frame = Frame.parse(payload)
        response = decode_message(frame.body, offset=BODY_OFFSET)
    except SpecError as exc:
        raise BadResponse(f"undecodable response: {exc}", "06") from None
    try:
        kind = check_response(request, response)
    except SpecError as exc:
        raise BadResponse(f"response rejected: {exc}", "06") from None
    if response_needs_mac(kind, response.get("39", "")) and (
            keys is None or not keys.verify(frame.body)):
        raise BadResponse("response MAC does not verify", "A0")
    return response


def batch_of(sign_on_response: Message) -> str:
    return decode_field60(sign_on_response["60"]).batch


class Connection:
    """One TCP connection carrying one request at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = TcpFrameDecoder()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        stream = await trio.open_tcp_stream(host, port)
        return cls(stream)

    async def exchange(self, frame: bytes) -> bytes:
        """Send one frame, return the next payload. Raises OSError/trio errors on loss."""
        await self.stream.send_all(frame)
        while (payload := self.decoder.next_payload()) is None:
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise trio.BrokenResourceError("peer closed the connection")
            self.decoder.feed(data)
        return payload

    async def aclose(self) -> None:
        with trio.move_on_after(1):
            await self.stream.aclose()
