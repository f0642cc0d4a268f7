"""scripts/bench-chip: chip (EMV) sales next to swipe sales, on the same host process.

One ``poshost serve`` on a fleet whose cards are also chip cards (issuer key of their BIN,
PSN 01). ``posterm load`` runs the same closed-loop sale load by swipe, then by chip (each
sale an ARQC the host verifies through KW, a tag 91 ARPC the emulated card checks). A chip
sale costs the host two more HSM calls (verify the ARQC, make the ARPC) and the F55 codec.
Results are printed and written to bench-results/bench-chip-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchlib import procs
from benchlib.benchmain import posterm_load
from benchlib.fleet import provision
from benchlib.limits import RESULTS_DIR

QUICK_TERMINALS, TERMINALS = 10, 50
QUICK_SECONDS, SECONDS = 3.0, 10.0
BENCH_IMK_AC = "9E15204313F7318ACB79B90BD986AD29"
"""The issuer key of the fleet's BIN (protocol.md section 8's lab key)."""


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


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
                cpu0 = server.cpu_seconds()
                point = posterm_load(port, fleet, n, seconds, None, work, extra)
                cpu = server.cpu_seconds() - cpu0
                results[label] = {"approved_per_s": point["approved_per_s"],
                                  "latency_ms": point["latency_ms"],
                                  "response_codes": point["response_codes"],
                                  "errors": point["errors"],
                                  "host_cpu_us_per_txn": round(
                                      cpu / max(point["transactions"], 1) * 1e6, 1)}
                _log(f"{label:>5}: {point['approved_per_s']} approved sales/s, p50"
                     f" {point['latency_ms']['p50']} ms, p99 {point['latency_ms']['p99']} ms,"
                     f" host CPU {results[label]['host_cpu_us_per_txn']} us/sale,"
                     f" codes {point['response_codes']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-chip-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    _log(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
