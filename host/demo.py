"""The demo data set of ``poshost init --demo`` (and of ``scripts/run`` on first start): one
merchant, one terminal with a published lab TMK, and cards for every interesting answer."""

from __future__ import annotations

from pathlib import Path

from host.provision import add_card, add_issuer_key, add_merchant, add_terminal
from hsm_sim.client import HsmClient

DEMO_MID = "123456789012345"
DEMO_MERCHANT = "Demo Coffee Shop"
DEMO_TID = "12345678"
DEMO_TMK = "0123456789ABCDEFFEDCBA9876543210"
"""Lab TMK of the demo terminal. Published: for a lab only, never for a real terminal."""
DEMO_EXPIRY = "3012"

DEMO_CARDS: tuple[tuple[str, str, str, str, int, int | None, str, bool], ...] = (
    # what, PAN, expiry, PIN, balance (minor), limit, status, domestic
    ("approved", "6222021234567890128", DEMO_EXPIRY, "1234", 100_000_00, None, "active", True),
    ("51 low balance", "6222020000000000011", DEMO_EXPIRY, "1111", 10_00, None, "active", True),
    ("61 over 500.00", "6222020000000000052", DEMO_EXPIRY, "2222", 100_000_00, 500_00, "active",
     True),
    ("41 lost", "6222020000000000029", DEMO_EXPIRY, "1234", 1_000_00, None, "lost", True),
    ("43 stolen", "6222020000000000037", DEMO_EXPIRY, "1234", 1_000_00, None, "stolen", True),
    ("54 expired", "6222020000000000045", "2001", "1234", 1_000_00, None, "active", True),
    ("foreign card", "4761739001010010", DEMO_EXPIRY, "4321", 50_000_00, None, "active", False),
)


DEMO_BIN = "622202"
DEMO_IMK_AC = "9E15204313F7318ACB79B90BD986AD29"
"""Lab issuer master key (MK-AC) of BIN 622202: protocol.md section 8's worked key. Published:
for a lab only."""
DEMO_CHIP_CARDS: dict[str, str] = {"6222021234567890128": "01"}
"""Demo cards that also carry a chip: PAN -> PSN (section 8's worked card)."""


async def init_demo(db_path: Path | str, hsm: HsmClient) -> list[tuple[str, ...]]:
    """Provision the demo set; returns the rows of the table the CLI prints."""
    await add_merchant(db_path, DEMO_MID, DEMO_MERCHANT)
    await add_terminal(db_path, hsm, DEMO_TID, DEMO_MID, tmk_hex=DEMO_TMK)
    rows = [("merchant", DEMO_MID, DEMO_MERCHANT, ""),
            ("terminal", DEMO_TID, f"TMK {DEMO_TMK} (lab)", "MAC x919")]
    key = await add_issuer_key(db_path, hsm, DEMO_BIN, DEMO_IMK_AC)
    rows.append(("issuer", f"BIN {DEMO_BIN}", f"IMK-AC {DEMO_IMK_AC} (lab)",
                 f"KCV {key['kcv']} emv-csk"))
    for what, pan, expiry, pin, balance, limit, status, domestic in DEMO_CARDS:
        psn = DEMO_CHIP_CARDS.get(pan)
        await add_card(db_path, hsm, pan, expiry, pin, balance, limit, status, domestic,
                       chip_psn=psn)
        rows.append(("card", pan, f"exp {expiry} PIN {pin} bal {balance / 100:.2f}",
                     what + ("" if psn is None else f" + chip PSN {psn}")))
    return rows
