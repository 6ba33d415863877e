"""How the indexes that serve a project combine into one page. Pure.

- "merge" (proxpi's): every index is asked; the first index's files come first, later
  indexes add the filenames it lacks.
- "first" (uv's): the indexes are asked in order, and the first that has the project
  supplies all its files; the later ones are not asked at all.

Either way the first index that has the project speaks for it: a project it quarantined
(PEP 792) offers no files at all. What a merged page says of the project as a whole
is what its upstreams said, never more: `versions` (see `_versions`); PEP 708's `tracks` and
`alternate-locations` (see `_agreed`); no last serial, which only a single index's page can
carry.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import TypeVar

import msgspec

from cachepi.simple.model import File, Project
from cachepi.simple.names import versions_from_filenames

log = logging.getLogger(__name__)
Index = TypeVar("Index")

QUARANTINED = "quarantined"


class Combine(enum.StrEnum):
    MERGE = "merge"
    FIRST = "first"

    def asks_after(self, found: bool) -> bool:
        """Whether the next index is asked once the indexes so far did (`found`) or did
        not have the project."""
        return self is Combine.MERGE or not found


def combine(name: str, pages: Sequence[tuple[Index, Project]]) -> tuple[Project, tuple[Index, ...]]:
    """The project as clients see it, and the index each of its files comes from. `pages`
    are those of the indexes that have the project, in order (with "first", only one)."""
    first = pages[0][1]
    if first.status == QUARANTINED:
        return msgspec.structs.replace(first, files=[], versions=[]), ()
    if len(pages) == 1:
        return first, (pages[0][0],) * len(first.files)
    files: list[File] = []
    sources: list[Index] = []
    seen: dict[str, File] = {}
    listed: list[str] = []  # the versions of the upstreams that list them
    guessed: list[str] = []  # the files the others contributed, to read versions from
    for index, page in pages:
        if page.versions is not None:
            listed += page.versions
        for file in page.files:
            known = seen.get(file.filename)
            if known is None:
                seen[file.filename] = file
                files.append(file)
                sources.append(index)
                if page.versions is None:
                    guessed.append(file.filename)
            elif _conflicting(known, file):
                log.warning(
                    "hash conflict for %s/%s: %s lists different bytes; keeping the first index's",
                    name,
                    file.filename,
                    index,
                )
    merged = msgspec.structs.replace(
        first,
        files=files,
        versions=_versions(pages, listed, guessed),
        # A serial numbers one index's changes: none stands for several indexes' at once.
        last_serial=None,
        tracks=_agreed([page.tracks for _, page in pages]),
        alternate_locations=_agreed([page.alternate_locations for _, page in pages]),
    )
    return merged, tuple(sources)


def _versions(
    pages: Sequence[tuple[Index, Project]], listed: list[str], guessed: list[str]
) -> list[str] | None:
    """PEP 700 `versions` of a merged page: the lists of the upstreams that give one, as
    they spell them, and for each upstream that gives none, the versions in the names of
    the files it contributed (a file another upstream listed first belongs to that one's
    list). None when no upstream gives a list: the renderer reads every filename then."""
    if all(page.versions is None for _, page in pages):
        return None
    return versions_from_filenames(guessed, listed)


def _agreed(lists: Sequence[list[str]]) -> list[str]:
    """PEP 708 URLs a merged page may claim: those every upstream's page claims, in the
    first's order (compared as written). A page tracks another when all it shows extends
    that one, which holds of a merge only if it holds of every part; and alternate locations
    are only to be trusted where all locations agree. So an upstream that claims none (an
    index owning its own namespace) leaves the merged page claiming none."""
    common = set(lists[0]).intersection(*lists[1:])
    return [url for url in lists[0] if url in common]


def _conflicting(a: File, b: File) -> bool:
    shared = a.hashes.keys() & b.hashes.keys()
    return any(a.hashes[h] != b.hashes[h] for h in shared)
