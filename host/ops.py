"""The store operations the message path asks for, by name: the one interface between the
message path (host/service.py) and the ledger behind the writer. In one process the name is
looked up and run in the writer's next group (:class:`LocalStore`); with worker processes the
same name and arguments travel to the writer process (host/workers.py), which runs them the
same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from host.ledger import Ledger
from host.writer import Writer

OPS: dict[str, Callable[..., Any]] = {
    "financial": Ledger.financial,
    "settle": Ledger.settle,
    "upload": Ledger.upload,
    "upload_end": Ledger.upload_end,
    "sign_on": Ledger.sign_on,
    "sign_off": Ledger.sign_off,
}
"""Operation name -> Ledger method (called as ``method(ledger, conn, *args)``)."""
HEAVY = frozenset({"settle", "upload", "upload_end", "sign_on"})
"""Operations that may take milliseconds (a batch, closing an abandoned upload): the writer
runs their group off the event loop thread."""
KEY_CHANGES = frozenset({"sign_on", "sign_off"})
"""Operations after which every process must forget the terminal's cached keys."""


class Store(Protocol):
    async def apply(self, op: str, *args: Any) -> Any:
        """Run ``op`` in the writer's next group; its result once committed."""


class LocalStore:
    """The writer and ledger of this process."""

    def __init__(self, writer: Writer, ledger: Ledger) -> None:
        self.writer = writer
        self.ledger = ledger

    async def apply(self, op: str, *args: Any) -> Any:
        method, ledger = OPS[op], self.ledger
        return await self.writer.submit(lambda conn: method(ledger, conn, *args),
                                        heavy=op in HEAVY)
