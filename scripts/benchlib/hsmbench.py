"""scripts/bench-hsm: commands per second of hsm_sim (M8 X9.19 over 200 bytes, CA, DC)
through the in-process engine, the in-process client and TCP clients."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import trio

from hsm_sim import crypto
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from hsm_sim.server import serve_hsm

PIK = "0B681FC20E62C7340B681FC20E62C734"
MAK = "7962D9ECE03D1ACD4C76089DCE131543"
PAN = "6222021234567890128"
TCP_CONNECTIONS = 8


async def prepare(client: HsmClient) -> dict[str, object]:
    tpk = (await client.import_clear_key("002", PIK)).key
    tak = (await client.import_clear_key("003", MAK)).key
    zpk = (await client.generate_key("001")).key
    pvk = (await client.generate_key("002")).key
    pvv = await client.generate_pvv(pvk, PAN, "1234")
    message = bytes(range(200))
    mac = crypto.generate_mac_x919(bytes.fromhex(MAK), message)
    block = bytes.fromhex("1B96E39DDF2F5140")
    return dict(tpk=tpk, tak=tak, zpk=zpk, pvk=pvk, pvv=pvv, message=message, mac=mac, block=block)


def operations(client: HsmClient, k: dict[str, object]):  # type: ignore[no-untyped-def]
    async def m8() -> None:
        assert await client.verify_mac(k["tak"], k["message"], k["mac"], "x919")  # type: ignore[arg-type]

    async def ca() -> None:
        await client.translate_pin(k["tpk"], k["zpk"], k["block"], PAN)  # type: ignore[arg-type]

    async def dc() -> None:
        ok = await client.verify_pin_pvv(k["tpk"], k["pvk"], k["block"], PAN, k["pvv"])  # type: ignore[arg-type]
        assert ok

    return {"M8 (X9.19, 200 B)": m8, "CA": ca, "DC": dc}


async def rate(op, seconds: float, workers: int = 1) -> float:  # type: ignore[no-untyped-def]
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await op()
            count += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
    return count / (time.perf_counter() - start)


def raw_engine_rates(engine: HsmEngine, k: dict[str, object], seconds: float) -> dict[str, float]:
    account = crypto.extract_account_number(PAN)
    message: bytes = k["message"]  # type: ignore[assignment]
    requests = {
        "M8 (X9.19, 200 B)": b"0000M800131003" + str(k["tak"]).encode()
        + f"{len(message):04X}".encode() + message + k["mac"].hex().upper().encode(),  # type: ignore[attr-defined]
        "CA": f"0000CA{k['tpk']}{k['zpk']}121B96E39DDF2F51400101{account}".encode(),
        "DC": f"0000DC{k['tpk']}{k['pvk']}1B96E39DDF2F514001{account}1{k['pvv']}".encode(),
    }
    out = {}
    for name, request in requests.items():
        assert engine.handle(request)[6:8] == b"00", name
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(100):
                engine.handle(request)
            n += 100
        out[name] = n / (time.perf_counter() - start)
    return out


async def main(seconds: float) -> None:
    engine = HsmEngine.test()
    local = HsmClient.in_process(engine)
    keys = await prepare(local)
    rows: list[tuple[str, str, float]] = []
    for name, value in raw_engine_rates(engine, keys, seconds).items():
        rows.append((name, "engine.handle (no client)", value))
    for name, op in operations(local, keys).items():
        rows.append((name, "in-process client", await rate(op, seconds)))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_hsm, engine, "127.0.0.1", 0, 4)
        port = listeners[0].socket.getsockname()[1]
        one = HsmClient.tcp("127.0.0.1", port)
        for name, op in operations(one, keys).items():
            rows.append((name, "TCP, 1 connection", await rate(op, seconds)))
        clients = [HsmClient.tcp("127.0.0.1", port) for _ in range(TCP_CONNECTIONS)]
        for name in operations(one, keys):
            ops = [operations(c, keys)[name] for c in clients]
            counter = iter(range(10**12))

            async def round_robin(ops: list = ops, counter: Iterator[int] = counter) -> None:
                await ops[next(counter) % TCP_CONNECTIONS]()

            label = f"TCP, {TCP_CONNECTIONS} connections"
            rows.append((name, label, await rate(round_robin, seconds, TCP_CONNECTIONS)))
        for c in [one, *clients]:
            await c.aclose()
        nursery.cancel_scope.cancel()
    print(f"{'command':<20} {'path':<28} {'cmd/s':>10} {'us/cmd':>8}")
    for name, path, value in rows:
        print(f"{name:<20} {path:<28} {value:>10,.0f} {1e6 / value:>8.1f}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    trio.run(main, parser.parse_args().seconds)


if __name__ == "__main__":
    cli()
