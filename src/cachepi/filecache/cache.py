"""The file cache: verified blobs, and single-flight streaming downloads.

A miss starts ONE download per file URL, however many clients, worker processes and nodes
ask: the holder of the file's lock downloads it from the upstream into its part file; every
other process follows the holder through the lock (store/protocols.py says how): on this
machine it reads the holder's part file in place, from another node it copies the
published pieces. Every copy is verified before a client gets its last byte: against the
index's hashes, and a follower's also against the sha256 and size the holder verified. The
holder stores the file before that.

Work nobody asked for stops: a download whose clients all left, and which will not be kept,
is cancelled (its upstream connection closes with it). One that will be kept runs to its
end, so that the next client gets the file from the cache; the bounds on downloads per index
and per client (limits.py) bound that work too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from cachepi.filecache.accounting import Accounting
from cachepi.filecache.download import Claim, Download, FileSpec
from cachepi.filecache.extraction import Extractions
from cachepi.filecache.limits import Busy, DownloadLimits, Slots, Ticket
from cachepi.filecache.sinks import InPlace, PartFile, Sink, TempCopy
from cachepi.filecache.transfer import transfer
from cachepi.metrics import Metrics
from cachepi.redact import redact
from cachepi.store import Stores
from cachepi.store.protocols import (
    Followed,
    Lock,
    Outcome,
    StoredBlob,
    StoreUnavailable,
    read_back,
)
from cachepi.types import DownloadFailed, SourceOpener
from cachepi.upstream import UpstreamError

log = logging.getLogger(__name__)

# How often each process removes part and lock files no living process holds.
SWEEP_SECONDS = 30.0
_NOBODY_WANTS_IT = "stopped: no client wanted it any more"
# File lengths asked of upstreams with HEAD, remembered.
_LENGTHS_KEPT = 4096


@dataclass
class _Running:
    """A download this process runs, and what it runs it with."""

    task: asyncio.Task[None]
    lock: Lock | None = None
    sink: Sink | None = None


class FileCache:
    def __init__(
        self,
        stores: Stores,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        limits: DownloadLimits | None = None,
        beside: Callable[[], int] = lambda: 0,
    ) -> None:
        """`beside()`: bytes the cache's other files take of `max_bytes` (rendered pages):
        the blobs have the rest."""
        self._blobs = stores.blobs
        self._store = stores.metadata
        self._locks = stores.locks
        self._metrics = metrics
        self._downloads: dict[str, Download] = {}
        self._running: dict[Download, _Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Lengths upstreams gave to HEAD requests, by URL, and the requests under way.
        self._lengths: dict[str, int | None] = {}
        self._asking: dict[str, asyncio.Future[int | None]] = {}
        self.slots = Slots(limits or DownloadLimits())
        self.accounting = Accounting(
            self._blobs, self._store, self._locks, max_bytes, clock, metrics, self._removed, beside
        )
        self.extractions = Extractions(self._blobs, self._store, self.accounting, clock)

    def _removed(self, sha256: str) -> None:
        self.extractions.forget(sha256)

    async def open(self, reconcile: bool = True) -> None:
        """Load the state; with `reconcile` (one process, before any worker serves), first
        make the records agree with the store after whatever stopped the last process."""
        if reconcile:
            if removed := self._blobs.clear_temp():
                log.info("removed %d leftovers of unfinished downloads", removed)
            if self._blobs.lists_cheaply:
                await self.accounting.match_records()
        await self.extractions.load()

    def sweep_periodically(self, every: float = SWEEP_SECONDS, first: float = 2.0) -> None:
        """While serving: remove the part and lock files of processes that died (a killed
        worker's) `first` seconds after the start and every `every` seconds, without waiting
        for a restart of the server. (So a worker that replaces a killed one sweeps soon.)"""
        self._spawn(self._sweep(every, first))

    async def _sweep(self, every: float, first: float) -> None:
        await asyncio.sleep(first)
        while True:
            try:
                if removed := await asyncio.to_thread(self._locks.sweep):
                    log.info("removed %d files of unfinished downloads nobody runs", removed)
            except (OSError, StoreUnavailable) as failure:
                log.warning("cannot sweep leftovers of unfinished downloads: %s", failure)
            await asyncio.sleep(every)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.extractions.close()
        self.accounting.flush_touches()

    @property
    def downloading(self) -> int:
        """Downloads this process runs now (leading or following)."""
        return len(self._running)

    def extracted(self) -> tuple[int, Mapping[str, str]]:
        """(generation, wheel sha256 -> METADATA sha256) of what pages may advertise."""
        return self.extractions.known()

    # -- hits -----------------------------------------------------------------------------

    async def cached(self, spec: FileSpec) -> StoredBlob | None:
        """The stored blob for `spec`, if we have it; counts as a use for eviction. A store
        that does not answer has nothing (the file then comes from upstream)."""
        try:
            sha256 = spec.sha256 or self._store.get_ref(spec.url)
            if sha256 is None:
                return None
            blob = await self._blobs.open(sha256)
        except StoreUnavailable:
            return None
        if blob is not None:
            self.accounting.touch(blob.sha256)
        return blob

    async def peek(self, spec: FileSpec) -> StoredBlob | Download | None:
        """The stored blob for `spec`, else its download if this process runs one; never
        starts one (for HEAD)."""
        if (blob := await self.cached(spec)) is not None:
            return blob
        download = self._downloads.get(spec.url)
        return download if download is not None and download.joinable else None

    async def length(self, spec: FileSpec) -> int | None:
        """A file's length for a HEAD, never downloading it: the index's size, else what
        the upstream answers to a HEAD (asked once per URL while remembered); None when
        unknown. Raises UpstreamNotFound."""
        if spec.size is not None:
            return spec.size
        if spec.url in self._lengths:
            return self._lengths[spec.url]
        asking = self._asking.get(spec.url)
        if asking is None:
            asking = self._asking[spec.url] = asyncio.ensure_future(
                spec.upstream.head_file(spec.url)
            )
            asking.add_done_callback(lambda _: self._asking.pop(spec.url, None))
        try:
            length: int | None = await asyncio.shield(asking)
        except UpstreamError as failure:  # a host that refuses HEAD: the length is unknown
            log.info("HEAD %s: %s", redact(spec.url), failure)
            return None
        if len(self._lengths) >= _LENGTHS_KEPT:
            del self._lengths[next(iter(self._lengths))]
        self._lengths[spec.url] = length
        return length

    # -- misses ---------------------------------------------------------------------------

    async def get(self, spec: FileSpec) -> StoredBlob | Download:
        """The stored blob for `spec`, else its download (joined or started) once the
        upstream's headers are in. A download got here is nobody's claim: it runs to its
        end (clients use `serve`)."""
        found = await self._find(spec, None, claim=False)
        return found.download if isinstance(found, Claim) else found

    @contextlib.asynccontextmanager
    async def serve(
        self, spec: FileSpec, client: str | None, gone: Callable[[], bool] = lambda: False
    ) -> AsyncIterator[StoredBlob | Claim]:
        """What a client at address `client` gets for `spec`: the stored blob, or a claim
        on its download (joined or started) once the upstream's headers are in; closed
        after. Raises Busy when the bounds on downloads leave no room in time, or the
        client is `gone()` once there is."""
        found = await self._find(spec, client, claim=True, gone=gone)
        try:
            yield found
        finally:
            found.close()

    async def _find(
        self,
        spec: FileSpec,
        client: str | None,
        claim: bool,
        gone: Callable[[], bool] = lambda: False,
    ) -> StoredBlob | Claim:
        """Check and start happen without an await in between, so two requests never start
        two downloads of one file (unless the first one's bytes are gone from memory)."""
        if (blob := await self.cached(spec)) is not None:
            self._extract(spec, blob.sha256)
            return blob
        download = self._joinable(spec.url)
        if download is None:
            ticket = self.slots.try_take(spec.upstream.name, client)
            if ticket is None:
                ticket = await self.slots.take(spec.upstream.name, client)  # or Busy
                if gone():  # it waited for nothing: start nothing
                    ticket.release()
                    raise Busy("the client left while it waited", self.slots.limits.retry_after)
                # Things changed while this waited.
                try:
                    blob = await self.cached(spec)
                except BaseException:
                    ticket.release()
                    raise
                if blob is not None:
                    ticket.release()
                    self._extract(spec, blob.sha256)
                    return blob
                download = self._joinable(spec.url)
                if download is not None:
                    ticket.release()
            if download is None:
                download = self._start(spec, ticket)
        held = download.join()
        try:
            await download.wait_started()
        except BaseException:
            held.close()
            raise
        if not claim:  # a client that never lets go: the download never becomes idle
            download.clients += 1
            held.close()
        return held

    def _extract(self, spec: FileSpec, sha256: str) -> None:
        if spec.wheel_without_metadata:
            self.extractions.schedule(sha256, spec.wheel_without_metadata, spec.project)

    def _joinable(self, url: str) -> Download | None:
        download = self._downloads.get(url)
        return download if download is not None and download.joinable else None

    def _start(self, spec: FileSpec, ticket: Ticket) -> Download:
        download = Download(spec)
        download.on_idle = self._idle
        self._downloads[spec.url] = download
        self._running[download] = _Running(self._spawn(self._run(download, ticket)))
        return download

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` in the background, owned here so shutdown can cancel it."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _idle(self, download: Download) -> None:
        """`download`'s last client left (or it stopped being kept with none left): stop it
        unless it will be kept."""
        running = self._running.get(download)
        if running is None or download.done or self._kept(download, running):
            return
        log.info("stopping the download of %s: no client wants it", redact(download.spec.url))
        if self._downloads.get(download.spec.url) is download:
            del self._downloads[download.spec.url]  # a new client starts afresh
        running.task.cancel(_NOBODY_WANTS_IT)

    @staticmethod
    def _kept(download: Download, running: _Running) -> bool:
        """Whether `download` will end as a stored blob, if it succeeds."""
        lock, sink = running.lock, running.sink
        return (
            lock is not None
            and sink is not None
            and sink.keeps
            and lock.acquired
            and not download.spilled
            and lock.storable
        )

    async def _run(self, download: Download, ticket: Ticket) -> None:
        """Download `download.spec` here, or follow whoever already does."""
        spec = download.spec
        lock = self._locks.lock(spec.url)
        self._running[download].lock = lock
        try:
            if lock.try_acquire():
                await self._lead(download, lock)
                return
            source = await lock.follow(
                spec.size, functools.partial(self.cached, spec), functools.partial(_upstream, spec)
            )
            if source is None:  # the holder died: it is ours now
                await self._lead(download, lock)
            else:
                await self._fetch(download, lock, lambda: source, source)
        except Exception as failure:  # the lock failed us: readers must not wait forever
            log.warning("download of %s failed: %s", redact(spec.url), failure)
            download.finished(failure)
        finally:
            download.finished(DownloadFailed(_NOBODY_WANTS_IT))  # if cancelled before _fetch
            if self._downloads.get(spec.url) is download:
                del self._downloads[spec.url]
            self._running.pop(download, None)
            ticket.release()
            lock.close()

    async def _lead(self, download: Download, lock: Lock) -> None:
        """Download under `lock`, held: from the upstream, unless another process stored
        the file meanwhile."""
        blob = await self.cached(download.spec)
        if blob is None:
            await self._fetch(download, lock, functools.partial(_upstream, download.spec, 0))
            return
        # Stored just now by another process: read it from there.
        lock.release(Outcome(True, sha256=blob.sha256, size=blob.size))
        source = read_back(blob)
        await self._fetch(download, lock, lambda: source, source)

    async def _fetch(
        self, download: Download, lock: Lock, source: SourceOpener, followed: Followed | None = None
    ) -> None:
        """Copy `source` to where `download`'s readers read it, verify it, and store it if
        the lock is ours. Leading (`followed` None), that is the lock's part file, which other
        processes of this machine follow, and its progress is published for those that
        cannot; following, the file the bytes are in already, or a copy."""
        spec = download.spec
        sink: Sink
        if followed is None:
            sink = PartFile(
                lock,
                self.accounting,
                redact(spec.url),
                lambda: self._spawn(lock.publish(download)),
                spec.size,
            )
        elif followed.file is not None:
            sink = InPlace(followed.file)
        else:
            sink = TempCopy(self._blobs, redact(spec.url))
        self._running[download].sink = sink
        error: BaseException | None = None
        verified: tuple[str, int] | None = None
        try:
            sha256 = await transfer(download, source, sink)
            if followed is not None and not lock.acquired:
                _check_vouched(followed.vouched, sha256, download.written)
            verified = sha256, download.written
        except Exception as failure:
            error = failure
            log.warning("download of %s failed: %s", redact(spec.url), failure)
            if self._metrics is not None:
                self._metrics.download_errors.labels(spec.upstream.name).inc()
        except BaseException as failure:  # cancelled (nobody wants it, shutdown)
            error = failure
            raise
        else:
            # Stored (synced, renamed, recorded) before the clients' last byte: when a
            # download completes, the cache holds the file and its PEP 658 metadata.
            if lock.acquired and not isinstance(sink, InPlace) and not download.spilled:
                await self._store_verified(download, sink, sha256, lock)
        finally:
            if isinstance(error, asyncio.CancelledError):
                error = DownloadFailed(str(error) or "the download was cancelled")
            download.finished(error)  # first: whatever fails below, no reader may hang
            sink.close(self._blobs)
            if lock.acquired:  # followers of this machine read the part file: say if it is whole
                lock.release(_outcome(error, download.spilled, verified))

    async def _store_verified(
        self, download: Download, sink: PartFile | TempCopy, sha256: str, lock: Lock
    ) -> None:
        spec = download.spec
        assert sink.path is not None
        try:
            stored = await self.accounting.keep(
                sink.fd, sink.path, sha256, download.written, spec.project, spec.filename,
                lock.storable, lock,
            )  # fmt: skip
            if stored and spec.sha256 is None:
                self._store.put_ref(spec.url, sha256)
        except (OSError, StoreUnavailable) as failure:  # the bytes are good: clients got them
            log.error("cannot store %s in the cache: %s", redact(spec.url), failure)
            return
        if stored and spec.wheel_without_metadata:
            # In the background: the client's last byte never waits for it.
            self.extractions.schedule(sha256, spec.wheel_without_metadata, spec.project)


def _check_vouched(vouched: tuple[str, int] | None, sha256: str, size: int) -> None:
    """A follower's copy completes only as what the holder verified (or a stored blob is)."""
    if vouched is None:
        raise DownloadFailed("the process that downloaded it did not say what it verified")
    if vouched != (sha256, size):
        raise DownloadFailed(
            f"the bytes followed ({size}, sha256 {sha256[:12]}) are not those the holder "
            f"verified ({vouched[1]}, sha256 {vouched[0][:12]})"
        )


def _outcome(
    error: BaseException | None, spilled: bool, verified: tuple[str, int] | None
) -> Outcome:
    if error is not None:
        return Outcome(False, str(error) or type(error).__name__)
    if spilled or verified is None:
        return Outcome(False, "the disk would not take the file")
    return Outcome(True, sha256=verified[0], size=verified[1])


@contextlib.asynccontextmanager
async def _upstream(
    spec: FileSpec, skip: int = 0
) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
    """The upstream's body of `spec`, from byte `skip` on."""
    async with spec.upstream.open_file(spec.url) as (length, chunks):

        async def rest() -> AsyncIterator[bytes]:
            left = skip
            async for data in chunks:
                if left >= len(data):
                    left -= len(data)
                    continue
                yield data[left:]
                left = 0

        yield length, rest() if skip else chunks
