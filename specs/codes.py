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

APPROVED = "00"
DUPLICATE = "94"
FORMAT_ERROR = "30"

# Responses with these codes carry no MAC (protocol.md section 4): the host could not or must
# not MAC them (unknown terminal, bad MAC, undecodable request).
NO_MAC_CODES: frozenset[str] = frozenset({"A0", "97", "30"})

# Reversal reasons a terminal puts in F39 of a 0400 (protocol.md section 3).
REVERSAL_REASONS: dict[str, str] = {
    "98": "no response in time",
    "A0": "response MAC failed",
    "06": "response undecodable, or could not complete after approval",
}


def describe_code(code: str) -> str:
    """Meaning of a response code; unknown codes are named as such.

    >>> describe_code("55")
    'incorrect PIN'
    >>> describe_code("Q9")
    'unknown response code'
    """
    return RESPONSE_CODES.get(code, "unknown response code")
