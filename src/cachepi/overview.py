"""The cache's overview (files, bytes, traffic totals for life and per hour, the latest
files, the biggest projects, the latest warm jobs) as the dashboard and /metrics show it:
read from the metadata store on a thread, never on the event loop, kept for a few seconds,
and read once for however many requests ask meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cachepi.store.protocols import MetadataStore, Overview

RECENT = 20  # the latest stored files shown
BIGGEST = 10  # the biggest projects shown
JOBS = 10  # the latest warm jobs shown
MAX_AGE = 2.0  # seconds an overview is shown before it is read again


class Overviews:
    def __init__(
        self,
        store: MetadataStore,
        clock: Callable[[], float] = time.monotonic,
        max_age: float = MAX_AGE,
    ) -> None:
        self._store = store
        self._clock = clock
        self._max_age = max_age
        self._held: Overview | None = None
        self._read_at = 0.0
        self._reading: asyncio.Task[Overview] | None = None

    async def get(self) -> Overview:
        """The overview, at most `max_age` seconds old. StoreUnavailable if it cannot be
        read (an older one is not passed off as current)."""
        if self._held is not None and self._clock() - self._read_at < self._max_age:
            return self._held
        if self._reading is None:
            self._reading = asyncio.create_task(self._read())
            # Read by whoever waits; when every waiter left, a failure is not worth a warning.
            self._reading.add_done_callback(lambda task: task.cancelled() or task.exception())
        # shield: a client hanging up must not cancel the read others are waiting for.
        return await asyncio.shield(self._reading)

    async def _read(self) -> Overview:
        started = self._clock()
        try:
            overview = await asyncio.to_thread(self._store.overview, RECENT, BIGGEST, JOBS)
        finally:
            self._reading = None
        self._held, self._read_at = overview, started
        return overview
