"""Message catalog of protocol.md section 3: every message kind as data.

A kind is identified from a request by (MTI, processing code, 60.3); its entry says which
fields a request and a response must or may carry, whether both carry a MAC, which request
fields the response echoes, and whether the terminal must be able to reverse it.

>>> identify_request({"t": "0200", "3": "000000", "60": "22000001000"}).name
'sale'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from specs.emv import (
    CHIP_ENTRY_MODES,
    IC_APPLICATION_CATEGORY,
    ISSUER_AUTH_TAG,
    OPTIONAL_REQUEST_TAGS,
    REQUEST_TAGS,
    TRANSACTION_TYPES,
)
from specs.errors import ValidationError

ECHO_FIELDS: tuple[str, ...] = ("3", "4", "11", "41", "42", "60")
"""Request fields a response repeats unchanged (when the request has them)."""

COPIED_FIELDS: tuple[str, ...] = ("25", "49")
"""Request fields a response carries again (condition code, currency) without being checked."""

_CARD = ("2", "14", "23", "35", "55")
_PIN = ("26", "52", "53")
_FIN_RESPONSE_ALWAYS = ("3", "11", "12", "13", "25", "32", "37", "39", "41", "42", "49", "60")
_FIN_RESPONSE_OPTIONAL = ("15", "44", "55", "63")


def _f(*numbers: str) -> frozenset[str]:
    return frozenset(numbers)


@dataclass(frozen=True)
class MessageKind:
    """One transaction kind of section 3.

    ``response_on_approval`` fields are mandatory when F39 is 00. ``mac`` means request and
    response carry F64 (a response with 39 in NO_MAC_CODES carries none).
    ``processing_code``/``type_code`` of None mean "as the original" (reversal).
    """

    name: str
    title: str
    mti: str
    processing_code: str | None
    condition_code: str | None
    type_code: str | None
    network_code: str
    mac: bool
    reversible: bool
    advice: bool
    request_mandatory: frozenset[str]
    request_optional: frozenset[str]
    response_mandatory: frozenset[str]
    response_on_approval: frozenset[str] = frozenset()
    response_optional: frozenset[str] = frozenset()
    echo_60: bool = True
    financial: bool = False

    @property
    def response_mti(self) -> str:
        """Response MTI = request MTI + 10.

        >>> KINDS["sign_on"].response_mti
        '0810'
        """
        return f"{int(self.mti) + 10:04d}"

    def echo_fields(self) -> tuple[str, ...]:
        return tuple(f for f in ECHO_FIELDS if f != "60" or self.echo_60)


def _financial(
    name: str, title: str, mti: str, code: str | None, type_code: str | None, *,
    mandatory: tuple[str, ...], optional: tuple[str, ...], reversible: bool, advice: bool = False,
    on_approval: tuple[str, ...] = ("38",), extra_optional: tuple[str, ...] = (),
) -> MessageKind:
    return MessageKind(
        name=name, title=title, mti=mti, processing_code=code,
        condition_code="00" if code is not None else None, type_code=type_code,
        network_code="000", mac=True, reversible=reversible, advice=advice,
        request_mandatory=_f(*mandatory, "3", "11", "22", "25", "41", "42", "49", "60", "64"),
        request_optional=_f(*optional),
        response_mandatory=_f(*_FIN_RESPONSE_ALWAYS) | (_f("4") if "4" in mandatory else _f()),
        response_on_approval=_f(*on_approval),
        response_optional=_f(*_FIN_RESPONSE_OPTIONAL, *extra_optional, "38", "64"),
        financial=True,
    )


def _management(
    name: str, title: str, mti: str, type_code: str, network_code: str, *,
    request_mandatory: tuple[str, ...], request_optional: tuple[str, ...] = ("63",),
    response_mandatory: tuple[str, ...] = ("11", "39", "41", "42", "60"),
    response_on_approval: tuple[str, ...] = (),
    response_optional: tuple[str, ...] = ("12", "13", "15", "32", "37", "63"),
    echo_60: bool = True,
) -> MessageKind:
    return MessageKind(
        name=name, title=title, mti=mti, processing_code=None, condition_code=None,
        type_code=type_code, network_code=network_code, mac=False, reversible=False,
        advice=mti == "0320", request_mandatory=_f(*request_mandatory),
        request_optional=_f(*request_optional), response_mandatory=_f(*response_mandatory),
        response_on_approval=_f(*response_on_approval), response_optional=_f(*response_optional),
        echo_60=echo_60,
    )


_KIND_LIST = (
    _management(
        "sign_on", "sign-on (double-length PIK + MAK)", "0800", "00", "003",
        request_mandatory=("11", "41", "42", "60"),
        response_mandatory=("11", "12", "13", "32", "37", "39", "41", "42", "60"),
        response_on_approval=("62",), response_optional=("15", "63"), echo_60=False,
    ),
    _management("sign_off", "sign-off", "0820", "00", "002",
                request_mandatory=("11", "41", "42", "60")),
    _management("echo_test", "echo test", "0820", "00", "301",
                request_mandatory=("11", "41", "42", "60")),
    _financial("balance", "balance inquiry", "0200", "310000", "01",
               mandatory=(), optional=(*_CARD, *_PIN), reversible=False,
               on_approval=("54",), extra_optional=("54",)),
    _financial("sale", "sale", "0200", "000000", "22",
               mandatory=("4",), optional=(*_CARD, *_PIN), reversible=True),
    _financial("void", "void of a sale", "0200", "200000", "23",
               mandatory=("4", "37", "61"), optional=(*_CARD, *_PIN, "38"), reversible=True),
    _financial("refund", "refund (advice, store-and-forward)", "0220", "200000", "25",
               mandatory=("4", "37", "61", "63"), optional=(*_CARD, *_PIN, "38"),
               reversible=False, advice=True, on_approval=()),
    _financial("reversal", "reversal", "0400", None, None,
               mandatory=("4", "39"), optional=("2", "14", "23", "38", "55", "61"),
               reversible=False, on_approval=()),
    _management(
        "settlement", "settlement", "0500", "00", "201",
        request_mandatory=("11", "41", "42", "48", "49", "60"),
        response_mandatory=("11", "39", "41", "42", "48", "60"),
        response_optional=("12", "13", "15", "32", "37", "49", "63"),
    ),
    _management(
        "batch_upload", "batch upload records", "0320", "00", "201",
        request_mandatory=("11", "41", "42", "48", "60"), request_optional=(),
        response_optional=("12", "13", "15", "32", "37", "48"),
    ),
    _management(
        "batch_upload_end", "batch upload end", "0320", "00", "202",
        request_mandatory=("11", "41", "42", "48", "60"), request_optional=(),
        response_optional=("12", "13", "15", "32", "37", "48"),
    ),
)

KINDS: Mapping[str, MessageKind] = MappingProxyType({k.name: k for k in _KIND_LIST})

_BY_PROCESSING: dict[tuple[str, str], MessageKind] = {
    (k.mti, k.processing_code): k for k in _KIND_LIST if k.processing_code is not None
}
_BY_NETWORK: dict[tuple[str, str], MessageKind] = {
    (k.mti, k.network_code): k for k in _KIND_LIST if not k.financial
}
_REVERSIBLE_CODES = frozenset(k.processing_code for k in _KIND_LIST if k.reversible)
REQUEST_MTIS = frozenset(k.mti for k in _KIND_LIST)


def identify_request(doc: Mapping[str, str]) -> MessageKind:
    """Find a request's kind from its MTI, processing code and 60.3.

    Raises ValidationError (response code 30 or 40) naming the field that does not fit.
    """
    mti = doc.get("t", "")
    if mti not in REQUEST_MTIS:
        raise ValidationError(f"MTI {mti!r} is not a request of this dialect", field="t")
    if mti == "0400":
        if doc.get("3") not in _REVERSIBLE_CODES:
            raise ValidationError("reversal of a kind that is not reversible", field="3",
                                  response_code="12")
        return KINDS["reversal"]
    if mti in ("0200", "0220"):
        kind = _BY_PROCESSING.get((mti, doc.get("3", "")))
        if kind is None:
            raise ValidationError(f"processing code {doc.get('3')!r} not supported", field="3",
                                  response_code="40")
        return kind
    network = doc.get("60", "")[8:11]
    kind = _BY_NETWORK.get((mti, network))
    if kind is None:
        raise ValidationError(f"network code {network!r} not supported for {mti}", field="60",
                              response_code="40")
    return kind


def original_kind(reversal: Mapping[str, str]) -> MessageKind:
    """The kind a 0400 reverses, from its processing code."""
    return _BY_PROCESSING[("0200", reversal["3"])]


@dataclass(frozen=True)
class ChipVariant:
    """The chip (EMV) form of a kind (protocol.md section 8): F22 05x / 07x, header category
    61, F23 and F55 mandatory with the F55 tags below; the 0210 carries tag 91 whenever the
    ARQC verified."""

    kind: str
    transaction_type: str
    entry_modes: tuple[str, ...] = tuple(CHIP_ENTRY_MODES)
    header_category: str = IC_APPLICATION_CATEGORY
    request_mandatory: frozenset[str] = frozenset({"23", "55"})
    f55_mandatory: tuple[str, ...] = REQUEST_TAGS
    f55_optional: tuple[str, ...] = OPTIONAL_REQUEST_TAGS
    response_f55: tuple[str, ...] = (ISSUER_AUTH_TAG,)


CHIP_VARIANTS: Mapping[str, ChipVariant] = MappingProxyType(
    {name: ChipVariant(name, code) for name, code in TRANSACTION_TYPES.items()}
)
"""Kinds with a chip variant (sale, balance inquiry) -> their chip form."""
