"""Sans-IO serial link (specs.seriallink): framing, ACK/NAK, retransmission, duplicates, resync,
timers on an explicit clock. No I/O, no trio."""

from __future__ import annotations

import pytest

from specs.errors import SpecError
from specs.framing import ACK, ETX, NAK, STX, encode_frame_serial, encode_frame_tcp
from specs.seriallink import (
    ACK_TIMEOUT,
    DUPLICATE_WINDOW,
    INTER_BYTE_TIMEOUT,
    MAX_RETRANSMITS,
    AckReceived,
    DuplicateDiscarded,
    FrameReceived,
    FrameRejected,
    Framing,
    GarbageDiscarded,
    LinkBusyError,
    LinkProtocol,
    NakReceived,
    Retransmitted,
    SendFailed,
    wire_length,
)

PAYLOAD = bytes.fromhex("6000030000603100310000") + b"\x08\x00" + bytes(8) + b"\x02\x03\x06\x15"
"""TPDU + header + MTI + bitmap + bytes that look like STX/ETX/ACK/NAK inside the payload."""


def link(framing: Framing = Framing.STX, **kwargs: float) -> LinkProtocol:
    return LinkProtocol(framing, min_length=1, **kwargs)


def frames(events: list) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, FrameReceived)]


def test_round_trip_with_control_bytes_inside_the_payload() -> None:
    a, b = link(), link()
    wire = a.send(PAYLOAD, now=0)
    assert wire == encode_frame_serial(PAYLOAD)
    step = b.feed(wire, now=0)
    assert step == ([FrameReceived(PAYLOAD)], bytes([ACK]))
    assert a.awaiting_ack
    assert a.feed(step.to_write, now=0.5).events == [AckReceived()]
    assert not a.awaiting_ack and a.deadline() is None


def test_frame_arriving_byte_by_byte() -> None:
    b = link()
    events, out = [], b""
    for i, byte in enumerate(encode_frame_serial(PAYLOAD)):
        step = b.feed(bytes([byte]), now=i * 0.001)
        events += step.events
        out += step.to_write
    assert frames(events) == [PAYLOAD] and out == bytes([ACK])


def test_corrupted_byte_nak_retransmit_one_frame_delivered() -> None:
    a, b = link(), link()
    wire = bytearray(a.send(PAYLOAD, now=0))
    wire[10] ^= 0x40  # a bit flipped on the line
    step = b.feed(bytes(wire), now=0)
    assert step.events == [FrameRejected("LRC mismatch")] and step.to_write == bytes([NAK])
    back = a.feed(step.to_write, now=0.1)
    assert back.events == [NakReceived(), Retransmitted(1, "NAK")]
    assert back.to_write == encode_frame_serial(PAYLOAD)
    step = b.feed(back.to_write, now=0.4)  # within RESYNC_QUIET of the bad frame: still parsed
    assert frames(step.events) == [PAYLOAD] and step.to_write == bytes([ACK])
    assert a.feed(step.to_write, now=0.5).events == [AckReceived()]


def test_bad_etx_and_non_bcd_length_are_naked_once() -> None:
    b = link()
    wire = bytearray(encode_frame_serial(PAYLOAD))
    wire[-2] = 0x00  # ETX gone
    step = b.feed(bytes(wire), now=0)
    assert isinstance(step.events[0], FrameRejected)
    assert step.to_write == bytes([NAK])  # the STX inside the payload is not NAKed again
    # a false STX inside it waits for more bytes; the next feed after a quiet line drops it
    step = b.feed(bytes([STX, 0xAB, 0xCD]), now=5)
    assert [e for e in step.events if isinstance(e, FrameRejected)] == [
        FrameRejected("length abcd is not BCD")
    ]
    assert step.to_write == bytes([NAK])


def test_length_outside_limits_is_naked() -> None:
    b = LinkProtocol(min_length=21)
    step = b.feed(bytes([STX, 0x00, 0x05]) + b"short" + bytes([ETX, 0]), now=0)
    assert isinstance(step.events[0], FrameRejected) and step.to_write[:1] == bytes([NAK])
    step = b.feed(bytes([STX, 0x30, 0x00]), now=5)  # 3000 > MAX_FRAME_LENGTH
    assert "outside" in step.events[0].reason


def test_lost_ack_duplicate_is_acked_again_and_delivered_once() -> None:
    a, b = link(), link()
    wire = a.send(PAYLOAD, now=0)
    first = b.feed(wire, now=0)
    assert frames(first.events) == [PAYLOAD]
    # the ACK is lost: the sender times out and retransmits
    assert a.deadline() == ACK_TIMEOUT
    again = a.timeout(now=ACK_TIMEOUT)
    assert again == ([Retransmitted(1, "no ACK")], wire)
    second = b.feed(again.to_write, now=ACK_TIMEOUT)
    assert second == ([DuplicateDiscarded(PAYLOAD)], bytes([ACK]))
    assert a.feed(second.to_write, now=ACK_TIMEOUT + 0.1).events == [AckReceived()]


def test_same_payload_after_the_duplicate_window_is_a_new_frame() -> None:
    b = link()
    wire = encode_frame_serial(PAYLOAD)
    assert frames(b.feed(wire, now=0).events) == [PAYLOAD]
    assert frames(b.feed(wire, now=DUPLICATE_WINDOW + 1).events) == [PAYLOAD]


def test_different_frame_resets_duplicate_memory() -> None:
    b = link()
    other = PAYLOAD + b"x"
    for payload in (PAYLOAD, other, PAYLOAD):
        assert frames(b.feed(encode_frame_serial(payload), now=1).events) == [payload]


def test_gives_up_after_max_retransmits() -> None:
    a = link(byte_time=0.001)
    wire = a.send(PAYLOAD, now=0)
    frame_time = len(wire) * 0.001
    now, sent = 0.0, 1
    while True:
        deadline = a.deadline()
        assert deadline == pytest.approx(now + frame_time + ACK_TIMEOUT)
        now = deadline
        assert a.timeout(now - 0.01) == ([], b"")  # not yet due
        step = a.timeout(now)
        if step.to_write:
            sent += 1
            assert step.to_write == wire
            continue
        assert step.events == [SendFailed(PAYLOAD, "no ACK")]
        break
    assert sent == 1 + MAX_RETRANSMITS
    assert not a.awaiting_ack and a.deadline() is None


def test_nak_on_last_retransmission_fails_at_once() -> None:
    a = link()
    a.send(PAYLOAD, now=0)
    for attempt in range(1, MAX_RETRANSMITS + 1):
        assert a.feed(bytes([NAK]), now=attempt).events[-1] == Retransmitted(attempt, "NAK")
    assert a.feed(bytes([NAK]), now=9).events == [NakReceived(), SendFailed(PAYLOAD, "NAK")]


def test_send_while_waiting_for_ack_is_refused_until_abandoned() -> None:
    a = link()
    a.send(PAYLOAD, now=0)
    with pytest.raises(LinkBusyError) as info:
        a.send(PAYLOAD, now=0)
    assert isinstance(info.value, SpecError)
    assert a.abandon() == PAYLOAD
    assert a.abandon() is None
    a.send(PAYLOAD, now=1)


def test_garbage_is_skipped_to_the_next_stx() -> None:
    b = link()
    step = b.feed(b"\xff\x00noise" + encode_frame_serial(PAYLOAD) + b"\x7f", now=0)
    assert step.events == [GarbageDiscarded(7), FrameReceived(PAYLOAD), GarbageDiscarded(1)]
    assert step.to_write == bytes([ACK])


def test_ack_nak_with_nothing_outstanding_are_ignored() -> None:
    b = link()
    assert b.feed(bytes([ACK, NAK]), now=0) == ([], b"")


def test_frame_cut_short_is_dropped_after_inter_byte_timeout() -> None:
    a, b = link(), link()
    wire = encode_frame_serial(PAYLOAD)
    assert b.feed(wire[:12], now=0) == ([], b"")
    assert b.deadline() == INTER_BYTE_TIMEOUT
    step = b.timeout(INTER_BYTE_TIMEOUT)
    assert isinstance(step.events[0], FrameRejected) and step.to_write == bytes([NAK])
    assert b.deadline() is None
    # the line comes back: the next whole frame is received normally
    step = b.feed(a.send(PAYLOAD, now=10), now=10)
    assert frames(step.events) == [PAYLOAD] and step.to_write == bytes([ACK])


def test_ack_byte_inside_a_naked_frame_is_not_taken_for_an_ack() -> None:
    a = link()
    a.send(PAYLOAD, now=0)
    # the peer's bad frame (length says 2, really longer) is followed by payload bytes with ACK
    step = a.feed(bytes([STX, 0x00, 0x02, 0x41, 0x42, 0x43, ACK, 0x00]), now=0.1)
    assert isinstance(step.events[0], FrameRejected)
    assert AckReceived() not in step.events and a.awaiting_ack
    # more of it, still arriving back-to-back
    assert AckReceived() not in a.feed(bytes([ACK]), now=0.15).events
    # after the line was quiet, an ACK is an ACK again
    assert a.feed(bytes([ACK]), now=1.0).events == [AckReceived()]


def test_full_duplex_frames_and_acks_interleave() -> None:
    a, b = link(), link()
    to_b = a.send(b"request", now=0)
    to_a = b.send(b"unsolicited", now=0)
    step_b = b.feed(to_b, now=0)
    step_a = a.feed(to_a + step_b.to_write, now=0)
    assert frames(step_a.events) == [b"unsolicited"] and AckReceived() in step_a.events
    assert b.feed(step_a.to_write, now=0).events == [AckReceived()]


def test_length_framing() -> None:
    a, b = link(Framing.LENGTH), link(Framing.LENGTH)
    wire = a.send(PAYLOAD, now=0)
    assert wire == encode_frame_tcp(PAYLOAD) and not a.awaiting_ack
    assert a.send(PAYLOAD, now=0) == wire  # no ACK to wait for
    step = b.feed(wire + wire[:5], now=0)
    assert step == ([FrameReceived(PAYLOAD)], b"")
    step = b.feed(wire[5:], now=0.1)
    assert frames(step.events) == [PAYLOAD]
    assert wire_length(len(PAYLOAD), "length") == len(wire)


def test_length_framing_recovers_from_a_cut_frame_and_a_bad_prefix() -> None:
    b = link(Framing.LENGTH)
    wire = encode_frame_tcp(PAYLOAD)
    b.feed(wire[:7], now=0)
    step = b.timeout(INTER_BYTE_TIMEOUT)
    assert isinstance(step.events[0], FrameRejected) and step.to_write == b""
    assert frames(b.feed(wire, now=5).events) == [PAYLOAD]
    step = b.feed(b"\xff\xff" + b"junk", now=6)
    assert isinstance(step.events[0], FrameRejected)
    assert frames(b.feed(wire, now=7).events) == [PAYLOAD]
