"""Warm jobs in one process: a few at a time, each one's report saved in the metadata store
every second while it runs. Whichever worker (or node) is asked about a job answers from the
store, so a job's id needs to say nothing of who runs it; a job whose process died stops
being saved, and is shown as lost (report.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

import msgspec

from cachepi.filecache import FileCache
from cachepi.index import IndexCache
from cachepi.store.protocols import MetadataStore, StoreUnavailable
from cachepi.warm.lockfiles import Lock
from cachepi.warm.narrowing import Narrowing
from cachepi.warm.report import Report, decode
from cachepi.warm.run import warm

log = logging.getLogger(__name__)

RUNNING_AT_ONCE = 2  # per process
SAVE_SECONDS = 1.0


class TooMany(Exception):
    """This process runs as many jobs as it may; the message is one line."""


class Jobs:
    def __init__(
        self,
        index: IndexCache,
        files: FileCache,
        store: MetadataStore,
        node: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._index = index
        self._files = files
        self._store = store
        self._node = node
        self._clock = clock
        self._running: dict[str, asyncio.Task[None]] = {}

    def start(self, lock: Lock, narrowing: Narrowing, source: str) -> Report:
        """Start warming what `lock` (from the file called `source`) names; its report, as
        it goes. Raises TooMany, and StoreUnavailable when the report cannot be kept (nobody
        could be told how the job went)."""
        if len(self._running) >= RUNNING_AT_ONCE:
            raise TooMany(f"{RUNNING_AT_ONCE} warm jobs run here already: try again later")
        now = self._clock()
        report = Report(
            id=secrets.token_urlsafe(12),
            source=source,
            format=lock.format.value,
            narrowing=str(narrowing),
            node=self._node,
            created=now,
            updated=now,
        )
        self._store.put_job(report.id, report.created, report.encode())
        task = asyncio.create_task(self._run(lock, narrowing, report))
        self._running[report.id] = task
        task.add_done_callback(lambda _: self._running.pop(report.id, None))
        return report

    async def _run(self, lock: Lock, narrowing: Narrowing, report: Report) -> None:
        saving = asyncio.create_task(self._save_every_second(report))
        error = None
        try:
            await warm(lock, narrowing, self._index, self._files, report)
        except asyncio.CancelledError:
            error = "the server stopped before the job was done"
            raise
        except Exception as failure:  # a bug, or a store failing: the report says so
            log.exception("warm job %s failed", report.id)
            error = f"{type(failure).__name__}: {failure}"
        finally:
            saving.cancel()
            report.end(self._clock(), error)
            self._save(report)
            log.info(
                "warm job %s (%s): %d files, %d cached, %d already there, %d failed%s",
                report.id, report.source, report.files, report.cached, report.already,
                report.failed, f"; {error}" if error else "",
            )  # fmt: skip

    async def _save_every_second(self, report: Report) -> None:
        while True:
            await asyncio.sleep(SAVE_SECONDS)
            report.updated = self._clock()
            self._save(report)

    def _save(self, report: Report) -> None:
        try:
            self._store.put_job(report.id, report.created, report.encode())
        except StoreUnavailable as failure:  # saved again in a second, or at the end
            log.warning("cannot save the report of warm job %s: %s", report.id, failure)

    def find(self, job_id: str) -> Report | None:
        """A job's report as saved (by whichever process runs it), or None. Raises
        StoreUnavailable."""
        data = self._store.get_job(job_id)
        if data is None:
            return None
        try:
            return decode(data).seen(self._clock())
        except msgspec.DecodeError:
            log.warning("the saved report of warm job %s is unreadable", job_id)
            return None

    async def wait(self, job_id: str) -> None:
        """Until the job this process runs under `job_id` ended."""
        task = self._running.get(job_id)
        if task is not None:
            await asyncio.wait([task])

    async def close(self) -> None:
        """Stop every job (each report then says the server stopped)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
