"""Where the cache keeps things: the embedded default (SQLite, a local directory, lock
files), or, for a cluster, Redis and an S3-compatible object store shared by every node.
The seams are in protocols.py; this picks the backends the settings name."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachepi.store.directory import DirectoryBlobs
from cachepi.store.flock import FileLocks
from cachepi.store.protocols import BlobStore, Locks, MetadataStore
from cachepi.store.sqlite import SqliteMetadata

if TYPE_CHECKING:
    from cachepi.config import Settings

DATABASE = "cachepi.sqlite3"


@dataclass
class Stores:
    metadata: MetadataStore
    blobs: BlobStore
    locks: Locks

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a connection that is gone
            self.metadata.close()


def open_stores(settings: Settings) -> Stores:
    """The stores `settings` name; the cluster ones import their clients only when used,
    so the embedded default needs nothing installed beyond the base package."""
    local = DirectoryBlobs(settings.cache_dir)
    if settings.storage is None or settings.redis_url is None:
        return Stores(
            SqliteMetadata(settings.cache_dir / DATABASE),
            local,
            FileLocks(local.temp_dir, settings.cache_dir / "store.lock"),
        )
    import redis

    from cachepi.store.breaker import Breaker
    from cachepi.store.redis_locks import RedisLocks
    from cachepi.store.redis_metadata import RedisMetadata, connect
    from cachepi.store.s3 import S3Blobs, aws_env, s3_store

    client = connect(settings.redis_url)
    breaker = Breaker("redis", (redis.RedisError,))
    bucket, prefix = s3_store(settings.storage, settings.s3_endpoint, aws_env())
    blobs = S3Blobs(bucket, prefix, local, redirect=settings.s3_serve == "redirect")
    return Stores(
        RedisMetadata(client, breaker), blobs, RedisLocks(client, breaker, settings.node_id, blobs)
    )
