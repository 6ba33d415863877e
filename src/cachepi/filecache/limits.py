"""How many downloads may run at once: per upstream index and per client address, in this
process. A miss beyond a bound waits for a free slot, a bounded time, then is refused with
`Busy` (503 and Retry-After to the client).

A slot is held by each download this process runs (leading it, or following another
worker's), from its start to its end, and counts against the index it comes from and the
address of the client that started it, also after that client left: a client cannot start
more work than its bound by hanging up. Hits and joining a download already running take no
slot.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class DownloadLimits:
    per_index: int = 48
    per_client: int = 24  # 0: no bound
    wait: float = 30.0  # seconds a miss waits for a slot
    retry_after: int = 5  # seconds a refused client is told to wait


class Busy(Exception):
    """No slot became free in time; the message is one line."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Ticket:
    """One slot, held until `release`."""

    def __init__(self, slots: Slots, index: str, client: str | None) -> None:
        self._slots = slots
        self._index = index
        self._client = client
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._free(self._index, self._client)


class Slots:
    def __init__(self, limits: DownloadLimits) -> None:
        self.limits = limits
        self._index: Counter[str] = Counter()
        self._client: Counter[str] = Counter()
        self._freed: asyncio.Event | None = None

    def running(self, index: str) -> int:
        return self._index[index]

    def try_take(self, index: str, client: str | None) -> Ticket | None:
        """A slot now, or None."""
        if self._blocked(index, client) is not None:
            return None
        self._index[index] += 1
        if client is not None and self.limits.per_client:
            self._client[client] += 1
        return Ticket(self, index, client)

    def _blocked(self, index: str, client: str | None) -> str | None:
        if self._index[index] >= self.limits.per_index:
            return f"{self.limits.per_index} files are downloading from {index} already"
        per_client = self.limits.per_client
        if client is not None and per_client and self._client[client] >= per_client:
            return f"{client} has {per_client} files downloading already"
        return None

    async def take(self, index: str, client: str | None) -> Ticket:
        """A slot, waiting up to `limits.wait` seconds for one; else Busy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.wait
        while (ticket := self.try_take(index, client)) is None:
            if self._freed is None:
                self._freed = asyncio.Event()
            freed = self._freed
            try:
                async with asyncio.timeout_at(deadline):
                    await freed.wait()
            except TimeoutError:
                reason = self._blocked(index, client)
                if reason is None:  # freed just as the time ran out
                    continue
                message = f"too busy: {reason}; try again later"
                raise Busy(message, self.limits.retry_after) from None
        return ticket

    def _free(self, index: str, client: str | None) -> None:
        self._index[index] -= 1
        if not self._index[index]:
            del self._index[index]
        if client is not None and self.limits.per_client:
            self._client[client] -= 1
            if not self._client[client]:
                del self._client[client]
        if self._freed is not None:  # every waiter looks again
            self._freed.set()
            self._freed = None
