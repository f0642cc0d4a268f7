"""Reaching the HSM: the embedded engine (in-process, no thread hop) or a payShield-style TCP
HSM, and the LMK guard that refuses a database whose keys were stored under another LMK."""

from __future__ import annotations

import sqlite3
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from host.db import get_meta, set_meta
from host.errors import ConfigError
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from hsm_sim.errors import HsmError
from hsm_sim.lmk import TEST_LMK_WARNING, load_lmk
from specs.tls import TlsError, client_context

EMBEDDED = "embedded"
TCP_PREFIX = "tcp://"
TLS_PREFIX = "tls://"
"""``tls://HOST:PORT[?ca=FILE][&cert=FILE&key=FILE]``: the HSM over TLS 1.2+; its certificate
must chain to ``ca`` (the system's CAs without), ``cert``/``key`` for a mutual-TLS HSM."""
PVK_TYPE = "002"
TMK_TYPE = "002"
TEST_LMK_WARNING_TEXT = TEST_LMK_WARNING


@dataclass(frozen=True)
class HsmInfo:
    """What the host knows about the HSM it talks to."""

    description: str
    test_lmk: bool


def parse_tcp(spec: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` -> (host, port)."""
    from specs.values import InputError, parse_address

    try:
        return parse_address(spec[len(TCP_PREFIX):])
    except InputError:
        raise ConfigError(f"--hsm must be 'embedded' or tcp://HOST:PORT (port 1-65535),"
                          f" not {spec!r}") from None


def parse_tls(spec: str) -> tuple[str, int, ssl.SSLContext]:
    """``tls://HOST:PORT?ca=F&cert=F&key=F`` -> (host, port, client context)."""
    address, _, query = spec.partition("?")
    host, port = parse_tcp(TCP_PREFIX + address[len(TLS_PREFIX):])
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    unknown = set(params) - {"ca", "cert", "key"}
    if unknown:
        raise ConfigError(f"--hsm tls:// takes ca=, cert= and key=, not {sorted(unknown)}")
    files = {name: values[-1] for name, values in params.items()}
    try:
        context = client_context(files.get("ca"), files.get("cert"), files.get("key"))
    except TlsError as exc:
        raise ConfigError(f"--hsm: {exc}") from None
    return host, port, context


@asynccontextmanager
async def open_hsm(hsm: str, lmk: str) -> AsyncIterator[tuple[HsmClient, HsmInfo]]:
    """An HSM client for ``--hsm`` / ``--lmk``; closed on exit."""
    if hsm == EMBEDDED:
        try:
            lmk_set = load_lmk(lmk)
        except HsmError as exc:
            raise ConfigError(f"cannot load the LMK: {exc}") from None
        client = HsmClient.in_process(HsmEngine(lmk_set))
        info = HsmInfo(f"embedded HSM, LMK {'TEST' if lmk_set.is_test else lmk}",
                       lmk_set.is_test)
    elif hsm.startswith(TCP_PREFIX):
        host, port = parse_tcp(hsm)
        client = HsmClient.tcp(host, port)
        info = HsmInfo(f"HSM at {host}:{port}", False)
    elif hsm.startswith(TLS_PREFIX):
        host, port, context = parse_tls(hsm)
        client = HsmClient.tcp(host, port, ssl_context=context)
        info = HsmInfo(f"HSM at {host}:{port} over TLS", False)
    else:
        raise ConfigError(f"--hsm must be 'embedded', tcp://HOST:PORT or tls://HOST:PORT,"
                          f" not {hsm!r}")
    try:
        yield client, info
    finally:
        await client.aclose()


async def check_lmk(conn: sqlite3.Connection, client: HsmClient) -> str:
    """Bind the database to the LMK on first use; refuse another LMK afterwards."""
    try:
        kcv = await client.lmk_check_value()
    except HsmError as exc:
        raise ConfigError(f"the HSM does not answer: {exc}") from None
    stored = get_meta(conn, "lmk_kcv")
    if stored is None:
        set_meta(conn, "lmk_kcv", kcv)
    elif stored != kcv:
        raise ConfigError(
            f"this database's keys are under the LMK with check value {stored}, but the HSM"
            f" has {kcv}: use the same --lmk / --hsm as when it was provisioned"
        )
    return kcv


async def ensure_pvk(conn: sqlite3.Connection, client: HsmClient) -> str:
    """The issuer simulator's PVK under the LMK, generated on first use."""
    pvk = get_meta(conn, "pvk_lmk")
    if pvk is None:
        key = await client.generate_key(PVK_TYPE)
        pvk = key.key
        set_meta(conn, "pvk_lmk", pvk)
        set_meta(conn, "pvk_kcv", key.kcv)
    return pvk
