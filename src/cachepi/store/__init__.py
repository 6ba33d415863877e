"""Where the cache keeps things: the embedded default (SQLite and a local directory), or, for
a cluster, Redis and an S3-compatible object store shared by every node."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachepi.locks import Locks
from cachepi.store.blobs import BlobStore
from cachepi.store.metadata import MetadataStore

if TYPE_CHECKING:
    from cachepi.config import Settings
    from cachepi.store.redis import RedisLocks, RedisMetadataStore
    from cachepi.store.s3 import S3Blobs

DATABASE = "cachepi.sqlite3"


@dataclass
class Stores:
    metadata: MetadataStore | RedisMetadataStore
    blobs: BlobStore | S3Blobs
    locks: Locks | RedisLocks

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a connection that is gone
            self.metadata.close()


def open_stores(settings: Settings) -> Stores:
    """The stores `settings` name; the cluster ones import their clients only when used,
    so the embedded default needs nothing installed beyond the base package."""
    local = BlobStore(settings.cache_dir)
    if settings.storage is None or settings.redis_url is None:
        return Stores(MetadataStore(settings.cache_dir / DATABASE), local, Locks(local.temp_dir))
    from cachepi.store import redis as shared
    from cachepi.store.s3 import S3Blobs, aws_env, s3_store

    client = shared.connect(settings.redis_url)
    breaker = shared.Breaker()
    locks = shared.RedisLocks(client, breaker, settings.node_id, local.temp_dir)
    bucket, prefix = s3_store(settings.storage, settings.s3_endpoint, aws_env())
    blobs = S3Blobs(bucket, prefix, local, locks.exclusive)
    return Stores(shared.RedisMetadataStore(client, breaker), blobs, locks)
