"""Response codes of protocol.md section 5: their meaning, and which responses carry no MAC."""

from __future__ import annotations

RESPONSE_CODES: dict[str, str] = {
    "00": "approved",
    "03": "invalid merchant",
    "05": "do not honour",
    "12": "invalid transaction",
    "13": "invalid amount",
    "14": "invalid card number",
    "22": "terminal state mismatch, sign on again",
    "25": "original not found",
    "30": "format error",
    "40": "function not supported",
    "41": "lost card",
    "43": "stolen card",
    "51": "insufficient funds",
    "54": "expired card",
    "55": "incorrect PIN",
    "61": "exceeds amount limit",
    "64": "amount does not match original",
    "75": "PIN tries exceeded",
    "77": "batch number mismatch, sign on again",
    "94": "duplicate",
    "96": "system malfunction",
    "97": "terminal not registered",
    "A0": "MAC error, sign on again",
}

# Each code by name: the host's rules and service, the terminal and the benches use these.
APPROVED = "00"
INVALID_MERCHANT = "03"
DO_NOT_HONOUR = "05"
INVALID_TRANSACTION = "12"
INVALID_AMOUNT = "13"
UNKNOWN_CARD = "14"
TERMINAL_STATE_MISMATCH = "22"
ORIGINAL_NOT_FOUND = "25"
FORMAT_ERROR = "30"
FUNCTION_NOT_SUPPORTED = "40"
LOST = "41"
STOLEN = "43"
INSUFFICIENT_FUNDS = "51"
EXPIRED = "54"
WRONG_PIN = "55"
OVER_LIMIT = "61"
AMOUNT_MISMATCH = "64"
PIN_TRIES_EXCEEDED = "75"
BATCH_MISMATCH = "77"
DUPLICATE = "94"
SYSTEM_MALFUNCTION = "96"
UNKNOWN_TERMINAL = "97"
MAC_ERROR = "A0"

SIGN_ON_CODES: frozenset[str] = frozenset({TERMINAL_STATE_MISMATCH, BATCH_MISMATCH, MAC_ERROR})
"""Response codes after which the terminal must sign on again (protocol.md section 5)."""

# Responses with these codes carry no MAC (protocol.md section 4): the host could not or must
# not MAC them (unknown terminal, bad MAC, undecodable request).
NO_MAC_CODES: frozenset[str] = frozenset({MAC_ERROR, UNKNOWN_TERMINAL, FORMAT_ERROR})

# Reversal reasons a terminal puts in F39 of a 0400 (protocol.md section 3).
REASON_NO_RESPONSE, REASON_MAC, REASON_OTHER = "98", MAC_ERROR, "06"
REVERSAL_REASONS: dict[str, str] = {
    REASON_NO_RESPONSE: "no response in time",
    REASON_MAC: "response MAC failed",
    REASON_OTHER: "response undecodable, or could not complete after approval",
}


def describe_code(code: str) -> str:
    """Meaning of a response code; unknown codes are named as such.

    >>> describe_code("55")
    'incorrect PIN'
    >>> describe_code("Q9")
    'unknown response code'
    """
    return RESPONSE_CODES.get(code, "unknown response code")


# Constant field values of the dialect (protocol.md sections 2 and 3).
CURRENCY_CNY = "156"
"""F49: ISO 4217 numeric code of the renminbi, the dialect's currency."""
SECURITY_CONTROL_ISO0_DOUBLE = "2600000000000000"
"""F53: PIN block ISO format 0 with PAN, double-length keys."""
OPERATOR_CODE = "01 "
"""F63 of sign-on and settlement requests: operator 01."""
DOMESTIC_ORGANISATION = "CUP"
"""F63 of refund advices, and of responses for domestic (UnionPay) cards."""

# Card organisations by BIN prefix (longest prefix wins); the response's F63 names the card's
# organisation so that a terminal can total domestic and foreign cards apart (DECISIONS.md).
CARD_ORGANISATIONS: dict[str, str] = {
    "62": DOMESTIC_ORGANISATION, "4": "VIS", "51": "MCC", "52": "MCC", "53": "MCC",
    "54": "MCC", "55": "MCC", "2": "MCC", "35": "JCB", "34": "AEX", "37": "AEX",
}


def card_organisation(pan: str) -> str:
    """The organisation of a card from its BIN; unknown BINs count as domestic.

    >>> card_organisation("6222021234567890128"), card_organisation("4761739001010010")
    ('CUP', 'VIS')
    """
    for length in (2, 1):
        org = CARD_ORGANISATIONS.get(pan[:length])
        if org is not None:
            return org
    return DOMESTIC_ORGANISATION


def is_foreign_organisation(organisation: str) -> bool:
    """Whether a response's F63 (organisation, then text) makes a card foreign: anything but
    CUP; an absent or empty F63 counts as domestic.

    >>> [is_foreign_organisation(f63) for f63 in ("VIS", "CUP approved", "")]
    [True, False, False]
    """
    return organisation[:3].strip() not in ("", DOMESTIC_ORGANISATION)


assert set(RESPONSE_CODES) == {
    APPROVED, INVALID_MERCHANT, DO_NOT_HONOUR, INVALID_TRANSACTION, INVALID_AMOUNT, UNKNOWN_CARD,
    TERMINAL_STATE_MISMATCH, ORIGINAL_NOT_FOUND, FORMAT_ERROR, FUNCTION_NOT_SUPPORTED, LOST,
    STOLEN, INSUFFICIENT_FUNDS, EXPIRED, WRONG_PIN, OVER_LIMIT, AMOUNT_MISMATCH,
    PIN_TRIES_EXCEEDED, BATCH_MISMATCH, DUPLICATE, SYSTEM_MALFUNCTION, UNKNOWN_TERMINAL, MAC_ERROR,
}, "every response code has its name above"
