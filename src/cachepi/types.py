"""Small types shared across the layers: a byte source, and how an answer was obtained."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

# Bytes of one file as they arrive: entering gives its length (None: unknown) and the
# chunks. An upstream response, another process's download being followed, or a stored blob.
Source = AbstractAsyncContextManager[tuple[int | None, AsyncIterator[bytes]]]
# Opens a Source; a retried transfer opens it again.
SourceOpener = Callable[[], Source]


class CacheResult(enum.StrEnum):
    """How a page or file answer was obtained: from the cache (HIT), after asking an
    upstream (MISS), or from a stale copy (STALE): because an upstream failed, or while
    it is revalidated in the background."""

    HIT = "hit"
    MISS = "miss"
    STALE = "stale"

    # Hashed like its text: Enum's own hash is a Python call, on every request's metrics.
    __hash__ = str.__hash__


class DownloadFailed(Exception):
    """A download broke, or its bytes did not verify: a client's transfer must not end as
    if complete. The message is one line."""
