"""Issue 19 (b), (f), (g) at the host: provisioning on a live LMK that is not Authorised,
files created 0600, and the operator's defences for unMACed management traffic (allow-list of
terminal source addresses, alert on an unexpected peer), over real TCP and a real SQLite
file."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from host.app import HostConfig, run_host
from host.cli import main
from host.db import open_store
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine, SecurityPolicy
from hsm_sim.errors import HsmError
from hsm_sim.lmk import generate_lmk_file
from specs.composite import SettlementTotals, Totals
from tests.conftest import MID, TID, TMK, provision
from tests.hostkit import TestTerminal

PAN = "6222021234567890128"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def poshost(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


# --------------------------------------------------------------------------- (b)


def test_provisioning_on_a_live_lmk_says_it_needs_the_authorised_state(tmp_path: Path) -> None:
    lmk = tmp_path / "lmk"
    generate_lmk_file(lmk)
    db = str(tmp_path / "live.db")
    common = ("--db", db, "--lmk", str(lmk))
    assert poshost("init", *common)[0] == 0
    card = ("card", "add", "--pan", PAN, "--expiry", "3012", "--pin", "1234",
            "--balance", "100.00", *common)
    code, out = poshost(*card)
    assert code == 1 and "Authorised state" in out and "error 17" in out, out
    assert "1234" not in out.replace(PAN, "")  # no PIN in the message
    code, out = poshost(*card, "--authorise")
    assert code == 0 and "added" in out, out
    # the test LMK's embedded HSM is Authorised for provisioning out of the box
    test_db = str(tmp_path / "test.db")
    assert poshost("init", "--db", test_db, "--demo")[0] == 0


# --------------------------------------------------------------------------- (f)


async def test_database_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    db = tmp_path / "host.db"
    await provision(db, HsmClient.in_process(HsmEngine.test()))
    conn = open_store(db)  # WAL mode: -wal and -shm exist while it is open
    try:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('probe', '1')")
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{db}{suffix}")
            assert path.exists() and mode_of(path) == 0o600, suffix
    finally:
        conn.close()
    # a database made before (0644) is narrowed when opened
    os.chmod(db, 0o644)
    open_store(db).close()
    assert mode_of(db) == 0o600


# --------------------------------------------------------------------------- (g)


async def _host(tmp_path: Path, nursery: trio.Nursery, **settings: object
                ) -> tuple[str, int]:
    db = tmp_path / "host.db"
    await provision(db, HsmClient.in_process(HsmEngine.test()))
    config = HostConfig(listen_host="127.0.0.1", listen_port=0, db_path=db, **settings)
    return await nursery.start(run_host, config)


async def _terminal_from(host: str, port: int, source: str) -> TestTerminal:
    t = TestTerminal(host, port, TID, MID, TMK)
    await t.connect(local_address=source)
    return t


async def test_allow_list_closes_connections_from_other_addresses(
        tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    """The attack: anyone who reaches the port signs on as another terminal (re-keys it). With
    an allow-list that excludes the attacker's address the connection is closed unanswered."""
    caplog.set_level(logging.WARNING, logger="poshost.net")
    host, port = await _host(tmp_path, nursery, allow_peers=("127.0.0.1/32",))
    outsider = await _terminal_from(host, port, "127.0.0.2")
    with pytest.raises((AssertionError, trio.BrokenResourceError)):
        await outsider.sign_on()  # the host closed it: no answer at all
    await outsider.__aexit__()
    assert any("refused: not in the --allow-peer list" in r.getMessage()
               for r in caplog.records)
    inside = await _terminal_from(host, port, "127.0.0.1")
    try:
        assert (await inside.sign_on()).code == "00"
    finally:
        await inside.__aexit__()


async def test_alert_on_management_traffic_from_an_unexpected_peer(
        tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    from host.observe import HttpSettings
    from tests.test_host_observability import http_get

    caplog.set_level(logging.WARNING, logger="poshost")
    http = HttpSettings(port=0)
    host, port = await _host(tmp_path, nursery, terminal_peers=(f"{TID}=127.0.0.1",),
                             http=http)
    zero = SettlementTotals(Totals(0, 0, 0, 0), Totals(0, 0, 0, 0))
    good = await _terminal_from(host, port, "127.0.0.1")
    try:
        assert (await good.sign_on()).code == "00"
    finally:
        await good.__aexit__()
    assert not [r for r in caplog.records if "ALERT" in r.getMessage()]
    rogue = await _terminal_from(host, port, "127.0.0.3")
    rogue.batch = good.batch
    try:
        assert (await rogue.sign_on()).code == "00"  # the contract: still answered
        assert (await rogue.settle(zero)).code == "00"
    finally:
        await rogue.__aexit__()
    alerts = [r.getMessage() for r in caplog.records if "ALERT" in r.getMessage()]
    assert any(f"tid={TID} sign_on from unexpected peer 127.0.0.3" in a for a in alerts)
    assert any(f"tid={TID} settlement from unexpected peer 127.0.0.3" in a for a in alerts)
    assert http.bound is not None  # and the operator's dashboard counts them
    for _ in range(50):  # the figures are sampled once a second
        _, _, body = await http_get(http.bound, "/metrics")
        if 'poshost_peer_alerts_total{kind="settlement"} 1.0' in body.decode():
            break
        await trio.sleep(0.1)
    text = body.decode()
    assert 'poshost_peer_alerts_total{kind="sign_on"} 1.0' in text
    assert 'poshost_peer_alerts_total{kind="settlement"} 1.0' in text


async def test_enforced_terminal_peers_leave_a_rogue_sign_on_unanswered(
        tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    """The attack: from inside the network, sign on as another terminal (its keys change, its
    real terminal gets A0) or settle its batch. Declared and enforced: closed unanswered."""
    caplog.set_level(logging.WARNING, logger="poshost")
    host, port = await _host(tmp_path, nursery, terminal_peers=(f"{TID}=127.0.0.1",),
                             enforce_terminal_peers=True)
    good = await _terminal_from(host, port, "127.0.0.1")
    try:
        assert (await good.sign_on()).code == "00"
        keys = good.mak
        rogue = await _terminal_from(host, port, "127.0.0.5")
        with pytest.raises((AssertionError, trio.BrokenResourceError)):
            await rogue.sign_on()
        await rogue.__aexit__()
        await good.reconnect()
        assert good.mak == keys
        from tests.conftest import CARDS
        from tests.hostkit import TestCard, track2_of
        pan, expiry, pin, balance = CARDS["good"][:4]
        card = TestCard(pan, expiry, pin, track2_of(pan, expiry), balance)
        assert (await good.sale(card, 100)).code == "00"  # its keys were not changed
    finally:
        await good.__aexit__()
    assert any("refused (--enforce-terminal-peers)" in r.getMessage() for r in caplog.records)


async def test_alert_learns_the_sign_on_address_when_none_is_declared(
        tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="poshost")
    host, port = await _host(tmp_path, nursery, allow_peers=("127.0.0.0/8",))
    zero = SettlementTotals(Totals(0, 0, 0, 0), Totals(0, 0, 0, 0))
    good = await _terminal_from(host, port, "127.0.0.1")
    try:
        assert (await good.sign_on()).code == "00"
        assert (await good.settle(zero)).code == "00"
    finally:
        await good.__aexit__()
    assert not [r for r in caplog.records if "ALERT" in r.getMessage()]
    rogue = await _terminal_from(host, port, "127.0.0.4")
    rogue.batch, rogue.stan = good.batch, good.stan + 10
    try:
        assert (await rogue.settle(zero)).code in ("00", "77")
    finally:
        await rogue.__aexit__()
    alerts = [r.getMessage() for r in caplog.records if "ALERT" in r.getMessage()]
    assert any(f"tid={TID} settlement from unexpected peer 127.0.0.4 (last sign-on from"
               " 127.0.0.1)" in a for a in alerts), alerts


# --------------------------------------------------------------------------- (f) PAN at rest


def _all_bytes(db: Path) -> bytes:
    return b"".join(Path(f"{db}{s}").read_bytes() for s in ("", "-wal", "-shm")
                    if Path(f"{db}{s}").exists())


async def test_no_clear_pan_at_rest_after_provisioning_and_sales(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """The attack: copy poshost.db and read the card numbers out of it."""
    host, port = await _host(tmp_path, nursery)
    db = tmp_path / "host.db"
    t = TestTerminal(host, port, TID, MID, TMK)
    async with t:
        await t.sign_on()
        from tests.conftest import CARDS
        from tests.hostkit import TestCard, track2_of
        pan, expiry, pin = CARDS["good"][:3]
        card = TestCard(pan, expiry, pin, track2_of(pan, expiry), CARDS["good"][3])
        sale = await t.sale(card, 1_000)
        assert sale.code == "00"
        assert (await t.refund(card, sale, 400)).code == "00"
    data = _all_bytes(db)
    for pan, *_ in CARDS.values():
        assert pan.encode() not in data, "a clear PAN is stored"
    conn = open_store(db)
    try:
        rows = conn.execute("SELECT pan_hash, pan_masked, pan_enc FROM cards").fetchall()
        assert len(rows) == len(CARDS)
        assert all(len(r["pan_hash"]) == 16 and "*" in r["pan_masked"] for r in rows)
        assert conn.execute(
            "SELECT count(*) FROM txns WHERE pan_hash IN (SELECT pan_hash FROM cards)"
        ).fetchone()[0] == 2  # the sale and the refund match their card by the HSM's hash
    finally:
        conn.close()


def test_card_show_reveal_needs_the_authorised_hsm(tmp_path: Path) -> None:
    db = str(tmp_path / "test.db")
    assert poshost("init", "--db", db, "--demo")[0] == 0
    code, out = poshost("card", "show", "--db", db, "--pan", PAN)
    assert code == 0 and PAN not in out and "622202*" in out, out
    card_id = next(line.split()[1] for line in out.splitlines() if line.startswith("id "))
    code, out = poshost("card", "show", "--db", db, "--id", card_id, "--reveal")
    assert code == 0 and f"pan          {PAN}" in out, out  # test LMK: Authorised
    # a live LMK: reveal only with the HSM Authorised
    lmk = tmp_path / "lmk"
    generate_lmk_file(lmk)
    live = str(tmp_path / "live.db")
    common = ("--db", live, "--lmk", str(lmk))
    assert poshost("init", *common)[0] == 0
    assert poshost("card", "add", "--pan", PAN, "--expiry", "3012", "--pin", "1234",
                   "--balance", "1.00", "--authorise", *common)[0] == 0
    code, out = poshost("card", "show", "--pan", PAN, "--reveal", *common)
    assert code == 1 and "Authorised state" in out and PAN not in out, out
    code, out = poshost("card", "show", "--pan", PAN, "--reveal", "--authorise", *common)
    assert code == 0 and PAN in out, out
    assert poshost("card", "set", "--pan", PAN, "--status", "blocked", *common)[0] == 0
    assert "blocked" in poshost("card", "show", "--pan", PAN, *common)[1]


async def test_an_old_database_with_clear_pans_is_upgraded(tmp_path: Path) -> None:
    """Schema upgrade: a database from before (clear `pan`, salted hash) gets the protected
    card table on the first command with the HSM; its records follow to the HSM's hash."""
    from host.db import PanProtector, has_clear_pans
    from host.hsm import check_lmk

    db = tmp_path / "old.db"
    conn = open_store(db)
    conn.execute("DROP TABLE cards")
    conn.execute(
        "CREATE TABLE cards (pan TEXT PRIMARY KEY, expiry TEXT NOT NULL, pvv TEXT NOT NULL,"
        " pvki INTEGER NOT NULL, balance INTEGER NOT NULL, limit_minor INTEGER, status TEXT"
        " NOT NULL, pin_tries INTEGER NOT NULL DEFAULT 0, domestic INTEGER NOT NULL DEFAULT 1,"
        " created TEXT NOT NULL, pan_hash TEXT)")
    salted = PanProtector.load(conn).hash(PAN)
    conn.execute("INSERT INTO cards VALUES (?, '3012', '1234', 1, 500, NULL, 'active', 0, 1,"
                 " '2026-01-01', ?)", (PAN, salted))
    conn.execute("INSERT INTO txns (tid, mid, batch, stan, mti, kind, pan_hash, pan_masked,"
                 " amount, rc, rrn, created, settlement_date) VALUES ('T', 'M', 1, '000001',"
                 " '0200', 'sale', ?, 'x', 100, '00', '1', 'now', 'today')", (salted,))
    conn.close()
    conn = open_store(db)  # opening alone (no HSM) keeps it readable as it was
    assert has_clear_pans(conn)
    hsm = HsmClient.in_process(HsmEngine.test())
    await check_lmk(conn, hsm)
    assert not has_clear_pans(conn)
    row = conn.execute("SELECT * FROM cards").fetchone()
    keys = conn.execute("SELECT value FROM meta WHERE key='pan_hash_key_lmk'").fetchone()[0]
    assert row["pan_hash"] == await hsm.hash_pan(keys, PAN) and row["balance"] == 500
    assert conn.execute("SELECT pan_hash FROM txns").fetchone()[0] == row["pan_hash"]
    conn.close()
    assert PAN.encode() not in _all_bytes(db)


def test_host_log_file_is_private(tmp_path: Path) -> None:

    from tests.test_host_cli import serve_until_ready_then_sigterm

    log = tmp_path / "host.log"
    serve_until_ready_then_sigterm("--listen", "127.0.0.1:0", "--db", str(tmp_path / "s.db"),
                                   "--log-file", str(log))
    assert mode_of(log) == 0o600 and "listening on" in log.read_text()


async def test_the_host_runs_on_an_hsm_with_key_type_002_separation(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """`poshost init --separate-002`: TMKs are 80D and TPKs 70D end to end (sign-on, PIN
    verification, MAC), so the host works with a payShield in that PCI mode."""
    from host.db import set_meta
    from host.hsm import SEPARATION_META
    from tests.conftest import CARDS
    from tests.hostkit import TestCard, track2_of

    db = tmp_path / "host.db"
    conn = open_store(db)
    set_meta(conn, SEPARATION_META, "1")
    conn.close()
    hsm = HsmClient.in_process(HsmEngine.test())
    await provision(db, hsm)
    separated = HsmEngine.test(policy=SecurityPolicy(separate_002=True))
    conn = open_store(db)
    tmk_lmk = conn.execute("SELECT tmk_lmk FROM terminals").fetchone()[0]
    conn.close()
    assert separated.lmk.decrypt_key("80D", tmk_lmk)  # odd parity under the TMK variant
    config = HostConfig(listen_host="127.0.0.1", listen_port=0, db_path=db)
    host, port = await nursery.start(run_host, config)
    pan, expiry, pin, balance = CARDS["good"][:4]
    card = TestCard(pan, expiry, pin, track2_of(pan, expiry), balance)
    async with TestTerminal(host, port, TID, MID, TMK) as t:
        assert (await t.sign_on()).code == "00"
        assert (await t.sale(card, 100)).code == "00"
        assert (await t.sale(card, 100, pin="9999")).code == "55"
    conn = open_store(db)
    pik_lmk = conn.execute("SELECT pik_lmk FROM terminals").fetchone()[0]
    conn.close()
    assert separated.lmk.decrypt_key("70D", pik_lmk)
    with pytest.raises(HsmError):  # the TPK is no 002 key any more
        separated.lmk.decrypt_key("002", pik_lmk)


def test_init_separate_002_only_on_a_new_database(tmp_path: Path) -> None:
    db = str(tmp_path / "sep.db")
    code, out = poshost("init", "--db", db, "--demo", "--separate-002")
    assert code == 0, out
    plain = str(tmp_path / "plain.db")
    assert poshost("init", "--db", plain, "--demo")[0] == 0
    code, out = poshost("init", "--db", plain, "--separate-002")  # chosen at creation only
    assert code != 0 and "already exists" in out, out
