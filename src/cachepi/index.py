"""The index cache: what clients see of a project and of the project list, made from each
upstream's pages (upstream_pages.py), combined (combine.py), routed (routing.py) and
screened by the policy (policy.py).

Memory holds, per project, a small record of its content version (enough to find its
rendered page), and the listings themselves (files and all) under a byte budget: a warm
page request needs the records only. The project list is never held: its version is known
from the upstream heads, and its names are read from the store to render it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from cachepi.budget import BudgetedLRU
from cachepi.combine import QUARANTINED, Combine, combine
from cachepi.policy import Policy, visible_versions
from cachepi.routing import Router
from cachepi.simple.model import File, Project, ProjectList
from cachepi.simple.names import normalize
from cachepi.store.protocols import LIST_KEY
from cachepi.types import CacheResult
from cachepi.upstream import Index, UpstreamError
from cachepi.upstream_pages import CachedPage, Fetched, UpstreamPages, digest
from cachepi.wheelmeta import lacks_metadata

# A parsed page takes about this many times its stored (msgpack) size in memory.
_PARSED_PER_STORED = 3
# What a project's version record costs in memory besides its strings, estimated.
_RECORD_COST = 300


class Refused(Exception):
    """The policy refuses a whole project; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class PageTraits:
    """What a project's page shows besides its listing's files, and what it is rendered
    with (catalog.page): small, so that memory keeps it for every page it knows."""

    lacks_metadata: bool  # some wheel has no PEP 658 metadata from its index
    lacks_upload_times: bool  # some file has no PEP 700 upload time from its index
    offers_provenance: bool  # some file has a PEP 740 provenance URL
    last_serial: int | str | None = None


@dataclass(frozen=True)
class Listing:
    """A project as clients see it: the files of its upstreams, combined and screened.

    `sources[i]` is the upstream that listed `project.files[i]`: a file is always downloaded
    from the index whose entry was shown. `refused` holds the files the policy keeps from
    clients, with the reason; `unavailable` the upstreams that failed just now (`stale`: a
    stale copy stood in, for one of them or while one is revalidated in the background).
    """

    project: Project
    sources: tuple[Index, ...]
    version: str
    base: str = ""  # the version of the upstream pages it was made of
    stale: bool = False
    unavailable: tuple[str, ...] = ()
    refused: Mapping[str, str] = field(default_factory=dict)
    valid_until: float = math.inf  # when a cooldown ends and the screening must be redone
    cache: CacheResult = CacheResult.HIT
    _by_filename: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def quarantined(self) -> bool:
        return self.project.status == QUARANTINED

    @functools.cached_property
    def traits(self) -> PageTraits:
        files = self.project.files
        return PageTraits(
            lacks_metadata=lacks_metadata(self.project),
            lacks_upload_times=any(file.upload_time is None for file in files),
            offers_provenance=any(file.provenance is not None for file in files),
            last_serial=self.project.last_serial,
        )

    def find(self, filename: str) -> tuple[File, Index] | None:
        if not self._by_filename:
            self._by_filename.update((f.filename, i) for i, f in enumerate(self.project.files))
        position = self._by_filename.get(filename)
        if position is None:
            return None
        return self.project.files[position], self.sources[position]


@dataclass(frozen=True)
class PageState:
    """A project's page as it stands, without its files: enough to find it rendered."""

    version: str  # of the listing: its upstream pages and its screening
    traits: PageTraits
    stale: bool = False
    unavailable: tuple[str, ...] = ()
    cache: CacheResult = CacheResult.HIT

    @property
    def last_serial(self) -> int | str | None:
        return self.traits.last_serial


@dataclass(frozen=True, slots=True)
class _Record:
    """What memory keeps of a project besides its listing: the version the listing made of
    the upstream pages `base` has, until `valid_until`."""

    base: str
    version: str
    valid_until: float
    traits: PageTraits


@dataclass(frozen=True)
class ListResult:
    """The project list as it stands: its version, and what the upstreams have (to read
    the names from, with `IndexCache.names`)."""

    version: str
    fetched: tuple[Fetched, ...]
    stale: bool = False
    unavailable: tuple[str, ...] = ()
    cache: CacheResult = CacheResult.HIT

    @property
    def last_serial(self) -> int | str | None:
        """The serial of a list only one index gave (combine.py: never one for several)."""
        heads = [f.head for f in self.fetched if f.found]
        return heads[0].last_serial if len(heads) == 1 and heads[0] is not None else None


class IndexCache:
    def __init__(
        self,
        pages: UpstreamPages,
        combine: Combine = Combine.MERGE,
        router: Router | None = None,
        policy: Policy | None = None,
        memory: int = 32 * 1024**2,
    ) -> None:
        """`pages`: what each upstream has. `combine`: how a project's indexes combine
        (combine.py). `router`: which indexes serve a project (default: all). `policy`:
        what clients may see of it. `memory`: bytes the listings may take, estimated (the
        version records take an eighth more)."""
        self.pages = pages
        self.upstreams = pages.upstreams
        self._listings: BudgetedLRU[str, Listing] = BudgetedLRU(memory)
        self._records: BudgetedLRU[str, _Record] = BudgetedLRU(memory // 8)
        self._making: dict[tuple[str, str], asyncio.Task[Listing | None]] = {}
        self._clock = pages.clock
        self._combine = combine
        everything = tuple(range(len(self.upstreams)))
        self._router = router or Router((), everything)
        self._policy = policy or Policy()

    # -- public ---------------------------------------------------------------------------

    async def page(self, name: str) -> PageState | None:
        """Project `name`'s page as it stands, from the upstream heads and the version
        record when memory has one (its files are not read), or None if no upstream has it.
        Raises as `listing` does."""
        fetched, asked = await self._gather(name)
        if fetched is None:
            return None
        now = self._clock()
        record = self._records.get(name)
        if record is None or record.base != _version(fetched) or now >= record.valid_until:
            listing = await self._made(name, fetched, now)
            if listing is None:
                return None
            record = _record(listing.base, listing)
        stale, unavailable = _degradation(fetched) if asked else (False, ())
        return PageState(
            record.version, record.traits, stale, unavailable, _cache_result(stale, asked)
        )

    async def listing(self, name: str) -> Listing | None:
        """Project `name` (normalized) as clients may see it, or None if no upstream has it.

        Raises Refused when the policy refuses the whole project (no upstream is asked),
        and UpstreamError when an index failed and none has the project.
        """
        fetched, asked = await self._gather(name)
        if fetched is None:
            return None
        now = self._clock()
        listing = self._listings.get(name)
        if listing is None or listing.base != _version(fetched) or now >= listing.valid_until:
            listing = await self._made(name, fetched, now)
            if listing is None:
                return None
        # Nothing asked: every entry was fresh, nothing failed (the common case, kept cheap).
        stale, unavailable = _degradation(fetched) if asked else (False, ())
        cache = _cache_result(stale, asked)
        if (stale, unavailable, cache) != (listing.stale, listing.unavailable, listing.cache):
            listing = dataclasses.replace(
                listing, stale=stale, unavailable=unavailable, cache=cache
            )
        return listing

    async def _gather(self, name: str) -> tuple[list[Fetched] | None, bool]:
        """The upstream heads of `name` (None: no upstream has it), and whether any was
        asked. Raises Refused, or the failure of an index when none has it."""
        if (reason := self._policy.project_refusal(name)) is not None:
            raise Refused(reason)
        fetched, asked = await self.pages.gather(name, self._router.positions(name), self._combine)
        if not any(f.found for f in fetched):
            _raise_failure(fetched)
            return None, asked
        return fetched, asked

    async def _made(self, name: str, fetched: list[Fetched], now: float) -> Listing | None:
        """The listing made of the upstream pages `fetched` names, read from the store
        (or as fetched just now), remembered with its version record; made once however
        many callers want it at once (a big page costs its size again each time)."""
        slot = (name, _version(fetched))
        task = self._making.get(slot)
        if task is None:
            task = asyncio.create_task(self._make(name, fetched, now))
            self._making[slot] = task
            task.add_done_callback(lambda _: self._making.pop(slot, None))
        # shield: a client hanging up must not cancel what others wait for.
        return await asyncio.shield(task)

    async def _make(self, name: str, fetched: list[Fetched], now: float) -> Listing | None:
        loaded = await self.pages.load(name, fetched)
        found = [(f.upstream, page) for f in loaded if isinstance(page := f.page, Project)]
        if not found:
            _raise_failure(loaded)
            return None
        base = _version(loaded)
        project, sources = combine(name, found)
        listing = self._screen(name, Listing(project, sources, base, base=base), now)
        size = sum(f.head.size for f in loaded if f.head is not None)
        self._listings.put(name, listing, _PARSED_PER_STORED * size)
        record = _record(base, listing)
        self._records.put(name, record, _RECORD_COST + 2 * len(record.version))
        return listing

    async def project_list(self) -> ListResult:
        """The project list as it stands: every project some index lists and serves (under
        the routes and the policy); its names come from `names`."""
        positions = tuple(range(len(self.upstreams)))
        fetched, asked = await self.pages.gather(LIST_KEY, positions, Combine.MERGE)
        if not any(f.found for f in fetched):
            _raise_failure(fetched)
            raise UpstreamError("no upstream lists any project")
        stale, unavailable = _degradation(fetched)
        cache = _cache_result(stale, asked)
        return ListResult(_version(fetched), tuple(fetched), stale, unavailable, cache)

    async def names(self, result: ListResult) -> tuple[str, ProjectList]:
        """The names of the project list `result` says, read from the store (or as fetched
        just now), and their version: the store's may be newer than `result`'s."""
        loaded = await self.pages.load(LIST_KEY, result.fetched)
        lists = [(f.position, page) for f in loaded if isinstance(page := f.page, ProjectList)]
        if not lists:
            _raise_failure(loaded)
            raise UpstreamError("no upstream lists any project")
        # Hundreds of thousands of names take long enough to stall other requests.
        names = await asyncio.to_thread(self._combine_lists, lists)
        return _version(loaded), names

    def _combine_lists(self, lists: Sequence[tuple[int, ProjectList]]) -> ProjectList:
        """The names of the lists, spelled as the first list that has them, if the index
        that lists them serves them and the policy does not refuse them; each once across
        lists (a name one list has twice stays twice, as when nothing is screened: PyPI's
        list has no such, and 800,000 names to remember would cost 60 MB). The last serial
        of a list only one index gave (combine.py: never one for several indexes)."""
        if len(lists) == 1 and not self._router.routed and not self._policy.active:
            return lists[0][1]
        seen: set[str] | None = set() if len(lists) > 1 else None
        pieces = []
        for position, plist in lists:
            for chunk in plist.chunks():
                kept = []
                for spelled, name in zip(
                    chunk.split("\n"), normalize(chunk).split("\n"), strict=True
                ):
                    if (
                        (seen is None or name not in seen)
                        and position in self._router.match(name)
                        and self._policy.project_refusal(name) is None
                    ):
                        kept.append(spelled)
                        if seen is not None:
                            seen.add(name)
                pieces.append("\n".join(kept))
        serial = lists[0][1].last_serial if len(lists) == 1 else None
        return ProjectList.of((piece for piece in pieces if piece), serial)

    def _screen(self, name: str, listing: Listing, now: float) -> Listing:
        """`listing` without the files the policy refuses (they go to `refused`)."""
        default = self._policy.min_release_age
        cooldowns = [
            default if up.min_release_age is None else up.min_release_age for up in listing.sources
        ]
        if not self._policy.active and not any(cooldowns):
            return listing
        files = listing.project.files
        screened = self._policy.screen(name, files, cooldowns, now)
        if not screened.refused:
            return dataclasses.replace(listing, valid_until=screened.valid_until)
        kept = [files[i] for i in screened.kept]
        project = msgspec.structs.replace(
            listing.project,
            files=kept,
            versions=visible_versions(listing.project.versions, kept, screened.refused),
        )
        return Listing(
            project,
            tuple(listing.sources[i] for i in screened.kept),
            f"{listing.version}~{digest('/'.join(sorted(screened.refused)).encode())}",
            base=listing.base,
            refused=screened.refused,
            valid_until=screened.valid_until,
        )

    def invalidate(self, name: str) -> None:
        """Make `name` (normalized; LIST_KEY for the project list) stale in every worker:
        the next request asks the upstream, conditionally and once, however many
        invalidations came before."""
        self.pages.invalidate(name)
        self._listings.pop(name)
        self._records.pop(name)

    def cached_pages(self, name: str) -> list[CachedPage]:
        return self.pages.cached_pages(name)


def _record(base: str, listing: Listing) -> _Record:
    return _Record(base, listing.version, listing.valid_until, listing.traits)


def _raise_failure(fetched: Sequence[Fetched]) -> None:
    """Somebody failed and nobody has it: do not claim a 404 that is not known."""
    for f in fetched:
        if f.head is None and f.failure is not None:
            raise f.failure


def _version(fetched: Sequence[Fetched]) -> str:
    """Identifies what the upstreams said, to know when a combined answer must be redone."""
    return "+".join(f"{f.upstream.name}:{f.head.digest if f.head else '-'}" for f in fetched)


def _degradation(fetched: Sequence[Fetched]) -> tuple[bool, tuple[str, ...]]:
    """Whether a stale copy stood in for an upstream (one that failed, or one being
    revalidated in the background), and the names of those that failed."""
    stale = any(f.stale or (f.head is not None and f.failure) for f in fetched)
    return stale, tuple(f.upstream.name for f in fetched if f.failure is not None)


def _cache_result(stale: bool, asked: bool) -> CacheResult:
    if stale:
        return CacheResult.STALE
    return CacheResult.MISS if asked else CacheResult.HIT
