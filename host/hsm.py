"""Reaching the HSM: the embedded engine (in-process, no thread hop) or a payShield-style TCP
HSM, and the LMK guard that refuses a database whose keys were stored under another LMK."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from host.db import get_meta, set_meta
from host.errors import ConfigError
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from hsm_sim.errors import HsmError
from hsm_sim.lmk import TEST_LMK_WARNING, load_lmk

EMBEDDED = "embedded"
TCP_PREFIX = "tcp://"
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
    rest = spec[len(TCP_PREFIX):]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--hsm must be 'embedded' or tcp://HOST:PORT, not {spec!r}")
    return host.strip("[]"), int(port)


NOT_AUTHORISED = "17"


def not_authorised_hint(what: str) -> str:
    """The operator's message when provisioning meets error 17 (HSM not Authorised)."""
    return (f"{what} needs the HSM in the Authorised state (error 17: it takes a clear PIN or"
            " a clear key). With --hsm tcp://...: start it with `hsm-sim serve --authorised`"
            " (or --authorised-for SECONDS); with the embedded HSM on a live LMK: pass"
            " --authorise")


@asynccontextmanager
async def open_hsm(hsm: str, lmk: str, authorise: bool | None = False
                   ) -> AsyncIterator[tuple[HsmClient, HsmInfo]]:
    """An HSM client for ``--hsm`` / ``--lmk``; closed on exit.

    The embedded HSM is Authorised (BA, Y4/Y6/Y8 accepted) only when ``authorise`` is True,
    or when it is None (provisioning commands) and the LMK is the published test LMK. A
    serving host passes False: the message path never needs a clear PIN or key."""
    if hsm == EMBEDDED:
        try:
            lmk_set = load_lmk(lmk)
        except HsmError as exc:
            raise ConfigError(f"cannot load the LMK: {exc}") from None
        engine = HsmEngine(lmk_set)
        if authorise or (authorise is None and lmk_set.is_test):
            engine.authorise(None, who="poshost provisioning (embedded HSM)")
        client = HsmClient.in_process(engine)
        info = HsmInfo(f"embedded HSM, LMK {'TEST' if lmk_set.is_test else lmk}",
                       lmk_set.is_test)
    elif hsm.startswith(TCP_PREFIX):
        host, port = parse_tcp(hsm)
        client = HsmClient.tcp(host, port)
        info = HsmInfo(f"HSM at {host}:{port}", False)
    else:
        raise ConfigError(f"--hsm must be 'embedded' or tcp://HOST:PORT, not {hsm!r}")
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
