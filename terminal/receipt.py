"""Readable receipts and listings: masked PAN, amounts, response code meaning, references.

Input is what :class:`terminal.session.Result` and the store hold; nothing secret is rendered
(PANs arrive masked or are masked here, keys only as check values).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from specs.codes import describe_code
from specs.emv import format_f55
from specs.framing import Frame
from specs.messages import decode_message
from specs.pretty import format_message, mask_pan
from terminal.cards import format_amount
from terminal.state import JournalEntry

CURRENCY_NAME = "CNY"
_LABELS = (
    ("pan", "card"), ("balance_minor", "balance"), ("rrn", "RRN"), ("auth_code", "auth code"),
    ("stan", "STAN"), ("batch", "batch"), ("orig_stan", "original STAN"),
    ("orig_batch", "original batch"), ("new_batch", "new batch"),
    ("debit_count", "sales"), ("debit_amount_minor", "sales total"),
    ("credit_count", "refunds"), ("credit_amount_minor", "refunds total"),
    ("records_uploaded", "records uploaded"), ("reversals_sent", "reversals sent"),
    ("advices_forwarded", "advices forwarded"), ("advices_queued", "advices queued"),
    ("kcv_tmk", "TMK KCV"), ("kcv_pik", "PIK KCV"), ("kcv_mak", "MAK KCV"),
)


def _value(key: str, value: Any) -> str:
    if key.endswith("_minor") and isinstance(value, int):
        return f"{format_amount(value)} {CURRENCY_NAME}"
    return str(value)


def render_result(result: Mapping[str, Any]) -> str:
    """A receipt for a command result (``Result.as_dict()``)."""
    title = f"{result['command'].upper()}  {result['status'].upper()}"
    lines = [title, f"  TID {result.get('tid', '')}   MID {result.get('mid', '')}"]
    if result.get("amount_minor") is not None:
        lines.append(f"  {'amount':<16} {_value('amount_minor', result['amount_minor'])}")
    if result.get("entry") and result.get("pan"):
        lines.append(f"  {'card':<16} {result['pan']} ({result['entry']})")
    if result.get("response_code"):
        lines.append(f"  {'response':<16} {result['response_code']} {result['meaning']}")
    for key, label in _LABELS:
        if key == "pan" and result.get("entry"):
            continue
        value = result.get(key)
        if value not in (None, ""):
            lines.append(f"  {label:<16} {_value(key, value)}")
    lines.extend(_chip_lines(result))
    lines.extend(f"  note: {n}" for n in result.get("notes", []))
    return "\n".join(lines)


_CHIP_LABELS = (("app_label", "application"), ("aid", "AID"), ("psn", "PSN"), ("atc", "ATC"),
                ("tvr", "TVR"), ("arqc", "ARQC"))


def _chip_lines(result: Mapping[str, Any]) -> list[str]:
    """A chip slip's lines: application, AID, ATC, TVR, ARQC and the final TC / AAC."""
    if not result.get("aid"):
        return []
    lines = [f"  {label:<16} {result[key]}" for key, label in _CHIP_LABELS if result.get(key)]
    if result.get("cryptogram_type"):
        lines.append(f"  {result['cryptogram_type']:<16} {result.get('cryptogram', '')}")
    return lines


def journal_row(e: JournalEntry) -> dict[str, Any]:
    return {
        "id": e.id, "kind": e.kind, "batch": e.batch, "stan": e.stan, "amount_minor": e.amount,
        "pan": mask_pan(e.pan) if e.pan else None, "status": e.status, "response_code": e.code,
        "rrn": e.rrn, "auth_code": e.auth, "host_date": e.host_date,
        "orig_stan": e.orig_stan, "voided": bool(e.voided), "settled": bool(e.settled),
    }


def render_journal(entries: Iterable[JournalEntry]) -> str:
    head = (f"{'STAN':<7}{'batch':<7}{'kind':<8}{'amount':>12}  {'card':<20}"
            f"{'status':<11}{'rc':<3} {'RRN':<13}{'auth':<7}note")
    lines = [head]
    for e in entries:
        note = "voided" if e.voided else (f"of {e.orig_stan}" if e.orig_stan else "")
        note += " settled" if e.settled else ""
        amount = format_amount(e.amount) if e.amount is not None else ""
        lines.append(
            f"{e.stan:<7}{e.batch:<7}{e.kind:<8}{amount:>12}  {mask_pan(e.pan or ''):<20}"
            f"{e.status:<11}{e.code or '':<3} {e.rrn or '':<13}{e.auth or '':<7}{note}".rstrip())
    if len(lines) == 1:
        lines.append("(empty)")
    return "\n".join(lines)


def render_frame(direction: str, payload: bytes, elapsed: float) -> str:
    """A masked field dump of one frame for --trace."""
    arrow = ">>" if direction == "send" else "<<"
    head = f"{arrow} {direction} {len(payload) + 2} bytes  +{elapsed * 1000:.1f} ms"
    try:
        frame = Frame.parse(payload)
        doc = decode_message(frame.body)
    except Exception as exc:
        return f"{head}\n   undecodable: {exc}"
    routing = (f"   TPDU {frame.tpdu.to_bytes().hex().upper()}  "
               f"header {frame.header.to_bytes().hex().upper()}")
    body = "\n".join("   " + line for line in format_message(doc).splitlines())
    if "55" in doc:  # section 8: the chip data tag by tag (cryptograms shown, PAN masked)
        body += "\n" + "\n".join("       " + line
                                  for line in format_f55(doc["55"], reveal_cryptograms=True))
    return f"{head}\n{routing}\n{body}"


def describe(code: str | None) -> str:
    return f"{code} {describe_code(code)}" if code else "-"
