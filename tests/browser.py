"""A real headless Debian ``chromium`` driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages ended by NUL on fds 3 and 4; no websocket),
for the dashboard's tests: open a page, evaluate JavaScript in it, take a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--remote-debugging-pipe",
                  "--window-size=1280,1000")
CALL_TIMEOUT = 20.0
"""Seconds one DevTools call may take (chromium starts slowly on a loaded machine)."""


def chromium_path() -> str:
    """The chromium binary; the test is skipped without it unless POSHOST_REQUIRE_BROWSER
    is set (``.ci/run`` sets it after installing chromium, so CI never skips silently)."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("POSHOST_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return path


class Browser:
    """One chromium process with one page attached (use ``async with``)."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self._ids = itertools.count(1)
        self._buffer = b""
        self._proc: subprocess.Popen[bytes] | None = None
        self.session = ""

    async def __aenter__(self) -> Browser:
        commands_r, commands_w = os.pipe()
        events_r, events_w = os.pipe()

        def wire_fds() -> None:  # in the child: fd 3 reads commands, fd 4 writes answers
            os.dup2(commands_r, 3)
            os.dup2(events_w, 4)

        self._proc = subprocess.Popen(
            [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
             "about:blank"],
            preexec_fn=wire_fds, close_fds=False,  # else fds 3 and 4 close after the dup2
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_r)
        os.close(events_w)
        self._out = trio.lowlevel.FdStream(commands_w)
        self._in = trio.lowlevel.FdStream(events_r)
        targets = await self.call("Target.getTargets", session=None)
        page = next(t for t in targets["targetInfos"] if t["type"] == "page")
        attached = await self.call("Target.attachToTarget",
                                   {"targetId": page["targetId"], "flatten": True},
                                   session=None)
        self.session = attached["sessionId"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        with trio.move_on_after(10):
            while self._proc.poll() is None:
                await trio.sleep(0.05)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        await self._out.aclose()
        await self._in.aclose()

    async def call(self, method: str, params: dict[str, Any] | None = None, *,
                   session: str | None = "") -> dict[str, Any]:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        session = self.session if session == "" else session
        if session:
            message["sessionId"] = session
        await self._out.send_all(json.dumps(message).encode() + b"\0")
        with trio.fail_after(CALL_TIMEOUT):
            while True:
                answer = await self._next()
                if answer.get("id") == message_id:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer["result"]

    async def _next(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            data = await self._in.receive_some(1 << 16)
            if not data:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += data
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    async def open(self, url: str) -> None:
        await self.call("Page.enable")
        await self.call("Page.navigate", {"url": url})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate",
                                 {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Evaluate until truthy (an exception counts as false: the page may still be
        loading); the last value."""
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        with trio.fail_after(timeout):
            while True:
                value = await self.evaluate(guarded)
                if value:
                    return value
                await trio.sleep(0.2)

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))
