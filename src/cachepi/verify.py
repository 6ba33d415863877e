"""`cachepi verify`: re-hash every stored blob and drop the ones that do not match.

A blob's name is its sha256, so checking needs nothing but the bytes. A mismatch (a disk
error, a hand edit) is removed with its records; the next request downloads it again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cachepi.files import FileCache
from cachepi.store.blobs import BlobStore
from cachepi.store.metadata import MetadataStore

_CHUNK = 1024 * 1024


@dataclass
class Report:
    checked: int = 0
    bytes: int = 0
    removed: list[str] = field(default_factory=list)


def verify_cache(
    cache_dir: Path, cache_size: int, progress: Callable[[int], None] = lambda _: None
) -> Report:
    """Check every blob; `progress(n)` is told of each `n` bytes read."""
    blobs = BlobStore(cache_dir)
    metadata = MetadataStore(cache_dir / "cachepi.sqlite3")
    report = Report()
    try:
        cache = FileCache(blobs, metadata, cache_size)
        for sha256, _ in blobs.scan():
            digest = hashlib.sha256()
            try:
                with blobs.path(sha256).open("rb") as blob:
                    while chunk := blob.read(_CHUNK):
                        digest.update(chunk)
                        progress(len(chunk))
                        report.bytes += len(chunk)
            except FileNotFoundError:  # evicted meanwhile by a running server
                continue
            report.checked += 1
            if digest.hexdigest() != sha256:
                asyncio.run(cache.remove(sha256))
                report.removed.append(sha256)
    finally:
        metadata.close()
    return report


def total_bytes(cache_dir: Path) -> int:
    return sum(size for _, size in BlobStore(cache_dir).scan())
