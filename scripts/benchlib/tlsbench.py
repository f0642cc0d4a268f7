"""scripts/bench-tls: what TLS costs the host, next to plain TCP on the same host process.

One ``poshost serve`` with a plain and a TLS listener (lab CA from ``poshost tls
make-lab-ca``); ``posterm load`` runs the same closed-loop sale load against each in turn
(each terminal keeps one connection, so this is the steady-state cost of encryption), then
sequential fresh connections measure the handshake: wall time per connection (connect +
handshake + close) and host CPU per connection, TLS against plain. Results are printed and
written to bench-results/bench-tls-<time>.json.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchlib import procs
from benchlib.benchmain import measured_point, write_results
from benchlib.fleet import provision
from benchlib.limits import RESULTS_DIR

QUICK_TERMINALS, TERMINALS = 10, 50
QUICK_SECONDS, SECONDS = 3.0, 10.0
QUICK_HANDSHAKES, HANDSHAKES = 200, 1000


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _connections(port: int, count: int, context: ssl.SSLContext | None) -> list[float]:
    """Seconds per fresh connection (connect, TLS handshake when ``context``, close)."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        if context is not None:
            tls = trio.SSLStream(stream, context, server_hostname="127.0.0.1")
            await tls.do_handshake()
            await tls.aclose()
        else:
            await stream.aclose()
        times.append(time.perf_counter() - started)
    return times


def _handshakes(server: procs.Server, port: int, tls_port: int, ca: Path,
                count: int) -> dict[str, Any]:
    from specs.tls import client_context
    out: dict[str, Any] = {"connections": count}
    for label, target, context in (("plain", port, None),
                                   ("tls", tls_port, client_context(ca))):
        cpu0 = server.cpu_seconds()
        times = sorted(trio.run(_connections, target, count, context))
        cpu = server.cpu_seconds() - cpu0
        out[label] = {"wall_ms_mean": round(sum(times) / count * 1000, 3),
                      "wall_ms_p50": round(times[count // 2] * 1000, 3),
                      "host_cpu_ms_per_connection": round(cpu / count * 1000, 3)}
    out["tls_extra_host_cpu_ms"] = round(out["tls"]["host_cpu_ms_per_connection"]
                                         - out["plain"]["host_cpu_ms_per_connection"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-tls", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--terminals", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--handshakes", type=int)
    parser.add_argument("--out", type=Path, default=procs.ROOT / RESULTS_DIR)
    args = parser.parse_args(argv)
    n = args.terminals or (QUICK_TERMINALS if args.quick else TERMINALS)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    handshakes = args.handshakes or (QUICK_HANDSHAKES if args.quick else HANDSHAKES)
    from host.labca import make_lab_ca

    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        work = Path(tmp)
        lab = work / "lab"
        make_lab_ca(lab)
        db = work / "host.db"
        fleet = trio.run(provision, db, n)
        port, tls_port = procs.free_port(), procs.free_port()
        argv_ = [*procs.poshost_command(), "serve", "--listen", f"127.0.0.1:{port}",
                 "--listen-tls", f"127.0.0.1:{tls_port}", "--tls-cert", str(lab / "server.pem"),
                 "--tls-key", str(lab / "server.key"), "--db", str(db), "--hsm", "embedded",
                 "--lmk", "test", "--no-demo"]
        results: dict[str, Any] = {"terminals": n, "seconds": seconds,
                                   "note": "closed loop, sale=100, one connection per terminal"}
        with procs.Server(argv_, port, work / "host.log") as server:
            for label, target, extra in (
                    ("plain", port, ()),
                    ("tls", tls_port, ("--tls", "--ca", str(lab / "ca.pem")))):
                results[label] = measured_point(server, label, target, fleet, n, seconds, work,
                                                extra)
            results["handshake"] = _handshakes(server, port, tls_port, lab / "ca.pem",
                                               handshakes)
        hs = results["handshake"]
        _log(f"fresh connections x{handshakes}: plain {hs['plain']['wall_ms_mean']} ms"
             f" ({hs['plain']['host_cpu_ms_per_connection']} ms host CPU), TLS"
             f" {hs['tls']['wall_ms_mean']} ms ({hs['tls']['host_cpu_ms_per_connection']} ms"
             f" host CPU): a TLS handshake costs the host {hs['tls_extra_host_cpu_ms']} ms CPU")
    write_results(args.out, "bench-tls", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
