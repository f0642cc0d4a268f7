"""A test terminal for the host's tests: a thin wrapper over posterm's own terminal side.

Requests are built, MACed and checked by :mod:`terminal.core` and the keys live in a
:class:`terminal.pinpad.PinPad`, so the tests drive the code posterm runs. What the kit adds
are the knobs a test needs and a real terminal never offers: raw bodies
(``exchange(doc, body=...)``, ``send_payload``), wrong or missing MACs (set ``mak`` by hand, or
send before signing on: a MACed request then goes out with an all-zero F64), manual entry
(``manual=True``), copying keys between kit terminals, and assertions instead of reversals.
The independent check of the contract is the hand-written frame bytes of the specs tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import trio

from specs.catalog import identify_request
from specs.codes import APPROVED, SECURITY_CONTROL_ISO0_DOUBLE
from specs.composite import SettlementTotals, UploadRecord, decode_field60
from specs.fields import MAC_FIELD, MAC_LENGTH
from specs.framing import Frame, TcpFrameDecoder
from specs.messages import Message, encode_message, response_needs_mac
from terminal import core
from terminal.cards import Card
from terminal.errors import NoResponse
from terminal.pinpad import PinPad
from terminal.transport import TcpTransport, receive_payload

SECURITY_CONTROL = SECURITY_CONTROL_ISO0_DOUBLE
ANSWER_TIMEOUT = 10.0
ZERO_MAC = "00" * MAC_LENGTH


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


async def read_frame(stream: trio.abc.ReceiveStream) -> bytes | None:
    """One TCP frame payload, or None when the peer closed."""
    return await receive_payload(stream, TcpFrameDecoder())


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
    sent: list[Message] = field(default_factory=list)

    __test__ = False

    def __post_init__(self) -> None:
        self.transport: TcpTransport | None = None

    @property
    def stream(self) -> trio.SocketStream | None:
        """The open connection, for tests that write raw bytes to it."""
        return getattr(self.transport, "stream", None)

    async def __aenter__(self) -> TestTerminal:
        await self.connect()
        return self

    async def connect(self, local_address: str | None = None) -> None:
        """Open the line, from ``local_address`` when given (tests of peer allow-lists)."""
        self.transport = TcpTransport(self.host, self.port, local_address=local_address)
        await self.transport.connect()

    async def __aexit__(self, *exc: object) -> None:
        if self.transport is not None:
            transport, self.transport = self.transport, None
            await transport.aclose()

    async def reconnect(self) -> None:
        await self.__aexit__()
        await self.__aenter__()

    def next_stan(self) -> str:
        self.stan = self.stan % core.MAX_STAN + 1
        return f"{self.stan:06d}"

    @property
    def profile(self) -> core.Profile:
        return core.Profile(self.tid, self.mid)

    def pinpad(self) -> PinPad:
        """posterm's PIN pad holding this kit terminal's current keys (set by hand or not)."""
        return PinPad(bytes.fromhex(self.tmk), self.mac, self.pik, self.mak)

    def _mac(self, block: bytes) -> bytes:
        """F64 over a MAC block under the current MAK (kept for tests that MAC by hand)."""
        return self.pinpad().mac(block)

    # ------------------------------------------------------------------ transport

    async def send_payload(self, payload: bytes) -> bytes | None:
        """The answer to one payload; None when the host closed the connection instead."""
        assert self.transport is not None and self.transport.stream is not None
        try:
            with trio.fail_after(ANSWER_TIMEOUT):
                return await self.transport.send_receive(payload)
        except NoResponse:
            return None

    def encode(self, doc: Mapping[str, str]) -> bytes:
        """The body of ``doc``; a MACed kind without a MAC key goes out with an all-zero F64."""
        if identify_request(doc).mac and self.mak is None:
            return encode_message({**doc, MAC_FIELD: ZERO_MAC})
        return core.encode_body(doc, self.pinpad() if self.mak is not None else None)

    async def exchange(self, doc: Message, *, body: bytes | None = None) -> Answer:
        """Send a request; decode and check the answer like a terminal (asserting)."""
        self.sent.append(doc)
        profile = self.profile
        raw = await self.send_payload(core.frame_payload(
            profile, body or self.encode(doc), core.is_chip_entry(doc.get("22", ""))))
        assert raw is not None, "host closed the connection"
        frame = Frame.parse(raw)
        assert frame.tpdu == profile.tpdu.swapped()
        outcome = core.evaluate(doc, raw, self.pinpad() if self.mak is not None else None)
        assert outcome.reversal_reason is None and outcome.response is not None, outcome.problem
        response = outcome.response
        if not response_needs_mac(identify_request(doc), response["39"]):
            assert MAC_FIELD not in response
        return Answer(response, frame, doc)

    # ------------------------------------------------------------------ messages

    async def sign_on(self) -> Answer:
        answer = await self.exchange(core.management_request(
            "sign_on", self.profile, self.next_stan(), self.batch))
        if answer.code == APPROVED:
            pad = PinPad(bytes.fromhex(self.tmk), self.mac)
            pad.install_key_data(answer["62"])
            self.pik, self.mak = pad.pik, pad.mak
            self.batch = core.signon_batch(answer.doc)
        return answer

    async def echo(self) -> Answer:
        return await self.exchange(core.management_request(
            "echo_test", self.profile, self.next_stan(), self.batch))

    async def sign_off(self) -> Answer:
        return await self.exchange(core.management_request(
            "sign_off", self.profile, self.next_stan(), self.batch))

    @staticmethod
    def _card(card: TestCard, manual: bool = False) -> Card:
        return Card(card.pan, card.expiry, None if manual else card.track2)

    def _pin_block(self, card: TestCard, pin: str | None) -> str | None:
        return None if pin is None else self.pinpad().pin_block(pin, card.pan)

    def card_fields(self, card: TestCard, pin: str | None, manual: bool = False) -> dict:
        return core.card_fields(self._card(card, manual), self._pin_block(card, pin))

    def financial(self, kind: str, card: TestCard, amount: int | None, pin: str | None,
                  extra: Mapping[str, str] | None = None, manual: bool = False) -> Message:
        stan = self.next_stan()
        return core.financial_request(kind, self.profile, stan, self.batch,
                                      self._card(card, manual), amount=amount,
                                      pin_block=self._pin_block(card, pin), extra=extra)

    async def sale(self, card: TestCard, amount: int, pin: str | None = "same",
                   manual: bool = False) -> Answer:
        pin = card.pin if pin == "same" else pin
        return await self.exchange(self.financial("sale", card, amount, pin, manual=manual))

    async def balance(self, card: TestCard, pin: str | None = "same") -> Answer:
        pin = card.pin if pin == "same" else pin
        return await self.exchange(self.financial("balance", card, None, pin))

    @staticmethod
    def _original(sale: Answer, amount: int | None = None) -> core.Original:
        return core.Original(
            batch=decode_field60(sale.request["60"]).batch, trace=sale.request["11"],
            rrn=sale["37"], amount=int(sale.request.get("4", "0")) if amount is None else amount,
            auth_code=sale.doc.get("38"), date=sale.doc.get("13", ""))

    async def void(self, card: TestCard, sale: Answer, amount: int | None = None) -> Answer:
        doc = core.void_request(self.profile, self.next_stan(), self.batch, self._card(card),
                                self._original(sale, amount))
        return await self.exchange(doc)

    async def refund(self, card: TestCard, sale: Answer, amount: int) -> Answer:
        doc = core.refund_request(self.profile, self.next_stan(), self.batch, self._card(card),
                                  self._original(sale), amount)
        return await self.exchange(doc)

    def reversal_of(self, original: Mapping[str, str], reason: str = "98",
                    auth_code: str | None = None) -> Message:
        # protocol.md section 3: the original's fields; 35 is dropped, so a swiped sale's
        # reversal carries no PAN and the host must find the card from its own record.
        return core.reversal_request(original, reason, auth_code)

    async def reverse(self, original: Mapping[str, str], reason: str = "98") -> Answer:
        return await self.exchange(self.reversal_of(original, reason))

    async def settle(self, totals: SettlementTotals) -> Answer:
        return await self.exchange(core.settlement_request(
            self.profile, self.next_stan(), self.batch, totals))

    async def upload(self, records: list[UploadRecord]) -> Answer:
        return await self.exchange(core.upload_request(
            self.profile, self.next_stan(), self.batch, records))

    async def upload_end(self, total: int) -> Answer:
        return await self.exchange(core.upload_end_request(
            self.profile, self.next_stan(), self.batch, total))
