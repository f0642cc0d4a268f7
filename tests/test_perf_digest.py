"""The idempotence digest over the raw request bytes (host/responses.py request_digest_raw)
decides "same request" exactly as the digest over the decoded fields did: a repeat under new
working keys (new PIN block and MAC) is the same request, any other change is not."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from host.responses import DIGEST_EXCLUDED, request_digest, request_digest_raw
from specs.messages import decode_message, decode_with_spans, encode_message
from tests.conftest import RunningHost
from tests.test_host_flows import balance_of
from tests.test_specs_fastcodec import _value, kind_messages


def _raw(doc: dict[str, str]) -> str:
    body = encode_message(doc)
    _, spans = decode_with_spans(body)
    return request_digest_raw(body, spans)


def _decoded(doc: dict[str, str]) -> str:
    return request_digest(decode_with_spans(encode_message(doc))[0])


@settings(max_examples=300, deadline=None)
@given(kind_messages(), st.data())
def test_raw_digest_equal_exactly_when_decoded_digest_is(doc: dict[str, str], data) -> None:
    other = dict(doc)
    key = data.draw(st.sampled_from(sorted({*doc, *DIGEST_EXCLUDED} - {"t"}, key=int)))
    if key in other and data.draw(st.booleans()):
        del other[key]
    else:
        other[key] = data.draw(_value(int(key)))
    assert (_raw(doc) == _raw(other)) == (_decoded(doc) == _decoded(other))
    if key in DIGEST_EXCLUDED:
        assert _raw(doc) == _raw(other)


def test_pin_block_and_mac_are_left_out_but_the_amount_is_not() -> None:
    sale = {"t": "0200", "2": "6200000000000005", "3": "000000", "4": "000000001000",
            "11": "000123", "22": "021", "25": "00", "41": "12345678",
            "42": "123456789012345", "49": "156", "52": "0123456789ABCDEF",
            "53": "2600000000000000", "60": "22000001000", "64": "0102030405060708"}
    repeat = {**sale, "52": "FEDCBA9876543210", "64": "1111111111111111"}
    assert _raw(sale) == _raw(repeat)
    assert _raw(sale) != _raw({**sale, "4": "000000001001"})
    pan16 = {**sale, "2": "6200000000000000"}
    pan15 = {**sale, "2": "620000000000000"}  # the same data bytes (0 pad), another prefix
    assert _raw(pan16) != _raw(pan15)
    assert _raw(sale) != _raw({k: v for k, v in sale.items() if k != "53"} | {"52": "00" * 8})


async def test_repeat_of_a_request_stored_with_the_json_digest_is_replayed(
        running_host: RunningHost) -> None:
    """A request committed by a host before the raw-bytes digest (its idempotence row has the
    JSON digest) and repeated after the upgrade gets its stored answer, not a 94."""
    card = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        first = await t.sale(card, 555)
        doc = decode_message(encode_message(first.request))
        conn = sqlite3.connect(running_host.db_path)
        with conn:
            conn.execute("UPDATE idempotence SET digest=? WHERE stan=? AND mti='0200'",
                         (request_digest(doc), first.request["11"]))
        conn.close()
        again = await t.exchange(dict(first.request))
        assert again.code == "00" and again["37"] == first["37"] and again["38"] == first["38"]
        assert balance_of(running_host, "good") == card.balance_minor - 555
        changed = {**first.request, "4": f"{556:012d}"}
        assert (await t.exchange(changed)).code == "94"
