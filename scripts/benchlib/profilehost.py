"""scripts/profile-host: the host under closed-loop PIN + MAC sale load, profiled.

The host runs as its own process on a temp database with N terminals signed on (one card
each); load processes (their CPU is not the host's) drive the sales. Reports approved sales/s,
p50/p99, host CPU per transaction, and with --profile the host's cProfile top entries. With
--idle N, RSS per idle connection.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from benchlib import fleet as fleet_mod
from benchlib import procs
from benchlib.limits import SALE_AMOUNT
from benchlib.load import Fleet, sign_on_all
from benchlib.stats import Recorder, latency_summary


def worker(args):
    port, tids, pans, measure_at, stop_at = args

    async def run():
        rec = Recorder(recording=False)
        terms = Fleet(tids, pans).terminals("127.0.0.1", port, len(tids), rec)
        await sign_on_all(terms)
        total = 0

        async def drive(t):
            nonlocal total
            while time.time() < stop_at:
                await t.sale(SALE_AMOUNT)
                total += 1

        async with trio.open_nursery() as n:
            for t in terms:
                n.start_soon(drive, t)
            await trio.sleep(max(0.0, measure_at - time.time()))
            rec.recording = True
            await trio.sleep(max(0.0, stop_at - time.time()))
            rec.recording = False
        for t in terms:
            await t.close()
        return rec.latencies, dict(rec.codes), dict(rec.errors)

    return trio.run(run)


async def idle_memory(port, server, count):
    before = server.status()["VmRSS"]
    streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(count)]
    await trio.sleep(1.0)
    after = server.status()["VmRSS"]
    for s in streams:
        await s.aclose()
    return (after - before) / count


def _user_sys(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def spy_report(path, lines):
    own, total, n = {}, {}, 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        c = int(count)
        n += c
        own[frames[-1]] = own.get(frames[-1], 0) + c
        for f in set(frames):
            total[f] = total.get(f, 0) + c
    print(f"py-spy: {n} samples (all threads); self / cumulative share")
    for f, c in sorted(own.items(), key=lambda x: -x[1])[:lines]:
        print(f"  self {c / n * 100:5.1f}%  {f[:150]}")
    for f, c in sorted(total.items(), key=lambda x: -x[1])[:lines]:
        print(f"  cum  {c / n * 100:5.1f}%  {f[:150]}")


def main():
    p = argparse.ArgumentParser(prog="scripts/profile-host")
    p.add_argument("--terminals", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--procs", type=int, default=1, help="load generator processes")
    p.add_argument("--profile", action="store_true", help="host under cProfile")
    p.add_argument("--lines", type=int, default=25)
    p.add_argument("--idle", type=int, default=0, help="idle connections for RSS/connection")
    p.add_argument("--keep", type=Path, help="write the cProfile stats here too")
    p.add_argument("--spy", type=Path, help="py-spy the host (all threads) into this"
                   " collapsed-stack file and print the top self-time frames")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="poshost-profile-") as tmp:
        work = Path(tmp)
        db = work / "host.db"
        fleet = trio.run(fleet_mod.provision, db, a.terminals)
        prof = work / "host.prof" if a.profile else None
        port = procs.free_port()
        server = procs.Server(procs.host_argv(port, db, profile_to=prof), port, work / "host.log")
        with server:
            if a.idle:
                per = trio.run(idle_memory, port, server, a.idle)
                print(f"idle connections: {a.idle}, {per:.0f} bytes RSS each")
            start = time.time() + 2.0 + a.terminals / 50
            measure_at, stop_at = start + a.warmup, start + a.warmup + a.seconds
            k = max(1, a.procs)
            jobs = [(port, fleet.tids[i::k], fleet.pans[i::k], measure_at, stop_at)
                    for i in range(k)]
            with mp.get_context("fork").Pool(k) as pool:
                result = pool.map_async(worker, jobs)
                time.sleep(max(0.0, measure_at - time.time()))
                cpu0 = server.cpu_seconds()
                us0 = _user_sys(server.pid)
                spy = None
                if a.spy:
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                         str(server.pid), "-d", str(int(a.seconds)), "-r", "250", "-f", "raw",
                         "--gil", "-o", str(a.spy), "--threads"], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
                time.sleep(max(0.0, stop_at - time.time()))
                cpu1 = server.cpu_seconds()
                us1 = _user_sys(server.pid)
                parts = result.get()
                if spy is not None:
                    spy.wait()
            print(server.log_tail(3), file=sys.stderr) if not server.alive() else None
        lat = sorted(x for part in parts for x in part[0])
        codes, errors = {}, {}
        for _, c, e in parts:
            for key, v in c.items():
                codes[key] = codes.get(key, 0) + v
            for key, v in e.items():
                errors[key] = errors.get(key, 0) + v
        n = len(lat)
        approved = codes.get("00", 0)
        cpu = cpu1 - cpu0
        print(f"terminals {a.terminals}  load procs {k}  measured {a.seconds:g} s")
        print(f"approved/s {approved / a.seconds:8.1f}   responses/s {n / a.seconds:8.1f}")
        ms = latency_summary(lat)
        print(f"latency ms p50 {ms['p50']:.2f}  p99 {ms['p99']:.2f}  max {ms['max']:.2f}")
        user_us = (us1[0] - us0[0]) / max(n, 1) * 1e6
        sys_us = (us1[1] - us0[1]) / max(n, 1) * 1e6
        print(f"host CPU {cpu:.2f} s = {cpu / max(n, 1) * 1e6:.0f} us per txn"
              f" ({cpu / a.seconds * 100:.0f}% of a core; user {user_us:.0f} sys {sys_us:.0f} us)")
        print(f"codes {codes}  errors {errors}")
        if a.spy and a.spy.exists():
            spy_report(a.spy, a.lines)
        if prof is not None and prof.exists():
            if a.keep:
                a.keep.write_bytes(prof.read_bytes())
            st = pstats.Stats(str(prof))
            st.sort_stats("tottime").print_stats(a.lines)
            st.sort_stats("cumulative").print_stats(a.lines)


if __name__ == "__main__":
    main()
