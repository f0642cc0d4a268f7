"""A test terminal for the host's tests, built only on specs/ and hsm_sim.crypto: signs on
(unwrapping F62 with the TMK and checking the check values), builds requests with PIN blocks
and MACs, and checks every response (echoes, MAC) like a real terminal would."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import trio

from hsm_sim.crypto import (
    encode_pinblock_iso_0,
    encrypt_tdes_ecb,
    generate_mac_cup_ecb,
    generate_mac_x919,
    unwrap_key_tmk,
)
from specs.catalog import KINDS, identify_request
from specs.codes import (
    CURRENCY_CNY,
    DOMESTIC_ORGANISATION,
    OPERATOR_CODE,
    SECURITY_CONTROL_ISO0_DOUBLE,
)
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
from specs.fields import MAC_FIELD
from specs.framing import Frame, Header, Tpdu, encode_frame_tcp
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

SECURITY_CONTROL = SECURITY_CONTROL_ISO0_DOUBLE
ANSWER_TIMEOUT = 10.0


@dataclass(frozen=True)
class TestCard:
    pan: str
    expiry: str
    pin: str
    track2: str
    balance_minor: int

    __test__ = False


def track2_of(pan: str, expiry: str) -> str:
    return f"{pan}D{expiry}1010000000000"


async def read_frame(stream: trio.SocketStream) -> bytes | None:
    """One TCP frame payload, or None when the peer closed."""
    buf = b""
    while len(buf) < 2:
        chunk = await stream.receive_some(2 - len(buf))
        if not chunk:
            return None
        buf += chunk
    length = int.from_bytes(buf, "big")
    data = b""
    while len(data) < length:
        chunk = await stream.receive_some(length - len(data))
        if not chunk:
            return None
        data += chunk
    return data


@dataclass
class Answer:
    """A decoded, checked response and its frame."""

    doc: Message
    frame: Frame
    request: Message

    @property
    def code(self) -> str:
        return self.doc["39"]

    def __getitem__(self, key: str) -> str:
        return self.doc[key]


@dataclass
class TestTerminal:
    host: str
    port: int
    tid: str
    mid: str
    tmk: str
    mac: str = "x919"
    stan: int = 0
    batch: str = "000000"
    pik: bytes | None = None
    mak: bytes | None = None
    stream: trio.SocketStream | None = None
    sent: list[Message] = field(default_factory=list)

    __test__ = False

    async def __aenter__(self) -> TestTerminal:
        self.stream = await trio.open_tcp_stream(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None

    async def reconnect(self) -> None:
        await self.__aexit__()
        await self.__aenter__()

    def next_stan(self) -> str:
        self.stan = self.stan % 999_999 + 1
        return f"{self.stan:06d}"

    # ------------------------------------------------------------------ transport

    async def send_payload(self, payload: bytes) -> bytes | None:
        assert self.stream is not None
        await self.stream.send_all(encode_frame_tcp(payload))
        with trio.fail_after(ANSWER_TIMEOUT):
            return await read_frame(self.stream)

    def _mac(self, block: bytes) -> bytes:
        assert self.mak is not None
        if self.mac == "cup-ecb":
            return generate_mac_cup_ecb(self.mak, block)
        return generate_mac_x919(self.mak, block)

    def encode(self, doc: Mapping[str, str]) -> bytes:
        kind = identify_request(doc)
        if kind.mac and self.mak is not None:
            return encode_with_mac(doc, self._mac)
        return encode_message(doc)

    async def exchange(self, doc: Message, *, body: bytes | None = None) -> Answer:
        """Send a request; decode and check the answer like a terminal."""
        self.sent.append(doc)
        payload = Frame(Tpdu(), Header(), body or self.encode(doc)).payload()
        raw = await self.send_payload(payload)
        assert raw is not None, "host closed the connection"
        frame = Frame.parse(raw)
        assert frame.tpdu == Tpdu().swapped()
        response = decode_message(frame.body)
        kind = check_response(doc, response)
        if response_needs_mac(kind, response["39"]):
            assert self.mak is not None
            assert message_mac(frame.body) == self._mac(mac_block(frame.body)), "bad MAC"
        else:
            assert MAC_FIELD not in response
        return Answer(response, frame, doc)

    # ------------------------------------------------------------------ messages

    def _ids(self) -> dict[str, str]:
        return {"11": self.next_stan(), "41": self.tid, "42": self.mid}

    async def sign_on(self) -> Answer:
        doc = build_request("sign_on", {**self._ids(),
                                        "60": field60_for(KINDS["sign_on"], self.batch),
                                        "63": OPERATOR_CODE})
        answer = await self.exchange(doc)
        if answer.code == "00":
            keys = decode_key_data(answer["62"])
            tmk = bytes.fromhex(self.tmk)
            self.pik = unwrap_key_tmk(tmk, keys.pik, keys.pik_cv)
            self.mak = unwrap_key_tmk(tmk, keys.mak, keys.mak_cv)
            self.batch = decode_field60(answer["60"]).batch
        return answer

    async def echo(self) -> Answer:
        return await self.exchange(build_request(
            "echo_test", {**self._ids(), "60": field60_for(KINDS["echo_test"], self.batch)}))

    async def sign_off(self) -> Answer:
        return await self.exchange(build_request(
            "sign_off", {**self._ids(), "60": field60_for(KINDS["sign_off"], self.batch)}))

    def card_fields(self, card: TestCard, pin: str | None, manual: bool = False) -> dict:
        fields: dict[str, str] = {}
        if manual:
            fields.update({"2": card.pan, "14": card.expiry})
            entry = "01"
        else:
            fields["35"] = card.track2
            entry = "02"
        if pin is not None:
            assert self.pik is not None
            block = encrypt_tdes_ecb(self.pik, encode_pinblock_iso_0(pin, card.pan))
            fields.update({"26": "06", "52": block.hex().upper(), "53": SECURITY_CONTROL})
            fields["22"] = entry + "1"
        else:
            fields["22"] = entry + "2"
        return fields

    def financial(self, kind: str, card: TestCard, amount: int | None, pin: str | None,
                  extra: Mapping[str, str] | None = None, manual: bool = False) -> Message:
        fields = {**self._ids(), **self.card_fields(card, pin, manual), "49": CURRENCY_CNY,
                  "60": field60_for(KINDS[kind], self.batch), "64": "00" * 8}
        if amount is not None:
            fields["4"] = f"{amount:012d}"
        fields.update(extra or {})
        return build_request(kind, fields)

    async def sale(self, card: TestCard, amount: int, pin: str | None = "same",
                   manual: bool = False) -> Answer:
        pin = card.pin if pin == "same" else pin
        return await self.exchange(self.financial("sale", card, amount, pin, manual=manual))

    async def balance(self, card: TestCard, pin: str | None = "same") -> Answer:
        pin = card.pin if pin == "same" else pin
        return await self.exchange(self.financial("balance", card, None, pin))

    async def void(self, card: TestCard, sale: Answer, amount: int | None = None) -> Answer:
        batch, trace = decode_field60(sale.request["60"]).batch, sale.request["11"]
        extra = {"37": sale["37"], "61": encode_field61(Field61(batch, trace))}
        if "38" in sale.doc:
            extra["38"] = sale["38"]
        amount = int(sale.request["4"]) if amount is None else amount
        return await self.exchange(self.financial("void", card, amount, None, extra))

    async def refund(self, card: TestCard, sale: Answer, amount: int) -> Answer:
        batch, trace = decode_field60(sale.request["60"]).batch, sale.request["11"]
        extra = {"37": sale["37"], "63": DOMESTIC_ORGANISATION,
                 "61": encode_field61(Field61(batch, trace, sale["13"]))}
        return await self.exchange(self.financial("refund", card, amount, None, extra))

    def reversal_of(self, original: Mapping[str, str], reason: str = "98",
                    auth_code: str | None = None) -> Message:
        # protocol.md section 3: the original's fields; 35 is dropped, so a swiped sale's
        # reversal carries no PAN and the host must find the card from its own record.
        keep = ("2", "3", "4", "11", "14", "22", "25", "41", "42", "49", "60", "61")
        fields = {k: v for k, v in original.items() if k in keep}
        fields.update({"39": reason, "64": "00" * 8})
        if auth_code:
            fields["38"] = auth_code
        doc: Message = {"t": "0400", **fields}
        return doc

    async def reverse(self, original: Mapping[str, str], reason: str = "98") -> Answer:
        return await self.exchange(self.reversal_of(original, reason))

    async def settle(self, totals: SettlementTotals) -> Answer:
        return await self.exchange(build_request("settlement", {
            **self._ids(), "48": encode_settlement_totals(totals), "49": CURRENCY_CNY,
            "60": field60_for(KINDS["settlement"], self.batch), "63": OPERATOR_CODE}))

    async def upload(self, records: list[UploadRecord]) -> Answer:
        return await self.exchange(build_request("batch_upload", {
            **self._ids(), "48": encode_upload_records(records),
            "60": field60_for(KINDS["batch_upload"], self.batch)}))

    async def upload_end(self, total: int) -> Answer:
        return await self.exchange(build_request("batch_upload_end", {
            **self._ids(), "48": encode_upload_end(total),
            "60": field60_for(KINDS["batch_upload_end"], self.batch)}))
