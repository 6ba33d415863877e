"""Rendered pages: what a page request is answered with.

A page's content version (from the index cache's records: its files are not read when
memory knows it) names its rendered files (pagefiles.py), one per format and coding, each
made when a client first asks for it, once per process (every request for it meanwhile
joins in):

- A page of a few files is rendered on the event loop (tens of microseconds), answered from
  memory, and its file written a moment later, with those of the other pages rendered
  meanwhile, on a thread, by one process (another one asked for it meanwhile answers from
  memory too).
- Any other is rendered on a thread, through a lock once for every process of this machine,
  straight into its identity file and the coding asked for, and answered from that file;
  another coding is compressed from the identity file when a client asks for it.

Every later request, in any worker, opens the file and sends it; small ones are read once
and kept in memory, within a budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from cachepi import catalog
from cachepi.budget import BudgetedLRU
from cachepi.index import IndexCache, ListResult, PageState, PageTraits
from cachepi.pagefiles import PageFiles, Variant, encoded
from cachepi.simple.model import Project, ProjectList
from cachepi.simple.negotiate import Format, content_type
from cachepi.simple.render import (
    render_project_html,
    render_project_json,
    render_project_list_html,
    render_project_list_json,
)
from cachepi.store.protocols import LIST_KEY
from cachepi.upstream import UpstreamError

log = logging.getLogger(__name__)

# Part of every rendered file's name: change it whenever what a page renders to changes, so
# that no file an older cachepi rendered is ever sent.
RENDERER = "1"
_KIND = {Format.JSON: "json", Format.HTML_V1: "html", Format.HTML: "html"}
_PROJECT_RENDERERS: dict[str, Callable[[Project], bytes]] = {
    "json": render_project_json,
    "html": render_project_html,
}
_LIST_RENDERERS: dict[str, Callable[[ProjectList], Iterable[bytes]]] = {
    "json": render_project_list_json,
    "html": render_project_list_html,
}
# What a remembered page version costs in memory besides its strings, estimated.
_VERSION_COST = 300
# Variants up to this size are sent from memory (read from their file once, then kept
# under a byte budget), with their headers in one write: for a small body, a file's open,
# sendfile and close cost several times that (bench/results/notes.md). Bigger ones go
# with sendfile, as cheap then as from memory, and in the page cache once for every worker.
SMALL = 64 * 1024
_SMALL_COST = 300  # what a small variant costs in memory besides its bytes and strings
# A project page of at most this many files is rendered on the event loop, and compressed
# there in the coding asked for (tens of microseconds: bench/results/notes.md); its file is
# written after, on a thread. A thread's round trip and the file's creation would cost its
# first request many times that.
_ON_LOOP_FILES = 32
# A page rendered in memory has its file written this long after, with the files of the
# pages rendered meanwhile, in one go on a thread; or as soon as they hold WRITE_AT bytes.
# Written at once, a file (its creation alone takes 100-400 us here) contends with the
# requests that follow the page, as a resolution's do; meanwhile this process answers from
# memory, and another renders the page itself.
WRITE_AFTER = 0.25
WRITE_AT = 1024 * 1024


class _Made(NamedTuple):
    """A page as made: its content version (what it is now, which may be newer than the
    version it was asked for), its rendered pieces (drawn on a thread unless `small`), and
    whether it is small enough to render on the event loop."""

    version: str
    pieces: Callable[[], Iterable[bytes]]
    small: bool = False


_Maker = Callable[[], Awaitable[_Made]]


@dataclass(frozen=True)
class Page:
    """A page variant to send: its bytes (a small one), or its file, open (the caller
    closes it)."""

    content_type: str
    etag: str
    size: int
    body: bytes | None = None
    file: BinaryIO | None = None


class _Vanished(Exception):
    """The project's page went between finding its version and rendering it."""


class _Job:
    """The rendering of one page variant in one coding in this process, which every
    request for it joins: `made` is the variant rendered, with its bytes when it was
    rendered in memory (else its file is written); `task` runs until its file is written."""

    def __init__(self) -> None:
        self.made: asyncio.Future[tuple[Variant, bytes | None]] = (
            asyncio.get_running_loop().create_future()
        )
        # Retrieved here: an outcome nobody waits for any more is not reported.
        self.made.add_done_callback(lambda done: done.cancelled() or done.exception())
        self.task: asyncio.Task[None] | None = None


class RenderedPages:
    def __init__(
        self,
        files: PageFiles,
        salt: str,
        index: IndexCache,
        extracted: Callable[[], tuple[int, Mapping[str, str]]],
        upload_times: Callable[[], tuple[int, Mapping[str, str]]],
        memory: int = 1024**2,
        small_memory: int = 4 * 1024**2,
    ) -> None:
        """`salt`: what else shapes pages (the settings), in every file's name.
        `extracted()`: (generation, wheel sha256 -> METADATA sha256) from the file cache;
        `upload_times()`: (generation, file URL -> upload time) recorded from upstreams.
        `memory`: bytes the versions of pages that lack PEP 658 metadata or upload times
        may take; `small_memory`: those the small variants may."""
        self.files = files
        self._salt = f"{RENDERER}\0{salt}"
        self._index = index
        self._extracted = extracted
        self._upload_times = upload_times
        # name -> (listing version, generations, page version): an extraction or a time
        # recorded anywhere changes a generation, but this page's version only if it was
        # one of this page's files.
        self._versions: BudgetedLRU[str, tuple[str, tuple[int, int], str]] = BudgetedLRU(memory)
        self._rendering: dict[tuple[str, str, str], _Job] = {}
        # Variants rendered in memory, (ETag, bytes), by (key, version, kind, coding).
        self._unwriting: dict[tuple[str, str, str, str], asyncio.Task[tuple[str, bytes]]] = {}
        # Small variants, (ETag, bytes) by (key, version, kind, coding): a version's bytes
        # never change.
        self._small: BudgetedLRU[tuple[str, str, str, str], tuple[str, bytes]] = BudgetedLRU(
            small_memory
        )
        # Files of pages rendered in memory, to write (`_write_later`): by path.
        self._to_write: dict[str, tuple[Variant, str, bytes]] = {}
        self._to_write_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._write_now = asyncio.Event()

    async def project(
        self, name: str, fmt: Format, coding: str, page_url: Callable[[], str]
    ) -> tuple[Page, PageState] | None:
        """Project `name`'s page in `fmt` and `coding`, and how it stands; None if no
        upstream has it. `page_url()`: the page's absolute URL at the proxy, asked only of
        pages that list provenance (catalog.page). Raises Refused and UpstreamError as
        `IndexCache.listing` does, and what `page_url` raises."""
        state = await self._index.page(name)
        if state is None:
            return None
        url = page_url() if state.traits.offers_provenance else None
        make = functools.partial(self._make_project, name, _KIND[fmt], url)
        try:
            version = await self._page_version(name, state, url)
            page = await self._page(name, version, fmt, coding, make, url)
        except _Vanished:
            return None
        return page, state

    async def project_list(self, fmt: Format, coding: str) -> tuple[Page, ListResult]:
        """The project list in `fmt` and `coding`, and how it stands. Raises UpstreamError."""
        result = await self._index.project_list()
        make = functools.partial(self._make_list, result, _KIND[fmt])
        return await self._page(LIST_KEY, result.version, fmt, coding, make), result

    def forget(self, key: str) -> None:
        """Remove the rendered files of `key` (its pages were invalidated), and those still
        to write. Small variants held in memory stay: they are found by version, and the
        next version may well be the same."""
        prefix = self.files.variant("", key, "", "").prefix
        for path, (variant, _, data) in list(self._to_write.items()):
            if variant.prefix == prefix:
                del self._to_write[path]
                self._to_write_bytes -= len(data)
        self.files.remove(key)
        self._versions.pop(key)

    async def maintain(self) -> int:
        """`PageFiles.maintain`, on a thread; returns how many files went."""
        return await asyncio.to_thread(self.files.maintain)

    async def settle(self) -> None:
        """Write now what waits to be, and wait until every rendering under way has
        written its files."""
        while tasks := [
            *(job.task for job in self._rendering.values() if job.task is not None),
            *([self._writer] if self._writer is not None and not self._writer.done() else []),
        ]:
            self._write_now.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- versions -------------------------------------------------------------------------

    async def _page_version(self, name: str, state: PageState, url: str | None) -> str:
        """The page's version: the listing's, and for a page lacking PEP 658 metadata or
        upload times what was extracted or recorded for its own files (catalog.page),
        remembered per generation: the files are read again only when something was
        extracted or recorded somewhere; with the proxy's address for provenance."""
        traits = state.traits
        version = state.version
        if traits.lacks_metadata or traits.lacks_upload_times:
            generations, extracted, times = self._known(traits)
            known = self._versions.get(name)
            if known is not None and known[:2] == (state.version, generations):
                version = known[2]
            else:
                listing = await self._index.listing(name)
                if listing is None:
                    raise _Vanished
                version, _ = catalog.page(listing, extracted, times, None)
                cost = _VERSION_COST + 2 * len(version)
                self._versions.put(name, (listing.version, generations, version), cost)
        return version if url is None else catalog.addressed(version, url)

    def _known(
        self, traits: PageTraits
    ) -> tuple[tuple[int, int], Mapping[str, str], Mapping[str, str]]:
        """The generations and mappings of what was extracted and recorded, as far as the
        page needs them."""
        extracted: tuple[int, Mapping[str, str]] = (0, {})
        times: tuple[int, Mapping[str, str]] = (0, {})
        if traits.lacks_metadata:
            extracted = self._extracted()
        if traits.lacks_upload_times:
            times = self._upload_times()
        return (extracted[0], times[0]), extracted[1], times[1]

    async def _make_project(self, name: str, kind: str, url: str | None) -> _Made:
        listing = await self._index.listing(name)
        if listing is None:
            raise _Vanished
        _, extracted, times = self._known(listing.traits)
        version, project = catalog.page(listing, extracted, times, url)
        render = _PROJECT_RENDERERS[kind]

        def pieces() -> Iterable[bytes]:
            yield render(project())

        return _Made(version, pieces, len(listing.project.files) <= _ON_LOOP_FILES)

    async def _make_list(self, result: ListResult, kind: str) -> _Made:
        version, names = await self._index.names(result)
        render = _LIST_RENDERERS[kind]
        return _Made(version, lambda: render(names))

    # -- files ----------------------------------------------------------------------------

    async def _page(
        self,
        key: str,
        version: str,
        fmt: Format,
        coding: str,
        make: _Maker,
        address: str | None = None,
    ) -> Page:
        """`address`: the page's URL at the proxy, for a page shown per address."""
        kind = _KIND[fmt]
        small = self._small.get((key, version, kind, coding))
        if small is not None:
            return Page(content_type(fmt), small[0], len(small[1]), body=small[1])
        asked = variant = self.files.variant(self._salt, key, version, kind, address)
        for _ in range(3):  # another process may remove a version just rendered: again
            opened = self.files.open(variant, coding)
            body: bytes | None = None
            if opened is None:
                try:
                    variant, body = await self._render(key, variant, coding, make)
                except OSError as error:  # a full disk, an unwritable cache: still answer
                    return await self._unwritten(key, version, fmt, coding, make, error)
                if body is None:
                    continue
            etag = variant.etag(coding)
            if body is None:
                assert opened is not None
                if opened.size > SMALL:
                    return Page(content_type(fmt), etag, opened.size, file=opened.file)
                with opened.file:
                    body = opened.file.read()
            if variant == asked:  # (a newer version rendered instead is not `version`)
                cost = len(body) + len(key) + len(version) + _SMALL_COST
                self._small.put((key, version, kind, coding), (etag, body), cost)
            return Page(content_type(fmt), etag, len(body), body=body)
        raise UpstreamError(f"the page of {key!r} keeps changing: try again", 503)

    async def _unwritten(
        self, key: str, version: str, fmt: Format, coding: str, make: _Maker, error: OSError
    ) -> Page:
        """The page rendered in memory, for the requests of the moment only: its file
        cannot be written. Once however many ask at once (a big page costs its size each
        time, and a full disk is no time to run out of memory too)."""
        slot = (key, version, _KIND[fmt], coding)
        task = self._unwriting.get(slot)
        if task is None:
            log.warning("cannot write the rendered page of %r (%s): sent from memory", key, error)
            task = asyncio.create_task(self._in_memory(key, _KIND[fmt], coding, make))
            self._unwriting[slot] = task
            task.add_done_callback(lambda _: self._unwriting.pop(slot, None))
        # shield: a client hanging up must not cancel what others wait for.
        etag, body = await asyncio.shield(task)
        return Page(content_type(fmt), etag, len(body), body=body)

    async def _in_memory(self, key: str, kind: str, coding: str, make: _Maker) -> tuple[str, bytes]:
        made = await make()
        body = await asyncio.to_thread(lambda: encoded(made.pieces(), coding))
        return self.files.variant(self._salt, key, made.version, kind).etag(coding), body

    async def _render(
        self, key: str, variant: Variant, coding: str, make: _Maker
    ) -> tuple[Variant, bytes | None]:
        """Render `variant` (or the newer version `make` finds) in `coding` once, however
        many callers wait for it; returns what was rendered, with its bytes when it was
        rendered in memory (else its file is written)."""
        slot = (variant.version, variant.kind, coding)
        job = self._rendering.get(slot)
        if job is None:
            job = self._rendering[slot] = _Job()
            job.task = asyncio.create_task(self._render_job(key, variant, coding, make, job))
            job.task.add_done_callback(functools.partial(self._job_done, slot, job))
        # shield: a client hanging up must not cancel what others wait for.
        return await asyncio.shield(job.made)

    def _job_done(self, slot: tuple[str, str, str], job: _Job, task: asyncio.Task[None]) -> None:
        if self._rendering.get(slot) is job:
            del self._rendering[slot]
        if not task.cancelled():
            task.exception()  # told to whoever waited for the job

    async def _render_job(
        self, key: str, asked: Variant, coding: str, make: _Maker, job: _Job
    ) -> None:
        """Render a page variant in `coding`: in memory when it is small (its file written
        after), else into its file."""
        try:
            made: _Made | None = None
            variant = asked
            if key != LIST_KEY:  # a project's listing is in memory: making it is cheap
                made = await make()
                variant = self.files.variant(
                    self._salt, key, made.version, asked.kind, asked.address
                )
                if made.small:
                    body = b"".join(made.pieces())
                    if len(body) <= SMALL:
                        data = body if coding == "identity" else encoded((body,), coding)
                        job.made.set_result((variant, data))
                        self._write_later(variant, coding, data)
                        return
                    made = made._replace(pieces=lambda: (body,))  # rendered already
            variant = await self._render_file(key, variant, coding, made, make)
            job.made.set_result((variant, None))
        except BaseException as error:
            if not job.made.done():
                if isinstance(error, asyncio.CancelledError):
                    job.made.cancel()
                else:
                    job.made.set_exception(error)
            raise

    def _write_later(self, variant: Variant, coding: str, data: bytes) -> None:
        """Have the file of a variant rendered in memory written (WRITE_AFTER)."""
        path = variant.path(coding)
        if path in self._to_write:
            return
        self._to_write[path] = (variant, coding, data)
        self._to_write_bytes += len(data)
        if self._to_write_bytes >= WRITE_AT:
            self._write_now.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())

    async def _write_pending(self) -> None:
        while self._to_write:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._write_now.wait(), WRITE_AFTER)
            self._write_now.clear()
            written = list(self._to_write.values())
            self._to_write, self._to_write_bytes = {}, 0
            await asyncio.to_thread(self._write_all, written)

    def _write_all(self, unwritten: Iterable[tuple[Variant, str, bytes]]) -> None:
        """Write the files of variants rendered in memory, but those another process is
        writing or wrote. Blocking: run it on a thread."""
        for variant, coding, data in unwritten:
            lock = self.files.lock(variant)
            try:
                if lock.try_acquire() and not variant.exists(coding):
                    self.files.write_encoded(variant, coding, data)
            except OSError as failure:  # answered from memory meanwhile, and again next time
                log.warning(
                    "cannot write the rendered page %s (%s): sent from memory",
                    variant.version,
                    failure,
                )
            finally:
                lock.release()

    async def _render_file(
        self, key: str, variant: Variant, coding: str, made: _Made | None, make: _Maker
    ) -> Variant:
        """Write the variant's file in `coding`: compressed from its identity file when
        that is there, else rendered (with the identity file); under the variant's lock,
        or after the process holding it wrote it. `made`: the page, if made already.
        Returns the variant written (`make` may find a newer version)."""
        lock = self.files.lock(variant)
        if not lock.try_acquire():
            await lock.wait_released(until=lambda: variant.exists(coding))
            if variant.exists(coding):  # another process wrote it
                lock.close()
                return variant
            lock.try_acquire()  # or another one took it: writing it twice is harmless
        try:
            # Compressing and rendering a big page take long enough to stall other requests.
            if coding != "identity" and (identity := self.files.open(variant, "identity")):
                with identity.file:
                    await asyncio.to_thread(
                        self.files.write_from, variant, identity.file, (coding,)
                    )
                return variant
            if made is None:
                made = await make()
                newer = self.files.variant(
                    self._salt, key, made.version, variant.kind, variant.address
                )
                if newer != variant and newer.exists(coding):
                    return newer
                variant = newer
            pieces = made.pieces
            codings = ("identity",) if coding == "identity" else ("identity", coding)
            await asyncio.to_thread(lambda: self.files.write(variant, pieces(), codings))
            return variant
        finally:
            lock.release()
