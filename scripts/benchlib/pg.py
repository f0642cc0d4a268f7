"""PostgreSQL for the crash test and the bench (``--pg``): a new database in the cluster
``POSHOST_TEST_PG`` names, or in a throw-away cluster started here (scripts/pg-cluster) and
stopped when done."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

CLUSTER_SCRIPT = Path(__file__).resolve().parents[1] / "pg-cluster"


@contextlib.contextmanager
def cluster(workdir: Path) -> Iterator[str]:
    """The maintenance URL of a running cluster (started in a directory of its own when
    needed: under ``workdir`` the cluster's unprivileged owner could not reach it)."""
    url = os.environ.get("POSHOST_TEST_PG")
    if url:
        yield url
        return
    import shutil
    import tempfile
    where = Path(tempfile.mkdtemp(prefix="poshost-pg-"))  # its own: the cluster's owner
    started = subprocess.run([str(CLUSTER_SCRIPT), "start", str(where)], capture_output=True,
                             text=True, check=False)
    if started.returncode != 0:
        raise SystemExit(f"--pg: cannot start PostgreSQL: {started.stderr.strip()}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "stop", str(where)], check=False)
        shutil.rmtree(where, ignore_errors=True)


def new_database(maintenance_url: str, prefix: str = "poshost_bench") -> str:
    """A new empty database in the cluster; its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return maintenance_url.rsplit("/", 1)[0] + "/" + name
