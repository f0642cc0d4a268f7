"""Stand-in for ``poshost serve`` while the CLI command is not there yet: the same host,
started through its Python API (``host.app.run_host``), stopped gracefully by SIGTERM/SIGINT.

    python -m benchlib.hostproc --listen 127.0.0.1:PORT --db PATH
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import trio


async def _serve(host: str, port: int, db: Path) -> None:
    from host.app import HostConfig, run_host

    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                lambda task_status: run_host(HostConfig(host, port, db), task_status=task_status,
                                             stop=stop))
            print(f"poshost (benchlib.hostproc) listening on {bound[0]}:{bound[1]}", flush=True)
            async for _ in signals:
                stop.set()
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--db", required=True, type=Path)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    trio.run(_serve, host, int(port), args.db)


if __name__ == "__main__":
    main()
