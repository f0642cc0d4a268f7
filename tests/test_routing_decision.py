"""The routing decision and the degrade rule (host/routing.py), table-driven, and the cup-h2h
codec (specs/h2h.py)."""

from __future__ import annotations

from datetime import time

import pytest

from host.errors import ConfigError
from host.routing import (
    Ask,
    Health,
    Route,
    channel_cost,
    choose_route,
    parse_bins,
    parse_rate,
    parse_window,
    reversal_backoff,
)
from specs.h2h import (
    H2hFrameDecoder,
    decode_h2h,
    encode_h2h,
    field60_management,
    frame_h2h,
    management_code,
    response_mti,
)

VISA = "4761739001010010"
CUP = "6222031234567890"


def route(name: str, **kw: object) -> Route:
    settings: dict = {"host": "127.0.0.1", "port": 1, "bins": parse_bins("4761,622203-622299")}
    settings.update(kw)
    return Route(name, **settings)


def up() -> Health:
    return Health(up=True)


NOON = time(12, 0)

CASES = [
    # (id, routes, health, pan, amount, used, expected name or code)
    ("cheapest fixed", [route("A", cost_fixed=10), route("B", cost_fixed=5)],
     {"A": up(), "B": up()}, VISA, 10000, {}, "B"),
    ("cheapest for amount", [route("A", cost_fixed=10), route("B", cost_rate="0.01")],
     {"A": up(), "B": up()}, VISA, 10000, {}, "A"),
    ("small amount flips", [route("A", cost_fixed=10), route("B", cost_rate="0.01")],
     {"A": up(), "B": up()}, VISA, 500, {}, "B"),
    ("down skipped", [route("A"), route("B", cost_fixed=99)],
     {"A": Health(up=False), "B": up()}, VISA, 100, {}, "B"),
    ("disabled skipped", [route("A", enabled=False), route("B", cost_fixed=99)],
     {"A": up(), "B": up()}, VISA, 100, {}, "B"),
    ("degraded skipped", [route("A"), route("B", cost_fixed=99)],
     {"A": Health(up=True, degraded_until=1e9), "B": up()}, VISA, 100, {}, "B"),
    ("maintenance skipped", [route("A", maintenance=parse_window("11:30-12:30")),
                             route("B", cost_fixed=99)],
     {"A": up(), "B": up()}, VISA, 100, {}, "B"),
    ("per-txn limit", [route("A", limit_txn=5000), route("B", cost_fixed=99)],
     {"A": up(), "B": up()}, VISA, 5001, {}, "B"),
    ("per-txn limit inclusive", [route("A", limit_txn=5000), route("B", cost_fixed=99)],
     {"A": up(), "B": up()}, VISA, 5000, {}, "A"),
    ("card daily limit", [route("A", limit_day=10000), route("B", cost_fixed=99)],
     {"A": up(), "B": up()}, VISA, 2000, {"A": 9000}, "B"),
    ("BIN range", [route("A", bins=parse_bins("4761")), route("B", cost_fixed=99)],
     {"A": up(), "B": up()}, CUP, 100, {}, "B"),
    ("no BIN", [route("A", bins=parse_bins("4761"))], {"A": up()}, CUP, 100, {}, "14"),
    ("none available", [route("A"), route("B")],
     {"A": Health(up=False), "B": Health(up=False)}, VISA, 100, {}, "91"),
    ("success rate breaks cost tie", [route("A"), route("B")],
     {"A": Health(up=True, outcomes=__import__("collections").deque([(False, 0.1)])),
      "B": up()}, VISA, 100, {}, "B"),
    ("p99 breaks tie", [route("A"), route("B")],
     {"A": Health(up=True, outcomes=__import__("collections").deque([(True, 0.9)])),
      "B": Health(up=True, outcomes=__import__("collections").deque([(True, 0.1)]))},
     VISA, 100, {}, "B"),
    ("priority last", [route("A", priority=2), route("B", priority=1)],
     {"A": up(), "B": up()}, VISA, 100, {}, "B"),
]


@pytest.mark.parametrize(("routes", "health", "pan", "amount", "used", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_choose_route(routes: list[Route], health: dict, pan: str, amount: int, used: dict,
                      expected: str) -> None:
    choice = choose_route(routes, health, Ask(pan, amount, NOON, 1000.0, used))
    got = choice.route.name if choice.route else choice.code
    assert got == expected, choice.why


def test_ties_round_robin() -> None:
    routes = [route("A"), route("B")]
    health = {"A": up(), "B": up()}
    names = [choose_route(routes, health, Ask(VISA, 100, NOON, 0.0), turn).route.name
             for turn in range(4)]
    assert names == ["A", "B", "A", "B"]


def test_degrade_after_threshold_then_probation_doubles() -> None:
    r = route("A", fail_threshold=20, degrade_hold=30.0)
    h = Health(up=True)
    tripped = [h.failure(0.1, 0.0, r) for _ in range(20)]
    assert tripped == [False] * 19 + [True]
    assert h.degraded(29.9) and not h.degraded(30.0)
    assert h.failure(0.1, 31.0, r)  # first failure on probation: demoted again, twice as long
    assert h.degraded_until == 31.0 + 60.0
    h.success(0.1, 100.0)  # after the hold, a success ends probation
    assert not h.probation and h.last_hold == 0.0
    assert [h.failure(0.1, 101.0, r) for _ in range(20)][-1]
    assert h.degraded_until == 101.0 + 30.0


def test_degrade_on_pending() -> None:
    r = route("A", pending_threshold=3)
    h = Health(up=True, in_flight=3)
    assert h.check_pending(5.0, r) and h.degraded(6.0)


@pytest.mark.parametrize(("fixed", "rate", "amount", "cost"), [
    (10, "0.0038", 12345, 57), (0, "0.005", 100, 1), (0, "0.005", 99, 0), (7, "0", 10**9, 7),
    (0, "0.0038", 0, 0)])
def test_channel_cost_half_up(fixed: int, rate: str, amount: int, cost: int) -> None:
    assert channel_cost(fixed, rate, amount) == cost


@pytest.mark.parametrize("bad", ["", "47x", "6222-62", "622299-622203", "1234567890123"])
def test_bad_bins(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_bins(bad)


def test_rate_window_backoff() -> None:
    assert parse_rate("0.0038") == "0.0038"
    with pytest.raises(ConfigError):
        parse_rate("1.5")
    assert parse_window("23:30-00:30").contains(time(0, 10))
    assert not parse_window("02:00-03:00").contains(time(3, 0))
    assert [reversal_backoff(a) for a in range(4)] == [2, 4, 8, 16]
    assert reversal_backoff(20) == 300


def test_h2h_codec_round_trip_and_framing() -> None:
    doc = {"t": "0200", "2": CUP, "3": "000000", "4": "000000012345", "7": "1130120000",
           "11": "000042", "32": "48020000", "33": "48020000", "37": "000000000123",
           "41": "12345678", "42": "123456789012345", "49": "156"}
    body = encode_h2h(doc)
    assert body[:2] == b"\x02\x00"
    assert decode_h2h(body) == doc
    framed = frame_h2h(body) + frame_h2h(encode_h2h({"t": "0800", "7": "1130120000",
                                                      "11": "000001", "32": "48020000",
                                                      "33": "48020000",
                                                      "60": field60_management("301")}))
    decoder = H2hFrameDecoder()
    bodies = decoder.feed(framed[:7]) + decoder.feed(framed[7:])
    assert [decode_h2h(b)["t"] for b in bodies] == ["0200", "0800"]
    assert management_code(decode_h2h(bodies[1])) == "301"
    assert response_mti("0200") == "0210" and response_mti("0421") == "0430"


def test_link_state_machine() -> None:
    from host.links import LinkEvent, LinkPhase, next_phase

    path = [(LinkEvent.CONNECTED, LinkPhase.SIGNING_ON), (LinkEvent.SIGNED_ON, LinkPhase.KEYING),
            (LinkEvent.KEYED, LinkPhase.UP), (LinkEvent.LOST, LinkPhase.DOWN)]
    phase = LinkPhase.DOWN
    for event, expected in path:
        phase = next_phase(phase, event)
        assert phase is expected
    for phase in LinkPhase:  # a refusal or a loss anywhere: down, then reconnect
        assert next_phase(phase, LinkEvent.REFUSED) is LinkPhase.DOWN
        assert next_phase(phase, LinkEvent.LOST) is LinkPhase.DOWN
    assert next_phase(LinkPhase.DOWN, LinkEvent.KEYED) is LinkPhase.DOWN  # out of order


def test_recon_compare_table() -> None:
    from host.recon import compare

    diffs = compare({"A": 100, "B": 50, "C": 9}, {"B": 50, "C": 8, "D": 1})
    assert [(d.kind, d.rrn, d.network_amount, d.acquirer_amount) for d in diffs] == [
        ("only_at_network", "A", 100, None), ("amount_differs", "C", 9, 8),
        ("only_at_acquirer", "D", None, 1)]
