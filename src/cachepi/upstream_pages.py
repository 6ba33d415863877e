"""Each upstream's pages as held: in the metadata store (parsed, with their validators
and fetch time), and in memory only as small heads (content digest, validators, fetch
time) under a byte budget, fresh per the index's TTL. A page's contents are read from the
store when needed (to combine a listing, or to render it), never kept here.

A fresh entry is used as is; a stale one is revalidated with a conditional GET, one request
per (upstream, page) however many clients and worker processes ask; when the upstream fails,
the stale entry is used and said to be stale. With a stale bound (`STALE_WHILE_REVALIDATE`),
a page stale for less than the bound is answered at once, said to be stale, while one
revalidation runs in the background; and a page asked for shortly before it expires is
refreshed in the background then, so that a page in use never goes stale (freshness.py
judges which). A background refresh is the same single-flight refresh a waiting client's
is: clients that must wait join it, and other workers wait for its lock.

Invalidations by any worker reach the others within a second, by key (the store's log of
PAGES changes): each drops from memory only the pages invalidated.

An upstream 404 is remembered for the negative TTL; past it the record is useless (a 404
has no validators: it is asked again), and every name ever asked for would leave one
behind, so stale 404 records are swept from the store as traffic goes (`cachepi gc` too).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from cachepi.budget import BudgetedLRU
from cachepi.combine import Combine
from cachepi.freshness import Judgement, judge
from cachepi.metrics import Metrics
from cachepi.simple.model import Project, ProjectList
from cachepi.simple.parse import (
    ParseError,
    parse_project_html,
    parse_project_json,
    parse_project_list_html,
    parse_project_list_json,
    with_serial_header,
)
from cachepi.store.protocols import (
    LIST_KEY,
    PAGES,
    Locks,
    MetadataStore,
    PageRecord,
    StoreUnavailable,
)
from cachepi.upstream import Index, PageResponse, UpstreamError, UpstreamNotFound

log = logging.getLogger(__name__)

_JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_encode = msgspec.msgpack.Encoder().encode
_decode_project = msgspec.msgpack.Decoder(Project).decode
_decode_list = msgspec.msgpack.Decoder(ProjectList).decode


class _Serial(msgspec.Struct):
    """A stored project list, but its last serial only."""

    last_serial: int | str | None = None


_decode_serial = msgspec.msgpack.Decoder(_Serial).decode
# Stale 404 records deleted per sweep (it runs on the event loop: a few milliseconds); a
# sweep that finds more goes on a second later.
_SWEEP_LIMIT = 1000
# Sweeps are this far apart at most, and a negative TTL apart at least.
_SWEEP_EVERY = 60.0
MISSING = "404"  # the digest of an upstream's 404
# What a head costs in memory besides its strings (object, key, budget entry), estimated.
_HEAD_COST = 400
# Stored pages bigger than this are decoded on a thread: the event loop serves meanwhile.
_DECODE_ON_LOOP = 256 * 1024
# A page whose background refresh failed is not refreshed in the background again for this
# long (it is answered as held meanwhile): an upstream that refuses at once (a 401 once
# credentials expired, a 403, an unreadable page) would be asked, and the failure logged,
# after every failed refresh by the next request, hundreds of times a second for a hot page.
PAUSE_AFTER_FAILURE = 5.0
# What remembering such a pause costs in memory, estimated, and what they may take.
_PAUSE_COST = 200
_PAUSES_MEMORY = 1024 * 1024
# Upstream pages bigger than this are parsed on a thread (~10 us a file: a page of a few
# files costs less than the thread's round trip; bench/results/notes.md).
_PARSE_ON_LOOP = 8 * 1024


@dataclass(frozen=True, slots=True)
class Head:
    """What memory holds of one upstream's page: enough to tell its content version and
    freshness, and to revalidate it."""

    fetched_at: float
    etag: str | None
    last_modified: str | None
    digest: str  # identifies the content, for versions; MISSING when the upstream said 404
    size: int  # bytes of the stored page
    # A project list's last serial (a project's is in its listing): the list's names are
    # read only to render it, and its header needs the serial on every answer.
    last_serial: int | str | None = None

    @classmethod
    def of(cls, key: str, record: PageRecord, digest_of_body: str | None = None) -> Head:
        """`digest_of_body`: the body's digest, when known already."""
        if record.body is None:
            return cls(record.fetched_at, None, None, MISSING, 0)
        known = digest_of_body or digest(record.body)
        # msgpack skips the list's one string of names without reading it.
        serial = _decode_serial(record.body).last_serial if key == LIST_KEY else None
        return cls(
            record.fetched_at, record.etag, record.last_modified, known, len(record.body), serial
        )

    @property
    def found(self) -> bool:
        return self.digest != MISSING

    @property
    def cost(self) -> int:
        return _HEAD_COST + len(self.etag or "") + len(self.last_modified or "")


def digest(body: bytes) -> str:
    """A short identifier of some bytes, for telling content versions apart."""
    return hashlib.blake2b(body, digest_size=8).hexdigest()


class Fetched(NamedTuple):  # a tuple: made on every request, kept cheap
    """What one upstream has for a page just now."""

    position: int  # of the upstream, among those configured
    upstream: Index
    head: Head | None  # None: nothing usable
    # Why the upstream could not be asked successfully just now (then `head`, if any, is
    # a stale copy).
    failure: UpstreamError | None = None
    # The contents, when fetched just now (else `UpstreamPages.load` reads them).
    page: Project | ProjectList | None = None
    # `head` is a stale copy, answered while it is revalidated in the background.
    stale: bool = False

    @property
    def found(self) -> bool:
        return self.head is not None and self.head.found


@dataclass(frozen=True)
class CachedPage:
    """What is stored of one index's page of a project, for the dashboard."""

    index: str
    fetched_at: float
    fresh: bool  # by the same rule the cache serves it by
    files: int | None  # None: that index does not have the project


class UpstreamPages:
    def __init__(
        self,
        upstreams: Sequence[Index],
        store: MetadataStore,
        locks: Locks,
        negative_ttl: int,
        memory: int = 16 * 1024**2,
        clock: Callable[[], float] = time.time,
        offline: bool = False,
        metrics: Metrics | None = None,
        stale_while_revalidate: float = 0,
        background_limit: int = 32,
    ) -> None:
        """`memory`: bytes the heads may take. `offline`: whatever is stored is as fresh as
        it gets. `stale_while_revalidate`: seconds past its TTL a page is still answered
        while it is revalidated in the background, and hot pages are refreshed ahead of
        their expiry (0: neither; every stale page is waited for). `background_limit`:
        background refreshes at once; a page due for one beyond it is answered as held,
        and refreshed by a later request (half the upstream connections for pages: the
        other half is for clients that wait)."""
        self.upstreams = tuple(upstreams)
        self._store = store
        self._locks = locks
        self._metrics = metrics
        # Invalidations made by other worker processes, noticed at most a second late.
        self._generation = store.generation(PAGES)
        self._generation_checked = clock()
        self._negative_ttl = negative_ttl
        self._heads: BudgetedLRU[tuple[int, str], Head] = BudgetedLRU(memory)
        self._inflight: dict[tuple[int, str], asyncio.Task[Fetched]] = {}
        # Refreshes nobody waits for (some may be in `_inflight` too), until they end.
        self._background: set[asyncio.Task[Fetched]] = set()
        # When pages whose background refresh failed may be refreshed so again.
        self._paused: BudgetedLRU[tuple[int, str], float] = BudgetedLRU(_PAUSES_MEMORY)
        self._stale_bound = stale_while_revalidate
        self._background_limit = background_limit
        self.clock = clock
        self._offline = offline
        self._sweep_at = clock()  # when stale 404 records are next swept

    def invalidate(self, name: str) -> None:
        """Make `name` (normalized; LIST_KEY for the project list) stale in every worker:
        the next request asks the upstream, conditionally and once, however many
        invalidations came before."""
        self._store.expire_pages(name)
        self._forget(name)
        for position in range(len(self.upstreams)):
            # A refresh already asked may answer from before: later callers ask anew.
            self._inflight.pop((position, name), None)

    def _forget(self, name: str) -> None:
        for position in range(len(self.upstreams)):
            self._heads.pop((position, name))

    def _invalidations(self) -> int | None:
        """The count of invalidations by any worker (None: the store does not say)."""
        try:
            return self._store.generation(PAGES)
        except StoreUnavailable:
            return None

    def _invalidated(self, key: str, since: int) -> bool:
        """Whether any worker invalidated `key` after invalidation number `since` (a store
        that does not say: perhaps)."""
        try:
            changed = self._store.changes(PAGES, since).keys
        except StoreUnavailable:
            return True
        return changed is None or key in changed

    def cached_pages(self, name: str) -> list[CachedPage]:
        """What is stored of `name`'s pages, per configured index, freshness judged as
        when serving."""
        positions = {up.url: position for position, up in enumerate(self.upstreams)}
        now = self.clock()
        pages = []
        for url, record in self._store.pages_of(name):
            position = positions.get(url)
            if position is None:  # an index no longer configured
                continue
            upstream = self.upstreams[position]
            page = None if record.body is None else _decode(name, record.body)
            files = len(page.files) if isinstance(page, Project) else None
            fresh = self._fresh(upstream, Head.of(name, record), now)
            pages.append(CachedPage(upstream.name, record.fetched_at, fresh, files))
        return pages

    def _follow_other_workers(self, now: float) -> None:
        if now - self._generation_checked < 1.0:
            return
        self._generation_checked = now
        if now >= self._sweep_at:
            self._sweep_missing(now)
        try:
            changed = self._store.changes(PAGES, self._generation)
        except StoreUnavailable:  # a shared store that is down: keep what memory holds
            return
        # Somebody invalidated: what they did is reloaded from the store, nothing else.
        self._generation = changed.generation
        if changed.keys is None:
            self._heads.clear()
        else:
            for key in changed.keys:
                self._forget(key)

    def _sweep_missing(self, now: float) -> None:
        """Delete the stored 404 records past the negative TTL (of every index: it is at
        most that), some at a time. Offline, stored answers are all there is: none go."""
        if self._offline:
            self._sweep_at = math.inf
            return
        try:
            removed = delete_missing_pages(self._store, now - self._negative_ttl, _SWEEP_LIMIT)
        except StoreUnavailable:  # a shared store that is down: try again later
            removed = 0
        more = removed >= _SWEEP_LIMIT
        self._sweep_at = now + (1.0 if more else min(max(self._negative_ttl, 1), _SWEEP_EVERY))

    # -- heads ----------------------------------------------------------------------------

    async def gather(
        self, key: str, positions: tuple[int, ...], mode: Combine
    ) -> tuple[list[Fetched], bool]:
        """What the upstreams at `positions` have for `key`, in order (with "first", up to
        the first that has it: the others are not asked), and whether any was not fresh:
        asked just now, or answered stale while revalidated in the background."""
        now = self.clock()
        self._follow_other_workers(now)
        if mode is Combine.FIRST:
            results: list[Fetched] = []
            asked = False
            for position in positions:
                fetched = self._held(position, key, now)
                if fetched is None:
                    asked = True
                    fetched = await self._refresh(position, key)
                asked = asked or fetched.stale
                results.append(fetched)
                if not mode.asks_after(fetched.found):
                    break
            return results, asked
        known = [self._held(position, key, now) for position in positions]
        pending = [i for i, fetched in enumerate(known) if fetched is None]
        if pending:  # the fast path (everything fresh) awaits nothing
            refreshed = await asyncio.gather(*(self._refresh(positions[i], key) for i in pending))
            for i, fetched in zip(pending, refreshed, strict=True):
                known[i] = fetched
        results = [f for f in known if f is not None]
        return results, bool(pending) or any(f.stale for f in results)

    def _held(self, position: int, key: str, now: float) -> Fetched | None:
        """What memory or the store holds for the page, if it may answer now (starting its
        refresh in the background if one is due); None: the caller must refresh it."""
        head = self._head(position, key)
        if head is None:
            return None
        upstream = self.upstreams[position]
        judgement = self._judge(upstream, head, now)
        if judgement is Judgement.FRESH:
            return Fetched(position, upstream, head)
        if judgement is Judgement.WAIT:
            return None
        self._refresh_in_background(position, key, judgement)
        return Fetched(position, upstream, head, stale=judgement is Judgement.STALE_AND_REFRESH)

    def _judge(self, upstream: Index, head: Head, now: float) -> Judgement:
        if self._offline:
            return Judgement.FRESH
        if head.fetched_at <= 0:  # invalidated: the next answer is the upstream's, whatever
            return Judgement.WAIT  # the bound
        ttl = upstream.ttl if head.found else min(upstream.ttl, self._negative_ttl)
        return judge(now - head.fetched_at, ttl, self._stale_bound, head.found)

    def _fresh(self, upstream: Index, head: Head, now: float) -> bool:
        return self._judge(upstream, head, now).fresh

    def _head(self, position: int, key: str) -> Head | None:
        """The head from memory or, on a miss, from the store."""
        head = self._heads.get((position, key))
        if head is not None:
            return head
        try:
            record = self._store.get_page(self.upstreams[position].url, key)
        except StoreUnavailable:  # a shared store that is down: nothing known
            return None
        if record is None:
            return None
        self._loaded()
        return self._remember(position, key, Head.of(key, record))

    def _remember(self, position: int, key: str, head: Head) -> Head:
        self._heads.put((position, key), head, head.cost + len(key))
        return head

    def _loaded(self) -> None:
        """A page read from the store into memory: a head, or contents."""
        if self._metrics is not None:
            self._metrics.page_loads.inc()

    # -- contents -------------------------------------------------------------------------

    async def load(self, key: str, fetched: Sequence[Fetched]) -> list[Fetched]:
        """`fetched`, each page that was found with its contents: as fetched just now, or
        read from the store. The store may hold a newer page than a head says (another
        process refreshed it): that one comes back, with its head; a page gone from the
        store comes back as nothing. UpstreamError if the store does not answer."""
        loaded = []
        for f in fetched:
            if f.page is not None or not f.found:
                loaded.append(f)
                continue
            try:
                record = self._store.get_page(f.upstream.url, key)
            except StoreUnavailable as error:
                raise UpstreamError(f"cannot read the page of {key!r}: {error}", 503) from None
            if record is None:
                loaded.append(f._replace(head=None))
                continue
            assert f.head is not None
            same = record.fetched_at == f.head.fetched_at  # the same write: the same bytes
            head = Head.of(key, record, f.head.digest if same else None)
            if head != f.head:
                self._remember(f.position, key, head)
            page = None
            if record.body is not None:
                page = await _decoded(key, record.body)
                self._loaded()
            loaded.append(f._replace(head=head, page=page))
        return loaded

    # -- refreshing -----------------------------------------------------------------------

    async def _refresh(self, position: int, key: str) -> Fetched:
        """One upstream request per (upstream, page) however many callers wait for it."""
        task = self._inflight.get((position, key))
        if task is None:
            task = self._start_refresh(position, key)
        # shield: a client hanging up must not cancel the fetch others are waiting for.
        return await asyncio.shield(task)

    def _start_refresh(self, position: int, key: str) -> asyncio.Task[Fetched]:
        memory_key = (position, key)
        task = asyncio.create_task(self._fetch(position, key))
        self._inflight[memory_key] = task
        task.add_done_callback(lambda done: self._forget_inflight(memory_key, done))
        return task

    def _forget_inflight(self, memory_key: tuple[int, str], task: asyncio.Task[Fetched]) -> None:
        if self._inflight.get(memory_key) is task:  # not a newer one, after an invalidation
            del self._inflight[memory_key]

    def _refresh_in_background(self, position: int, key: str, judgement: Judgement) -> None:
        """Start the page's refresh, unless one runs already (in the background or for
        waiting clients: either serves), and wait for nothing."""
        if (position, key) in self._inflight:
            return
        paused = self._paused.get((position, key))
        if paused is not None:
            if self.clock() < paused:
                return
            self._paused.pop((position, key))
        trigger = "ahead" if judgement is Judgement.FRESH_AND_REFRESH else "stale"
        if len(self._background) >= self._background_limit:
            # Thousands of pages gone stale at once (an outage) must not take every
            # connection: a client waiting for a page it lacks would queue behind them.
            if self._metrics is not None:
                self._metrics.background_refresh(trigger, "deferred")
            return
        task = self._start_refresh(position, key)
        self._background.add(task)
        task.add_done_callback(lambda done: self._background_done(trigger, position, key, done))

    def _background_done(
        self, trigger: str, position: int, key: str, task: asyncio.Task[Fetched]
    ) -> None:
        """Count a background refresh by its outcome; what it raised is taken and logged
        here (clients that joined it got it too). A failure pauses the page's next one."""
        self._background.discard(task)
        if task.cancelled():  # at shutdown
            return
        error = task.exception()
        if error is not None:
            outcome = "error"
            log.error("refreshing %r in the background failed", key, exc_info=error)
        else:
            outcome = "failed" if task.result().failure is not None else "ok"
        if outcome != "ok":
            until = self.clock() + PAUSE_AFTER_FAILURE
            self._paused.put((position, key), until, _PAUSE_COST + len(key))
        if self._metrics is not None:
            self._metrics.background_refresh(trigger, outcome)

    async def wait_background(self) -> None:
        """Wait until the refreshes running in the background have ended (tests use it)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def close(self) -> None:
        """Cancel the refreshes running in the background, and wait until they ended."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _fetch(self, position: int, key: str) -> Fetched:
        """Refresh one page; one worker process at a time asks the upstream."""
        upstream = self.upstreams[position]
        lock = self._locks.lock(f"page {upstream.url} {key}")
        if not lock.try_acquire():
            await lock.wait_released()  # then the other worker's answer is in the store
        try:
            # What the store holds now: another worker may have refreshed it.
            old = self._heads.get((position, key))
            try:
                record = self._store.get_page(upstream.url, key)
            except StoreUnavailable:  # a shared store that is down: what memory holds
                record = None
            if record is not None and (old is None or old.fetched_at != record.fetched_at):
                self._loaded()
                old = self._remember(position, key, Head.of(key, record))
            # Fresh with no refresh due: another worker's, or this one's, refresh is done.
            # (Merely fresh is not enough: a refresh ahead of expiry must ask.)
            if old is not None and self._judge(upstream, old, self.clock()) is Judgement.FRESH:
                return Fetched(position, upstream, old)
            return await self._ask_upstream(position, key, old, record)
        finally:
            lock.release()

    async def _ask_upstream(
        self, position: int, key: str, old: Head | None, stored: PageRecord | None
    ) -> Fetched:
        """`stored`: the record `old` was read from (None if the store did not answer)."""
        upstream = self.upstreams[position]
        validators = (old.etag, old.last_modified) if old and old.found else (None, None)
        path = f"{key}/" if key != LIST_KEY else ""
        now = self.clock()
        invalidations = self._invalidations()
        page: Project | ProjectList | None = None
        try:
            response = await upstream.fetch_page(path, *validators)
            if response.status == 304 and old is not None:
                body = stored.body if stored is not None else None
                record = PageRecord(now, response.etag, response.last_modified, body)
                head = dataclasses.replace(
                    old, fetched_at=now, etag=record.etag, last_modified=record.last_modified
                )
            else:
                page, body = await _parsed(key, response)
                record = PageRecord(now, response.etag, response.last_modified, body)
                head = Head.of(key, record)
        except UpstreamNotFound:
            record = PageRecord(now, None, None, None)
            head = Head.of(key, record)
        except (UpstreamError, ParseError) as error:
            failure = (
                error
                if isinstance(error, UpstreamError)
                else UpstreamError(f"{upstream.url}: unreadable page for {key!r} ({error})")
            )
            outcome = "nothing cached" if old is None else "serving stale copy"
            log.warning("upstream %s failed for %r, %s: %s", upstream.url, key, outcome, failure)
            return Fetched(position, upstream, old, failure)
        if invalidations is not None and self._invalidated(key, invalidations):
            # Somebody invalidated it meanwhile: this answer may predate what they expect.
            record = msgspec.structs.replace(record, fetched_at=0.0)
            head = dataclasses.replace(head, fetched_at=0.0)
        if record.body is not None or not head.found:  # a 304 with the store down: no body
            try:
                self._store.put_page(upstream.url, key, record)
            except StoreUnavailable as failure:  # still good to serve from memory
                log.error("cannot store the page %r of %s: %s", key, upstream.url, failure)
        self._remember(position, key, head)
        return Fetched(position, upstream, head, page=page)


def forget_pages(store: MetadataStore, key: str | None) -> int:
    """Delete the stored pages of `key` (None: all) and tell every worker; returns how many.
    Unlike invalidating, nothing is kept to revalidate with: the next request refetches."""
    return store.delete_pages(key)


def delete_missing_pages(store: MetadataStore, before: float, limit: int | None = None) -> int:
    """Delete stored 404 records fetched before `before`: up to `limit`, or all (in steps
    of 10,000); returns how many."""
    if limit is not None:
        return store.delete_missing_pages(before, limit)
    removed = 0
    while (step := store.delete_missing_pages(before, 10_000)) > 0:
        removed += step
    return removed


async def _parsed(key: str, response: PageResponse) -> tuple[Project | ProjectList, bytes]:
    """`parse_and_encode`: on a thread but for a small page. Big pages (a 800,000-name
    project list) take seconds to parse: the event loop serves meanwhile."""
    if len(response.body or b"") <= _PARSE_ON_LOOP:
        return parse_and_encode(key, response)
    return await asyncio.to_thread(parse_and_encode, key, response)


async def _decoded(key: str, body: bytes) -> Project | ProjectList:
    if len(body) <= _DECODE_ON_LOOP:
        return _decode(key, body)
    return await asyncio.to_thread(_decode, key, body)


def _decode(key: str, body: bytes) -> Project | ProjectList:
    """A stored page. A project list stored before `ProjectList.lines` comes as lines too."""
    if key != LIST_KEY:
        return _decode_project(body)
    plist = _decode_list(body)
    if not plist.lines:
        old = _decode_old_list(body)
        return ProjectList.of(old.names, old.last_serial) if old.names else plist
    return plist


class _OldList(msgspec.Struct):
    """How a project list was stored before `ProjectList.lines`."""

    names: list[str] = []
    last_serial: int | str | None = None


_decode_old_list = msgspec.msgpack.Decoder(_OldList).decode


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
    page = with_serial_header(page, response.last_serial)
    return page, _encode(page)
