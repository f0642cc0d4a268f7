"""scripts/bench --route: off-us sales through a host-to-host link, against the same load
on-us. Three ``poshost serve`` processes' worth of setup: a network (``--h2h-listen``, the
fleet's cards in its issuer simulator), an acquirer routing the fleet's BIN to it (no cards of
its own), and, for the baseline, an acquirer holding the cards itself. Reports off-us sales/s
and the latency the hop adds (p50, p99)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchlib import fleet as fleet_mod
from benchlib import procs
from benchlib.limits import (
    BENCH_MID,
    BENCH_TMK_HEX,
    CARD_BALANCE,
    CARD_EXPIRY,
    CARD_PREFIX,
    QUICK_RUN_SECONDS,
    QUICK_WARMUP_SECONDS,
    RUN_SECONDS,
    TEST_PIN,
    WARMUP_SECONDS,
)
from benchlib.load import run_load

ZMK = "0123456789ABCDEFFEDCBA9876543210"
ACQUIRER_ID = "48020000"
TERMINALS = 10
QUICK_TERMINALS = 4


async def _provision(net_db: Path, acq_db: Path, count: int) -> fleet_mod.Fleet:
    from host.db import open_store
    from host.provision import add_card, add_merchant, add_terminal
    from host.routestore import insert_link
    from hsm_sim.client import HsmClient
    from hsm_sim.commands import HsmEngine

    hsm = HsmClient.in_process(HsmEngine.test())
    fleet = fleet_mod.fleet_of(count)
    await add_merchant(acq_db, BENCH_MID, "bench merchant")
    for tid, pan in zip(fleet.tids, fleet.pans, strict=True):
        await add_terminal(acq_db, hsm, tid, BENCH_MID, tmk_hex=BENCH_TMK_HEX)
        await add_card(net_db, hsm, pan, CARD_EXPIRY, TEST_PIN, CARD_BALANCE)
    zmk = await hsm.import_clear_key("000", ZMK)
    conn = open_store(net_db)
    insert_link(conn, "ACQ1", ACQUIRER_ID, zmk.key, zmk.kcv)
    conn.close()
    await hsm.aclose()
    return fleet


async def _add_route(acq_db: Path, port: int) -> None:
    from host.db import open_store
    from host.routestore import insert_route
    from hsm_sim.client import HsmClient
    from hsm_sim.commands import HsmEngine

    hsm = HsmClient.in_process(HsmEngine.test())
    zmk = await hsm.import_clear_key("000", ZMK)
    await hsm.aclose()
    conn = open_store(acq_db)
    insert_route(conn, name="NET-A", host="127.0.0.1", port=port, bins=CARD_PREFIX,
                 zmk_lmk=zmk.key, zmk_kcv=zmk.kcv, acquirer_id=ACQUIRER_ID)
    conn.close()


def _wait_up(acq_db: Path, timeout: float = 20.0) -> None:
    path = acq_db.with_name(acq_db.name + ".routes.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(path.read_text()).get("NET-A", {}).get("state") == "up":
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError("route NET-A did not come up")


def route_bench(quick: bool, out_dir: Path) -> dict[str, Any]:
    count = QUICK_TERMINALS if quick else TERMINALS
    seconds = QUICK_RUN_SECONDS if quick else RUN_SECONDS
    warmup = QUICK_WARMUP_SECONDS if quick else WARMUP_SECONDS
    results: dict[str, Any] = {"terminals": count, "seconds": seconds, "quick": quick}
    with tempfile.TemporaryDirectory(prefix="poshost-route-bench-") as tmp:
        work = Path(tmp)
        net_db, acq_db, onus_db = work / "net.db", work / "acq.db", work / "onus.db"
        fleet = trio.run(_provision, net_db, acq_db, count)
        trio.run(fleet_mod.provision, onus_db, count)
        net_port, h2h_port, acq_port = procs.free_port(), procs.free_port(), procs.free_port()
        trio.run(_add_route, acq_db, h2h_port)
        net_argv = [*procs.host_argv(net_port, net_db), "--h2h-listen", f"127.0.0.1:{h2h_port}"]
        with procs.Server(net_argv, net_port, work / "net.log"), \
                procs.Server(procs.host_argv(acq_port, acq_db), acq_port, work / "acq.log"):
            _wait_up(acq_db)
            results["off_us"] = trio.run(run_load, "127.0.0.1", acq_port, fleet, count,
                                         seconds, warmup)
        onus_port = procs.free_port()
        with procs.Server(procs.host_argv(onus_port, onus_db), onus_port, work / "onus.log"):
            results["on_us"] = trio.run(run_load, "127.0.0.1", onus_port, fleet, count,
                                        seconds, warmup)
    off, on = results["off_us"], results["on_us"]
    for q in ("p50", "p99"):
        results[f"hop_added_{q}_ms"] = round(off["latency_ms"][q] - on["latency_ms"][q], 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-route-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    lo, ln = off["latency_ms"], on["latency_ms"]
    print(f"off-us {off['approved_per_s']} approved/s of {off['throughput_per_s']}/s"
          f" (p50 {lo['p50']} ms, p99 {lo['p99']} ms); on-us {on['approved_per_s']}"
          f" approved/s (p50 {ln['p50']} ms, p99 {ln['p99']} ms); the hop adds"
          f" p50 {results['hop_added_p50_ms']} ms, p99 {results['hop_added_p99_ms']} ms;"
          f" {count} terminals closed-loop; results in {path}")
    return results
