"""The floor: a minimal framed server that answers every request with a canned, valid response.

It splits a financial request into raw fields (it must echo fields 3, 4, 11, 41, 42, 60),
assembles the response from those bytes and canned ones (RRN, auth code, time) and MACs it
with a fixed MAK that its sign-on hands out under the bench TMK, so the unmodified load
generator believes it. No database, no HSM, no PIN or request-MAC check: what the load
generator and the framing cost by themselves.

    python -m benchlib.floor --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
from functools import partial

import trio

from benchlib.limits import BENCH_TMK_HEX, RECEIVE_SIZE
from hsm_sim.crypto import generate_mac_x919, wrap_key_tmk
from specs.catalog import identify_request
from specs.composite import (
    BALANCED,
    Field60,
    KeyData,
    SettlementTotals,
    Totals,
    decode_settlement_totals,
    encode_field60,
    encode_key_data,
    encode_settlement_totals,
)
from specs.errors import SpecError
from specs.fields import FIELDS, MAC_LENGTH
from specs.framing import (
    BITMAP_LENGTH,
    BODY_OFFSET,
    TPDU_LENGTH,
    Frame,
    TcpFrameDecoder,
    encode_frame_tcp,
)
from specs.messages import (
    build_response,
    decode_message,
    encode_message,
    encode_with_mac,
    field_spans,
    response_needs_mac,
)

FLOOR_PIK = bytes.fromhex("0B681FC20E62C7340B681FC20E62C734")
FLOOR_MAK = bytes.fromhex("7962D9ECE03D1ACD4C76089DCE131543")
FLOOR_BATCH = "000001"
CANNED = {"12": "120000", "13": "0101", "15": "0101", "32": "48020000", "38": "123456",
          "44": "48020000   48020000   ", "63": "CUP"}


def key_data(tmk_hex: str = BENCH_TMK_HEX) -> str:
    tmk = bytes.fromhex(tmk_hex)
    pik, pik_cv = wrap_key_tmk(tmk, FLOOR_PIK)
    mak, mak_cv = wrap_key_tmk(tmk, FLOOR_MAK)
    return encode_key_data(KeyData(pik, pik_cv, mak, mak_cv))


FAST_MTIS = {b"\x02\x00": b"\x02\x10", b"\x02\x20": b"\x02\x30", b"\x04\x00": b"\x04\x10"}
ECHOED = ("3", "4", "11", "25", "41", "42", "49", "60")
"""Request fields a financial response repeats (echo fields and copied fields)."""
_PREFIX = {"": 0, "LL": 1, "LLL": 2}


def _raw_fields(body: bytes) -> dict[str, bytes]:
    """Every field of ``body`` with its length prefix, as raw bytes."""
    out = {}
    for number, (start, end) in field_spans(body).items():
        out[str(number)] = body[start - _PREFIX[FIELDS[number].prefix] : end]
    return out


def _canned_raw() -> dict[str, bytes]:
    """Raw bytes of the canned response fields, encoded once through specs."""
    doc = {"t": "0210", **{k: CANNED[k] for k in ("12", "13", "32", "38", "44")},
           "37": "000000000001", "39": "00"}
    return _raw_fields(encode_message(doc))


CANNED_RAW = _canned_raw()


def fast_answer(payload: bytes) -> bytes | None:
    """A financial request answered by byte assembly (no decoding), or None if not one."""
    body = payload[BODY_OFFSET:]
    response_mti = FAST_MTIS.get(body[:2])
    if response_mti is None:
        return None
    try:
        request = _raw_fields(body)
    except (SpecError, ValueError):
        return None
    fields = {k: v for k, v in request.items() if k in ECHOED}
    fields.update(CANNED_RAW)
    fields["64"] = bytes(MAC_LENGTH)
    bitmap = 0
    for key in fields:
        bitmap |= 1 << (64 - int(key))
    out = response_mti + bitmap.to_bytes(BITMAP_LENGTH, "big") + b"".join(
        fields[k] for k in sorted(fields, key=int))[:-MAC_LENGTH]
    tpdu = payload[:1] + payload[3:5] + payload[1:3]
    return tpdu + payload[TPDU_LENGTH:BODY_OFFSET] + out + generate_mac_x919(FLOOR_MAK, out)


def answer(payload: bytes, rrns: itertools.count[int], f62: str) -> bytes:
    """The canned answer to one request payload (30 without MAC if it does not decode)."""
    fast = fast_answer(payload)
    if fast is not None:
        return fast
    frame = Frame.parse(payload)
    try:
        request = decode_message(frame.body, offset=BODY_OFFSET)
        kind = identify_request(request)
    except SpecError:
        return frame.answer(encode_message({"t": "0810", "39": "30"})).payload()
    fields = {"39": "00", "37": f"{next(rrns):012d}"}
    if kind.financial:
        fields.update({k: CANNED[k] for k in ("12", "13", "32", "38")})
        if kind.name in ("sale", "void", "balance"):
            fields["44"] = CANNED["44"]
        if kind.name == "balance":
            fields["54"] = "1002156C000000100000"
    elif kind.name == "sign_on":
        fields.update({k: CANNED[k] for k in ("12", "13", "32")})
        fields["60"] = encode_field60(Field60("00", FLOOR_BATCH, "003"))
        fields["62"] = f62
    elif kind.name == "settlement":
        claim = decode_settlement_totals(request["48"]).domestic
        done = Totals(claim.debit_amount, claim.debit_count, claim.credit_amount,
                      claim.credit_count, BALANCED)
        fields["48"] = encode_settlement_totals(SettlementTotals(done, Totals(result=BALANCED)))
    doc = build_response(kind, request, fields)
    if response_needs_mac(kind, "00"):
        body = encode_with_mac({**doc, "64": "00" * 8}, partial(generate_mac_x919, FLOOR_MAK))
    else:
        body = encode_message(doc)
    return frame.answer(body).payload()


async def serve_connection(stream: trio.SocketStream, rrns: itertools.count[int],
                           f62: str) -> None:
    decoder = TcpFrameDecoder()
    async with stream:
        try:
            while data := await stream.receive_some(RECEIVE_SIZE):
                decoder.feed(data)
                while (payload := decoder.next_payload()) is not None:
                    await stream.send_all(encode_frame_tcp(answer(payload, rrns, f62)))
        except (trio.BrokenResourceError, SpecError):
            return


async def serve(host: str, port: int) -> None:
    rrns = itertools.count(1)
    f62 = key_data()
    await trio.serve_tcp(partial(serve_connection, rrns=rrns, f62=f62), port, host=host)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    print(f"floor listening on {host}:{port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, host, int(port))


if __name__ == "__main__":
    main()
