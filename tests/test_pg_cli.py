"""``poshost`` commands on PostgreSQL: ``--db postgresql://`` and POSHOST_DB, ``init`` that
creates then upgrades the schema, and ``db copy`` moving a SQLite lab over (and back)."""

from __future__ import annotations

from pathlib import Path

import trio
from click.testing import CliRunner

from host.app import HostConfig, run_host
from host.cli import main
from host.db import MIGRATIONS, connect, migrate, schema_version
from tests.conftest import RunningHost, new_pg_database


def poshost(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


def test_init_creates_then_upgrades_and_env_names_the_database() -> None:
    url = new_pg_database()
    code, out = poshost("init", "--demo", "--db", url)
    assert code == 0 and "database ready" in out, out
    code, out = poshost("init", "--db", url)
    assert code == 0 and "schema up to date (version" in out, out
    code, out = poshost("terminal", "list", env={"POSHOST_DB": url})
    assert code == 0 and "12345678" in out, out
    code, out = poshost("card", "list", env={"POSHOST_DB": url})
    assert code == 0 and "622202*********0128" in out, out


def test_a_new_migration_applies_once_on_both_stores(tmp_path: Path) -> None:
    for target in (new_pg_database(), str(tmp_path / "m.db")):
        conn = connect(target)
        try:
            from host.db import initialise
            initialise(conn)
            before = schema_version(conn)
            MIGRATIONS.append((before + 1, "test: a routes table and a txns column",
                               "CREATE TABLE IF NOT EXISTS routes_test (id INTEGER PRIMARY KEY,"
                               " name TEXT NOT NULL, amount INTEGER NOT NULL);"
                               " ALTER TABLE txns ADD COLUMN route_test TEXT"))
            try:
                assert migrate(conn) == before + 1
                assert migrate(conn) == before + 1  # once
                row = conn.execute("INSERT INTO routes_test (name, amount) VALUES (?, ?)",
                                   ("a", 3 * 10**12))
                assert row.lastrowid == 1
                conn.execute("SELECT route_test FROM txns").fetchall()
            finally:
                MIGRATIONS.pop()
        finally:
            conn.close()


async def test_db_copy_moves_a_sqlite_lab_to_postgresql_and_back(
        running_host: RunningHost, nursery: trio.Nursery, tmp_path: Path) -> None:
    good = running_host.cards["good"]
    async with running_host.terminal() as t:
        await t.sign_on()
        sale = await t.sale(good, 1_234)
        assert sale.code == "00"
    url = new_pg_database()
    code, out = await trio.to_thread.run_sync(
        lambda: poshost("db", "copy", "--from", str(running_host.db_path), "--to", url))
    assert code == 0 and "copied" in out and "txns 1" in out, out
    code, out = await trio.to_thread.run_sync(
        lambda: poshost("db", "copy", "--from", str(running_host.db_path), "--to", url))
    assert code == 1 and "already holds" in out, out
    host, port = await nursery.start(run_host, HostConfig(listen_port=0, db_path=url))
    t.host, t.port = host, port
    async with t:
        again = await t.exchange(sale.request)  # the repeat is known on the new store
        assert again.code == "00" and again["37"] == sale["37"]
        assert (await t.sale(good, 100)).code == "00"  # keys and batch came along
    from host.metrics import read_store_figures
    figures = await trio.to_thread.run_sync(read_store_figures, url)  # pooled connection
    assert [r["amount"] for r in figures.recent_txns] == [100, 1_234]
    assert figures.terminals == 1 and figures.signed_on == 1
    back = tmp_path / "back.db"
    code, out = await trio.to_thread.run_sync(
        lambda: poshost("db", "copy", "--from", url, "--to", str(back)))
    assert code == 0, out
    conn = connect(back)
    try:
        assert [r[0] for r in conn.execute("SELECT amount FROM txns ORDER BY id")] == [1_234, 100]
    finally:
        conn.close()


def test_unreachable_postgresql_is_one_line_and_exit_1() -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    code, out = poshost("terminal", "list", "--db", f"postgresql://lab@127.0.0.1:{port}/x")
    assert code == 1 and out.startswith("poshost: cannot reach PostgreSQL:"), out
    assert "Traceback" not in out and len(out.splitlines()) == 1
