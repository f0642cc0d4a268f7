"""The TLS profile of every link (terminal -> host, host -> HSM): TLS 1.2 or later, server
certificates checked against a CA, optional client certificates (mutual TLS).

Standard library ``ssl`` only, no I/O: this module builds ``ssl.SSLContext`` objects and
explains handshake failures in one line; host, terminal and hsm_sim each wrap their own trio
streams in ``trio.SSLStream`` with them. It lives in ``specs`` because it is part of the
contract every side must agree on, and because host and terminal never import each other.

>>> describe_tls_failure(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"))
'not TLS (plain bytes on a TLS port?): wrong version number'
"""

from __future__ import annotations

import ssl
from pathlib import Path

from specs.errors import SpecError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
"""Oldest protocol version any side accepts (TLS 1.0 and 1.1 are refused)."""


class TlsError(SpecError):
    """A certificate, key or CA file that cannot be used."""


def _check_file(path: str | Path, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise TlsError(f"{what} {p} does not exist or is not a file")
    return str(p)


def _load_chain(context: ssl.SSLContext, cert: str | Path, key: str | Path) -> None:
    try:
        # no passphrase prompt on the terminal: an encrypted key is refused (ssl.SSLError)
        context.load_cert_chain(_check_file(cert, "certificate"), _check_file(key, "key"),
                                password=lambda: b"")
    except ssl.SSLError as exc:
        raise TlsError(f"cannot use certificate {cert} with key {key}: {exc.reason or exc}"
                       ) from None


def _load_ca(context: ssl.SSLContext, ca: str | Path) -> None:
    try:
        context.load_verify_locations(cafile=_check_file(ca, "CA file"))
    except ssl.SSLError as exc:
        raise TlsError(f"cannot read CA certificates from {ca}: {exc.reason or exc}") from None


def server_context(cert: str | Path, key: str | Path,
                   client_ca: str | Path | None = None) -> ssl.SSLContext:
    """The context of a listening side. With ``client_ca``, a peer must present a certificate
    issued by that CA (mutual TLS); without, any client may connect."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_chain(context, cert, key)
    if client_ca is not None:
        _load_ca(context, client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str | Path | None = None, cert: str | Path | None = None,
                   key: str | Path | None = None) -> ssl.SSLContext:
    """The context of a connecting side: the server's certificate must chain to ``ca`` (the
    system's trusted CAs when None) and name the host connected to. ``cert``/``key``: this
    side's certificate, for servers that require one."""
    if (cert is None) != (key is None):
        raise TlsError("a client certificate needs its key (give both or neither)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    if ca is None:
        context.load_default_certs()
    else:
        _load_ca(context, ca)
    if cert is not None and key is not None:
        _load_chain(context, cert, key)
    return context


_CLOSED = ("the peer closed the connection during TLS (it may require a client certificate,"
           " or refuse ours)")
_PLAIN_REASONS = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL",
                  "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG")


def describe_tls_failure(exc: BaseException | None) -> str:
    """One line saying why a handshake failed, from the ``ssl`` error behind it (trio raises
    ``BrokenResourceError`` from it). Never carries data from the peer beyond the reason."""
    cause = exc
    while cause is not None and not isinstance(cause, ssl.SSLError | ConnectionResetError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return f"connection lost ({type(exc).__name__}{': ' if str(exc) else ''}{exc})"
    if isinstance(cause, ConnectionResetError):
        return _CLOSED
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate refused: {cause.verify_message}"
    if isinstance(cause, ssl.SSLEOFError):
        return _CLOSED
    text = str(cause)
    reason = getattr(cause, "reason", None) or text
    detail = text.split("] ", 1)[-1].split(" (_ssl.c", 1)[0]
    if any(r in text for r in _PLAIN_REASONS):
        return f"not TLS (plain bytes on a TLS port?): {detail}"
    if "CERTIFICATE_REQUIRED" in text or "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text:
        return "the peer sent no client certificate (mutual TLS requires one)"
    if "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text or "CERTIFICATE_EXPIRED" in text:
        return f"the peer refused our certificate: {detail}"
    if "VERSION" in str(reason) or "PROTOCOL_VERSION" in text:
        return f"protocol version refused (TLS 1.2 or later only): {detail}"
    return f"TLS handshake failed: {detail}"
