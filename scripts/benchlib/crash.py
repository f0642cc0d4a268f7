"""scripts/crash-test: kill -9 the host under load, restart it, then audit the database.

Terminals sell, void and refund (PIN + MAC) against ``poshost serve`` while a killer task
SIGKILLs and restarts the host every few seconds. Afterwards every terminal delivers its
pending reversals and refund advices, the ledger is audited (:mod:`benchlib.ledger`) and every
terminal settles its batch with its own totals, which must come back balanced.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from benchlib import fleet as fleet_mod
from benchlib import ledger, procs
from benchlib.limits import (
    BENCH_TMK_HEX,
    CRASH_INTERVAL,
    CRASH_KILLS,
    CRASH_TERMINALS,
    RECONNECT_BACKOFF,
    REVERSAL_RETRY_DEADLINE,
)
from benchlib.stats import Recorder
from benchlib.term import LOST, BenchTerminal

CRASH_REQUEST_TIMEOUT = 5.0
"""Seconds a crash-test terminal waits for an answer (a killed host answers nothing)."""
PACE_SECONDS = 0.01
"""Pause of each terminal between two transactions (keeps the 2-core machine usable)."""
MIX = (("sale", 0.75), ("void", 0.15), ("refund", 0.10))
"""Share of each operation in the crash-test load."""
SETTLE_BALANCED = 1


@dataclass
class CrashPlan:
    terminals: int = CRASH_TERMINALS
    kills: int = CRASH_KILLS
    interval: tuple[float, float] = CRASH_INTERVAL
    tail_seconds: float = 1.0
    """Seconds of load after the last restart."""
    seed: int = 8
    workers: int = 0
    """``poshost serve --workers``: kill -9 hits the writer process; its workers must exit
    without answering what they hold."""
    pg: bool = False
    """The hosts share a PostgreSQL database (benchlib.pg) instead of a SQLite file."""
    instances: int = 1
    """Host instances on that database (--pg); terminals have them all as primary and
    secondaries, and each kill hits one instance, chosen at random."""


async def _operate(t: BenchTerminal, stop: trio.Event, rng: random.Random) -> None:
    ops = [name for name, _ in MIX]
    weights = [w for _, w in MIX]
    while not stop.is_set():
        op = rng.choices(ops, weights)[0]
        try:
            if op == "sale":
                await t.sale()
            elif op == "void":
                await t.void()
            else:
                await t.refund()
        except LOST:
            await trio.sleep(RECONNECT_BACKOFF)
        await trio.sleep(PACE_SECONDS)


async def _killer(servers: list[procs.Server], plan: CrashPlan, rng: random.Random,
                  kills: list[dict[str, Any]]) -> None:
    for _ in range(plan.kills):
        await trio.sleep(rng.uniform(*plan.interval))
        server = rng.choice(servers)
        server.kill()
        down = time.monotonic()
        await trio.to_thread.run_sync(server.start)
        kills.append({"instance": servers.index(server),
                      "restart_s": round(time.monotonic() - down, 3)})
    await trio.sleep(plan.tail_seconds)


async def crash_session(server: procs.Server, db: Path | str, fleet: fleet_mod.Fleet,
                        plan: CrashPlan, others: tuple[procs.Server, ...] = ()
                        ) -> dict[str, Any]:
    """``others``: more instances on the same (PostgreSQL) database."""
    rng = random.Random(plan.seed)
    recorder = Recorder()
    tmk = bytes.fromhex(BENCH_TMK_HEX)
    servers = [server, *others]
    terminals = []
    for i, (tid, pan) in enumerate(zip(fleet.tids[: plan.terminals], fleet.pans,
                                       strict=False)):
        order = servers[i % len(servers):] + servers[: i % len(servers)]  # spread primaries
        terminals.append(BenchTerminal(
            "127.0.0.1", order[0].port, tid, fleet.mid, tmk, pan, recorder,
            timeout=CRASH_REQUEST_TIMEOUT, rng=random.Random(rng.random()),
            alternates=tuple(("127.0.0.1", s.port) for s in order[1:])))
    opening = fleet_mod.balances(db)
    kills: list[dict[str, Any]] = []
    stop = trio.Event()
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for t in terminals:
            nursery.start_soon(_operate, t, stop, random.Random(rng.random()))
        await _killer(servers, plan, rng, kills)
        stop.set()
    load_s = time.monotonic() - started
    deadline = trio.current_time() + REVERSAL_RETRY_DEADLINE
    async with trio.open_nursery() as nursery:
        for t in terminals:
            nursery.start_soon(t.run_until_quiet, deadline)
    audit = ledger.check(db, terminals, opening)
    settled: dict[str, int] = {}
    for t in terminals:
        settled[t.tid] = await t.settle()
        await t.close()
    unbalanced = [tid for tid, r in settled.items() if r != SETTLE_BALANCED]
    j = [t.journal for t in terminals]
    return {
        "store": "postgresql" if plan.pg else "sqlite", "instances": len(servers),
        "terminals": len(terminals), "kills": len(kills), "restarts": kills,
        "load_seconds": round(load_s, 2),
        "approved_sales": sum(len(x.sales) for x in j),
        "standing_voids": sum(len(x.voids) for x in j),
        "refunds": sum(len(x.refunds) for x in j),
        "reversals_sent": sum(x.reversals_sent for x in j),
        "lost_or_bad_responses": recorder.summary(load_s)["error_count"],
        "rows": audit.rows, "approvals_checked": audit.approvals_checked,
        "ledger_problems": audit.problems, "unbalanced_settlements": unbalanced,
        "ok": audit.ok and not unbalanced,
    }


def run(plan: CrashPlan, workdir: Path) -> dict[str, Any]:
    if plan.pg:
        from benchlib import pg
        with pg.cluster(workdir) as maintenance:
            return _run(plan, workdir, pg.new_database(maintenance, "poshost_crash"))
    return _run(plan, workdir, workdir / "crash.db")


def _run(plan: CrashPlan, workdir: Path, db: Path | str) -> dict[str, Any]:
    fleet = trio.run(fleet_mod.provision, db, plan.terminals)
    if plan.instances > 1:
        import contextlib
        servers = []
        for i in range(plan.instances):
            port = procs.free_port()
            servers.append(procs.Server(procs.host_argv(port, db, workers=plan.workers), port,
                                        workdir / f"host{i}.log"))
        with contextlib.ExitStack() as running:
            for s in servers:
                running.enter_context(s)
            result = trio.run(crash_session, servers[0], db, fleet, plan, tuple(servers[1:]))
        result["host_starts"] = sum(s.starts for s in servers)
        return result
    port = procs.free_port()
    server = procs.Server(procs.host_argv(port, db, workers=plan.workers), port,
                          workdir / "host.log")
    with server:
        result = trio.run(crash_session, server, db, fleet, plan)
    result["host_starts"] = server.starts
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/crash-test",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=CRASH_TERMINALS)
    parser.add_argument("--kills", type=int, default=CRASH_KILLS)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="poshost serve --workers")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--pg", action="store_true",
                        help="hosts on PostgreSQL (POSHOST_TEST_PG's cluster, or a throw-away"
                             " one started with initdb/pg_ctl)")
    parser.add_argument("--instances", type=int, default=1,
                        help="host instances on the one database (with --pg)")
    args = parser.parse_args(argv)
    if args.instances > 1 and not args.pg:
        parser.error("--instances N needs --pg (SQLite is one host's file)")
    plan = CrashPlan(terminals=args.terminals, kills=args.kills, seed=args.seed,
                     workers=args.workers, pg=args.pg, instances=args.instances)
    workdir = Path(tempfile.mkdtemp(prefix="poshost-crash-"))
    try:
        result = run(plan, workdir)
        print(json.dumps(result, indent=2))
    finally:
        if args.keep:
            print(f"work directory: {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    print("crash test " + ("PASSED" if result["ok"] else "FAILED"), file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
