"""scripts/fuzz: hostile input against ``poshost serve`` while good terminals keep selling.

The good terminals first sell at a fixed pace without any fuzz (baseline p99), then keep the
same pace while a separate process (:mod:`benchlib.hostile`) throws hostile frames, slow-drip
and stalled senders and a connection flood at the host. Pass: the host is still up and serves
a fresh terminal, every hostile frame got a well-formed answer (30 unless mutated) or a clean
close, no connection is left behind (open descriptors back to the baseline), RSS grew less
than the allowance, and the good terminals' p99 under fuzz is at most ``P99_FACTOR`` times
the baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchlib import fleet as fleet_mod
from benchlib import hostile, procs
from benchlib.limits import (
    BENCH_TMK_HEX,
    CARD_BALANCE,
    CARD_EXPIRY,
    FLOOD_CONNECTIONS,
    FUZZ_FRAMES,
    FUZZ_WORKERS,
    GOOD_RATE,
    GOOD_TERMINALS,
    HOSTILE_RATE,
    P99_FACTOR,
    POLL_INTERVAL,
    RSS_GROWTH_ALLOWED,
    SLOW_DRIP_INTERVAL,
    SLOW_DRIP_SENDERS,
    TEST_PIN,
)
from benchlib.load import _drive, sign_on_all
from benchlib.stats import Recorder
from benchlib.term import BenchTerminal

BASELINE_SECONDS = 10.0
FD_SETTLE_TIMEOUT = 20.0
"""Seconds the host gets to close every hostile connection after the fuzz ended."""
FD_SLACK = 4
"""Descriptors the host may hold above the baseline afterwards (WAL, log rotation ...)."""
FUZZ_PROCESS_TIMEOUT = 1800.0
THROWER_NICE = 19
"""The hostile process runs at this nice level: attackers bring their own CPUs, and on this
one shared box an un-niced thrower takes the host's core away (--thrower-nice 0 measures
that too)."""


async def _provision(db: Path, good: int) -> fleet_mod.Fleet:
    from host.provision import add_card, add_merchant, add_terminal
    from hsm_sim.client import HsmClient
    from hsm_sim.commands import HsmEngine

    fleet = await fleet_mod.provision(db, good)
    hsm = HsmClient.in_process(HsmEngine.test())
    try:
        await add_merchant(db, hostile.FUZZ_MID, "fuzz merchant")
        await add_terminal(db, hsm, hostile.FUZZ_TID, hostile.FUZZ_MID, tmk_hex=BENCH_TMK_HEX)
        await add_card(db, hsm, hostile.FUZZ_PAN, CARD_EXPIRY, TEST_PIN, CARD_BALANCE)
    finally:
        await hsm.aclose()
    return fleet


async def _paced(terminals: list[BenchTerminal], recorder: Recorder, rate: float,
                 seconds: float | None, done: trio.Event | None) -> dict[str, Any]:
    interval = len(terminals) / rate
    rng = random.Random(1)
    recorder.reset()
    recorder.recording = True
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for t in terminals:
            nursery.start_soon(_drive, t, math.inf, interval, rng)
        if seconds is not None:
            await trio.sleep(seconds)
        if done is not None:
            await done.wait()
        recorder.recording = False
        nursery.cancel_scope.cancel()
    return recorder.summary(trio.current_time() - started)


async def _wait_fds(server: procs.Server, limit: int) -> int:
    deadline = trio.current_time() + FD_SETTLE_TIMEOUT
    while (n := server.open_fds()) > limit and trio.current_time() < deadline:
        await trio.sleep(POLL_INTERVAL * 10)
    return n


async def session(server: procs.Server, fleet: fleet_mod.Fleet, args: argparse.Namespace,
                  workdir: Path) -> dict[str, Any]:
    recorder = Recorder(recording=False)
    terminals = fleet.terminals("127.0.0.1", server.port, len(fleet.tids), recorder)
    await sign_on_all(terminals)
    baseline = await _paced(terminals, recorder, args.rate, args.baseline, None)
    before = {**server.status(), "fds": server.open_fds()}
    cpu_before = server.cpu_seconds()
    out = workdir / "hostile.json"
    argv = [*_niced(args.thrower_nice), sys.executable, "-m", "benchlib.hostile",
            "--port", str(server.port), "--frames", str(args.frames),
            "--workers", str(args.workers),
            "--seed", str(args.seed), "--drips", str(args.drips),
            "--drip-interval", str(args.drip_interval), "--flood", str(args.flood),
            "--rate", str(args.hostile_rate), "--out", str(out),
            *(["--kinds", args.kinds] if args.kinds else [])]
    done = trio.Event()
    rc: list[int] = []
    started = time.monotonic()

    async def thrower() -> None:
        proc = await trio.run_process(argv, check=False, cwd=procs.ROOT,
                                      env=_env(), stdout=None, stderr=None)
        rc.append(proc.returncode)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(thrower)
        under_fuzz = await _paced(terminals, recorder, args.rate, None, done)
    fuzz_s = time.monotonic() - started
    host_cpu = server.cpu_seconds() - cpu_before
    for t in terminals:
        await t.close()
    fds_after = await _wait_fds(server, before["fds"] + FD_SLACK)
    after = {**server.status(), "fds": fds_after}
    fresh = BenchTerminal("127.0.0.1", server.port, fleet.tids[0], fleet.mid,
                          bytes.fromhex(fleet.tmk_hex), fleet.pans[0])
    probe = await fresh.sale()
    await fresh.close()
    thrown = json.loads(out.read_text()) if out.exists() else {}
    ratio = under_fuzz["latency_ms"]["p99"] / max(baseline["latency_ms"]["p99"], 1e-9)
    checks = {
        "host_alive": server.alive(),
        "fresh_terminal_approved": probe is not None and probe.get("39") == "00",
        "thrower_exit_0": rc == [0],
        "no_violations": not thrown.get("violations", ["no result"]),
        "fds_back_to_baseline": fds_after <= before["fds"] + FD_SLACK,
        "rss_growth_ok": after["VmRSS"] - before["VmRSS"] <= RSS_GROWTH_ALLOWED,
        "good_errors_zero": under_fuzz["error_count"] == 0,
        "p99_within_factor": ratio <= P99_FACTOR,
    }
    return {"frames": thrown.get("frames", 0), "fuzz_seconds": round(fuzz_s, 1),
            "hostile_rate": args.hostile_rate, "host_cpu_s_during_fuzz": round(host_cpu, 2),
            "thrown": thrown, "baseline": baseline, "under_fuzz": under_fuzz,
            "p99_ratio": round(ratio, 2), "host_before": before, "host_after": after,
            "rss_growth": after["VmRSS"] - before["VmRSS"], "checks": checks,
            "ok": all(checks.values())}


def _niced(level: int) -> list[str]:
    return ["nice", "-n", str(level)] if level else []


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = f"{procs.ROOT / 'scripts'}{os.pathsep}{procs.ROOT}"
    return env


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    db = workdir / "fuzz.db"
    fleet = trio.run(_provision, db, args.good)
    port = procs.free_port()
    argv = procs.host_argv(port, db, profile_to=args.profile,
                           workers=args.host_workers)
    with procs.Server(argv, port, workdir / "host.log") as server:
        result = trio.run(session, server, fleet, args, workdir)
        result["host_exit_after_sigterm"] = server.stop()
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=FUZZ_FRAMES)
    p.add_argument("--workers", type=int, default=FUZZ_WORKERS)
    p.add_argument("--good", type=int, default=GOOD_TERMINALS)
    p.add_argument("--rate", type=float, default=GOOD_RATE)
    p.add_argument("--baseline", type=float, default=BASELINE_SECONDS)
    p.add_argument("--drips", type=int, default=SLOW_DRIP_SENDERS)
    p.add_argument("--drip-interval", type=float, default=SLOW_DRIP_INTERVAL)
    p.add_argument("--flood", type=int, default=FLOOD_CONNECTIONS)
    p.add_argument("--hostile-rate", type=float, default=HOSTILE_RATE,
                   help="hostile frames per second (0: as fast as the thrower can)")
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--thrower-nice", type=int, default=THROWER_NICE,
                   help="nice level of the hostile process (0: same priority as the host)")
    p.add_argument("--host-workers", type=int, default=0, help="poshost serve --workers")
    p.add_argument("--kinds", help="comma-separated hostile frame kinds (default all)")
    p.add_argument("--profile", type=Path, help="run the host under cProfile, stats here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, db)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="poshost-fuzz-"))
    try:
        result = run(args, workdir)
    finally:
        if args.keep:
            print(f"work directory: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = {k: v for k, v in result.items() if k not in ("thrown",)}
    summary["outcomes"] = result["thrown"].get("by_outcome", {})
    summary["violations"] = result["thrown"].get("violations", [])
    summary["flood"] = result["thrown"].get("flood", {})
    summary["good_errors"] = result["under_fuzz"]["errors"]
    print(json.dumps(summary, indent=2))
    print("fuzz " + ("PASSED" if result["ok"] else "FAILED"), file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
