"""The host on a payShield-style HSM over TCP: transactions go through it, and when the HSM
goes away mid-day the host answers 96 (system malfunction) instead of crashing or hanging,
then recovers once the HSM is back."""

from __future__ import annotations

from pathlib import Path

import trio

from host.app import HostConfig, run_host
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from hsm_sim.server import serve_hsm
from specs.framing import BODY_OFFSET, Frame, Header, Tpdu
from specs.messages import decode_message
from tests.conftest import MID, TID, TMK, provision
from tests.hostkit import TestTerminal

HEADER_LENGTH = 4
STEP_TIMEOUT = 20.0


async def _hsm_on(port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_hsm, HsmEngine.test(), "127.0.0.1", port,
                                        HEADER_LENGTH)
        task_status.started(listeners[0].socket.getsockname()[1])


async def test_hsm_over_tcp_outage_gives_96_then_recovers(tmp_path: Path) -> None:
    db_path = tmp_path / "host.db"
    cards = await provision(db_path, HsmClient.in_process(HsmEngine.test()))
    with trio.fail_after(STEP_TIMEOUT):
        async with trio.open_nursery() as outer:
            hsm_scope = trio.CancelScope()

            async def hsm_task(port: int, *, task_status: trio.TaskStatus[int]) -> None:
                with hsm_scope:
                    await _hsm_on(port, task_status=task_status)

            hsm_port = await outer.start(hsm_task, 0)
            config = HostConfig(listen_port=0, db_path=db_path,
                                hsm=f"tcp://127.0.0.1:{hsm_port}")
            host, port = await outer.start(run_host, config)
            async with TestTerminal(host, port, TID, MID, TMK) as t:
                assert (await t.sign_on()).code == "00"
                assert (await t.sale(cards["good"], 1000)).code == "00"

                hsm_scope.cancel()  # the HSM goes away
                request = t.financial("sale", cards["good"], 2000, cards["good"].pin)
                raw = await t.send_payload(Frame(Tpdu(), Header(), t.encode(request)).payload())
                assert raw is not None, "host closed the connection instead of answering"
                answer = decode_message(raw[BODY_OFFSET:])
                assert answer["39"] == "96"
                assert "64" not in answer  # the HSM cannot MAC it; the terminal will reverse

                await outer.start(_hsm_on, hsm_port)  # back on the same port
                assert (await t.sale(cards["good"], 3000)).code == "00"
            outer.cancel_scope.cancel()
