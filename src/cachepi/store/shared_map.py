"""A map of strings every process holds in memory and the metadata store keeps, under a
topic of changes (`MetadataStore.changes`): what one process writes there, every process
takes in at its next look, a second later at most, key by key (all of it when it missed
more than the store's log keeps). The pairs of extracted METADATA (filecache/extraction.py)
and the upload times learned from upstreams (upload_times.py) are held this way.

The map is never changed in place (renderers read it from threads): each change makes a
new one, and a new generation, so pages made from it are made again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Mapping

from cachepi.store.protocols import MetadataStore, StoreUnavailable

log = logging.getLogger(__name__)

# Reads the store's entries for some keys (None: every key).
Read = Callable[[Collection[str] | None], Mapping[str, str]]


class SharedMap:
    def __init__(
        self, store: MetadataStore, topic: str, read: Read, clock: Callable[[], float]
    ) -> None:
        self._store = store
        self._topic = topic
        self._read = read
        self._clock = clock
        self._map: Mapping[str, str] = {}
        self._generation = 0
        self._followed = -1  # the store's generation of the topic, as last followed
        self._checked = clock()

    def load(self) -> None:
        """Take in every entry (at start); a store that is down is followed later."""
        try:
            self._followed = self._store.generation(self._topic)
            self._replace(self._map, self._read(None))
        except StoreUnavailable as failure:
            log.warning("cannot load the %s records: %s", self._topic, failure)

    @property
    def current(self) -> Mapping[str, str]:
        """The map as held now, without looking at the store."""
        return self._map

    def known(self) -> tuple[int, Mapping[str, str]]:
        """(generation, the map), having taken in the store's changes if a second passed
        since the last look (or `stale` was called)."""
        now = self._clock()
        if now - self._checked >= 1.0:
            self._checked = now
            with contextlib.suppress(StoreUnavailable):  # keep what we know
                self._follow()
        return self._generation, self._map

    def add(self, entries: Mapping[str, str]) -> None:
        """Entries this process wrote to the store: held from now on."""
        self._replace((), entries)

    def stale(self) -> None:
        """Something changed in the store (this process removed a blob): look at the next
        `known`."""
        self._checked = -1.0

    def _follow(self) -> None:
        changed = self._store.changes(self._topic, self._followed)
        if changed.generation == self._followed:
            return
        if changed.keys is None:  # too much to tell: read them all
            self._replace(self._map, self._read(None))
        else:
            self._replace(changed.keys, self._read(changed.keys))
        self._followed = changed.generation

    def _replace(self, drop: Collection[str], add: Mapping[str, str]) -> None:
        """Without the entries of `drop`, with those of `add`: a new map."""
        entries = dict(self._map)
        for key in drop:
            entries.pop(key, None)
        entries.update(add)
        self._map = entries
        self._generation += 1
