"""Shared fixtures: ``running_host`` runs a real host (TCP port 0, SQLite file in tmp_path,
the embedded HSM on the test LMK) with one merchant, one terminal and a set of test cards.

``store`` picks the host's store: "sqlite" here; a module that runs its scenarios on both
stores overrides it (``BOTH_STORES``; PostgreSQL: a new database per test in the
throw-away cluster scripts/test starts, ``POSHOST_TEST_PG``; see ``pg_database``)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from host.app import HostConfig, run_host
from host.provision import add_card, add_merchant, add_terminal
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from tests.hostkit import TestCard, TestTerminal, track2_of

TID = "12345678"
MID = "123456789012345"
TMK = "0123456789ABCDEFFEDCBA9876543210"
"""The lab TMK of the fixture's terminal (odd parity, double length)."""
FAR_EXPIRY = "3012"

CARDS: dict[str, tuple[str, str, str, int, int | None, str, bool]] = {
    # name: pan, expiry, pin, balance, limit, status, domestic
    "good": ("6222021234567890128", FAR_EXPIRY, "1234", 100_000_000, None, "active", True),
    "low": ("6222020000000000011", FAR_EXPIRY, "1111", 1_000, None, "active", True),
    "limited": ("6222020000000000052", FAR_EXPIRY, "2222", 10_000_000, 50_000, "active", True),
    "lost": ("6222020000000000029", FAR_EXPIRY, "1234", 100_000, None, "lost", True),
    "stolen": ("6222020000000000037", FAR_EXPIRY, "1234", 100_000, None, "stolen", True),
    "expired": ("6222020000000000045", "2001", "1234", 100_000, None, "active", True),
    "foreign": ("4761739001010010", FAR_EXPIRY, "4321", 5_000_000, None, "active", False),
}


@dataclass
class RunningHost:
    host: str
    port: int
    db_path: Path
    tid: str
    mid: str
    tmk: str
    mac: str
    cards: dict[str, TestCard]
    hsm: HsmClient
    terminals: dict[str, tuple[str, str]] = field(default_factory=dict)

    async def add_terminal(self, tid: str, mac: str = "x919", tmk: str = TMK) -> TestTerminal:
        """Provision another terminal of the same merchant; returns its (unconnected) kit."""
        await add_terminal(self.db_path, self.hsm, tid, self.mid, tmk_hex=tmk, mac=mac)
        self.terminals[tid] = (tmk, mac)
        return self.terminal(tid)

    def terminal(self, tid: str | None = None) -> TestTerminal:
        """A test terminal (use ``async with``) for ``tid`` (default: the fixture's)."""
        tid = tid or self.tid
        tmk, mac = self.terminals[tid]
        return TestTerminal(self.host, self.port, tid, self.mid, tmk, mac)


async def provision(db_path: Path, hsm: HsmClient) -> dict[str, TestCard]:
    await add_merchant(db_path, MID, "Lab Coffee Shop")
    await add_terminal(db_path, hsm, TID, MID, tmk_hex=TMK)
    cards = {}
    for name, (pan, expiry, pin, balance, limit, status, domestic) in CARDS.items():
        await add_card(db_path, hsm, pan, expiry, pin, balance, limit, status, domestic)
        cards[name] = TestCard(pan, expiry, pin, track2_of(pan, expiry), balance)
    return cards


PG_ENV = "POSHOST_TEST_PG"
"""The maintenance URL of the test cluster (scripts/test exports it when it started one)."""
_pg_names = itertools.count(1)


def pg_url_or_skip() -> str:
    """The test cluster's URL; without one the test skips with one clear line (fails when
    ``CI=true``: there the cluster is part of the run)."""
    url = os.environ.get(PG_ENV)
    if not url:
        reason = (f"PostgreSQL tests skipped: no test cluster ({PG_ENV} unset; scripts/test"
                  " starts one when initdb/pg_ctl are installed)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason.replace("skipped", "required under CI=true"))
        pytest.skip(reason)
    return url


def new_pg_database() -> str:
    """A new, empty database in the test cluster; its URL."""
    import psycopg

    from host.pgstore import PgUrl
    base = pg_url_or_skip()
    name = f"poshost_t{os.getpid()}_{next(_pg_names)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return PgUrl(base.rsplit("/", 1)[0] + "/" + name)


@pytest.fixture
def pg_database() -> str:
    """A fresh PostgreSQL database for this test (skips without a cluster)."""
    return new_pg_database()


@pytest.fixture
def store() -> str:
    return "sqlite"


BOTH_STORES = ("sqlite", "pg")
"""A module runs its scenarios on both stores with ``@pytest.fixture(params=BOTH_STORES)
def store(request): return chosen_store(request)``."""


def chosen_store(request: pytest.FixtureRequest) -> str:
    """The store parameter; "pg" skips (one clear line) when there is no test cluster."""
    if request.param == "pg":
        pg_url_or_skip()
    return str(request.param)


def store_target(store: str, tmp_path: Path) -> Path | str:
    return new_pg_database() if store == "pg" else tmp_path / "host.db"


@pytest.fixture
async def running_host(tmp_path: Path, nursery: trio.Nursery, store: str) -> RunningHost:
    db_path = store_target(store, tmp_path)
    hsm = HsmClient.in_process(HsmEngine.test())
    cards = await provision(db_path, hsm)
    config = HostConfig(listen_port=0, db_path=db_path)
    host, port = await nursery.start(run_host, config)
    running = RunningHost(host, port, db_path, TID, MID, TMK, "x919", cards, hsm)
    running.terminals[TID] = (TMK, "x919")
    return running
