"""One warm job's work: the files a lock names, found on the proxy's own pages and fetched
into its file cache, as the server fetches them for clients.

First every project's page (as clients see it: combined, routed, screened by the policy),
a few at a time; then the files the lock names on them, biggest first, a few at a time. A
file is fetched like a client's miss (one download per file, however many clients and jobs
want it), read to its end, and checked to be stored. What cannot be had is counted with
the reason, and the rest goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from cachepi.catalog import NotServed, file_spec
from cachepi.filecache import Busy, Claim, FileCache, FileSpec
from cachepi.index import IndexCache, Listing, Refused
from cachepi.simple.model import File
from cachepi.store.protocols import StoreUnavailable
from cachepi.types import DownloadFailed
from cachepi.upstream import UpstreamError, UpstreamNotFound
from cachepi.warm.lockfiles import Lock
from cachepi.warm.matching import Unmatched, named_file, pinned_files
from cachepi.warm.narrowing import Narrowing
from cachepi.warm.report import Report

PAGES_AT_ONCE = 8
FILES_AT_ONCE = 8
# A file refused for want of a download slot (the server is busy) is asked for again.
_BUSY_ATTEMPTS = 3
T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class _Wanted:
    project: str
    file: File
    sha256: str | None  # what the lock says it is, when it says
    size: int | None  # the page's, else the lock's


async def warm(
    lock: Lock,
    narrowing: Narrowing,
    index: IndexCache,
    files: FileCache,
    report: Report,
) -> None:
    """Fetch what `lock` names (narrowed) into `files`, counting in `report`."""
    report.skip(lock.skipped)
    named = {(f.project, f.filename): f for f in lock.files if narrowing.keeps(f.filename)}
    projects = sorted({project for project, _ in named} | {p.project for p in lock.pinned})
    report.projects = len(projects)
    pages = await _bounded(PAGES_AT_ONCE, _page(index, report), projects)
    listings = dict(zip(projects, pages, strict=True))

    wanted: dict[str, _Wanted] = {}
    unmatched: list[Unmatched] = []
    pages_by_filename = {
        project: {file.filename: file for file in found.project.files}
        for project, found in listings.items()
        if not isinstance(found, Unmatched)
    }
    for locked in named.values():
        found = listings[locked.project]
        if isinstance(found, Unmatched):
            unmatched.append(Unmatched(locked.filename, found.reason))
            continue
        file = named_file(pages_by_filename[locked.project], locked)
        if isinstance(file, Unmatched):
            refusal = found.refused.get(locked.filename)  # not listed: the policy's doing
            unmatched.append(file if refusal is None else Unmatched(file.file, refusal))
        else:
            size = file.size if file.size is not None else locked.size
            item = _Wanted(locked.project, file, locked.hashes.get("sha256"), size)
            wanted.setdefault(file.filename, item)
    for pinned in lock.pinned:
        found = listings[pinned.project]
        if isinstance(found, Unmatched):
            unmatched.append(Unmatched(pinned.requirement, found.reason))
            continue
        matched, missing = pinned_files(found.project.files, pinned)
        unmatched += missing
        for file in matched:
            if narrowing.keeps(file.filename):
                item = _Wanted(pinned.project, file, None, file.size)
                wanted.setdefault(file.filename, item)

    report.files = len(wanted) + len(unmatched)
    report.bytes = sum(w.size or 0 for w in wanted.values())
    for problem in unmatched:
        report.fail(problem.file, problem.reason)
    # Biggest first: the last minutes are not spent on one big file alone.
    order = sorted(wanted.values(), key=lambda w: w.size or 0, reverse=True)

    def fetch(item: _Wanted) -> Awaitable[None]:
        listing = listings[item.project]
        assert not isinstance(listing, Unmatched)
        return _fetch(files, listing, item, report)

    await _bounded(FILES_AT_ONCE, fetch, order)


def _page(index: IndexCache, report: Report) -> Callable[[str], Awaitable[Listing | Unmatched]]:
    async def page(project: str) -> Listing | Unmatched:
        try:
            listing = await index.listing(project)
        except Refused as refusal:
            return Unmatched(project, f"refused: {refusal}")
        except UpstreamError as error:
            return Unmatched(project, f"the index failed: {error}")
        finally:
            report.pages_read += 1
        if listing is None:
            return Unmatched(project, f"the index has no project {project}")
        if listing.quarantined:
            return Unmatched(project, f"{project} is quarantined by its index")
        return listing

    return page


async def _bounded(at_once: int, work: Callable[[U], Awaitable[T]], items: Iterable[U]) -> list[T]:
    """`work` on each of `items`, `at_once` at a time; the results in order."""
    slots = asyncio.Semaphore(at_once)

    async def one(item: U) -> T:
        async with slots:
            return await work(item)

    return await asyncio.gather(*map(one, items))


async def _fetch(files: FileCache, listing: Listing, item: _Wanted, report: Report) -> None:
    filename = item.file.filename
    try:
        spec = file_spec(listing, item.project, filename)
    except NotServed as refusal:
        report.fail(filename, str(refusal))
        return
    if not isinstance(spec, FileSpec):  # a lock naming a `.metadata` file: not a distribution
        report.fail(filename, "not a distribution file")
        return
    for attempt in range(1, _BUSY_ATTEMPTS + 1):
        try:
            stored, fetched = await _have(files, spec, report)
        except Busy as busy:
            if attempt < _BUSY_ATTEMPTS:
                await asyncio.sleep(busy.retry_after)
                continue
            report.fail(filename, f"the server is busy: {busy}")
        except UpstreamNotFound as error:
            report.fail(filename, f"the index lists it but upstream has no {error}")
        except (UpstreamError, DownloadFailed, StoreUnavailable) as error:
            report.fail(filename, str(error))
        else:
            if stored is None:
                report.fail(filename, "downloaded, but the cache did not keep it (too big?)")
            elif item.sha256 is not None and stored != item.sha256:
                report.fail(filename, f"stored, but it is not the lock's file (sha256 {stored})")
            elif fetched:
                report.cached += 1
            else:
                report.already += 1
        return


async def _have(files: FileCache, spec: FileSpec, report: Report) -> tuple[str | None, bool]:
    """Have `spec` in the cache, as a client's request would: the sha256 it is stored
    under (None: it was not kept), and whether it was fetched now. No bound per client: a
    job runs FILES_AT_ONCE downloads at most."""
    async with files.serve(spec, None) as found:
        if not isinstance(found, Claim):
            report.done_bytes += found.size
            return found.sha256, False
        async with contextlib.aclosing(found.chunks()) as chunks:
            async for data in chunks:  # verified at the end, stored before the last byte
                report.done_bytes += len(data)
    blob = await files.cached(spec)
    if blob is None:
        return None, True
    blob.close()
    return blob.sha256, True
