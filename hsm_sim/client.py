"""The HSM client the host uses: one async API over an in-process or a TCP transport.

Both transports carry the same encoded commands (HEADER + CMD + fields); the in-process one
calls `HsmEngine.handle` directly (no I/O, no checkpoints: fast) and, for the hot commands
(M6/M8, Y0/Y2, DC), the engine's direct methods, which run the same code as the text
handlers without encoding the request to text and parsing it back. The TCP one keeps one
connection guarded by a lock, reconnects once when it breaks, bounds every call with
`HSM_CALL_TIMEOUT` and raises `HsmUnavailable` when the HSM cannot be reached.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Protocol

import trio

from hsm_sim.commands import HsmEngine, decode_frame_length, encode_frame, response_code
from hsm_sim.crypto import MAX_PIN_LENGTH, extract_account_number, is_hex
from hsm_sim.errors import HsmError, HsmUnavailable
from hsm_sim.lmk import parse_key_field
from hsm_sim.server import receive_exact
from specs.tls import describe_tls_failure

__all__ = [
    "HSM_CALL_TIMEOUT",
    "HsmClient",
    "InProcessTransport",
    "KeyUnderLmk",
    "TcpTransport",
    "TerminalKeys",
    "Transport",
]

HSM_CALL_TIMEOUT = 5.0  # seconds for one command, connecting included
MAC_ALGORITHMS = ("x919", "cup-ecb")
X919_MAC_LENGTH = 8
CUP_MAC_LENGTH = 8
TERMINAL_CHECK_VALUE_LENGTH = 4
_CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, EOFError)


class Transport(Protocol):
    """Carries one request (without length prefix) and returns the response."""

    async def call(self, request: bytes) -> bytes: ...
    async def aclose(self) -> None: ...


class InProcessTransport:
    """Calls the engine directly (`HsmClient` also uses its direct API for hot commands)."""

    def __init__(self, engine: HsmEngine, client: str = "in-process") -> None:
        self.engine = engine
        self.client = client

    async def call(self, request: bytes) -> bytes:
        return self.engine.handle(request, self.client)

    async def aclose(self) -> None:
        return None


class TcpTransport:
    """One TCP connection, serialised by a lock, reconnected once when it breaks. With
    `ssl_context`, TLS (the handshake counts in the call's timeout)."""

    def __init__(self, host: str, port: int, *, timeout: float = HSM_CALL_TIMEOUT,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.ssl_context = ssl_context
        self._stream: trio.abc.Stream | None = None
        self._lock = trio.Lock()

    async def call(self, request: bytes) -> bytes:
        frame = encode_frame(request)
        async with self._lock:
            try:
                with trio.fail_after(self.timeout):
                    return await self._call_with_retry(frame)
            except HsmError:
                await self._drop()  # an oversized response leaves the stream mid-frame
                raise
            except trio.TooSlowError:
                await self._drop()
                raise HsmUnavailable(
                    f"HSM at {self.host}:{self.port} did not answer within {self.timeout} s"
                ) from None

    async def _call_with_retry(self, frame: bytes) -> bytes:
        reused = self._stream is not None
        try:
            return await self._exchange(await self._connect(), frame)
        except _CONNECTION_ERRORS as exc:
            await self._drop()
            if not reused:
                raise HsmUnavailable(f"HSM at {self.host}:{self.port}: {self._why(exc)}"
                                     ) from exc
        try:  # the kept connection was stale (HSM restarted, idle close): one fresh try
            return await self._exchange(await self._connect(), frame)
        except _CONNECTION_ERRORS as exc:
            await self._drop()
            raise HsmUnavailable(f"HSM at {self.host}:{self.port}: {self._why(exc)}"
                                 ) from exc

    def _why(self, exc: BaseException) -> str:
        return describe_tls_failure(exc) if self.ssl_context is not None else str(exc)

    async def _connect(self) -> trio.abc.Stream:
        if self._stream is None:
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError as exc:
                raise HsmUnavailable(
                    f"cannot connect to the HSM at {self.host}:{self.port}: {exc.strerror or exc}"
                ) from exc
            if self.ssl_context is not None:
                self._stream = await self._handshake(stream, self.ssl_context)
            else:
                self._stream = stream
        return self._stream

    async def _handshake(self, stream: trio.SocketStream,
                         context: ssl.SSLContext) -> trio.SSLStream:
        tls = trio.SSLStream(stream, context, server_hostname=self.host)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise HsmUnavailable(
                f"TLS to the HSM at {self.host}:{self.port}: {describe_tls_failure(exc)}"
            ) from None
        except BaseException:
            stream.socket.close()
            raise
        return tls

    async def _exchange(self, stream: trio.abc.Stream, frame: bytes) -> bytes:
        await stream.send_all(frame)
        prefix = await receive_exact(stream, 2)
        if prefix is None:
            raise EOFError("HSM closed the connection")
        body = await receive_exact(stream, decode_frame_length(prefix))
        if body is None:
            raise EOFError("HSM closed the connection mid-response")
        return body

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()


@dataclass(frozen=True)
class KeyUnderLmk:
    """A key as the HSM returns it (scheme + hex under the LMK) and its check value."""

    key: str
    kcv: str


@dataclass(frozen=True)
class TerminalKeys:
    """Sign-on working keys: under the LMK for the host, under the TMK for F62."""

    pik_lmk: str
    pik_under_tmk: bytes
    pik_cv: bytes
    mak_lmk: str
    mak_under_tmk: bytes
    mak_cv: bytes

    def field62(self) -> bytes:
        """F62 for 60.3 = 003: PIK 16 | CV 4 | MAK 16 | CV 4."""
        return self.pik_under_tmk + self.pik_cv + self.mak_under_tmk + self.mak_cv


def _split_key(data: str) -> tuple[str, str]:
    """(leading key field, rest) of a response."""
    first = data[:1]
    length = {"U": 33, "X": 33, "T": 49, "Y": 49, "Z": 17}.get(first, 16)
    return data[:length], data[length:]


def _refused(command: str, exc: HsmError) -> HsmError:
    """The error `HsmClient.call` raises for a refused command, from a direct call's error."""
    return HsmError(f"HSM refused {command}", code=exc.code)


def _scheme_for_length(hex_length: int) -> str:
    schemes = {16: "Z", 32: "U", 48: "T"}
    if hex_length not in schemes:
        raise HsmError("a clear key is 16, 32 or 48 hex digits", code="15")
    return schemes[hex_length]


class HsmClient:
    """The host's view of the HSM (see the module docstring)."""

    def __init__(self, transport: Transport, header: bytes = b"0000") -> None:
        self.transport = transport
        self.header = header
        self._engine: HsmEngine | None = None
        self._client = ""
        if isinstance(transport, InProcessTransport):
            self._engine, self._client = transport.engine, transport.client

    @classmethod
    def in_process(cls, engine: HsmEngine) -> HsmClient:
        return cls(InProcessTransport(engine), b"0" * engine.header_length)

    @classmethod
    def tcp(
        cls, host: str, port: int, *, header_length: int = 4, timeout: float = HSM_CALL_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> HsmClient:
        """A TCP (with `ssl_context`: TLS) HSM at host:port."""
        transport = TcpTransport(host, port, timeout=timeout, ssl_context=ssl_context)
        return cls(transport, b"0" * header_length)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def call(
        self, command: str, fields: bytes = b"", ok: tuple[str, ...] = ("00",)
    ) -> tuple[str, bytes]:
        """Send one command; (error code, data) when the code is in `ok`, else HsmError."""
        cmd = command.encode("ascii")
        response = await self.transport.call(self.header + cmd + fields)
        prefix = self.header + response_code(cmd)
        if response[len(self.header) : len(prefix)] == b"ZZ":
            raise HsmError(
                f"HSM does not support {command}", code=response[-2:].decode("ascii", "replace")
            )
        if not response.startswith(prefix) or len(response) < len(prefix) + 2:
            raise HsmError(f"malformed response to {command}", code="15")
        code = response[len(prefix) : len(prefix) + 2].decode("ascii", "replace")
        if code not in ok:
            raise HsmError(f"HSM refused {command}", code=code)
        return code, response[len(prefix) + 2 :]

    async def _text(self, command: str, fields: str) -> str:
        return (await self.call(command, fields.encode("ascii")))[1].decode("ascii")

    async def lmk_check_value(self) -> str:
        """NC: the LMK check value (16H)."""
        return (await self._text("NC", ""))[:16]

    async def generate_key(self, key_type: str) -> KeyUnderLmk:
        """A0 mode 0: a new double-length key (scheme U) of `key_type` under the LMK."""
        key, kcv = _split_key(await self._text("A0", f"0{key_type}U"))
        return KeyUnderLmk(key, kcv)

    async def generate_key_components(self, key_type: str) -> tuple[KeyUnderLmk, list[str]]:
        """Y8 (extension, test LMK only): a key as 2 clear components (lab use)."""
        key, rest = _split_key(await self._text("Y8", f"{key_type}U2"))
        kcv, shown = rest[:6], rest[6:]
        return KeyUnderLmk(key, kcv), [shown[:32], shown[32:64]]

    async def import_clear_key(self, key_type: str, clear_hex: str) -> KeyUnderLmk:
        """Y4 (extension, test LMK only): a clear key under the LMK."""
        scheme = _scheme_for_length(len(clear_hex))
        key, kcv = _split_key(await self._text("Y4", f"{key_type}{scheme}{clear_hex.upper()}"))
        return KeyUnderLmk(key, kcv)

    async def import_clear_components(self, key_type: str, components: list[str]) -> KeyUnderLmk:
        """Y6 (extension, test LMK only): XOR of clear components under the LMK."""
        if not components or len({len(c) for c in components}) != 1:
            raise HsmError("components must all have the same length", code="15")
        scheme = _scheme_for_length(len(components[0]))
        fields = f"{key_type}{scheme}{len(components)}" + "".join(components).upper()
        key, kcv = _split_key(await self._text("Y6", fields))
        return KeyUnderLmk(key, kcv)

    async def _terminal_key(
        self, tmk: str, key_type: str, bu_code: str
    ) -> tuple[str, bytes, bytes]:
        data = await self._text("A0", f"1{key_type}U;1{tmk}X")
        under_lmk, rest = _split_key(data)
        under_tmk, _ = _split_key(rest)
        kcv16 = await self.key_check_value(bu_code, under_lmk)
        check = bytes.fromhex(kcv16)[:TERMINAL_CHECK_VALUE_LENGTH]
        return under_lmk, bytes.fromhex(under_tmk[1:]), check

    async def generate_terminal_keys(self, tmk: str) -> TerminalKeys:
        """A0 mode 1 under a TMK (scheme X, plain 3DES-ECB) for a TPK and a TAK, + BU."""
        pik = await self._terminal_key(tmk, "002", "02")
        mak = await self._terminal_key(tmk, "003", "03")
        return TerminalKeys(*pik, *mak)

    async def key_check_value(self, key_type_code: str, key: str) -> str:
        """BU: the 16H check value of a key under the LMK."""
        flag = {8: "0", 16: "1", 24: "2"}.get(len(parse_key_field(key)[1]), "0")
        return (await self._text("BU", f"{key_type_code}{flag}{key}"))[:16]

    @staticmethod
    def _check_algorithm(algorithm: str) -> None:
        if algorithm not in MAC_ALGORITHMS:
            raise HsmError(f"unknown MAC algorithm {algorithm!r}", code="15")

    async def generate_mac(self, tak: str, data: bytes, algorithm: str) -> bytes:
        """The F64 bytes: 8 binary bytes (x919) or 8 ASCII hex characters (cup-ecb)."""
        self._check_algorithm(algorithm)
        engine = self._engine
        if engine is not None:
            try:
                if algorithm == "cup-ecb":
                    return engine.generate_mac_cup(tak, data, client=self._client)
                return bytes.fromhex(engine.generate_mac(tak, data, client=self._client))
            except HsmError as exc:
                raise _refused("Y0" if algorithm == "cup-ecb" else "M6", exc) from None
        length = f"{len(data):04X}".encode()
        if algorithm == "cup-ecb":
            return (await self.call("Y0", b"003" + tak.encode() + length + data))[1]
        _, mac = await self.call("M6", b"0013" + b"1003" + tak.encode() + length + data)
        return bytes.fromhex(mac.decode("ascii"))

    async def verify_mac(self, tak: str, data: bytes, mac: bytes, algorithm: str) -> bool:
        """M8 (x919) or Y2 (cup-ecb); False on a mismatch or a malformed MAC."""
        self._check_algorithm(algorithm)
        engine = self._engine
        if engine is not None:
            try:
                if algorithm == "cup-ecb":
                    if len(mac) != CUP_MAC_LENGTH or not is_hex(mac.decode("latin-1")):
                        return False
                    return engine.verify_mac_cup(tak, data, mac, client=self._client)
                if len(mac) != X919_MAC_LENGTH:
                    return False
                return engine.verify_mac(tak, data, mac.hex().upper(), client=self._client)
            except HsmError as exc:
                raise _refused("Y2" if algorithm == "cup-ecb" else "M8", exc) from None
        length = f"{len(data):04X}".encode()
        if algorithm == "cup-ecb":
            if len(mac) != CUP_MAC_LENGTH or not is_hex(mac.decode("latin-1")):
                return False
            fields = b"003" + tak.encode() + length + data + mac
            code, _ = await self.call("Y2", fields, ok=("00", "01"))
        else:
            if len(mac) != X919_MAC_LENGTH:
                return False
            fields = b"0013" + b"1003" + tak.encode() + length + data + mac.hex().upper().encode()
            code, _ = await self.call("M8", fields, ok=("00", "01"))
        return code == "00"

    async def generate_pvv(self, pvk: str, pan: str, pin: str, pvki: int = 1) -> str:
        """BA then DG: the Visa PVV for a PIN (card personalisation in the lab)."""
        account = extract_account_number(pan)
        pin_lmk = await self._text("BA", pin.ljust(MAX_PIN_LENGTH + 1, "F") + account)
        return (await self._text("DG", f"{pvk}{pin_lmk}{account}{pvki}"))[:4]

    async def verify_pin_pvv(
        self,
        tpk: str,
        pvk: str,
        pinblock: bytes,
        pan: str,
        pvv: str,
        pvki: int = 1,
        pinblock_format: str = "01",
    ) -> bool:
        """DC: True when the PIN matches the PVV, False on 01, HsmError otherwise."""
        account = extract_account_number(pan)
        engine = self._engine
        if engine is not None:
            try:
                return engine.verify_pin_pvv(tpk, pvk, pinblock, account, str(pvki), pvv,
                                             pinblock_format=pinblock_format,
                                             client=self._client)
            except HsmError as exc:
                raise _refused("DC", exc) from None
        fields = f"{tpk}{pvk}{pinblock.hex().upper()}{pinblock_format}{account}{pvki}{pvv}"
        code, _ = await self.call("DC", fields.encode("ascii"), ok=("00", "01"))
        return code == "00"

    async def translate_pin(
        self,
        tpk: str,
        zpk: str,
        pinblock: bytes,
        pan: str,
        src_format: str = "01",
        dst_format: str = "01",
    ) -> bytes:
        """CA: the PIN block re-encrypted from the TPK to the ZPK."""
        account = extract_account_number(pan)
        block = pinblock.hex().upper()
        fields = f"{tpk}{zpk}{MAX_PIN_LENGTH:02d}{block}{src_format}{dst_format}{account}"
        data = await self._text("CA", fields)
        return bytes.fromhex(data[2:18])
