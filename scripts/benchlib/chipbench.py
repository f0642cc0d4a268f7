"""scripts/bench-chip: chip (EMV) sales next to swipe sales, on the same host process.

One ``poshost serve`` on a fleet whose cards are also chip cards (issuer key of their BIN,
PSN 01). ``posterm load`` runs the same closed-loop sale load by swipe, then by chip (each
sale an ARQC the host verifies through KW, a tag 91 ARPC the emulated card checks). A chip
sale costs the host two more HSM calls (verify the ARQC, make the ARPC) and the F55 codec.
Results are printed and written to bench-results/bench-chip-<time>.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import trio

from benchlib import procs
from benchlib.benchmain import measured_point, write_results
from benchlib.fleet import provision
from benchlib.limits import RESULTS_DIR

QUICK_TERMINALS, TERMINALS = 10, 50
QUICK_SECONDS, SECONDS = 3.0, 10.0
BENCH_IMK_AC = "9E15204313F7318ACB79B90BD986AD29"
"""The issuer key of the fleet's BIN (protocol.md section 8's lab key)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-chip", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--terminals", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--out", type=Path, default=procs.ROOT / RESULTS_DIR)
    args = parser.parse_args(argv)
    n = args.terminals or (QUICK_TERMINALS if args.quick else TERMINALS)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    with tempfile.TemporaryDirectory(prefix="bench-chip-") as tmp:
        work = Path(tmp)
        db = work / "host.db"
        fleet = trio.run(lambda: provision(db, n, chip_imk=BENCH_IMK_AC))
        port = procs.free_port()
        argv_ = [*procs.poshost_command(), "serve", "--listen", f"127.0.0.1:{port}",
                 "--db", str(db), "--hsm", "embedded", "--lmk", "test", "--no-demo"]
        results: dict[str, Any] = {"terminals": n, "seconds": seconds,
                                   "note": "closed loop, sale=100, PIN, one card per terminal"}
        with procs.Server(argv_, port, work / "host.log") as server:
            for label, extra in (("swipe", ()),
                                 ("chip", ("--chip", "--imk-ac", BENCH_IMK_AC))):
                results[label] = measured_point(server, label, port, fleet, n, seconds, work,
                                                extra)
    write_results(args.out, "bench-chip", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
