"""The chip commands of both CLIs: poshost issuer-key / card add --chip / init --demo / txn
list, and posterm card add / sale --card / balance --card / --trace, against the real host."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from host.cli import main as poshost
from host.provision import add_card, add_issuer_key
from specs.pretty import mask_pan
from tests.test_term_cli import arun, init_args

IMK = "9E15204313F7318ACB79B90BD986AD29"
PAN = "6222021111222233334"


def host_cli(*args: str) -> Any:
    return CliRunner().invoke(poshost, list(args), catch_exceptions=False)


def test_poshost_issuer_key_card_and_demo(tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    r = host_cli("issuer-key", "add", "--bin", "622202", "--imk-ac", IMK, "--db", db)
    assert r.exit_code == 0 and "KCV 850571" in r.output and IMK not in r.output
    r = host_cli("issuer-key", "add", "--bin", "476173", "--db", db)
    assert r.exit_code == 0 and "component 1:" in r.output and "component 2:" in r.output
    r = host_cli("issuer-key", "add", "--bin", "622202", "--db", db)
    assert r.exit_code == 1 and "already has an issuer key" in r.output
    r = host_cli("issuer-key", "add", "--bin", "62", "--db", db)
    assert r.exit_code == 2 and "6-11 digits" in r.output
    r = host_cli("card", "add", "--pan", PAN, "--expiry", "3012", "--pin", "1234",
                 "--balance", "100.00", "--chip", "--psn", "02", "--db", db)
    assert r.exit_code == 0 and "chip, PSN 02" in r.output and PAN not in r.output
    r = host_cli("issuer-key", "list", "--db", db)
    assert "622202" in r.output and "850571" in r.output
    r = host_cli("card", "list", "--json", "--db", db)
    assert [c["chip_psn"] for c in json.loads(r.output)] == ["02"]

    demo = str(tmp_path / "demo.db")
    r = host_cli("init", "--demo", "--db", demo)
    assert r.exit_code == 0 and "BIN 622202" in r.output and "chip PSN 01" in r.output


async def test_posterm_chip_session(running_host: Any, tmp_path: Path) -> None:
    host = running_host
    await add_issuer_key(host.db_path, host.hsm, "622202", IMK)
    await add_card(host.db_path, host.hsm, PAN, "3012", "1234", 500_00, chip_psn="01")
    state = tmp_path / "t.db"
    assert (await arun(state, *init_args(host.port))).exit_code == 0
    assert (await arun(state, "signon")).exit_code == 0
    r = await arun(state, "card", "add", "--name", "demo", "--pan", PAN, "--psn", "01",
                   "--expiry", "3012", "--imk-ac", IMK)
    assert r.exit_code == 0 and "ICC MK KCV" in r.output and PAN not in r.output
    r = await arun(state, "card", "add", "--name", "x", "--pan", PAN, "--expiry", "3012")
    assert r.exit_code == 2 and "--icc-mk or --imk-ac" in r.output

    r = await arun(state, "--trace", "sale", "12.34", "--card", "demo", "--pin", "1234")
    assert r.exit_code == 0, r.output
    assert "SALE  APPROVED" in r.output and "(chip)" in r.output
    assert "application      UnionPay Debit" in r.output and "TC " in r.output
    assert "ARQC" in r.output and "9F36 application transaction counter" in r.output
    assert "91   issuer authentication data" in r.output and PAN not in r.output

    r = await arun(state, "balance", "--card", "demo", "--pin", "1234", "--contactless",
                   "--json")
    data = json.loads(r.output)
    assert r.exit_code == 0 and data["balance_minor"] == 500_00 - 1234
    assert data["entry"] == "contactless" and data["atc"] == "0002"

    r = await arun(state, "sale", "1.00", "--card", "nosuch", "--no-pin")
    assert r.exit_code == 2 and "no chip card named" in r.output
    r = await arun(state, "sale", "1.00", "--contactless", "--no-pin")
    assert r.exit_code == 2

    r = await arun(state, "void", "--trace", "2", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["status"] == "approved"
    r = await arun(state, "card", "list", "--json")
    assert json.loads(r.output)["cards"][0]["atc"] == 2

    r = await arun(state, "card", "add", "--name", "stubborn", "--pan", PAN, "--expiry", "3012",
                   "--imk-ac", IMK, "--atc", "1000", "--behaviour", "reject-arpc")
    assert r.exit_code == 0
    r = await arun(state, "sale", "5.00", "--card", "stubborn", "--pin", "1234")
    assert r.exit_code == 1 and "SALE  DECLINED BY CARD" in r.output and "AAC" in r.output
    assert "reversal of STAN" in r.output and "(reason 06) sent: 00" in r.output
    r = await arun(state, "reversal")
    assert "nothing pending" in r.output
    r = await arun(state, "balance", "--card", "demo", "--pin", "1234", "--json")
    assert json.loads(r.output)["response_code"] == "05"  # ATC 3 after 1001: a replay
    with sqlite3.connect(host.db_path) as conn:  # the void and the reversal restored it all
        assert conn.execute("SELECT balance FROM cards WHERE pan_masked=?",
                            (mask_pan(PAN),)).fetchone()[0] \
            == 500_00

    r = host_cli("txn", "list", "--db", str(host.db_path), "--json")
    rows = json.loads(r.output)
    assert ("balance", "071", "0002") in [(x["kind"], x["entry_mode"], x["atc"]) for x in rows]
    sale_row = next(x for x in rows if x["kind"] == "sale" and x["atc"] == "0001")
    assert sale_row["entry_mode"] == "051" and sale_row["status"] == "voided"
    stubborn = next(x for x in rows if x["kind"] == "sale" and x["atc"] == "03E9")
    assert stubborn["status"] == "reversed" and stubborn["reversal_reason"] == "06"
    assert sale_row["tvr"] == "0000000000" and sale_row["arqc"] == "ok"
