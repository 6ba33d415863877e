"""The index cache: what clients see of a project and of the project list, made from each
upstream's pages (upstream_pages.py), combined (combine.py), routed (routing.py) and
screened by the policy (policy.py), and remembered per content version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

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


class Refused(Exception):
    """The policy refuses a whole project; the message says why, in one line."""


@dataclass(frozen=True)
class Listing:
    """A project as clients see it: the files of its upstreams, combined and screened.

    `sources[i]` is the upstream that listed `project.files[i]`: a file is always downloaded
    from the index whose entry was shown. `refused` holds the files the policy keeps from
    clients, with the reason; `unavailable` the upstreams that failed just now (`stale`: one
    of them answered with its stale copy).
    """

    project: Project
    sources: tuple[Index, ...]
    version: str
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
    def lacks_metadata(self) -> bool:
        return lacks_metadata(self.project)

    @functools.cached_property
    def lacks_upload_times(self) -> bool:
        return any(file.upload_time is None for file in self.project.files)

    @functools.cached_property
    def offers_provenance(self) -> bool:
        return any(file.provenance is not None for file in self.project.files)

    def find(self, filename: str) -> tuple[File, Index] | None:
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
    stale: bool = False
    unavailable: tuple[str, ...] = ()
    cache: CacheResult = CacheResult.HIT


class IndexCache:
    def __init__(
        self,
        pages: UpstreamPages,
        combine: Combine = Combine.MERGE,
        router: Router | None = None,
        policy: Policy | None = None,
        memory_entries: int = 4096,
    ) -> None:
        """`pages`: what each upstream has. `combine`: how a project's indexes combine
        (combine.py). `router`: which indexes serve a project (default: all). `policy`:
        what clients may see of it. `memory_entries`: listings kept."""
        self.pages = pages
        self.upstreams = pages.upstreams
        self._memory_entries = memory_entries
        # name -> (the version of its upstream entries, the listing made of them)
        self._listings: OrderedDict[str, tuple[str, Listing]] = OrderedDict()
        self._names: ListResult | None = None  # the combined project list, by version
        self._clock = pages.clock
        self._combine = combine
        everything = tuple(range(len(self.upstreams)))
        self._router = router or Router((), everything)
        self._policy = policy or Policy()

    # -- public ---------------------------------------------------------------------------

    async def listing(self, name: str) -> Listing | None:
        """Project `name` (normalized) as clients may see it, or None if no upstream has it.

        Raises Refused when the policy refuses the whole project (no upstream is asked),
        and UpstreamError when an index failed and none has the project.
        """
        if (reason := self._policy.project_refusal(name)) is not None:
            raise Refused(reason)
        fetched, asked = await self.pages.gather(name, self._router.positions(name), self._combine)
        found = [(f.upstream, page) for f in fetched if isinstance(page := f.page, Project)]
        if not found:
            for f in fetched:
                if f.entry is None and f.failure is not None:
                    # Somebody failed and nobody has it: do not claim a 404 that is not known.
                    raise f.failure
            return None
        version = _version(fetched)
        now = self._clock()
        held = self._listings.get(name)
        if held is not None and held[0] == version and now < held[1].valid_until:
            self._listings.move_to_end(name)
            listing = held[1]
        else:
            project, sources = combine(name, found)
            listing = self._screen(name, Listing(project, sources, version), now)
            self._listings[name] = (version, listing)
            if len(self._listings) > self._memory_entries:
                self._listings.popitem(last=False)
        # Nothing asked: every entry was fresh, nothing failed (the common case, kept cheap).
        stale, unavailable = _degradation(fetched) if asked else (False, ())
        cache = _cache_result(stale, asked)
        if (stale, unavailable, cache) != (listing.stale, listing.unavailable, listing.cache):
            listing = dataclasses.replace(
                listing, stale=stale, unavailable=unavailable, cache=cache
            )
        return listing

    async def project_list(self) -> ListResult:
        """Every project some index lists and serves (under the routes and the policy)."""
        positions = tuple(range(len(self.upstreams)))
        fetched, asked = await self.pages.gather(LIST_KEY, positions, Combine.MERGE)
        lists = [
            (position, f.page)
            for position, f in zip(positions, fetched, strict=True)
            if isinstance(f.page, ProjectList)
        ]
        if not lists:
            failures = [f.failure for f in fetched if f.failure is not None]
            raise failures[0] if failures else UpstreamError("no upstream lists any project")
        version = _version(fetched)
        if self._names is None or self._names.version != version:
            # Hundreds of thousands of names take long enough to stall other requests.
            names = await asyncio.to_thread(self._combine_lists, lists)
            self._names = ListResult(names, version)
        stale, unavailable = _degradation(fetched)
        cache = _cache_result(stale, asked)
        return ListResult(self._names.names, version, stale, unavailable, cache)

    def _combine_lists(self, lists: Sequence[tuple[int, ProjectList]]) -> ProjectList:
        """Every name once, spelled as the first list that has it, if the index that lists
        it serves it and the policy does not refuse it. The last serial of a list only one
        index gave (combine.py: never one for several indexes)."""
        if len(lists) == 1 and not self._router.routed and not self._policy.active:
            return lists[0][1]
        seen: dict[str, str] = {}
        for position, plist in lists:
            for spelled in plist.names:
                name = normalize(spelled)
                if (
                    name not in seen
                    and position in self._router.match(name)
                    and self._policy.project_refusal(name) is None
                ):
                    seen[name] = spelled
        serial = lists[0][1].last_serial if len(lists) == 1 else None
        return ProjectList(names=list(seen.values()), last_serial=serial)

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
            refused=screened.refused,
            valid_until=screened.valid_until,
        )

    def invalidate(self, name: str) -> None:
        """Make `name` (normalized; LIST_KEY for the project list) stale in every worker:
        the next request asks the upstream, conditionally and once, however many
        invalidations came before."""
        self.pages.invalidate(name)
        self._listings.pop(name, None)

    def cached_pages(self, name: str) -> list[CachedPage]:
        return self.pages.cached_pages(name)


def _version(fetched: Sequence[Fetched]) -> str:
    """Identifies what the upstreams said, to know when a combined answer must be redone."""
    return "+".join(f"{f.upstream.name}:{f.entry.digest if f.entry else '-'}" for f in fetched)


def _degradation(fetched: Sequence[Fetched]) -> tuple[bool, tuple[str, ...]]:
    """Whether a stale copy stood in for an upstream, and the names of those that failed."""
    stale = any(f.entry is not None and f.failure for f in fetched)
    return stale, tuple(f.upstream.name for f in fetched if f.failure is not None)


def _cache_result(stale: bool, asked: bool) -> CacheResult:
    if stale:
        return CacheResult.STALE
    return CacheResult.MISS if asked else CacheResult.HIT
