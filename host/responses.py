"""Building responses from the catalog: the host's own fields (F12/13/15/32/37/44/63) and the
rejects the message path sends before the ledger is involved. Pure code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime

from host.limits import ACQUIRER_ID, ISSUER_ID, ORGANISATION
from specs.catalog import MessageKind
from specs.errors import SpecError
from specs.fastcodec import Spans
from specs.framing import BITMAP_LENGTH, MTI_LENGTH
from specs.messages import Message, build_response

UNSTORED_FIELDS = ("12", "13", "64")
"""Response fields not kept for replay: host time and date are fresh, the MAC is recomputed."""
DIGEST_EXCLUDED = ("52", "64")
"""Request fields left out of the idempotence digest: a repeat after a new sign-on carries the
same content under new working keys, so its PIN block and MAC differ."""
_EXCLUDED_NUMBERS = frozenset(int(k) for k in DIGEST_EXCLUDED)
_EXCLUDED_BITS = sum(1 << (64 - n) for n in _EXCLUDED_NUMBERS)
_FIELDS_START = MTI_LENGTH + BITMAP_LENGTH


def host_fields(kind: MessageKind, request: Mapping[str, str], now: datetime,
                rrn: str) -> dict[str, str]:
    """The fields the host fills, limited to those the kind's response may carry."""
    allowed = kind.response_mandatory | kind.response_optional | kind.response_on_approval
    mmdd = f"{now.month:02d}{now.day:02d}"  # strftime("%m%d"), without its cost
    candidates = {
        "12": f"{now.hour:02d}{now.minute:02d}{now.second:02d}",
        "13": mmdd,
        "15": mmdd,
        "32": ACQUIRER_ID,
        "37": rrn,
        "44": f"{ISSUER_ID:<11}{ACQUIRER_ID:<11}",
        "63": ORGANISATION,
        "25": request.get("25"),
        "49": request.get("49"),
    }
    return {k: v for k, v in candidates.items() if v is not None and k in allowed}


def respond(kind: MessageKind, request: Mapping[str, str], code: str, now: datetime,
            rrn: str, extra: Mapping[str, str] | None = None) -> Message:
    """A full response (F64 excluded) to a request of ``kind`` with response code ``code``."""
    fields = host_fields(kind, request, now, rrn)
    fields["39"] = code
    if extra:
        fields.update(extra)
    try:
        return build_response(kind, request, fields)
    except SpecError:
        return minimal_response(request, code, fields)


def minimal_response(request: Mapping[str, str], code: str,
                     fields: Mapping[str, str] | None = None) -> Message:
    """A best-effort answer to a request that breaks the catalog: MTI + 10, the echo fields
    that are present, F39. Used for 30/97 answers, never for approvals."""
    mti = request.get("t", "")
    doc: Message = {"t": f"{int(mti) + 10:04d}" if mti.isdigit() else "0000"}
    for key in ("3", "4", "11", "41", "42", "60"):
        if key in request:
            doc[key] = request[key]
    for key, value in (fields or {}).items():
        if key in ("12", "13", "32", "37"):
            doc[key] = value
    doc["39"] = code
    return doc


def storable(response: Mapping[str, str]) -> str:
    """JSON of a response as the idempotence row keeps it."""
    return json.dumps({k: v for k, v in response.items() if k not in UNSTORED_FIELDS},
                      sort_keys=True)


def replayed(stored: str, now: datetime) -> Message:
    """A stored response with fresh F12/F13."""
    doc: Message = json.loads(stored)
    doc["12"] = now.strftime("%H%M%S")
    doc["13"] = now.strftime("%m%d")
    return doc


def request_digest(request: Mapping[str, str]) -> str:
    """Digest of a request's content for duplicate detection, from its decoded fields (the
    form before :func:`request_digest_raw`; kept for callers that hold no encoded body)."""
    content = {k: v for k, v in request.items() if k not in DIGEST_EXCLUDED}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def request_digest_raw(body: bytes, spans: Spans) -> str:
    """Digest of a request's content for duplicate detection, over its encoded body: the MTI,
    the bitmap without the DIGEST_EXCLUDED bits, and every other field's bytes with its length
    prefix. ``spans``: where each field's data lies, in field order (as
    :func:`specs.messages.decode_with_spans` gives them). The dialect's encoding is canonical
    (one byte string per decoded value: upper-case hex, 0 pad nibbles, fixed-width BCD
    lengths), so two decodable requests get the same digest exactly when all their fields
    but DIGEST_EXCLUDED are equal, as with :func:`request_digest`; without building and
    serialising a dict."""
    digest = hashlib.sha256(body[:MTI_LENGTH])
    bits = int.from_bytes(body[MTI_LENGTH:_FIELDS_START], "big") & ~_EXCLUDED_BITS
    digest.update(bits.to_bytes(BITMAP_LENGTH, "big"))
    kept_from = previous_end = _FIELDS_START
    for number, (_, end) in spans.items():
        if number in _EXCLUDED_NUMBERS:  # cut from its length prefix (if any) to its end
            digest.update(body[kept_from:previous_end])
            kept_from = end
        previous_end = end
    digest.update(body[kept_from:])
    return digest.hexdigest()
