"""The index cache: upstream pages kept fresh per TTL, revalidated cheaply, merged.

Each (upstream, page) is an `Entry`: the parsed page plus the validators and fetch time,
persisted in the metadata store and mirrored in a bounded in-memory LRU. A fresh entry is used
as is; a stale one is revalidated with a conditional GET (one request however many clients
ask); when the upstream fails, the stale entry is used and the answer marked stale.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from cachepi.locks import Locks
from cachepi.simple.model import File, Project, ProjectList
from cachepi.simple.names import normalize
from cachepi.simple.parse import (
    ParseError,
    parse_project_html,
    parse_project_json,
    parse_project_list_html,
    parse_project_list_json,
)
from cachepi.store.metadata import LIST_KEY, MetadataStore, PageRecord
from cachepi.upstream import PageResponse, Upstream, UpstreamError, UpstreamNotFound
from cachepi.wheelmeta import lacks_metadata

log = logging.getLogger(__name__)

_JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_PAGES = "pages"  # the generation counter other workers watch for invalidations
QUARANTINED = "quarantined"
_encode = msgspec.msgpack.Encoder().encode
_decode_project = msgspec.msgpack.Decoder(Project).decode
_decode_list = msgspec.msgpack.Decoder(ProjectList).decode


@dataclass(frozen=True)
class Entry:
    """One upstream's page as we hold it; `page` is None when the upstream said 404."""

    record: PageRecord
    page: Project | ProjectList | None
    digest: str  # identifies the content, for rendered-bytes caching

    @classmethod
    def from_record(cls, key: str, record: PageRecord) -> Entry:
        if record.body is None:
            return cls(record, None, "404")
        page = _decode_list(record.body) if key == LIST_KEY else _decode_project(record.body)
        return cls(record, page, _digest(record.body))


def _digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=8).hexdigest()


# An upstream's entry for a page (None: nothing usable) and, when the upstream could not be
# asked successfully just now, why (then the entry, if any, is a stale copy).
Fetched = tuple[Entry | None, UpstreamError | None]


@dataclass(frozen=True)
class Listing:
    """A project as clients see it: the files of every upstream, merged.

    `sources[i]` is the upstream that listed `project.files[i]`: a file is always downloaded
    from the index whose entry was shown.
    """

    project: Project
    sources: tuple[Upstream, ...]
    version: str
    stale: bool
    _by_filename: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def quarantined(self) -> bool:
        return self.project.status == QUARANTINED

    @functools.cached_property
    def lacks_metadata(self) -> bool:
        return lacks_metadata(self.project)

    def find(self, filename: str) -> tuple[File, Upstream] | None:
        if not self._by_filename:
            self._by_filename.update((f.filename, i) for i, f in enumerate(self.project.files))
        position = self._by_filename.get(filename)
        if position is None:
            return None
        return self.project.files[position], self.sources[position]


@dataclass(frozen=True)
class ListResult:
    names: ProjectList
    version: str
    stale: bool


class IndexCache:
    def __init__(
        self,
        upstreams: Sequence[Upstream],
        store: MetadataStore,
        locks: Locks,
        negative_ttl: int,
        memory_entries: int = 4096,
        clock: Callable[[], float] = time.time,
        offline: bool = False,
    ) -> None:
        self.upstreams = tuple(upstreams)
        self._store = store
        self._locks = locks
        # Invalidations made by other worker processes, noticed at most a second late.
        self._generation = store.generation(_PAGES)
        self._generation_checked = clock()
        self._negative_ttl = negative_ttl
        self._memory: OrderedDict[tuple[int, str], Entry] = OrderedDict()
        self._memory_entries = memory_entries
        self._inflight: dict[tuple[int, str], asyncio.Task[Fetched]] = {}
        self._merged: OrderedDict[str, Listing] = OrderedDict()
        self._clock = clock
        # Offline, whatever is stored is as fresh as it gets.
        self._offline = offline

    # -- public ---------------------------------------------------------------------------

    async def listing(self, name: str) -> Listing | None:
        """The merged project `name` (normalized), or None if no upstream has it."""
        entries = await self._gather(name)
        found = [
            (up, e) for up, (e, _) in zip(self.upstreams, entries, strict=True) if e and e.page
        ]
        if not found:
            for entry, failure in entries:
                if entry is None and failure is not None:
                    # Somebody failed and nobody has it: do not claim a 404 that is not known.
                    raise failure
            return None
        version = "+".join(entry.digest if entry else "-" for entry, _ in entries)
        stale = any(entry is not None and failure for entry, failure in entries)
        cached = self._merged.get(name)
        if cached is not None and cached.version == version:
            if cached.stale != stale:
                cached = Listing(cached.project, cached.sources, version, stale)
                self._merged[name] = cached
            self._merged.move_to_end(name)
            return cached
        listing = merge(name, [(up, e.page) for up, e in found], version, stale)  # type: ignore[misc]
        self._merged[name] = listing
        if len(self._merged) > self._memory_entries:
            self._merged.popitem(last=False)
        return listing

    async def project_list(self) -> ListResult:
        entries = await self._gather(LIST_KEY)
        lists = [e.page for e, _ in entries if e is not None and isinstance(e.page, ProjectList)]
        if not lists:
            failures = [failure for _, failure in entries if failure is not None]
            raise failures[0] if failures else UpstreamError("no upstream lists any project")
        names = lists[0] if len(lists) == 1 else merge_lists(lists)
        version = "+".join(e.digest if e else "-" for e, _ in entries)
        return ListResult(names, version, any(e is not None and f for e, f in entries))

    def invalidate(self, name: str) -> None:
        """Make `name` (normalized; LIST_KEY for the project list) stale in every worker:
        the next request asks the upstream, conditionally and once, however many
        invalidations came before."""
        self._store.expire_pages(name)
        self._store.bump(_PAGES)
        for position in range(len(self.upstreams)):
            self._memory.pop((position, name), None)
        self._merged.pop(name, None)

    def _follow_other_workers(self, now: float) -> None:
        if now - self._generation_checked < 1.0:
            return
        self._generation_checked = now
        generation = self._store.generation(_PAGES)
        if generation != self._generation:  # somebody invalidated: reload from the store
            self._generation = generation
            self._memory.clear()
            self._merged.clear()

    # -- entries --------------------------------------------------------------------------

    async def _gather(self, key: str) -> list[Fetched]:
        """What every upstream has for `key`, in order."""
        now = self._clock()
        self._follow_other_workers(now)
        results: list[Fetched | None] = []
        pending: list[int] = []
        for position, upstream in enumerate(self.upstreams):
            entry = self._load(position, key)
            if entry is not None and self._fresh(upstream, entry, now):
                results.append((entry, None))
            else:
                results.append(None)
                pending.append(position)
        if pending:  # the fast path (everything fresh) awaits nothing
            fetched = await asyncio.gather(*(self._refresh(pos, key) for pos in pending))
            for position, result in zip(pending, fetched, strict=True):
                results[position] = result
        return results  # type: ignore[return-value]

    def _fresh(self, upstream: Upstream, entry: Entry, now: float) -> bool:
        if self._offline:
            return True
        ttl = upstream.ttl if entry.page is not None else min(upstream.ttl, self._negative_ttl)
        return now - entry.record.fetched_at < ttl

    def _load(self, position: int, key: str, from_store: bool = False) -> Entry | None:
        """The entry from memory or, on a miss or with `from_store` (another worker may
        have refreshed it), from the store."""
        memory_key = (position, key)
        entry = self._memory.get(memory_key)
        if entry is not None and not from_store:
            self._memory.move_to_end(memory_key)
            return entry
        record = self._store.get_page(self.upstreams[position].url, key)
        if record is None:
            return None
        if entry is not None and entry.record.fetched_at == record.fetched_at:
            return entry
        try:
            entry = Entry.from_record(key, record)
        except msgspec.DecodeError:
            log.warning("dropping an unreadable cached page %r", key)
            return None
        self._remember(memory_key, entry)
        return entry

    def _remember(self, memory_key: tuple[int, str], entry: Entry) -> None:
        self._memory[memory_key] = entry
        self._memory.move_to_end(memory_key)
        if len(self._memory) > self._memory_entries:
            self._memory.popitem(last=False)

    async def _refresh(self, position: int, key: str) -> Fetched:
        """One upstream request per (upstream, page) however many callers wait for it."""
        memory_key = (position, key)
        task = self._inflight.get(memory_key)
        if task is None:
            task = asyncio.create_task(self._fetch(position, key))
            self._inflight[memory_key] = task
            task.add_done_callback(lambda _: self._inflight.pop(memory_key, None))
        # shield: a client hanging up must not cancel the fetch others are waiting for.
        return await asyncio.shield(task)

    async def _fetch(self, position: int, key: str) -> Fetched:
        """Refresh one page; one worker process at a time asks the upstream."""
        upstream = self.upstreams[position]
        lock = self._locks.lock(f"page {upstream.url} {key}")
        if not lock.try_acquire():
            await lock.wait_released()  # then the other worker's answer is in the store
        try:
            old = self._load(position, key, from_store=True)
            if old is not None and self._fresh(upstream, old, self._clock()):
                return old, None
            return await self._ask_upstream(position, key, old)
        finally:
            lock.release()

    async def _ask_upstream(self, position: int, key: str, old: Entry | None) -> Fetched:
        upstream = self.upstreams[position]
        validators = (
            (old.record.etag, old.record.last_modified) if old and old.page else (None, None)
        )
        path = f"{key}/" if key != LIST_KEY else ""
        now = self._clock()
        try:
            response = await upstream.fetch_page(path, *validators)
            if response.status == 304 and old is not None:
                record = PageRecord(now, response.etag, response.last_modified, old.record.body)
                entry = Entry(record, old.page, old.digest)
            else:
                # Big pages (a 700,000-name project list) take seconds to parse: keep the
                # event loop serving meanwhile.
                page, body = await asyncio.to_thread(parse_and_encode, key, response)
                record = PageRecord(now, response.etag, response.last_modified, body)
                entry = Entry(record, page, _digest(body))
        except UpstreamNotFound:
            entry = Entry(PageRecord(now, None, None, None), None, "404")
        except (UpstreamError, ParseError) as error:
            failure = (
                error
                if isinstance(error, UpstreamError)
                else UpstreamError(f"{upstream.url}: unreadable page for {key!r} ({error})")
            )
            outcome = "nothing cached" if old is None else "serving stale copy"
            log.warning("upstream %s failed for %r, %s: %s", upstream.url, key, outcome, failure)
            return old, failure
        try:
            self._store.put_page(upstream.url, key, entry.record)
        except sqlite3.Error as failure:  # still good to serve from memory
            log.error("cannot store the page %r of %s: %s", key, upstream.url, failure)
        self._remember((position, key), entry)
        return entry, None


def parse_and_encode(key: str, response: PageResponse) -> tuple[Project | ProjectList, bytes]:
    """An upstream page as our model, and that model as stored (msgpack)."""
    body = response.body or b""
    is_json = response.content_type.split(";", 1)[0].strip().lower() == _JSON_TYPE
    page: Project | ProjectList
    if key == LIST_KEY:
        page = parse_project_list_json(body) if is_json else parse_project_list_html(body)
    elif is_json:
        page = parse_project_json(body, response.url)
    else:
        page = parse_project_html(body, response.url, key)
    return page, _encode(page)


def merge(
    name: str, pages: Sequence[tuple[Upstream, Project]], version: str, stale: bool
) -> Listing:
    """proxpi's merge: the first index's files first; later indexes add filenames it lacks.

    The first index that has the project speaks for it: a project it quarantined (PEP 792)
    offers no files at all.
    """
    first = pages[0][1]
    if first.status == QUARANTINED:
        return Listing(msgspec.structs.replace(first, files=[], versions=[]), (), version, stale)
    if len(pages) == 1:
        return Listing(first, (pages[0][0],) * len(first.files), version, stale)
    files: list[File] = []
    sources: list[Upstream] = []
    seen: dict[str, File] = {}
    versions: set[str] = set()
    for upstream, page in pages:
        versions.update(page.versions or ())
        for file in page.files:
            known = seen.get(file.filename)
            if known is None:
                seen[file.filename] = file
                files.append(file)
                sources.append(upstream)
            elif _conflicting(known, file):
                log.warning(
                    "hash conflict for %s/%s: %s lists different bytes; keeping the first index's",
                    name,
                    file.filename,
                    upstream.url,
                )
    merged = msgspec.structs.replace(
        first, files=files, versions=sorted(versions) if versions else first.versions
    )
    return Listing(merged, tuple(sources), version, stale)


def _conflicting(a: File, b: File) -> bool:
    shared = a.hashes.keys() & b.hashes.keys()
    return any(a.hashes[h] != b.hashes[h] for h in shared)


def merge_lists(lists: Sequence[ProjectList]) -> ProjectList:
    """Every project of every list once, spelled as the first list that has it spells it."""
    seen: dict[str, str] = {}
    for plist in lists:
        for spelled in plist.names:
            seen.setdefault(normalize(spelled), spelled)
    return ProjectList(names=list(seen.values()))
